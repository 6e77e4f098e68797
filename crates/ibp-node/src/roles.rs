//! The services behind each role: what a monitor, a DNS node and a collator do besides
//! speaking the protocol — storage, observations, hit counting, outage records, hourly
//! usage collection.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};
use futures::future::BoxFuture;
use ibp_core::{CheckKey, Decision, Observation, ObserveOutcome, OfficialChange, ProposeOutcome};
use ibp_storage::{
    EventKey, EventWrite, OutageChange, Part, ResultKind, Store, StoreError, StoredResult,
    UsageFilter, UsageRow,
};
use ibp_wire::{
    CheckType, Data, DowntimeEvent, DowntimeRequest, Proposal, UsageRecord, UsageRequest,
    UsageResponse,
};
use serde::Serialize;
use tokio::sync::mpsc;

use crate::cluster::{Node, RoleServices};
use crate::collectors::{self, DowntimeSource, FanoutReport, UsagePushSink, UsageSource};

// ----- monitor ---------------------------------------------------------------------------

/// What happened to one observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ObservationResult {
    /// Recorded; it differs from the official result, so it was proposed (or voted on again).
    Proposed,
    /// Recorded; it equals the official result.
    Unchanged,
    /// Recorded only: the proposal cap is reached (counted in the metrics).
    Recorded,
}

/// A monitor's storage and observations.
#[derive(Clone)]
pub struct MonitorService {
    store: Store,
    persisted: Arc<tokio::sync::watch::Sender<u64>>,
}

impl MonitorService {
    /// Migrates the monitor's tables and prepares what the node restores at start-up.
    pub async fn open(
        store: Store,
    ) -> Result<
        (
            MonitorService,
            RoleServices,
            mpsc::UnboundedReceiver<OfficialChange>,
        ),
        StoreError,
    > {
        store.migrate(&[Part::Events, Part::Results]).await?;
        let official = store.load_results(ResultKind::Official).await?;
        let local = store.load_results(ResultKind::Local).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let me = MonitorService {
            store,
            persisted: Arc::new(tokio::sync::watch::channel(0).0),
        };
        let services = RoleServices {
            downtime: Some(Arc::new(me.clone())),
            official_sink: Some(tx),
            restore_official: official
                .into_iter()
                .map(|r| {
                    let p = r.proposal.clone().unwrap_or_else(|| proposal_for(&r));
                    (p, r.updated_at)
                })
                .collect(),
            restore_local: local
                .into_iter()
                .map(|r| Observation {
                    key: r.key,
                    status: r.status,
                    error_text: r.error_text,
                    data: r.data,
                })
                .collect(),
            ..RoleServices::default()
        };
        Ok((me, services, rx))
    }

    /// Persists official changes (in batches) and records outages from flips, until the
    /// channel closes. Runs as a task; I/O never happens on a subscription task.
    pub async fn persist_official(self, mut rx: mpsc::UnboundedReceiver<OfficialChange>) {
        let mut batch = Vec::new();
        while rx.recv_many(&mut batch, 512).await > 0 {
            let now = Utc::now();
            let rows: Vec<StoredResult> = batch
                .iter()
                .map(|c| StoredResult {
                    kind: ResultKind::Official,
                    key: c.key.clone(),
                    status: c.status,
                    error_text: c.proposal.error_text.clone(),
                    data: c.proposal.data.clone(),
                    proposal: Some(c.proposal.clone()),
                    updated_at: now,
                })
                .collect();
            match retry("save official results", || self.store.save_results(&rows)).await {
                Ok(()) => self.persisted.send_modify(|n| *n += rows.len() as u64),
                Err(e) => tracing::error!(error = %e, "official results not persisted"),
            }
            for c in batch.drain(..).filter(|c| c.flipped) {
                let Some(key) = event_key(&c.key) else {
                    continue;
                };
                let w = EventWrite {
                    key,
                    status: c.status,
                    at: now,
                    error: c.proposal.error_text.clone(),
                    votes: None,
                    data: c.proposal.data.clone(),
                    proposal_id: c.proposal.id.clone(),
                };
                if let Err(e) =
                    retry("record monitor event", || self.store.record_decision(&w)).await
                {
                    tracing::error!(error = %e, "outage event not recorded");
                }
            }
        }
    }

