//! Fuzz targets: each takes arbitrary bytes and must not panic; where a value comes out, it
//! must satisfy the target's property. The AFL++ binaries (`afl/`, feature `afl`) call
//! these; `tests/replay.rs` runs every file of `corpus/` through them in the test suite.

use std::sync::OnceLock;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ibp_trust::{Identity, Pairwise, SigHeaders, TrustEntry, TrustList, Verifier};
use ibp_wire::{
    ClusterMessage, DowntimeRequest, DowntimeResponse, FinalizeMessage, Proposal, UsageRequest,
    UsageResponse, Vote, WireDecode, WireTime, decode, encode, parse_usage_date,
};

fn round_trip<T: WireDecode + serde::Serialize + PartialEq + std::fmt::Debug>(data: &[u8]) {
    if let Ok(v) = decode::<T>(data) {
        let again = encode(&v).expect("a decoded message encodes");
        let back: T = decode(&again).expect("an encoded message decodes");
        assert_eq!(back, v, "decode(encode(x)) == x");
    }
}

/// Every wire decoder and time parser on the same input (one fuzzing target for them all).
pub fn decoders(data: &[u8]) {
    decode_consensus(data);
    decode_fanout(data);
    parse_times(data);
}

/// Consensus and membership decoders: a decoded message re-encodes and decodes to itself.
pub fn decode_consensus(data: &[u8]) {
    round_trip::<ClusterMessage>(data);
    round_trip::<Proposal>(data);
    round_trip::<Vote>(data);
    round_trip::<FinalizeMessage>(data);
}

/// Usage and downtime decoders, and what is computed from them.
pub fn decode_fanout(data: &[u8]) {
    let _ = decode::<UsageRequest>(data).map(|r| r.date_range());
    if let Ok(r) = decode::<UsageResponse>(data) {
        for x in &r.usage_records {
            let _ = x.day();
        }
    }
    let _ = decode::<DowntimeRequest>(data);
    let _ = decode::<DowntimeResponse>(data);
}

/// Timestamp and date parsers: a parsed timestamp formats and parses back.
pub fn parse_times(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(t) = WireTime::parse(s) {
            assert_eq!(WireTime::parse(&t.to_go_string()), Ok(t));
        }
        let _ = parse_usage_date(s);
    }
}

struct Fixture {
    trust: TrustList,
    key: String,
    now: DateTime<Utc>,
    /// A second monitor's keys shared with the trusted one, for `Ibp-Mac` tags.
    pairwise: std::sync::Arc<Pairwise>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        // A fixed key, so a corpus entry means the same thing in every run.
        let id = Identity::from_seed("SUAPER3KBJUGMUJDYSRQN7CS3H2LSCH3QWPCGKA3JL75EFMY5YMGKIKFWQ")
            .expect("fixture seed");
        let entries = [TrustEntry {
            public_key: id.public_key().into(),
            node_id: "monitor-1".into(),
            role: "IBPMonitor".into(),
        }];
        let trust = TrustList::build([("trust", &entries[..])]).expect("trust");
        // The receiver's own key never appears in what a fuzzer writes: any will do.
        let receiver = Identity::generate();
        Fixture {
            pairwise: std::sync::Arc::new(Pairwise::new(&receiver, &trust)),
            trust,
            key: id.public_key().to_string(),
            now: DateTime::parse_from_rfc3339("2026-11-30T12:00:00Z")
                .expect("time")
                .with_timezone(&Utc),
        }
    })
}

/// The signature header checks: the input is split at newlines into `Ibp-Key` (`@` means
/// the trusted key), `Ibp-Sig-Time`, `Ibp-Sig`, the subject and the payload (the rest).
/// Nothing may panic, and nothing a fuzzer writes can verify: it has no private key. Each
/// input is checked once more by a monitor holding pairwise keys, with the payload part
/// as the `Ibp-Mac` header: nor can a fuzzer make a tag.
pub fn signature_headers(data: &[u8]) {
    let f = fixture();
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(5, '\n');
    let key = parts
        .next()
        .map(|k| if k == "@" { f.key.as_str() } else { k });
    let time = parts.next();
    let sig = parts.next();
    let subject = parts.next().unwrap_or("consensus.vote");
    let payload = parts.next().unwrap_or("").as_bytes();
    let h = SigHeaders {
        key,
        time,
        sig,
        mac: None,
    };
    let mut v = Verifier::new(Duration::from_secs(120), 16);
    assert!(v.verify(&f.trust, subject, payload, h, f.now).is_err());
    assert!(
        v.verify_stored(&f.trust, subject, payload, h, f.now)
            .is_err()
    );
    let mac = std::str::from_utf8(payload).ok();
    let mut m = Verifier::new(Duration::from_secs(120), 16);
    m.set_pairwise(Some(f.pairwise.clone()));
    assert!(
        m.verify(&f.trust, subject, payload, SigHeaders { mac, ..h }, f.now)
            .is_err()
    );
    assert_eq!(m.accepted_by_mac(), 0);
}

/// The `POST /v1/observations` body parser: what it accepts respects the column widths and
/// the shape rules of each check type.
pub fn observation_body(data: &[u8]) {
    if let Ok(batch) = ibp_core::input::parse_observations(data) {
        assert!(!batch.is_empty() && batch.len() <= ibp_core::input::MAX_BATCH);
        for o in batch {
            let k = &o.key;
            assert!(k.check_name.chars().count() <= 64 && !k.check_name.is_empty());
            assert!(k.member_name.chars().count() <= 128 && !k.member_name.is_empty());
            assert!(k.domain_name.chars().count() <= 128);
            assert!(k.endpoint.chars().count() <= 256);
            assert!(o.error_text.chars().count() <= 4096);
        }
    }
}
