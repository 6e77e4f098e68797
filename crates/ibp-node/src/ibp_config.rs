//! The IBP member and service lists (`System.ConfigUrls`; the format of the public
//! `ibp-network/config` repository), with the reference lookups, loaded from an http(s)
//! URL or a local path and reloaded periodically. A failed fetch or invalid JSON keeps the
//! last good copy: a node never stops because a remote config is down.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

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
    /// Every provider's RPC URLs.
    pub rpc_urls: Vec<String>,
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

/// Size and time limits of one list fetch: a misbehaving server (or a wrong URL pointing at
/// something huge) must not grow the node's memory or hold a reload forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FetchLimits {
    /// Largest accepted document, bytes.
    pub max_bytes: u64,
    /// Time limit of the whole fetch, connection to last byte.
    pub timeout: Duration,
}

impl Default for FetchLimits {
    fn default() -> Self {
        FetchLimits {
            max_bytes: 8 << 20,
            timeout: Duration::from_secs(30),
        }
    }
}

/// Reads an http(s) URL or a local path, within `limits`.
pub async fn fetch(source: &str, limits: FetchLimits) -> Result<String, String> {
    match tokio::time::timeout(limits.timeout, fetch_unbounded_time(source, limits)).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "{source}: not complete within {:?} (IbpNode.lists.timeout)",
            limits.timeout
        )),
    }
}

async fn fetch_unbounded_time(source: &str, limits: FetchLimits) -> Result<String, String> {
    let too_big = || {
        format!(
            "{source}: larger than {} bytes (IbpNode.lists.max_bytes); refused",
            limits.max_bytes
        )
    };
    let bytes = if source.starts_with("http://") || source.starts_with("https://") {
        // The whole fetch is bounded by the caller's timeout, which names the setting.
        let client = reqwest::Client::builder()
            .connect_timeout(limits.timeout)
            .build()
            .map_err(|e| e.to_string())?;
        let mut resp = client
            .get(source)
            .send()
            .await
            .map_err(|e| format!("GET {source}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("GET {source}: HTTP {}", resp.status()));
        }
        if resp.content_length().is_some_and(|n| n > limits.max_bytes) {
            return Err(too_big());
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("GET {source}: {e}"))?
        {
            if (body.len() + chunk.len()) as u64 > limits.max_bytes {
                return Err(too_big());
            }
            body.extend_from_slice(&chunk);
        }
        body
    } else {
        use tokio::io::AsyncReadExt;
        let path = source.strip_prefix("file://").unwrap_or(source);
        let f = tokio::fs::File::open(path)
            .await
            .map_err(|e| format!("read {path}: {e}"))?;
        let mut body = Vec::new();
        f.take(limits.max_bytes + 1)
            .read_to_end(&mut body)
            .await
            .map_err(|e| format!("read {path}: {e}"))?;
        if body.len() as u64 > limits.max_bytes {
            return Err(too_big());
        }
        body
    };
    String::from_utf8(bytes).map_err(|e| format!("{source}: not UTF-8 text: {e}"))
}

/// The current member/service lists, shared by a node's services, reloaded in the
/// background.
#[derive(Debug, Clone)]
pub struct SharedIbpConfig {
    inner: Arc<RwLock<Option<Arc<IbpConfig>>>>,
    limits: FetchLimits,
    /// Bumped after every successful load.
    loads: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Default for SharedIbpConfig {
    fn default() -> Self {
        SharedIbpConfig::with_limits(FetchLimits::default())
    }
}

impl SharedIbpConfig {
    /// A holder with a fixed config (tests, the demo).
    pub fn fixed(cfg: IbpConfig) -> SharedIbpConfig {
        SharedIbpConfig {
            inner: Arc::new(RwLock::new(Some(Arc::new(cfg)))),
            limits: FetchLimits::default(),
            loads: Arc::new(tokio::sync::watch::channel(1).0),
        }
    }

    /// A watch bumped after every successful load (services rebuild what depends on the
    /// lists).
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.loads.subscribe()
    }

    /// An empty holder whose fetches keep within `limits`.
    pub fn with_limits(limits: FetchLimits) -> SharedIbpConfig {
        SharedIbpConfig {
            inner: Arc::default(),
            limits,
            loads: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }

    /// The last good copy, if any was ever loaded.
    pub fn get(&self) -> Option<Arc<IbpConfig>> {
        self.inner.read().ok().and_then(|g| g.clone())
    }

    /// Loads once from `members` and `services`; on failure keeps the last good copy and
    /// returns the error.
    pub async fn reload(&self, members: &str, services: &str) -> Result<(), String> {
        let (m, s) = tokio::join!(fetch(members, self.limits), fetch(services, self.limits));
        let cfg = IbpConfig::parse(&m?, &s?)?;
        if let Ok(mut g) = self.inner.write() {
            *g = Some(Arc::new(cfg));
        }
        self.loads.send_modify(|n| *n += 1);
        Ok(())
    }

    /// Reloads every `period` until `stop` fires. Failures are logged and keep the last copy.
    pub fn spawn_reloader(
        &self,
        members: String,
        services: String,
        period: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                match me.reload(&members, &services).await {
                    Ok(()) => {
                        let n = me
                            .get()
                            .map(|c| (c.members.len(), c.services.len()))
                            .unwrap_or_default();
                        tracing::info!(
                            members = n.0,
                            services = n.1,
                            "member and service lists loaded"
                        );
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, kept_last_good = me.get().is_some(), "member/service lists not reloaded")
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(period) => {}
                    _ = stop.changed() => break,
                }
            }
        })
    }
}
