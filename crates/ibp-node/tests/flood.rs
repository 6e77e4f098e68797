//! A flood in enforce mode against a real nats-server: 100,000 forged votes and finalizes
//! (unsigned, badly signed with a trusted key, validly signed by an untrusted key, replayed
//! copies of real signed messages), 10,000 fake monitor joins, malformed payloads on every
//! subject and maximum-size messages. Official results and the active monitor count do
//! not move, memory stays within the caps, every dropped message is counted, and a real
//! outage posted during the flood still finalizes on every monitor.

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use bytes::Bytes;
use chrono::Utc;
use common::signed::*;
use ibp_node::app::App;
use ibp_testkit::{NatsServer, ServerOptions};
use ibp_trust::{HDR_KEY, HDR_SIG, HDR_SIG_TIME, Identity};
use ibp_wire::{Role, subjects};

const FORGED: usize = 100_000;
const JOINS: usize = 10_000;
const MALFORMED_PER_SUBJECT: usize = 500;
const HUGE_PER_SUBJECT: usize = 3;
const MAX_PAYLOAD: usize = 1024 * 1024;

fn rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_forgeries_in_enforce_mode_moves_nothing_and_a_real_outage_still_decides() {
    let seed: u64 = std::env::var("IBP_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| Utc::now().timestamp_nanos_opt().unwrap_or(1) as u64);
    println!("seed {seed} (replay with IBP_TEST_SEED={seed})");
    let nats = NatsServer::start_with(ServerOptions {
        max_payload: Some(MAX_PAYLOAD as u64),
        // The nodes work through a backlog; the server must not cut them off meanwhile.
        max_pending: Some(1 << 30),
        ..Default::default()
    })
    .expect("nats-server");
    let c = cluster_with(
        nats,
        &[
            ("monitor-1", "monitor", "enforce"),
            ("monitor-2", "monitor", "enforce"),
            ("monitor-3", "monitor", "enforce"),
        ],
        |_| {},
    )
    .await;
    // Real signed traffic to replay: a baseline decision.
    let captured = recorded_baseline(&c, "Alpha").await;
    let before: Vec<_> = c.apps.iter().map(|a| a.node.official()).collect();
    let moot_before: Vec<f64> = c
        .apps
        .iter()
        .map(|a| metric(a, "ibp_trust_moot_total", &[]))
        .collect();
    let rss_before = rss_mb();

    let client = stranger(&c).await;
    let alien = Identity::generate();
    let trusted_key = c.key("monitor-1").public_key().to_string();
    let mut rng = seed;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut sent_consensus = 0u64;
    let started = Instant::now();
    let mut outage_posted = false;
    for i in 0..FORGED {
        let (subject, body) = if i % 2 == 0 {
            (
                subjects::VOTE,
                vote(&format!("forged-{i}"), "monitor-2", "monitor-2"),
            )
        } else {
            (
                subjects::FINALIZE,
                finalize(&format!("forged-{i}"), "monitor-2", "Victim", false),
            )
        };
        match i % 4 {
            0 => send(&client, subject, body, None).await,
            1 => {
                // Badly signed with a trusted key: the costly case, a real verification.
                let mut sig = [0u8; 64];
                for b in sig.iter_mut() {
                    *b = next() as u8;
                }
                let mut h = async_nats::HeaderMap::new();
                h.insert(HDR_KEY, trusted_key.as_str());
                h.insert(
                    HDR_SIG_TIME,
                    Utc::now()
                        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                        .as_str(),
                );
                h.insert(
                    HDR_SIG,
                    base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .encode(sig)
                        .as_str(),
                );
                client
                    .publish_with_headers(subject.to_string(), h, Bytes::from(body))
                    .await
                    .expect("publish");
            }
            2 => {
                let s = alien.sign(subject, &body, Utc::now());
                send(&client, subject, body, Some(s)).await;
            }
            _ => {
                let m = &captured[(next() as usize) % captured.len()];
                client
                    .publish_with_headers(
                        m.subject.to_string(),
                        m.headers.clone().unwrap_or_default(),
                        m.payload.clone(),
                    )
                    .await
                    .expect("replay");
            }
        }
        sent_consensus += 1;
        if i == FORGED / 3 {
            // The real outage, in the middle of the flood.
            two_see(&c, "Alpha", false).await;
            outage_posted = true;
        }
    }
    assert!(outage_posted);
    for i in 0..JOINS {
        send(
            &client,
            subjects::CLUSTER,
            join(&format!("evil-monitor-{i}"), Role::Monitor),
            None,
        )
        .await;
        sent_consensus += 1;
    }
    let every_subject = [
        subjects::CLUSTER,
        ibp_wire::ext::LEAVE_SUBJECT,
        subjects::PROPOSE,
        subjects::VOTE,
        subjects::FINALIZE,
        subjects::DOWNTIME_GET,
        subjects::USAGE_GET,
        subjects::USAGE_DATA,
    ];
    let consensus_subjects = &every_subject[..5];
    for s in every_subject {
        for i in 0..MALFORMED_PER_SUBJECT {
            let junk: Vec<u8> = match i % 4 {
                0 => b"{".to_vec(),
                1 => b"null".to_vec(),
                2 => (0..(next() % 300)).map(|_| next() as u8).collect(),
                _ => br#"{"ID": 7, "Proposal": [1,2,3], "sender": "x"}"#.to_vec(),
            };
            send(&client, s, junk, None).await;
            if consensus_subjects.contains(&s) {
                sent_consensus += 1;
            }
        }
        for i in 0..HUGE_PER_SUBJECT {
            // Maximum-size messages: valid JSON with a huge field, and garbage.
            let body = if i == 0 {
                let mut f = finalize("huge", "monitor-2", "Victim", false);
                let pad = MAX_PAYLOAD.saturating_sub(f.len() + 64);
                let text = format!("\"ErrorText\":\"{}\",", "x".repeat(pad));
                let at = f.iter().position(|b| *b == b'{').unwrap_or(0) + 1;
                f.splice(at..at, text.into_bytes());
                f.truncate(MAX_PAYLOAD);
                f
            } else {
                vec![b'x'; MAX_PAYLOAD - 512]
            };
            send(&client, s, body, None).await;
            if consensus_subjects.contains(&s) {
                sent_consensus += 1;
            }
        }
    }
    client.flush().await.expect("flush");
    println!(
        "flood: {sent_consensus} messages on consensus subjects published in {:.2} s",
        started.elapsed().as_secs_f64()
    );

    // The real outage finalizes on every monitor despite the backlog (a generous bound:
    // the backlog is worked through on two cores by three nodes at once).
    official_everywhere_within(&c, "Alpha", false, Duration::from_secs(120)).await;
    let decided_after = started.elapsed();
    for (a, moot0) in c.apps.iter().zip(&moot_before) {
        // Every message on a consensus subject is accounted for: dropped by the trust
        // check, undecodable, or (a replayed vote or finalize of a decided proposal)
        // dropped unchecked as moot.
        let counted = |a: &App| {
            let m = |name: &str| {
                consensus_subjects
                    .iter()
                    .map(|s| metric(a, name, &[&format!("subject=\"{s}\"")]))
                    .sum::<f64>()
            };
            (m("ibp_trust_rejections_total")
                + m("ibp_decode_failures_total")
                + m("ibp_trust_moot_total")
                - moot0) as u64
        };
        let ok = a
            .node
            .wait_until(|_| counted(a) >= sent_consensus, Duration::from_secs(120))
            .await;
        assert!(
            ok,
            "{}: {} of {sent_consensus} accounted for",
            a.node.id(),
            counted(a)
        );
        // The real outage's own late votes and finalizes are moot too: two monitors
        // propose it, and each of the three monitors sends at most one vote and one
        // finalize per proposal (nothing republishes: nobody observes it again), so at
        // most 2 × 3 × 2 of them.
        let n = counted(a);
        assert!(
            n <= sent_consensus + 12,
            "{}: {n} accounted for, {sent_consensus} forged: nothing forged got through",
            a.node.id()
        );
        assert_eq!(metric(a, "ibp_nats_slow_consumers_total", &[]), 0.0);
        assert_eq!(a.node.count_active_monitors(), 3, "{}", a.node.id());
        assert!(
            a.node.cluster().nodes.len() <= 3,
            "{}: no fake node remembered",
            a.node.id()
        );
        assert!(
            a.node.proposal_count() <= 2,
            "{}: nothing forged tracked",
            a.node.id()
        );
        let replay = metric(a, "ibp_trust_replay_memory", &[]);
        assert!(replay <= ibp_node::security::DEFAULT_REPLAY_MEMORY as f64);
        assert!(
            a.node
                .official()
                .iter()
                .all(|(k, _)| k.member_name == "Alpha"),
            "{}",
            a.node.id()
        );
    }
    for (a, b) in c.apps.iter().zip(&before) {
        assert_eq!(
            a.node.official().len(),
            b.len(),
            "{}: no new official result",
            a.node.id()
        );
    }
    println!(
        "real outage decided on every monitor {:.1} s after the flood began; flood handled in {:.1} s; test process peak RSS {:.0} MB -> {:.0} MB",
        decided_after.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        rss_before,
        rss_mb()
    );
    c.stop().await;
}
