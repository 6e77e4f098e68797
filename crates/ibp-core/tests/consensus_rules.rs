//! Behaviours of the Go reference that the core must keep (protocol §4–§5), one per test.

mod common;

use std::time::Duration;

use common::*;
use ibp_core::{CoreConfig, Effect, Input, Outbound, ProposeOutcome};
use ibp_wire::Role;

#[test]
fn eight_concurrent_proposals_with_one_key_track_one_proposal_and_vote_eight_times() {
    let mut e = monitor("m1");
    with_monitors(&mut e, &["m2", "m3", "m4", "m5"], t0());
    set_local(&mut e, "alpha", false, t0());
    let mut created = 0;
    let mut vote_ids = Vec::new();
    for _ in 0..8 {
        let (r, fx) = e
            .propose(ibp_core::Observation::new(key("alpha"), false), at(1))
            .expect("monitor");
        if matches!(r, ProposeOutcome::Created(_)) {
            created += 1;
        }
        vote_ids.extend(votes_out(&fx).iter().map(|v| v.proposal_id.clone()));
    }
    assert_eq!(created, 1);
    assert_eq!(e.consensus().expect("monitor").tracked().len(), 1);
    assert_eq!(vote_ids.len(), 8, "one vote per propose call");
    let id = e
        .consensus()
        .expect("monitor")
        .tracked()
        .keys()
        .next()
        .cloned()
        .expect("tracked");
    assert!(vote_ids.iter().all(|v| *v == id));
}

#[test]
fn a_repeated_proposal_id_is_ignored_and_a_new_id_with_the_same_key_is_tracked_separately() {
    let mut e = monitor("m1");
    with_monitors(&mut e, &["m2", "m3", "m4", "m5"], t0());
    set_local(&mut e, "alpha", false, t0());
    let p = proposal("A", "m2", "alpha", false, t0());
    let first = e.handle(Input::Proposal(p.clone()), at(1));
    let again = e.handle(Input::Proposal(p), at(2));
    assert_eq!(votes_out(&first).len(), 1);
    assert!(votes_out(&again).is_empty(), "a repeat is ignored");
    assert_eq!(e.counters().duplicate_proposals, 1);
    let other = e.handle(
        Input::Proposal(proposal("B", "m3", "alpha", false, t0())),
        at(3),
    );
    assert_eq!(
        votes_out(&other)
            .iter()
            .map(|v| v.proposal_id.as_str())
            .collect::<Vec<_>>(),
        ["B"]
    );
    assert_eq!(e.consensus().expect("monitor").tracked().len(), 2);
}

#[test]
fn an_own_unresolved_proposal_is_republished_with_its_id_after_10s_not_before() {
    let mut e = monitor("m1");
    with_monitors(&mut e, &["m2", "m3", "m4", "m5"], t0());
    set_local(&mut e, "alpha", false, t0());
    let (r, fx) = e
        .propose(ibp_core::Observation::new(key("alpha"), false), t0())
        .expect("monitor");
    let ProposeOutcome::Created(id) = r else {
        panic!("created: {r:?}")
    };
    assert_eq!(proposals_out(&fx).len(), 1);
    let (r, fx) = e
        .propose(ibp_core::Observation::new(key("alpha"), false), at(9_999))
        .expect("monitor");
    assert_eq!(r, ProposeOutcome::Revoted(id.clone()));
    assert!(proposals_out(&fx).is_empty());
    let (r, fx) = e
        .propose(ibp_core::Observation::new(key("alpha"), false), at(10_000))
        .expect("monitor");
    assert_eq!(r, ProposeOutcome::Republished(id.clone()));
    let republished: Vec<&str> = proposals_out(&fx).iter().map(|p| p.id.as_str()).collect();
    assert_eq!(republished, [id.as_str()]);
    // The 10 s run from the last broadcast, not from creation.
    let (r, _) = e
        .propose(ibp_core::Observation::new(key("alpha"), false), at(19_999))
        .expect("monitor");
    assert_eq!(r, ProposeOutcome::Revoted(id));
}

