//! Consensus and membership decoders: any input gives a value or an error. A decoded
//! message must re-encode and decode to itself.
#![no_main]

use ibp_wire::{ClusterMessage, FinalizeMessage, Proposal, Vote, WireDecode, decode, encode};
use libfuzzer_sys::fuzz_target;

fn check<T: WireDecode + serde::Serialize + PartialEq + std::fmt::Debug>(data: &[u8]) {
    if let Ok(v) = decode::<T>(data) {
        let again = encode(&v).expect("a decoded message encodes");
        let back: T = decode(&again).expect("an encoded message decodes");
        assert_eq!(back, v);
    }
}

fuzz_target!(|data: &[u8]| {
    check::<ClusterMessage>(data);
    check::<Proposal>(data);
    check::<Vote>(data);
    check::<FinalizeMessage>(data);
});
