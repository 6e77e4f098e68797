//! The services behind each role: what a monitor, a DNS node and a collator do besides
//! speaking the protocol — storage, observations, hit counting, outage records, hourly
//! usage collection.

mod checks;
mod collator;
mod dns;
pub mod gaps;
mod geodns;
mod monitor;
mod writes;

pub use checks::{CheckView, ChecksService, LastView, observation, run_once};
pub use collator::{CollatorService, CollectReport};
pub use dns::{DnsService, Hit, HitError, HitLimits};
pub use geodns::{GeoDnsCounters, GeoDnsError, GeoDnsService};
pub use monitor::{MonitorService, ObservationResult, results_snapshot};
pub use writes::{StorageHealth, WriteOutcome};
