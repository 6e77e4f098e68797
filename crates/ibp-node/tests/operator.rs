//! The binary as an operator's scripts meet it: closed pipes, fatal errors, log colours,
//! Go log levels, and the demo stopped by SIGTERM.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

fn unreachable_run(extra: &[&str], config: Option<&std::path::Path>) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("dir");
    let work = dir.path().display().to_string();
    let mut args: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
    args.extend(
        [
            "run",
            "--role",
            "monitor",
            "--nats-url",
            "nats://127.0.0.1:1",
            "--http",
            "127.0.0.1:0",
            "--work-dir",
            &work,
        ]
        .map(String::from),
    );
    if let Some(c) = config {
        args.push("--config".into());
        args.push(c.display().to_string());
    }
    let out = Command::new(common::BIN)
        .args(&args)
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .expect("runs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_tool_writing_into_a_closed_pipe_ends_quietly() {
    let mut child = Command::new(common::BIN)
        .arg("nats-permissions")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    // The reader goes away before the tool writes (as `| head -c 10` does after 10 bytes).
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_ne!(out.status.code(), Some(101), "{stderr}");
}

#[test]
fn a_fatal_error_is_one_line_once_and_json_with_json_logs() {
    let (code, stderr) = unreachable_run(&[], None);
    assert_eq!(code, Some(1));
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("ibp-node: cannot connect to NATS"),
        "{stderr}"
    );
    assert_eq!(last.matches("cannot connect to NATS").count(), 1, "{last}");

    let (code, stderr) = unreachable_run(&["--log-format", "json"], None);
    assert_eq!(code, Some(1));
    let last = stderr.lines().last().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(last).expect("the final line is JSON");
    assert_eq!(v["level"], "ERROR");
    assert_eq!(
        v["message"]
            .as_str()
            .map(|m| m.matches("cannot connect to NATS").count()),
        Some(1)
    );
}

#[test]
fn logs_into_a_file_or_pipe_carry_no_colour_codes() {
    let (_, stderr) = unreachable_run(&[], None);
    assert!(stderr.contains("INFO"), "{stderr}");
    assert!(!stderr.contains('\u{1b}'), "ANSI escape in: {stderr:?}");
}

