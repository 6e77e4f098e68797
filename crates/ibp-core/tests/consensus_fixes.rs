//! Where this implementation is better than the reference, with the wire unchanged.

mod common;

use common::*;
use ibp_core::{CoreConfig, Effect, Input};
use ibp_wire::{ClusterMessage, NodeInfo, Role};

fn leave(id: &str) -> Input {
    Input::Leave(ClusterMessage {
        kind: ibp_wire::ext::LEAVE_TYPE.into(),
        sender: NodeInfo {
            node_id: id.into(),
            ..NodeInfo::default()
        },
        members: None,
    })
}

#[test]
fn a_late_duplicate_finalize_of_an_older_decision_never_overwrites_a_newer_result() {
    let mut e = monitor("m1");
    with_monitors(&mut e, &["m2", "m3"], t0());
    let old = proposal("OLD", "m2", "alpha", false, t0());
    let new = proposal("NEW", "m3", "alpha", true, secs(60));
    e.handle(Input::Proposal(old.clone()), at(1));
    e.handle(finalize(&old, "m2", true), at(2));
    assert_eq!(official(&e, "alpha"), Some(false));
    e.handle(Input::Proposal(new.clone()), secs(60));
    let fx = e.handle(finalize(&new, "m3", true), secs(61));
    assert_eq!(applied(&fx).len(), 1);
    assert_eq!(official(&e, "alpha"), Some(true));
    // m3's finalize of the old decision arrives late: Go would flip back to offline.
    let fx = e.handle(finalize(&old, "m3", true), secs(62));
    assert!(applied(&fx).is_empty());
    assert_eq!(official(&e, "alpha"), Some(true));
    assert_eq!(e.counters().duplicate_finalizes, 1);
}

#[test]
fn proposer_clocks_never_order_decisions() {
    let mut e = monitor("m1");
    with_monitors(&mut e, &["m2", "m3"], t0());
    // A proposer whose clock runs a year ahead (or lies) gets a decision through.
    let far = ibp_core::time::after(t0(), std::time::Duration::from_secs(365 * 86_400));
    let future = proposal("FUTURE", "m2", "alpha", false, far);
    e.handle(finalize(&future, "m2", true), secs(1));
    assert_eq!(official(&e, "alpha"), Some(false));
    // A later, honest decision still applies, tracked or not.
    let honest = proposal("HONEST", "m3", "alpha", true, secs(60));
    e.handle(finalize(&honest, "m3", true), secs(61));
    assert_eq!(official(&e, "alpha"), Some(true));
    let tracked = proposal("TRACKED", "m2", "alpha", false, secs(120));
    e.handle(Input::Proposal(tracked.clone()), secs(120));
    e.handle(finalize(&tracked, "m2", true), secs(121));
    assert_eq!(official(&e, "alpha"), Some(false));
    assert_eq!(e.counters().stale_decisions, 0);
}

#[test]
fn an_older_tracked_proposal_decided_late_does_not_overwrite_a_newer_one() {
    let mut e = monitor("m1");
    with_monitors(&mut e, &["m2", "m3"], t0());
    let old = proposal("OLD", "m2", "alpha", false, t0());
    let new = proposal("NEW", "m3", "alpha", true, secs(30));
    e.handle(Input::Proposal(old.clone()), secs(1));
    e.handle(Input::Proposal(new.clone()), secs(30));
    e.handle(finalize(&new, "m3", true), secs(31));
    let fx = e.handle(finalize(&old, "m2", true), secs(32));
    assert!(
        applied(&fx).is_empty(),
        "first seen before the official one: stale"
    );
    assert_eq!(e.counters().stale_decisions, 1);
    assert_eq!(official(&e, "alpha"), Some(true));
}

#[test]
fn a_changed_observation_votes_once_per_proposal() {
    let mut e = monitor("m1");
    with_monitors(&mut e, &["m2", "m3", "m4", "m5"], t0());
    set_local(&mut e, "alpha", true, t0());
    e.handle(
        Input::Proposal(proposal("A", "m2", "alpha", false, t0())),
        at(1),
    );
    let (_, fx) = e
        .observe(ibp_core::Observation::new(key("alpha"), false), at(2))
        .expect("monitor");
    let v: Vec<_> = votes_out(&fx)
        .into_iter()
        .filter(|v| v.proposal_id == "A")
        .collect();
    assert_eq!(
        v.len(),
        1,
        "re-voted once, not once by the observation and again by the proposal"
    );
    assert!(v[0].agree);
}

