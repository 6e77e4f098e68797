//! Which members are offline (dns.md §4.2), from two sources: official decisions the DNS
//! node receives over the bus (applied at once), and monitors' `/results` snapshots
//! (bootstrap and repair, as the Go node polls them). A snapshot never overrides a newer
//! decision; in enforce mode it never overrides a decision at all.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde_json::Value;

/// The kind of check a result is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A member-wide check (ping).
    Site,
    /// A hostname check (ssl).
    Domain,
    /// An RPC URL check (wss, ethrpc).
    Endpoint,
}

impl Kind {
    /// From the wire's check type.
    pub fn parse(s: &str) -> Option<Kind> {
        match s.to_ascii_lowercase().as_str() {
            "site" => Some(Kind::Site),
            "domain" => Some(Kind::Domain),
            "endpoint" => Some(Kind::Endpoint),
            _ => None,
        }
    }

    /// The wire's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Site => "site",
            Kind::Domain => "domain",
            Kind::Endpoint => "endpoint",
        }
    }
}

/// What one result is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    /// Kind.
    pub kind: Kind,
    /// Check name.
    pub check: String,
    /// Member display name, lower case.
    pub member: String,
    /// Hostname, lower case (empty for sites).
    pub domain: String,
    /// RPC URL (endpoint checks).
    pub endpoint: String,
    /// IPv6 family.
    pub v6: bool,
}

/// Where a result came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A decision received over the bus.
    Bus,
    /// A monitor's `/results` snapshot.
    Snapshot,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Entry {
    status: bool,
    at: DateTime<Utc>,
    source: Source,
}

#[derive(Debug, Default, Clone)]
struct Down {
    site: bool,
    domains: HashSet<String>,
}

/// What a snapshot brought.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SnapshotStats {
    /// Groups in it.
    pub groups: usize,
    /// Results taken from it.
    pub taken: usize,
    /// Results a decision from the bus kept out.
    pub kept_out: usize,
}

/// The health view.
#[derive(Debug, Clone, Default)]
pub struct Health {
    entries: BTreeMap<Key, Entry>,
    down: HashMap<(String, bool), Down>,
    bus_wins: bool,
    last_snapshot: Option<DateTime<Utc>>,
}

/// A `/results` body, parsed (before taking any lock) and ready to [`Health::take`].
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    results: Vec<(Key, Entry)>,
    groups: usize,
}

impl Health {
    /// Every result held: the check, its status, when it was decided or observed, and
    /// whether it came from a decision on the bus (else from a monitor's snapshot).
    pub fn entries(&self) -> impl Iterator<Item = (&Key, bool, DateTime<Utc>, bool)> {
        self.entries
            .iter()
            .map(|(k, e)| (k, e.status, e.at, e.source == Source::Bus))
    }

    /// An empty view (everyone online). With `bus_wins` (enforce mode), a snapshot never
    /// replaces what a decision said.
    pub fn new(bus_wins: bool) -> Health {
        Health {
            bus_wins,
            ..Health::default()
        }
    }

    /// Applies an official decision (`status` true = online) decided at `at`. An older
    /// decision than the one held is ignored. Returns whether the view changed.
    pub fn apply_decision(&mut self, key: Key, status: bool, at: DateTime<Utc>) -> bool {
        if let Some(e) = self.entries.get(&key)
            && e.source == Source::Bus
            && e.at > at
        {
            return false;
        }
        let new = Entry {
            status,
            at,
            source: Source::Bus,
        };
        let changed = self.entries.get(&key).is_none_or(|e| e.status != status);
        self.entries.insert(key, new);
        if changed {
            self.reindex();
        }
        changed
    }

    /// Replaces the snapshot part of the view with a `/results` body (storage.md §4.3),
    /// received at `now`. A result older than a decision from the bus for the same check
    /// (or any, with `bus_wins`) is not taken. An error leaves the view as it was.
    pub fn apply_snapshot(
        &mut self,
        body: &Value,
        now: DateTime<Utc>,
    ) -> Result<SnapshotStats, String> {
        Ok(self.take(Health::parse_snapshot(body, now)?, now))
    }