#[test]
fn a_vote_before_its_proposal_is_buffered_and_applied_when_the_proposal_arrives() {
    let mut e = monitor("m1");
    with_monitors(&mut e, &["m2", "m3"], t0());
    let p = proposal("A", "m2", "alpha", false, t0());
    assert!(
        e.handle(vote("A", "m2", true), at(1))
            .iter()
            .all(|x| !matches!(x, Effect::Publish(_)))
    );
    assert_eq!(e.consensus().expect("monitor").pending_buckets(), 1);
    // m1 has no local result, so it does not vote: the buffered vote plus m3's decide.
    e.handle(Input::Proposal(p), at(2));
    assert_eq!(e.consensus().expect("monitor").pending_buckets(), 0);
    let fx = e.handle(vote("A", "m3", true), at(3));
    assert_eq!(
        finalizes_out(&fx).len(),
        1,
        "buffered m2 + m3 = 2 of 3: passes"
    );
    assert_eq!(official(&e, "alpha"), Some(false));
}

#[test]
fn buffered_votes_are_dropped_after_two_minutes() {
    let mut e = monitor("m1");
    with_monitors(&mut e, &["m2", "m3"], t0());
    e.handle(vote("A", "m2", true), t0());
    advance(&mut e, secs(119));
    assert_eq!(
        e.consensus().expect("monitor").pending_buckets(),
        1,
        "still buffered before 2 min"
    );
    e.handle(join("m2", "IBPMonitor"), secs(119));
    e.handle(join("m3", "IBPMonitor"), secs(119));
    // Garbage collection runs every 5 s, so the vote is gone at most 5 s after its 2 min.
    advance(&mut e, secs(125));
    assert_eq!(e.consensus().expect("monitor").pending_buckets(), 0);
    assert_eq!(e.counters().expired_votes, 1);
    e.handle(
        Input::Proposal(proposal("A", "m3", "alpha", false, t0())),
        secs(122),
    );
    let fx = e.handle(vote("A", "m3", true), secs(123));
    assert!(
        finalizes_out(&fx).is_empty(),
        "the dropped vote no longer counts"
    );
}

#[test]
fn a_consensus_sender_with_an_unknown_role_counts_as_a_monitor_whatever_its_name() {
    let mut e = monitor("m1");
    assert_eq!(e.count_active(Role::Monitor, t0()), 1);
    e.handle(
        Input::Proposal(proposal("A", "dns-7", "alpha", false, t0())),
        at(1),
    );
    e.handle(vote("A", "collector", true), at(2));
    e.handle(
        finalize(&proposal("B", "x", "beta", true, t0()), "edge-node", false),
        at(3),
    );
    assert_eq!(e.count_active(Role::Monitor, at(3)), 4);
    assert_eq!(e.count_active(Role::Dns, at(3)), 0);
    // A join without a role guesses from the name instead.
    e.handle(join("eu-dns-1", ""), at(4));
    assert_eq!(e.count_active(Role::Dns, at(4)), 1);
}

#[test]
fn the_own_vote_is_applied_locally_at_once() {
    let mut e = monitor("m1");
    with_monitors(&mut e, &["m2", "m3", "m4", "m5"], t0());
    set_local(&mut e, "alpha", true, t0());
    let fx = e.handle(
        Input::Proposal(proposal("A", "m2", "alpha", false, t0())),
        at(1),
    );
    let v = votes_out(&fx);
    assert_eq!(v.len(), 1);
    assert!(!v[0].agree);
    let t = &e.consensus().expect("monitor").tracked()["A"];
    assert_eq!(
        t.votes.get("m1"),
        Some(&false),
        "recorded without waiting for an echo"
    );
}

#[test]
fn no_vote_is_published_for_an_untracked_or_decided_proposal() {
    let mut e = monitor("m1");
    with_monitors(&mut e, &["m2", "m3"], t0());
    let p = proposal("A", "m2", "alpha", false, t0());
    e.handle(finalize(&p, "m2", true), at(1));
    let fx = set_local(&mut e, "alpha", false, at(2));
    assert!(votes_out(&fx).is_empty(), "not tracked");
    let fx = e.handle(Input::Proposal(p), at(3));
    assert!(votes_out(&fx).is_empty(), "already decided");
    assert_eq!(e.counters().duplicate_proposals, 1);
}

#[test]
fn no_decision_with_fewer_than_two_active_monitors() {
    let mut e = monitor("m1");
    e.handle(join("d1", "IBPDns"), t0());
    set_local(&mut e, "alpha", false, t0());
    e.handle(
        Input::Proposal(proposal("A", "x", "alpha", false, t0())),
        at(1),
    );
    // The proposer became a monitor; make it inactive, then it is m1 alone.
    e.tick(secs(601));
    let fx = e.handle(vote("A", "d1", true), secs(601));
    assert!(finalizes_out(&fx).is_empty());
}