#[test]
fn a_join_cannot_rewrite_a_known_nodes_role() {
    let mut e = monitor("m1");
    with_monitors(&mut e, &["m2"], t0());
    e.handle(join("m2", "IBPDns"), at(1));
    assert_eq!(e.count_active(Role::Monitor, at(1)), 2, "still a monitor");
    assert_eq!(e.count_active(Role::Dns, at(1)), 0);
}

#[test]
fn votes_of_nodes_refused_by_the_node_cap_are_not_stored() {
    let cfg = CoreConfig {
        max_nodes: 3,
        ..CoreConfig::default()
    };
    let mut e = engine("m1", Role::Monitor, cfg);
    with_monitors(&mut e, &["m2", "m3", "m4"], t0());
    e.handle(
        Input::Proposal(proposal("A", "m2", "alpha", false, t0())),
        at(1),
    );
    for i in 0..100 {
        e.handle(vote("A", &format!("forged-{i}"), true), at(2));
    }
    let t = &e.consensus().expect("monitor").tracked()["A"];
    assert!(t.votes.len() <= 3, "{} votes stored", t.votes.len());
    assert!(e.counters().refused_pending_votes >= 100);
}

#[test]
fn a_pass_after_a_fail_of_the_same_proposal_still_applies() {
    let mut e = monitor("m1");
    let p = proposal("A", "m2", "alpha", false, t0());
    e.handle(finalize(&p, "m2", false), at(1));
    assert_eq!(official(&e, "alpha"), None);
    e.handle(finalize(&p, "m3", true), at(2));
    assert_eq!(official(&e, "alpha"), Some(false));
    let fx = e.handle(finalize(&p, "m4", false), at(3));
    assert!(applied(&fx).is_empty());
    assert_eq!(official(&e, "alpha"), Some(false));
}

#[test]
fn with_a_quorum_floor_a_minority_never_decides_even_after_it_stops_hearing_the_majority() {
    for floor in [None, Some(3)] {
        let cfg = CoreConfig {
            min_quorum: floor,
            ..CoreConfig::default()
        };
        let mut e = engine("m1", Role::Monitor, cfg);
        with_monitors(&mut e, &["m2", "m3", "m4", "m5"], t0());
        // Partition: only m2 is heard from now on; m3..m5 go inactive after 10 minutes.
        for s in (60..=660).step_by(60) {
            advance(&mut e, secs(s));
            with_monitors(&mut e, &["m2"], secs(s));
        }
        assert_eq!(e.count_active(Role::Monitor, secs(660)), 2);
        set_local(&mut e, "alpha", false, secs(660));
        e.handle(
            Input::Proposal(proposal("A", "m2", "alpha", false, secs(660))),
            secs(660),
        );
        let fx = e.handle(vote("A", "m2", true), secs(661));
        match floor {
            None => assert_eq!(
                finalizes_out(&fx).len(),
                1,
                "reference behaviour: 2 of 2 decide (split brain)"
            ),
            Some(_) => assert!(finalizes_out(&fx).is_empty(), "2 votes < quorum floor 3"),
        }
        // The minority's own finalize (m2 decided alone on its side) must not get through
        // either: with the floor, m1 needs three agreeing votes it saw itself.
        let b = proposal("B", "m2", "beta", false, secs(662));
        e.handle(vote("B", "m2", true), secs(662));
        e.handle(finalize(&b, "m2", true), secs(662));
        advance(&mut e, secs(670));
        match floor {
            None => assert_eq!(official(&e, "beta"), Some(false), "reference: applied"),
            Some(_) => assert_eq!(official(&e, "beta"), None, "one vote < floor 3: refused"),
        }
    }
}

/// Monitor m1 of five that applies a finalize only on the votes behind it, and sees
/// `alpha` offline.
fn backed_monitor() -> ibp_core::Engine {
    let cfg = CoreConfig {
        verify_finalizes: true,
        ..CoreConfig::default()
    };
    let mut e = engine("m1", Role::Monitor, cfg);
    with_monitors(&mut e, &["m2", "m3", "m4", "m5"], t0());
    set_local(&mut e, "alpha", false, t0());
    e
}