    /// Official changes persisted so far.
    pub fn persisted(&self) -> u64 {
        *self.persisted.borrow()
    }

    /// Waits until at least `n` official changes have been persisted.
    pub async fn wait_persisted(&self, n: u64, timeout: Duration) -> bool {
        let mut rx = self.persisted.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|v| *v >= n))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Records observations (all or nothing: callers validate first), proposing those that
    /// differ from the official results.
    pub async fn observe(
        &self,
        node: &Node,
        batch: Vec<Observation>,
    ) -> Result<Vec<ObservationResult>, String> {
        let now = Utc::now();
        let rows: Vec<StoredResult> = batch
            .iter()
            .map(|o| StoredResult {
                kind: ResultKind::Local,
                key: o.key.clone(),
                status: o.status,
                error_text: o.error_text.clone(),
                data: o.data.clone(),
                proposal: None,
                updated_at: now,
            })
            .collect();
        self.store
            .save_results(&rows)
            .await
            .map_err(|e| e.to_string())?;
        let mut out = Vec::with_capacity(batch.len());
        for o in batch {
            let r = node.observe(o).await.map_err(|e| e.to_string())?;
            out.push(match r {
                ObserveOutcome::Unchanged => ObservationResult::Unchanged,
                ObserveOutcome::Proposed(ProposeOutcome::Refused) => ObservationResult::Recorded,
                ObserveOutcome::Proposed(_) => ObservationResult::Proposed,
            });
        }
        Ok(out)
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }
}

impl DowntimeSource for MonitorService {
    fn downtime(
        &self,
        req: DowntimeRequest,
    ) -> BoxFuture<'static, Result<Vec<DowntimeEvent>, String>> {
        let store = self.store.clone();
        Box::pin(async move {
            let member = (!req.member_name.is_empty()).then_some(req.member_name.as_str());
            store
                .events_overlapping(member, req.start_time.instant(), req.end_time.instant())
                .await
                .map(|evs| evs.iter().map(|e| e.to_wire()).collect())
                .map_err(|e| e.to_string())
        })
    }
}

fn proposal_for(r: &StoredResult) -> Proposal {
    Proposal {
        id: format!("restored:{}", r.key),
        check_type: r.key.check_type.clone(),
        check_name: r.key.check_name.clone(),
        member_name: r.key.member_name.clone(),
        domain_name: r.key.domain_name.clone(),
        endpoint: r.key.endpoint.clone(),
        proposed_status: r.status,
        error_text: r.error_text.clone(),
        data: r.data.clone(),
        is_ipv6: r.key.is_ipv6,
        ..Proposal::default()
    }
}

fn event_key(k: &CheckKey) -> Option<EventKey> {
    Some(EventKey {
        check_type: k.typed()?,
        check_name: k.check_name.clone(),
        member_name: k.member_name.clone(),
        domain_name: k.domain_name.clone(),
        endpoint: k.endpoint.clone(),
        is_ipv6: k.is_ipv6,
    })
}

/// Attempts of a storage write before it is given up (about 5 minutes of backoff): a
/// database that is restarting comes back; a write it refuses for good must not block every
/// later one.
const WRITE_ATTEMPTS: u32 = 36;

/// Retries a storage write with backoff (200 ms doubling to 10 s), `WRITE_ATTEMPTS` times.
async fn retry<T, F, Fut>(what: &str, mut f: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut delay = Duration::from_millis(200);
    let mut attempt = 1;
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt >= WRITE_ATTEMPTS => return Err(e),
            Err(e) => {
                tracing::warn!(what, attempt, error = %e, "storage write failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
                attempt += 1;
            }
        }
    }
}

