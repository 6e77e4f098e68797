//! A monitor that sees: three `ibp-node run --config <the Go monitor.json fixture>` processes
//! check fake Substrate nodes on loopback themselves, decide together with no POST at all,
//! see a stopped endpoint go offline and come back; `ibp-node check` explains it.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{free_port, get, ready, spawn, until};
use ibp_testkit::NatsServer;
use ibp_testkit::endpoints::{self, Substrate};
use serde_json::{Value, json};

/// The Go monitor fixture, pointed at loopback: the test's NATS, local lists, no MySQL,
/// the wss check enabled and fast.
fn monitor_config(dir: &Path, id: &str, nats: &str, http_port: u16) -> std::path::PathBuf {
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fixtures/go-configs/monitor.json");
    let mut cfg: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture).expect("fixture")).expect("json");
    cfg["System"]["WorkDir"] = json!(dir.join(id).display().to_string());
    cfg["System"]["ConfigUrls"] = json!({
        "MembersConfig": dir.join("members.json").display().to_string(),
        "ServicesConfig": dir.join("services.json").display().to_string(),
    });
    cfg["Nats"] = json!({"NodeID": id, "Url": nats});
    cfg.as_object_mut().expect("object").remove("Mysql");
    cfg["MonitorApi"] = json!({"ListenAddress": "127.0.0.1", "ListenPort": http_port.to_string()});
    for c in cfg["Checks"].as_array_mut().expect("checks") {
        let wss = c["Name"] == "wss";
        c["Enabled"] = json!(if wss { 1 } else { 0 });
        c["minimumInterval"] = json!(1);
        c["Timeout"] = json!(10);
        c["ExtraOptions"] = json!({"ConnectTimeout": 2, "ReadTimeout": 2, "MinimumPeers": 5});
    }
    let path = dir.join(format!("{id}.json"));
    std::fs::write(&path, cfg.to_string()).expect("write config");
    path
}

fn lists(dir: &Path, ports: &[u16]) {
    let members = json!({
        "Alpha": {"Details": {"Name": "Alpha"}, "Membership": {"MemberLevel": 5},
                  "Service": {"Active": 1, "ServiceIPv4": "127.0.0.1", "ServiceIPv6": ""},
                  "ServiceAssignments": {"Test": ["Testnet"]}},
        "Beta":  {"Details": {"Name": "Beta"}, "Membership": {"MemberLevel": 5},
                  "Service": {"Active": 1, "ServiceIPv4": "127.0.0.1", "ServiceIPv6": ""},
                  "ServiceAssignments": {"Test": ["Testnet"]}}
    });
    let urls: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("ws://rpc{i}.example.test:{p}/testnet"))
        .collect();
    let services = json!({
        "Testnet": {"Configuration": {"Name": "Testnet", "ServiceType": "RPC", "Active": 1, "LevelRequired": 1,
                                      "NetworkName": "Testnet", "StateRootHash": "0xabc1"},
                    "Providers": {"P": {"RpcUrls": urls}}}
    });
    std::fs::write(dir.join("members.json"), members.to_string()).expect("members");
    std::fs::write(dir.join("services.json"), services.to_string()).expect("services");
}

/// The official status of `endpoint` for `member` on a monitor, if decided.
async fn official(http: &str, member: &str, endpoint_port: u16) -> Option<bool> {
    let (_, body) = get(http, "/v1/official").await;
    body["results"].as_array().and_then(|rs| {
        rs.iter()
            .find(|r| {
                r["memberName"] == member
                    && r["endpoint"]
                        .as_str()
                        .is_some_and(|e| e.contains(&format!(":{endpoint_port}/")))
            })
            .and_then(|r| r["status"].as_bool())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitors_check_endpoints_themselves_and_decide_an_outage_and_its_end() {
    let server = NatsServer::start().expect("server");
    let dir = tempfile::tempdir().expect("dir");
    let a = endpoints::substrate(Substrate::default(), None)
        .await
        .expect("node a");
    let b = endpoints::substrate(Substrate::default(), None)
        .await
        .expect("node b");
    lists(dir.path(), &[a.port(), b.port()]);
    let mut monitors = Vec::new();
    for i in 1..=3 {
        let port = free_port();
        let cfg = monitor_config(dir.path(), &format!("monitor-{i}"), &server.url(), port);
        let http = format!("127.0.0.1:{port}");
        let mut child = spawn(&["run", "--config", cfg.to_str().expect("utf-8")]);
        ready(&http, &mut child).await;
        monitors.push((child, http, cfg));
    }
    // Every endpoint of every member is checked, proposed and decided up: no POST at all.
    for (_, http, _) in &monitors {
        for m in ["Alpha", "Beta"] {
            for p in [a.port(), b.port()] {
                until("official up from the monitors' own checks", async || {
                    official(http, m, p).await == Some(true)
                })
                .await;
            }
        }
    }
    let (_, checks) = get(&monitors[0].1, "/v1/checks").await;
    assert_eq!(checks["units"], 4, "{checks}");
    assert!(
        checks["checks"][0]["last"]["latencyMs"].is_u64(),
        "{checks}"
    );

    // Node b stops: every monitor sees it fail, and they decide it offline together.
    b.gate.close().await;
    for (_, http, _) in &monitors {
        for m in ["Alpha", "Beta"] {
            until("official offline after the endpoint stopped", async || {
                official(http, m, b.port()).await == Some(false)
            })
            .await;
        }
        assert_eq!(official(http, "Alpha", a.port()).await, Some(true));
    }
    let (_, off) = get(&monitors[1].1, "/v1/official").await;
    let row = off["results"]
        .as_array()
        .and_then(|r| r.iter().find(|x| x["status"] == false).cloned())
        .expect("an offline row");
    assert!(
        row["errorText"]
            .as_str()
            .is_some_and(|e| e.starts_with("Failed to connect on IP=127.0.0.1 => dial tcp")),
        "{row}"
    );
    // The operator asks why.
    let out = common::cmd()
        .args([
            "check",
            "--config",
            monitors[0].2.to_str().expect("utf-8"),
            "--member",
            "Beta",
        ])
        .output()
        .expect("check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "some down: {text}");
    assert!(
        text.contains("DOWN") && text.contains("connection refused") && text.contains("UP"),
        "{text}"
    );

    // It comes back.
    b.gate.open().await.expect("reopen");
    for (_, http, _) in &monitors {
        for m in ["Alpha", "Beta"] {
            until("official up again", async || {
                official(http, m, b.port()).await == Some(true)
            })
            .await;
        }
    }
    let out = common::cmd()
        .args([
            "check",
            "--config",
            monitors[0].2.to_str().expect("utf-8"),
            "--json",
        ])
        .output()
        .expect("check");
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(lines.as_array().map(Vec::len), Some(4));
    for (mut child, _, _) in monitors {
        common::terminate(&mut child, Duration::from_secs(30));
    }
}