#[test]
fn majority_is_half_plus_one_of_active_monitors_and_at_least_two() {
    for (n, needed) in [(2usize, 2usize), (3, 2), (4, 3), (5, 3), (9, 5)] {
        let mut e = monitor("m1");
        let others: Vec<String> = (2..=n).map(|i| format!("m{i}")).collect();
        let refs: Vec<&str> = others.iter().map(String::as_str).collect();
        with_monitors(&mut e, &refs, t0());
        // m1 agrees itself, so the decision comes after `needed - 1` other votes.
        set_local(&mut e, "alpha", false, t0());
        e.handle(
            Input::Proposal(proposal("A", "m2", "alpha", false, t0())),
            at(1),
        );
        let mut decided_after = None;
        for (i, voter) in refs.iter().enumerate() {
            let fx = e.handle(vote("A", voter, true), at(2 + i as u64));
            if !finalizes_out(&fx).is_empty() {
                decided_after = Some(i + 2);
                break;
            }
        }
        assert_eq!(decided_after, Some(needed), "{n} monitors");
    }
}

#[test]
fn only_votes_of_active_monitors_count() {
    let mut e = monitor("m1");
    with_monitors(&mut e, &["m2"], t0());
    e.handle(join("d1", "IBPDns"), t0());
    with_monitors(&mut e, &["m3"], secs(500));
    e.handle(
        Input::Proposal(proposal("A", "m3", "alpha", false, secs(500))),
        secs(500),
    );
    assert!(
        finalizes_out(&e.handle(vote("A", "d1", true), secs(601))).is_empty(),
        "a DNS vote"
    );
    // m2 was last heard at 0 s: inactive at 601 s, so its vote does not count.
    let fx = e.handle(
        Input::Vote(ibp_wire::Vote {
            proposal_id: "A".into(),
            sender_node_id: String::new(),
            node_id: "m2".into(),
            agree: true,
            ..Default::default()
        }),
        secs(601),
    );
    // m2 is heard again by that very vote, so it now counts: 2 of {m1, m2, m3} agree.
    assert_eq!(finalizes_out(&fx).len(), 0, "only m2 voted: 1 of 3");
    let fx = e.handle(vote("A", "m3", true), secs(602));
    assert_eq!(finalizes_out(&fx).len(), 1);
}

#[test]
fn a_finalize_applies_locally_is_published_once_and_forgets_the_proposal() {
    let mut e = monitor("m1");
    with_monitors(&mut e, &["m2", "m3"], t0());
    set_local(&mut e, "alpha", false, t0());
    let (r, _) = e
        .propose(ibp_core::Observation::new(key("alpha"), false), t0())
        .expect("monitor");
    let id = r.id().expect("id").to_string();
    e.handle(vote("X", "m3", true), at(1));
    let fx = e.handle(vote(&id, "m2", true), at(2));
    let fins = finalizes_out(&fx);
    assert_eq!(fins.len(), 1);
    assert_eq!(fins[0].sender_node_id, "m1");
    assert!(fins[0].passed);
    assert_eq!(applied(&fx).len(), 1);
    assert_eq!(official(&e, "alpha"), Some(false));
    let c = e.consensus().expect("monitor");
    assert!(c.tracked().is_empty());
    // More votes, and other monitors' finalizes, publish nothing more.
    let fx = e.handle(vote(&id, "m3", true), at(3));
    assert!(published(&fx).is_empty());
    let p = proposal(&id, "m1", "alpha", false, t0());
    let fx = e.handle(finalize(&p, "m2", true), at(4));
    assert!(published(&fx).is_empty() && applied(&fx).is_empty());
    assert_eq!(e.counters().duplicate_finalizes, 1);
}

#[test]
fn a_received_finalize_removes_buffered_votes_and_marks_its_sender_heard() {
    let mut e = monitor("m1");
    e.handle(vote("A", "m2", true), t0());
    assert_eq!(e.consensus().expect("monitor").pending_buckets(), 1);
    let p = proposal("A", "m2", "alpha", false, t0());
    let fx = e.handle(finalize(&p, "m7", true), at(1));
    assert_eq!(e.consensus().expect("monitor").pending_buckets(), 0);
    assert_eq!(applied(&fx).len(), 1);
    assert!(
        e.membership()
            .members(at(1))
            .iter()
            .any(|(m, active)| m.node_id == "m7" && *active && m.role == "IBPMonitor")
    );
    // Without SenderNodeID (v0.2.0), the proposer is the one heard.
    let q = proposal("B", "m8", "beta", false, t0());
    e.handle(finalize(&q, "", true), at(2));
    assert!(
        e.membership()
            .members(at(2))
            .iter()
            .any(|(m, _)| m.node_id == "m8")
    );
}

