//! Operators watch the bus with `nats sub ">"` and capture it with a JetStream stream on
//! `>`. Neither may stop a node from starting, deciding or answering fan-outs.

mod common;

use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use ibp_core::{CheckKey, Observation};
use ibp_node::app::App;
use ibp_node::collectors;
use ibp_testkit::{NatsServer, ServerOptions};
use ibp_wire::{CheckType, DowntimeRequest, Role, WireTime};

fn key() -> CheckKey {
    CheckKey::new(CheckType::Site, "ping", "Amforc", "", "", false)
}

/// Starts a node; a start that hangs or fails is the defect under test.
async fn start(cfg: ibp_node::config::NodeConfig) -> App {
    let id = cfg.node_id.to_string();
    match tokio::time::timeout(Duration::from_secs(30), App::start(cfg)).await {
        Ok(Ok(app)) => app,
        Ok(Err(e)) => panic!("{id} did not start: {e}"),
        Err(_) => panic!("{id} did not start within 30 s"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_start_decide_and_answer_with_a_subscriber_on_every_subject() {
    // Nobody answers what the `>` subscriber receives: a start-up step that waits for
    // "no responders" would never see it.
    wildcard_cluster(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_start_decide_and_answer_with_a_jetstream_stream_on_every_subject() {
    // The stream also captures (and acknowledges) every JetStream API request and
    // overlaps the collator's own stream for consensus.finalize.
    wildcard_cluster(true).await;
}

async fn wildcard_cluster(with_stream: bool) {
    let server = NatsServer::start_with(ServerOptions {
        jetstream: true,
        ..ServerOptions::default()
    })
    .expect("server");
    let url = server.url();
    // The operator's tools, present before any node starts.
    let watcher = async_nats::connect(&url).await.expect("watcher");
    let mut everything = watcher.subscribe(">").await.expect("sub >");
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = seen.clone();
    tokio::spawn(async move {
        while everything.next().await.is_some() {
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
    if with_stream {
        let js = async_nats::jetstream::new(watcher.clone());
        js.create_stream(async_nats::jetstream::stream::Config {
            name: "EVERYTHING".into(),
            subjects: vec![">".into()],
            storage: async_nats::jetstream::stream::StorageType::Memory,
            ..Default::default()
        })
        .await
        .expect("stream on >");
    }
    watcher.flush().await.expect("flush");

    let dir = tempfile::tempdir().expect("dir");
    let mut monitors = Vec::new();
    for i in 1..=3 {
        monitors.push(
            start(common::node_config(
                "monitor",
                &format!("monitor-{i}"),
                &url,
                dir.path(),
            ))
            .await,
        );
    }
    let mut dns = Vec::new();
    for i in 1..=2 {
        dns.push(
            start(common::node_config(
                "dns",
                &format!("dns-{i}"),
                &url,
                dir.path(),
            ))
            .await,
        );
    }
    let collator = start(common::node_config(
        "collator",
        "collator-1",
        &url,
        dir.path(),
    ))
    .await;
    let mut durable_cfg = common::node_config("collator", "collator-js", &url, dir.path());
    durable_cfg.collator.jetstream = true;
    let durable = start(durable_cfg).await;

    for a in monitors.iter().chain(&dns).chain([&collator, &durable]) {
        assert!(
            a.node
                .wait_until(
                    |n| n.count_active_monitors() == 3 && n.count_active_dns() == 2,
                    Duration::from_secs(20)
                )
                .await,
            "{} sees 3 monitors and 2 DNS nodes: {:?}",
            a.node.id(),
            a.node.cluster()
        );
    }

    // A decision: every monitor sees Amforc down.
    for m in &monitors[1..] {
        m.node
            .set_local(Observation::new(key(), false))
            .await
            .expect("monitor");
    }
    monitors[0]
        .node
        .observe(Observation::new(key(), false))
        .await
        .expect("observe");
    for m in &monitors {
        assert!(
            m.node
                .wait_until(
                    |n| n.official().iter().any(|(k, o)| *k == key() && !o.status),
                    Duration::from_secs(20)
                )
                .await,
            "{} applied the outage",
            m.node.id()
        );
    }
    for c in [&collator, &durable] {
        let svc = c.collator.as_ref().expect("collator");
        assert!(
            svc.wait_recorded(1, Duration::from_secs(20)).await,
            "{} recorded the outage",
            c.node.id()
        );
        let open = svc.store().open_events().await.expect("events");
        assert_eq!(open.len(), 1, "{}: {open:?}", c.node.id());
    }

    // Fan-outs: usage from both DNS nodes, downtime from all three monitors.
    let today = Utc::now().date_naive();
    let report = collator
        .collator
        .as_ref()
        .expect("collator")
        .collect(&collator.node, today, today)
        .await
        .expect("usage collected");
    assert_eq!(report.answered, vec!["dns-1", "dns-2"], "{report:?}");
    assert!(report.missing.is_empty(), "{report:?}");
    let req = DowntimeRequest {
        start_time: WireTime::from_utc(Utc::now() - chrono::TimeDelta::hours(1)),
        end_time: WireTime::from_utc(Utc::now() + chrono::TimeDelta::hours(1)),
        member_name: String::new(),
    };
    let down =
        collectors::request_all_monitors_downtime(&collator.node, &req, Duration::from_secs(10))
            .await
            .expect("downtime");
    assert!(down.complete, "{down:?}");
    assert_eq!(down.answered.len(), 3);
    assert!(
        down.records.iter().all(|e| e.member_name == "Amforc"),
        "{:?}",
        down.records
    );
    assert_eq!(down.records.len(), 3, "one open outage per monitor");
    assert_eq!(collator.node.count_active(Role::Monitor), 3);

    for a in monitors.into_iter().chain(dns).chain([collator, durable]) {
        a.shutdown().await;
    }
    assert!(
        seen.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the watcher saw the traffic"
    );
}
