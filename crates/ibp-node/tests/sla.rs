//! The SLA report against a real MariaDB holding rows as both collators write them (this
//! project's, and the Go collator's: numeric check types, `status = 1` when closed): the
//! `ibp-node sla` command and the collator's `GET /v1/sla` give the hand-computed figures.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use ibp_node::app::App;
use ibp_node::cluster::SystemClock;
use ibp_node::ibp_config::{IbpConfig, SharedIbpConfig};
use ibp_storage::{Part, Store};
use ibp_testkit::{NatsServer, TestDatabase};
use serde_json::Value;

fn fixture(f: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../fixtures/ibp-config")
        .join(f)
        .display()
        .to_string()
}

/// October 2026: 744 hours. For Amforc (hand-computed, see `ibp_core::sla` too):
/// * a site outage from 30 Sep 23:00 to 1 Oct 01:00 (IPv4): 1 h inside October;
/// * a domain outage of polkadot.ibp.network 00:30–02:00 (IPv4), overlapping it: the union
///   is 00:00–02:00, 2 h, for Polkadot only;
/// * a Go collator row (type `1`, status 1, closed) 15 Oct 10:00–10:30 (IPv4): 0.5 h;
/// * an endpoint outage of polkadot.dotters.network (Go type `3`) open since 31 Oct 23:30
///   (IPv6): 0.5 h to the end of the month;
/// * a domain outage of a host no service has: nothing.
///
/// Polkadot: IPv4 2.5 h, IPv6 0.5 h, together 3 h → (744 − 3) / 744 = 99.597 %.
/// Kusama: the site outages only, 1.5 h → 99.798 %.
const ROWS: &[&str] = &[
    "('site','ping','','Amforc','',0,0,'2026-09-30 23:00:00','2026-10-01 01:00:00','timeout')",
    "('domain','ssl','','Amforc','polkadot.ibp.network',0,0,'2026-10-01 00:30:00','2026-10-01 02:00:00','expired')",
    "('1','ping','','Amforc','',1,0,'2026-10-15 10:00:00','2026-10-15 10:30:00','loss')",
    "('3','wss','wss://polkadot.dotters.network','Amforc','polkadot.dotters.network',0,1,'2026-10-31 23:30:00',NULL,'no head')",
    "('2','ssl','','Amforc','other.example',1,0,'2026-10-02 00:00:00','2026-10-03 00:00:00','')",
];

async fn database() -> TestDatabase {
    let db = TestDatabase::create().await.expect("MariaDB");
    let store = Store::open(&db.url).await.expect("open");
    store.migrate(&[Part::Events]).await.expect("migrate");
    store.close().await;
    for r in ROWS {
        db.execute(&format!(
            "INSERT INTO member_events (check_type, check_name, endpoint, member_name, domain_name, status, is_ipv6, start_time, end_time, error) VALUES {r}"
        ))
        .await
        .expect("row");
    }
    db
}

fn service<'a>(report: &'a Value, member: &str, service: &str) -> &'a Value {
    report["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["member"] == member))
        .and_then(|m| m["services"].as_array())
        .and_then(|s| s.iter().find(|s| s["service"] == service))
        .unwrap_or_else(|| panic!("{member}/{service} missing"))
}

fn assert_october(r: &Value) {
    assert_eq!(r["month"], "2026-10");
    assert_eq!(r["hours"], 744.0);
    assert_eq!(r["target"], 99.99);
    assert_eq!(
        r["members"].as_array().map(Vec::len),
        Some(7),
        "every member"
    );
    let dot = service(r, "Amforc", "Polkadot");
    assert_eq!(dot["ipv4"]["downtimeHours"], 2.5, "{dot}");
    assert_eq!(dot["ipv6"]["downtimeHours"], 0.5, "{dot}");
    assert_eq!(dot["downtimeHours"], 3.0, "{dot}");
    assert_eq!(dot["availability"], 99.597, "{dot}");
    assert_eq!(dot["belowTarget"], true);
    assert_eq!(dot["outages"].as_array().map(Vec::len), Some(4), "{dot}");
    let ksm = service(r, "Amforc", "Kusama");
    assert_eq!(ksm["downtimeHours"], 1.5, "{ksm}");
    assert_eq!(ksm["availability"], 99.798, "{ksm}");
    let amforc = r["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["member"] == "Amforc"))
        .expect("Amforc");
    assert_eq!(
        amforc["services"].as_array().map(Vec::len),
        Some(22),
        "every service Amforc is assigned"
    );
    let sp = service(r, "Stake Plus", "Polkadot");
    assert_eq!(sp["availability"], 100.0);
    assert_eq!(sp["belowTarget"], false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sla_command_and_api_give_the_hand_computed_figures_from_go_and_rust_rows() {
    let db = database().await;
    let run = |extra: &[&str]| {
        let out = common::cmd()
            .args([
                "sla",
                "--db",
                &db.url,
                "--month",
                "2026-10",
                "--members",
                &fixture("members_professional.json"),
                "--services",
                &fixture("services_rpc.json"),
            ])
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
    let json: Value = serde_json::from_str(&run(&["--json"])).expect("JSON");
    assert_october(&json);
    let csv = run(&["--csv"]);
    assert!(
        csv.lines()
            .any(|l| l == "2026-10,Amforc,Polkadot,all,3,99.597,true"),
        "{csv}"
    );
    assert!(
        csv.lines()
            .any(|l| l == "2026-10,Amforc,Polkadot,ipv6,0.5,99.933,true"),
        "{csv}"
    );
    let table = run(&[]);
    assert!(
        table.lines().any(|l| l.starts_with("Amforc")
            && l.contains("Polkadot")
            && l.contains("99.597 % below")),
        "{table}"
    );

    // A collator on the same database answers the same.
    let server = NatsServer::start().expect("server");
    let dir = tempfile::tempdir().expect("dir");
    let mut cfg = common::node_config("collator", "collator-1", &server.url(), dir.path());
    cfg.db = db.url.clone();
    let lists = IbpConfig::parse(
        &std::fs::read_to_string(fixture("members_professional.json")).expect("members"),
        &std::fs::read_to_string(fixture("services_rpc.json")).expect("services"),
    )
    .expect("lists");
    let app = App::start_with(
        cfg,
        Arc::new(SystemClock::new()),
        Some(SharedIbpConfig::fixed(lists)),
    )
    .await
    .expect("collator");
    let http = app.http_addr.to_string();
    let (s, api) = common::get(&http, "/v1/sla?month=2026-10").await;
    assert_eq!(s, 200, "{api}");
    assert_october(&api);
    assert_eq!(
        api["members"], json["members"],
        "the API and the command agree"
    );
    let (s, bad) = common::get(&http, "/v1/sla?month=2026-13").await;
    assert_eq!(s, 400, "{bad}");
    assert!(
        bad["error"].as_str().is_some_and(|e| e.contains("YYYY-MM")),
        "{bad}"
    );
    let (s, bad) = common::get(&http, "/v1/sla?month=2026-10&member=x").await;
    assert_eq!(s, 400, "{bad}");
    app.shutdown().await;

    let out = common::cmd()
        .args(["sla", "--db", &db.url, "--month", "October"])
        .args(["--members", &fixture("members_professional.json")])
        .args(["--services", &fixture("services_rpc.json")])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--month: \"October\" is not a month"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    db.drop_now().await;
}
