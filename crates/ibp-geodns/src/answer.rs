//! One lookup (dns.md §3.4, §4): static records, SOA, NS, ACME challenges, and per
//! family the healthy member nearest the client (after country overrides), with the usage
//! hit each geo answer makes.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use ibp_lists::{IbpConfig, Member};

use crate::geo::{GeoInfo, GeoIp, distance_km};
use crate::health::Health;
use crate::overrides::Overrides;
use crate::zones::{GEO_TTL, Record, Zones};

/// An address family of a geo answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// A records.
    V4,
    /// AAAA records.
    V6,
}

impl Family {
    fn qtype(self) -> &'static str {
        match self {
            Family::V4 => "A",
            Family::V6 => "AAAA",
        }
    }
}

/// Who asks: the client's address (or the network address of its EDNS client subnet)
/// and the prefix length it stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Client {
    /// Address.
    pub ip: IpAddr,
    /// Source prefix length (32 / 128 for a single address).
    pub prefix: u8,
}

impl Client {
    /// Parses what PowerDNS sends: `real-remote` (`a.b.c.d/nn`, the ECS subnet or the
    /// packet source: W1, the Go node could not parse it), then `remote`; each also as
    /// `[v6]`, `host:port`, `v6%zone`.
    pub fn from_params(real_remote: Option<&str>, remote: Option<&str>) -> Option<Client> {
        [real_remote, remote]
            .into_iter()
            .flatten()
            .find_map(parse_client)
    }
}

fn parse_client(raw: &str) -> Option<Client> {
    let t = raw.trim();
    if t.is_empty() {
        return None;
    }
    if let Some((addr, len)) = t.split_once('/') {
        let ip: IpAddr = addr.trim().parse().ok()?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = len.trim().parse().ok().filter(|p| *p <= max)?;
        return Some(Client {
            ip: network_of(ip, prefix),
            prefix,
        });
    }
    let bare = t.trim_start_matches('[');
    let bare = bare.split(']').next().unwrap_or(bare);
    let bare = bare.split('%').next().unwrap_or(bare);
    let ip = bare
        .parse::<IpAddr>()
        .ok()
        .or_else(|| t.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
        .or_else(|| {
            (t.matches(':').count() == 1)
                .then(|| t.split(':').next())
                .flatten()
                .and_then(|h| h.parse().ok())
        })?;
    Some(Client {
        ip,
        prefix: if ip.is_ipv4() { 32 } else { 128 },
    })
}

/// The network address of `ip`/`prefix`.
pub fn network_of(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let bits = u32::from(a);
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix.min(32)))
            };
            IpAddr::V4((bits & mask).into())
        }
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix.min(128)))
            };
            IpAddr::V6((bits & mask).into())
        }
    }
}

/// A usage hit (dns.md §5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// The service hostname.
    pub domain: String,
    /// The member answered (`Details.Name`), or `override:<CC>`.
    pub member: String,
    /// Country code (`??` when unknown).
    pub country_code: String,
    /// Country name (`Unknown` when unknown).
    pub country_name: String,
    /// `AS<n>` or empty.
    pub asn: String,
    /// AS organisation or empty.
    pub network: String,
    /// Whether the answer was AAAA.
    pub is_ipv6: bool,
}

/// What a lookup produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Answer {
    /// Records, in the spec's order, without exact duplicates.
    pub records: Vec<Record>,
    /// The usage hits of the geo answers.
    pub hits: Vec<Hit>,
    /// ACME challenges to fetch: (name, URL, TTL) of each `_acme-challenge` TXT record.
    pub acme: Vec<(String, String, u32)>,
}

impl Answer {
    fn push(&mut self, r: Record) {
        if !self
            .records
            .iter()
            .any(|x| x.qname == r.qname && x.qtype == r.qtype && x.content == r.content)
        {
            self.records.push(r);
        }
    }
}

/// Everything a DNS node answers from.
pub struct Resolver {
    /// Zones and static records.
    pub zones: Zones,
    /// Health.
    pub health: Health,
    /// Country overrides.
    pub overrides: Overrides,
    /// Client positions.
    pub geo: Arc<dyn GeoIp>,
    /// Members by map key, in key order.
    members: Vec<Member>,
    /// Skip members whose `Service.Active` is 0 (W10; the Go node answers with them).
    pub skip_inactive: bool,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("members", &self.members.len())
            .field("health", &self.health.held())
            .finish_non_exhaustive()
    }
}