/// The Go `/results` snapshot (storage §4.3) from a monitor's results.
pub fn results_snapshot(
    results: &[(CheckKey, bool, String, Data, DateTime<Utc>)],
) -> serde_json::Value {
    use serde_json::json;
    let mut site: BTreeMap<(String, bool), Vec<serde_json::Value>> = BTreeMap::new();
    let mut domain: BTreeMap<(String, String, bool), Vec<serde_json::Value>> = BTreeMap::new();
    let mut endpoint: BTreeMap<(String, String, String, bool), Vec<serde_json::Value>> =
        BTreeMap::new();
    for (k, status, err, data, at) in results {
        let r = json!({
            "Checktime": at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            "Data": data.to_value(),
            "ErrorText": err,
            "IsIPv6": k.is_ipv6,
            "MemberName": k.member_name,
            "Status": status,
        });
        match k.typed() {
            Some(CheckType::Site) => site
                .entry((k.check_name.clone(), k.is_ipv6))
                .or_default()
                .push(r),
            Some(CheckType::Domain) => domain
                .entry((k.check_name.clone(), k.domain_name.clone(), k.is_ipv6))
                .or_default()
                .push(r),
            Some(CheckType::Endpoint) => endpoint
                .entry((
                    k.check_name.clone(),
                    k.domain_name.clone(),
                    k.endpoint.clone(),
                    k.is_ipv6,
                ))
                .or_default()
                .push(r),
            None => {}
        }
    }
    json!({
        "DomainResults": domain.into_iter().map(|((c, d, v6), rs)| json!({"CheckName": c, "Domain": d, "IsIPv6": v6, "Results": rs})).collect::<Vec<_>>(),
        "EndpointResults": endpoint.into_iter().map(|((c, d, u, v6), rs)| json!({"CheckName": c, "Domain": d, "IsIPv6": v6, "Results": rs, "RpcUrl": u})).collect::<Vec<_>>(),
        "SiteResults": site.into_iter().map(|((c, v6), rs)| json!({"CheckName": c, "IsIPv6": v6, "Results": rs})).collect::<Vec<_>>(),
    })
}

// ----- DNS -------------------------------------------------------------------------------

/// One DNS hit's key (storage §1.3).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct HitKey {
    date: NaiveDate,
    domain: String,
    member: String,
    country_code: String,
    country_name: String,
    asn: String,
    network: String,
    is_ipv6: bool,
}

/// A DNS hit to count (`POST /v1/usage/hits` validates it with `http::parse_hit`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Hit {
    /// UTC day; today when absent.
    pub date: Option<NaiveDate>,
    /// Queried domain (required).
    pub domain: String,
    /// Member answered (`(none)` when empty).
    pub member: String,
    /// ISO country code (`??` when not 2 letters).
    pub country_code: String,
    /// Country name (`Unknown` with `??`).
    pub country_name: String,
    /// `AS<number>`.
    pub asn: String,
    /// Network name.
    pub network: String,
    /// Query came over IPv6.
    pub is_ipv6: bool,
    /// Number of hits (default 1).
    pub hits: Option<i64>,
}

/// A DNS node's hit counters and usage table.
#[derive(Clone)]
pub struct DnsService {
    store: Store,
    node_id: String,
    counters: Arc<Mutex<HashMap<HitKey, (i64, u32)>>>,
}

/// Rows that failed this many flushes in a row are dropped with an error (D11).
const MAX_FLUSH_FAILURES: u32 = 5;

impl DnsService {
    /// Migrates the usage table.
    pub async fn open(
        store: Store,
        node_id: &str,
    ) -> Result<(DnsService, RoleServices), StoreError> {
        store.migrate(&[Part::Usage]).await?;
        let me = DnsService {
            store,
            node_id: node_id.to_string(),
            counters: Arc::new(Mutex::new(HashMap::new())),
        };
        let services = RoleServices {
            usage: Some(Arc::new(me.clone())),
            ..RoleServices::default()
        };
        Ok((me, services))
    }

