//! The monitor role as a whole (storage, observations, restart) with in-process nodes.

use std::time::Duration;

use ibp_core::{CheckKey, Observation};
use ibp_node::app::App;
use ibp_node::config::{FileConfig, NodeConfig, Overrides};
use ibp_testkit::NatsServer;
use ibp_wire::{CheckType, Role};

fn config(id: &str, url: &str, dir: &std::path::Path) -> NodeConfig {
    let o = Overrides {
        role: Some("monitor".into()),
        node_id: Some(id.into()),
        nats_url: Some(url.into()),
        http: Some("127.0.0.1:0".into()),
        db: Some(format!(
            "sqlite://{}",
            dir.join(format!("{id}.db")).display()
        )),
        work_dir: Some(dir.to_path_buf()),
        dns_listen: None,
    };
    NodeConfig::resolve(&FileConfig::default(), &o).expect("config")
}

fn key() -> CheckKey {
    CheckKey::new(
        CheckType::Domain,
        "ssl",
        "Amforc",
        "rpc.dotters.network",
        "",
        true,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_monitor_keeps_its_official_and_local_results() {
    let server = NatsServer::start().expect("server");
    let dir = tempfile::tempdir().expect("dir");
    let mut apps = Vec::new();
    for i in 1..=3 {
        apps.push(
            App::start(config(&format!("monitor-{i}"), &server.url(), dir.path()))
                .await
                .expect("starts"),
        );
    }
    for a in &apps {
        assert!(
            a.node
                .wait_for_active(Role::Monitor, 3, Duration::from_secs(20))
                .await
        );
    }
    let mut obs = Observation::new(key(), false);
    obs.error_text = "certificate expired".into();
    for a in &apps {
        let r = a
            .monitor
            .as_ref()
            .expect("monitor")
            .observe(&a.node, vec![obs.clone()])
            .await
            .expect("observe");
        assert_eq!(r.len(), 1);
    }
    for a in &apps {
        assert!(
            a.node
                .wait_until(
                    |n| n.official().iter().any(|(k, o)| *k == key() && !o.status),
                    Duration::from_secs(20)
                )
                .await
        );
    }
    // Wait until monitor-3 persisted the official result, then restart it.
    let last = apps.pop().expect("three");
    assert!(
        last.monitor
            .as_ref()
            .expect("monitor")
            .wait_persisted(1, Duration::from_secs(10))
            .await,
        "persisted"
    );
    last.shutdown().await;

    let again = App::start(config("monitor-3", &server.url(), dir.path()))
        .await
        .expect("restarts");
    let official = again.node.official();
    let (_, o) = official
        .iter()
        .find(|(k, _)| *k == key())
        .expect("official result survived the restart");
    assert!(!o.status);
    assert_eq!(o.proposal.error_text, "certificate expired");
    let local = again.node.local();
    assert!(
        local.iter().any(|(k, l)| *k == key() && !l.status),
        "local result survived too"
    );
    // The restored official state is what the Go DNS nodes get from /results.
    let r = reqwest::get(format!("http://{}/results", again.http_addr))
        .await
        .expect("GET /results");
    assert_eq!(
        r.headers()
            .get("X-IBP-Results-Source")
            .and_then(|v| v.to_str().ok()),
        Some("official")
    );
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["DomainResults"][0]["Domain"], "rpc.dotters.network");
    assert_eq!(body["DomainResults"][0]["IsIPv6"], true);
    assert_eq!(
        body["DomainResults"][0]["Results"][0]["ErrorText"],
        "certificate expired"
    );
    // An observation equal to the restored official result proposes nothing.
    let r = again
        .monitor
        .as_ref()
        .expect("monitor")
        .observe(&again.node, vec![Observation::new(key(), false)])
        .await
        .expect("observe");
    assert_eq!(r, vec![ibp_node::roles::ObservationResult::Official]);
    again.shutdown().await;
    for a in apps {
        a.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_fall_back_to_local_observations_before_any_consensus() {
    let server = NatsServer::start().expect("server");
    let dir = tempfile::tempdir().expect("dir");
    let a = App::start(config("monitor-1", &server.url(), dir.path()))
        .await
        .expect("starts");
    // Alone, it cannot decide (fewer than 2 active monitors): only local results exist.
    a.monitor
        .as_ref()
        .expect("monitor")
        .observe(&a.node, vec![Observation::new(key(), true)])
        .await
        .expect("observe");
    let r = reqwest::get(format!("http://{}/results", a.http_addr))
        .await
        .expect("GET");
    assert_eq!(
        r.headers()
            .get("X-IBP-Results-Source")
            .and_then(|v| v.to_str().ok()),
        Some("local")
    );
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["DomainResults"][0]["Results"][0]["Status"], true);
    assert!(
        body["SiteResults"].as_array().is_some_and(Vec::is_empty),
        "arrays are never null"
    );
    a.shutdown().await;
}
