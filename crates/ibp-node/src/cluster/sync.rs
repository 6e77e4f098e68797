//! Catching up from the cluster (a Rust extension on [`SUBJECT`], which Go nodes neither
//! serve nor ask): a monitor asks the other monitors for their official results at start,
//! after every reconnect and every `IbpNode.monitor.sync_interval`, and takes a result
//! only when as many active monitors as a decision needs report the very same decision
//! (`ibp_core::consensus::sync`). Answers are signed like consensus messages; in `enforce`
//! mode only parts signed by the trusted key of the monitor they name count (in `verify`
//! mode failures are counted and logged), so no stranger can pose as a quorum.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use ibp_core::consensus::SyncOutcome;
use ibp_wire::{FinalizeMessage, Role};
use serde::{Deserialize, Serialize};

use super::Node;
use crate::connection::{BusError, Concurrency, SubscriptionHandle};

/// The request subject.
pub const SUBJECT: &str = "ibp.ext.sync.official";

/// Most results per reply message (parts also stay under half the server's `max_payload`).
const CHUNK: usize = 200;

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

/// A request: who asks (a node never answers itself).
#[derive(Debug, Serialize, Deserialize)]
struct Ask {
    node: String,
}

/// One part of an answer.
#[derive(Debug, Serialize, Deserialize)]
struct Part {
    node: String,
    results: Vec<FinalizeMessage>,
    last: bool,
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
                    if ask.node == me {
                        return;
                    }
                    let all = node.read_engine(|e, _| e.sync_snapshot());
                    // Parts of at most CHUNK results and half the server's max_payload.
                    let budget = (node.inner.conn.max_payload() / 2).max(4096);
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
                    for (i, results) in parts.into_iter().enumerate() {
                        let part = Part {
                            node: me.clone(),
                            results,
                            last: i + 1 == n,
                        };
                        let Ok(bytes) = serde_json::to_vec(&part) else {
                            return;
                        };
                        // Signed like every consensus message: in enforce mode the asker
                        // counts only parts its trust list vouches for.
                        let signed =
                            node.inner
                                .opts
                                .security
                                .sign(reply.as_str(), &bytes, node.now());
                        let sent = match signed {
                            Some(h) => {
                                node.inner
                                    .conn
                                    .publish_with_headers(reply.as_str(), h, Bytes::from(bytes))
                                    .await
                            }
                            None => {
                                node.inner
                                    .conn
                                    .publish_bytes(reply.as_str(), Bytes::from(bytes))
                                    .await
                            }
                        };
                        if sent.is_err() {
                            return;
                        }
                    }
                }
            })
            .await
    }

    /// Asks the other active monitors for their official results, waiting at most `within`
    /// for each next part (a minute in all). Returns who was asked, what each answered, and
    /// how many answered completely (their last part arrived).
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
        let ask = serde_json::to_vec(&Ask { node: me.clone() })
            .map_err(|e| BusError::new("encode", SUBJECT, e))?;
        self.inner
            .conn
            .publish_request(SUBJECT, &inbox, Default::default(), Bytes::from(ask))
            .await?;
        let mut done: BTreeSet<String> = BTreeSet::new();
        // Wait `within` for the next part, however long the whole answer takes (large
        // official sets on a loaded cluster), but never more than a minute in all.
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
            if !expected.contains(&part.node) || done.contains(&part.node) {
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
            if part.last {
                done.insert(part.node.clone());
            }
            replies.entry(part.node).or_default().extend(part.results);
        }
        let _ = sub.unsubscribe().await;
        Ok(Gathered {
            asked: expected,
            replies,
            complete: done.len(),
        })
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
