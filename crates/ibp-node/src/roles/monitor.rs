//! The monitor role: observations (local results), official results and their outage
//! events persisted together, downtime answers, the Go `/results` snapshot.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use ibp_core::{CheckKey, Observation, ObserveOutcome, OfficialChange, ProposeOutcome};
use ibp_storage::{
    EventKey, EventWrite, OfficialWrite, Part, ResultKind, Store, StoreError, StoredResult,
};
use ibp_wire::{CheckType, Data, DowntimeRequest, Proposal};
use tokio::sync::mpsc;

use super::writes::{StorageHealth, WriteOutcome};
use crate::cluster::{Node, RoleServices};
use crate::collectors::DowntimeSource;

/// What happened to one observation of a posted batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObservationResult {
    /// Recorded; it differs from the official result and no proposal for it was pending,
    /// so this node proposed it (the new proposal's ID).
    Proposed(String),
    /// Recorded; a proposal for this status was already pending (another monitor's, or
    /// this node's own from an earlier post): this node voted for it (again).
    Voted(String),
    /// Recorded; this node's vote for another monitor's pending proposal made it the
    /// official result.
    Decided(String),
    /// Recorded; it already is the official result: nothing proposed.
    Official,
    /// Not applied: a later item of the same batch is about the same check, and a batch
    /// counts as its last value per check.
    Superseded,
    /// Recorded only: the proposal cap is reached (counted in the metrics).
    Recorded,
    /// Not recorded: the member or check is not in this node's lists.
    Unknown,
}

impl ObservationResult {
    /// The API spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            ObservationResult::Proposed(_) => "proposed",
            ObservationResult::Voted(_) => "voted",
            ObservationResult::Decided(_) => "decided",
            ObservationResult::Official => "official",
            ObservationResult::Superseded => "superseded",
            ObservationResult::Recorded => "recorded",
            ObservationResult::Unknown => "unknown",
        }
    }

    /// The proposal concerned, if any.
    pub fn proposal_id(&self) -> Option<&str> {
        match self {
            ObservationResult::Proposed(id)
            | ObservationResult::Voted(id)
            | ObservationResult::Decided(id) => Some(id),
            _ => None,
        }
    }

    fn of(outcome: ObserveOutcome) -> ObservationResult {
        match outcome {
            ObserveOutcome::Unchanged => ObservationResult::Official,
            ObserveOutcome::Decided(id) => ObservationResult::Decided(id),
            ObserveOutcome::Proposed(ProposeOutcome::Created(id)) => {
                ObservationResult::Proposed(id)
            }
            ObserveOutcome::Proposed(
                ProposeOutcome::Revoted(id) | ProposeOutcome::Republished(id),
            ) => ObservationResult::Voted(id),
            ObserveOutcome::Proposed(ProposeOutcome::Refused) => ObservationResult::Recorded,
            ObserveOutcome::Unknown => ObservationResult::Unknown,
        }
    }
}

/// Which items of a batch count: the last one per check (a batch `[down, up, down]` of
/// one check is one observation, `down`, not three that propose against each other).
pub fn last_per_check(batch: &[Observation]) -> Vec<bool> {
    let mut seen = std::collections::HashSet::new();
    let mut keep = vec![false; batch.len()];
    for (i, o) in batch.iter().enumerate().rev() {
        keep[i] = seen.insert(&o.key);
    }
    keep
}

/// Official changes a monitor may hold before its writer catches up; past it, the core's
/// effects wait (backpressure reaches the subscription, whose buffer holds a million).
pub const OFFICIAL_QUEUE: usize = 65_536;

/// A monitor's storage and observations.
#[derive(Clone)]
pub struct MonitorService {
    store: Store,
    writes: StorageHealth,
    persisted: Arc<tokio::sync::watch::Sender<u64>>,
    pending: Arc<AtomicUsize>,
}

impl MonitorService {
    /// Migrates the monitor's tables and prepares what the node restores at start-up.
    pub async fn open(
        writes: StorageHealth,
    ) -> Result<(MonitorService, RoleServices, mpsc::Receiver<OfficialChange>), StoreError> {
        let store = writes.store().clone();
        store
            .migrate(&[Part::Events, Part::Results, Part::DeadLetters])
            .await?;
        let official = store.load_results(ResultKind::Official).await?;
        let local = store.load_results(ResultKind::Local).await?;
        let (tx, rx) = mpsc::channel(OFFICIAL_QUEUE);
        let me = MonitorService {
            store,
            writes,
            persisted: Arc::new(tokio::sync::watch::channel(0).0),
            pending: Arc::default(),
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
                .map(|r| {
                    (
                        Observation {
                            key: r.key,
                            status: r.status,
                            error_text: r.error_text,
                            data: r.data,
                        },
                        r.updated_at,
                    )
                })
                .collect(),
            ..RoleServices::default()
        };
        Ok((me, services, rx))
    }

