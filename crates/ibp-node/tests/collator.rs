//! The collator: outages from consensus, hourly usage, durable decisions — on SQLite and on
//! the real MariaDB, with real nats-server processes.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{NaiveDate, TimeZone, Utc};
use ibp_core::{CheckKey, Observation};
use ibp_node::app::App;
use ibp_node::cluster::{Node, NodeOptions};
use ibp_node::config::{FileConfig, NodeConfig, Overrides};
use ibp_node::roles::{CollatorService, DnsService, HitLimits, StorageHealth};
use ibp_storage::{Store, UsageRow};
use ibp_testkit::{NatsServer, ServerOptions, TestDatabase};
use ibp_wire::{CheckType, NodeId, Role};

fn key() -> CheckKey {
    CheckKey::new(
        CheckType::Endpoint,
        "wss",
        "alpha",
        "rpc.alpha.io",
        "wss://rpc.alpha.io/polkadot",
        false,
    )
}

/// All monitors observe `status`; the first proposes; waits until every monitor applied it.
async fn decide(ms: &[Node], status: bool) {
    for m in &ms[1..] {
        m.set_local(Observation::new(key(), status))
            .await
            .expect("monitor");
    }
    ms[0]
        .observe(Observation::new(key(), status))
        .await
        .expect("observe");
    for m in ms {
        let ok = m
            .wait_until(
                |n| {
                    n.official()
                        .iter()
                        .any(|(k, o)| *k == key() && o.status == status)
                },
                Duration::from_secs(20),
            )
            .await;
        assert!(ok, "{} applied {status}", m.id());
    }
}

fn collator_config(url: &str, db: &str, dir: &std::path::Path, jetstream: bool) -> NodeConfig {
    let o = Overrides {
        role: Some("collator".into()),
        node_id: Some("collator-1".into()),
        nats_url: Some(url.into()),
        http: Some("127.0.0.1:0".into()),
        db: Some(db.into()),
        work_dir: Some(dir.to_path_buf()),
        dns_listen: None,
    };
    let mut cfg = NodeConfig::resolve(&FileConfig::default(), &o).expect("config");
    cfg.collator.hourly = false;
    cfg.collator.backfill_days = 0;
    cfg.collator.jetstream = jetstream;
    cfg.usage_timeout = Duration::from_secs(10);
    cfg
}

async fn start_collator(url: &str, db: &str, dir: &std::path::Path, jetstream: bool) -> App {
    let app = App::start(collator_config(url, db, dir, jetstream))
        .await
        .expect("collator starts");
    assert!(
        app.node
            .wait_for_active(Role::Monitor, 1, Duration::from_secs(20))
            .await
    );
    app
}

fn collator(app: &App) -> &CollatorService {
    app.collator.as_ref().expect("collator role")
}

