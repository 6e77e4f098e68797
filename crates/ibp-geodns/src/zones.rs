//! Zones and records (dns.md §3): static records from the static DNS config, the service
//! map (RPC hostname → members serving it), zone ids, and the SOA, NS and zone listings
//! built from them.

use std::collections::{BTreeMap, BTreeSet};

use ibp_lists::IbpConfig;
use serde::{Deserialize, Serialize};

use crate::normalize;

/// TTL of geo answers.
pub const GEO_TTL: u32 = 30;
/// TTL of synthesized SOA and NS records.
pub const SOA_TTL: u32 = 3600;

/// One entry of the static DNS config (`System.ConfigUrls.StaticDNSConfig`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct StaticRecord {
    /// Owner name.
    pub qname: String,
    /// Type, compared case-sensitively (upper case in practice).
    pub qtype: String,
    /// Data, as PowerDNS takes it.
    pub content: String,
    /// TTL, seconds.
    #[serde(default)]
    pub ttl: u32,
    /// Authoritative.
    #[serde(default = "yes")]
    pub auth: bool,
}

fn yes() -> bool {
    true
}

/// One record of an answer, in the PowerDNS remote-backend shape (key order as Go).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Record {
    /// Owner name, normalized (no trailing dot).
    pub qname: String,
    /// Type.
    pub qtype: String,
    /// Data.
    pub content: String,
    /// TTL, seconds.
    pub ttl: u32,
    /// Authoritative.
    pub auth: bool,
    /// Zone id (0 when the name is not a zone).
    pub domain_id: u32,
    /// For geo answers: the client subnet prefix the answer holds for (EDNS client subnet
    /// scope; absent in Go answers).
    #[serde(rename = "scopeMask", skip_serializing_if = "Option::is_none")]
    pub scope_mask: Option<u8>,
}

/// Zones, static records and the service map.
#[derive(Debug, Clone, Default)]
pub struct Zones {
    statics: Vec<StaticRecord>,
    by_name: BTreeMap<String, Vec<usize>>,
    services: BTreeMap<String, Vec<String>>,
    ids: BTreeMap<String, u32>,
}

/// The zone id of `name`: CRC-32 (IEEE) of the lower-cased name, 31 bits.
pub fn crc_id(name: &str) -> u32 {
    crc32fast::hash(name.to_ascii_lowercase().as_bytes()) & 0x7FFF_FFFF
}

/// The hostname of an RPC URL, lower case, no port.
pub fn url_host(url: &str) -> Option<String> {
    ibp_lists::host_of(url)
}

