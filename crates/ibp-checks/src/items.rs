//! Check items from the member and service lists (checks.md §1): one per site, member
//! domain and member endpoint, each checked once per IP family at the member's own IP.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ibp_lists::IbpConfig;
use ibp_wire::CheckType;
use serde_json::Value;

use crate::spec::CheckSpec;
use crate::target;

/// One thing to check for one member (both families share it).
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// Check name (`ping`, `ssl`, `wss`, `ethrpc`).
    pub check: String,
    /// Site, domain or endpoint.
    pub check_type: CheckType,
    /// The member's `Details.Name`.
    pub member: String,
    /// The service key (empty for sites).
    pub service: String,
    /// Lower-case hostname (domain and endpoint items).
    pub domain: String,
    /// The RPC URL as configured (endpoint items).
    pub endpoint: String,
    /// The port the URL names (domain items: of the first URL with that hostname).
    pub port: Option<u16>,
    /// The service's `NetworkName`.
    pub network_name: String,
    /// The service's genesis `StateRootHash` (may be empty).
    pub state_root_hash: String,
    /// Period.
    pub interval: Duration,
    /// Hard limit of one run.
    pub timeout: Duration,
    /// `ExtraOptions`.
    pub options: Value,
    /// `ServiceIPv4`, `ServiceIPv6` (as configured; empty when none).
    pub ipv4: String,
    /// See `ipv4`.
    pub ipv6: String,
}

/// One item for one IP family: what is scheduled and run.
#[derive(Debug, Clone, PartialEq)]
pub struct Unit {
    /// The item.
    pub item: Arc<Item>,
    /// The family.
    pub is_ipv6: bool,
    /// The address to dial, or why there is none.
    pub ip: Result<IpAddr, String>,
}

impl Unit {
    /// A stable key (check, member, domain, endpoint, family) — the result's identity.
    pub fn key(&self) -> String {
        let i = &self.item;
        format!(
            "{}|{}|{}|{}|{}|{}",
            i.check_type,
            i.check,
            i.member,
            i.domain,
            i.endpoint,
            if self.is_ipv6 { "v6" } else { "v4" }
        )
    }

    /// The key under which its remembered last-run time survives a reload: a changed IP
    /// makes the unit due at once (checks.md §3).
    pub fn schedule_key(&self) -> String {
        format!(
            "{}|{}",
            self.key(),
            match &self.ip {
                Ok(ip) => ip.to_string(),
                Err(_) => String::new(),
            }
        )
    }

    /// The member IP, as a host for per-host limits.
    pub fn host(&self) -> String {
        match &self.ip {
            Ok(ip) => ip.to_string(),
            Err(_) => String::new(),
        }
    }
}

/// Which service types a check applies to (checks.md §1.3); `None` for checks this
/// project does not run.
fn allowed_types(check: &str) -> Option<&'static [&'static str]> {
    match check {
        "ping" => Some(&[]),
        "ssl" => Some(&["RPC", "ETHRPC"]),
        "wss" => Some(&["RPC"]),
        "ethrpc" => Some(&["ETHRPC"]),
        _ => None,
    }
}

/// Builds every item of the enabled checks, de-duplicated (the Go monitor checks a
/// hostname once per service that lists it; here once), sorted. Unknown check names are
/// returned separately so the caller can say so.
pub fn build(lists: &IbpConfig, checks: &[CheckSpec]) -> (Vec<Item>, Vec<String>) {
    let mut out: BTreeMap<(String, String, String, String), Item> = BTreeMap::new();
    let mut unknown = Vec::new();
    for spec in checks.iter().filter(|c| c.enabled) {
        let Some(types) = allowed_types(&spec.name) else {
            unknown.push(format!("{} ({})", spec.name, spec.check_type));
            continue;
        };
        let base = |member: &ibp_lists::Member| Item {
            check: spec.name.clone(),
            check_type: spec.check_type,
            member: member.name.clone(),
            service: String::new(),
            domain: String::new(),
            endpoint: String::new(),
            port: None,
            network_name: String::new(),
            state_root_hash: String::new(),
            interval: Duration::from_secs(spec.minimum_interval.max(1)),
            timeout: Duration::from_secs(spec.timeout.max(1)),
            options: spec.options.clone(),
            ipv4: member.ipv4.trim().to_string(),
            ipv6: member.ipv6.trim().to_string(),
        };
        let eligible = lists.members.values().filter(|m| m.active && !m.override_);
        match spec.check_type {
            CheckType::Site => {
                for m in eligible {
                    out.entry((
                        spec.name.clone(),
                        m.name.clone(),
                        String::new(),
                        String::new(),
                    ))
                    .or_insert_with(|| base(m));
                }
            }
            CheckType::Domain | CheckType::Endpoint => {
                let members: Vec<_> = eligible.collect();
                for svc in lists.services.values().filter(|s| s.active) {
                    if !types.is_empty()
                        && !types
                            .iter()
                            .any(|t| t.eq_ignore_ascii_case(&svc.service_type))
                    {
                        continue;
                    }
                    for m in members
                        .iter()
                        .filter(|m| m.level >= svc.level_required && m.is_assigned(&svc.name))
                    {
                        for url in &svc.rpc_urls {
                            let host = target::domain(url);
                            let (domain, endpoint) = match spec.check_type {
                                CheckType::Domain if host.is_empty() => continue,
                                CheckType::Domain => (host.clone(), String::new()),
                                _ => (host.clone(), url.clone()),
                            };
                            let k = (
                                spec.name.clone(),
                                m.name.clone(),
                                domain.clone(),
                                endpoint.clone(),
                            );
                            out.entry(k).or_insert_with(|| Item {
                                service: svc.name.clone(),
                                port: target::port(url, "https"),
                                network_name: svc.network_name.clone(),
                                state_root_hash: svc.state_root_hash.clone(),
                                domain,
                                endpoint,
                                ..base(m)
                            });
                        }
                    }
                }
            }
        }
    }
    (out.into_values().collect(), unknown)
}

