//! Catching up from the cluster: a monitor takes another's official result only when a
//! quorum of active monitors attests the same status, and never over a newer one.

mod common;

use std::collections::BTreeMap;

use common::*;
use ibp_wire::FinalizeMessage;

fn report(p: &ibp_wire::Proposal, by: &str) -> FinalizeMessage {
    FinalizeMessage {
        proposal: p.clone(),
        sender_node_id: by.into(),
        passed: true,
        decided_at: p.timestamp,
    }
}

fn replies(entries: &[(&str, &[&ibp_wire::Proposal])]) -> BTreeMap<String, Vec<FinalizeMessage>> {
    entries
        .iter()
        .map(|(by, ps)| (by.to_string(), ps.iter().map(|p| report(p, by)).collect()))
        .collect()
}

#[test]
fn a_restarted_monitor_takes_what_a_quorum_attests_and_nothing_else() {
    let mut e = monitor("m1");
    with_monitors(&mut e, &["m2", "m3", "m4", "m5"], t0());
    // Restored from its file: alpha online, decided before the restart.
    e.consensus_mut().expect("monitor").restore_official(
        proposal("P0", "m2", "alpha", true, t0()),
        t0(),
        t0(),
    );
    // Decided live in this process: gamma online at +20 s.
    let p3 = proposal("P3", "m2", "gamma", true, at(20_000));
    e.handle(finalize(&p3, "m2", true), at(20_000));
    assert_eq!(official(&e, "gamma"), Some(true));

    let p1 = proposal("P1", "m3", "alpha", false, at(10_000)); // newer than the restored P0
    let p2 = proposal("P2", "m3", "beta", false, at(10_000));
    let p4 = proposal("P4", "m3", "gamma", false, at(5_000)); // older than the live P3
    let r = replies(&[
        ("m2", &[&p1, &p2, &p4]),
        ("m3", &[&p1, &p2, &p4]),
        ("m4", &[&p1, &p4]),
        ("stranger", &[&p1, &p2]), // not an active monitor: does not count
    ]);
    let (outcome, fx) = e.apply_synced(&r, at(30_000)).expect("monitor");
    assert_eq!(
        official(&e, "alpha"),
        Some(false),
        "3 of 5 attest P1: taken"
    );
    assert_eq!(
        official(&e, "beta"),
        None,
        "2 attestations are not a quorum"
    );
    assert_eq!(
        official(&e, "gamma"),
        Some(true),
        "the live, newer P3 stands"
    );
    assert_eq!(outcome.applied, 1, "{outcome:?}");
    assert_eq!(
        outcome.skipped, 1,
        "gamma: attested, but older than the live result"
    );
    assert_eq!(e.counters().synced_results, 1);
    assert!(
        fx.iter()
            .any(|f| matches!(f, ibp_core::Effect::ApplyOfficial(c) if c.proposal.id == "P1")),
        "the taken result is persisted like any official change"
    );
    // The same report again changes nothing.
    let (again, _) = e.apply_synced(&r, at(31_000)).expect("monitor");
    assert_eq!(again.applied, 0);
}

#[test]
fn a_snapshot_reports_every_official_result_as_a_passed_finalize_from_this_node() {
    let mut e = monitor("m1");
    with_monitors(&mut e, &["m2", "m3"], t0());
    let p = proposal("P", "m2", "alpha", false, t0());
    e.handle(finalize(&p, "m2", true), at(1));
    let snap = e.sync_snapshot();
    assert_eq!(snap.len(), 1);
    assert_eq!(snap[0].sender_node_id, "m1");
    assert!(snap[0].passed);
    assert_eq!(snap[0].proposal.id, "P");
}