impl Resolver {
    /// A resolver over `lists` and `zones` (built from the same lists).
    pub fn new(lists: &IbpConfig, zones: Zones, geo: Arc<dyn GeoIp>) -> Resolver {
        let mut members: Vec<Member> = lists.members.values().cloned().collect();
        members.sort_by(|a, b| a.key.as_bytes().cmp(b.key.as_bytes()));
        Resolver {
            zones,
            health: Health::default(),
            overrides: Overrides::default(),
            geo,
            members,
            skip_inactive: true,
        }
    }

    /// Replaces the lists and zones, keeping health and overrides.
    pub fn reload(&mut self, lists: &IbpConfig, zones: Zones) {
        let mut members: Vec<Member> = lists.members.values().cloned().collect();
        members.sort_by(|a, b| a.key.as_bytes().cmp(b.key.as_bytes()));
        self.members = members;
        self.zones = zones;
    }

    /// Answers `qname` (normalized) for `qtype` (upper case: `A`, `AAAA`, `ANY`, `SOA`,
    /// `NS`, …) asked by `client`, at `now_unix`.
    pub fn lookup(
        &self,
        qname: &str,
        qtype: &str,
        client: Option<&Client>,
        now_unix: i64,
    ) -> Answer {
        let mut a = Answer::default();
        if qtype == "SOA" && self.zones.is_zone(qname) {
            a.push(self.zones.soa(qname, now_unix));
        }
        let acme = qname.starts_with("_acme-challenge.");
        if acme {
            for r in self.zones.statics_named(qname).filter(|r| r.qtype == "TXT") {
                a.acme.push((r.qname.clone(), r.content.clone(), r.ttl));
            }
        }
        if qtype == "NS" {
            for r in self.zones.statics_named(qname).filter(|r| r.qtype == "NS") {
                a.push(self.zones.record_of(r));
            }
        }
        if qtype == "ANY" && !acme {
            for r in self.zones.statics_named(qname) {
                a.push(self.zones.record_of(r));
            }
        }
        let geo = client.map(|c| (c, self.geo.lookup(c.ip)));
        for (want, family) in [("A", Family::V4), ("AAAA", Family::V6)] {
            if (qtype == want || qtype == "ANY")
                && let Some((r, hit)) = self.geo_record(qname, family, geo.as_ref())
            {
                a.push(r);
                if let Some(h) = hit {
                    a.hits.push(h);
                }
            }
        }
        a
    }

    fn find_member(&self, name: &str) -> Option<&Member> {
        self.members
            .iter()
            .find(|m| m.key.eq_ignore_ascii_case(name) || m.name.eq_ignore_ascii_case(name))
    }

    fn address(m: &Member, family: Family) -> Option<IpAddr> {
        let text = match family {
            Family::V4 => &m.ipv4,
            Family::V6 => &m.ipv6,
        };
        text.trim()
            .parse::<IpAddr>()
            .ok()
            .filter(|ip| ip.is_ipv6() == (family == Family::V6))
    }

    fn usable(&self, m: &Member, family: Family, qname: &str) -> Option<IpAddr> {
        if m.override_ || (self.skip_inactive && !m.active) {
            return None;
        }
        let ip = Self::address(m, family)?;
        (!self.health.offline(&m.name, family == Family::V6, qname)).then_some(ip)
    }

    fn record(&self, qname: &str, family: Family, content: String, scope: Option<u8>) -> Record {
        Record {
            qname: qname.to_string(),
            qtype: family.qtype().into(),
            content,
            ttl: GEO_TTL,
            auth: true,
            domain_id: self.zones.zone_id(qname),
            scope_mask: scope,
        }
    }

