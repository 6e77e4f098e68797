//! Findings of the independent review, each pinned by a test that failed before its fix:
//! peers that run other rules (Go HEAD, v0.6.12 with its one-vote decisions and retries),
//! proposals forgotten before their last finalize, leaves that must stay clean, and what a
//! node holds for keys nobody configured.

mod common;

use std::time::Duration;

use common::*;
use ibp_core::consensus::Known;
use ibp_core::{CoreConfig, Effect, Input};
use ibp_wire::{ClusterMessage, NodeInfo, Role, WireTime};

fn floor(n: usize) -> CoreConfig {
    CoreConfig {
        min_quorum: Some(n),
        ..CoreConfig::default()
    }
}

fn refused(fx: &[Effect]) -> usize {
    fx.iter()
        .filter(|e| matches!(e, Effect::FinalizeRefused { .. }))
        .count()
}

#[test]
fn with_a_floor_a_foreign_finalize_needs_the_votes_this_node_saw() {
    let mut e = engine("m1", Role::Monitor, floor(3));
    with_monitors(&mut e, &["m2", "m3", "m4", "m5"], t0());
    // A v0.6.12 monitor (or a minority partition) finalizes with one vote: not applied.
    let lone = proposal("LONE", "m2", "alpha", false, secs(1));
    e.handle(Input::Proposal(lone.clone()), secs(1));
    e.handle(vote("LONE", "m2", true), secs(1));
    let fx = e.handle(finalize(&lone, "", true), secs(2));
    assert!(applied(&fx).is_empty(), "held, not applied");
    assert_eq!(official(&e, "alpha"), None);
    assert_eq!(e.counters().finalizes_held, 1);
    // The grace passes without the votes: dropped and reported.
    let fx = e.tick(secs(5));
    assert_eq!(refused(&fx), 1);
    assert_eq!(e.counters().finalizes_unbacked, 1);
    assert_eq!(official(&e, "alpha"), None);

    // A finalize that arrives before the votes backing it (different subjects) applies as
    // soon as they are here.
    let real = proposal("REAL", "m3", "beta", false, secs(10));
    let fx = e.handle(finalize(&real, "m3", true), secs(10));
    assert!(applied(&fx).is_empty());
    e.handle(vote("REAL", "m3", true), secs(10));
    e.handle(vote("REAL", "m4", true), secs(10));
    let fx = e.handle(vote("REAL", "m5", true), secs(11));
    assert_eq!(applied(&fx).len(), 1, "three agreeing votes meet the floor");
    assert_eq!(official(&e, "beta"), Some(false));
    assert_eq!(e.counters().finalizes_released, 1);
}

#[test]
fn without_a_floor_foreign_finalizes_apply_as_in_go() {
    let mut e = monitor("m1");
    with_monitors(&mut e, &["m2", "m3"], t0());
    let lone = proposal("LONE", "m2", "alpha", false, secs(1));
    let fx = e.handle(finalize(&lone, "", true), secs(2));
    assert_eq!(applied(&fx).len(), 1);
    assert_eq!(e.counters().finalizes_held, 0);
}

#[test]
fn a_late_finalize_of_a_forgotten_proposal_never_overwrites_a_newer_result() {
    let mut e = monitor("m1");
    with_monitors(&mut e, &["m2", "m3"], t0());
    // OLD is seen first and fails here; NEW, seen later, passes.
    let old = proposal("OLD", "m2", "alpha", false, secs(1));
    let new = proposal("NEW", "m3", "alpha", true, secs(20));
    e.handle(Input::Proposal(old.clone()), secs(1));
    e.handle(finalize(&old, "m2", false), secs(5));
    e.handle(Input::Proposal(new.clone()), secs(20));
    e.handle(finalize(&new, "m3", true), secs(21));
    assert_eq!(official(&e, "alpha"), Some(true));
    // A v0.6.12 monitor that kept OLD finalizes it again, passed, minutes later.
    let fx = e.handle(finalize(&old, "", true), secs(300));
    assert!(
        applied(&fx).is_empty(),
        "OLD was first seen before NEW: the late pass is stale"
    );
    assert_eq!(official(&e, "alpha"), Some(true));
    assert_eq!(e.counters().stale_decisions, 1);
}