async fn outage_lifecycle(db_url: &str, dir: &std::path::Path) {
    let server = NatsServer::start().expect("server");
    let ms = common::monitor_nodes(&server.url(), 3).await;
    let app = start_collator(&server.url(), db_url, dir, false).await;
    assert!(
        app.node
            .wait_for_active(Role::Monitor, 3, Duration::from_secs(20))
            .await
    );
    let c = collator(&app).clone();

    decide(&ms, false).await;
    assert!(
        c.wait_recorded(1, Duration::from_secs(20)).await,
        "offline recorded"
    );
    let evs = c.store().all_events().await.expect("events");
    assert_eq!(evs.len(), 1, "{evs:?}");
    assert!(evs[0].end_time.is_none());
    let votes = evs[0].vote_data.clone().expect("votes recorded");
    // At least the majority that decided; a monitor that learned the decision before it
    // handled the proposal never votes (as in the reference).
    let cast = votes.as_object().map(|o| o.len()).unwrap_or(0);
    assert!(cast >= 2, "the deciding votes are recorded: {votes}");
    assert!(
        votes
            .as_object()
            .is_some_and(|o| o.values().all(|v| v == true)),
        "{votes}"
    );

    decide(&ms, true).await;
    assert!(
        c.wait_recorded(2, Duration::from_secs(20)).await,
        "online recorded"
    );
    // A repeat outage is a new row with its own start.
    decide(&ms, false).await;
    assert!(c.wait_recorded(3, Duration::from_secs(20)).await);
    let evs = c.store().all_events().await.expect("events");
    assert_eq!(evs.len(), 2, "{evs:?}");
    assert!(evs[0].end_time.is_some() && evs[1].end_time.is_none());
    assert!(evs[1].start_time > evs[0].start_time);
    assert!(
        !evs[0].status,
        "closed rows keep status 0 for the Go readers"
    );
    // Each decision came as up to three finalizes (one per monitor): none duplicated a row.
    assert!(
        app.node.counters().duplicate_finalizes > 0,
        "duplicates were seen and ignored"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outages_open_close_and_repeat_on_sqlite() {
    let dir = tempfile::tempdir().expect("dir");
    outage_lifecycle(
        &format!("sqlite://{}", dir.path().join("collator.db").display()),
        dir.path(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outages_open_close_and_repeat_on_mariadb() {
    let dir = tempfile::tempdir().expect("dir");
    let db = TestDatabase::create().await.expect("MariaDB");
    outage_lifecycle(&db.url, dir.path()).await;
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collator_restarted_mid_outage_still_closes_it() {
    let server = NatsServer::start().expect("server");
    let dir = tempfile::tempdir().expect("dir");
    let db = format!("sqlite://{}", dir.path().join("collator.db").display());
    let ms = common::monitor_nodes(&server.url(), 3).await;
    let app = start_collator(&server.url(), &db, dir.path(), false).await;
    decide(&ms, false).await;
    assert!(
        collator(&app)
            .wait_recorded(1, Duration::from_secs(20))
            .await
    );
    app.shutdown().await;

    let app = start_collator(&server.url(), &db, dir.path(), false).await;
    assert!(
        app.node
            .wait_for_active(Role::Monitor, 3, Duration::from_secs(20))
            .await
    );
    decide(&ms, true).await;
    assert!(
        collator(&app)
            .wait_recorded(1, Duration::from_secs(20))
            .await
    );
    let evs = collator(&app).store().all_events().await.expect("events");
    assert_eq!(evs.len(), 1);
    assert!(evs[0].end_time.is_some(), "closed after the restart");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_catches_up_on_decisions_made_while_the_collator_was_down() {
    let server = NatsServer::start_with(ServerOptions {
        jetstream: true,
        ..Default::default()
    })
    .expect("server");
    let dir = tempfile::tempdir().expect("dir");
    let db = format!("sqlite://{}", dir.path().join("collator.db").display());
    let ms = common::monitor_nodes(&server.url(), 3).await;
    let app = start_collator(&server.url(), &db, dir.path(), true).await;
    decide(&ms, false).await;
    assert!(
        collator(&app)
            .wait_recorded(1, Duration::from_secs(20))
            .await
    );
    app.shutdown().await;

    // Three decisions while the collator is down: close, reopen, close.
    decide(&ms, true).await;
    decide(&ms, false).await;
    decide(&ms, true).await;

    let app = start_collator(&server.url(), &db, dir.path(), true).await;
    // Every finalize of every decision is redelivered (3 monitors × 3 decisions at most);
    // the three decisions are recorded once each.
    let c = collator(&app).clone();
    assert!(
        c.wait_recorded(3, Duration::from_secs(30)).await,
        "caught up"
    );
    let evs = c.store().all_events().await.expect("events");
    assert_eq!(
        evs.len(),
        2,
        "first outage closed, second opened and closed: {evs:?}"
    );
    assert!(evs.iter().all(|e| e.end_time.is_some()));
    // Every finalize in the stream (each decision from up to three monitors) has been
    // handled and acknowledged: only now can "nothing duplicated" be read off the table.
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.expect("client"));
    let mut consumer: async_nats::jetstream::consumer::PullConsumer = js
        .get_consumer_from_stream("ibp-collator-collator-1", "IBP_FINALIZE")
        .await
        .expect("the durable consumer");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let info = consumer.info().await.expect("consumer info");
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            assert!(
                info.delivered.stream_sequence >= 4,
                "all finalizes delivered: {info:?}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{info:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = c.store().all_events().await.expect("events");
    assert_eq!(after, evs, "the duplicate finalizes changed nothing");
    app.shutdown().await;
}

async fn dns(url: &str, id: &str, days: &[(NaiveDate, i64)]) -> (Node, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("dir");
    let store = Store::open(&format!("sqlite://{}", dir.path().join("dns.db").display()))
        .await
        .expect("store");
    let (svc, services) =
        DnsService::open(StorageHealth::standalone(store), id, HitLimits::default())
            .await
            .expect("dns");
    let rows: Vec<UsageRow> = days
        .iter()
        .flat_map(|(d, hits)| {
            ["DE", "FR"].into_iter().map(move |cc| UsageRow {
                date: *d,
                node_id: id.into(),
                domain: "rpc.alpha.io".into(),
                member_name: "alpha".into(),
                country_code: cc.into(),
                country_name: cc.into(),
                hits: *hits,
                ..UsageRow::default()
            })
        })
        .collect();
    svc.store().increment_usage(&rows).await.expect("seed");
    let mut o = NodeOptions::new(NodeId::new(id).expect("id"), url);
    o.reconcile_interval = Duration::from_secs(3600);
    let node = Node::connect(o).await.expect("connect");
    node.enable(Role::Dns, services).await.expect("enable");
    (node, dir)
}

async fn usage_collection(db_url: &str) {
    let server = NatsServer::start().expect("server");
    let dir = tempfile::tempdir().expect("dir");
    let yesterday = NaiveDate::from_ymd_opt(2026, 11, 26).expect("date");
    let today = NaiveDate::from_ymd_opt(2026, 11, 27).expect("date");
    let mut nodes = Vec::new();
    for (i, id) in ["dns-1", "dns-2", "dns-3"].iter().enumerate() {
        let base = (i as i64 + 1) * 100;
        nodes.push(dns(&server.url(), id, &[(yesterday, base), (today, base + 1)]).await);
    }
    let _m = common::monitor_nodes(&server.url(), 1).await;
    let app = start_collator(&server.url(), db_url, dir.path(), false).await;
    assert!(
        app.node
            .wait_for_active(Role::Dns, 3, Duration::from_secs(20))
            .await
    );
    let c = collator(&app);
    let first = c.collect(&app.node, today, today).await.expect("collect");
    let second = c
        .collect(&app.node, today, today)
        .await
        .expect("collect again");
    assert_eq!(first.hits_by_node, second.hits_by_node);
    let want: BTreeMap<String, i64> = [("dns-1", 202), ("dns-2", 402), ("dns-3", 602)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let stored: BTreeMap<String, i64> = c
        .store()
        .usage_totals_by_node(today, today)
        .await
        .expect("totals")
        .into_iter()
        .collect();
    assert_eq!(stored, want, "per-node totals, identical after a re-import");

    // Midnight roll-over: the first run after midnight covers the previous day too.
    let after_midnight = Utc
        .with_ymd_and_hms(2026, 11, 27, 0, 0, 5)
        .single()
        .expect("t");
    assert_eq!(
        CollatorService::days_for(after_midnight),
        (yesterday, today)
    );
    let one_thirty = Utc
        .with_ymd_and_hms(2026, 11, 27, 1, 30, 0)
        .single()
        .expect("t");
    assert_eq!(
        CollatorService::days_for(one_thirty),
        (yesterday, today),
        "the 01:00 run still covers yesterday"
    );
    let later = Utc
        .with_ymd_and_hms(2026, 11, 27, 13, 0, 5)
        .single()
        .expect("t");
    assert_eq!(CollatorService::days_for(later), (today, today));
    let (from, to) = CollatorService::days_for(after_midnight);
    let r = c.collect(&app.node, from, to).await.expect("collect");
    assert_eq!(r.days, vec![yesterday, today]);
    let y: i64 = c
        .store()
        .usage_totals_by_node(yesterday, yesterday)
        .await
        .expect("totals")
        .iter()
        .map(|(_, h)| h)
        .sum();
    assert_eq!(
        y,
        2 * (100 + 200 + 300),
        "yesterday's last hours are not lost"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_from_three_dns_nodes_is_stored_per_node_and_idempotently_on_sqlite() {
    let dir = tempfile::tempdir().expect("dir");
    usage_collection(&format!("sqlite://{}", dir.path().join("c.db").display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_from_three_dns_nodes_is_stored_per_node_and_idempotently_on_mariadb() {
    let db = TestDatabase::create().await.expect("MariaDB");
    usage_collection(&db.url).await;
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_start_up_the_collator_backfills_the_last_two_days() {
    let server = NatsServer::start().expect("server");
    let dir = tempfile::tempdir().expect("dir");
    let today = chrono::Utc::now().date_naive();
    let yesterday = today.pred_opt().expect("date");
    let three_days_ago = today - chrono::Days::new(2);
    let _d = dns(
        &server.url(),
        "dns-1",
        &[(three_days_ago, 7), (yesterday, 10), (today, 20)],
    )
    .await;
    let _m = common::monitor_nodes(&server.url(), 1).await;
    let mut cfg = collator_config(
        &server.url(),
        &format!("sqlite://{}", dir.path().join("c.db").display()),
        dir.path(),
        false,
    );
    cfg.collator.hourly = true;
    cfg.collator.backfill_days = 2;
    let app = App::start(cfg).await.expect("collator starts");
    assert!(
        collator(&app)
            .wait_collections(1, Duration::from_secs(30))
            .await,
        "the backfill ran"
    );
    let store = collator(&app).store();
    let sum = |rows: Vec<(String, i64)>| rows.iter().map(|(_, h)| h).sum::<i64>();
    assert_eq!(
        sum(store
            .usage_totals_by_node(yesterday, today)
            .await
            .expect("totals")),
        2 * (10 + 20)
    );
    assert_eq!(
        sum(store
            .usage_totals_by_node(three_days_ago, three_days_ago)
            .await
            .expect("totals")),
        0,
        "only the last 2 days"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn taking_over_a_go_collators_database_counts_each_hit_once() {
    let server = NatsServer::start().expect("server");
    let db = TestDatabase::create().await.expect("MariaDB");
    let dir = tempfile::tempdir().expect("dir");
    let today = NaiveDate::from_ymd_opt(2026, 11, 27).expect("date");
    let _d1 = dns(&server.url(), "dns-1", &[(today, 100)]).await;
    let _d2 = dns(&server.url(), "dns-2", &[(today, 50)]).await;
    let _m = common::monitor_nodes(&server.url(), 1).await;
    let app = start_collator(&server.url(), &db.url, dir.path(), false).await;
    assert!(
        app.node
            .wait_for_active(Role::Dns, 2, Duration::from_secs(20))
            .await
    );
    // What the Go collator wrote for the same day and DNS nodes: node-less rows
    // (NULL and '' node_id), 300 hits in all.
    for node in ["NULL", "''"] {
        db.execute(&format!(
            "INSERT INTO requests (date, node_id, domain_name, member_name, network_asn, network_name, country_code, country_name, is_ipv6, hits) \
             VALUES ('2026-11-27', {node}, 'rpc.alpha.io', 'alpha', '', '', 'DE', 'DE', 0, 150)"
        ))
        .await
        .expect("legacy row");
    }
    let c = collator(&app);
    let total = async || -> i64 {
        c.store()
            .usage_totals_by_node(today, today)
            .await
            .expect("totals")
            .iter()
            .map(|(_, h)| h)
            .sum()
    };
    assert_eq!(total().await, 300);
    let r = c.collect(&app.node, today, today).await.expect("collect");
    assert!(r.complete, "{r:?}");
    assert_eq!(r.legacy_rows_replaced, 2);
    assert_eq!(
        total().await,
        2 * 100 + 2 * 50,
        "the per-node rows replace the Go rows: not 300 + 300"
    );
    // A second collection changes nothing.
    c.collect(&app.node, today, today).await.expect("collect");
    assert_eq!(total().await, 300);
    app.shutdown().await;
}
