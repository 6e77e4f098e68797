//! The DNS role's usage side: hit counters in memory, flushed to the `requests` table with
//! increment semantics; usage answers per node ID.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{NaiveDate, Utc};
use futures::future::BoxFuture;
use ibp_storage::{Part, Store, StoreError, UsageFilter, UsageRow};
use ibp_wire::{UsageRecord, UsageRequest};
use tokio::sync::Notify;

use super::writes::{StorageHealth, WriteOutcome};
use crate::cluster::RoleServices;
use crate::collectors::UsageSource;

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

/// Pending-key limits of a DNS node's hit counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HitLimits {
    /// At this many distinct pending keys the counters are flushed at once, not at the
    /// next period.
    pub flush_at: usize,
    /// Past this many, a hit with a new key is counted under a coarser key of the same day,
    /// domain, member and family (country, ASN and network unknown) so its total is kept
    /// without growing memory; past 1.25 × this, new keys are refused (HTTP 503).
    pub max_keys: usize,
}

impl Default for HitLimits {
    fn default() -> Self {
        HitLimits {
            flush_at: 100_000,
            max_keys: 200_000,
        }
    }
}

/// Why a hit was not counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HitError {
    /// No domain.
    #[error("a hit needs a domain")]
    NoDomain,
    /// The counters are full and the database is not taking the flush.
    #[error("too many pending usage keys ({0}); the flush is behind, retry later")]
    Full(usize),
}

type Counts = HashMap<HitKey, i64>;

/// A DNS node's hit counters and usage table.
#[derive(Clone)]
pub struct DnsService {
    store: Store,
    writes: StorageHealth,
    node_id: String,
    counters: Arc<Mutex<Counts>>,
    limits: HitLimits,
    flush_now: Arc<Notify>,
}

impl DnsService {
    /// Migrates the usage table.
    pub async fn open(
        writes: StorageHealth,
        node_id: &str,
        limits: HitLimits,
    ) -> Result<(DnsService, RoleServices), StoreError> {
        let store = writes.store().clone();
        store.migrate(&[Part::Usage, Part::DeadLetters]).await?;
        let me = DnsService {
            store,
            writes,
            node_id: node_id.to_string(),
            counters: Arc::new(Mutex::new(HashMap::new())),
            limits,
            flush_now: Arc::new(Notify::new()),
        };
        let services = RoleServices {
            usage: Some(Arc::new(me.clone())),
            ..RoleServices::default()
        };
        Ok((me, services))
    }

    /// Counts a hit in memory (the reference `RecordDnsHit`); flushed to the table later.
    pub fn record_dns_hit(&self, hit: &Hit) -> Result<(), HitError> {
        let domain = crate::normalize::domain(&hit.domain);
        if domain.is_empty() {
            return Err(HitError::NoDomain);
        }
        let cc = hit.country_code.trim().to_ascii_uppercase();
        let (cc, cname) = if cc.len() == 2 {
            (cc, hit.country_name.trim().to_string())
        } else {
            ("??".to_string(), "Unknown".to_string())
        };
        let mut key = HitKey {
            date: hit.date.unwrap_or_else(|| Utc::now().date_naive()),
            domain,
            member: match hit.member.trim() {
                "" => "(none)".into(),
                m => m.to_string(),
            },
            country_code: cc,
            country_name: cname,
            asn: hit.asn.trim().to_string(),
            network: hit.network.trim().to_string(),
            is_ipv6: hit.is_ipv6,
        };
        let n = hit.hits.unwrap_or(1).max(0);
        let mut c = self.counters();
        let len = c.len();
        if len >= self.limits.flush_at {
            self.flush_now.notify_one();
        }
        if len >= self.limits.max_keys && !c.contains_key(&key) {
            key.country_code = "??".into();
            key.country_name = "Unknown".into();
            key.asn = String::new();
            key.network = String::new();
            if !c.contains_key(&key) && len >= self.limits.max_keys + self.limits.max_keys / 4 {
                self.writes.metrics().ignore("usage_keys_full");
                return Err(HitError::Full(len));
            }
            self.writes.metrics().ignore("usage_key_coarsened");
        }
        let e = c.entry(key).or_insert(0);
        *e = e.saturating_add(n);
        Ok(())
    }