#[test]
fn a_finalize_of_an_expired_proposal_is_ordered_by_when_it_was_seen() {
    let cfg = CoreConfig {
        proposal_ttl: Duration::from_secs(60),
        proposal_timeout: Duration::from_secs(3600),
        ..CoreConfig::default()
    };
    let mut e = engine("m1", Role::Monitor, cfg);
    with_monitors(&mut e, &["m2", "m3"], t0());
    let old = proposal("OLD", "m2", "alpha", false, secs(1));
    e.handle(Input::Proposal(old.clone()), secs(1));
    // It ages out undecided here.
    for s in (5..=70).step_by(5) {
        e.tick(secs(s));
    }
    assert!(!e.consensus().expect("m").tracked().contains_key("OLD"));
    let new = proposal("NEW", "m3", "alpha", true, secs(80));
    e.handle(Input::Proposal(new.clone()), secs(80));
    e.handle(finalize(&new, "m3", true), secs(81));
    let fx = e.handle(finalize(&old, "", true), secs(90));
    assert!(applied(&fx).is_empty(), "seen before NEW: stale");
    assert_eq!(official(&e, "alpha"), Some(true));
}

#[test]
fn after_a_restart_a_retried_finalize_older_than_the_restored_result_is_stale() {
    let mut e = monitor("m1");
    with_monitors(&mut e, &["m2", "m3"], t0());
    let newer = proposal("NEWER", "m3", "alpha", true, secs(100));
    e.consensus_mut()
        .expect("m")
        .restore_official(newer, secs(101), secs(150));
    let older = proposal("OLDER", "m2", "alpha", false, secs(10));
    let fx = e.handle(finalize(&older, "", true), secs(200));
    assert!(applied(&fx).is_empty());
    // An honest newer decision still applies over the restored one.
    let next = proposal("NEXT", "m2", "alpha", false, secs(300));
    let fx = e.handle(finalize(&next, "m2", true), secs(301));
    assert_eq!(applied(&fx).len(), 1);
}

fn leave_at(id: &str, when: ibp_core::Now) -> Input {
    Input::Leave(ClusterMessage {
        kind: ibp_wire::ext::LEAVE_TYPE.into(),
        sender: NodeInfo {
            node_id: id.into(),
            last_heard: WireTime::from_utc(when),
            ..NodeInfo::default()
        },
        members: None,
    })
}

fn join_at(id: &str, when: ibp_core::Now) -> Input {
    Input::Cluster(ClusterMessage {
        kind: "join".into(),
        sender: NodeInfo {
            node_id: id.into(),
            node_role: "IBPMonitor".into(),
            last_heard: WireTime::from_utc(when),
            ..NodeInfo::default()
        },
        members: None,
    })
}

#[test]
fn a_leave_stamped_in_the_future_keeps_a_live_monitor_out_for_a_moment_at_most() {
    let mut e = monitor("m1");
    with_monitors(&mut e, &["m2", "m3"], t0());
    let year = ibp_core::time::after(t0(), Duration::from_secs(365 * 86_400));
    e.handle(leave_at("m3", year), secs(10));
    assert_eq!(e.count_active(Role::Monitor, secs(10)), 2);
    // m3 is alive and keeps sending with its own (correct) clock.
    e.handle(join_at("m3", secs(20)), secs(20));
    assert_eq!(
        e.count_active(Role::Monitor, secs(20)),
        2,
        "within the window"
    );
    e.handle(join_at("m3", secs(60)), secs(60));
    assert_eq!(
        e.count_active(Role::Monitor, secs(60)),
        3,
        "after the window any message brings it back"
    );
}

#[test]
fn a_v0612_finalize_naming_no_sender_does_not_bring_back_a_proposer_that_left() {
    let mut e = monitor("m1");
    with_monitors(&mut e, &["m2", "m3"], t0());
    e.handle(leave_at("m3", secs(10)), secs(10));
    let p = proposal("P", "m3", "alpha", false, secs(5));
    // A v0.6.12 monitor finalizes m3's proposal later, stamping its own clock.
    e.handle(finalize(&p, "", true), secs(12));
    assert!(
        e.membership().is_left("m3"),
        "the finalize came from someone else; m3 stays gone"
    );
    assert_eq!(e.count_active(Role::Monitor, secs(12)), 2);
}