/// With finalizes backed by votes (trust enforced, or a floor), a finalize that arrives
/// before the votes behind it is held; the vote that backs it applies that finalize, as a
/// Go monitor applies one, and this node publishes no second finalize of the decision.
#[test]
fn a_held_finalize_once_backed_is_applied_as_received_without_a_finalize_of_our_own() {
    let mut e = backed_monitor();
    let p = proposal("A", "m2", "alpha", false, t0());
    // The proposal and this node's own vote; then m2's finalize, ahead of the votes.
    let fx = e.handle(Input::Proposal(p.clone()), at(1));
    assert_eq!(votes_out(&fx).len(), 1);
    let fx = e.handle(finalize(&p, "m2", true), at(2));
    assert!(applied(&fx).is_empty(), "held: one agreeing vote of three");
    let fx = e.handle(vote("A", "m2", true), at(3));
    assert!(applied(&fx).is_empty(), "held: two of three");
    let fx = e.handle(vote("A", "m3", true), at(4));
    assert_eq!(applied(&fx).len(), 1, "backed now: applied");
    assert!(
        finalizes_out(&fx).is_empty(),
        "the cluster has this decision's finalize already"
    );
    assert!(
        fx.iter().any(
            |x| matches!(x, Effect::Decided(d) if !d.by_self && d.finalizer == "m2"
            && d.passed && d.decided_at == ibp_wire::WireTime::from_utc(at(4)))
        ),
        "applied as m2's, dated when this node held the votes (not by m2's clock)"
    );
    assert_eq!(official(&e, "alpha"), Some(false));
    // Without a finalize received first, the same votes make this node decide and
    // publish its own.
    set_local(&mut e, "beta", false, at(10));
    let q = proposal("B", "m2", "beta", false, at(10));
    e.handle(Input::Proposal(q), at(11));
    e.handle(vote("B", "m2", true), at(12));
    let fx = e.handle(vote("B", "m3", true), at(13));
    assert_eq!(finalizes_out(&fx).len(), 1);
    assert_eq!(official(&e, "beta"), Some(false));
}

/// This node's own vote can be the one that backs a held finalize (the finalize and the
/// others' votes came before the proposal): the finalize is applied as received then too.
#[test]
fn a_held_finalize_backed_by_this_nodes_own_vote_is_applied_as_received() {
    let mut e = backed_monitor();
    let p = proposal("A", "m2", "alpha", false, t0());
    e.handle(finalize(&p, "m2", true), at(1));
    e.handle(vote("A", "m2", true), at(2));
    e.handle(vote("A", "m3", true), at(3));
    assert_eq!(
        official(&e, "alpha"),
        None,
        "two of three, and no proposal yet"
    );
    let fx = e.handle(Input::Proposal(p), at(4));
    assert_eq!(votes_out(&fx).len(), 1, "its own vote, the third");
    assert_eq!(applied(&fx).len(), 1);
    assert!(finalizes_out(&fx).is_empty());
    assert_eq!(official(&e, "alpha"), Some(false));
}

/// Votes name only a proposal ID. A finalize under a tracked proposal's ID but about
/// another check or status is never applied on those votes, whether it comes before the
/// proposal (held) or after it; the tracked proposal is decided as this node counts it.
#[test]
fn a_finalize_that_swaps_the_body_of_a_tracked_proposal_is_refused_and_counted() {
    for swapped_first in [true, false] {
        let mut e = backed_monitor();
        let real = proposal("A", "m2", "alpha", false, t0());
        let swapped = proposal("A", "m2", "beta", false, t0());
        if swapped_first {
            e.handle(finalize(&swapped, "m2", true), at(1));
            e.handle(Input::Proposal(real.clone()), at(2));
        } else {
            e.handle(Input::Proposal(real.clone()), at(1));
            e.handle(finalize(&swapped, "m2", true), at(2));
        }
        assert_eq!(
            e.counters().finalizes_mismatched,
            1,
            "swapped first: {swapped_first}"
        );
        e.handle(vote("A", "m2", true), at(3));
        let fx = e.handle(vote("A", "m3", true), at(4));
        assert_eq!(official(&e, "beta"), None, "swapped first: {swapped_first}");
        assert_eq!(official(&e, "alpha"), Some(false));
        assert_eq!(finalizes_out(&fx).len(), 1, "decided by this node itself");
    }
}

