//! What the IBP DNS node answers (`docs/spec/dns.md`), without sockets or clocks:
//!
//! * [`zones`] — zones, zone ids and static records from the static DNS config and the
//!   service list (each RPC hostname its own zone);
//! * [`health`] — which members are offline, from official decisions pushed over the bus
//!   and from monitors' `/results` snapshots (a snapshot never overrides a newer decision);
//! * [`geo`] — client positions, countries and networks (MaxMind databases, or any
//!   [`geo::GeoIp`]), and great-circle distance;
//! * [`overrides`] — country overrides from the config file and from NATS;
//! * [`answer`] — one lookup: static, SOA, NS and the nearest healthy member per family,
//!   with the usage hits it makes;
//! * [`backend`] — the PowerDNS remote-backend JSON protocol over all of that.
//!
//! The node crate serves it over HTTP (for PowerDNS) and plain DNS (its built-in
//! listener), feeds it decisions and snapshots, and counts the hits.

pub mod answer;
pub mod backend;
pub mod geo;
pub mod health;
pub mod overrides;
pub mod zones;

pub use answer::{Answer, Client, Family, Hit, Resolver};
pub use health::Health;
pub use zones::{Record, StaticRecord, Zones};

/// A DNS name as the Go node compares names: trimmed, lower case, one trailing dot
/// dropped.
pub fn normalize(name: &str) -> String {
    let n = name.trim().to_ascii_lowercase();
    n.strip_suffix('.').map(str::to_string).unwrap_or(n)
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_normalized_like_go() {
        assert_eq!(super::normalize(" RPC.Example.NET. "), "rpc.example.net");
        assert_eq!(super::normalize("a.b.."), "a.b.");
    }
}
