//! Usage and downtime decoders: any input gives a value or an error.
#![no_main]

use ibp_wire::{DowntimeRequest, DowntimeResponse, UsageRequest, UsageResponse, decode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = decode::<UsageRequest>(data).map(|r| r.date_range());
    let _ = decode::<UsageResponse>(data).map(|r| r.usage_records.iter().map(|x| x.day()).count());
    let _ = decode::<DowntimeRequest>(data);
    let _ = decode::<DowntimeResponse>(data);
});
