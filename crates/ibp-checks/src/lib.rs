//! The IBP monitor's health checks, as the Go monitor runs them (`docs/spec/checks.md`)
//! with its weaknesses fixed:
//!
//! * [`items`] — what to check, from the member and service lists and the `Checks` config;
//! * [`ping`], [`ssl`], [`wss`], [`ethrpc`] — the four checks, dialling each member's IP with
//!   the URL's hostname as SNI and `Host`, with the Go option names, defaults, texts and
//!   `Data` keys;
//! * [`head`] — optional stuck-head detection for wss and ethrpc;
//! * [`scheduler`] — pure: every unit once per interval, spread evenly over it;
//! * [`runner`] — runs units within in-flight and per-host limits and a hard timeout each,
//!   optionally re-checking a changed result before reporting it.
//!
//! No NATS, no storage, no HTTP server: the node wires results into consensus.

pub mod ethrpc;
pub mod head;
pub mod items;
pub mod net;
pub mod ping;
pub mod runner;
pub mod scheduler;
pub mod spec;
pub mod ssl;
pub mod target;
pub mod tls;
pub mod verdict;
pub mod wss;

pub use items::{Item, Unit};
pub use runner::{Checker, UnitResult};
pub use spec::{CheckSpec, CheckerSettings};
pub use tls::Trust;
pub use verdict::Verdict;
