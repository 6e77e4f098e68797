//! Helpers shared by the wire tests.
#![allow(dead_code)]

use std::path::PathBuf;

use ibp_wire::{
    ClusterMessage, DecodeError, DowntimeRequest, DowntimeResponse, FinalizeMessage, Proposal,
    UsageRequest, UsageResponse, Vote, WireDecode, decode, encode, subjects,
};

/// The `shared/` directory next to the repository (override with `IBP_SHARED_DIR`).
pub fn shared_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("IBP_SHARED_DIR") {
        return PathBuf::from(dir);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared")
}

/// One captured message: subject and exact payload.
pub struct Captured {
    pub subject: String,
    pub raw: String,
}

/// Every message of every `all_messages.jsonl` under `shared/vectors`.
pub fn captured_messages() -> Vec<(PathBuf, Captured)> {
    let root = shared_dir().join("vectors");
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

/// The seed of a randomised test: `IBP_TEST_SEED` if set (to replay a failure), otherwise
/// fresh. Always printed, so a failing run can be replayed.
pub fn test_seed(test: &str) -> u64 {
    let seed = match std::env::var("IBP_TEST_SEED") {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("IBP_TEST_SEED={s:?} is not a u64")),
        Err(_) => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x5eed),
    };
    eprintln!("{test}: seed {seed} (replay with IBP_TEST_SEED={seed})");
    seed
}

/// A small deterministic PRNG (SplitMix64), so replays do not depend on a crate version.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
}
