//! Helpers for driving one engine by hand.
#![allow(dead_code)]

use std::time::Duration;

use chrono::{TimeZone, Utc};
use ibp_core::{CheckKey, CoreConfig, Effect, Engine, Input, Now, Outbound, SelfInfo};
use ibp_wire::{
    CheckType, ClusterMessage, FinalizeMessage, NodeInfo, Proposal, Role, Vote, WireTime,
};

pub fn t0() -> Now {
    Utc.with_ymd_and_hms(2026, 11, 27, 10, 0, 0)
        .single()
        .expect("valid time")
}

pub fn at(ms: u64) -> Now {
    ibp_core::time::after(t0(), Duration::from_millis(ms))
}

pub fn secs(s: u64) -> Now {
    at(s * 1000)
}

pub fn ids(prefix: &'static str) -> Box<dyn ibp_core::IdSource> {
    let mut n = 0u64;
    Box::new(move || {
        n += 1;
        format!("{prefix}-{n}")
    })
}

/// An enabled engine, with its startup effects discarded.
pub fn engine(id: &str, role: Role, cfg: CoreConfig) -> Engine {
    let me = SelfInfo {
        node_id: id.to_string(),
        ..SelfInfo::default()
    };
    let mut e = Engine::new(me, role, cfg, ids("p"));
    e.enable(t0()).expect("first enable");
    e
}

pub fn monitor(id: &str) -> Engine {
    engine(id, Role::Monitor, CoreConfig::default())
}

pub fn join(id: &str, role: &str) -> Input {
    Input::Cluster(ClusterMessage {
        kind: "join".into(),
        sender: NodeInfo {
            node_id: id.into(),
            node_role: role.into(),
            ..NodeInfo::default()
        },
        members: None,
    })
}

/// Makes `e` know `ids` as monitors, heard at `now`.
pub fn with_monitors(e: &mut Engine, ids: &[&str], now: Now) {
    for id in ids {
        e.handle(join(id, "IBPMonitor"), now);
    }
}

pub fn key(member: &str) -> CheckKey {
    CheckKey::new(CheckType::Site, "ping", member, "", "", false)
}

pub fn proposal(id: &str, from: &str, member: &str, status: bool, ts: Now) -> Proposal {
    Proposal {
        id: id.into(),
        sender_node_id: from.into(),
        check_type: "site".into(),
        check_name: "ping".into(),
        member_name: member.into(),
        proposed_status: status,
        timestamp: WireTime::from_utc(ts),
        ..Proposal::default()
    }
}

pub fn vote(pid: &str, from: &str, agree: bool) -> Input {
    Input::Vote(Vote {
        proposal_id: pid.into(),
        sender_node_id: from.into(),
        node_id: from.into(),
        agree,
        timestamp: WireTime::from_utc(t0()),
    })
}

pub fn finalize(p: &Proposal, from: &str, passed: bool) -> Input {
    Input::Finalize(FinalizeMessage {
        proposal: p.clone(),
        sender_node_id: from.into(),
        passed,
        decided_at: WireTime::from_utc(t0()),
    })
}

pub fn set_local(e: &mut Engine, member: &str, status: bool, now: Now) -> Vec<Effect> {
    e.set_local(ibp_core::Observation::new(key(member), status), now)
        .expect("monitor")
}

pub fn published(effects: &[Effect]) -> Vec<&Outbound> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Publish(o) => Some(o),
            _ => None,
        })
        .collect()
}

pub fn votes_out(effects: &[Effect]) -> Vec<&Vote> {
    published(effects)
        .into_iter()
        .filter_map(|o| match o {
            Outbound::Vote(v) => Some(v),
            _ => None,
        })
        .collect()
}

pub fn proposals_out(effects: &[Effect]) -> Vec<&Proposal> {
    published(effects)
        .into_iter()
        .filter_map(|o| match o {
            Outbound::Propose(p) => Some(p),
            _ => None,
        })
        .collect()
}

pub fn finalizes_out(effects: &[Effect]) -> Vec<&FinalizeMessage> {
    published(effects)
        .into_iter()
        .filter_map(|o| match o {
            Outbound::Finalize(f) => Some(f),
            _ => None,
        })
        .collect()
}

pub fn applied(effects: &[Effect]) -> Vec<&ibp_core::OfficialChange> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::ApplyOfficial(c) => Some(c),
            _ => None,
        })
        .collect()
}

pub fn official(e: &Engine, member: &str) -> Option<bool> {
    e.consensus()
        .and_then(|c| c.official().get(&key(member)).map(|o| o.status))
}

/// Ticks `e` at every deadline up to and including `to`, as a shell would; returns all effects.
pub fn advance(e: &mut Engine, to: Now) -> Vec<Effect> {
    let mut out = Vec::new();
    while let Some(next) = e.next_deadline() {
        if next > to {
            break;
        }
        out.extend(e.tick(next));
    }
    out.extend(e.tick(to));
    out
}

/// The proposal behind the official result of `member`'s check.
pub fn official_id(e: &Engine, member: &str) -> Option<String> {
    e.consensus()?
        .official()
        .values()
        .find(|o| o.proposal.member_name == member)
        .map(|o| o.proposal.id.clone())
}
