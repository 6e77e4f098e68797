//! Catching up from the cluster (a Rust extension on [`SUBJECT`], which Go nodes neither
//! serve nor ask): a monitor asks the other monitors for their official results at start,
//! after every reconnect and every `IbpNode.monitor.sync_interval`, and takes a result
//! only when as many active monitors as a decision needs report the same status
//! (`ibp_core::consensus::sync`). It pulls the answers page by page, one page in flight
//! per monitor, so a node just cut off as a slow consumer is not flooded again. Answers
//! are signed like consensus messages; in `enforce` mode only parts signed by the trusted
//! key of the monitor they name count (in `verify` mode failures are counted and logged),
//! so no stranger can pose as a quorum.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use ibp_core::CheckKey;
use ibp_core::consensus::SyncOutcome;
use ibp_wire::{FinalizeMessage, Role};
use serde::{Deserialize, Serialize};

use super::Node;
use crate::connection::{BusError, Concurrency, SubscriptionHandle};

/// The request subject.
pub const SUBJECT: &str = "ibp.ext.sync.official";

/// Most results per reply message (parts also stay under half the server's `max_payload`).
const CHUNK: usize = 200;

/// Most bytes of results in one page: with one page in flight per monitor, a node catching
/// up has at most this times the number of monitors coming at it.
const PAGE_BYTES: usize = 64 * 1024;

/// What one catch-up did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CatchUp {
    /// Active monitors asked.
    pub asked: usize,
    /// Monitors whose whole answer arrived within the wait.
    pub answered: usize,
    /// What was taken.
    pub outcome: SyncOutcome,
}

/// What a catch-up request brought back.
pub(crate) struct Gathered {
    /// The active monitors asked.
    pub(crate) asked: BTreeSet<String>,
    /// What each answered (all parts that arrived).
    pub(crate) replies: BTreeMap<String, Vec<FinalizeMessage>>,
    /// How many answered completely.
    pub(crate) complete: usize,
}

/// A request: who asks (a node never answers itself), whom (none: every monitor) and,
/// when paged, which page. A request without `page` (an earlier Rust version asking) gets
/// the whole answer in parts at once.
#[derive(Debug, Serialize, Deserialize)]
struct Ask {
    node: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    to: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    page: Option<PageAsk>,
}

/// Which page: its number in this exchange and the check the previous page ended with.
#[derive(Debug, Serialize, Deserialize)]
struct PageAsk {
    seq: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    after: Option<CheckKey>,
}

/// One part of an answer; a paged one echoes the page number and names where it ended.
#[derive(Debug, Serialize, Deserialize)]
struct Part {
    node: String,
    results: Vec<FinalizeMessage>,
    last: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seq: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    next: Option<CheckKey>,
}

impl Node {
    /// Answers other monitors' catch-up requests with this node's official results.
    pub(crate) async fn serve_sync(&self) -> Result<SubscriptionHandle, BusError> {
        let node = self.clone();
        self.inner
            .conn
            .subscribe(SUBJECT, Concurrency::Sequential, move |msg| {
                let node = node.clone();
                async move {
                    let (Some(reply), Ok(ask)) =
                        (msg.reply, serde_json::from_slice::<Ask>(&msg.payload))
                    else {
                        node.inner.metrics.decode_failed(SUBJECT);
                        return;
                    };
                    let me = node.inner.id.to_string();
                    if ask.node == me || ask.to.as_ref().is_some_and(|to| *to != me) {
                        return;
                    }
                    let parts = match ask.page {
                        Some(page) => vec![node.sync_page(&me, page)],
                        None => node.sync_parts(&me),
                    };
                    for part in parts {
                        let Ok(bytes) = serde_json::to_vec(&part) else {
                            return;
                        };
                        if node.send_part(reply.as_str(), bytes).await.is_err() {
                            return;
                        }
                    }
                }
            })
            .await
    }

    /// Byte budget of one part: half the server's `max_payload`, and [`PAGE_BYTES`] for a
    /// page.
    fn part_budget(&self, paged: bool) -> usize {
        let half = (self.inner.conn.max_payload() / 2).max(4096);
        if paged { half.min(PAGE_BYTES) } else { half }
    }

    /// One page: at most [`CHUNK`] results and [`PAGE_BYTES`] after the asked check.
    fn sync_page(&self, me: &str, page: PageAsk) -> Part {
        let (results, more) = self.read_engine(|e, _| e.sync_page(page.after.as_ref(), CHUNK));
        let budget = self.part_budget(true);
        let mut size = 0;
        let mut kept = Vec::with_capacity(results.len());
        let mut next = None;
        let total = results.len();
        for (key, f) in results {
            let len = serde_json::to_vec(&f).map_or(0, |b| b.len()) + 1;
            if !kept.is_empty() && size + len > budget {
                break;
            }
            size += len;
            kept.push(f);
            next = Some(key);
        }
        Part {
            node: me.to_string(),
            last: !more && kept.len() == total,
            results: kept,
            seq: Some(page.seq),
            next,
        }
    }