#[test]
fn go_log_levels_are_mapped_and_unknown_ones_named() {
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("monitor.json");
    std::fs::write(&file, r#"{"System":{"LogLevel":"Verbose"}}"#).expect("write");
    let (_, stderr) = unreachable_run(&[], Some(&file));
    assert!(
        stderr.contains("System.LogLevel \"Verbose\" is not a level"),
        "{stderr}"
    );
    // Go's own levels are taken as they are (Trace included).
    for level in ["Trace", "debug", "Info", "WARN", "Error", "Fatal"] {
        std::fs::write(&file, format!(r#"{{"System":{{"LogLevel":"{level}"}}}}"#)).expect("write");
        let (_, stderr) = unreachable_run(&[], Some(&file));
        assert!(!stderr.contains("is not a level"), "{level}: {stderr}");
    }
}

#[test]
fn the_demo_stopped_by_sigterm_removes_its_work_directory() {
    let mut child = Command::new(common::BIN)
        .args(["demo", "--keep"])
        .env("RUST_LOG", "warn")
        .current_dir(std::env::temp_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("demo");
    let stdout = child.stdout.take().expect("stdout");
    let mut work = None;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("line");
        if let Some(rest) = line.split("(work dir ").nth(1) {
            work = Some(std::path::PathBuf::from(rest.trim_end_matches(')')));
        }
        if line.contains("to stop.") {
            break;
        }
    }
    let work = work.expect("the demo names its work directory");
    assert!(work.is_dir());
    let (status, _) = common::terminate(&mut child, Duration::from_secs(20));
    assert!(status.success(), "{status}");
    assert!(!work.exists(), "{} left behind", work.display());
}

/// Runs a monitor against `url`; whether it came up (connected), and its log.
async fn monitor_at(url: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("dir");
    let http = format!("127.0.0.1:{}", common::free_port());
    let work = dir.path().display().to_string();
    let mut child = common::spawn(&[
        "run",
        "--role",
        "monitor",
        "--nats-url",
        url,
        "--http",
        &http,
        "--work-dir",
        &work,
    ]);
    let client = reqwest::Client::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client.get(format!("http://{http}/healthz")).send().await
            && r.status().is_success()
        {
            let (_, log) = common::terminate(&mut child, Duration::from_secs(10));
            return (true, log);
        }
        if let Ok(Some(_)) = child.try_wait() {
            return (false, common::log_of(&child));
        }
        assert!(
            std::time::Instant::now() < deadline,
            "neither up nor failed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_the_nats_url_are_used_and_never_shown() {
    use ibp_testkit::{Auth, NatsServer, ServerOptions};
    let server = NatsServer::start_with(ServerOptions {
        auth: Auth::UserPass("bob".into(), "s3cret-pw".into()),
        ..Default::default()
    })
    .expect("nats-server");
    let port = server.port();
    let (up, log) = monitor_at(&format!("nats://bob:s3cret-pw@127.0.0.1:{port}")).await;
    assert!(up, "user:password in the URL: {log}");
    assert!(!log.contains("s3cret-pw"), "{log}");
    let (up, log) = monitor_at(&format!("nats://bob:wrong-pw@127.0.0.1:{port}")).await;
    assert!(!up);
    assert!(log.contains("nats://***@127.0.0.1"), "{log}");
    assert!(!log.contains("wrong-pw"), "{log}");

    let server = NatsServer::start_with(ServerOptions {
        auth: Auth::Token("t0ken-xyz".into()),
        ..Default::default()
    })
    .expect("nats-server");
    let (up, log) = monitor_at(&format!("nats://t0ken-xyz@127.0.0.1:{}", server.port())).await;
    assert!(up, "a token in the URL: {log}");
    assert!(!log.contains("t0ken-xyz"), "{log}");
}

#[test]
fn check_config_refuses_a_nats_url_no_client_could_use() {
    let dir = tempfile::tempdir().expect("dir");
    for bad in [
        "htp:/bad url",
        "http://127.0.0.1:4222",
        "nats://:4222",
        "nats://h:4222/path",
    ] {
        let file = dir.path().join("c.json");
        std::fs::write(&file, serde_json::json!({"Nats": {"Url": bad}}).to_string())
            .expect("write");
        let out = common::cmd()
            .arg("check-config")
            .arg("--config")
            .arg(&file)
            .output()
            .expect("runs");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad:?} accepted");
        assert!(stderr.contains("Nats.Url"), "{bad:?}: {stderr}");
    }
    let file = dir.path().join("ok.json");
    std::fs::write(
        &file,
        r#"{"Nats":{"Url":"nats://a:pw@10.0.0.1:4222, tls://h2:4222,127.0.0.1:4222"}}"#,
    )
    .expect("write");
    let out = common::cmd()
        .arg("check-config")
        .arg("--config")
        .arg(&file)
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(":pw@"),
        "the password is shown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_of_the_nodes_api_has_the_json_shape() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let nats = ibp_testkit::NatsServer::start().expect("nats");
    let dir = tempfile::tempdir().expect("dir");
    let mut cfg = common::node_config("dns", "dns-1", &nats.url(), dir.path());
    cfg.security.http_max_body = 1024;
    let app = ibp_node::app::App::start(cfg).await.expect("starts");
    let http = app.http_addr.to_string();

    // An unknown path.
    let r = reqwest::get(format!("http://{http}/no/such/path"))
        .await
        .expect("GET");
    assert_eq!(r.status().as_u16(), 404);
    let v: serde_json::Value = r.json().await.expect("a JSON body");
    assert!(
        v["error"]
            .as_str()
            .is_some_and(|e| e.contains("/no/such/path")),
        "{v}"
    );
    // A method the route does not take.
    let r = reqwest::get(format!("http://{http}/v1/usage/hits"))
        .await
        .expect("GET");
    assert_eq!(r.status().as_u16(), 405);
    let v: serde_json::Value = r.json().await.expect("a JSON body");
    assert!(v["error"].is_string(), "{v}");
    // A streamed body cut off at the limit.
    let mut tcp = tokio::net::TcpStream::connect(&http)
        .await
        .expect("connect");
    tcp.write_all(b"POST /v1/usage/hits HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        .await
        .expect("head");
    let chunk = format!("{:x}\r\n{}\r\n", 2048, "x".repeat(2048));
    let _ = tcp.write_all(chunk.as_bytes()).await;
    let _ = tcp.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("{\"error\":"), "{answer}");
    // The PowerDNS backend keeps PowerDNS's shape.
    let r = reqwest::Client::new()
        .post(format!("http://{http}/dns"))
        .body("{")
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status().as_u16(), 400);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["result"], "Bad request", "{v}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_and_downtime_exit_non_zero_when_the_answer_is_incomplete() {
    let nats = ibp_testkit::NatsServer::start().expect("nats");
    let dir = tempfile::tempdir().expect("dir");
    let cfg = common::node_config("dns", "dns-1", &nats.url(), dir.path());
    let dns = ibp_node::app::App::start(cfg).await.expect("starts");
    // More than the 366 days a node answers: dns-1 answers with an error.
    let out = common::cmd()
        .args([
            "usage",
            "--nats-url",
            &nats.url(),
            "--from",
            "2024-01-01",
            "--to",
            "2026-01-01",
            "--timeout",
            "10s",
        ])
        .output()
        .expect("usage");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON all the same");
    assert_eq!(out.status.code(), Some(2), "{r}");
    assert_eq!(r["complete"], false, "{r}");
    assert!(r["errors"]["dns-1"].is_string(), "{r}");
    assert!(r["elapsedMs"].is_number(), "{r}");
    // A complete answer exits 0.
    let out = common::cmd()
        .args(["usage", "--nats-url", &nats.url(), "--timeout", "10s"])
        .output()
        .expect("usage");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Go's zero time is "not set": say so.
    let out = common::cmd()
        .args([
            "downtime",
            "--nats-url",
            &nats.url(),
            "--from",
            "0001-01-01T00:00:00Z",
            "--to",
            "2026-01-01T00:00:00Z",
        ])
        .output()
        .expect("downtime");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--from") && stderr.contains("zero time"),
        "{stderr}"
    );
    dns.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_body_and_query_is_validated_by_one_policy() {
    let nats = ibp_testkit::NatsServer::start().expect("nats");
    let dir = tempfile::tempdir().expect("dir");
    let cfg = common::node_config("collator", "collator-1", &nats.url(), dir.path());
    let app = ibp_node::app::App::start(cfg).await.expect("starts");
    let http = app.http_addr.to_string();
    // Unknown fields are refused on every body, naming the field.
    let (s, b) = common::post(
        &http,
        "/v1/usage/collect",
        r#"{"from":"2026-11-01","to":"2026-11-01","dry":true}"#,
    )
    .await;
    assert_eq!(s, 400, "{b}");
    assert!(
        b["error"]
            .as_str()
            .is_some_and(|e| e.contains("body.dry: unknown field")),
        "{b}"
    );
    // Days are YYYY-MM-DD exactly: no sign, no year 0.
    for bad in [
        "-2026-11-30",
        "+2026-11-30",
        "0000-01-01",
        "2026-1-1",
        "2026-11-30x",
    ] {
        let (s, b) = common::get(&http, &format!("/v1/usage?from={bad}")).await;
        assert_eq!(s, 400, "{bad}: {b}");
        let (s, b) = common::post(
            &http,
            "/v1/usage/collect",
            &format!(r#"{{"from":"{bad}","to":"2026-11-30"}}"#),
        )
        .await;
        assert_eq!(s, 400, "{bad}: {b}");
    }
    let (s, b) = common::get(&http, "/v1/usage?from=2026-11-01&to=2026-11-30").await;
    assert_eq!(s, 200, "{b}");
    app.shutdown().await;
}

/// Issue #16 item 11: `check-config` prints the effective configuration with each value's
/// source, as text and as JSON, secrets redacted.
#[test]
fn check_config_prints_every_effective_setting_with_its_source() {
    let fixture = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/go-configs/collator.json");
    let run = |extra: &[&str]| {
        let out = Command::new(common::BIN)
            .args(["check-config", "--offline", "--config"])
            .arg(&fixture)
            .args(extra)
            .output()
            .expect("runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = run(&["--json", "--nats-url", "nats://bob:s3cret@127.0.0.1:4222"]);
    let doc: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let s = &doc["settings"];
    let is = |key: &str, value: serde_json::Value, source: &str| {
        assert_eq!(s[key]["value"], value, "{key}: {}", s[key]);
        assert_eq!(s[key]["source"], source, "{key}: {}", s[key]);
    };
    is(
        "role",
        "collator".into(),
        "the Go config's CollatorApi, Matrix",
    );
    is("node_id", "natsuser".into(), "Nats.NodeID");
    is(
        "http",
        "0.0.0.0:9000".into(),
        "CollatorApi.ListenAddress/ListenPort",
    );
    is(
        "nats.servers",
        "nats://***@127.0.0.1:4222".into(),
        "--nats-url",
    );
    is("nats.user", "natsuser".into(), "Nats.User");
    is("nats.password", "<set>".into(), "Nats.Pass");
    is(
        "db",
        "mysql://collator:***@127.0.0.1:3306/collator".into(),
        "Mysql",
    );
    is("config_reload", "60m".into(), "System.ConfigReloadTime");
    is("consensus.proposal_timeout", "30s".into(), "default");
    is("collator.jetstream", false.into(), "default");
    is("security.mode", "off".into(), "default");
    is(
        "config_urls.MembersConfig",
        "https://raw.githubusercontent.com/ibp-network/config/refs/heads/main/members_professional.json".into(),
        "System.ConfigUrls.MembersConfig",
    );
    for secret in ["s3cret", "natspasswd", "dbpasswd", "matrixpasswd"] {
        assert!(!text.contains(secret), "{secret} printed: {text}");
    }
    let human = run(&[]);
    assert!(
        !human.contains("NodeConfig {") && !human.lines().any(|l| l.trim_end().ends_with("..")),
        "{human}"
    );
    for line in [
        "consensus.proposal_timeout",
        "collator.usage_timeout",
        "(CollatorApi.ListenAddress/ListenPort)",
        "(default)",
    ] {
        assert!(human.contains(line), "{line} missing:\n{human}");
    }
    for secret in ["natspasswd", "dbpasswd"] {
        assert!(!human.contains(secret), "{secret} printed: {human}");
    }
}

/// Issue #14: `ibp-node bench` starts its own nats-server and nodes and prints JSON with
/// every figure (the figures themselves belong to BENCHMARKS.md, not to a test).
#[test]
fn the_bench_command_prints_every_figure_as_json() {
    let out = Command::new(common::BIN)
        .args(["bench", "--quick"])
        .env("RUST_LOG", "warn")
        .output()
        .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let lat = r["decisionLatency"].as_array().expect("latency");
    assert_eq!(
        lat.iter()
            .map(|l| l["monitors"].as_u64())
            .collect::<Vec<_>>(),
        [Some(3), Some(5), Some(9)]
    );
    for l in lat {
        for k in ["p50Ms", "p90Ms", "p99Ms", "maxMs"] {
            assert!(l[k].as_f64().is_some_and(|v| v > 0.0), "{k}: {l}");
        }
    }
    for b in r["burst"].as_array().expect("burst") {
        assert_eq!(b["complete"], true, "{b}");
        assert_eq!(b["lost"], 0, "{b}");
        assert!(b["messagesPerS"].as_f64().is_some_and(|v| v > 0.0), "{b}");
        assert!(b["cpuSPer1000Decisions"].as_f64().is_some(), "{b}");
    }
    for f in r["fanout"].as_array().expect("fanout") {
        assert_eq!(f["complete"], true, "{f}");
        assert_eq!(f["records"], 100_000, "{f}");
    }
    assert!(r["rssMb"]["peak"].as_f64().is_some_and(|v| v > 0.0), "{r}");
}
