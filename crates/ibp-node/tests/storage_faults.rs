//! Writes that fail: refused for good (set aside, nothing blocked), a locked database (held,
//! retried, `/healthz` tells), numbers past 32 bits — on the real MariaDB.

mod common;

use std::time::Duration;

use chrono::Utc;
use ibp_core::{CheckKey, Observation};
use ibp_node::app::App;
use ibp_node::cluster::Node;
use ibp_node::config::NodeConfig;
use ibp_testkit::{NatsServer, ServerOptions, TestDatabase};
use ibp_wire::{CheckType, Role};

fn key(member: &str) -> CheckKey {
    CheckKey::new(CheckType::Site, "ping", member, "", "", false)
}

async fn decide(ms: &[Node], member: &str, status: bool) {
    for m in &ms[1..] {
        m.set_local(Observation::new(key(member), status))
            .await
            .expect("monitor");
    }
    ms[0]
        .observe(Observation::new(key(member), status))
        .await
        .expect("observe");
    for m in ms {
        assert!(
            m.wait_until(
                |n| n
                    .official()
                    .iter()
                    .any(|(k, o)| *k == key(member) && o.status == status),
                Duration::from_secs(20)
            )
            .await
        );
    }
}

fn collator_cfg(url: &str, db: &str, dir: &std::path::Path, jetstream: bool) -> NodeConfig {
    let mut cfg = common::node_config("collator", "collator-1", url, dir);
    cfg.db = db.to_string();
    cfg.collator.jetstream = jetstream;
    cfg
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, serde_json::Value) {
    common::get(&addr.to_string(), path).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_the_database_refuses_is_set_aside_and_blocks_nothing_behind_it() {
    let server = NatsServer::start().expect("server");
    let db = TestDatabase::create().await.expect("MariaDB");
    let dir = tempfile::tempdir().expect("dir");
    let ms = common::monitor_nodes(&server.url(), 3).await;
    let app = App::start(collator_cfg(&server.url(), &db.url, dir.path(), false))
        .await
        .expect("collator");
    assert!(
        app.node
            .wait_for_active(Role::Monitor, 3, Duration::from_secs(20))
            .await
    );
    // A constraint the data of one member always violates: a permanent refusal.
    db.execute(
        "ALTER TABLE member_events ADD CONSTRAINT no_poison CHECK (member_name <> 'poison')",
    )
    .await
    .expect("constraint");
    let svc = app.collator.clone().expect("collator");
    decide(&ms, "poison", false).await;
    decide(&ms, "healthy-but-down", false).await;
    assert!(
        svc.wait_recorded(1, Duration::from_secs(20)).await,
        "the decision behind the refused one is recorded"
    );
    let open = svc.store().open_events().await.expect("events");
    assert_eq!(open.len(), 1);
    assert_eq!(open[0].member_name, "healthy-but-down");
    // The refused decision may reach the collator after the healthy one (it waits up to
    // the collator's vote grace for its votes): its dead letter can come a moment later.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let dl = loop {
        let (status, dl) = http_get(app.http_addr, "/v1/dead-letters").await;
        assert_eq!(status, 200, "{dl}");
        if dl["total"] == 1 || std::time::Instant::now() > deadline {
            break dl;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(dl["total"], 1, "{dl}");
    assert_eq!(dl["deadLetters"][0]["kind"], "decision");
    assert_eq!(
        dl["deadLetters"][0]["payload"]["key"]["memberName"], "poison",
        "the refused write is kept whole: {dl}"
    );
    let metrics = reqwest::get(format!("http://{}/metrics", app.http_addr))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("ibp_dead_letters_total{kind=\"decision\"} 1"),
        "{metrics}"
    );
    app.shutdown().await;
    for m in ms {
        m.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_database_holds_writes_until_it_returns_and_healthz_says_so() {
    let server = NatsServer::start().expect("server");
    let db = TestDatabase::create().await.expect("MariaDB");
    let dir = tempfile::tempdir().expect("dir");
    let ms = common::monitor_nodes(&server.url(), 3).await;
    let app = App::start(collator_cfg(&server.url(), &db.url, dir.path(), false))
        .await
        .expect("collator");
    assert!(
        app.node
            .wait_for_active(Role::Monitor, 3, Duration::from_secs(20))
            .await
    );
    assert_eq!(http_get(app.http_addr, "/healthz").await.0, 200);
    let mut lock = db.session().await.expect("session");
    lock.execute(
        "LOCK TABLES member_events WRITE, ibp_processed_decisions WRITE, ibp_open_outages WRITE",
    )
    .await
    .expect("lock");
    decide(&ms, "Amforc", false).await;
    let svc = app.collator.clone().expect("collator");
    common::until("healthz to name storage", async || {
        let (status, h) = http_get(app.http_addr, "/healthz").await;
        status == 503
            && h["problems"]
                .as_array()
                .is_some_and(|p| p.iter().any(|x| x["part"] == "storage"))
    })
    .await;
    // A read of the locked table answers within the request time limit instead of hanging.
    let started = std::time::Instant::now();
    let (status, body) = http_get(app.http_addr, "/v1/events").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(svc.recorded(), 0, "held, not recorded and not dropped");
    lock.execute("UNLOCK TABLES").await.expect("unlock");
    assert!(
        svc.wait_recorded(1, Duration::from_secs(30)).await,
        "recorded once the database is back"
    );
    common::until("healthz back to 200", async || {
        http_get(app.http_addr, "/healthz").await.0 == 200
    })
    .await;
    app.shutdown().await;
    for m in ms {
        m.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hits_past_four_billion_are_kept_on_mariadb() {
    let server = NatsServer::start().expect("server");
    let db = TestDatabase::create().await.expect("MariaDB");
    let dir = tempfile::tempdir().expect("dir");
    let mut cfg = common::node_config("dns", "dns-1", &server.url(), dir.path());
    cfg.db = db.url.clone();
    let app = App::start(cfg).await.expect("dns");
    let hit =
        serde_json::json!({"domain": "rpc.example.org", "member": "Amforc", "hits": u32::MAX})
            .to_string();
    for _ in 0..2 {
        let (s, b) = common::post(&app.http_addr.to_string(), "/v1/usage/hits", &hit).await;
        assert_eq!(s, 202, "{b}");
        app.dns.as_ref().expect("dns").flush().await;
    }
    let (s, b) = common::post(&app.http_addr.to_string(), "/v1/usage/hits", &hit).await;
    assert_eq!(s, 202, "{b}");
    app.shutdown().await;
    let store = ibp_storage::Store::open(&db.url).await.expect("open");
    let today = Utc::now().date_naive();
    let totals = store
        .usage_totals_by_node(today, today)
        .await
        .expect("totals");
    assert_eq!(totals, vec![("dns-1".to_string(), 3 * i64::from(u32::MAX))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_collator_counts_its_decisions_in_the_metrics() {
    let server = NatsServer::start_with(ServerOptions {
        jetstream: true,
        ..ServerOptions::default()
    })
    .expect("server");
    let dir = tempfile::tempdir().expect("dir");
    let ms = common::monitor_nodes(&server.url(), 3).await;
    let db = format!("sqlite://{}", dir.path().join("c.db").display());
    let app = App::start(collator_cfg(&server.url(), &db, dir.path(), true))
        .await
        .expect("collator");
    assert!(
        app.node
            .wait_for_active(Role::Monitor, 3, Duration::from_secs(20))
            .await
    );
    decide(&ms, "Amforc", false).await;
    let svc = app.collator.clone().expect("collator");
    assert!(svc.wait_recorded(1, Duration::from_secs(20)).await);
    let metrics = reqwest::get(format!("http://{}/metrics", app.http_addr))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("ibp_decisions_total{outcome=\"passed\",by=\"peer\"}"),
        "{metrics}"
    );
    app.shutdown().await;
    for m in ms {
        m.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_config_says_when_a_migration_needs_a_privilege_the_user_lacks() {
    let db = TestDatabase::create().await.expect("MariaDB");
    // A Go collator's table, with the old key that must be widened, and a user who may
    // read and write but not ALTER.
    db.execute(
        "CREATE TABLE member_events (id INT UNSIGNED NOT NULL AUTO_INCREMENT, check_type VARCHAR(24), check_name VARCHAR(64), \
         endpoint VARCHAR(256), member_name VARCHAR(128), domain_name VARCHAR(128), status TINYINT, is_ipv6 TINYINT, \
         start_time DATETIME NULL DEFAULT CURRENT_TIMESTAMP, end_time DATETIME NULL, error TEXT, vote_data LONGTEXT, \
         additional_data LONGTEXT, PRIMARY KEY (id), \
         UNIQUE KEY uniq_member_event (check_type, check_name, endpoint, member_name, domain_name, is_ipv6))",
    )
    .await
    .expect("go table");
    let user = format!("lim_{}", std::process::id());
    db.execute(&format!("CREATE USER '{user}'@'%' IDENTIFIED BY 'pw'"))
        .await
        .expect("user");
    db.execute(&format!(
        "GRANT SELECT, INSERT, UPDATE, DELETE, CREATE, INDEX ON `{}`.* TO '{user}'@'%'",
        db.name
    ))
    .await
    .expect("grant");
    let host_and_db = db
        .url
        .rsplit_once('@')
        .map(|(_, h)| h.to_string())
        .unwrap_or_else(|| db.url.trim_start_matches("mysql://").to_string());
    let url = format!("mysql://{user}:pw@{host_and_db}");
    let dir = tempfile::tempdir().expect("dir");
    let cfg = dir.path().join("collator.json");
    std::fs::write(
        &cfg,
        serde_json::json!({"IbpNode": {"role": "collator", "db": url, "node_id": "collator-1"}})
            .to_string(),
    )
    .expect("config");
    let out = common::cmd()
        .args(["check-config", "--config", cfg.to_str().expect("utf-8")])
        .output()
        .expect("runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = db.execute(&format!("DROP USER '{user}'@'%'")).await;
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("ALTER: no"), "{text}");
    assert!(
        text.contains("uniq_member_event") && text.contains("would fail"),
        "{text}"
    );
}
