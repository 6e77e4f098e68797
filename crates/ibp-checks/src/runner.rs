//! Runs checks: one unit with a hard timeout, a round of units as fast as the limits allow,
//! or forever on the scheduler's grid. At most `max_in_flight` checks run at once and at
//! most `max_per_host` against one member IP, so one provider's many endpoints are not
//! hammered at once; a check that overruns its `Timeout` is stopped and frees its slot.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use ibp_wire::CheckType;
use tokio::sync::{Semaphore, mpsc, watch};

use crate::head::HeadTracker;
use crate::items::Unit;
use crate::scheduler::{Scheduled, Scheduler};
use crate::spec::CheckerSettings;
use crate::tls::Trust;
use crate::verdict::Verdict;

/// One unit's result.
#[derive(Debug, Clone)]
pub struct UnitResult {
    /// The unit.
    pub unit: Unit,
    /// What the check found.
    pub verdict: Verdict,
    /// When the check finished.
    pub at: SystemTime,
}

/// Runs checks.
pub struct Checker {
    settings: CheckerSettings,
    trust: Trust,
    heads: Option<HeadTracker>,
    scheduler: Mutex<Scheduler>,
    last: Mutex<HashMap<String, LastResult>>,
    wake: tokio::sync::Notify,
}

/// The last result reported for a unit, for `GET /v1/checks`.
#[derive(Debug, Clone)]
pub struct LastResult {
    /// The status reported.
    pub status: bool,
    /// Its error text.
    pub error_text: String,
    /// How long the check took.
    pub latency: Duration,
    /// When.
    pub at: SystemTime,
}