    /// The whole answer for an unpaged ask, in parts of at most [`CHUNK`] results and half
    /// the server's `max_payload`.
    fn sync_parts(&self, me: &str) -> Vec<Part> {
        let all = self.read_engine(|e, _| e.sync_snapshot());
        let budget = self.part_budget(false);
        let mut parts: Vec<Vec<FinalizeMessage>> = vec![Vec::new()];
        let mut size = 0;
        for f in all {
            let len = serde_json::to_vec(&f).map_or(0, |b| b.len()) + 1;
            let cur = parts.last().map_or(0, Vec::len);
            if cur > 0 && (cur >= CHUNK || size + len > budget) {
                parts.push(Vec::new());
                size = 0;
            }
            size += len;
            if let Some(p) = parts.last_mut() {
                p.push(f);
            }
        }
        let n = parts.len();
        parts
            .into_iter()
            .enumerate()
            .map(|(i, results)| Part {
                node: me.to_string(),
                results,
                last: i + 1 == n,
                seq: None,
                next: None,
            })
            .collect()
    }

    /// Sends one part, signed like every consensus message: in enforce mode the asker
    /// counts only parts its trust list vouches for.
    async fn send_part(&self, reply: &str, bytes: Vec<u8>) -> Result<(), BusError> {
        let conn = &self.inner.conn;
        match self.inner.opts.security.sign(reply, &bytes, self.now()) {
            Some(h) => {
                conn.publish_with_headers(reply, h, Bytes::from(bytes))
                    .await
            }
            None => conn.publish_bytes(reply, Bytes::from(bytes)).await,
        }
    }

    /// Asks the other active monitors for their official results, page by page, waiting
    /// at most `within` for each next part (a minute in all). Each monitor has one page in
    /// flight at a time: a node just cut off as a slow consumer must not be sent every
    /// monitor's whole answer at once. Returns who was asked, what each answered, and how
    /// many answered completely (their last part arrived).
    pub(crate) async fn gather_official(&self, within: Duration) -> Result<Gathered, BusError> {
        let me = self.inner.id.to_string();
        let expected: BTreeSet<String> = self.read_engine(|e, now| {
            e.membership()
                .members(now)
                .into_iter()
                .filter(|(m, active)| *active && m.role == Role::Monitor.as_wire())
                .map(|(m, _)| m.node_id)
                .filter(|id| *id != me)
                .collect()
        });
        let mut replies: BTreeMap<String, Vec<FinalizeMessage>> = BTreeMap::new();
        if expected.is_empty() {
            return Ok(Gathered {
                asked: expected,
                replies,
                complete: 0,
            });
        }
        let inbox = format!("_INBOX.{me}.syncReply.{}", uuid::Uuid::new_v4().simple());
        let client = self.inner.conn.client();
        let mut sub = client
            .subscribe(inbox.clone())
            .await
            .map_err(|e| BusError::new("subscribe", &inbox, e))?;
        // The first page is asked of everyone at once; an earlier Rust version ignores the
        // page and sends its whole answer, once.
        self.ask_page(&inbox, &me, None, 0, None).await?;
        let mut want: BTreeMap<String, u32> = expected.iter().map(|n| (n.clone(), 0)).collect();
        let mut done: BTreeSet<String> = BTreeSet::new();
        let cap = Instant::now() + Duration::from_secs(60);
        while done.len() < expected.len() {
            let left = within.min(cap.saturating_duration_since(Instant::now()));
            let Ok(Some(msg)) = tokio::time::timeout(left, sub.next()).await else {
                break;
            };
            let Ok(part) = serde_json::from_slice::<Part>(&msg.payload) else {
                self.inner.metrics.decode_failed(SUBJECT);
                continue;
            };
            let Some(&seq) = want.get(part.node.as_str()) else {
                continue;
            };
            if done.contains(&part.node) || part.seq.is_some_and(|s| s != seq) {
                continue;
            }
            let sec = &self.inner.opts.security;
            let claim = crate::security::Claim {
                ids: vec![part.node.as_str()],
                role: Some(Role::Monitor),
            };
            if !sec.admit(
                &self.inner.metrics,
                msg.subject.as_str(),
                claim,
                msg.headers.as_ref(),
                &msg.payload,
                self.now(),
            ) {
                continue;
            }
            let Part {
                node,
                results,
                last,
                seq: paged,
                next,
            } = part;
            replies.entry(node.clone()).or_default().extend(results);
            if last {
                done.insert(node);
            } else if paged.is_some() {
                // A page that is not the last but names no end cannot be continued.
                let Some(after) = next else {
                    self.inner.metrics.decode_failed(SUBJECT);
                    done.insert(node);
                    continue;
                };
                let next_seq = seq + 1;
                want.insert(node.clone(), next_seq);
                self.ask_page(&inbox, &me, Some(&node), next_seq, Some(after))
                    .await?;
            }
        }
        self.inner
            .metrics
            .sync_pages(want.values().map(|s| u64::from(*s) + 1).sum());
        let _ = sub.unsubscribe().await;
        Ok(Gathered {
            asked: expected,
            replies,
            complete: done.len(),
        })
    }

