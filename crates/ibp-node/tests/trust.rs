//! Trusted consensus against a real nats-server: in `enforce` mode nothing a stranger (or
//! one compromised monitor) publishes changes a decision, while real outages still decide
//! and the collator records them with the verified votes; `verify` reports exactly what
//! `enforce` drops; `off` still decides together with unsigned Go-shaped monitors.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use common::signed::*;
use futures::StreamExt;
use ibp_core::Observation;
use ibp_node::app::App;
use ibp_testkit::NatsServer;
use ibp_trust::{HDR_SIG, Identity};
use ibp_wire::{Proposal, Role, subjects};

/// The forgeries of a stranger (no trusted key) against `victim`; returns how many of
/// each rejection reason they make on every node that sees them.
async fn stranger_forgeries(
    c: &Cluster,
    client: &async_nats::Client,
    victim: &str,
) -> BTreeMap<&'static str, u64> {
    let alien = Identity::generate();
    // The reproduction: sender "evil", a proposal nobody proposed, Passed true.
    send(
        client,
        subjects::FINALIZE,
        finalize("forged-1", "evil", victim, false),
        None,
    )
    .await;
    send(
        client,
        subjects::FINALIZE,
        finalize("forged-2", "monitor-1", victim, false),
        None,
    )
    .await;
    let body = finalize("forged-3", "monitor-1", victim, false);
    let s = alien.sign(subjects::FINALIZE, &body, Utc::now());
    send(client, subjects::FINALIZE, body, Some(s)).await;
    // A proposal and a vote to make monitors act, unsigned.
    let p = ibp_wire::encode(&proposal("forged-4", "evil-monitor", victim, false)).expect("encode");
    send(client, subjects::PROPOSE, p, None).await;
    send(
        client,
        subjects::VOTE,
        vote("forged-4", "evil-monitor", "evil-monitor"),
        None,
    )
    .await;
    // Fake monitors joining.
    for i in 0..50 {
        send(
            client,
            subjects::CLUSTER,
            join(&format!("evil-monitor-{i}"), Role::Monitor),
            None,
        )
        .await;
    }
    // A trusted key speaking for another node, and a DNS-role key claiming a monitor.
    let body = vote("forged-4", "monitor-3", "monitor-3");
    let s = c.key("monitor-2").sign(subjects::VOTE, &body, Utc::now());
    send(client, subjects::VOTE, body, Some(s)).await;
    if c.keys.contains_key("collator-1") {
        let body = join("collator-1", Role::Monitor);
        let s = c
            .key("collator-1")
            .sign(subjects::CLUSTER, &body, Utc::now());
        send(client, subjects::CLUSTER, body, Some(s)).await;
    }
    // A signature over another subject, and a tampered payload.
    let body = finalize("forged-5", "monitor-2", victim, false);
    let s = c.key("monitor-2").sign(subjects::VOTE, &body, Utc::now());
    send(client, subjects::FINALIZE, body, Some(s)).await;
    client.flush().await.expect("flush");
    let mut want = BTreeMap::new();
    want.insert("unsigned", 2 + 2 + 50);
    want.insert("untrusted", 1);
    want.insert("sender_mismatch", 1);
    want.insert("bad_signature", 1);
    if c.keys.contains_key("collator-1") {
        want.insert("role_mismatch", 1);
    }
    want
}

/// Rejections by reason, plus `replayed_or_moot`: a replayed vote or finalize of a
/// proposal the node has decided is dropped unchecked (`moot`) rather than as a replay.
fn reasons(app: &App) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (labels, n) in rejections(app) {
        if let Some(r) = labels
            .split("reason=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
        {
            *out.entry(r.to_string()).or_default() += n;
        }
    }
    let moot = metric(app, "ibp_trust_moot_total", &[]) as u64;
    let replayed = out.get("replayed").copied().unwrap_or(0);
    out.insert("replayed_or_moot".into(), replayed + moot);
    out
}

