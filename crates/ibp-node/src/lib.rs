//! An IBP GeoDNS node: the async shell around the pure core (`ibp-core`), wired to NATS.
//!
//! * [`connection`] — the NATS connection manager (options, auth, state, subscriptions).
//! * [`cluster`] — the [`cluster::Node`] handle: roles, membership and consensus at runtime.
//! * [`collectors`] — usage and downtime fan-out and the answers to it.
//! * [`roles`] — what each role does besides the protocol: storage, observations, hits,
//!   outage records, hourly usage collection.
//! * [`config`] / [`ibp_config`] — node configuration (Go files accepted as they are) and
//!   the IBP member and service lists.
//! * [`metrics`] — each node's own Prometheus registry; [`health`] — what `/healthz` says.
//! * [`durable`] — the collator's JetStream consumer of decisions.
//! * [`dns_listener`] — the built-in DNS listener answering from [`roles::GeoDnsService`].
//! * [`security`] — signing and verifying consensus messages (`ibp-trust`), by mode.
pub mod app;
pub mod bench;
pub mod cluster;
pub mod collectors;
pub mod commands;
pub mod config;
pub mod connection;
pub mod demo;
pub mod dns_listener;
pub mod durable;
pub mod health;
pub mod http;
pub mod ibp_config;
pub mod inspect;
pub mod metrics;
pub mod nats_permissions;
pub mod normalize;
pub mod roles;
pub mod security;
pub mod web;