#[test]
fn a_clean_leave_stops_the_node_counting_at_once_and_a_later_join_brings_it_back() {
    let mut e = monitor("m1");
    with_monitors(&mut e, &["m2", "m3"], t0());
    assert_eq!(e.count_active(Role::Monitor, at(1)), 3);
    let fx = e.handle(leave("m3"), at(2));
    assert!(
        fx.iter()
            .any(|x| matches!(x, Effect::NodeLeft { node_id, announced: true } if node_id == "m3"))
    );
    assert_eq!(e.count_active(Role::Monitor, at(3)), 2);
    let fx = e.handle(join("m3", "IBPMonitor"), at(4));
    assert_eq!(
        published(&fx).len(),
        1,
        "a returning node gets a forced join"
    );
    assert_eq!(e.count_active(Role::Monitor, at(4)), 3);
}

#[test]
fn a_leave_lets_a_waiting_proposal_decide_without_waiting_for_a_timeout() {
    let mut e = monitor("m1");
    with_monitors(&mut e, &["m2", "m3", "m4"], t0());
    set_local(&mut e, "alpha", false, t0());
    e.handle(
        Input::Proposal(proposal("A", "m2", "alpha", false, t0())),
        at(1),
    );
    assert!(
        finalizes_out(&e.handle(vote("A", "m2", true), at(2))).is_empty(),
        "2 of 4 < 3"
    );
    let fx = e.handle(leave("m4"), at(3));
    assert_eq!(finalizes_out(&fx).len(), 1, "2 of 3 = majority");
}

#[test]
fn the_leave_message_goes_on_its_own_subject_so_go_nodes_never_see_it() {
    let mut e = monitor("m1");
    let fx = e.leave(at(1));
    let out = published(&fx);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].subject(), ibp_wire::ext::LEAVE_SUBJECT);
    assert_ne!(out[0].subject(), ibp_wire::subjects::CLUSTER);
    assert!(e.leave(at(2)).is_empty(), "only once");
    // After leaving, no more heartbeats.
    assert!(published(&advance(&mut e, secs(400))).is_empty());
}

#[test]
fn caps_refuse_and_count_instead_of_growing() {
    let cfg = CoreConfig {
        max_proposals: 2,
        max_pending_buckets: 1,
        max_nodes: 3,
        ..CoreConfig::default()
    };
    let mut e = engine("m1", Role::Monitor, cfg);
    for (i, m) in ["a", "b", "c"].iter().enumerate() {
        e.handle(
            Input::Proposal(proposal(&format!("P{i}"), "m2", m, false, t0())),
            at(i as u64),
        );
    }
    assert_eq!(e.consensus().expect("monitor").tracked().len(), 2);
    assert_eq!(e.counters().refused_proposals, 1);
    e.handle(vote("X", "m2", true), at(10));
    e.handle(vote("Y", "m2", true), at(11));
    assert_eq!(e.consensus().expect("monitor").pending_buckets(), 1);
    assert_eq!(e.counters().refused_pending_votes, 1);
    for id in ["n1", "n2", "n3", "n4"] {
        e.handle(join(id, "IBPDns"), at(20));
    }
    assert_eq!(e.membership().len(), 3);
    assert!(e.counters().refused_nodes >= 1);
}

#[test]
fn a_changed_observation_revotes_on_tracked_proposals() {
    let mut e = monitor("m1");
    with_monitors(&mut e, &["m2", "m3", "m4", "m5"], t0());
    set_local(&mut e, "alpha", true, t0());
    e.handle(
        Input::Proposal(proposal("A", "m2", "alpha", false, t0())),
        at(1),
    );
    assert!(!e.consensus().expect("monitor").tracked()["A"].votes["m1"]);
    let fx = set_local(&mut e, "alpha", false, at(2));
    let v = votes_out(&fx);
    assert_eq!(v.len(), 1);
    assert!(v[0].agree);
    assert!(e.consensus().expect("monitor").tracked()["A"].votes["m1"]);
    assert!(
        votes_out(&set_local(&mut e, "alpha", false, at(3))).is_empty(),
        "same status: no new vote"
    );
}