    /// Counts a hit in memory (the reference `RecordDnsHit`); flushed to the table later.
    /// Returns false when the hit is ignored (no domain).
    pub fn record_dns_hit(&self, hit: &Hit) -> bool {
        if hit.domain.trim().is_empty() {
            return false;
        }
        let cc = hit.country_code.trim().to_ascii_uppercase();
        let (cc, cname) = if cc.len() == 2 {
            (cc, hit.country_name.clone())
        } else {
            ("??".to_string(), "Unknown".to_string())
        };
        let key = HitKey {
            date: hit.date.unwrap_or_else(|| Utc::now().date_naive()),
            domain: hit.domain.trim().to_ascii_lowercase(),
            member: if hit.member.is_empty() {
                "(none)".into()
            } else {
                hit.member.clone()
            },
            country_code: cc,
            country_name: cname,
            asn: hit.asn.clone(),
            network: hit.network.clone(),
            is_ipv6: hit.is_ipv6,
        };
        let n = hit.hits.unwrap_or(1).max(0);
        let mut c = self.counters();
        let e = c.entry(key).or_insert((0, 0));
        e.0 = e.0.saturating_add(n);
        true
    }

    /// The counters. A panic elsewhere while they were locked must not make every later
    /// hit vanish silently, so a poisoned lock is taken over as it is.
    fn counters(&self) -> std::sync::MutexGuard<'_, HashMap<HitKey, (i64, u32)>> {
        self.counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Hits counted but not yet flushed.
    pub fn pending_hits(&self) -> i64 {
        self.counters()
            .values()
            .fold(0i64, |a, v| a.saturating_add(v.0))
    }

    /// Writes the counters to the table with increment semantics. The lock is held only to
    /// swap the map out. When the batch fails, rows are retried one by one so only a bad row
    /// stays behind; it is retried at the next flush and dropped after 5 failures (D11).
    /// One row carries at most `u32::MAX` hits (the column is INT UNSIGNED); the rest waits.
    pub async fn flush(&self) -> Result<usize, StoreError> {
        let taken: Vec<(HitKey, (i64, u32))> =
            std::mem::take(&mut *self.counters()).into_iter().collect();
        if taken.is_empty() {
            return Ok(0);
        }
        let row = |k: &HitKey, hits: i64| UsageRow {
            date: k.date,
            node_id: self.node_id.clone(),
            domain: k.domain.clone(),
            member_name: k.member.clone(),
            asn: k.asn.clone(),
            network_name: k.network.clone(),
            country_code: k.country_code.clone(),
            country_name: k.country_name.clone(),
            is_ipv6: k.is_ipv6,
            hits,
        };
        let cap = i64::from(u32::MAX);
        let rows: Vec<UsageRow> = taken
            .iter()
            .map(|(k, (hits, _))| row(k, (*hits).min(cap)))
            .collect();
        let carry = |c: &mut HashMap<HitKey, (i64, u32)>, k: &HitKey, hits: i64, fails: u32| {
            if hits > 0 {
                let e = c.entry(k.clone()).or_insert((0, 0));
                e.0 = e.0.saturating_add(hits);
                e.1 = e.1.max(fails);
            }
        };
        let batch = self.store.increment_usage(&rows).await;
        let mut written = 0;
        let mut first_error = None;
        for ((k, (hits, fails)), r) in taken.iter().zip(&rows) {
            let ok = match &batch {
                Ok(()) => true,
                Err(_) => self
                    .store
                    .increment_usage(std::slice::from_ref(r))
                    .await
                    .map_err(|e| first_error.get_or_insert(e).to_string())
                    .is_ok(),
            };
            let mut c = self.counters();
            if ok {
                written += 1;
                carry(&mut c, k, hits - r.hits, *fails);
            } else if fails + 1 >= MAX_FLUSH_FAILURES {
                tracing::error!(domain = %k.domain, member = %k.member, hits, "dropping usage counters after repeated flush failures");
            } else {
                carry(&mut c, k, *hits, fails + 1);
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(written),
        }
    }

    /// Flushes every `period` until `stop` fires, then once more.
    pub async fn run_flusher(self, period: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = stop.changed() => break,
            }
            match self.flush().await {
                Ok(n) if n > 0 => tracing::debug!(rows = n, "usage flushed"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "usage flush failed; kept for the next one"),
            }
        }
        if let Err(e) = self.flush().await {
            tracing::error!(error = %e, "final usage flush failed");
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }
}

