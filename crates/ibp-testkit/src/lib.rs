//! Test harness shared by every integration test of the workspace.
//!
//! * [`NatsServer`] starts a real `nats-server` process on a free loopback port, with
//!   optional auth (user/password, token, NKey, credentials), TLS, JetStream and a custom
//!   `max_payload`; it can be stopped, killed with SIGKILL and restarted on the same port.
//! * [`NatsCluster`] starts three such servers joined by routes.
//! * [`TestDatabase`] creates a fresh MariaDB/MySQL database and drops it afterwards.
//! * [`test_seed`] and [`Rng`] make randomised tests replayable.
//! * [`geo`] writes made-up MaxMind databases and runs a real PowerDNS and `dig`.
//! * [`browser`] drives a real headless Chromium over the DevTools protocol.
//!
//! Every server gets its own process and directory, so tests that kill or reconfigure a
//! server never share it. Everything is cleaned up on drop.

mod mysql;
mod nats;
mod seed;

pub mod browser;
pub mod endpoints;
pub mod geo;
pub mod proxy;
pub use mysql::{Session, TestDatabase};
pub use nats::{
    Auth, ClientAuth, HarnessError, NatsCluster, NatsServer, Partition, ServerOptions,
    nats_server_bin,
};
pub use seed::{Rng, test_seed};
