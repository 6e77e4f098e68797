//! Catching up from the cluster: a monitor takes another's official result only when a
//! quorum of active monitors attests the same decision, and never over a newer one.

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