#[test]
fn forged_votes_and_joins_with_our_id_are_counted_and_dropped() {
    let mut e = monitor("m1");
    with_monitors(&mut e, &["m2", "m3"], t0());
    e.handle(
        Input::Proposal(proposal("A", "m2", "alpha", false, t0())),
        at(1),
    );
    let forged = Input::Vote(ibp_wire::Vote {
        proposal_id: "A".into(),
        sender_node_id: "m2".into(),
        node_id: "m3".into(),
        agree: true,
        ..Default::default()
    });
    e.handle(forged, at(2));
    assert!(
        !e.consensus().expect("monitor").tracked()["A"]
            .votes
            .contains_key("m3")
    );
    e.handle(join("m1", "IBPMonitor"), at(3));
    assert_eq!(e.counters().node_id_conflicts, 1);
    assert_eq!(e.counters().invalid_messages, 1);
}

mod collator {
    use super::*;

    fn collator() -> ibp_core::Engine {
        engine("c1", Role::Collator, CoreConfig::default())
    }

    fn decided(fx: &[Effect]) -> Vec<&ibp_core::Decision> {
        fx.iter()
            .filter_map(|x| {
                if let Effect::Decided(d) = x {
                    Some(d)
                } else {
                    None
                }
            })
            .collect()
    }

    #[test]
    fn a_vote_before_its_proposal_creates_a_stub_that_the_proposal_fills() {
        let mut e = collator();
        e.handle(vote("A", "m2", false), t0());
        e.handle(
            Input::Proposal(proposal("A", "m1", "alpha", false, t0())),
            at(1),
        );
        e.handle(vote("A", "m1", true), at(2));
        let fx = e.handle(
            finalize(&proposal("A", "m1", "alpha", false, t0()), "m1", true),
            at(3),
        );
        assert!(decided(&fx).is_empty(), "reported after the vote grace");
        // m3's vote is handled just after its finalize: it still counts.
        e.handle(vote("A", "m3", false), at(4));
        let fx = advance(&mut e, at(600));
        let d = decided(&fx);
        assert_eq!(d.len(), 1);
        let votes = d[0].votes.clone().expect("cached");
        assert_eq!(votes.get("m1"), Some(&true));
        assert_eq!(votes.get("m2"), Some(&false));
        assert_eq!(votes.get("m3"), Some(&false));
    }

    #[test]
    fn duplicate_finalizes_report_the_decision_once_and_keep_its_votes() {
        let mut e = collator();
        let p = proposal("A", "m1", "alpha", false, t0());
        e.handle(Input::Proposal(p.clone()), t0());
        e.handle(vote("A", "m1", true), at(1));
        e.handle(vote("A", "m2", true), at(2));
        e.handle(finalize(&p, "m1", true), at(3));
        for f in ["m2", "m3"] {
            assert!(decided(&e.handle(finalize(&p, f, true), at(4))).is_empty());
        }
        let first = advance(&mut e, at(1000));
        assert_eq!(decided(&first).len(), 1);
        assert_eq!(decided(&first)[0].votes.as_ref().map(|v| v.len()), Some(2));
        assert!(
            decided(&advance(&mut e, secs(5))).is_empty(),
            "reported once"
        );
        assert_eq!(e.counters().duplicate_finalizes, 2);
        assert!(e.handle(vote("A", "m3", true), secs(6)).is_empty());
        assert_eq!(
            e.vote_cache().expect("collator").len(),
            0,
            "a late vote creates no stub"
        );
    }

    #[test]
    fn a_finalize_for_an_uncached_proposal_has_no_votes() {
        let mut e = collator();
        e.handle(
            finalize(&proposal("Z", "m1", "alpha", false, t0()), "m1", true),
            t0(),
        );
        let fx = advance(&mut e, secs(1));
        assert_eq!(decided(&fx)[0].votes, None);
    }

