//! Helpers shared by the wire tests.
#![allow(dead_code, unused_imports)]

use std::path::PathBuf;

use ibp_wire::{
    ClusterMessage, DecodeError, DowntimeRequest, DowntimeResponse, FinalizeMessage, Proposal,
    UsageRequest, UsageResponse, Vote, WireDecode, decode, encode, subjects,
};

/// The repository's `fixtures/` directory, which holds the captured Go vectors (override
/// with `IBP_FIXTURES_DIR`, e.g. to replay a fresh capture).
pub fn fixtures_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("IBP_FIXTURES_DIR") {
        return PathBuf::from(dir);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures")
}

/// One captured message: subject and exact payload.
pub struct Captured {
    pub subject: String,
    pub raw: String,
}

/// Every message of every `all_messages.jsonl` under `fixtures/vectors`.
pub fn captured_messages() -> Vec<(PathBuf, Captured)> {
    let root = fixtures_dir().join("vectors");
    let mut out = Vec::new();
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", root.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    dirs.sort();
    for dir in dirs {
        let file = dir.join("all_messages.jsonl");
        let Ok(text) = std::fs::read_to_string(&file) else {
            continue;
        };
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line).expect("vector line is JSON");
            out.push((
                file.clone(),
                Captured {
                    subject: v["subject"].as_str().expect("subject").to_string(),
                    raw: v["raw"].as_str().expect("raw").to_string(),
                },
            ));
        }
    }
    out
}

fn reencode<T: WireDecode + serde::Serialize>(bytes: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let msg: T = decode(bytes)?;
    Ok(encode(&msg).expect("encodes"))
}

/// Decodes a payload as the message type of its subject and encodes it again.
pub fn reencode_for_subject(subject: &str, bytes: &[u8]) -> Result<Vec<u8>, DecodeError> {
    match subject {
        subjects::CLUSTER => reencode::<ClusterMessage>(bytes),
        subjects::PROPOSE => reencode::<Proposal>(bytes),
        subjects::VOTE => reencode::<Vote>(bytes),
        subjects::FINALIZE => reencode::<FinalizeMessage>(bytes),
        subjects::USAGE_GET => reencode::<UsageRequest>(bytes),
        subjects::USAGE_DATA => reencode::<UsageResponse>(bytes),
        subjects::DOWNTIME_GET => reencode::<DowntimeRequest>(bytes),
        subjects::DOWNTIME_DATA => reencode::<DowntimeResponse>(bytes),
        other => panic!("no message type for subject {other}"),
    }
}

pub use ibp_testkit::{Rng, test_seed};
