//! The collator role: outage records from decisions, hourly usage collection from every
//! DNS node (taking over a Go collator's database without double counting), pushed usage.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Datelike, NaiveDate, Timelike, Utc};
use futures::future::BoxFuture;
use ibp_core::Decision;
use ibp_storage::{EventKey, EventWrite, OutageChange, Part, Store, StoreError, UsageRow};
use ibp_wire::{CheckType, UsageRecord, UsageRequest, UsageResponse};
use serde::Serialize;
use tokio::sync::mpsc;

use super::writes::{StorageHealth, WriteOutcome};
use crate::cluster::{Node, RoleServices};
use crate::collectors::{self, FanoutReport, UsagePushSink};

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
    /// Errors reported by nodes, and rows set aside.
    pub errors: BTreeMap<String, String>,
    /// Whether every DNS node answered completely and without error.
    pub complete: bool,
    /// Node-less rows (written by a Go collator) removed because every node's own rows for
    /// their days are now stored.
    pub legacy_rows_replaced: u64,
}

/// Decisions a collator may hold before its writer catches up (then the core waits).
pub const DECISION_QUEUE: usize = 65_536;

/// A collator's outage records and usage collection.
#[derive(Clone)]
pub struct CollatorService {
    store: Store,
    writes: StorageHealth,
    usage_timeout: Duration,
    recorded: Arc<tokio::sync::watch::Sender<u64>>,
    collections: Arc<tokio::sync::watch::Sender<u64>>,
}

