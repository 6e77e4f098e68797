//! A collator without JetStream misses the decisions made while it is away. At start it
//! asks the monitors for their official results (the catch-up request monitors serve each
//! other, `crate::cluster::SYNC_SUBJECT`) and compares what a quorum of them attests with
//! its open outages: an outage the monitors hold but it has no row for is a missed start,
//! a row still open for a check they hold online (decided after the row opened) a missed
//! end. It reports them — log lines naming the checks, `ibp_collator_gaps{kind}` — and
//! changes nothing: the times it would have recorded are unknown, and SLA money depends on
//! them. (With `IbpNode.collator.jetstream` nothing is missed.)

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use ibp_core::CheckKey;
use ibp_storage::Store;
use serde::Serialize;

use crate::cluster::Node;

/// What the collator missed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Gaps {
    /// Monitors asked, and how many answered.
    pub asked: usize,
    /// Monitors that answered.
    pub answered: usize,
    /// Checks offline by the monitors' official results with no open outage row.
    pub missed_starts: Vec<String>,
    /// Checks with an open outage row that the monitors hold online since after it opened.
    pub missed_ends: Vec<String>,
}

fn key_of(
    check_type: &str,
    name: &str,
    member: &str,
    domain: &str,
    endpoint: &str,
    v6: bool,
) -> String {
    let t = match ibp_wire::CheckType::parse(check_type) {
        Some(t) => t.as_str(),
        None => check_type,
    };
    let endpoint = if t == "endpoint" { endpoint } else { "" };
    format!(
        "{t}/{name} {member} {domain} {endpoint} {}",
        if v6 { "IPv6" } else { "IPv4" }
    )
}

fn of_check(k: &CheckKey) -> String {
    key_of(
        k.check_type.as_str(),
        &k.check_name,
        &k.member_name,
        &k.domain_name,
        &k.endpoint,
        k.is_ipv6,
    )
}

/// Compares the monitors' attested official results with the open outage rows.
pub async fn find(node: &Node, store: &Store, within: Duration) -> Result<Gaps, String> {
    let g = node
        .gather_official(within)
        .await
        .map_err(|e| e.to_string())?;
    let (asked, replies) = (g.asked, g.replies);
    let need = node.quorum_now();
    let attested = ibp_core::consensus::attested(&replies, need, |r| asked.contains(r));
    let open: BTreeMap<String, DateTime<Utc>> = store
        .open_events()
        .await
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|e| {
            (
                key_of(
                    &e.check_type,
                    &e.check_name,
                    &e.member_name,
                    &e.domain_name,
                    &e.endpoint,
                    e.is_ipv6,
                ),
                e.start_time,
            )
        })
        .collect();
    let mut gaps = Gaps {
        asked: asked.len(),
        answered: g.complete,
        ..Gaps::default()
    };
    for p in attested {
        let key = of_check(&CheckKey::of(&p));
        match (p.proposed_status, open.get(&key)) {
            (false, None) => gaps.missed_starts.push(key),
            (true, Some(start)) if p.timestamp.instant() > *start => gaps.missed_ends.push(key),
            _ => {}
        }
    }
    Ok(gaps)
}

/// At start: waits for the monitors, looks for gaps, reports them.
pub async fn check_at_start(
    node: Node,
    store: Store,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    if !node.monitors_settled(1, &mut stop).await {
        return;
    }
    let gaps = match find(&node, &store, Duration::from_secs(3)).await {
        Ok(g) => g,
        Err(e) => {
            tracing::warn!(error = %e, "cannot compare the outages with the monitors' results");
            return;
        }
    };
    let m = node.metrics();
    m.set_collator_gaps("missed_start", gaps.missed_starts.len());
    m.set_collator_gaps("missed_end", gaps.missed_ends.len());
    if gaps.missed_starts.is_empty() && gaps.missed_ends.is_empty() {
        tracing::info!(
            asked = gaps.asked,
            answered = gaps.answered,
            "no decision missed while away, as far as the monitors tell"
        );
        return;
    }
    for k in gaps.missed_starts.iter().take(20) {
        tracing::warn!(check = %k, "missed while away: an outage the monitors hold has no row here (enable IbpNode.collator.jetstream to lose nothing)");
    }
    for k in gaps.missed_ends.iter().take(20) {
        tracing::warn!(check = %k, "missed while away: this outage's row is open but the monitors hold the check online");
    }
    tracing::warn!(
        missed_starts = gaps.missed_starts.len(),
        missed_ends = gaps.missed_ends.len(),
        "decisions were missed while this collator was away (ibp_collator_gaps)"
    );
}