    /// Parses a `/results` body received at `now` (no view needed: callers parse before
    /// locking the view, so answers never wait for the parse).
    pub fn parse_snapshot(body: &Value, now: DateTime<Utc>) -> Result<Snapshot, String> {
        let mut fresh: Vec<(Key, Entry)> = Vec::new();
        let mut count = 0;
        for (field, kind) in [
            ("SiteResults", Kind::Site),
            ("DomainResults", Kind::Domain),
            ("EndpointResults", Kind::Endpoint),
        ] {
            let groups = match body.get(field) {
                None | Some(Value::Null) => continue,
                Some(Value::Array(g)) => g,
                Some(_) => return Err(format!("{field}: expected an array")),
            };
            for g in groups {
                count += 1;
                let text = |k: &str| g.get(k).and_then(Value::as_str).unwrap_or_default();
                let v6 = g.get("IsIPv6").and_then(Value::as_bool).unwrap_or(false);
                let domain = text("Domain").to_ascii_lowercase();
                let check = text("CheckName").to_string();
                let endpoint = text("RpcUrl").to_string();
                for r in g
                    .get("Results")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let member = r
                        .get("MemberName")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_ascii_lowercase();
                    let status = r
                        .get("Status")
                        .and_then(Value::as_bool)
                        .ok_or_else(|| format!("{field}: a result without a boolean Status"))?;
                    let at = match r.get("Checktime").and_then(Value::as_str) {
                        Some(t) => DateTime::parse_from_rfc3339(t)
                            .map_err(|e| format!("{field}: Checktime {t:?}: {e}"))?
                            .with_timezone(&Utc),
                        None => now,
                    };
                    let v6 = r.get("IsIPv6").and_then(Value::as_bool).unwrap_or(v6);
                    fresh.push((
                        Key {
                            kind,
                            check: check.clone(),
                            member,
                            domain: domain.clone(),
                            endpoint: endpoint.clone(),
                            v6,
                        },
                        Entry {
                            status,
                            at,
                            source: Source::Snapshot,
                        },
                    ));
                }
            }
        }
        Ok(Snapshot {
            results: fresh,
            groups: count,
        })
    }

    /// Replaces the snapshot part of the view with a parsed snapshot taken at `now`. With
    /// `bus_wins` (enforce mode) snapshots serve only until the bus has delivered a
    /// decision: from then on a snapshot (unsigned, over HTTP) changes nothing, and what
    /// earlier ones said stays until decisions replace it.
    pub fn take(&mut self, snapshot: Snapshot, now: DateTime<Utc>) -> SnapshotStats {
        let mut stats = SnapshotStats {
            groups: snapshot.groups,
            ..SnapshotStats::default()
        };
        self.last_snapshot = Some(now);
        if self.bus_wins && self.entries.values().any(|e| e.source == Source::Bus) {
            stats.kept_out = snapshot.results.len();
            return stats;
        }
        self.entries.retain(|_, e| e.source == Source::Bus);
        for (k, e) in snapshot.results {
            match self.entries.get(&k) {
                Some(b) if self.bus_wins || b.at >= e.at => stats.kept_out += 1,
                _ => {
                    stats.taken += 1;
                    self.entries.insert(k, e);
                }
            }
        }
        self.reindex();
        stats
    }

    fn reindex(&mut self) {
        let mut down: HashMap<(String, bool), Down> = HashMap::new();
        for (k, e) in &self.entries {
            if e.status {
                continue;
            }
            let d = down.entry((k.member.clone(), k.v6)).or_default();
            match k.kind {
                Kind::Site => d.site = true,
                Kind::Domain | Kind::Endpoint => {
                    d.domains.insert(k.domain.clone());
                }
            }
        }
        self.down = down;
    }

    /// Whether nothing is known yet (then everyone counts as online).
    pub fn is_permissive(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether member `name` (its display name, any case) is offline for the family when
    /// answering for hostname `qname` (lower case): a failed site check, or a failed
    /// domain or endpoint check on that hostname (W7: per hostname, not per URL path).
    pub fn offline(&self, name: &str, v6: bool, qname: &str) -> bool {
        if self.down.is_empty() {
            return false;
        }
        self.down
            .get(&(name.to_ascii_lowercase(), v6))
            .is_some_and(|d| d.site || d.domains.contains(qname))
    }

    /// When the last snapshot was taken.
    pub fn last_snapshot(&self) -> Option<DateTime<Utc>> {
        self.last_snapshot
    }

    /// How many results are held.
    pub fn held(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).expect("time")
    }

    fn key(kind: Kind, member: &str, domain: &str) -> Key {
        Key {
            kind,
            check: "wss".into(),
            member: member.to_ascii_lowercase(),
            domain: domain.into(),
            endpoint: if kind == Kind::Endpoint {
                format!("wss://{domain}/a")
            } else {
                String::new()
            },
            v6: false,
        }
    }

    fn snapshot(status: bool, at: &str) -> Value {
        json!({
            "SiteResults": [],
            "DomainResults": [],
            "EndpointResults": [{"CheckName": "wss", "Domain": "RPC.Example.Test", "IsIPv6": false,
                "RpcUrl": "wss://rpc.example.test/a",
                "Results": [{"MemberName": "Alpha", "Status": status, "Checktime": at, "IsIPv6": false}]}]
        })
    }

    #[test]
    fn offline_follows_the_spec_rules() {
        let mut h = Health::new(false);
        assert!(h.is_permissive() && !h.offline("Alpha", false, "rpc.example.test"));
        h.apply_decision(
            key(Kind::Endpoint, "Alpha", "rpc.example.test"),
            false,
            t(0),
        );
        assert!(
            h.offline("ALPHA", false, "rpc.example.test"),
            "name compared ignoring case"
        );
        assert!(!h.offline("Alpha", true, "rpc.example.test"), "per family");
        assert!(
            !h.offline("Alpha", false, "other.example.test"),
            "per hostname"
        );
        h.apply_decision(key(Kind::Site, "Beta", ""), false, t(0));
        assert!(
            h.offline("Beta", false, "anything.test"),
            "a site failure counts everywhere"
        );
        h.apply_decision(key(Kind::Endpoint, "Alpha", "rpc.example.test"), true, t(1));
        assert!(!h.offline("Alpha", false, "rpc.example.test"));
    }

    #[test]
    fn a_snapshot_never_overrides_a_newer_decision() {
        let mut h = Health::new(false);
        h.apply_decision(
            key(Kind::Endpoint, "Alpha", "rpc.example.test"),
            false,
            t(100),
        );
        let s = h
            .apply_snapshot(&snapshot(true, "2027-01-15T07:59:00Z"), t(200))
            .expect("ok");
        // 2027-01-15T07:59Z is before t(100) = 2027-01-15T08:01:40Z.
        assert_eq!((s.groups, s.taken, s.kept_out), (1, 0, 1));
        assert!(h.offline("Alpha", false, "rpc.example.test"));
        // A newer snapshot result wins (not in enforce mode).
        h.apply_snapshot(&snapshot(true, "2027-01-15T09:00:00Z"), t(300))
            .expect("ok");
        assert!(!h.offline("Alpha", false, "rpc.example.test"));
        // An older decision arriving late changes nothing.
        let mut h = Health::new(false);
        h.apply_decision(key(Kind::Site, "Alpha", ""), true, t(10));
        assert!(!h.apply_decision(key(Kind::Site, "Alpha", ""), false, t(5)));
        assert!(!h.offline("Alpha", false, "x"));
    }

    #[test]
    fn in_enforce_mode_the_bus_always_wins_and_snapshots_replace_each_other() {
        let mut h = Health::new(true);
        h.apply_decision(
            key(Kind::Endpoint, "Alpha", "rpc.example.test"),
            false,
            t(0),
        );
        h.apply_snapshot(&snapshot(true, "2030-01-01T00:00:00Z"), t(1))
            .expect("ok");
        assert!(h.offline("Alpha", false, "rpc.example.test"));
        let mut h = Health::new(false);
        h.apply_snapshot(&snapshot(false, "2026-01-01T00:00:00Z"), t(1))
            .expect("ok");
        assert!(h.offline("Alpha", false, "rpc.example.test"));
        h.apply_snapshot(
            &json!({"SiteResults": [], "DomainResults": [], "EndpointResults": []}),
            t(2),
        )
        .expect("ok");
        assert!(
            h.is_permissive(),
            "an empty snapshot clears what the last one said"
        );
        assert!(h.apply_snapshot(&json!({"SiteResults": 7}), t(3)).is_err());
        let bad = json!({"SiteResults": [{"Results": [{"MemberName": "A", "Status": true, "Checktime": "yesterday"}]}]});
        assert!(
            h.apply_snapshot(&bad, t(4)).is_err(),
            "a bad Checktime fails the body"
        );
    }

    #[test]
    fn in_enforce_mode_snapshots_serve_only_until_the_bus_has_delivered() {
        let mut h = Health::new(true);
        let s = h
            .apply_snapshot(&snapshot(false, "2026-01-01T00:00:00Z"), t(1))
            .expect("ok");
        assert_eq!(s.taken, 1, "before any decision a snapshot bootstraps");
        assert!(h.offline("Alpha", false, "rpc.example.test"));
        h.apply_decision(key(Kind::Site, "Beta", ""), true, t(2));
        // From now on snapshots change nothing: not even checks no decision touched.
        let s = h
            .apply_snapshot(&snapshot(true, "2030-01-01T00:00:00Z"), t(3))
            .expect("ok");
        assert_eq!((s.taken, s.kept_out), (0, 1));
        assert!(h.offline("Alpha", false, "rpc.example.test"));
        // A decision still does.
        h.apply_decision(key(Kind::Endpoint, "Alpha", "rpc.example.test"), true, t(4));
        assert!(!h.offline("Alpha", false, "rpc.example.test"));
    }
}
