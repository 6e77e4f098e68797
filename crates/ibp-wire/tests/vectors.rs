//! Every message captured from real Go nodes decodes, and re-encodes to the same JSON
//! value — and, as a stronger check, to the same bytes.

mod common;

use common::{captured_messages, fixtures_dir, reencode_for_subject};
use ibp_wire::{ClusterMessage, FinalizeMessage, Proposal, Role, Vote, decode, encode};

#[test]
fn every_captured_message_round_trips_as_json_value_and_bytes() {
    let msgs = captured_messages();
    assert!(
        msgs.len() >= 40,
        "expected the captured vectors, found {}",
        msgs.len()
    );
    for (file, m) in &msgs {
        let out = reencode_for_subject(&m.subject, m.raw.as_bytes())
            .unwrap_or_else(|e| panic!("{}: {} failed to decode: {e}", file.display(), m.subject));
        let original: serde_json::Value = serde_json::from_str(&m.raw).expect("original is JSON");
        let again: serde_json::Value = serde_json::from_slice(&out).expect("re-encoded is JSON");
        assert_eq!(
            original,
            again,
            "{}: {} changed value",
            file.display(),
            m.subject
        );
        assert_eq!(
            m.raw,
            String::from_utf8_lossy(&out),
            "{}: {} changed bytes",
            file.display(),
            m.subject
        );
    }
}

#[test]
fn single_vector_files_decode_to_expected_fields() {
    for case in ["go-v0.7-agree", "go-v0.7-dissent"] {
        let dir = fixtures_dir().join("vectors").join(case);
        let read = |f: &str| std::fs::read(dir.join(f)).expect("vector file");
        let join: ClusterMessage = decode(&read("cluster_join.json")).expect("join");
        assert_eq!(join.kind, "join");
        assert_eq!(Role::from_wire(&join.sender.node_role), Some(Role::Monitor));
        assert!(join.members.is_none());
        let p: Proposal = decode(&read("propose.json")).expect("proposal");
        assert_eq!(p.member_name, "m1");
        assert!(!p.proposed_status);
        assert_eq!(p.data.to_value()["source"], "monitor-go-1");
        let v: Vote = decode(&read("vote.json")).expect("vote");
        assert_eq!(v.proposal_id, p.id);
        let f: FinalizeMessage = decode(&read("finalize.json")).expect("finalize");
        assert_eq!(f.proposal, p);
        assert_eq!(f.passed, case.ends_with("agree"));
        for (name, raw) in [
            ("propose.json", encode(&p)),
            ("vote.json", encode(&v)),
            ("finalize.json", encode(&f)),
            ("cluster_join.json", encode(&join)),
        ] {
            let raw = raw.expect("encodes");
            let orig: serde_json::Value = serde_json::from_slice(&read(name)).expect("json");
            let again: serde_json::Value = serde_json::from_slice(&raw).expect("json");
            assert_eq!(orig, again, "{case}/{name}");
        }
    }
}