    /// The counters. A panic elsewhere while they were locked must not make every later
    /// hit vanish silently, so a poisoned lock is taken over as it is.
    fn counters(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Hits counted but not yet flushed.
    pub fn pending_hits(&self) -> i64 {
        self.counters()
            .values()
            .fold(0i64, |a, v| a.saturating_add(*v))
    }

    /// Whether `n` more hits with new keys can certainly be counted.
    pub fn has_room(&self, n: usize) -> bool {
        self.pending_keys() + n <= self.limits.max_keys + self.limits.max_keys / 4
    }

    /// Distinct keys counted but not yet flushed.
    pub fn pending_keys(&self) -> usize {
        self.counters().len()
    }

    /// Writes the counters to the table with increment semantics, in one transaction per
    /// batch. The lock is held only to swap the map out. A row the database refuses for
    /// good is set aside (dead letter) whole, hits included; while the database is away
    /// the flush waits and retries, and new hits keep counting in memory.
    pub async fn flush(&self) -> usize {
        let taken: Vec<(HitKey, i64)> = std::mem::take(&mut *self.counters()).into_iter().collect();
        if taken.is_empty() {
            return 0;
        }
        let started = std::time::Instant::now();
        let rows: Vec<UsageRow> = taken
            .into_iter()
            .filter(|(_, hits)| *hits > 0)
            .map(|(k, hits)| UsageRow {
                date: k.date,
                node_id: self.node_id.clone(),
                domain: k.domain,
                member_name: k.member,
                asn: k.asn,
                network_name: k.network,
                country_code: k.country_code,
                country_name: k.country_name,
                is_ipv6: k.is_ipv6,
                hits,
            })
            .collect();
        let total = rows.len();
        let mut written = 0;
        // Bounded transactions: a huge flush makes progress (and reports it) chunk by chunk.
        for (i, chunk) in rows.chunks(FLUSH_CHUNK).enumerate() {
            let store = self.store.clone();
            let outcomes = self
                .writes
                .write_batch("usage_increment", chunk, |b| {
                    let store = store.clone();
                    let b = b.to_vec();
                    async move { store.increment_usage(&b).await.map(|()| vec![(); b.len()]) }
                })
                .await;
            written += outcomes
                .iter()
                .filter(|o| matches!(o, WriteOutcome::Stored(())))
                .count();
            if total > FLUSH_CHUNK {
                tracing::info!(
                    rows = (i + 1) * FLUSH_CHUNK.min(total),
                    of = total,
                    "flushing usage counters"
                );
            }
        }
        tracing::debug!(
            rows = written,
            of = total,
            ms = started.elapsed().as_millis() as u64,
            "usage flushed"
        );
        written
    }

    /// Flushes every `period` (and at once when the counters fill up) until `stop` fires,
    /// then once more.
    pub async fn run_flusher(self, period: Duration, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = self.flush_now.notified() => {}
                _ = stop.changed() => break,
            }
            self.flush().await;
        }
        let keys = self.pending_keys();
        if keys > 0 {
            tracing::info!(
                keys,
                hits = self.pending_hits(),
                "writing pending usage counters before stopping"
            );
        }
        self.flush().await;
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }
}

/// Rows per flush transaction.
const FLUSH_CHUNK: usize = 10_000;

impl UsageSource for DnsService {
    fn usage(
        &self,
        req: UsageRequest,
        from: NaiveDate,
        to: NaiveDate,
        per_node: bool,
    ) -> BoxFuture<'static, Result<Vec<UsageRecord>, String>> {
        let store = self.store.clone();
        Box::pin(async move {
            let f = UsageFilter {
                from,
                to,
                domain: crate::normalize::domain(&req.domain),
                member: req.member_name.trim().to_string(),
                country: req.country.trim().to_string(),
            };
            let r = if per_node {
                store.query_usage_by_node(&f).await
            } else {
                store.query_usage(&f).await
            };
            r.map_err(|e| format!("usage store: {e}"))
        })
    }
}