impl UsageSource for DnsService {
    fn usage(
        &self,
        req: UsageRequest,
        from: NaiveDate,
        to: NaiveDate,
    ) -> BoxFuture<'static, Result<Vec<UsageRecord>, String>> {
        let store = self.store.clone();
        Box::pin(async move {
            let f = UsageFilter {
                from,
                to,
                domain: req.domain.trim().to_string(),
                member: req.member_name.trim().to_string(),
                country: req.country.trim().to_string(),
            };
            store
                .query_usage(&f)
                .await
                .map_err(|e| format!("usage store: {e}"))
        })
    }
}

// ----- collator --------------------------------------------------------------------------

/// What a usage collection did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CollectReport {
    /// Days collected.
    pub days: Vec<NaiveDate>,
    /// Rows stored.
    pub stored: usize,
    /// Records skipped (unparseable date).
    pub skipped: usize,
    /// Hits per node.
    pub hits_by_node: BTreeMap<String, i64>,
    /// The fan-out report (without the records).
    pub answered: Vec<String>,
    /// Nodes that did not answer.
    pub missing: Vec<String>,
    /// Errors reported by nodes.
    pub errors: BTreeMap<String, String>,
}

/// The JetStream stream capturing `consensus.finalize` for durable collators.
pub const FINALIZE_STREAM: &str = "IBP_FINALIZE";

fn decision_without_votes(f: ibp_wire::FinalizeMessage) -> Decision {
    Decision {
        finalizer: f.finalizer().to_string(),
        passed: f.passed,
        decided_at: f.decided_at,
        by_self: false,
        applied: false,
        latency: None,
        tally: None,
        votes: None,
        proposal: f.proposal,
    }
}

/// A collator's outage records and usage collection.
#[derive(Clone)]
pub struct CollatorService {
    store: Store,
    usage_timeout: Duration,
    recorded: Arc<tokio::sync::watch::Sender<u64>>,
    collections: Arc<tokio::sync::watch::Sender<u64>>,
}

impl CollatorService {
    /// Migrates the collator's tables (usage and events).
    pub async fn open(
        store: Store,
        usage_timeout: Duration,
    ) -> Result<
        (
            CollatorService,
            RoleServices,
            mpsc::UnboundedReceiver<Decision>,
        ),
        StoreError,
    > {
        store.migrate(&[Part::Usage, Part::Events]).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let me = CollatorService {
            store,
            usage_timeout,
            recorded: Arc::new(tokio::sync::watch::channel(0).0),
            collections: Arc::new(tokio::sync::watch::channel(0).0),
        };
        let services = RoleServices {
            usage_push: Some(Arc::new(me.clone())),
            decision_sink: Some(tx),
            ..RoleServices::default()
        };
        Ok((me, services, rx))
    }