    #[test]
    fn entries_expire_ten_minutes_after_local_receipt_whatever_the_proposer_clock() {
        let mut e = collator();
        let skewed = t0() - chrono::TimeDelta::hours(2);
        e.handle(
            Input::Proposal(proposal("A", "m1", "alpha", false, skewed)),
            t0(),
        );
        advance(&mut e, secs(590));
        assert_eq!(e.vote_cache().expect("collator").len(), 1);
        advance(&mut e, secs(630));
        assert_eq!(e.vote_cache().expect("collator").len(), 0);
    }

    #[test]
    fn the_collator_never_votes_or_proposes() {
        let mut e = collator();
        let fx = e.handle(
            Input::Proposal(proposal("A", "m1", "alpha", false, t0())),
            t0(),
        );
        assert!(published(&fx).is_empty());
        assert!(
            e.observe(ibp_core::Observation::new(key("alpha"), true), t0())
                .is_err()
        );
    }
}

#[test]
fn a_message_sent_before_a_leave_but_delivered_after_it_does_not_bring_the_node_back() {
    let mut e = monitor("m1");
    let join_at = |id: &str, sent: chrono::DateTime<chrono::Utc>| {
        Input::Cluster(ClusterMessage {
            kind: "join".into(),
            sender: NodeInfo {
                node_id: id.into(),
                node_role: "IBPMonitor".into(),
                last_heard: ibp_wire::WireTime::from_utc(sent),
                ..NodeInfo::default()
            },
            members: None,
        })
    };
    e.handle(join_at("m2", secs(1)), secs(1));
    let mut l = leave("m2");
    if let Input::Leave(m) = &mut l {
        m.sender.last_heard = ibp_wire::WireTime::from_utc(secs(10));
    }
    e.handle(l, secs(10));
    assert_eq!(e.count_active(Role::Monitor, secs(10)), 1);
    // A heartbeat sent at 9 s (before the leave) arrives late, on another subscription.
    let fx = e.handle(join_at("m2", secs(9)), secs(11));
    assert!(published(&fx).is_empty());
    assert_eq!(e.count_active(Role::Monitor, secs(11)), 1, "still gone");
    // A join sent after the leave brings it back.
    e.handle(join_at("m2", secs(20)), secs(20));
    assert_eq!(e.count_active(Role::Monitor, secs(20)), 2);
}

mod dns {
    use super::*;

    fn decided(fx: &[Effect]) -> Vec<bool> {
        fx.iter()
            .filter_map(|e| match e {
                Effect::Decided(d) => Some(d.passed),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_dns_node_applies_a_decision_the_moment_it_arrives() {
        let mut e = engine("dns-1", Role::Dns, CoreConfig::default());
        with_monitors(&mut e, &["m1", "m2", "m3"], t0());
        let p = proposal("A", "m1", "alpha", false, t0());
        // No vote grace: the answers follow the finalize at once, and never vote.
        let fx = e.handle(finalize(&p, "m1", true), at(1));
        assert_eq!(decided(&fx), [true]);
        assert!(votes_out(&fx).is_empty());
    }

    #[test]
    fn with_verified_finalizes_a_dns_node_waits_for_the_votes_that_back_a_decision() {
        let cfg = CoreConfig {
            verify_finalizes: true,
            ..CoreConfig::default()
        };
        let mut e = engine("dns-1", Role::Dns, cfg);
        with_monitors(&mut e, &["m1", "m2", "m3"], t0());
        let p = proposal("A", "m1", "alpha", false, t0());
        // The finalize arrives before its votes: held, then released by the second vote.
        assert!(decided(&e.handle(finalize(&p, "m1", true), at(1))).is_empty());
        assert!(decided(&e.handle(vote("A", "m1", true), at(2))).is_empty());
        assert_eq!(decided(&e.handle(vote("A", "m2", true), at(3))), [true]);
        // A lone finalize nobody voted for is refused when its grace is over.
        let q = proposal("B", "m1", "beta", false, t0());
        assert!(decided(&e.handle(finalize(&q, "m1", true), at(4))).is_empty());
        let fx = advance(&mut e, secs(30));
        assert!(decided(&fx).is_empty());
        assert!(
            fx.iter()
                .any(|x| matches!(x, Effect::FinalizeRefused { .. }))
        );
    }
}
