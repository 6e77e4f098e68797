//! The DNS role's answering side (dns.md): the resolver built from the lists and the static
//! DNS config, health pushed by decisions from the bus and repaired from monitors'
//! `/results`, country overrides from the file and from NATS (persisted), ACME challenges
//! fetched off the answer path, and usage hits counted from real answers.
//!
//! The HTTP remote backend (`/dns`) and the built-in DNS listener both answer through
//! [`GeoDnsService::lookup`], so they cannot disagree.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use ibp_core::Decision;
use ibp_geodns::backend::{self, Request};
use ibp_geodns::geo::{GeoIp, MaxMind, NoGeo};
use ibp_geodns::health::{Key, Kind};
use ibp_geodns::overrides::{Change, SUBJECT as OVERRIDE_SUBJECT};
use ibp_geodns::{Answer, Client, Record, Resolver, StaticRecord, Zones};
use ibp_lists::IbpConfig;
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use super::dns::{DnsService, Hit};
use crate::cluster::Node;
use crate::config::GeoDnsConfig;
use crate::ibp_config::{FetchLimits, SharedIbpConfig, fetch};

/// How long a fetched ACME challenge is served from memory (W11: the Go node fetched it
/// inside every lookup, up to ~18 s, past PowerDNS's 2 s timeout).
const ACME_CACHE: Duration = Duration::from_secs(10);
/// How long a failed ACME fetch is not retried.
const ACME_NEGATIVE: Duration = Duration::from_secs(3);
/// The `/results` poll's time limit (as the Go node).
const POLL_TIMEOUT: Duration = Duration::from_secs(5);

/// Counters of the answering side (shown by `GET /v1/geodns`).
#[derive(Debug, Default)]
pub struct GeoDnsCounters {
    /// Lookups answered.
    pub lookups: AtomicU64,
    /// Geo answers (records chosen by health and distance or an override).
    pub geo_answers: AtomicU64,
    /// Decisions from the bus that changed health.
    pub decisions_applied: AtomicU64,
    /// `/results` snapshots taken.
    pub snapshots: AtomicU64,
    /// `/results` polls that failed or were ignored.
    pub snapshot_failures: AtomicU64,
    /// Override updates applied from NATS.
    pub overrides_applied: AtomicU64,
    /// Override updates refused (malformed, or unsigned in enforce mode).
    pub overrides_refused: AtomicU64,
    /// Hits not counted (the counters were full).
    pub hits_refused: AtomicU64,
}

struct Acme {
    at: Instant,
    body: Option<String>,
}

struct Inner {
    cfg: GeoDnsConfig,
    resolver: RwLock<Resolver>,
    hits: DnsService,
    overrides_path: PathBuf,
    http: reqwest::Client,
    acme: Mutex<HashMap<String, Acme>>,
    counters: GeoDnsCounters,
    /// When the last decision arrived over the bus (for `/v1/geodns`).
    last_decision: Mutex<Option<DateTime<Utc>>>,
}

/// The answering side of a DNS node. Cheap to clone.
#[derive(Clone)]
pub struct GeoDnsService {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for GeoDnsService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeoDnsService").finish_non_exhaustive()
    }
}

