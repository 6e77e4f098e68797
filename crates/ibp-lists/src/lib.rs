//! The IBP member and service lists, in the format of the public `ibp-network/config`
//! repository (`members_professional.json`, `services_rpc.json`), with the lookups the Go
//! programs use. Pure: fetching and reloading are the node's business.

use std::collections::BTreeMap;

use serde_json::Value;

/// A member of the IBP.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    /// Name (`Details.Name`, or the map key).
    pub name: String,
    /// `Service.Active`.
    pub active: bool,
    /// `Membership.MemberLevel`.
    pub level: u64,
    /// `Service.ServiceIPv4`.
    pub ipv4: String,
    /// `Service.ServiceIPv6`.
    pub ipv6: String,
    /// `ServiceAssignments`: network → service names.
    pub assignments: BTreeMap<String, Vec<String>>,
    /// `Override` (absent in the public lists): the member is taken out of checks and DNS.
    pub override_: bool,
    /// The key of the member in the members map (usually equal to `name`).
    pub key: String,
    /// `Location.Latitude`, degrees (0 when absent).
    pub latitude: f64,
    /// `Location.Longitude`, degrees (0 when absent).
    pub longitude: f64,
}

impl Member {
    /// Whether `service` (its map key) is in any of the member's assignment lists.
    pub fn is_assigned(&self, service: &str) -> bool {
        self.assignments
            .values()
            .any(|l| l.iter().any(|s| s == service))
    }
}

/// An RPC service.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    /// Name (the map key).
    pub name: String,
    /// `Configuration.Active`.
    pub active: bool,
    /// `Configuration.LevelRequired`.
    pub level_required: u64,
    /// Every provider's RPC URLs, providers in name order.
    pub rpc_urls: Vec<String>,
    /// `Configuration.ServiceType` (`RPC`, `ETHRPC`, …).
    pub service_type: String,
    /// `Configuration.NetworkName` (what `system_chain` / the chain ID must say).
    pub network_name: String,
    /// `Configuration.StateRootHash` of the genesis block (may be empty).
    pub state_root_hash: String,
}

/// Members and services, with lookups.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IbpConfig {
    /// Members by name.
    pub members: BTreeMap<String, Member>,
    /// Services by name.
    pub services: BTreeMap<String, Service>,
}

fn obj_get<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    let o = v.as_object()?;
    o.get(key).or_else(|| {
        o.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v)
    })
}

fn num(v: Option<&Value>) -> u64 {
    match v {
        Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(Value::Bool(b)) => u64::from(*b),
        _ => 0,
    }
}

fn float(v: Option<&Value>) -> f64 {
    match v {
        Some(Value::Number(n)) => n.as_f64().unwrap_or(0.0),
        Some(Value::String(s)) => s.trim().parse().unwrap_or(0.0),
        _ => 0.0,
    }
}

fn text(v: Option<&Value>) -> String {
    v.and_then(Value::as_str).unwrap_or_default().to_string()
}