impl Zones {
    /// Builds everything from the lists and the static records.
    pub fn build(lists: &IbpConfig, statics: Vec<StaticRecord>) -> Zones {
        let statics: Vec<StaticRecord> = statics
            .into_iter()
            .map(|mut r| {
                r.qname = normalize(&r.qname);
                r
            })
            .collect();
        let mut by_name: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, r) in statics.iter().enumerate() {
            by_name.entry(r.qname.clone()).or_default().push(i);
        }
        // §3.1: hostnames of active services; members of every service (active or not)
        // listing one of them, by the service's map key in the member's assignments.
        let mut hosts_of: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        let mut services: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for s in lists.services.values() {
            let hosts: BTreeSet<String> = s.rpc_urls.iter().filter_map(|u| url_host(u)).collect();
            if s.active {
                for h in &hosts {
                    services.entry(h.clone()).or_default();
                }
            }
            hosts_of.insert(s.name.as_str(), hosts);
        }
        for m in lists.members.values() {
            for name in m.assignments.values().flatten() {
                if let Some(hosts) = hosts_of.get(name.as_str()) {
                    for h in hosts {
                        if let Some(set) = services.get_mut(h) {
                            set.insert(m.key.clone());
                        }
                    }
                }
            }
        }
        let services: BTreeMap<String, Vec<String>> = services
            .into_iter()
            .map(|(h, m)| (h, m.into_iter().collect()))
            .collect();
        // §3.2: zones, with ids; a collision moves on (in name order, so ids are stable).
        let mut names: BTreeSet<String> = statics
            .iter()
            .filter(|r| r.qtype == "NS" || r.qtype == "SOA")
            .map(|r| r.qname.clone())
            .collect();
        names.extend(services.keys().cloned());
        let mut ids = BTreeMap::new();
        let mut used = BTreeSet::new();
        for n in names {
            let mut id = crc_id(&n);
            while !used.insert(id) {
                id = (id + 1) & 0x7FFF_FFFF;
            }
            ids.insert(n, id);
        }
        Zones {
            statics,
            by_name,
            services,
            ids,
        }
    }

    /// The zone id of `name`, 0 when it is not a zone.
    pub fn zone_id(&self, name: &str) -> u32 {
        self.ids.get(name).copied().unwrap_or(0)
    }

    /// Whether `name` (normalized) is a zone.
    pub fn is_zone(&self, name: &str) -> bool {
        self.ids.contains_key(name)
    }

    /// Every zone with its id.
    pub fn zones(&self) -> impl Iterator<Item = (&str, u32)> {
        self.ids.iter().map(|(n, id)| (n.as_str(), *id))
    }

    /// The closest enclosing zone of `name`, if any.
    pub fn zone_of(&self, name: &str) -> Option<&str> {
        let mut n = name;
        loop {
            if let Some((z, _)) = self.ids.get_key_value(n) {
                return Some(z.as_str());
            }
            n = n.split_once('.')?.1;
        }
    }

    /// Static records named `name`.
    pub fn statics_named(&self, name: &str) -> impl Iterator<Item = &StaticRecord> {
        self.by_name
            .get(name)
            .into_iter()
            .flatten()
            .map(|i| &self.statics[*i])
    }

    /// The member keys serving RPC hostname `host`, if it is one.
    pub fn service_members(&self, host: &str) -> Option<&[String]> {
        self.services.get(host).map(Vec::as_slice)
    }

    /// Every service hostname.
    pub fn service_hosts(&self) -> impl Iterator<Item = &str> {
        self.services.keys().map(String::as_str)
    }

    /// A static record as an answer record.
    pub fn record_of(&self, r: &StaticRecord) -> Record {
        Record {
            qname: r.qname.clone(),
            qtype: r.qtype.clone(),
            content: r.content.clone(),
            ttl: r.ttl,
            auth: r.auth,
            domain_id: self.zone_id(&r.qname),
            scope_mask: None,
        }
    }

    /// The synthesized SOA of `zone` (serial: the time).
    pub fn soa(&self, zone: &str, now_unix: i64) -> Record {
        Record {
            qname: zone.to_string(),
            qtype: "SOA".into(),
            content: format!("dns-01.{zone}. hostmaster.{zone}. {now_unix} 3600 600 1209600 3600"),
            ttl: SOA_TTL,
            auth: true,
            domain_id: self.zone_id(zone),
            scope_mask: None,
        }
    }

    /// `masters` of a zone's DomainInfo: the first static record named `dns-01.<zone>`,
    /// `dns-02.<zone>` or `dns-03.<zone>`.
    pub fn masters(&self, zone: &str) -> Option<Vec<String>> {
        ["dns-01", "dns-02", "dns-03"].iter().find_map(|p| {
            self.statics_named(&format!("{p}.{zone}"))
                .next()
                .map(|r| vec![r.content.clone()])
        })
    }

    /// The records of a zone transfer (`list`, AXFR): every static record at or under the
    /// zone that no nearer zone owns, and a SOA and NS when the config has none (the Go
    /// node lists only the apex and synthesizes them only for service zones: W4).
    pub fn list(&self, zone: &str, now_unix: i64) -> Vec<Record> {
        let suffix = format!(".{zone}");
        let mut out: Vec<Record> = self
            .statics
            .iter()
            .filter(|r| {
                (r.qname == zone || r.qname.ends_with(&suffix))
                    && self.zone_of(&r.qname) == Some(zone)
            })
            .map(|r| self.record_of(r))
            .collect();
        if !out.iter().any(|r| r.qname == zone && r.qtype == "SOA") {
            out.insert(0, self.soa(zone, now_unix));
        }
        if !out.iter().any(|r| r.qname == zone && r.qtype == "NS") {
            out.push(Record {
                qname: zone.to_string(),
                qtype: "NS".into(),
                content: format!("dns-01.{zone}."),
                ttl: SOA_TTL,
                auth: true,
                domain_id: self.zone_id(zone),
                scope_mask: None,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn lists() -> IbpConfig {
        let members = serde_json::json!({
            "Alpha": {"Details": {"Name": "Alpha"}, "Membership": {"MemberLevel": 5},
                      "Service": {"Active": 1, "ServiceIPv4": "10.0.0.1", "ServiceIPv6": "fd00::1"},
                      "ServiceAssignments": {"Net": ["Svc", "Off"]}, "Location": {"Latitude": 50.0, "Longitude": 8.0}},
            "Beta":  {"Details": {"Name": "Beta"}, "Membership": {"MemberLevel": 5},
                      "Service": {"Active": 1, "ServiceIPv4": "10.0.0.2", "ServiceIPv6": ""},
                      "ServiceAssignments": {"Net": ["Off"]}, "Location": {"Latitude": 38.9, "Longitude": -77.0}}
        });
        let services = serde_json::json!({
            "Svc": {"Configuration": {"Active": 1, "ServiceType": "RPC"},
                    "Providers": {"P": {"RpcUrls": ["wss://rpc.example.test/a", "wss://Shared.Example.Test:8443/b"]}}},
            "Off": {"Configuration": {"Active": 0, "ServiceType": "RPC"},
                    "Providers": {"P": {"RpcUrls": ["wss://shared.example.test/c", "wss://dead.example.test/d"]}}}
        });
        IbpConfig::parse(&members.to_string(), &services.to_string()).expect("lists")
    }

    fn statics() -> Vec<StaticRecord> {
        serde_json::from_value(serde_json::json!([
            {"qname": "example.test.", "qtype": "NS", "content": "ns1.example.test", "ttl": 3600, "auth": true, "domain_id": "0"},
            {"qname": "example.test", "qtype": "SOA", "content": "ns1.example.test. admin.example.test. 1 3600 600 1209600 3600", "ttl": 3600},
            {"qname": "www.example.test", "qtype": "A", "content": "10.9.9.9", "ttl": 300},
            {"qname": "dns-02.example.test", "qtype": "A", "content": "10.8.8.8", "ttl": 300},
            {"qname": "deep.www.example.test", "qtype": "TXT", "content": "\"hi\"", "ttl": 60}
        ]))
        .expect("statics")
    }

    #[test]
    fn service_hosts_are_zones_with_the_union_of_their_members() {
        let z = Zones::build(&lists(), statics());
        assert_eq!(
            z.service_members("rpc.example.test"),
            Some(&["Alpha".to_string()][..])
        );
        // shared by an active and an inactive service: Beta joins through the inactive one.
        assert_eq!(
            z.service_members("shared.example.test"),
            Some(&["Alpha".to_string(), "Beta".to_string()][..])
        );
        assert_eq!(
            z.service_members("dead.example.test"),
            None,
            "only active services make hosts"
        );
        assert!(z.is_zone("example.test") && z.is_zone("rpc.example.test"));
        assert!(!z.is_zone("www.example.test"));
        assert_eq!(z.zone_id("rpc.example.test"), crc_id("rpc.example.test"));
        assert_eq!(z.zone_of("a.b.rpc.example.test"), Some("rpc.example.test"));
        assert_eq!(z.zone_of("www.example.test"), Some("example.test"));
        assert_eq!(z.zone_of("other.test"), None);
        assert_eq!(
            z.masters("example.test"),
            Some(vec!["10.8.8.8".to_string()])
        );
    }

    #[test]
    fn a_zone_lists_its_subdomains_and_gets_a_soa_when_it_has_none() {
        let z = Zones::build(&lists(), statics());
        let l = z.list("example.test", 7);
        let names: Vec<_> = l
            .iter()
            .map(|r| (r.qname.as_str(), r.qtype.as_str()))
            .collect();
        assert!(names.contains(&("www.example.test", "A")));
        assert!(names.contains(&("deep.www.example.test", "TXT")));
        assert_eq!(
            names.iter().filter(|(_, t)| *t == "SOA").count(),
            1,
            "the configured SOA only"
        );
        let s = z.list("rpc.example.test", 7);
        assert_eq!(s[0].qtype, "SOA");
        assert_eq!(
            s[0].content,
            "dns-01.rpc.example.test. hostmaster.rpc.example.test. 7 3600 600 1209600 3600"
        );
        assert!(
            s.iter()
                .any(|r| r.qtype == "NS" && r.content == "dns-01.rpc.example.test.")
        );
    }

    #[test]
    fn colliding_zone_ids_move_on() {
        // Not a real collision search: the rule itself, on ids already taken.
        let mut used = BTreeSet::new();
        let mut id = 0x7FFF_FFFFu32;
        used.insert(id);
        while !used.insert(id) {
            id = (id + 1) & 0x7FFF_FFFF;
        }
        assert_eq!(id, 0, "31-bit wrap");
    }
}