#[test]
fn pages_cover_the_snapshot_once_in_check_order_from_any_cursor() {
    let mut e = monitor("m1");
    with_monitors(&mut e, &["m2", "m3"], t0());
    let members = ["alpha", "beta", "delta", "epsilon", "gamma"];
    for (i, m) in members.iter().enumerate() {
        let p = proposal(&format!("P{i}"), "m2", m, false, t0());
        e.handle(finalize(&p, "m2", true), at(1 + i as u64));
    }
    let whole: Vec<String> = e
        .sync_snapshot()
        .into_iter()
        .map(|f| f.proposal.id)
        .collect();
    assert_eq!(whole.len(), 5);
    for limit in [1, 2, 3, 5, 9] {
        let mut pulled = Vec::new();
        let mut after = None;
        let mut pages = 0;
        loop {
            let (page, more) = e.sync_page(after.as_ref(), limit);
            pages += 1;
            assert!(page.len() <= limit, "limit {limit}: {} results", page.len());
            after = page.last().map(|(k, _)| k.clone());
            pulled.extend(page.into_iter().map(|(_, f)| f.proposal.id));
            if !more {
                break;
            }
            assert!(
                after.is_some(),
                "a page with more to come names where it ended"
            );
        }
        assert_eq!(pulled, whole, "limit {limit}: every result once, in order");
        assert_eq!(pages, whole.len().div_ceil(limit), "limit {limit}");
    }
    // A cursor past the end: an empty last page.
    let (last_key, _) = e.sync_page(None, 5).0.pop().expect("five results");
    assert_eq!(e.sync_page(Some(&last_key), 5), (Vec::new(), false));
}

#[test]
fn monitors_holding_different_proposals_of_the_same_status_still_make_a_quorum() {
    let mut e = monitor("m1");
    with_monitors(&mut e, &["m2", "m3", "m4", "m5"], t0());
    // Two monitors proposed the same change at once; both passed, and the monitors kept
    // whichever they applied last: split two and two.
    let pa = proposal("PA", "m2", "alpha", false, at(10_000));
    let pb = proposal("PB", "m4", "alpha", false, at(10_005));
    let r = replies(&[
        ("m2", &[&pa]),
        ("m3", &[&pb]),
        ("m4", &[&pb]),
        ("m5", &[&pa]),
    ]);
    let (outcome, _) = e.apply_synced(&r, at(30_000)).expect("monitor");
    assert_eq!(official(&e, "alpha"), Some(false), "4 of 5 hold it offline");
    assert_eq!(outcome.applied, 1);
    assert_eq!(
        official_id(&e, "alpha").as_deref(),
        Some("PA"),
        "on a tie, the oldest proposal"
    );
    // Asked again, nothing changes: the decision taken stays.
    let (again, _) = e.apply_synced(&r, at(31_000)).expect("monitor");
    assert_eq!((again.applied, again.skipped), (0, 1));
}

#[test]
fn the_proposal_most_repliers_hold_is_taken_and_a_split_status_is_not() {
    let mut e = monitor("m1");
    with_monitors(&mut e, &["m2", "m3", "m4", "m5"], t0());
    let pa = proposal("PA", "m2", "alpha", false, at(10_000));
    // One replier's version, dated far ahead: outnumbered, it is not what is taken.
    let fake = proposal("FAKE", "m5", "alpha", false, at(9_000_000));
    let r = replies(&[("m2", &[&pa]), ("m3", &[&pa]), ("m5", &[&fake])]);
    e.apply_synced(&r, at(30_000)).expect("monitor");
    assert_eq!(official_id(&e, "alpha").as_deref(), Some("PA"));
    // Two say beta is offline, two that it is online: no status has a quorum.
    let down = proposal("PD", "m2", "beta", false, at(10_000));
    let up = proposal("PU", "m4", "beta", true, at(10_000));
    let r = replies(&[
        ("m2", &[&down]),
        ("m3", &[&down]),
        ("m4", &[&up]),
        ("m5", &[&up]),
    ]);
    let (outcome, _) = e.apply_synced(&r, at(31_000)).expect("monitor");
    assert_eq!(official(&e, "beta"), None);
    assert_eq!(outcome.applied, 0);
}