    /// Asks for page `seq` (of `to`, or of every monitor), replies to `inbox`.
    async fn ask_page(
        &self,
        inbox: &str,
        me: &str,
        to: Option<&str>,
        seq: u32,
        after: Option<CheckKey>,
    ) -> Result<(), BusError> {
        let ask = serde_json::to_vec(&Ask {
            node: me.to_string(),
            to: to.map(str::to_string),
            page: Some(PageAsk { seq, after }),
        })
        .map_err(|e| BusError::new("encode", SUBJECT, e))?;
        self.inner
            .conn
            .publish_request(SUBJECT, inbox, Default::default(), Bytes::from(ask))
            .await
    }

    /// The number of agreeing monitors a decision needs now (majority of the active ones,
    /// floor included).
    pub fn quorum_now(&self) -> usize {
        self.inner
            .opts
            .core
            .majority(self.count_active(Role::Monitor))
    }

    /// Asks the other active monitors for their official results (waiting at most
    /// `within` for their answers) and takes what a quorum of them attests.
    pub async fn catch_up(&self, within: Duration) -> Result<CatchUp, BusError> {
        if self.role() != Some(Role::Monitor) {
            return Ok(CatchUp::default());
        }
        let g = self.gather_official(within).await?;
        if g.asked.is_empty() {
            return Ok(CatchUp::default());
        }
        let (outcome, fx) = self.with_engine(|e, now| {
            e.apply_synced(&g.replies, now)
                .unwrap_or((SyncOutcome::default(), Vec::new()))
        });
        self.run_effects(fx).await;
        tracing::info!(
            node = %self.inner.id,
            asked = g.asked.len(),
            answered = g.complete,
            applied = outcome.applied,
            skipped = outcome.skipped,
            "caught up from the other monitors"
        );
        Ok(CatchUp {
            asked: g.asked.len(),
            answered: g.complete,
            outcome,
        })
    }

    /// Waits (at most ~13 s) until `at_least` monitors are active and their number has
    /// stopped growing: the others answer a join within moments, and a quorum counted
    /// among the first few would be wrong. False when the node is stopping.
    pub(crate) async fn monitors_settled(
        &self,
        at_least: usize,
        stop: &mut tokio::sync::watch::Receiver<bool>,
    ) -> bool {
        let warm = self.wait_for_active(Role::Monitor, at_least, Duration::from_secs(10));
        tokio::select! {
            _ = warm => {}
            _ = stop.changed() => return false,
        }
        for _ in 0..10 {
            let before = self.count_active(Role::Monitor);
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                _ = stop.changed() => return false,
            }
            if self.count_active(Role::Monitor) == before {
                break;
            }
        }
        true
    }

    /// Catches up at start (once a peer is active), after every reconnect, whenever more
    /// monitors are active than at the last attempt, and every `every` (zero: not
    /// periodically); an attempt some monitor did not answer is retried sooner (1 s,
    /// doubling), as a loaded cluster answers late.
    pub(crate) async fn sync_loop(self, every: Duration) {
        let mut stop = self.inner.shutdown.subscribe();
        let mut state = self.inner.conn.watch_state();
        let mut seen = state.borrow().reconnects;
        if !self.monitors_settled(2, &mut stop).await {
            return;
        }
        let answer_within = Duration::from_secs(5);
        let period = if every.is_zero() {
            Duration::from_secs(365 * 24 * 3600)
        } else {
            every
        };
        let first_retry = Duration::from_secs(1);
        let mut retry = first_retry;
        let mut inputs = self.inner.changed.subscribe();
        loop {
            // More active monitors than at this attempt (a late answer to our join, a
            // healed split) ask again: a quorum counted among fewer may have taken nothing.
            let known = self.count_active(Role::Monitor);
            let complete = self
                .catch_up(answer_within)
                .await
                .is_ok_and(|c| c.answered >= c.asked);
            let wait = if complete {
                retry = first_retry;
                period
            } else {
                let w = retry;
                retry = (retry * 2).min(period);
                w.min(period)
            };
            // Until the wait is over or the connection comes back after a loss.
            let next = tokio::time::Instant::now() + wait;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(next) => break,
                    r = state.changed() => {
                        if r.is_err() { return; }
                        let n = state.borrow().reconnects;
                        if n > seen {
                            seen = n;
                            break;
                        }
                    }
                    r = inputs.changed() => {
                        if r.is_err() { return; }
                        if self.count_active(Role::Monitor) > known {
                            // Let the rest of a burst of joins arrive too.
                            tokio::select! {
                                _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                                _ = stop.changed() => return,
                            }
                            break;
                        }
                    }
                    _ = stop.changed() => return,
                }
            }
        }
    }
}