#[test]
fn a_leave_handled_before_the_join_that_preceded_it_still_counts() {
    let mut e = monitor("m1");
    // Leave and join travel on different subjects: the leave can be handled first.
    e.handle(leave_at("tool-1", secs(10)), secs(11));
    e.handle(join_at("tool-1", secs(9)), secs(11));
    assert!(e.membership().is_left("tool-1"));
    assert_eq!(e.count_active(Role::Monitor, secs(11)), 1);
}

#[test]
fn after_its_leave_a_node_publishes_nothing() {
    let mut e = monitor("m1");
    with_monitors(&mut e, &["m2", "m3"], t0());
    set_local(&mut e, "alpha", false, t0());
    e.leave(secs(1));
    let fx = e.handle(
        Input::Proposal(proposal("P", "m2", "alpha", false, secs(2))),
        secs(2),
    );
    assert!(published(&fx).is_empty(), "no vote after the leave: {fx:?}");
    let fx = e.tick(secs(200));
    assert!(published(&fx).is_empty(), "no heartbeat or finalize either");
}

#[test]
fn what_a_node_does_not_know_it_does_not_hold() {
    let cfg = CoreConfig {
        max_results: 3,
        ..CoreConfig::default()
    };
    let mut e = engine("m1", Role::Monitor, cfg);
    with_monitors(&mut e, &["m2", "m3"], t0());
    e.set_known(Some(Known {
        members: ["alpha", "beta", "gamma", "delta"]
            .into_iter()
            .map(String::from)
            .collect(),
        checks: [("site".to_string(), "ping".to_string())].into(),
    }));
    // A stranger's proposal and finalize about a member nobody configured.
    let p = proposal("X", "evil", "victim", false, secs(1));
    e.handle(Input::Proposal(p.clone()), secs(1));
    assert!(e.consensus().expect("m").tracked().is_empty());
    let fx = e.handle(finalize(&p, "evil", true), secs(2));
    assert!(applied(&fx).is_empty());
    assert_eq!(official(&e, "victim"), None);
    assert!(e.counters().unknown_checks >= 2);
    // Known keys are capped.
    for m in ["alpha", "beta", "gamma", "delta"] {
        set_local(&mut e, m, true, secs(3));
    }
    assert_eq!(e.consensus().expect("m").local().len(), 3);
    assert_eq!(e.counters().refused_results, 1);
}

#[test]
fn results_no_longer_observed_are_not_proposed_again_and_again() {
    let mut e = monitor("m1");
    with_monitors(&mut e, &["m2", "m3"], t0());
    // Restored from disk, observed long ago (a check since removed from the config).
    e.consensus_mut()
        .expect("m")
        .restore_local(ibp_core::Observation::new(key("old"), false), t0());
    set_local(&mut e, "fresh", false, secs(3000));
    let fx = e.reconcile(secs(3000));
    let proposed: Vec<_> = published(&fx)
        .into_iter()
        .filter_map(|o| match o {
            ibp_core::Outbound::Propose(p) => Some(p.member_name.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(proposed, vec!["fresh".to_string()]);
    assert_eq!(
        e.consensus().expect("m").local().len(),
        2,
        "the old result stays readable"
    );
}

#[test]
fn with_a_floor_the_collator_records_only_backed_decisions() {
    let mut c = engine("collator", Role::Collator, floor(3));
    with_monitors(&mut c, &["m2", "m3", "m4", "m5"], t0());
    let lone = proposal("LONE", "m2", "alpha", false, secs(1));
    c.handle(Input::Proposal(lone.clone()), secs(1));
    c.handle(vote("LONE", "m2", true), secs(1));
    c.handle(finalize(&lone, "", true), secs(2));
    let fx = c.tick(secs(3));
    assert_eq!(refused(&fx), 1, "one vote: no outage recorded");
    let real = proposal("REAL", "m3", "beta", false, secs(10));
    c.handle(Input::Proposal(real.clone()), secs(10));
    for m in ["m3", "m4", "m5"] {
        c.handle(vote("REAL", m, true), secs(10));
    }
    c.handle(finalize(&real, "m3", true), secs(10));
    let fx = c.tick(secs(11));
    assert!(
        fx.iter()
            .any(|e| matches!(e, Effect::Decided(d) if d.proposal.id == "REAL" && d.passed))
    );
}
