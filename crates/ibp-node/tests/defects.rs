//! Defects found by running the release binary as a black box, each with the process-level
//! test that shows it fixed: real `ibp-node` processes, SIGTERM, real SQLite files.

mod common;

use std::time::Duration;

use chrono::Utc;
use common::{free_port, get, log_of, node, post, ready, spawn, terminate, until};
use ibp_storage::Store;
use ibp_testkit::NatsServer;
use serde_json::{Value, json};

async fn dns_rows(db: &str) -> (i64, usize) {
    let store = Store::open(db).await.expect("open the DNS node's file");
    let today = Utc::now().date_naive();
    let totals = store
        .usage_totals_by_node(today, today)
        .await
        .expect("totals");
    let hits = totals.iter().map(|(_, h)| h).sum();
    let rows = store
        .query_usage_by_node(&ibp_storage::UsageFilter {
            from: today,
            to: today,
            domain: String::new(),
            member: String::new(),
            country: String::new(),
        })
        .await
        .expect("rows")
        .len();
    store.close().await;
    (hits, rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_writes_every_hit_a_dns_node_accepted() {
    let server = NatsServer::start().expect("server");
    let dir = tempfile::tempdir().expect("dir");
    let mut dns = node("dns", "dns-1", &server.url(), dir.path()).await;
    let keys = 50_000;
    for chunk in 0..keys / 10_000 {
        let batch: Vec<Value> = (0..10_000)
            .map(|i| {
                let n = chunk * 10_000 + i;
                json!({"domain": "rpc.example.org", "member": "Amforc", "countryCode": "DE",
                       "countryName": "Germany", "asn": format!("AS{n}"), "network": "Net"})
            })
            .collect();
        let (status, body) = post(&dns.http, "/v1/usage/hits", &json!(batch).to_string()).await;
        assert_eq!(status, 202, "{body}");
    }
    let (status, log) = terminate(&mut dns.child, Duration::from_secs(60));
    assert!(status.success(), "{status}\n{log}");
    let db = format!("sqlite://{}", dir.path().join("dns-1.db").display());
    let (hits, rows) = dns_rows(&db).await;
    assert_eq!(
        (hits, rows),
        (keys as i64, keys as usize),
        "every accepted hit is in the table\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitor_stopped_during_a_burst_persists_every_result_it_applied() {
    let server = NatsServer::start().expect("server");
    let dir = tempfile::tempdir().expect("dir");
    let mut a = node("monitor", "monitor-1", &server.url(), dir.path()).await;
    let b = node("monitor", "monitor-2", &server.url(), dir.path()).await;
    until("two active monitors", async || {
        get(&a.http, "/v1/cluster").await.1["activeMonitors"] == 2
    })
    .await;
    let checks = 6_000;
    let obs = |i: usize| {
        json!({"checkType":"site","checkName":"ping","memberName":format!("member-{i}"),
               "isIPv6":false,"status":false,"errorText":"timeout"})
    };
    for start in (0..checks).step_by(1_000) {
        let batch: Vec<Value> = (start..start + 1_000).map(obs).collect();
        let body = json!(batch).to_string();
        let (s1, r1) = post(&b.http, "/v1/observations", &body).await;
        assert_eq!(s1, 202, "{r1}");
        let (s2, r2) = post(&a.http, "/v1/observations", &body).await;
        assert_eq!(s2, 202, "{r2}");
    }
    // Stop it while decisions are still being applied.
    let mut applied = 0;
    until("a thousand decisions applied", async || {
        applied = get(&a.http, "/v1/official").await.1["results"]
            .as_array()
            .map(Vec::len)
            .unwrap_or(0);
        applied >= 1_000
    })
    .await;
    let (status, log) = terminate(&mut a.child, Duration::from_secs(120));
    assert!(status.success(), "{status}\n{log}");
    let store = Store::open(&format!(
        "sqlite://{}",
        dir.path().join("monitor-1.db").display()
    ))
    .await
    .expect("open");
    let official = store
        .load_results(ibp_storage::ResultKind::Official)
        .await
        .expect("results");
    let open = store.open_events().await.expect("events");
    assert!(
        official.len() >= applied,
        "{} persisted, {applied} were applied before SIGTERM\n{log}",
        official.len()
    );
    assert_eq!(
        open.len(),
        official.len(),
        "every applied outage has its open event, written with it"
    );
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_node_is_never_counted_twice_when_it_restarts_or_changes_its_id() {
    let server = NatsServer::start().expect("server");
    let dir = tempfile::tempdir().expect("dir");
    let work = dir.path().join("dns-work");
    let db = format!("sqlite://{}", dir.path().join("dns.db").display());
    let url = server.url();
    let start_dns = async |id: Option<&str>| {
        let http = format!("127.0.0.1:{}", free_port());
        let mut args = vec![
            "run",
            "--role",
            "dns",
            "--nats-url",
            &url,
            "--http",
            &http,
            "--db",
            &db,
            "--work-dir",
            work.to_str().expect("utf-8"),
        ];
        if let Some(id) = id {
            args.extend(["--node-id", id]);
        }
        let mut child = spawn(&args);
        ready(&http, &mut child).await;
        (child, http)
    };
    let collator = node("collator", "collator-1", &server.url(), dir.path()).await;
    let today = Utc::now().date_naive().format("%Y-%m-%d").to_string();
    let collect = async || {
        let (status, report) = post(
            &collator.http,
            "/v1/usage/collect",
            &json!({"from": today, "to": today}).to_string(),
        )
        .await;
        assert_eq!(status, 200, "{report}");
        let (_, totals) = get(&collator.http, "/v1/usage").await;
        totals["hitsByNode"].clone()
    };
    let hits =
        |n: u64| json!({"domain": "rpc.example.org", "member": "Amforc", "hits": n}).to_string();

    // No ID configured: one is made and kept in the work directory.
    let (mut child, http) = start_dns(None).await;
    let (_, h) = get(&http, "/healthz").await;
    let first_id = h["nodeId"].as_str().expect("id").to_string();
    assert!(
        first_id.starts_with("dns-") && first_id.len() <= 32,
        "{first_id}"
    );
    assert_eq!(post(&http, "/v1/usage/hits", &hits(100)).await.0, 202);
    until("the collator to know the DNS node", async || {
        get(&collator.http, "/v1/cluster").await.1["activeDns"] == 1
    })
    .await;
    terminate(&mut child, Duration::from_secs(30));
    let (mut child, http) = start_dns(None).await;
    let (_, h) = get(&http, "/healthz").await;
    assert_eq!(
        h["nodeId"],
        first_id.as_str(),
        "the same ID after a restart"
    );
    assert_eq!(post(&http, "/v1/usage/hits", &hits(10)).await.0, 202);
    terminate(&mut child, Duration::from_secs(30));
    let (mut child, _) = start_dns(None).await;
    until("the collator to see the DNS node again", async || {
        get(&collator.http, "/v1/cluster").await.1["activeDns"] == 1
    })
    .await;
    let totals = collect().await;
    assert_eq!(totals, json!({ first_id.clone(): 110 }), "{totals}");
    terminate(&mut child, Duration::from_secs(30));

    // The ID changes (an operator sets one): old rows stay under the old ID.
    let (mut child, http) = start_dns(Some("dns-renamed")).await;
    assert_eq!(post(&http, "/v1/usage/hits", &hits(5)).await.0, 202);
    terminate(&mut child, Duration::from_secs(30));
    let (mut child, _) = start_dns(Some("dns-renamed")).await;
    until("the renamed DNS node to be known", async || {
        get(&collator.http, "/v1/cluster").await.1["nodes"]
            .as_array()
            .is_some_and(|n| {
                n.iter()
                    .any(|x| x["nodeId"] == "dns-renamed" && x["active"] == true)
            })
    })
    .await;
    // Until the old ID goes stale, the collator waits for it too; either way the totals
    // must count each hit once.
    let totals = collect().await;
    assert_eq!(
        totals,
        json!({ first_id.clone(): 110, "dns-renamed": 5 }),
        "115 real hits, counted once each: {totals}"
    );
    terminate(&mut child, Duration::from_secs(30));
}

/// A node a test starts stops when the test lets go of it, passing or failing. A dropped
/// `std::process::Child` keeps running: two crash tests left two monitors each behind after
/// every run (found orphaned on the CI machine, retrying a nats-server long gone).
#[test]
fn a_node_a_test_starts_is_gone_when_the_test_drops_it() {
    let dir = tempfile::tempdir().expect("dir");
    // Nothing listens on that NATS port: the node stays up, retrying, as the leaked ones did.
    let nats = format!("nats://127.0.0.1:{}", free_port());
    let (child, _) = common::spawn_node("monitor", "leak-check", &nats, dir.path());
    let proc_dir = std::path::PathBuf::from(format!("/proc/{}", child.id()));
    assert!(proc_dir.exists(), "started");
    drop(child);
    assert!(
        !proc_dir.exists(),
        "the node outlived the test's handle to it"
    );
}

#[test]
fn a_dns_node_id_longer_than_its_column_is_refused_at_start() {
    let id = "dns-frankfurt-production-cluster-node-01";
    let out = common::cmd()
        .current_dir(std::env::temp_dir())
        .args([
            "run",
            "--role",
            "dns",
            "--node-id",
            id,
            "--nats-url",
            "nats://127.0.0.1:1",
            "--http",
            "127.0.0.1:0",
        ])
        .output()
        .expect("runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--node-id") && err.contains("requests.node_id") && err.contains("at most 32"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shot_tools_never_take_a_live_nodes_place() {
    let server = NatsServer::start().expect("server");
    let dir = tempfile::tempdir().expect("dir");
    let mut ms = Vec::new();
    for i in 1..=3 {
        ms.push(
            node(
                "monitor",
                &format!("monitor-{i}"),
                &server.url(),
                dir.path(),
            )
            .await,
        );
    }
    let dns = node("dns", "dns-1", &server.url(), dir.path()).await;
    until("three monitors and a DNS node", async || {
        let c = get(&ms[0].http, "/v1/cluster").await.1;
        c["activeMonitors"] == 3 && c["activeDns"] == 1
    })
    .await;
    let url = server.url();
    let tool = |args: &[&str]| {
        let mut a = args.to_vec();
        a.extend(["--nats-url", &url, "--timeout", "5s"]);
        common::cmd().args(&a).output().expect("runs")
    };
    let from = (Utc::now() - chrono::TimeDelta::hours(1)).to_rfc3339();
    let to = (Utc::now() + chrono::TimeDelta::hours(1)).to_rfc3339();
    // Borrowing a live node's ID is impossible: a tool's ID is its own.
    let out = tool(&[
        "downtime",
        "--from",
        &from,
        "--to",
        &to,
        "--node-id",
        "monitor-1",
    ]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("must not contain"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = tool(&["downtime", "--from", &from, "--to", &to, "--node-id", "ops"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = tool(&["usage"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["answered"], json!(["dns-1"]));
    // Nobody lost a monitor or the DNS node, and no tool counts as anything.
    for m in &ms {
        let (_, c) = get(&m.http, "/v1/cluster").await;
        assert_eq!(c["activeMonitors"], 3, "{c}");
        assert_eq!(c["activeDns"], 1, "{c}");
        assert_eq!(c["activeCollators"], 0, "{c}");
        let tools: Vec<&Value> = c["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .filter(|n| {
                n["nodeId"]
                    .as_str()
                    .is_some_and(|i| i.starts_with("ops-") || i.starts_with("ibp-cli-"))
            })
            .collect();
        assert!(
            tools
                .iter()
                .all(|t| t["role"] == "" && t["active"] == false),
            "tools are role-less and gone after their leave: {tools:?}"
        );
    }
    drop(dns);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_live_nodes_with_one_id_both_say_so_in_healthz() {
    let server = NatsServer::start().expect("server");
    let dir = tempfile::tempdir().expect("dir");
    let a = node("monitor", "monitor-1", &server.url(), &dir.path().join("a")).await;
    let b = node("monitor", "monitor-1", &server.url(), &dir.path().join("b")).await;
    for p in [&a, &b] {
        until("the conflict to show in /healthz", async || {
            let (status, h) = get(&p.http, "/healthz").await;
            status == 503
                && h["problems"]
                    .as_array()
                    .is_some_and(|ps| ps.iter().any(|x| x["part"] == "nodeId"))
        })
        .await;
    }
    let log = log_of(&a.child) + &log_of(&b.child);
    assert!(
        log.contains("another live node uses this node's ID"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_says_503_while_nats_is_away_and_livez_stays_200() {
    let mut server = NatsServer::start().expect("server");
    let dir = tempfile::tempdir().expect("dir");
    let m = node("monitor", "monitor-1", &server.url(), dir.path()).await;
    assert_eq!(get(&m.http, "/healthz").await.0, 200);
    server.stop();
    until("503 naming nats", async || {
        let (status, h) = get(&m.http, "/healthz").await;
        status == 503 && h["problems"][0]["part"] == "nats"
    })
    .await;
    assert_eq!(get(&m.http, "/livez").await.0, 200);
    server.restart().expect("restart");
    until("200 again", async || {
        get(&m.http, "/healthz").await.0 == 200
    })
    .await;
}