/// The units of `items`: one per configured family; a member with neither address gets
/// one IPv4 unit that fails with `No IPv4 or IPv6 configured`.
pub fn units(items: &[Item]) -> Vec<Unit> {
    let mut out = Vec::with_capacity(items.len() * 2);
    for it in items {
        let item = Arc::new(it.clone());
        let parse = |s: &str, v6: bool| -> Result<IpAddr, String> {
            s.parse::<IpAddr>()
                .ok()
                .filter(|ip| ip.is_ipv6() == v6)
                .ok_or_else(|| {
                    format!("invalid {} address {s:?}", if v6 { "IPv6" } else { "IPv4" })
                })
        };
        if it.ipv4.is_empty() && it.ipv6.is_empty() {
            out.push(Unit {
                item,
                is_ipv6: false,
                ip: Err("No IPv4 or IPv6 configured".into()),
            });
            continue;
        }
        if !it.ipv4.is_empty() {
            out.push(Unit {
                item: item.clone(),
                is_ipv6: false,
                ip: parse(&it.ipv4, false),
            });
        }
        if !it.ipv6.is_empty() {
            out.push(Unit {
                item,
                is_ipv6: true,
                ip: parse(&it.ipv6, true),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lists() -> IbpConfig {
        let root =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/ibp-config");
        let m = std::fs::read_to_string(root.join("members_professional.json")).expect("members");
        let s = std::fs::read_to_string(root.join("services_rpc.json")).expect("services");
        IbpConfig::parse(&m, &s).expect("parses")
    }

    fn spec(name: &str, t: CheckType) -> CheckSpec {
        CheckSpec {
            name: name.into(),
            enabled: true,
            check_type: t,
            minimum_interval: 300,
            timeout: 90,
            options: Value::Null,
        }
    }

    #[test]
    fn the_fixture_lists_give_the_go_item_counts_without_duplicates() {
        let l = lists();
        let (items, unknown) = build(
            &l,
            &[
                spec("ping", CheckType::Site),
                spec("ssl", CheckType::Domain),
                spec("wss", CheckType::Endpoint),
                spec("ethrpc", CheckType::Endpoint),
                spec("carrier-pigeon", CheckType::Site),
            ],
        );
        assert_eq!(unknown, vec!["carrier-pigeon (site)".to_string()]);
        let count = |c: &str| items.iter().filter(|i| i.check == c).count();
        // checks.md §1.2: 5 sites, 385 wss, 30 ethrpc endpoints; ssl is 395 in Go because it
        // repeats a hostname per service listing it — here each (member, hostname) once.
        assert_eq!(count("ping"), 5);
        assert_eq!(count("wss"), 385);
        assert_eq!(count("ethrpc"), 30);
        let ssl = count("ssl");
        // 240: computed independently from the fixtures (active members and services, level,
        // assignment, RPC or ETHRPC type, distinct (member, lower-case hostname)).
        const SSL_UNIQUE: usize = 240;
        assert_eq!(ssl, SSL_UNIQUE, "distinct (member, hostname) pairs");
        let us = units(&items);
        assert!(us.len() >= items.len());
        assert!(
            us.iter()
                .all(|u| u.ip.is_ok() || u.ip.as_ref().is_err_and(|e| e.contains("No IPv4")))
        );
    }
}