#[test]
fn an_undecided_proposal_fails_after_the_third_timeout_not_before() {
    let mut e = monitor("m1");
    with_monitors(&mut e, &["m2", "m3"], t0());
    set_local(&mut e, "alpha", false, t0());
    let (r, _) = e
        .propose(ibp_core::Observation::new(key("alpha"), false), t0())
        .expect("monitor");
    let id = r.id().expect("id").to_string();
    for s in [30, 60] {
        let fx = e.tick(secs(s));
        assert!(finalizes_out(&fx).is_empty(), "no decision at {s}s");
        assert!(e.consensus().expect("monitor").tracked().contains_key(&id));
    }
    let fx = e.tick(secs(89));
    assert!(finalizes_out(&fx).is_empty());
    let fx = e.tick(secs(90));
    let fins = finalizes_out(&fx);
    assert_eq!(fins.len(), 1);
    assert!(!fins[0].passed);
    assert_eq!(
        official(&e, "alpha"),
        None,
        "a failed proposal is not applied"
    );
}

#[test]
fn with_zero_active_monitors_a_timed_out_proposal_fails_at_once() {
    let mut e = monitor("m1");
    set_local(&mut e, "alpha", false, t0());
    e.propose(ibp_core::Observation::new(key("alpha"), false), t0())
        .expect("monitor");
    // After a clean leave this node no longer counts itself: zero active monitors.
    e.leave(at(1));
    assert_eq!(e.count_active(Role::Monitor, at(1)), 0);
    let fx = e.tick(secs(30));
    let decided: Vec<_> = fx
        .iter()
        .filter_map(|f| match f {
            Effect::Decided(d) => Some(d.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(decided.len(), 1, "fails at the first timeout");
    assert!(!decided[0].passed);
    assert!(
        finalizes_out(&fx).is_empty(),
        "a node that has left publishes nothing"
    );
}

#[test]
fn stale_nodes_are_removed_with_their_votes_and_buffered_votes() {
    let cfg = CoreConfig {
        proposal_timeout: Duration::from_secs(3600),
        proposal_ttl: Duration::from_secs(7200),
        ..CoreConfig::default()
    };
    let mut e = engine("m1", Role::Monitor, cfg);
    with_monitors(&mut e, &["m2", "m3", "m4", "m5"], t0());
    e.handle(
        Input::Proposal(proposal("A", "m3", "alpha", false, t0())),
        t0(),
    );
    e.handle(vote("A", "m2", true), t0());
    e.handle(vote("B", "m2", true), t0());
    for s in (60..=840).step_by(60) {
        advance(&mut e, secs(s));
        with_monitors(&mut e, &["m3", "m4", "m5"], secs(s));
    }
    advance(&mut e, secs(899));
    assert!(
        e.consensus().expect("monitor").tracked()["A"]
            .votes
            .contains_key("m2")
    );
    let fx = advance(&mut e, secs(905));
    assert!(
        fx.iter().any(
            |x| matches!(x, Effect::NodeLeft { node_id, announced: false } if node_id == "m2")
        )
    );
    assert!(
        !e.consensus().expect("monitor").tracked()["A"]
            .votes
            .contains_key("m2")
    );
    assert_eq!(
        e.consensus().expect("monitor").pending_buckets(),
        0,
        "B's only buffered vote was m2's"
    );
    assert_eq!(e.membership().len(), 3);
}

#[test]
fn proposals_older_than_ten_minutes_by_local_time_are_dropped() {
    let cfg = CoreConfig {
        proposal_timeout: Duration::from_secs(3600),
        ..CoreConfig::default()
    };
    let mut e = engine("m1", Role::Monitor, cfg);
    with_monitors(&mut e, &["m2", "m3", "m4", "m5"], t0());
    // The proposer's clock is an hour behind: ageing must not use it.
    let skewed = ibp_core::time::after(t0(), Duration::ZERO) - chrono::TimeDelta::hours(1);
    e.handle(
        Input::Proposal(proposal("A", "m2", "alpha", false, skewed)),
        t0(),
    );
    advance(&mut e, secs(5));
    assert!(
        e.consensus().expect("monitor").tracked().contains_key("A"),
        "kept: seen 5 s ago"
    );
    advance(&mut e, secs(599));
    assert!(e.consensus().expect("monitor").tracked().contains_key("A"));
    advance(&mut e, secs(605));
    assert!(!e.consensus().expect("monitor").tracked().contains_key("A"));
    assert_eq!(e.counters().expired_proposals, 1);
}

#[test]
fn observation_proposes_only_when_it_differs_from_the_official_result() {
    let mut e = monitor("m1");
    with_monitors(&mut e, &["m2", "m3"], t0());
    let (r, fx) = e
        .observe(ibp_core::Observation::new(key("alpha"), true), t0())
        .expect("monitor");
    assert!(
        matches!(
            r,
            ibp_core::ObserveOutcome::Proposed(ProposeOutcome::Created(_))
        ),
        "no official yet: {r:?}"
    );
    let p = proposals_out(&fx)[0].clone();
    e.handle(vote(&p.id, "m2", true), at(1));
    assert_eq!(official(&e, "alpha"), Some(true));
    let (r, fx) = e
        .observe(ibp_core::Observation::new(key("alpha"), true), at(2))
        .expect("monitor");
    assert_eq!(r, ibp_core::ObserveOutcome::Unchanged);
    assert!(published(&fx).is_empty());
}

#[test]
fn enabling_twice_is_an_error() {
    let mut e = monitor("m1");
    assert!(e.enable(at(1)).is_err());
}

#[test]
fn startup_joins_heartbeat_and_throttle_follow_the_reference() {
    let me = ibp_core::SelfInfo {
        node_id: "m1".into(),
        ..Default::default()
    };
    let mut e = ibp_core::Engine::new(me, Role::Monitor, CoreConfig::default(), ids("p"));
    let mut joins = Vec::new();
    let mut now = t0();
    let mut fx = e.enable(now).expect("enable");
    for _ in 0..400 {
        joins.extend(
            published(&fx)
                .iter()
                .filter(|o| matches!(o, Outbound::Join(_)))
                .map(|_| now),
        );
        let Some(next) = e.next_deadline() else { break };
        if next > secs(200) {
            break;
        }
        now = next;
        fx = e.tick(now);
    }
    let offsets: Vec<i64> = joins
        .iter()
        .map(|t| (*t - t0()).num_milliseconds())
        .collect();
    // Three forced joins 500 ms apart; the first heartbeat (2 s) is throttled (within 5 s);
    // then heartbeats every 90 s.
    assert_eq!(offsets, [0, 500, 1000, 92_000, 182_000]);
}

#[test]
fn a_join_from_a_new_node_is_answered_at_once_with_a_forced_join() {
    let mut e = monitor("m1");
    e.tick(at(1000));
    let fx = e.handle(join("m2", "IBPMonitor"), at(1100));
    assert_eq!(
        published(&fx).len(),
        1,
        "new node: answered despite the throttle"
    );
    let fx = e.handle(join("m2", "IBPMonitor"), at(1200));
    assert!(published(&fx).is_empty(), "known node, nothing new");
    let fx = e.handle(
        Input::Cluster(ibp_wire::ClusterMessage {
            kind: "join".into(),
            sender: ibp_wire::NodeInfo {
                node_id: "m2".into(),
                node_role: "IBPMonitor".into(),
                listen_port: "6101".into(),
                ..Default::default()
            },
            members: None,
        }),
        at(1300),
    );
    assert_eq!(published(&fx).len(), 1, "the join filled in a missing port");
}

#[test]
fn an_observation_whose_vote_decides_an_existing_proposal_says_so() {
    let mut e = monitor("m1");
    with_monitors(&mut e, &["m2", "m3"], t0());
    set_local(&mut e, "alpha", true, t0());
    e.handle(
        Input::Proposal(proposal("A", "m2", "alpha", false, t0())),
        at(1),
    );
    e.handle(vote("A", "m2", true), at(2));
    assert_eq!(official(&e, "alpha"), None, "m1 voted against: undecided");
    let (r, _) = e
        .observe(ibp_core::Observation::new(key("alpha"), false), at(3))
        .expect("monitor");
    assert_eq!(r, ibp_core::ObserveOutcome::Decided("A".into()));
    assert_eq!(official(&e, "alpha"), Some(false));
    let (r, _) = e
        .observe(ibp_core::Observation::new(key("alpha"), false), at(4))
        .expect("monitor");
    assert_eq!(
        r,
        ibp_core::ObserveOutcome::Unchanged,
        "now merely official"
    );
}