    fn hit(qname: &str, member: String, geo: &GeoInfo, family: Family) -> Hit {
        let cc = if geo.country_code.chars().count() == 2 {
            geo.country_code.to_ascii_uppercase()
        } else {
            "??".to_string()
        };
        Hit {
            domain: qname.to_string(),
            member: if member.is_empty() {
                "(none)".into()
            } else {
                member
            },
            country_name: if cc == "??" {
                "Unknown".into()
            } else {
                geo.country_name.clone()
            },
            country_code: cc,
            asn: geo.asn.clone(),
            network: geo.network.clone(),
            is_ipv6: family == Family::V6,
        }
    }

    /// At most one record for the family, and its hit (when a client asked).
    fn geo_record(
        &self,
        qname: &str,
        family: Family,
        client: Option<&(&Client, GeoInfo)>,
    ) -> Option<(Record, Option<Hit>)> {
        // EDNS scope: the geo network the client fell in, never wider than asked.
        let scope = client.map(|(c, g)| g.prefix.map_or(0, |p| p.min(c.prefix)));
        // §4.1 country overrides.
        if let Some((_, g)) = client
            && !g.country_code.is_empty()
            && let Some(o) = self.overrides.get(qname, &g.country_code)
        {
            if !o.member_name.is_empty() {
                if self.zones.service_members(qname).is_some()
                    && let Some(m) = self.find_member(&o.member_name)
                    && self.usable(m, family, qname).is_some()
                {
                    let content = match family {
                        Family::V4 => m.ipv4.trim().to_string(),
                        Family::V6 => m.ipv6.trim().to_string(),
                    };
                    let hit = Self::hit(qname, m.name.clone(), g, family);
                    return Some((self.record(qname, family, content, scope), Some(hit)));
                }
            } else if let Some(ip) = o.address(family == Family::V6) {
                let hit = Self::hit(qname, format!("override:{}", g.country_code), g, family);
                return Some((self.record(qname, family, ip.to_string(), scope), Some(hit)));
            }
        }
        // §4.3 the nearest healthy member.
        let keys: HashSet<&str> = self
            .zones
            .service_members(qname)?
            .iter()
            .map(String::as_str)
            .collect();
        let position = client.and_then(|(_, g)| g.position);
        let mut best: Option<(&Member, f64)> = None;
        for m in self
            .members
            .iter()
            .filter(|m| keys.contains(m.key.as_str()))
        {
            if self.usable(m, family, qname).is_none() {
                continue;
            }
            let Some(p) = position else {
                // No client position (W9: not (0, 0)): the first member in key order.
                best = Some((m, 0.0));
                break;
            };
            let d = distance_km(p, (m.latitude, m.longitude));
            if best.is_none_or(|(_, bd)| d < bd) {
                best = Some((m, d));
            }
        }
        let (m, _) = best?;
        if m.name.is_empty() {
            return None;
        }
        let content = match family {
            Family::V4 => m.ipv4.trim().to_string(),
            Family::V6 => m.ipv6.trim().to_string(),
        };
        let hit = client.map(|(_, g)| Self::hit(qname, m.name.clone(), g, family));
        Some((self.record(qname, family, content, scope), hit))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::geo::GeoInfo;
    use crate::health::{Key, Kind};

    struct Table(Vec<(IpAddr, GeoInfo)>);

    impl GeoIp for Table {
        fn lookup(&self, ip: IpAddr) -> GeoInfo {
            self.0
                .iter()
                .find(|(a, _)| *a == ip)
                .map(|(_, g)| g.clone())
                .unwrap_or_default()
        }
    }

    fn geo(cc: &str, lat: f64, lon: f64) -> GeoInfo {
        GeoInfo {
            country_code: cc.into(),
            country_name: format!("{cc}-land"),
            position: Some((lat, lon)),
            asn: "AS64501".into(),
            network: "Test Net".into(),
            prefix: Some(16),
        }
    }

    fn resolver() -> Resolver {
        let members = serde_json::json!({
            "Alpha": {"Details": {"Name": "Alpha"}, "Service": {"Active": 1, "ServiceIPv4": "10.0.0.1", "ServiceIPv6": "fd00::1"},
                      "ServiceAssignments": {"N": ["Svc"]}, "Location": {"Latitude": 50.0, "Longitude": 8.0}},
            "Beta":  {"Details": {"Name": "Beta"}, "Service": {"Active": 1, "ServiceIPv4": "10.0.0.2", "ServiceIPv6": ""},
                      "ServiceAssignments": {"N": ["Svc"]}, "Location": {"Latitude": 38.9, "Longitude": -77.0}},
            "Gamma": {"Details": {"Name": "Gamma"}, "Service": {"Active": 0, "ServiceIPv4": "10.0.0.3", "ServiceIPv6": ""},
                      "ServiceAssignments": {"N": ["Svc"]}, "Location": {"Latitude": 39.0, "Longitude": 116.0}}
        });
        let services = serde_json::json!({
            "Svc": {"Configuration": {"Active": 1}, "Providers": {"P": {"RpcUrls": ["wss://rpc.example.test/x"]}}}
        });
        let lists = IbpConfig::parse(&members.to_string(), &services.to_string()).expect("lists");
        let statics = serde_json::from_value(serde_json::json!([
            {"qname": "rpc.example.test", "qtype": "TXT", "content": "\"static\"", "ttl": 60},
            {"qname": "_acme-challenge.rpc.example.test", "qtype": "TXT", "content": "https://acme.example.test/x", "ttl": 0}
        ]))
        .expect("statics");
        let zones = Zones::build(&lists, statics);
        let table = Table(vec![
            ("10.1.2.3".parse().expect("ip"), geo("DE", 50.11, 8.68)),
            ("10.2.0.0".parse().expect("ip"), geo("US", 38.90, -77.04)),
            ("10.3.0.0".parse().expect("ip"), geo("CN", 39.90, 116.40)),
        ]);
        Resolver::new(&lists, zones, Arc::new(table))
    }

    fn client(s: &str) -> Client {
        Client::from_params(Some(s), None).expect("client")
    }

    fn contents(a: &Answer) -> Vec<(String, String)> {
        a.records
            .iter()
            .map(|r| (r.qtype.clone(), r.content.clone()))
            .collect()
    }

    #[test]
    fn the_nearest_healthy_member_answers_and_counts_a_hit() {
        let r = resolver();
        let de = r.lookup("rpc.example.test", "A", Some(&client("10.1.2.3/32")), 0);
        assert_eq!(contents(&de), vec![("A".into(), "10.0.0.1".into())]);
        assert_eq!(de.hits[0].member, "Alpha");
        assert_eq!(de.hits[0].country_code, "DE");
        assert_eq!(
            de.records[0].scope_mask,
            Some(16),
            "the geo network, not the /32"
        );
        // ECS subnet: the network address is looked up (W1).
        let us = r.lookup("rpc.example.test", "A", Some(&client("10.2.0.0/24")), 0);
        assert_eq!(contents(&us), vec![("A".into(), "10.0.0.2".into())]);
        assert_eq!(us.records[0].scope_mask, Some(16));
        // Inactive Gamma is nearest to China but skipped (W10): Alpha is nearer than Beta.
        let cn = r.lookup("rpc.example.test", "A", Some(&client("10.3.0.0/24")), 0);
        assert_eq!(contents(&cn), vec![("A".into(), "10.0.0.1".into())]);
        // ANY: static records, then one per family.
        let any = r.lookup("rpc.example.test", "ANY", Some(&client("10.2.0.0/24")), 0);
        assert_eq!(
            contents(&any),
            vec![
                ("TXT".into(), "\"static\"".into()),
                ("A".into(), "10.0.0.2".into()),
                ("AAAA".into(), "fd00::1".into())
            ]
        );
        assert_eq!(any.hits.len(), 2, "ANY counts both families");
        // Unknown position (W9): the first member in key order, no (0,0) guess.
        let nowhere = r.lookup("rpc.example.test", "A", Some(&client("192.168.1.1")), 0);
        assert_eq!(contents(&nowhere), vec![("A".into(), "10.0.0.1".into())]);
        assert_eq!(nowhere.hits[0].country_code, "??");
        assert_eq!(nowhere.hits[0].country_name, "Unknown");
        assert_eq!(nowhere.records[0].scope_mask, Some(0));
        // No client: an answer, no hit.
        let none = r.lookup("rpc.example.test", "A", None, 0);
        assert_eq!(none.records.len(), 1);
        assert!(none.hits.is_empty());
    }

    #[test]
    fn an_offline_member_is_skipped_and_nothing_falls_back_to_offline_ones() {
        let mut r = resolver();
        let down = |m: &str| Key {
            kind: Kind::Endpoint,
            check: "wss".into(),
            member: m.to_ascii_lowercase(),
            domain: "rpc.example.test".into(),
            endpoint: "wss://rpc.example.test/x".into(),
            v6: false,
        };
        r.health
            .apply_decision(down("Alpha"), false, chrono::Utc::now());
        let de = r.lookup("rpc.example.test", "A", Some(&client("10.1.2.3")), 0);
        assert_eq!(
            contents(&de),
            vec![("A".into(), "10.0.0.2".into())],
            "the next nearest"
        );
        let v6 = r.lookup("rpc.example.test", "AAAA", Some(&client("10.1.2.3")), 0);
        assert_eq!(
            contents(&v6),
            vec![("AAAA".into(), "fd00::1".into())],
            "per family"
        );
        r.health
            .apply_decision(down("Beta"), false, chrono::Utc::now());
        let none = r.lookup("rpc.example.test", "A", Some(&client("10.1.2.3")), 0);
        assert!(none.records.is_empty());
    }

    #[test]
    fn country_overrides_come_first_and_fall_back_to_geo() {
        let mut r = resolver();
        r.overrides
            .apply(br#"{"action":"set","domain":"rpc.example.test","countryCode":"DE","override":{"memberName":"beta"}}"#)
            .expect("set");
        let de = r.lookup("rpc.example.test", "A", Some(&client("10.1.2.3")), 0);
        assert_eq!(contents(&de), vec![("A".into(), "10.0.0.2".into())]);
        assert_eq!(de.hits[0].member, "Beta");
        // Beta has no IPv6: the override fails for AAAA and geo routing answers.
        let v6 = r.lookup("rpc.example.test", "AAAA", Some(&client("10.1.2.3")), 0);
        assert_eq!(contents(&v6), vec![("AAAA".into(), "fd00::1".into())]);
        r.overrides
            .apply(br#"{"action":"set","domain":"rpc.example.test","countryCode":"US","override":{"ipv4":"10.9.9.9"}}"#)
            .expect("set");
        let us = r.lookup("rpc.example.test", "A", Some(&client("10.2.0.0/24")), 0);
        assert_eq!(contents(&us), vec![("A".into(), "10.9.9.9".into())]);
        assert_eq!(us.hits[0].member, "override:US");
    }

    #[test]
    fn soa_ns_and_acme_pieces() {
        let r = resolver();
        let soa = r.lookup("rpc.example.test", "SOA", None, 42);
        assert_eq!(
            soa.records[0].content,
            "dns-01.rpc.example.test. hostmaster.rpc.example.test. 42 3600 600 1209600 3600"
        );
        let acme = r.lookup("_acme-challenge.rpc.example.test", "A", None, 0);
        assert_eq!(acme.acme.len(), 1, "for any qtype");
        assert!(acme.records.is_empty());
        assert!(r.lookup("unknown.test", "ANY", None, 0).records.is_empty());
    }

    #[test]
    fn client_addresses_parse_as_powerdns_sends_them() {
        let c = |rr: Option<&str>, r: Option<&str>| Client::from_params(rr, r);
        assert_eq!(
            c(Some("10.1.2.3/24"), None).map(|x| (x.ip.to_string(), x.prefix)),
            Some(("10.1.2.0".into(), 24))
        );
        assert_eq!(
            c(Some("garbage"), Some("10.1.2.3:53")).map(|x| x.ip.to_string()),
            Some("10.1.2.3".into())
        );
        assert_eq!(
            c(None, Some("[fd00::1]:53")).map(|x| x.ip.to_string()),
            Some("fd00::1".into())
        );
        assert_eq!(
            c(None, Some("fe80::1%eth0")).map(|x| x.ip.to_string()),
            Some("fe80::1".into())
        );
        assert_eq!(c(Some("2001:db8::/129"), None), None);
        assert_eq!(c(None, None), None);
    }
}
