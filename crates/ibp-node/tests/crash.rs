//! Crashes and clean stops with real processes: a monitor killed in the middle of writing a
//! decision, a monitor stopped while it votes, the timer task panicking.

mod common;

use std::time::Duration;

use common::{free_port, get, post, ready, spawn, spawn_env, terminate, until};
use ibp_node::app::App;
use ibp_testkit::NatsServer;
use serde_json::json;

async fn monitor_with(
    id: &str,
    nats: &str,
    dir: &std::path::Path,
    env: &[(&str, &str)],
) -> (common::Spawned, String) {
    let http = format!("127.0.0.1:{}", free_port());
    let db = format!("sqlite://{}", dir.join(format!("{id}.db")).display());
    let cfg = dir.join(format!("{id}.json"));
    std::fs::write(
        &cfg,
        json!({"IbpNode": {"monitor": {"reconcile_interval": "1s"}}}).to_string(),
    )
    .expect("config");
    let args = [
        "run",
        "--config",
        cfg.to_str().expect("utf-8"),
        "--role",
        "monitor",
        "--node-id",
        id,
        "--nats-url",
        nats,
        "--http",
        &http,
        "--db",
        &db,
    ];
    let mut child = if env.is_empty() {
        spawn(&args)
    } else {
        spawn_env(&args, env)
    };
    ready(&http, &mut child).await;
    (child, http)
}

fn outage(status: bool) -> String {
    json!({"checkType":"site","checkName":"ping","memberName":"Amforc","isIPv6":false,
           "status":status,"errorText":"timeout"})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitor_killed_while_writing_a_decision_keeps_result_and_outage_together() {
    let server = NatsServer::start().expect("server");
    let dir = tempfile::tempdir().expect("dir");
    let (_a, a) = monitor_with("monitor-1", &server.url(), dir.path(), &[]).await;
    let (_b, b) = monitor_with("monitor-2", &server.url(), dir.path(), &[]).await;
    // monitor-3 dies (SIGABRT, like a kill -9) between writing the official result and its
    // outage event, inside their transaction.
    let (mut c, http_c) = monitor_with(
        "monitor-3",
        &server.url(),
        dir.path(),
        &[("IBP_FAILPOINT", "official.between_result_and_event")],
    )
    .await;
    until("three active monitors", async || {
        get(&a, "/v1/cluster").await.1["activeMonitors"] == 3
    })
    .await;
    for h in [&http_c, &a, &b] {
        let (s, r) = post(h, "/v1/observations", &outage(false)).await;
        assert_eq!(s, 202, "{r}");
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Ok(Some(st)) = c.try_wait() {
            break st;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the failpoint never fired"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(!status.success(), "aborted: {status}");
    // Restarted without the failpoint: nothing half-written, and it catches up.
    let (mut c2, http_c) = monitor_with("monitor-3", &server.url(), dir.path(), &[]).await;
    until("official offline again on monitor-3", async || {
        get(&http_c, "/v1/official").await.1["results"]
            .as_array()
            .is_some_and(|r| {
                r.iter()
                    .any(|x| x["memberName"] == "Amforc" && x["status"] == false)
            })
    })
    .await;
    until("its outage event, recorded with it", async || {
        get(&http_c, "/v1/events?from=2000-01-01").await.1["events"]
            .as_array()
            .is_some_and(|e| e.len() == 1 && e[0]["endTime"].is_null())
    })
    .await;
    terminate(&mut c2, Duration::from_secs(30));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitor_stopped_while_it_votes_stays_gone() {
    let server = NatsServer::start().expect("server");
    let dir = tempfile::tempdir().expect("dir");
    let (_a, a) = monitor_with("monitor-1", &server.url(), dir.path(), &[]).await;
    let (_b, b) = monitor_with("monitor-2", &server.url(), dir.path(), &[]).await;
    let (mut c, http_c) = monitor_with("monitor-3", &server.url(), dir.path(), &[]).await;
    until("three active monitors", async || {
        get(&a, "/v1/cluster").await.1["activeMonitors"] == 3
    })
    .await;
    // Everyone observes many checks so monitor-3 keeps voting; it is stopped mid-burst.
    let batch =
        |from: usize| {
            json!((from..from + 500)
            .map(|i| json!({"checkType":"site","checkName":"ping","memberName":format!("m{i}"),
                            "isIPv6":false,"status":false}))
            .collect::<Vec<_>>())
            .to_string()
        };
    for from in (0..2_000).step_by(500) {
        assert_eq!(post(&http_c, "/v1/observations", &batch(from)).await.0, 202);
    }
    let burst = {
        let (a, b) = (a.clone(), b.clone());
        tokio::spawn(async move {
            for from in (0..2_000).step_by(500) {
                post(&a, "/v1/observations", &batch(from)).await;
                post(&b, "/v1/observations", &batch(from)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (st, log) = terminate(&mut c, Duration::from_secs(60));
    assert!(st.success(), "{st}\n{log}");
    let _ = burst.await;
    // Its leave was its last word: no vote or finalize after it brings it back.
    for _ in 0..30 {
        for h in [&a, &b] {
            let (_, cl) = get(h, "/v1/cluster").await;
            let me = cl["nodes"]
                .as_array()
                .and_then(|n| n.iter().find(|x| x["nodeId"] == "monitor-3").cloned())
                .expect("known");
            assert_eq!(me["left"], true, "{me}");
            assert_eq!(me["active"], false, "{me}");
            assert_eq!(cl["activeMonitors"], 2);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_timer_task_is_restarted_and_shown_in_healthz() {
    let server = NatsServer::start().expect("server");
    let dir = tempfile::tempdir().expect("dir");
    let mut apps = Vec::new();
    for i in 1..=2 {
        let mut cfg = common::node_config(
            "monitor",
            &format!("monitor-{i}"),
            &server.url(),
            dir.path(),
        );
        cfg.core.proposal_timeout = Duration::from_millis(300);
        cfg.core.max_timeouts = 1;
        apps.push(App::start(cfg).await.expect("starts"));
    }
    let node = apps[0].node.clone();
    assert!(
        node.wait_for_active(ibp_wire::Role::Monitor, 2, Duration::from_secs(20))
            .await
    );
    node.inject_timer_panic();
    let http = apps[0].http_addr.to_string();
    until("the panic in /healthz", async || {
        let (s, h) = get(&http, "/healthz").await;
        s == 503
            && h["problems"]
                .as_array()
                .is_some_and(|p| p.iter().any(|x| x["part"] == "timers"))
    })
    .await;
    assert!(node.metrics().handler_panics.get() >= 1);
    // The timers run again: a proposal nobody else votes on times out and fails.
    let mut rx = node.decisions();
    node.observe(ibp_core::Observation::new(
        ibp_core::CheckKey::new(ibp_wire::CheckType::Site, "ping", "Amforc", "", "", false),
        false,
    ))
    .await
    .expect("observe");
    let d = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a decision from the restarted timers")
        .expect("decision");
    assert!(!d.passed && d.by_self, "{d:?}");
    for a in apps {
        a.shutdown().await;
    }
}
