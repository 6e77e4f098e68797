//! Timestamp and date parsers: never panic; a parsed timestamp formats and parses back.
#![no_main]

use ibp_wire::{WireTime, parse_usage_date};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(t) = WireTime::parse(s) {
            assert_eq!(WireTime::parse(&t.to_go_string()), Ok(t));
        }
        let _ = parse_usage_date(s);
    }
});
