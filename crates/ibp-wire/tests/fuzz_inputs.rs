//! 100,000+ random and mutated inputs to every decoder: each returns a value or an error,
//! never panics.

mod common;

use common::{Rng, captured_messages, test_seed};
use ibp_wire::{
    ClusterMessage, DowntimeEvent, DowntimeRequest, DowntimeResponse, FinalizeMessage, NodeInfo,
    Proposal, UsageRecord, UsageRequest, UsageResponse, Vote, WireDecode, decode,
};

const INPUTS: usize = 100_000;

const TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    "\"",
    "null",
    "true",
    "false",
    "0",
    "-1",
    "1e999",
    "1.5",
    "\"ID\"",
    "\"Proposal\"",
    "\"Timestamp\"",
    "\"2026-11-27T10:50:59.1Z\"",
    "\"usageRecords\"",
    "\"events\"",
    "\"sender\"",
    "\"members\"",
    "\\u0000",
    "\\ud800",
    "\u{FFFF}",
    "\"hits\"",
    "99999999999999999999999",
    "\"Data\"",
    " ",
    "\n",
];

fn mutate(rng: &mut Rng, seed_inputs: &[Vec<u8>]) -> Vec<u8> {
    match rng.below(4) {
        // A captured message with byte-level damage.
        0 | 1 => {
            let mut b = seed_inputs[rng.below(seed_inputs.len())].clone();
            for _ in 0..=rng.below(6) {
                if b.is_empty() {
                    break;
                }
                let i = rng.below(b.len());
                match rng.below(5) {
                    0 => b[i] = rng.next_u64() as u8,
                    1 => {
                        b.remove(i);
                    }
                    2 => b.insert(i, rng.next_u64() as u8),
                    3 => b.truncate(i),
                    _ => {
                        let t = TOKENS[rng.below(TOKENS.len())].as_bytes();
                        b.splice(i..i, t.iter().copied());
                    }
                }
            }
            b
        }
        // A token soup, often almost-JSON.
        2 => {
            let mut b = Vec::new();
            for _ in 0..rng.below(40) {
                b.extend_from_slice(TOKENS[rng.below(TOKENS.len())].as_bytes());
            }
            b
        }
        // Structurally valid JSON with the right keys and random value types.
        _ => {
            let keys = [
                "ID",
                "Proposal",
                "Passed",
                "Agree",
                "nodeID",
                "usageRecords",
                "events",
                "sender",
                "members",
                "hits",
                "date",
                "Data",
                "data",
                "startTime",
                "Timestamp",
                "type",
            ];
            let vals = [
                "null",
                "1",
                "-7",
                "1.5",
                "\"x\"",
                "true",
                "[]",
                "{}",
                "[null]",
                "[{}]",
                "{\"ID\":{}}",
                "\"2026-01-01T00:00:00Z\"",
                "[{\"hits\":\"x\"}]",
            ];
            let mut s = String::from("{");
            for i in 0..rng.below(6) {
                if i > 0 {
                    s.push(',');
                }
                s.push_str(&format!(
                    "\"{}\":{}",
                    keys[rng.below(keys.len())],
                    vals[rng.below(vals.len())]
                ));
            }
            s.push('}');
            s.into_bytes()
        }
    }
}

fn feed<T: WireDecode + PartialEq + std::fmt::Debug>(input: &[u8], ok: &mut usize) {
    if decode::<T>(input).is_ok() {
        *ok += 1;
    }
    // The strict fast path may only accept what the lenient decoder decodes the same way.
    if let Some(fast) = T::decode_strict(input) {
        assert_eq!(
            Ok(fast),
            ibp_wire::decode_lenient::<T>(input),
            "strict and lenient disagree on {:?}",
            String::from_utf8_lossy(input)
        );
    }
}

#[test]
fn decoders_never_panic_on_hostile_input() {
    let seed = test_seed("decoders_never_panic_on_hostile_input");
    let mut rng = Rng(seed);
    let seeds: Vec<Vec<u8>> = captured_messages()
        .into_iter()
        .map(|(_, m)| m.raw.into_bytes())
        .collect();
    assert!(!seeds.is_empty());
    let mut decoded = 0usize;
    for n in 0..INPUTS {
        let input = mutate(&mut rng, &seeds);
        let r = std::panic::catch_unwind(|| {
            let mut ok = 0;
            feed::<ClusterMessage>(&input, &mut ok);
            feed::<NodeInfo>(&input, &mut ok);
            feed::<Proposal>(&input, &mut ok);
            feed::<Vote>(&input, &mut ok);
            feed::<FinalizeMessage>(&input, &mut ok);
            feed::<UsageRequest>(&input, &mut ok);
            feed::<UsageRecord>(&input, &mut ok);
            feed::<UsageResponse>(&input, &mut ok);
            feed::<DowntimeRequest>(&input, &mut ok);
            feed::<DowntimeEvent>(&input, &mut ok);
            feed::<DowntimeResponse>(&input, &mut ok);
            ok
        });
        match r {
            Ok(ok) => decoded += ok,
            Err(_) => panic!(
                "input #{n} panicked a decoder (seed {seed}): {:?}",
                String::from_utf8_lossy(&input)
            ),
        }
    }
    // Sanity: the generator produces both decodable and undecodable inputs.
    assert!(
        decoded > 1000,
        "only {decoded} inputs decoded; the generator is broken"
    );
    assert!(
        decoded < INPUTS * 11,
        "every input decoded; the generator is broken"
    );
}
