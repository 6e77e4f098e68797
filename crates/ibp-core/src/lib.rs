//! The pure core of an IBP GeoDNS node: membership (protocol §4), consensus (§5) and the
//! collator's vote cache.
//!
//! Nothing here reads a clock, opens a socket or spawns a task. Time and decoded messages
//! go in; [`Effect`]s come out (publish this, apply that official result, this decision
//! was made) and [`Engine::next_deadline`] says when to call [`Engine::tick`] again. The
//! async shell in `ibp-node` wires this to NATS and tokio; [`sim`] drives many engines over
//! a simulated network to check invariants under loss, partitions and crashes.

mod check;
pub mod collator;
mod config;
pub mod consensus;
mod counters;
mod effect;
mod engine;
pub mod input;
pub mod membership;
pub mod sim;
pub mod sla;
pub mod time;

pub use check::{CheckKey, Observation};
pub use config::{ConfigError, CoreConfig, duration_serde, format_duration, parse_duration};
pub use consensus::{IdSource, ObserveOutcome, ProposeOutcome};
pub use counters::Counters;
pub use effect::{Decision, Effect, OfficialChange, Outbound};
pub use engine::{Engine, EngineError, Input};
pub use membership::SelfInfo;
pub use time::Now;