impl CollatorService {
    /// Migrates the collator's tables (usage and events).
    pub async fn open(
        writes: StorageHealth,
        usage_timeout: Duration,
    ) -> Result<(CollatorService, RoleServices, mpsc::Receiver<Decision>), StoreError> {
        let store = writes.store().clone();
        store
            .migrate(&[Part::Usage, Part::Events, Part::DeadLetters])
            .await?;
        let (tx, rx) = mpsc::channel(DECISION_QUEUE);
        let me = CollatorService {
            store,
            writes,
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

    /// The outage write a passed decision makes (`None` for failed decisions and unknown
    /// check types, which record nothing).
    pub fn event_write(d: &Decision) -> Option<EventWrite> {
        if !d.passed {
            return None;
        }
        let p = &d.proposal;
        let Some(check_type) = CheckType::parse(&p.check_type) else {
            tracing::warn!(check_type = %p.check_type, proposal = %p.id, "decision with an unknown check type not recorded");
            return None;
        };
        let at = if d.decided_at.is_zero() {
            Utc::now()
        } else {
            d.decided_at.instant()
        };
        Some(EventWrite {
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
        })
    }

    /// Records a decision under the write policy: held and retried while the database is
    /// away, set aside if it refuses it for good. Returns what happened.
    pub async fn record_durably(&self, d: &Decision) -> WriteOutcome<Option<OutageChange>> {
        let Some(w) = Self::event_write(d) else {
            return WriteOutcome::Stored(None);
        };
        let store = self.store.clone();
        let mut out = self
            .writes
            .write_batch("decision", std::slice::from_ref(&w), |b| {
                let store = store.clone();
                let w = b[0].clone();
                async move { store.record_decision(&w).await.map(|c| vec![c]) }
            })
            .await;
        match out.pop() {
            Some(WriteOutcome::Stored(change)) => {
                self.recorded_change(&w, change);
                WriteOutcome::Stored(Some(change))
            }
            Some(WriteOutcome::SetAside) => WriteOutcome::SetAside,
            _ => WriteOutcome::Unsaved,
        }
    }

    fn recorded_change(&self, w: &EventWrite, change: OutageChange) {
        if change != OutageChange::Duplicate {
            self.recorded.send_modify(|n| *n += 1);
        }
        let check = format!(
            "{}/{}/{}",
            w.key.check_type, w.key.check_name, w.key.member_name
        );
        match change {
            OutageChange::Opened(id) => {
                tracing::warn!(member = %w.key.member_name, check = %check, event = id, "OFFLINE: outage opened")
            }
            OutageChange::Closed(id) => {
                tracing::info!(member = %w.key.member_name, check = %check, event = id, "ONLINE: outage closed")
            }
            OutageChange::Backfilled(id) => {
                tracing::info!(member = %w.key.member_name, check = %check, event = id, "outage recorded after its end (decisions arrived out of order)")
            }
            OutageChange::Stale => {
                tracing::info!(member = %w.key.member_name, check = %check, "offline decision older than the check's latest recovery: nothing opened")
            }
            _ => {}
        }
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

    /// Records decisions from the node, in order, until the channel closes. A decision the
    /// database cannot take now is held (the ones behind it wait: order matters for
    /// outages); one it refuses for good is set aside.
    pub async fn record_decisions(self, mut rx: mpsc::Receiver<Decision>) {
        while let Some(d) = rx.recv().await {
            self.writes
                .metrics()
                .set_write_queue("decisions", rx.len() + 1);
            self.record_durably(&d).await;
            self.writes.metrics().set_write_queue("decisions", rx.len());
        }
    }

    /// The write policy (shared with the durable consumer).
    pub fn writes(&self) -> &StorageHealth {
        &self.writes
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
        let mut set_aside = 0;
        for r in &report.records {
            let row = match UsageRow::from_record(r) {
                Ok(row) => row,
                Err(e) => {
                    skipped += 1;
                    tracing::warn!(node = %r.node_id, error = %e, "usage record with an unreadable date skipped");
                    continue;
                }
            };
            if let Err(e) = row.validate() {
                // Never truncated into another key: kept whole for an operator.
                set_aside += 1;
                let err = self
                    .store
                    .dead_letter(
                        "usage_record",
                        &serde_json::to_value(&row).unwrap_or_default(),
                        &e,
                    )
                    .await;
                self.writes.metrics().dead_lettered("usage_record");
                tracing::error!(node = %row.node_id, error = %e, stored = err.is_ok(), "usage record that fits no row set aside");
                errors
                    .entry(r.node_id.clone())
                    .or_insert_with(|| format!("record set aside: {e}"));
                continue;
            }
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
                .and_modify(|m| m.hits = m.hits.saturating_add(row.hits))
                .or_insert(row);
        }
        let mut days = Vec::new();
        let mut d = from;
        while d <= to {
            days.push(d);
            d = d.succ_opt().unwrap_or(to + chrono::Days::new(1));
        }
        let complete = report.complete && errors.is_empty() && set_aside == 0;
        let rows: Vec<UsageRow> = merged.into_values().collect();
        let mut by_node: BTreeMap<String, i64> = BTreeMap::new();
        for r in &rows {
            *by_node.entry(r.node_id.clone()).or_default() += r.hits;
        }
        let mut stored = 0;
        let mut legacy_rows_replaced = 0;
        if complete {
            // Every DNS node's own rows for these days are here: a Go collator's node-less
            // rows for the same days go in the same transaction (they count the same hits).
            let legacy = self
                .store
                .legacy_usage_totals(from, to)
                .await
                .unwrap_or_default();
            for (day, old) in &legacy {
                let new: i64 = rows.iter().filter(|r| r.date == *day).map(|r| r.hits).sum();
                if new < *old {
                    tracing::warn!(day = %day, legacy = old, collected = new, "the DNS nodes now report fewer hits for a day than the Go collator's rows held; replacing them anyway (every node answered)");
                }
            }
            let store = self.store.clone();
            let job = vec![(rows.clone(), days.clone())];
            let out = self
                .writes
                .write_batch("usage_replace", &job, |b| {
                    let store = store.clone();
                    let (rows, days) = b[0].clone();
                    async move {
                        store
                            .replace_usage_taking_over(&rows, &days)
                            .await
                            .map(|n| vec![n])
                    }
                })
                .await;
            match out.first() {
                Some(WriteOutcome::Stored(n)) => {
                    stored = rows.len();
                    legacy_rows_replaced = *n;
                    if *n > 0 {
                        tracing::info!(
                            rows = n,
                            "node-less usage rows of a Go collator replaced by per-node rows"
                        );
                    }
                }
                _ => {
                    errors.insert(
                        "(all)".into(),
                        "usage not stored (see the dead letters)".into(),
                    );
                }
            }
        } else {
            // One transaction per node: one node's trouble does not cost the others their
            // hour. Node-less legacy rows stay until a complete collection.
            let mut per_node: BTreeMap<String, Vec<UsageRow>> = BTreeMap::new();
            for row in rows {
                per_node.entry(row.node_id.clone()).or_default().push(row);
            }
            let groups: Vec<(String, Vec<UsageRow>)> = per_node.into_iter().collect();
            let store = self.store.clone();
            let out = self
                .writes
                .write_batch("usage_replace", &groups, |b| {
                    let store = store.clone();
                    let b = b.to_vec();
                    async move {
                        let mut done = Vec::with_capacity(b.len());
                        for (_, rows) in &b {
                            store.replace_usage(rows).await?;
                            done.push(rows.len());
                        }
                        Ok(done)
                    }
                })
                .await;
            for ((id, _), o) in groups.iter().zip(out) {
                match o {
                    WriteOutcome::Stored(n) => stored += n,
                    _ => {
                        by_node.remove(id);
                        errors.insert(id.clone(), "usage not stored (see the dead letters)".into());
                    }
                }
            }
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
            complete,
            legacy_rows_replaced,
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
