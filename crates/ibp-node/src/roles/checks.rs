//! A monitor's own checks: check units from the member and service lists, run on the
//! scheduler's grid, each result recorded as a local observation and proposed when it
//! differs from the official one — the same path as `POST /v1/observations`.

use std::sync::Arc;

use ibp_checks::{CheckSpec, Checker, CheckerSettings, Trust, UnitResult};
use ibp_core::{CheckKey, Observation};
use ibp_wire::{Data, Role};
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use super::monitor::MonitorService;
use crate::cluster::Node;
use crate::health::Part;
use crate::ibp_config::SharedIbpConfig;

/// The checks of one monitor.
#[derive(Clone)]
pub struct ChecksService {
    checker: Arc<Checker>,
    specs: Vec<CheckSpec>,
}

impl std::fmt::Debug for ChecksService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChecksService")
            .field("checks", &self.specs.len())
            .finish()
    }
}

/// One unit as `GET /v1/checks` shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckView {
    /// Check name.
    pub check: String,
    /// `site`, `domain`, `endpoint`.
    pub check_type: String,
    /// Member.
    pub member: String,
    /// Service (domain and endpoint checks).
    pub service: String,
    /// Hostname.
    pub domain: String,
    /// RPC URL.
    pub endpoint: String,
    /// IP family.
    #[serde(rename = "isIPv6")]
    pub is_ipv6: bool,
    /// The address dialled (empty when none).
    pub ip: String,
    /// Seconds until the next run (0 when due or running).
    pub next_run_in_s: f64,
    /// Whether it runs now.
    pub running: bool,
    /// The last result reported.
    pub last: Option<LastView>,
}

/// A last result.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LastView {
    /// Healthy or not.
    pub status: bool,
    /// Why not.
    pub error_text: String,
    /// How long the check took, ms.
    pub latency_ms: u64,
    /// When (RFC 3339).
    pub at: String,
}

impl ChecksService {
    /// Loads the trust store and prepares the checker for `specs`.
    pub fn new(settings: CheckerSettings, specs: Vec<CheckSpec>) -> Result<ChecksService, String> {
        let trust = Trust::load(settings.ca_file.as_deref())?;
        Ok(ChecksService {
            checker: Arc::new(Checker::new(settings, trust)),
            specs,
        })
    }

    /// The checker.
    pub fn checker(&self) -> &Arc<Checker> {
        &self.checker
    }

    /// The units and their state, for `GET /v1/checks`.
    pub fn view(&self) -> Vec<CheckView> {
        let now = std::time::Instant::now();
        self.checker
            .snapshot()
            .into_iter()
            .map(|(s, last)| {
                let i = &s.unit.item;
                CheckView {
                    check: i.check.clone(),
                    check_type: i.check_type.to_string(),
                    member: i.member.clone(),
                    service: i.service.clone(),
                    domain: i.domain.clone(),
                    endpoint: i.endpoint.clone(),
                    is_ipv6: s.unit.is_ipv6,
                    ip: s.unit.host(),
                    next_run_in_s: s.due.saturating_duration_since(now).as_secs_f64(),
                    running: s.running,
                    last: last.map(|l| LastView {
                        status: l.status,
                        error_text: l.error_text,
                        latency_ms: l.latency.as_millis() as u64,
                        at: chrono::DateTime::<chrono::Utc>::from(l.at).to_rfc3339(),
                    }),
                }
            })
            .collect()
    }

    /// Builds units whenever the lists (re)load, waits briefly for a peer monitor (as the
    /// Go monitor does), then runs the checks until `stop` fires, recording every result.
    pub async fn run(
        self,
        node: Node,
        monitor: MonitorService,
        lists: SharedIbpConfig,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut loads = lists.subscribe();
        // The units follow the lists.
        let checker = self.checker.clone();
        let specs = self.specs.clone();
        let health = node.health().clone();
        let mut stop_units = stop.clone();
        let follow = tokio::spawn(async move {
            loop {
                if let Some(l) = lists.get() {
                    let (items, unknown) = ibp_checks::items::build(&l, &specs);
                    if !unknown.is_empty() {
                        tracing::warn!(checks = ?unknown, "these configured checks are not run (unknown check names)");
                    }
                    let units = ibp_checks::items::units(&items);
                    tracing::info!(
                        items = items.len(),
                        units = units.len(),
                        "check units built from the member and service lists"
                    );
                    checker.set_units(units);
                    health.recover(Part::Checks);
                } else {
                    health.fail(Part::Checks, "no member and service lists loaded yet");
                }
                tokio::select! {
                    r = loads.changed() => if r.is_err() { break },
                    _ = stop_units.changed() => break,
                }
            }
        });
        let warm = self.checker.settings().warm_up;
        if !node.wait_for_active(Role::Monitor, 2, warm).await {
            tracing::info!(waited = ?warm, "no peer monitor yet; checking anyway");
        }
        let (tx, mut rx) = mpsc::channel::<UnitResult>(1024);
        let runner = tokio::spawn(self.checker.clone().run(tx, stop.clone()));
        loop {
            let r = tokio::select! {
                r = rx.recv() => r,
                _ = stop.changed() => break,
            };
            let Some(r) = r else { break };
            record(&node, &monitor, r).await;
        }
        let _ = runner.await;
        follow.abort();
    }
}

/// A result as the observation it is (checks.md §4.2: domain lower case, the endpoint as
/// configured).
pub fn observation(r: &UnitResult) -> Observation {
    let i = &r.unit.item;
    let (domain, endpoint) = match i.check_type {
        ibp_wire::CheckType::Site => (String::new(), String::new()),
        ibp_wire::CheckType::Domain => (i.domain.clone(), String::new()),
        ibp_wire::CheckType::Endpoint => (i.domain.clone(), i.endpoint.clone()),
    };
    Observation {
        key: CheckKey::new(
            i.check_type,
            i.check.clone(),
            i.member.clone(),
            domain,
            endpoint,
            r.unit.is_ipv6,
        ),
        status: r.verdict.status,
        error_text: r.verdict.error_text.clone(),
        data: Data::from_value(&r.verdict.data),
    }
}

async fn record(node: &Node, monitor: &MonitorService, r: UnitResult) {
    node.metrics()
        .checked(&r.unit.item.check, r.verdict.status, r.verdict.latency);
    let obs = observation(&r);
    if !r.verdict.status {
        tracing::debug!(check = %obs.key, error = %obs.error_text, "check failed");
    }
    let at = chrono::DateTime::<chrono::Utc>::from(r.at);
    if let Err(e) = monitor.record_local(&obs, at).await {
        tracing::warn!(error = %e, check = %obs.key, "local result not stored; proposing it anyway");
    }
    if let Err(e) = node.observe(obs).await {
        tracing::warn!(error = %e, "check result not observed");
    }
}

/// Runs `units` once, now (the `ibp-node check` command).
pub async fn run_once(
    settings: CheckerSettings,
    units: Vec<ibp_checks::Unit>,
) -> Result<Vec<UnitResult>, String> {
    let trust = Trust::load(settings.ca_file.as_deref())?;
    let checker = Arc::new(Checker::new(settings, trust));
    let mut out = checker.run_once(units).await;
    out.sort_by_key(|r| r.unit.key());
    Ok(out)
}