    /// Records one decision: a passed offline decision opens an outage, a passed online one
    /// closes it; failed decisions are ignored. Idempotent per proposal.
    pub async fn record(&self, d: &Decision) -> Result<Option<OutageChange>, StoreError> {
        if !d.passed {
            return Ok(None);
        }
        let p = &d.proposal;
        let Some(check_type) = CheckType::parse(&p.check_type) else {
            tracing::warn!(check_type = %p.check_type, proposal = %p.id, "decision with an unknown check type not recorded");
            return Ok(None);
        };
        let at = if d.decided_at.is_zero() {
            Utc::now()
        } else {
            d.decided_at.instant()
        };
        let w = EventWrite {
            key: EventKey {
                check_type,
                check_name: p.check_name.clone(),
                member_name: p.member_name.clone(),
                domain_name: p.domain_name.clone(),
                endpoint: p.endpoint.clone(),
                is_ipv6: p.is_ipv6,
            },
            status: p.proposed_status,
            at,
            error: p.error_text.clone(),
            votes: d.votes.clone(),
            data: p.data.clone(),
            proposal_id: p.id.clone(),
        };
        let change = self.store.record_decision(&w).await?;
        if change != OutageChange::Duplicate {
            self.recorded.send_modify(|n| *n += 1);
        }
        match change {
            OutageChange::Opened(id) => {
                tracing::warn!(member = %p.member_name, check = %CheckKey::of(p), event = id, "OFFLINE: outage opened")
            }
            OutageChange::Closed(id) => {
                tracing::info!(member = %p.member_name, check = %CheckKey::of(p), event = id, "ONLINE: outage closed")
            }
            _ => {}
        }
        Ok(Some(change))
    }

    /// Passed decisions newly recorded so far (repeats of a recorded decision not counted).
    pub fn recorded(&self) -> u64 {
        *self.recorded.borrow()
    }