impl std::fmt::Debug for Checker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checker")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Checker {
    /// A checker with `settings`, trusting `trust`.
    pub fn new(settings: CheckerSettings, trust: Trust) -> Checker {
        let heads = (settings.stall_after.is_some() || settings.max_lag_blocks.is_some())
            .then(|| HeadTracker::new(settings.stall_after, settings.max_lag_blocks));
        Checker {
            settings,
            trust,
            heads,
            scheduler: Mutex::new(Scheduler::new()),
            last: Mutex::new(HashMap::new()),
            wake: tokio::sync::Notify::new(),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &CheckerSettings {
        &self.settings
    }

    /// Checks one unit now, stopped after its item's `Timeout`.
    pub async fn check(&self, unit: &Unit) -> Verdict {
        let started = Instant::now();
        let ip = match &unit.ip {
            Ok(ip) => *ip,
            Err(e) => return Verdict::fail(e.clone()),
        };
        let item = &unit.item;
        let key = unit.key();
        let run = async {
            match (item.check_type, item.check.as_str()) {
                (CheckType::Site, "ping") => crate::ping::check(item, ip).await,
                (CheckType::Domain, "ssl") => crate::ssl::check(item, ip, &self.trust).await,
                (CheckType::Endpoint, "wss") => {
                    crate::wss::check(item, ip, &self.trust, self.heads.as_ref(), &key).await
                }
                (CheckType::Endpoint, "ethrpc") => {
                    crate::ethrpc::check(item, ip, &self.trust, self.heads.as_ref(), &key).await
                }
                (t, name) => Verdict::fail(format!("no {name} check for {t} items")),
            }
        };
        match tokio::time::timeout(item.timeout, run).await {
            Ok(v) => v,
            Err(_) => Verdict::fail(format!(
                "check timed out after {}s (Timeout)",
                item.timeout.as_secs()
            ))
            .timed(started.elapsed()),
        }
    }

    /// Runs every unit once, as fast as the in-flight and per-host limits allow (the
    /// one-round mode of `ibp-node check` and the benchmark). Results come in completion
    /// order.
    pub async fn run_once(self: &Arc<Self>, units: Vec<Unit>) -> Vec<UnitResult> {
        let global = Arc::new(Semaphore::new(self.settings.max_in_flight.max(1)));
        let mut hosts: HashMap<String, Arc<Semaphore>> = HashMap::new();
        let mut tasks = Vec::with_capacity(units.len());
        for u in units {
            let host = hosts
                .entry(u.host())
                .or_insert_with(|| Arc::new(Semaphore::new(self.settings.max_per_host.max(1))))
                .clone();
            let global = global.clone();
            let me = self.clone();
            tasks.push(tokio::spawn(async move {
                let _h = host.acquire_owned().await.ok();
                let _g = global.acquire_owned().await.ok();
                let verdict = me.check(&u).await;
                UnitResult {
                    unit: u,
                    verdict,
                    at: SystemTime::now(),
                }
            }));
        }
        let mut out = Vec::with_capacity(tasks.len());
        for t in tasks {
            if let Ok(r) = t.await {
                out.push(r);
            }
        }
        out
    }

    /// Replaces the scheduled units (after a list reload); places are kept.
    pub fn set_units(&self, units: Vec<Unit>) {
        self.scheduler
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .set_units(units, Instant::now());
        self.wake.notify_one();
    }

    /// Makes the units `select` picks due now; returns how many.
    pub fn run_now(&self, select: impl Fn(&Unit) -> bool) -> usize {
        let n = self
            .scheduler
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .run_now(Instant::now(), select);
        self.wake.notify_one();
        n
    }

    /// Every scheduled unit with its next run and last result.
    pub fn snapshot(&self) -> Vec<(Scheduled, Option<LastResult>)> {
        let units = self
            .scheduler
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .snapshot();
        let last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        units
            .into_iter()
            .map(|s| {
                let l = last.get(&s.unit.key()).cloned();
                (s, l)
            })
            .collect()
    }

    /// Runs the schedule until `stop` fires, sending each result to `out`. A result that
    /// differs from the last one reported for its unit is re-checked `confirm_count` times
    /// first (when set) and reported only if every re-check agrees.
    pub async fn run(
        self: Arc<Self>,
        out: mpsc::Sender<UnitResult>,
        mut stop: watch::Receiver<bool>,
    ) {
        let global = Arc::new(Semaphore::new(self.settings.max_in_flight.max(1)));
        let running: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<String>();
        loop {
            let now = Instant::now();
            let free = global.available_permits();
            let units = {
                let mut per_host = running
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let max_host = self.settings.max_per_host.max(1);
                self.scheduler
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .take_due(now, free, |u| {
                        let n = per_host.entry(u.host()).or_default();
                        if *n < max_host {
                            *n += 1;
                            true
                        } else {
                            false
                        }
                    })
            };
            for u in units {
                let Ok(permit) = global.clone().try_acquire_owned() else {
                    break;
                };
                let me = self.clone();
                let out = out.clone();
                let done = done_tx.clone();
                let running = running.clone();
                tokio::spawn(async move {
                    let key = u.key();
                    let host = u.host();
                    if let Some(r) = me.check_confirmed(&u).await {
                        let _ = out.send(r).await;
                    }
                    drop(permit);
                    if let Some(n) = running
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .get_mut(&host)
                    {
                        *n = n.saturating_sub(1);
                    }
                    let _ = done.send(key);
                });
            }
            let next = self
                .scheduler
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .next_due();
            let sleep = next
                .map(|d| d.saturating_duration_since(Instant::now()))
                .unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = self.wake.notified() => {}
                Some(key) = done_rx.recv() => {
                    self.scheduler
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .finished(&key, Instant::now());
                    while let Ok(k) = done_rx.try_recv() {
                        self.scheduler
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .finished(&k, Instant::now());
                    }
                }
                _ = stop.changed() => break,
            }
        }
    }

    /// Checks a unit; when the result changes the unit's reported status, re-checks it
    /// first (if configured). `None` when the change was not confirmed.
    async fn check_confirmed(&self, u: &Unit) -> Option<UnitResult> {
        let key = u.key();
        let verdict = self.check(u).await;
        let previous = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&key)
            .map(|l| l.status);
        if previous.is_some_and(|p| p != verdict.status) && self.settings.confirm_count > 0 {
            for _ in 0..self.settings.confirm_count {
                tokio::time::sleep(self.settings.confirm_spacing).await;
                if self.check(u).await.status != verdict.status {
                    tracing::debug!(unit = %key, "a changed result was not confirmed; not reported");
                    return None;
                }
            }
        }
        let at = SystemTime::now();
        self.last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(
                key,
                LastResult {
                    status: verdict.status,
                    error_text: verdict.error_text.clone(),
                    latency: verdict.latency,
                    at,
                },
            );
        Some(UnitResult {
            unit: u.clone(),
            verdict,
            at,
        })
    }
}