/// Why the answering side could not start.
#[derive(Debug, thiserror::Error)]
pub enum GeoDnsError {
    /// `Maxmind.MaxmindDBPath` is set but no database opened.
    #[error("Maxmind.MaxmindDBPath: {0}")]
    MaxMind(String),
    /// The saved NATS overrides cannot be read.
    #[error("{path}: {reason}")]
    Saved {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl GeoDnsService {
    /// Opens the answering side: MaxMind (when configured), file overrides, then the
    /// overrides saved from NATS before a restart (W13: the Go node lost them). `bus_wins`
    /// (enforce mode): a `/results` snapshot never replaces a decision from the bus.
    pub fn open(
        cfg: GeoDnsConfig,
        hits: DnsService,
        work_dir: &std::path::Path,
        node_id: &str,
        bus_wins: bool,
    ) -> Result<GeoDnsService, GeoDnsError> {
        let geo: Arc<dyn GeoIp> = match &cfg.maxmind_dir {
            Some(dir) => {
                let (m, problems) = MaxMind::open(dir).map_err(GeoDnsError::MaxMind)?;
                for p in problems {
                    tracing::warn!(problem = %p, "a MaxMind database did not open; the others are used");
                }
                Arc::new(m)
            }
            None => {
                tracing::warn!(
                    "no Maxmind.MaxmindDBPath: client positions are unknown, every geo answer is the first healthy member"
                );
                Arc::new(NoGeo)
            }
        };
        let mut resolver = Resolver::new(&IbpConfig::default(), Zones::default(), geo);
        resolver.health = ibp_geodns::Health::new(bus_wins);
        resolver.skip_inactive = cfg.skip_inactive;
        if let Some(o) = &cfg.overrides
            && let Err(e) = resolver.overrides.set_file(o)
        {
            // The config check refused this already; keep running without them.
            tracing::error!(error = %e, "GeoDNSOverrides not applied");
        }
        let safe: String = node_id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let overrides_path = work_dir.join(format!("geodns-overrides.{safe}.json"));
        match std::fs::read(&overrides_path) {
            Ok(bytes) => {
                let saved: Value =
                    serde_json::from_slice(&bytes).map_err(|e| GeoDnsError::Saved {
                        path: overrides_path.clone(),
                        reason: e.to_string(),
                    })?;
                resolver
                    .overrides
                    .restore(&saved)
                    .map_err(|reason| GeoDnsError::Saved {
                        path: overrides_path.clone(),
                        reason,
                    })?;
                tracing::info!(file = %overrides_path.display(), "overrides set over NATS before the restart restored");
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(GeoDnsError::Saved {
                    path: overrides_path,
                    reason: e.to_string(),
                });
            }
        }
        let http = reqwest::Client::builder()
            .timeout(POLL_TIMEOUT)
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .unwrap_or_default();
        Ok(GeoDnsService {
            inner: Arc::new(Inner {
                cfg,
                resolver: RwLock::new(resolver),
                hits,
                overrides_path,
                http,
                acme: Mutex::new(HashMap::new()),
                counters: GeoDnsCounters::default(),
                last_decision: Mutex::new(None),
            }),
        })
    }

    /// The counters.
    pub fn counters(&self) -> &GeoDnsCounters {
        &self.inner.counters
    }

    /// Answers one lookup and counts its usage hits. ACME challenges are fetched (cached,
    /// bounded by `acme_timeout`) only for `_acme-challenge.` names.
    pub async fn lookup(&self, qname: &str, qtype: &str, client: Option<&Client>) -> Vec<Record> {
        self.lookup_counting(qname, qtype, client, |_| true).await
    }

    /// [`GeoDnsService::lookup`], counting only the hits `count` accepts.
    pub async fn lookup_counting(
        &self,
        qname: &str,
        qtype: &str,
        client: Option<&Client>,
        count: impl Fn(&ibp_geodns::Hit) -> bool,
    ) -> Vec<Record> {
        let now = Utc::now();
        let answer: Answer = match self.inner.resolver.read() {
            Ok(r) => r.lookup(qname, qtype, client, now.timestamp()),
            Err(_) => return Vec::new(),
        };
        self.inner.counters.lookups.fetch_add(1, Ordering::Relaxed);
        self.count(answer.hits.iter().filter(|h| count(h)), now);
        let mut records = answer.records;
        for (name, url, ttl) in answer.acme {
            if let Some(body) = self.acme(&url).await {
                let domain_id = self
                    .inner
                    .resolver
                    .read()
                    .map(|r| r.zones.zone_id(&name))
                    .unwrap_or(0);
                records.push(Record {
                    qname: name,
                    qtype: "TXT".into(),
                    content: body,
                    ttl,
                    auth: true,
                    domain_id,
                    scope_mask: None,
                });
            }
        }
        records
    }

    fn count<'a>(&self, hits: impl Iterator<Item = &'a ibp_geodns::Hit>, now: DateTime<Utc>) {
        let c = &self.inner.counters;
        for h in hits {
            c.geo_answers.fetch_add(1, Ordering::Relaxed);
            let hit = Hit {
                date: Some(now.date_naive()),
                domain: h.domain.clone(),
                member: h.member.clone(),
                country_code: h.country_code.clone(),
                country_name: h.country_name.clone(),
                asn: h.asn.clone(),
                network: h.network.clone(),
                is_ipv6: h.is_ipv6,
                hits: Some(1),
            };
            if self.inner.hits.record_dns_hit(&hit).is_err() {
                c.hits_refused.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    async fn acme(&self, url: &str) -> Option<String> {
        if let Ok(cache) = self.inner.acme.lock()
            && let Some(e) = cache.get(url)
        {
            let fresh = match e.body {
                Some(_) => e.at.elapsed() < ACME_CACHE,
                None => e.at.elapsed() < ACME_NEGATIVE,
            };
            if fresh {
                return e.body.clone();
            }
        }
        let body = if url.starts_with("http://") || url.starts_with("https://") {
            let get = async {
                let r = self.inner.http.get(url).send().await.ok()?;
                if r.status() != reqwest::StatusCode::OK {
                    return None;
                }
                let b = r.bytes().await.ok()?;
                let text = String::from_utf8_lossy(&b[..b.len().min(512)])
                    .trim()
                    .to_string();
                (!text.is_empty()).then_some(text)
            };
            tokio::time::timeout(self.inner.cfg.acme_timeout, get)
                .await
                .ok()
                .flatten()
        } else {
            None
        };
        if let Ok(mut cache) = self.inner.acme.lock() {
            if cache.len() > 1024 {
                cache.clear();
            }
            cache.insert(
                url.to_string(),
                Acme {
                    at: Instant::now(),
                    body: body.clone(),
                },
            );
        }
        body
    }

    /// Answers one remote-backend request body (`POST /dns`): HTTP status and JSON body.
    pub async fn backend(&self, body: &[u8]) -> (u16, Vec<u8>) {
        let req = match backend::parse(body) {
            Ok(r) => r,
            Err((status, v)) => return (status, backend::error_body(&v)),
        };
        match &req {
            Request::Lookup {
                qname,
                qtype,
                client,
            } => {
                let records = self.lookup(qname, qtype, client.as_ref()).await;
                (200, backend::records(&records))
            }
            Request::GetMemberEvents {
                member,
                domain,
                start,
                end,
            } => self.member_events(member, domain, start, end).await,
            _ => match self.inner.resolver.read() {
                Ok(r) => backend::respond(&r, &req, Utc::now().timestamp()),
                Err(_) => (
                    500,
                    backend::error_body(&json!({"result": "resolver unavailable"})),
                ),
            },
        }
    }

    /// `getMemberEvents` (dns.md §6.1): outages of a member starting in the range.
    async fn member_events(
        &self,
        member: &str,
        domain: &str,
        start: &str,
        end: &str,
    ) -> (u16, Vec<u8>) {
        let parse = |s: &str| DateTime::parse_from_rfc3339(s).map(|t| t.with_timezone(&Utc));
        let end = if end.is_empty() {
            Utc::now()
        } else {
            match parse(end) {
                Ok(t) => t,
                Err(_) => {
                    return (
                        400,
                        backend::error_body(&json!({"result": "invalid endTime"})),
                    );
                }
            }
        };
        let start = if start.is_empty() {
            end - chrono::Duration::hours(24)
        } else {
            match parse(start) {
                Ok(t) => t,
                Err(_) => {
                    return (
                        400,
                        backend::error_body(&json!({"result": "invalid startTime"})),
                    );
                }
            }
        };
        let rows = match self
            .inner
            .hits
            .store()
            .events_overlapping(Some(member), start, end)
            .await
        {
            Ok(r) => r,
            Err(e) => return (500, backend::error_body(&json!({"result": e.to_string()}))),
        };
        let out: Vec<Value> = rows
            .into_iter()
            .filter(|e| e.start_time >= start && (domain.is_empty() || e.domain_name == domain))
            .map(|e| {
                json!({
                    "CheckType": e.check_type,
                    "CheckName": e.check_name,
                    "MemberName": e.member_name,
                    "DomainName": e.domain_name,
                    "Endpoint": e.endpoint,
                    "Status": e.status,
                    "ErrorText": e.error,
                    "Data": e.additional_data,
                    "IsIPv6": e.is_ipv6,
                    "StartTime": e.start_time.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    "EndTime": e.end_time.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
                        .unwrap_or_else(|| "0001-01-01T00:00:00Z".into()),
                    "StartDate": e.start_time.format("%Y-%m-%d").to_string(),
                    "EndDate": e.end_time.map(|t| t.format("%Y-%m-%d").to_string()).unwrap_or_default(),
                })
            })
            .collect();
        (200, backend::error_body(&json!({ "result": out })))
    }

    /// Applies one decision from the bus: passed decisions set the check's status at once.
    pub fn apply_decision(&self, d: &Decision) -> bool {
        if !d.passed {
            return false;
        }
        let p = &d.proposal;
        let Some(kind) = Kind::parse(&p.check_type) else {
            return false;
        };
        let key = Key {
            kind,
            check: p.check_name.clone(),
            member: p.member_name.to_ascii_lowercase(),
            domain: p.domain_name.to_ascii_lowercase(),
            endpoint: p.endpoint.clone(),
            v6: p.is_ipv6,
        };
        let at = p.timestamp.instant();
        let changed = match self.inner.resolver.write() {
            Ok(mut r) => r.health.apply_decision(key, p.proposed_status, at),
            Err(_) => false,
        };
        if let Ok(mut l) = self.inner.last_decision.lock() {
            *l = Some(Utc::now());
        }
        if changed {
            self.inner
                .counters
                .decisions_applied
                .fetch_add(1, Ordering::Relaxed);
            tracing::info!(member = %p.member_name, check = %p.check_name, domain = %p.domain_name, ipv6 = p.is_ipv6, online = p.proposed_status, "DNS answers follow a decision");
        }
        changed
    }

    /// Follows decisions from the bus until the channel closes.
    pub async fn follow_decisions(self, mut rx: mpsc::Receiver<Decision>) {
        while let Some(d) = rx.recv().await {
            self.apply_decision(&d);
        }
    }

    /// Rebuilds zones and members whenever the lists or the static records change (a
    /// reload that brings the same static records rebuilds nothing).
    pub async fn follow_lists(
        self,
        lists: SharedIbpConfig,
        limits: FetchLimits,
        reload: Duration,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut loads = lists.subscribe();
        let mut tick = tokio::time::interval(reload.max(Duration::from_secs(5)));
        let mut statics: Option<Vec<StaticRecord>> = None;
        let mut first = true;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let fresh = self.load_statics(limits).await;
                    // After the first build, only new static records rebuild (a failed
                    // load keeps the last good copy).
                    if !std::mem::take(&mut first) && (fresh.is_none() || fresh == statics) {
                        continue;
                    }
                    if fresh.is_some() {
                        statics = fresh;
                    }
                }
                r = loads.changed() => if r.is_err() { break },
                _ = stop.changed() => break,
            }
            self.rebuild(
                lists.get().as_deref(),
                statics.as_deref().unwrap_or_default(),
            );
        }
    }

    /// The static records, freshly read; none when there is no source or it failed.
    async fn load_statics(&self, limits: FetchLimits) -> Option<Vec<StaticRecord>> {
        let src = self.inner.cfg.static_url.as_ref()?;
        let parsed = fetch(src, limits).await.and_then(|text| {
            serde_json::from_str::<Vec<StaticRecord>>(&text).map_err(|e| e.to_string())
        });
        parsed
            .map_err(|e| {
                tracing::warn!(source = %src, error = %e, "static DNS config not loaded; the last one is kept")
            })
            .ok()
    }

    /// Rebuilds the zones from `lists` (none: no members) and the static records.
    pub fn rebuild(&self, lists: Option<&IbpConfig>, statics: &[StaticRecord]) {
        let empty = IbpConfig::default();
        let lists = lists.unwrap_or(&empty);
        let zones = Zones::build(lists, statics.to_vec());
        if let Ok(mut r) = self.inner.resolver.write() {
            r.reload(lists, zones);
        }
    }

    /// Polls monitors' `/results` (bootstrap and repair, dns.md §1.4): at once, then every
    /// `refresh`. The first monitor that gives an official snapshot is taken.
    pub async fn poll_results(self, mut stop: watch::Receiver<bool>) {
        if self.inner.cfg.monitors.is_empty() {
            return;
        }
        let mut tick = tokio::time::interval(self.inner.cfg.refresh);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return,
            }
            self.poll_once().await;
        }
    }

    /// One poll of the configured monitors; returns whether a snapshot was taken.
    pub async fn poll_once(&self) -> bool {
        for url in &self.inner.cfg.monitors {
            match self.fetch_results(url).await {
                Ok(body) => {
                    // Parsed before the lock: answers never wait for a large snapshot.
                    let now = Utc::now();
                    let res = ibp_geodns::Health::parse_snapshot(&body, now).and_then(|snap| {
                        self.inner
                            .resolver
                            .write()
                            .map(|mut r| r.health.take(snap, now))
                            .map_err(|_| "resolver unavailable".to_string())
                    });
                    match res {
                        Ok(stats) => {
                            self.inner
                                .counters
                                .snapshots
                                .fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(monitor = %url, groups = stats.groups, taken = stats.taken, kept_out = stats.kept_out, "results snapshot taken");
                            return true;
                        }
                        Err(e) => {
                            self.inner
                                .counters
                                .snapshot_failures
                                .fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(monitor = %url, error = %e, "results snapshot refused");
                        }
                    }
                }
                Err(e) => {
                    self.inner
                        .counters
                        .snapshot_failures
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(monitor = %url, error = %e, "results poll failed");
                }
            }
        }
        false
    }

    async fn fetch_results(&self, url: &str) -> Result<Value, String> {
        let r = self
            .inner
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if r.status() != reqwest::StatusCode::OK {
            return Err(format!("HTTP {}", r.status()));
        }
        if r.headers()
            .get("X-IBP-Results-Source")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("local"))
        {
            return Err("the monitor serves local results, not official ones".into());
        }
        let b = r.bytes().await.map_err(|e| e.to_string())?;
        serde_json::from_slice(&b).map_err(|e| e.to_string())
    }

    /// Applies one `geodns.override.update` payload and saves the NATS layer.
    pub fn apply_override(&self, payload: &[u8]) -> Result<Change, String> {
        let (change, saved) = {
            let mut r = self
                .inner
                .resolver
                .write()
                .map_err(|_| "resolver unavailable".to_string())?;
            let change = r.overrides.apply(payload)?;
            (change, r.overrides.saved())
        };
        let path = &self.inner.overrides_path;
        let tmp = path.with_extension("json.tmp");
        let written = serde_json::to_vec_pretty(&saved)
            .map_err(|e| e.to_string())
            .and_then(|b| std::fs::write(&tmp, b).map_err(|e| e.to_string()))
            .and_then(|_| std::fs::rename(&tmp, path).map_err(|e| e.to_string()));
        if let Err(e) = written {
            tracing::error!(file = %path.display(), error = %e, "overrides applied but not saved: a restart loses them");
        }
        Ok(change)
    }

    /// Subscribes `geodns.override.update` and applies what arrives. In enforce mode only
    /// updates signed by a trusted key are applied (anyone on the bus could otherwise
    /// send every user anywhere).
    pub async fn follow_overrides(
        self,
        node: Node,
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), async_nats::SubscribeError> {
        let mut sub = node
            .connection()
            .client()
            .subscribe(OVERRIDE_SUBJECT)
            .await?;
        loop {
            let msg = tokio::select! {
                m = sub.next() => match m { Some(m) => m, None => break },
                _ = stop.changed() => break,
            };
            if !node.admit_operator(OVERRIDE_SUBJECT, &msg) {
                self.inner
                    .counters
                    .overrides_refused
                    .fetch_add(1, Ordering::Relaxed);
                continue;
            }
            match self.apply_override(&msg.payload) {
                Ok(change) => {
                    self.inner
                        .counters
                        .overrides_applied
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::info!(change = ?change, "override update applied");
                }
                Err(e) => {
                    self.inner
                        .counters
                        .overrides_refused
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, "malformed override update dropped");
                }
            }
        }
        let _ = sub.unsubscribe().await;
        Ok(())
    }

    /// The health the node answers from, one JSON row per check (the status page's board).
    pub fn health_rows(&self) -> Vec<Value> {
        let Ok(r) = self.inner.resolver.read() else {
            return Vec::new();
        };
        r.health
            .entries()
            .map(|(k, status, at, bus)| {
                json!({"memberName": k.member, "checkType": k.kind.as_str(), "checkName": k.check,
                       "domainName": k.domain, "endpoint": k.endpoint, "isIPv6": k.v6,
                       "official": status, "since": at, "source": if bus {"decision"} else {"snapshot"}})
            })
            .collect()
    }

    /// What the node answers from, for `GET /v1/geodns`.
    pub fn status(&self) -> Value {
        let (zones, held, permissive, last_snapshot, overrides) = match self.inner.resolver.read() {
            Ok(r) => (
                r.zones.zones().count(),
                r.health.held(),
                r.health.is_permissive(),
                r.health.last_snapshot(),
                r.overrides.saved(),
            ),
            Err(_) => return json!({"error": "resolver unavailable"}),
        };
        let c = &self.inner.counters;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "zones": zones,
            "health_entries": held,
            "permissive": permissive,
            "last_snapshot": last_snapshot,
            "last_decision": self.inner.last_decision.lock().ok().and_then(|l| *l),
            "monitors": self.inner.cfg.monitors,
            "listen": self.inner.cfg.listen.map(|l| l.to_string()),
            "overrides_from_nats": overrides,
            "lookups": n(&c.lookups),
            "geo_answers": n(&c.geo_answers),
            "hits_refused": n(&c.hits_refused),
            "decisions_applied": n(&c.decisions_applied),
            "snapshots": n(&c.snapshots),
            "snapshot_failures": n(&c.snapshot_failures),
            "overrides_applied": n(&c.overrides_applied),
            "overrides_refused": n(&c.overrides_refused),
        })
    }

    /// Whether `name` (normalized) lies in one of the zones, and which.
    pub fn zone_of(&self, name: &str) -> Option<String> {
        self.inner
            .resolver
            .read()
            .ok()
            .and_then(|r| r.zones.zone_of(name).map(str::to_string))
    }

    /// The SOA record of `zone`.
    pub fn soa(&self, zone: &str) -> Option<Record> {
        self.inner
            .resolver
            .read()
            .ok()
            .map(|r| r.zones.soa(zone, Utc::now().timestamp()))
    }
}
