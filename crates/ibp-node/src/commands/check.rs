//! `ibp-node check`: runs the matching checks once, now, and explains each verdict — the
//! first thing an operator runs when their endpoint is reported down.

use std::time::Duration;

use ibp_checks::UnitResult;
use serde::Serialize;

use crate::config::NodeConfig;
use crate::ibp_config::{FetchLimits, IbpConfig, fetch};

/// What to check.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// Only this member (`Details.Name`, any case).
    pub member: Option<String>,
    /// Only this service (its key, any case).
    pub service: Option<String>,
    /// Only this check (`ping`, `ssl`, `wss`, `ethrpc`); it runs even if disabled.
    pub check: Option<String>,
}

/// One verdict as printed.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Line {
    /// Check name.
    pub check: String,
    /// Check type.
    pub check_type: String,
    /// Member.
    pub member: String,
    /// Service.
    pub service: String,
    /// Hostname.
    pub domain: String,
    /// RPC URL.
    pub endpoint: String,
    /// IP family.
    #[serde(rename = "isIPv6")]
    pub is_ipv6: bool,
    /// The address dialled.
    pub ip: String,
    /// Healthy or not.
    pub status: bool,
    /// Why not.
    pub error_text: String,
    /// The check's data.
    pub data: serde_json::Value,
    /// How long it took, ms.
    pub latency_ms: u64,
}

/// Exit code: every check passed.
pub const ALL_UP: i32 = 0;
/// Exit code: at least one check failed.
pub const SOME_DOWN: i32 = 2;

/// Loads the lists of `cfg`, builds the units `sel` picks and checks them once.
pub async fn run(cfg: &NodeConfig, sel: &Selection) -> Result<Vec<Line>, String> {
    let (Some(m), Some(s)) = (
        cfg.config_urls.get("MembersConfig"),
        cfg.config_urls.get("ServicesConfig"),
    ) else {
        return Err(
            "System.ConfigUrls needs MembersConfig and ServicesConfig (URLs or paths)".into(),
        );
    };
    let limits = FetchLimits {
        max_bytes: cfg.lists_max_bytes,
        timeout: cfg.lists_timeout,
    };
    let (members, services) = tokio::join!(fetch(m, limits), fetch(s, limits));
    let lists = IbpConfig::parse(&members?, &services?)?;
    let specs: Vec<ibp_checks::CheckSpec> = cfg
        .checks
        .iter()
        .map(|c| c.spec())
        .filter(|c| match &sel.check {
            Some(name) => c.name.eq_ignore_ascii_case(name),
            None => c.enabled,
        })
        .map(|mut c| {
            c.enabled = true;
            c
        })
        .collect();
    if specs.is_empty() {
        return Err(match &sel.check {
            Some(n) => format!("no check named {n:?} in Checks"),
            None => "no enabled check in Checks (name one with --type)".into(),
        });
    }
    let (items, _) = ibp_checks::items::build(&lists, &specs);
    let items: Vec<_> = items
        .into_iter()
        .filter(|i| {
            sel.member
                .as_ref()
                .is_none_or(|m| i.member.eq_ignore_ascii_case(m))
        })
        .filter(|i| {
            sel.service
                .as_ref()
                .is_none_or(|s| i.service.eq_ignore_ascii_case(s))
        })
        .collect();
    if items.is_empty() {
        return Err(
            "nothing matches: check --member (Details.Name) and --service (its key)".into(),
        );
    }
    let units = ibp_checks::items::units(&items);
    let results = crate::roles::run_once(cfg.checker.clone(), units).await?;
    Ok(results.iter().map(line).collect())
}

fn line(r: &UnitResult) -> Line {
    let i = &r.unit.item;
    Line {
        check: i.check.clone(),
        check_type: i.check_type.to_string(),
        member: i.member.clone(),
        service: i.service.clone(),
        domain: i.domain.clone(),
        endpoint: i.endpoint.clone(),
        is_ipv6: r.unit.is_ipv6,
        ip: r.unit.host(),
        status: r.verdict.status,
        error_text: r.verdict.error_text.clone(),
        data: r.verdict.data.clone(),
        latency_ms: r.verdict.latency.as_millis() as u64,
    }
}

/// The human form: one line per unit, then a summary.
pub fn render(lines: &[Line]) -> String {
    let mut out = String::new();
    for l in lines {
        let target = if !l.endpoint.is_empty() {
            l.endpoint.as_str()
        } else if !l.domain.is_empty() {
            l.domain.as_str()
        } else {
            "(site)"
        };
        out.push_str(&format!(
            "{:<4} {:<6} {:<18} {} {} ({}) {} ms{}\n",
            if l.status { "UP" } else { "DOWN" },
            l.check,
            l.member,
            target,
            if l.is_ipv6 { "IPv6" } else { "IPv4" },
            if l.ip.is_empty() { "no address" } else { &l.ip },
            l.latency_ms,
            if l.status {
                String::new()
            } else {
                format!(" — {}", l.error_text)
            }
        ));
    }
    let down = lines.iter().filter(|l| !l.status).count();
    out.push_str(&format!(
        "{} checked, {} up, {down} down\n",
        lines.len(),
        lines.len() - down
    ));
    out
}

/// A bound on the whole command: the slowest check's timeout plus a margin.
pub fn deadline(cfg: &NodeConfig) -> Duration {
    Duration::from_secs(cfg.checks.iter().map(|c| c.timeout).max().unwrap_or(30) * 4 + 30)
}