/// The host of a URL (`wss://rpc.dotters.network/paseo` → `rpc.dotters.network`), lower case.
pub fn host_of(url: &str) -> Option<String> {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let host = rest.split(['/', '?', '#']).next()?;
    let host = host.rsplit_once('@').map(|(_, h)| h).unwrap_or(host);
    let host = host.split(':').next()?;
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

impl IbpConfig {
    /// Parses the members and services JSON documents.
    pub fn parse(members: &str, services: &str) -> Result<IbpConfig, String> {
        let m: Value =
            serde_json::from_str(members).map_err(|e| format!("members: not valid JSON: {e}"))?;
        let s: Value =
            serde_json::from_str(services).map_err(|e| format!("services: not valid JSON: {e}"))?;
        let mo = m
            .as_object()
            .ok_or("members: expected an object of name → member")?;
        let so = s
            .as_object()
            .ok_or("services: expected an object of name → service")?;
        let mut cfg = IbpConfig::default();
        for (key, v) in mo {
            let details = obj_get(v, "Details");
            let name = details
                .map(|d| text(obj_get(d, "Name")))
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| key.clone());
            let svc = obj_get(v, "Service");
            let mut assignments = BTreeMap::new();
            if let Some(Value::Object(a)) = obj_get(v, "ServiceAssignments") {
                for (net, list) in a {
                    let names = list
                        .as_array()
                        .map(|l| {
                            l.iter()
                                .filter_map(Value::as_str)
                                .map(String::from)
                                .collect()
                        })
                        .unwrap_or_default();
                    assignments.insert(net.clone(), names);
                }
            }
            cfg.members.insert(
                name.clone(),
                Member {
                    name,
                    active: num(svc.and_then(|s| obj_get(s, "Active"))) != 0,
                    level: num(obj_get(v, "Membership").and_then(|m| obj_get(m, "MemberLevel"))),
                    ipv4: text(svc.and_then(|s| obj_get(s, "ServiceIPv4"))),
                    ipv6: text(svc.and_then(|s| obj_get(s, "ServiceIPv6"))),
                    assignments,
                    override_: num(obj_get(v, "Override")) != 0,
                    key: key.clone(),
                    latitude: float(obj_get(v, "Location").and_then(|l| obj_get(l, "Latitude"))),
                    longitude: float(obj_get(v, "Location").and_then(|l| obj_get(l, "Longitude"))),
                },
            );
        }
        for (name, v) in so {
            let conf = obj_get(v, "Configuration");
            let mut rpc_urls = Vec::new();
            if let Some(Value::Object(p)) = obj_get(v, "Providers") {
                for prov in p.values() {
                    if let Some(Value::Array(urls)) = obj_get(prov, "RpcUrls") {
                        rpc_urls.extend(urls.iter().filter_map(Value::as_str).map(String::from));
                    }
                }
            }
            cfg.services.insert(
                name.clone(),
                Service {
                    name: name.clone(),
                    active: num(conf.and_then(|c| obj_get(c, "Active"))) != 0,
                    level_required: num(conf.and_then(|c| obj_get(c, "LevelRequired"))),
                    rpc_urls,
                    service_type: text(conf.and_then(|c| obj_get(c, "ServiceType"))),
                    network_name: text(conf.and_then(|c| obj_get(c, "NetworkName"))),
                    state_root_hash: text(conf.and_then(|c| obj_get(c, "StateRootHash"))),
                },
            );
        }
        if cfg.members.is_empty() {
            return Err("members: the list is empty".into());
        }
        Ok(cfg)
    }

    /// The member named `name` (exact, then ignoring case).
    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.get(name).or_else(|| {
            self.members
                .values()
                .find(|m| m.name.eq_ignore_ascii_case(name))
        })
    }

    /// Every service with an RPC URL on `domain`, sorted by name.
    pub fn services_for_domain(&self, domain: &str) -> Vec<&Service> {
        let d = domain.trim().trim_end_matches('.').to_ascii_lowercase();
        self.services
            .values()
            .filter(|s| {
                s.rpc_urls
                    .iter()
                    .any(|u| host_of(u).as_deref() == Some(d.as_str()))
            })
            .collect()
    }

    /// The service for `domain`. Where several services share a host (the reference picks
    /// one at random), the active one with the smallest name wins, so every node agrees.
    pub fn service_for_domain(&self, domain: &str) -> Option<&Service> {
        let all = self.services_for_domain(domain);
        all.iter().find(|s| s.active).or(all.first()).copied()
    }

    /// The RPC URLs a member serves: those of every service assigned to it.
    pub fn member_endpoints(&self, member: &str) -> Vec<(String, String)> {
        let Some(m) = self.member(member) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for names in m.assignments.values() {
            for n in names {
                if let Some(s) = self.services.get(n) {
                    out.extend(s.rpc_urls.iter().map(|u| (s.name.clone(), u.clone())));
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }
}
