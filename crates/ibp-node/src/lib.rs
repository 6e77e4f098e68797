//! An IBP GeoDNS node: the async shell around the pure core (`ibp-core`), wired to NATS.
//!
//! * [`connection`] — the NATS connection manager (options, auth, state, subscriptions).
//! * [`cluster`] — the [`cluster::Node`] handle: roles, membership and consensus at runtime.
//! * [`collectors`] — usage and downtime fan-out and the answers to it.
//! * [`metrics`] — each node's own Prometheus registry.
pub mod cluster;
pub mod collectors;
pub mod connection;
pub mod metrics;
