//! `ibp-node` as an operator runs it: processes started like from a shell, one real
//! nats-server, the HTTP API, signals, bad input.

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use ibp_testkit::NatsServer;
use serde_json::{Value, json};

use common::{free_port, get, node, post, until};

fn observation(member: &str, status: bool) -> Value {
    json!({"checkType":"endpoint","checkName":"wss","memberName":member,"domainName":"rpc.dotters.network",
           "endpoint":"wss://rpc.dotters.network/polkadot","isIPv6":false,"status":status,"errorText": if status {""} else {"timeout"},
           "data":{"PeerCount":0}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_monitor_processes_reach_consensus_through_the_http_api() {
    let server = NatsServer::start().expect("server");
    let dir = tempfile::tempdir().expect("dir");
    let mut ps = Vec::new();
    for i in 1..=5 {
        ps.push(
            node(
                "monitor",
                &format!("monitor-{i}"),
                &server.url(),
                dir.path(),
            )
            .await,
        );
    }
    for p in &ps {
        until("5 active monitors", async || {
            get(&p.http, "/v1/cluster").await.1["activeMonitors"] == 5
        })
        .await;
    }
    // Three monitors see the endpoint down: a majority of five.
    for p in &ps[..3] {
        let (status, body) = post(
            &p.http,
            "/v1/observations",
            &observation("Stake Plus", false).to_string(),
        )
        .await;
        assert_eq!(status, 202, "{body}");
        assert!(
            ["proposed", "voted", "decided", "official"]
                .contains(&body["results"][0]["result"].as_str().unwrap_or("")),
            "{body}"
        );
    }
    for p in &ps {
        until("official offline everywhere", async || {
            let (_, body) = get(&p.http, "/v1/official").await;
            body["results"].as_array().is_some_and(|r| {
                r.iter()
                    .any(|x| x["memberName"] == "Stake Plus" && x["status"] == false)
            })
        })
        .await;
    }
    let views: Vec<Value> = futures_all(ps.iter().map(|p| p.http.clone()).collect()).await;
    for v in &views[1..] {
        assert_eq!(
            strip(v),
            strip(&views[0]),
            "all five agree on the official results"
        );
    }
    // The Go snapshot DNS nodes poll.
    let r = reqwest::get(format!("http://{}/results", ps[4].http))
        .await
        .expect("GET /results");
    assert_eq!(
        r.headers()
            .get("X-IBP-Results-Source")
            .and_then(|h| h.to_str().ok()),
        Some("official")
    );
    let snap: Value = r.json().await.expect("json");
    let ep = &snap["EndpointResults"][0];
    assert_eq!(ep["RpcUrl"], "wss://rpc.dotters.network/polkadot");
    assert_eq!(ep["Results"][0]["Status"], false);
    assert!(
        snap["SiteResults"].as_array().is_some_and(Vec::is_empty)
            && snap["DomainResults"].is_array()
    );

    // The one-shot downtime collector asks every monitor.
    let from = (chrono::Utc::now() - chrono::TimeDelta::hours(1)).to_rfc3339();
    let to = (chrono::Utc::now() + chrono::TimeDelta::hours(1)).to_rfc3339();
    let out = common::cmd()
        .args([
            "downtime",
            "--nats-url",
            &server.url(),
            "--from",
            &from,
            "--to",
            &to,
            "--timeout",
            "10s",
        ])
        .output()
        .expect("downtime");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(
        report["answered"].as_array().map(Vec::len),
        Some(5),
        "{report}"
    );
    assert_eq!(
        report["records"].as_array().map(Vec::len),
        Some(5),
        "each monitor recorded the outage: {report}"
    );

    // SIGTERM: a clean leave, within 5 s; the others stop counting it at once.
    let mut last = ps.pop().expect("five");
    let started = Instant::now();
    // SAFETY: kill(2) on our own child's PID.
    unsafe { libc_kill(last.child.id() as i32, 15) };
    let status = last.child.wait().expect("exits");
    assert!(status.success(), "exit status {status}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shut down in {:?}",
        started.elapsed()
    );
    let gone = last.id.clone();
    until("the leave to be seen", async || {
        let (_, c) = get(&ps[0].http, "/v1/cluster").await;
        c["activeMonitors"] == 4
            && c["nodes"].as_array().is_some_and(|n| {
                n.iter()
                    .any(|x| x["nodeId"] == gone.as_str() && x["left"] == true)
            })
    })
    .await;
}

unsafe extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

async fn futures_all(https: Vec<String>) -> Vec<Value> {
    let mut out = Vec::new();
    for h in https {
        out.push(get(&h, "/v1/official").await.1);
    }
    out
}

/// The official view without the per-node timestamps.
fn strip(v: &Value) -> Value {
    let mut rows: Vec<Value> = v["results"].as_array().cloned().unwrap_or_default();
    for r in &mut rows {
        if let Some(o) = r.as_object_mut() {
            o.remove("appliedAt");
        }
    }
    Value::Array(rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_400_naming_the_field_and_record_nothing() {
    let server = NatsServer::start().expect("server");
    let dir = tempfile::tempdir().expect("dir");
    let m = node("monitor", "monitor-1", &server.url(), dir.path()).await;
    let good = observation("Amforc", true);
    let cases: Vec<(String, &str)> = vec![
        ("{not json".into(), "not valid JSON"),
        ("42".into(), "object or an array"),
        ("[]".into(), "no observations"),
        (json!([good, {"checkType":"site","checkName":"ping","memberName":"x","isIPv6":false}]).to_string(), "observations[1].status: missing"),
        (json!({"checkType":"planet","checkName":"c","memberName":"m","isIPv6":false,"status":true}).to_string(), "observations[0].checkType"),
        (json!({"checkType":"site","checkName":"","memberName":"m","isIPv6":false,"status":true}).to_string(), "observations[0].checkName: must not be empty"),
        (json!({"checkType":"endpoint","checkName":"wss","memberName":"m","domainName":"d","isIPv6":false,"status":true}).to_string(), "observations[0].endpoint: missing"),
        (json!({"checkType":"site","checkName":"p","memberName":"m","isIPv6":"no","status":true}).to_string(), "observations[0].isIPv6: expected a boolean"),
        (json!({"checkType":"site","checkName":"p","memberName":"m","isIPv6":false,"status":true,"stauts":1}).to_string(), "observations[0].stauts: unknown field"),
        (json!({"checkType":"site","checkName":"p","memberName":"m","isIPv6":false,"status":true,"data":[1]}).to_string(), "observations[0].data"),
    ];
    for (body, want) in cases {
        let (status, resp) = post(&m.http, "/v1/observations", &body).await;
        assert_eq!(status, 400, "{body} → {resp}");
        let msg = resp["error"].as_str().unwrap_or_default();
        assert!(
            msg.contains(want),
            "{body}: {msg:?} should mention {want:?}"
        );
    }
    let (_, local) = get(&m.http, "/v1/local").await;
    assert_eq!(
        local["results"].as_array().map(Vec::len),
        Some(0),
        "nothing recorded from rejected requests: {local}"
    );
    let (status, body) = get(&m.http, "/v1/events?from=2026-02-01&to=2026-01-01").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap_or_default().contains("after"),
        "{body}"
    );
    let (status, _) = get(&m.http, "/v1/events?member=Amforc").await;
    assert_eq!(status, 200);
    // Wrong role, health, metrics.
    let (status, _) = post(&m.http, "/v1/usage/hits", r#"{"domain":"x"}"#).await;
    assert_eq!(status, 404);
    let (status, h) = get(&m.http, "/healthz").await;
    assert_eq!(status, 200);
    assert_eq!(
        (h["nodeId"].as_str(), h["role"].as_str(), h["nats"].as_str()),
        (Some("monitor-1"), Some("monitor"), Some("connected"))
    );
    let metrics = reqwest::get(format!("http://{}/metrics", m.http))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for name in [
        "ibp_messages_in",
        "ibp_messages_out",
        "ibp_decode_failures",
        "ibp_decisions",
        "ibp_decision_latency_seconds",
        "ibp_active_nodes",
        "ibp_nats_reconnects",
        "ibp_proposals_tracked",
        "ibp_fanout_duration_seconds",
        "ibp_core_events",
    ] {
        assert!(
            metrics.contains(&format!("# TYPE {name} ")),
            "{name} missing from /metrics:\n{metrics}"
        );
    }
    assert!(
        metrics.contains(r#"ibp_active_nodes{role="monitor"} 1"#),
        "{metrics}"
    );
}

fn run_fail(args: &[&str]) -> Output {
    let out = common::cmd()
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .expect("runs");
    assert!(!out.status.success(), "{args:?} should fail");
    out
}

fn last_line(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_start_exits_non_zero_with_a_one_line_reason() {
    let dir = tempfile::tempdir().expect("dir");
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"Nats":{"NodeID":"has space"}}"#).expect("write");
    let out = run_fail(&["run", "--config", &bad.display().to_string()]);
    assert!(
        last_line(&out).contains("Nats.NodeID"),
        "{}",
        last_line(&out)
    );
    let out = run_fail(&["run", "--config", "/nonexistent.json"]);
    assert!(
        last_line(&out).contains("cannot read"),
        "{}",
        last_line(&out)
    );

    let dead = free_port();
    let db = format!("sqlite://{}", dir.path().join("x.db").display());
    let http = format!("127.0.0.1:{}", free_port());
    let out = run_fail(&[
        "run",
        "--nats-url",
        &format!("nats://127.0.0.1:{dead}"),
        "--http",
        &http,
        "--db",
        &db,
    ]);
    assert!(
        last_line(&out).contains("cannot connect to NATS"),
        "{}",
        last_line(&out)
    );

    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    let out = run_fail(&["run", "--http", &format!("127.0.0.1:{port}"), "--db", &db]);
    assert!(
        last_line(&out).contains("cannot listen"),
        "{}",
        last_line(&out)
    );
    let out = run_fail(&["run", "--role", "router"]);
    assert!(last_line(&out).contains("--role"), "{}", last_line(&out));
    let out = run_fail(&["usage", "--from", "2026-02-30"]);
    assert!(last_line(&out).contains("--from"), "{}", last_line(&out));
}

#[test]
fn every_command_has_help_and_version_works() {
    for cmd in [
        vec!["--help"],
        vec!["run", "--help"],
        vec!["usage", "--help"],
        vec!["downtime", "--help"],
        vec!["demo", "--help"],
        vec!["check-config", "--help"],
        vec!["check", "--help"],
        vec!["keygen", "--help"],
        vec!["nats-permissions", "--help"],
    ] {
        let out = common::cmd().args(&cmd).output().expect("runs");
        assert!(out.status.success(), "{cmd:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage:"),
            "{cmd:?}"
        );
    }
    let out = common::cmd().arg("--version").output().expect("runs");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ibp-node "));
}

#[test]
fn keygen_writes_a_private_seed_prints_the_public_key_last_and_never_overwrites() {
    let dir = tempfile::tempdir().expect("dir");
    let p = dir.path().join("monitor-1.nk");
    let out = common::cmd()
        .args(["keygen", "--out"])
        .arg(&p)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let public = stdout.lines().last().unwrap_or_default().trim().to_string();
    let seed = std::fs::read_to_string(&p).expect("seed file");
    let id = ibp_trust::Identity::from_seed(&seed).expect("a user seed");
    assert_eq!(public, id.public_key(), "the last line is the public key");
    assert!(!stdout.contains(seed.trim()), "the seed is never printed");
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let again = common::cmd()
        .args(["keygen", "--out"])
        .arg(&p)
        .output()
        .expect("runs");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"));
    assert_eq!(
        std::fs::read_to_string(&p).expect("read"),
        seed,
        "untouched"
    );
}

#[test]
fn check_config_accepts_the_go_fixtures() {
    let dir =
        std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/go-configs");
    for (f, role) in [
        ("monitor.json", "monitor"),
        ("dns.json", "dns"),
        ("collator.json", "collator"),
    ] {
        let out = common::cmd()
            .args([
                "check-config",
                "--offline",
                "--config",
                &dir.join(f).display().to_string(),
                "--role",
                role,
            ])
            .output()
            .expect("runs");
        assert!(
            out.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !text.contains("__SET_ME__") && !text.contains("password123"),
            "secrets printed: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_its_script_with_real_checks_and_dns_answers_and_exits_zero() {
    let out = common::cmd()
        .arg("demo")
        .env("RUST_LOG", "warn")
        .output()
        .expect("demo runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "cluster formed",
        "Syncing or not enough peers",
        "consensus: OFFLINE",
        "consensus: ONLINE",
        // The answers of dns-1's own DNS listener follow both decisions.
        "is out of the answers",
        "again (",
        "collator recorded the outage",
        "=== summary ===",
        "usage collected per DNS node",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_hits_over_http_are_flushed_on_shutdown_and_collected() {
    let server = NatsServer::start().expect("server");
    let dir = tempfile::tempdir().expect("dir");
    let mut d = node("dns", "dns-1", &server.url(), dir.path()).await;
    let (status, body) = post(&d.http, "/v1/usage/hits", &json!([{"domain":"rpc.dotters.network","member":"Amforc","countryCode":"de","countryName":"Germany","hits":40},{"domain":"rpc.dotters.network","hits":2}]).to_string()).await;
    assert_eq!(status, 202, "{body}");
    for (bad, field) in [
        (r#"[{"domain":"d","hits":5000000000}]"#, "hits[0].hits"),
        (r#"[{"domain":"d","hits":"7"}]"#, "hits[0].hits"),
        (r#"[{"domain":"d","date":"20261127"}]"#, "hits[0].date"),
        (r#"[{"domain":"d","isIPv6":1}]"#, "hits[0].isIPv6"),
        (r#"[{"domain":"d","colour":"red"}]"#, "hits[0].colour"),
    ] {
        let (status, body) = post(&d.http, "/v1/usage/hits", bad).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(
            body["error"]
                .as_str()
                .unwrap_or_default()
                .starts_with(field),
            "{bad}: {body}"
        );
    }
    let (status, body) = post(&d.http, "/v1/usage/hits", r#"[{"domain":""}]"#).await;
    assert_eq!(
        (
            status,
            body["error"]
                .as_str()
                .unwrap_or_default()
                .contains("hits[0].domain")
        ),
        (400, true),
        "{body}"
    );
    // Nothing counted is lost on a clean stop: the counters are flushed at shutdown.
    unsafe { libc_kill(d.child.id() as i32, 15) };
    assert!(d.child.wait().expect("exits").success());
    let store = ibp_storage::Store::open(&format!(
        "sqlite://{}",
        dir.path().join("dns-1.db").display()
    ))
    .await
    .expect("store");
    let today = chrono::Utc::now().date_naive();
    let totals = store
        .usage_totals_by_node(today, today)
        .await
        .expect("totals");
    assert_eq!(totals, vec![("dns-1".to_string(), 42)]);
    store.close().await;
    drop(d);
    // Restarted, it answers a usage collection with what was stored.
    let d = node("dns", "dns-1", &server.url(), dir.path()).await;
    let c = node("collator", "collator-1", &server.url(), dir.path()).await;
    until("the collator to see the DNS node", async || {
        get(&c.http, "/v1/cluster").await.1["activeDns"] == 1
    })
    .await;
    let day = today.format("%Y-%m-%d").to_string();
    let (status, report) = post(
        &c.http,
        "/v1/usage/collect",
        &json!({"from": day, "to": day}).to_string(),
    )
    .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["hitsByNode"]["dns-1"], 42, "{report}");
    // The one-shot usage collector sees the same.
    let out = common::cmd()
        .args([
            "usage",
            "--nats-url",
            &server.url(),
            "--from",
            &day,
            "--to",
            &day,
            "--aggregate",
            "--timeout",
            "10s",
        ])
        .output()
        .expect("usage");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(r["answered"], json!(["dns-1"]), "{r}");
    assert!(
        r["records"]
            .as_array()
            .is_some_and(|a| a.iter().all(|x| x["nodeid"] == "dns-1")),
        "{r}"
    );
    let total: i64 = r["aggregated"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x["hits"].as_i64()).sum())
        .unwrap_or(0);
    assert_eq!(total, 42, "{r}");
    let (status, e) = post(
        &c.http,
        "/v1/usage/collect",
        r#"{"from":"2026-01-02","to":"2026-01-01"}"#,
    )
    .await;
    assert_eq!(status, 400, "{e}");
    drop(d);
}

/// Issue #16 item 16: each observation's result says what really happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observation_results_say_what_happened_and_a_batch_counts_its_last_value_per_check() {
    let server = NatsServer::start().expect("server");
    let dir = tempfile::tempdir().expect("dir");
    let mut ps = Vec::new();
    for i in 1..=3 {
        ps.push(
            node(
                "monitor",
                &format!("monitor-{i}"),
                &server.url(),
                dir.path(),
            )
            .await,
        );
    }
    for p in &ps {
        until("3 active monitors", async || {
            get(&p.http, "/v1/cluster").await.1["activeMonitors"] == 3
        })
        .await;
    }
    let post_one = async |http: &str, body: &Value| {
        let (status, body) = post(http, "/v1/observations", &body.to_string()).await;
        assert_eq!(status, 202, "{body}");
        body["results"].clone()
    };
    // The same pending observation posted five times: one proposal, then votes on it.
    let down = observation("Stake Plus", false);
    let first = post_one(&ps[0].http, &down).await;
    assert_eq!(first[0]["result"], "proposed", "{first}");
    let id = first[0]["proposalId"]
        .as_str()
        .expect("proposalId")
        .to_string();
    for _ in 0..4 {
        let again = post_one(&ps[0].http, &down).await;
        assert_eq!(again[0]["result"], "voted", "{again}");
        assert_eq!(again[0]["proposalId"], id.as_str(), "{again}");
    }
    let tracked_for = async |http: &str, member: &str| -> Vec<Value> {
        get(http, "/v1/proposals").await.1["proposals"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|p| p["proposal"]["MemberName"] == member)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    };
    let one = tracked_for(&ps[0].http, "Stake Plus").await;
    assert_eq!(one.len(), 1, "one proposal exists: {one:?}");
    // The second monitor, once it holds the proposal and the first one's vote, decides it.
    until(
        "monitor-2 holds the proposal and monitor-1's vote",
        async || {
            tracked_for(&ps[1].http, "Stake Plus")
                .await
                .first()
                .is_some_and(|p| p["votes"]["monitor-1"] == true)
        },
    )
    .await;
    let decided = post_one(&ps[1].http, &down).await;
    assert_eq!(decided[0]["result"], "decided", "{decided}");
    assert_eq!(decided[0]["proposalId"], id.as_str(), "{decided}");
    let (_, official) = get(&ps[1].http, "/v1/official").await;
    assert!(
        official["results"].as_array().is_some_and(|r| r
            .iter()
            .any(|x| x["memberName"] == "Stake Plus" && x["status"] == false)),
        "{official}"
    );
    // ... and once it is official everywhere, the third monitor's equal observation is just that.
    until("official on monitor-3", async || {
        get(&ps[2].http, "/v1/official").await.1["results"]
            .as_array()
            .is_some_and(|r| r.iter().any(|x| x["memberName"] == "Stake Plus"))
    })
    .await;
    let same = post_one(&ps[2].http, &down).await;
    assert_eq!(same[0]["result"], "official", "{same}");
    assert!(same[0].get("proposalId").is_none(), "{same}");

    // A batch [down, up, down] of one check is one observation: down.
    let batch = json!([
        observation("Amforc", false),
        observation("Amforc", true),
        observation("Amforc", false)
    ]);
    let r = post_one(&ps[2].http, &batch).await;
    assert_eq!(r[0]["result"], "superseded", "{r}");
    assert_eq!(r[1]["result"], "superseded", "{r}");
    assert_eq!(r[2]["result"], "proposed", "{r}");
    let amforc = tracked_for(&ps[2].http, "Amforc").await;
    assert_eq!(amforc.len(), 1, "{amforc:?}");
    assert_eq!(amforc[0]["proposal"]["ProposedStatus"], false);
    assert_eq!(
        amforc[0]["votes"]["monitor-3"], true,
        "its proposer votes for it"
    );
    let (_, local) = get(&ps[2].http, "/v1/local").await;
    assert!(
        local["results"].as_array().is_some_and(|r| r
            .iter()
            .any(|x| x["memberName"] == "Amforc" && x["status"] == false)),
        "the local result is the batch's last value: {local}"
    );
    drop(ps);
}