    /// Persists official changes in batches until the channel closes: each result and the
    /// outage event its flip records go into **one transaction** (a crash never leaves an
    /// applied outage unrecorded), events stamped with the decision time. A write the
    /// database refuses is set aside; one it cannot take now is held and retried (see
    /// [`StorageHealth`]). Runs as a task; I/O never happens on a subscription task.
    pub async fn persist_official(self, mut rx: mpsc::Receiver<OfficialChange>) {
        let mut batch = Vec::new();
        while rx.recv_many(&mut batch, 512).await > 0 {
            self.pending.store(batch.len() + rx.len(), Ordering::SeqCst);
            self.writes
                .metrics()
                .set_write_queue("official", batch.len() + rx.len());
            let now = Utc::now();
            let items: Vec<OfficialWrite> = batch
                .drain(..)
                .map(|c| {
                    let at = if c.decided_at.is_zero() {
                        now
                    } else {
                        c.decided_at.instant()
                    };
                    let event =
                        c.flipped
                            .then(|| event_key(&c.key))
                            .flatten()
                            .map(|key| EventWrite {
                                key,
                                status: c.status,
                                at,
                                error: c.proposal.error_text.clone(),
                                votes: None,
                                data: c.proposal.data.clone(),
                                proposal_id: c.proposal.id.clone(),
                            });
                    OfficialWrite {
                        result: StoredResult {
                            kind: ResultKind::Official,
                            key: c.key,
                            status: c.status,
                            error_text: c.proposal.error_text.clone(),
                            data: c.proposal.data.clone(),
                            proposal: Some(c.proposal),
                            updated_at: at,
                        },
                        event,
                    }
                })
                .collect();
            let store = self.store.clone();
            let outcomes = self
                .writes
                .write_batch("official", &items, |b| {
                    let store = store.clone();
                    let b = b.to_vec();
                    async move { store.apply_official(&b).await }
                })
                .await;
            for (it, o) in items.iter().zip(&outcomes) {
                if let WriteOutcome::Stored(Some(change)) = o {
                    tracing::info!(check = %it.result.key, change = ?change, "outage event recorded");
                }
            }
            self.persisted.send_modify(|n| *n += outcomes.len() as u64);
            self.pending.store(rx.len(), Ordering::SeqCst);
            self.writes.metrics().set_write_queue("official", rx.len());
        }
        self.pending.store(0, Ordering::SeqCst);
    }

    /// Official changes waiting to be written (for shutdown progress).
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
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
        let keep = last_per_check(&batch);
        let rows: Vec<StoredResult> = batch
            .iter()
            .zip(&keep)
            .filter(|(_, k)| **k)
            .map(|(o, _)| local_row(o, now))
            .collect();
        self.store
            .save_results(&rows)
            .await
            .map_err(|e| e.to_string())?;
        let mut out = Vec::with_capacity(batch.len());
        for (o, keep) in batch.into_iter().zip(keep) {
            if !keep {
                out.push(ObservationResult::Superseded);
                continue;
            }
            let r = node.observe(o).await.map_err(|e| e.to_string())?;
            out.push(ObservationResult::of(r));
        }
        Ok(out)
    }

    /// Stores one local result (a check's), as `observe` does for posted ones.
    pub async fn record_local(
        &self,
        obs: &Observation,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.store.save_results(&[local_row(obs, at)]).await
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }
}

/// Rows read at a time when answering a downtime request.
const DOWNTIME_PAGE: u32 = 5_000;

impl DowntimeSource for MonitorService {
    fn downtime(&self, req: DowntimeRequest) -> BoxFuture<'static, Result<Vec<Vec<u8>>, String>> {
        let store = self.store.clone();
        Box::pin(async move {
            let member = (!req.member_name.is_empty()).then_some(req.member_name.as_str());
            let (from, to) = (req.start_time.instant(), req.end_time.instant());
            let mut out = Vec::new();
            let mut after = None;
            loop {
                let page = store
                    .events_overlapping_page(member, from, to, after, DOWNTIME_PAGE)
                    .await
                    .map_err(|e| e.to_string())?;
                after = page.last().map(|e| (e.start_time, e.id));
                let full = page.len() as u32 == DOWNTIME_PAGE;
                for e in page {
                    out.push(ibp_wire::encode(&e.to_wire()).map_err(|e| e.to_string())?);
                }
                if !full {
                    return Ok(out);
                }
            }
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

/// The stored row of a local observation made at `at`.
fn local_row(o: &Observation, at: DateTime<Utc>) -> StoredResult {
    StoredResult {
        kind: ResultKind::Local,
        key: o.key.clone(),
        status: o.status,
        error_text: o.error_text.clone(),
        data: o.data.clone(),
        proposal: None,
        updated_at: at,
    }
}