/// Waits until a node has counted at least `want` rejections of each reason (it handles
/// each subject in order, so once counted, everything before was handled too).
async fn counted(app: &App, want: &BTreeMap<&'static str, u64>) {
    let ok = app
        .node
        .wait_until(
            |_| {
                let got = reasons(app);
                want.iter()
                    .all(|(r, n)| got.get(*r).copied().unwrap_or(0) >= *n)
            },
            WAIT,
        )
        .await;
    assert!(
        ok,
        "{}: rejections {:?}, want at least {want:?}",
        app.node.id(),
        reasons(app)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_enforce_mode_forgeries_replays_and_a_lone_finalize_change_nothing_and_a_real_outage_still_decides()
 {
    let c = cluster(&[
        ("monitor-1", "monitor", "enforce"),
        ("monitor-2", "monitor", "enforce"),
        ("monitor-3", "monitor", "enforce"),
        ("collator-1", "collator", "enforce"),
    ])
    .await;
    // Baseline, recorded by a stranger for replay.
    let captured = recorded_baseline(&c, "Alpha").await;
    assert!(
        captured
            .iter()
            .any(|m| m.subject.as_str() == subjects::FINALIZE),
        "the spy saw signed finalizes"
    );

    let client = stranger(&c).await;
    let mut want = stranger_forgeries(&c, &client, "Alpha").await;
    // Replays: exact copies of real signed messages.
    replay(&client, &captured).await;
    want.insert("replayed_or_moot", captured.len() as u64);
    // One compromised monitor finalizes alone: validly signed, nobody voted.
    let body = finalize("lone-1", "monitor-1", "Alpha", false);
    let s = c
        .key("monitor-1")
        .sign(subjects::FINALIZE, &body, Utc::now());
    send(&client, subjects::FINALIZE, body, Some(s)).await;
    client.flush().await.expect("flush");

    for a in c.apps.iter().filter(|a| a.monitor.is_some()) {
        // The replays a node sees include those of its own messages; the spy saw all.
        counted(a, &want).await;
        let ok = a
            .node
            .wait_until(
                |_| metric(a, "ibp_ignored_total", &["finalize_unbacked"]) >= 1.0,
                WAIT,
            )
            .await;
        assert!(ok, "{} refused the lone finalize", a.node.id());
        assert!(
            metric(a, "ibp_core_events_total", &["kind=\"finalize_unbacked\""]) >= 1.0,
            "{}: the core counted it",
            a.node.id()
        );
        assert_eq!(
            official_of(a, "Alpha"),
            Some(true),
            "{}: official unchanged",
            a.node.id()
        );
        assert_eq!(
            a.node.count_active_monitors(),
            3,
            "{}: no fake monitor counts",
            a.node.id()
        );
        assert!(
            a.node
                .official()
                .iter()
                .all(|(k, _)| k.member_name == "Alpha"),
            "{}: no forged result",
            a.node.id()
        );
    }
    let collator = c.app("collator-1");
    counted(
        collator,
        &BTreeMap::from([("unsigned", 2), ("untrusted", 1)]),
    )
    .await;
    let store = collator
        .collator
        .as_ref()
        .expect("collator")
        .store()
        .clone();
    assert!(
        store.all_events().await.expect("events").is_empty(),
        "no outage recorded from forgeries"
    );

    // A real outage: two of three monitors see it.
    two_see(&c, "Alpha", false).await;
    official_everywhere(&c, "Alpha", false).await;
    // The monitors took each other's real messages by their pairwise authenticators, not
    // the curve; the collator, which gets no tags, verified the signatures.
    for a in c.apps.iter().filter(|a| a.monitor.is_some()) {
        assert!(
            metric(a, "ibp_trust_by_mac_total", &["consensus.vote"]) >= 1.0,
            "{}: votes accepted by authenticator",
            a.node.id()
        );
    }
    assert_eq!(metric(collator, "ibp_trust_by_mac_total", &[]), 0.0);
    assert!(metric(collator, "ibp_trust_verified_total", &[]) >= 1.0);
    let deadline = std::time::Instant::now() + WAIT;
    let event = loop {
        let evs = store.all_events().await.expect("events");
        if let Some(e) = evs.into_iter().find(|e| e.member_name == "Alpha") {
            break e;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the collator records the real outage"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let votes = event.vote_data.expect("verified votes recorded");
    for id in ["monitor-1", "monitor-2"] {
        assert_eq!(votes[id], serde_json::json!(true), "{votes}");
    }
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_mode_reports_exactly_what_enforce_mode_drops() {
    let c = cluster(&[
        ("monitor-1", "monitor", "verify"),
        ("monitor-2", "monitor", "enforce"),
        ("monitor-3", "monitor", "enforce"),
    ])
    .await;
    let captured = recorded_baseline(&c, "Alpha").await;
    let client = stranger(&c).await;
    let mut want = stranger_forgeries(&c, &client, "Victim").await;
    replay(&client, &captured).await;
    want.insert("replayed_or_moot", captured.len() as u64);
    for a in &c.apps {
        counted(a, &want).await;
    }
    let (verify, enforce) = (c.app("monitor-1"), c.app("monitor-2"));
    assert_eq!(
        rejections(verify),
        rejections(enforce),
        "the same traffic, the same report (subject, reason, claimed sender)"
    );
    assert_eq!(rejections(enforce), rejections(c.app("monitor-3")));
    // Verify behaves as off: the stranger's finalize went through there, not elsewhere.
    assert_eq!(
        official_of(verify, "Victim"),
        Some(false),
        "verify applies what off would"
    );
    assert_eq!(official_of(enforce, "Victim"), None);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_off_mode_signing_rust_monitors_decide_with_an_unsigned_go_shaped_monitor() {
    let c = cluster(&[
        ("monitor-1", "monitor", "off"),
        ("monitor-2", "monitor", "off"),
    ])
    .await;
    // The Go-shaped monitor: unsigned join, and an agreeing vote on every proposal.
    let go = stranger(&c).await;
    let mut proposals = go
        .subscribe(subjects::PROPOSE.to_string())
        .await
        .expect("sub");
    let mut signed = go
        .subscribe(subjects::PROPOSE.to_string())
        .await
        .expect("sub");
    go.flush().await.expect("flush");
    send(
        &go,
        subjects::CLUSTER,
        join("go-monitor-1", Role::Monitor),
        None,
    )
    .await;
    for a in &c.apps {
        assert!(
            a.node.wait_for_active(Role::Monitor, 3, WAIT).await,
            "the Go monitor counts"
        );
    }
    let voter = go.clone();
    let votes = tokio::spawn(async move {
        while let Some(m) = proposals.next().await {
            if let Ok(p) = ibp_wire::decode::<Proposal>(&m.payload)
                && p.sender_node_id != "go-monitor-1"
            {
                send(
                    &voter,
                    subjects::VOTE,
                    vote(&p.id, "go-monitor-1", "go-monitor-1"),
                    None,
                )
                .await;
            }
        }
    });
    // Only monitor-1 sees the outage; monitor-2 has no result (no vote): it takes the Go
    // monitor's vote to reach 2 of 3.
    observe(c.app("monitor-1"), "Alpha", false).await;
    let m = signed.next().await.expect("a proposal");
    assert!(
        m.headers.as_ref().is_some_and(|h| h.get(HDR_SIG).is_some()),
        "signed in off mode"
    );
    let p = ibp_wire::decode::<Proposal>(&m.payload).expect("decodes");
    assert_eq!(
        ibp_wire::encode(&p).expect("encode"),
        m.payload.to_vec(),
        "the payload is the Go encoding, unchanged by signing"
    );
    official_everywhere(&c, "Alpha", false).await;
    // And the other way: the Go monitor proposes, unsigned; the Rust monitors, which hold
    // the same result without having proposed it, vote and decide it.
    for a in &c.apps {
        a.node
            .set_local(Observation::new(key("Gamma"), false))
            .await
            .expect("local");
    }
    let p = ibp_wire::encode(&proposal("go-proposal-1", "go-monitor-1", "Gamma", false))
        .expect("encode");
    send(&go, subjects::PROPOSE, p, None).await;
    official_everywhere(&c, "Gamma", false).await;
    votes.abort();
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collator_catching_up_from_jetstream_in_enforce_mode_records_real_decisions_only() {
    let nats = NatsServer::start_with(ibp_testkit::ServerOptions {
        jetstream: true,
        ..Default::default()
    })
    .expect("nats-server");
    let max_age = Duration::from_secs(2);
    let mut c = cluster_with(
        nats,
        &[
            ("monitor-1", "monitor", "enforce"),
            ("monitor-2", "monitor", "enforce"),
            ("monitor-3", "monitor", "enforce"),
            ("collator-1", "collator", "enforce"),
        ],
        |cfg| {
            cfg.security.max_age = max_age;
            cfg.collator.jetstream = true;
        },
    )
    .await;
    two_see(&c, "Alpha", false).await;
    official_everywhere(&c, "Alpha", false).await;
    let recorder = c.app("collator-1").collator.clone().expect("collator");
    assert!(
        recorder.wait_recorded(1, WAIT).await,
        "the outage is recorded live"
    );
    let i = c
        .apps
        .iter()
        .position(|a| a.node.id().as_str() == "collator-1")
        .expect("collator");
    c.apps.remove(i).shutdown().await;

    // While the collator is down: the outage ends, and a stranger and one compromised
    // monitor publish finalizes into the stream.
    two_see(&c, "Alpha", true).await;
    official_everywhere(&c, "Alpha", true).await;
    let client = stranger(&c).await;
    send(
        &client,
        subjects::FINALIZE,
        finalize("forged-js-1", "monitor-1", "Beta", false),
        None,
    )
    .await;
    let body = finalize("lone-js-1", "monitor-1", "Beta", false);
    let s = c
        .key("monitor-1")
        .sign(subjects::FINALIZE, &body, Utc::now());
    send(&client, subjects::FINALIZE, body, Some(s)).await;
    client.flush().await.expect("flush");
    // Real time must pass: every stored message is now older than max_age by the
    // collator's clock, and only the stored time keeps the real ones acceptable.
    tokio::time::sleep(max_age + Duration::from_secs(1)).await;

    let app = App::start(c.cfgs["collator-1"].clone())
        .await
        .expect("restarts");
    let js = async_nats::jetstream::new(async_nats::connect(c.nats.url()).await.expect("client"));
    let mut stream = js.get_stream("IBP_FINALIZE").await.expect("stream");
    let subjects_kept = stream.info().await.expect("info").config.subjects.clone();
    assert!(
        subjects_kept.iter().any(|s| s == subjects::VOTE),
        "the stream keeps the votes in enforce mode: {subjects_kept:?}"
    );
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_consumer_from_stream("ibp-collator-collator-1-signed", "IBP_FINALIZE")
        .await
        .expect("the signed durable consumer");
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let info = consumer.info().await.expect("consumer info");
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "caught up: {info:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let store = app.collator.as_ref().expect("collator").store().clone();
    let evs = store.all_events().await.expect("events");
    assert!(
        evs.iter()
            .any(|e| e.member_name == "Alpha" && e.end_time.is_some()),
        "the end of the outage, decided while down, is recorded: {evs:?}"
    );
    assert!(
        evs.iter().all(|e| e.member_name != "Beta"),
        "nothing forged is recorded: {evs:?}"
    );
    assert!(metric(&app, "ibp_trust_rejections_total", &["reason=\"unsigned\""]) >= 1.0);
    assert!(metric(&app, "ibp_ignored_total", &["finalize_unbacked"]) >= 1.0);
    assert_eq!(
        metric(&app, "ibp_trust_rejections_total", &["reason=\"expired\""]),
        0.0,
        "stored messages are aged by their stored time"
    );
    app.shutdown().await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_added_to_the_trust_file_is_trusted_after_the_reload() {
    let nats = NatsServer::start().expect("nats-server");
    let dir = tempfile::tempdir().expect("dir");
    let ids = ["monitor-1", "monitor-2", "monitor-3"];
    let keys: Vec<Identity> = ids.iter().map(|_| Identity::generate()).collect();
    let entry = |i: usize| serde_json::json!({"public_key": keys[i].public_key(), "node_id": ids[i], "role": "IBPMonitor"});
    let trust_file = dir.path().join("trust.json");
    std::fs::write(
        &trust_file,
        serde_json::json!([entry(0), entry(1)]).to_string(),
    )
    .expect("trust");
    let mut apps = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let mut cfg = common::node_config("monitor", id, &nats.url(), dir.path());
        let seed = dir.path().join(format!("{id}.nk"));
        std::fs::write(&seed, keys[i].seed().expect("seed")).expect("seed");
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&seed, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
        cfg.security = ibp_node::config::SecurityConfig::resolve(
            Some(&ibp_node::config::SecuritySection {
                mode: Some("enforce".into()),
                seed_file: Some(seed),
                trust_file: Some(trust_file.clone()),
                ..Default::default()
            }),
            None,
        )
        .expect("security");
        cfg.config_reload = Duration::from_secs(1);
        cfg.core.heartbeat_interval = Duration::from_secs(1);
        apps.push(App::start(cfg).await.expect("starts"));
    }
    // monitor-3 is not trusted yet: the others do not count it, and it says so.
    assert!(apps[0].node.wait_for_active(Role::Monitor, 2, WAIT).await);
    let (status, health) = common::get(&apps[2].http_addr.to_string(), "/healthz").await;
    assert_eq!(status, 503);
    assert!(
        health["problems"]
            .as_array()
            .is_some_and(|ps| ps.iter().any(|p| p["part"] == "security")),
        "{health}"
    );
    assert_eq!(apps[0].node.count_active_monitors(), 2);
    assert!(
        metric(
            &apps[0],
            "ibp_trust_rejections_total",
            &["reason=\"untrusted\""]
        ) >= 1.0
    );
    // Trusted in the file: counted at its next heartbeat after the reload.
    std::fs::write(
        &trust_file,
        serde_json::json!([entry(0), entry(1), entry(2)]).to_string(),
    )
    .expect("trust");
    for a in &apps {
        assert!(
            a.node.wait_for_active(Role::Monitor, 3, WAIT).await,
            "{} trusts monitor-3",
            a.node.id()
        );
    }
    let ok = apps[2]
        .node
        .wait_until(
            |n| n.health().problems().iter().all(|p| p.part != "security"),
            WAIT,
        )
        .await;
    assert!(ok, "monitor-3's health recovers once its key is trusted");
    for a in apps {
        a.shutdown().await;
    }
}

/// Catching up in enforce mode: a monitor that was away takes what the trusted monitors
/// attest, and answers not signed by the key of the monitor they name count for nothing.
/// A trusted "ghost" monitor whose signed joins the test publishes is active but never
/// answers itself, so the stranger's answers in its name are always read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_enforce_mode_a_returning_monitor_catches_up_only_from_signed_answers() {
    let mut c = cluster(&[
        ("monitor-1", "monitor", "enforce"),
        ("monitor-2", "monitor", "enforce"),
        ("monitor-3", "monitor", "enforce"),
        ("monitor-4", "monitor", "enforce"),
    ])
    .await;
    let i = c
        .apps
        .iter()
        .position(|a| a.node.id().as_str() == "monitor-4")
        .expect("monitor-4");
    let away = c.apps.remove(i);
    away.shutdown().await;
    // Decided while monitor-4 was away (3 active monitors: 2 agreeing votes decide).
    two_see(&c, "alpha", false).await;
    official_everywhere(&c, "alpha", false).await;

    // monitor-4 comes back trusting a ghost too.
    let ghost = Identity::generate();
    let mut entries: Vec<ibp_trust::TrustEntry> = c
        .keys
        .iter()
        .map(|(id, k)| ibp_trust::TrustEntry {
            public_key: k.public_key().to_string(),
            node_id: id.clone(),
            role: "IBPMonitor".into(),
        })
        .collect();
    entries.push(ibp_trust::TrustEntry {
        public_key: ghost.public_key().to_string(),
        node_id: "ghost".into(),
        role: "IBPMonitor".into(),
    });
    let mut cfg = c.cfgs["monitor-4"].clone();
    cfg.security.trust = ibp_trust::TrustList::build([("trust", &entries[..])]).expect("trust");

    let stranger = stranger(&c).await;
    let mut asks = stranger
        .subscribe(ibp_node::cluster::SYNC_SUBJECT)
        .await
        .expect("sub");
    stranger.flush().await.expect("flush");
    let client = stranger.clone();
    let forging = tokio::spawn(async move {
        let mut beat = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = beat.tick() => {
                    // The ghost's joins are signed with its trusted key: it is active.
                    let payload = join("ghost", Role::Monitor);
                    let sig = ghost.sign(subjects::CLUSTER, &payload, Utc::now());
                    send(&client, subjects::CLUSTER, payload, Some(sig)).await;
                }
                m = asks.next() => {
                    let Some(m) = m else { break };
                    let Some(reply) = m.reply else { continue };
                    // In the ghost's name, unsigned: a made-up outage of "beta".
                    let mut p = proposal("forged-beta", "ghost", "beta", false);
                    p.timestamp = ibp_wire::WireTime::from_utc(Utc::now());
                    let f = ibp_wire::FinalizeMessage {
                        proposal: p,
                        sender_node_id: "ghost".into(),
                        passed: true,
                        decided_at: ibp_wire::WireTime::from_utc(Utc::now()),
                    };
                    let part = serde_json::json!({"node": "ghost", "results": [f], "last": true});
                    let _ = client.publish(reply, part.to_string().into()).await;
                }
            }
        }
    });
    let back = App::start(cfg).await.expect("back");
    assert!(
        back.node
            .wait_until(
                |n| n.official().len() == 1 && official_in(n, "alpha") == Some(false),
                WAIT
            )
            .await,
        "monitor-4 took alpha from the signed answers"
    );
    let refused = || {
        rejections(&back)
            .iter()
            .filter(|(k, _)| {
                k.contains("subject=\"_INBOX\"")
                    && k.contains("reason=\"unsigned\"")
                    && k.contains("sender=\"ghost\"")
            })
            .map(|(_, v)| *v)
            .sum::<u64>()
    };
    assert!(
        back.node.wait_until(|_| refused() >= 1, WAIT).await,
        "the ghost's unsigned answer was refused and counted: {:?}",
        rejections(&back)
    );
    assert_eq!(
        official_in(&back.node, "beta"),
        None,
        "nothing forged was taken"
    );
    forging.abort();
    back.shutdown().await;
    c.stop().await;
}

fn official_in(n: &ibp_node::cluster::Node, member: &str) -> Option<bool> {
    let k = key(member);
    n.official()
        .iter()
        .find(|(kk, _)| *kk == k)
        .map(|(_, o)| o.status)
}
