//! An IBP GeoDNS node: the async shell around the pure core (`ibp-core`), wired to NATS.
//!
//! * [`connection`] — the NATS connection manager (options, auth, state, subscriptions).
//! * [`metrics`] — each node's own Prometheus registry.
pub mod connection;
pub mod metrics;