    /// Waits until at least `n` passed decisions have been newly recorded.
    pub async fn wait_recorded(&self, n: u64, timeout: Duration) -> bool {
        let mut rx = self.recorded.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|v| *v >= n))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Waits until at least `n` usage collections have completed (start-up backfill, hourly
    /// runs, operator requests).
    pub async fn wait_collections(&self, n: u64, timeout: Duration) -> bool {
        let mut rx = self.collections.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|v| *v >= n))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// Records decisions from the node, in order; a failed write is retried with backoff for
    /// about 5 minutes (a database restart loses nothing) before it is logged and skipped.
    pub async fn record_decisions(self, mut rx: mpsc::UnboundedReceiver<Decision>) {
        while let Some(d) = rx.recv().await {
            if let Err(e) = retry("record decision", || self.record(&d)).await {
                // Logged whole, so an operator can replay it.
                tracing::error!(error = %e, decision = ?d, "decision NOT recorded; skipped");
            }
        }
    }

    /// Consumes `consensus.finalize` from a JetStream stream with a durable consumer and
    /// records each decision, acknowledging only after the database commit. A collator that
    /// was down processes what it missed when it comes back; the database's per-proposal
    /// claim makes redeliveries and the other monitors' duplicate finalizes harmless.
    pub async fn consume_durable(
        self,
        node: Node,
        durable: String,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<tokio::task::JoinHandle<()>, String> {
        use async_nats::jetstream::{self, consumer::pull, stream};
        use futures::StreamExt;
        let js = jetstream::new(node.connection().client().clone());
        let stream = js
            .get_or_create_stream(stream::Config {
                name: FINALIZE_STREAM.to_string(),
                subjects: vec![ibp_wire::subjects::FINALIZE.to_string()],
                max_age: Duration::from_secs(7 * 24 * 3600),
                storage: stream::StorageType::File,
                ..Default::default()
            })
            .await
            .map_err(|e| {
                format!(
                    "JetStream stream {FINALIZE_STREAM}: {e} (is JetStream enabled on the server?)"
                )
            })?;
        let consumer = stream
            .get_or_create_consumer(
                &durable,
                pull::Config {
                    durable_name: Some(durable.clone()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    deliver_policy: jetstream::consumer::DeliverPolicy::All,
                    ack_wait: Duration::from_secs(30),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| format!("JetStream consumer {durable}: {e}"))?;
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| format!("JetStream consumer {durable}: {e}"))?;
        Ok(tokio::spawn(async move {
            let mut retry: HashMap<String, Decision> = HashMap::new();
            loop {
                let msg = tokio::select! {
                    m = messages.next() => m,
                    _ = stop.changed() => break,
                };
                let Some(msg) = msg else { break };
                let msg = match msg {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "JetStream consumer error");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                };
                node.metrics().received(ibp_wire::subjects::FINALIZE);
                let f = match ibp_wire::decode::<ibp_wire::FinalizeMessage>(&msg.payload) {
                    Ok(f) => f,
                    Err(e) => {
                        node.metrics().decode_failed(ibp_wire::subjects::FINALIZE);
                        tracing::warn!(error = %e, "undecodable finalize in the stream; acknowledged and dropped");
                        let _ = msg.ack().await;
                        continue;
                    }
                };
                let id = f.proposal.id.clone();
                node.heard(f.finalizer());
                // Votes of a fresh decision may still be in flight on their own subject.
                if let Ok(info) = msg.info() {
                    let published = chrono::DateTime::from_timestamp_nanos(
                        i64::try_from(info.published.unix_timestamp_nanos()).unwrap_or(0),
                    );
                    let age = (Utc::now() - published).to_std().unwrap_or(Duration::ZERO);
                    if let Some(wait) = node.vote_grace().checked_sub(age) {
                        tokio::time::sleep(wait).await;
                    }
                }
                let decision = match retry.remove(&id) {
                    Some(d) => d,
                    None => {
                        let mut d = decision_without_votes(f);
                        if let Some((_, votes)) = node.take_cached(&id) {
                            d.votes = Some(votes);
                        }
                        d
                    }
                };
                match self.record(&decision).await {
                    Ok(_) => {
                        if let Err(e) = msg.ack().await {
                            tracing::warn!(error = %e, "ack failed; the decision will be redelivered (and recognised)");
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, proposal = %id, "decision not recorded; it will be redelivered");
                        if retry.len() >= 10_000 {
                            // Redeliveries of these still get recorded, without their votes.
                            retry.clear();
                        }
                        retry.insert(id, decision);
                        let _ = msg
                            .ack_with(jetstream::AckKind::Nak(Some(Duration::from_secs(1))))
                            .await;
                    }
                }
            }
        }))
    }

    /// Collects usage for `days` from every DNS node and stores it with replace semantics.
    pub async fn collect(
        &self,
        node: &Node,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<CollectReport, String> {
        let req = UsageRequest {
            start_date: from.format("%Y-%m-%d").to_string(),
            end_date: to.format("%Y-%m-%d").to_string(),
            ..UsageRequest::default()
        };
        let report: FanoutReport<UsageRecord> =
            collectors::request_all_dns_usage(node, &req, self.usage_timeout)
                .await
                .map_err(|e| e.to_string())?;
        // One row per (node, key): a Go DNS node can return a NULL-key group and a ''-key
        // group that become the same key here; replacing one with the other would lose hits.
        type Key = (
            String,
            NaiveDate,
            String,
            String,
            String,
            String,
            String,
            String,
            bool,
        );
        let mut merged: BTreeMap<Key, UsageRow> = BTreeMap::new();
        let mut skipped = 0;
        let mut errors = report.errors.clone();
        for r in &report.records {
            let row = match UsageRow::from_record(r) {
                Ok(row) if (0..=i64::from(u32::MAX)).contains(&row.hits) => row,
                Ok(row) => {
                    skipped += 1;
                    tracing::warn!(node = %r.node_id, hits = row.hits, "usage record with impossible hits skipped");
                    continue;
                }
                Err(e) => {
                    skipped += 1;
                    tracing::warn!(node = %r.node_id, error = %e, "usage record skipped");
                    continue;
                }
            };
            let key = (
                row.node_id.clone(),
                row.date,
                row.domain.to_lowercase(),
                row.member_name.to_lowercase(),
                row.asn.to_lowercase(),
                row.network_name.to_lowercase(),
                row.country_code.to_lowercase(),
                row.country_name.to_lowercase(),
                row.is_ipv6,
            );
            merged
                .entry(key)
                .and_modify(|m| m.hits = (m.hits + row.hits).min(i64::from(u32::MAX)))
                .or_insert(row);
        }
        // One transaction per node: one node's bad data does not cost the others their hour.
        let mut per_node: BTreeMap<String, Vec<UsageRow>> = BTreeMap::new();
        for row in merged.into_values() {
            per_node.entry(row.node_id.clone()).or_default().push(row);
        }
        let mut by_node: BTreeMap<String, i64> = BTreeMap::new();
        let mut stored = 0;
        for (id, rows) in per_node {
            match self.store.replace_usage(&rows).await {
                Ok(()) => {
                    stored += rows.len();
                    by_node.insert(id, rows.iter().map(|r| r.hits).sum());
                }
                Err(e) => {
                    tracing::error!(node = %id, error = %e, "usage of a node not stored");
                    errors.insert(id, format!("not stored: {e}"));
                }
            }
        }
        let mut days = Vec::new();
        let mut d = from;
        while d <= to {
            days.push(d);
            d = d.succ_opt().unwrap_or(to + chrono::Days::new(1));
        }
        tracing::info!(from = %from, to = %to, rows = stored, nodes = report.answered.len(), missing = ?report.missing, "usage collected");
        self.collections.send_modify(|n| *n += 1);
        Ok(CollectReport {
            days,
            stored,
            skipped,
            hits_by_node: by_node,
            answered: report.answered,
            missing: report.missing,
            errors,
        })
    }

    /// The days the collection at `now` covers: today, plus yesterday in the first two hours
    /// of a UTC day. The 00:00 run gets the previous day's last hour; DNS nodes flush every
    /// 5 minutes, so the 01:00 run picks up what they flushed after midnight.
    pub fn days_for(now: DateTime<Utc>) -> (NaiveDate, NaiveDate) {
        let today = now.date_naive();
        if now.hour() <= 1 {
            (today.pred_opt().unwrap_or(today), today)
        } else {
            (today, today)
        }
    }

    /// Backfills the last `days` days, then collects at the top of every UTC hour until
    /// `stop` fires.
    pub async fn run_hourly(
        self,
        node: Node,
        backfill_days: u32,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        if backfill_days > 0 {
            let today = Utc::now().date_naive();
            let from = today - chrono::Days::new(u64::from(backfill_days.saturating_sub(1)));
            // Give the DNS nodes a moment to be known after start-up.
            node.wait_for_active(ibp_wire::Role::Dns, 1, Duration::from_secs(15))
                .await;
            if let Err(e) = self.collect(&node, from, today).await {
                tracing::warn!(error = %e, "start-up usage backfill failed");
            }
        }
        loop {
            let now = Utc::now();
            let next_hour = (now + chrono::TimeDelta::hours(1))
                .with_minute(0)
                .and_then(|t| t.with_second(0))
                .and_then(|t| t.with_nanosecond(0))
                .unwrap_or(now + chrono::TimeDelta::hours(1));
            let wait = (next_hour - now)
                .to_std()
                .unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => break,
            }
            let (from, to) = CollatorService::days_for(Utc::now());
            if let Err(e) = self.collect(&node, from, to).await {
                tracing::warn!(error = %e, day = %to.day(), "hourly usage collection failed");
            }
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }
}

impl UsagePushSink for CollatorService {
    fn pushed(&self, resp: UsageResponse) -> BoxFuture<'static, ()> {
        let store = self.store.clone();
        Box::pin(async move {
            let rows: Vec<UsageRow> = resp
                .usage_records
                .iter()
                .filter_map(|r| UsageRow::from_record(r).ok())
                .collect();
            if let Err(e) = store.replace_usage(&rows).await {
                tracing::warn!(from = %resp.node_id, error = %e, "pushed usage not stored");
            }
        })
    }
}
