//! Usage and downtime fan-out against real nats-server processes and SQLite stores.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{NaiveDate, TimeZone, Utc};
use ibp_node::cluster::{Node, NodeOptions, RoleServices};
use ibp_node::collectors::{self, FanoutError};
use ibp_node::roles::{DnsService, HitLimits, MonitorService, StorageHealth};
use ibp_storage::{EventKey, EventWrite, Store, UsageRow};
use ibp_testkit::{NatsServer, ServerOptions};
use ibp_wire::{
    CheckType, Data, DowntimeRequest, NodeId, Role, UsageRequest, UsageResponse, WireTime,
};

fn opts(id: &str, url: &str) -> NodeOptions {
    let mut o = NodeOptions::new(NodeId::new(id).expect("id"), url);
    o.reconcile_interval = Duration::from_secs(3600);
    o
}

fn day() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 11, 20).expect("date")
}

fn rows(node: &str, n: usize, hits: i64) -> Vec<UsageRow> {
    (0..n)
        .map(|i| UsageRow {
            date: day(),
            node_id: node.into(),
            domain: format!("rpc{}.example.net", i % 50),
            member_name: format!("member-{}", i % 7),
            asn: format!("AS{}", 1000 + i),
            network_name: format!("Network {i}"),
            country_code: ["DE", "FR", "US", "JP"][i % 4].into(),
            country_name: "Somewhere".into(),
            is_ipv6: i % 2 == 0,
            hits,
        })
        .collect()
}

struct Dns {
    node: Node,
    _dir: tempfile::TempDir,
}

async fn dns_node(url: &str, id: &str, seed: Vec<UsageRow>) -> Dns {
    let dir = tempfile::tempdir().expect("dir");
    let store = Store::open(&format!("sqlite://{}", dir.path().join("dns.db").display()))
        .await
        .expect("store");
    let (svc, services) =
        DnsService::open(StorageHealth::standalone(store), id, HitLimits::default())
            .await
            .expect("dns service");
    svc.store().increment_usage(&seed).await.expect("seed");
    let node = Node::connect(opts(id, url)).await.expect("connect");
    node.enable(Role::Dns, services).await.expect("enable");
    Dns { node, _dir: dir }
}

async fn collector(url: &str, dns: usize) -> Node {
    let node = Node::connect(opts("collector", url))
        .await
        .expect("connect");
    node.enable(Role::Collator, RoleServices::default())
        .await
        .expect("enable");
    assert!(
        node.wait_for_active(Role::Dns, dns, Duration::from_secs(20))
            .await,
        "sees {dns} DNS nodes"
    );
    node
}

fn request() -> UsageRequest {
    UsageRequest {
        start_date: "2026-11-20".into(),
        end_date: "2026-11-20".into(),
        ..UsageRequest::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_dns_nodes_answer_with_their_own_totals_stamped_with_their_ids() {
    let server = NatsServer::start().expect("server");
    let mut dns = Vec::new();
    let mut want = BTreeMap::new();
    for i in 0..5 {
        let id = format!("dns-{i}");
        let n = 20 + i * 10;
        want.insert(id.clone(), (n as i64) * (i as i64 + 1));
        dns.push(dns_node(&server.url(), &id, rows(&id, n, i as i64 + 1)).await);
    }
    let c = collector(&server.url(), 5).await;
    let report = collectors::request_all_dns_usage(&c, &request(), Duration::from_secs(10))
        .await
        .expect("fan-out");
    assert!(
        report.complete && report.missing.is_empty(),
        "{:?}",
        report.missing
    );
    assert_eq!(report.answered.len(), 5);
    let mut got: BTreeMap<String, i64> = BTreeMap::new();
    for r in &report.records {
        *got.entry(r.node_id.clone()).or_default() += r.hits;
    }
    assert_eq!(
        got, want,
        "every record is stamped with its responder and totals match the seeds"
    );
    let agg = collectors::aggregate_usage(&report.records);
    assert_eq!(
        agg.iter().map(|r| r.hits).sum::<i64>(),
        want.values().sum::<i64>()
    );
    assert!(
        agg.len() < report.records.len(),
        "the aggregated view merges records across nodes"
    );
    assert!(
        report.elapsed < Duration::from_secs(10),
        "returned when all had answered, not at the timeout"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_never_answers_is_named_and_the_partial_result_comes_at_the_timeout() {
    let server = NatsServer::start().expect("server");
    let _a = dns_node(&server.url(), "dns-a", rows("dns-a", 10, 1)).await;
    let c = Node::connect(opts("collector", &server.url()))
        .await
        .expect("connect");
    c.enable(Role::Collator, RoleServices::default())
        .await
        .expect("enable");
    // A DNS node that joins (Go-shaped) but never answers usage requests.
    let mute = async_nats::connect(server.url()).await.expect("raw");
    let join = r#"{"type":"join","sender":{"NodeID":"dns-mute","PublicAddress":"","ListenAddress":"","ListenPort":"","NodeRole":"IBPDns","LastHeard":"2026-11-27T10:00:00Z"},"members":null}"#;
    mute.publish("consensus.cluster", join.into())
        .await
        .expect("join");
    mute.flush().await.expect("flush");
    assert!(
        c.wait_for_active(Role::Dns, 2, Duration::from_secs(20))
            .await,
        "sees both DNS nodes"
    );
    let timeout = Duration::from_secs(2);
    let started = Instant::now();
    let report = collectors::request_all_dns_usage(&c, &request(), timeout)
        .await
        .expect("partial results are results");
    let took = started.elapsed();
    assert_eq!(report.answered, vec!["dns-a".to_string()]);
    assert_eq!(report.missing, vec!["dns-mute".to_string()]);
    assert!(!report.complete);
    assert_eq!(report.records.len(), 10);
    assert!(
        took >= timeout,
        "it waited for the missing node until the timeout"
    );
    assert!(
        took < timeout + Duration::from_secs(5),
        "and returned right after it (guard: {took:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_and_empty_clusters_fail_before_sending() {
    let server = NatsServer::start().expect("server");
    let c = Node::connect(opts("collector", &server.url()))
        .await
        .expect("connect");
    c.enable(Role::Collator, RoleServices::default())
        .await
        .expect("enable");
    let bad = UsageRequest {
        start_date: "2026-11-21".into(),
        end_date: "2026-11-20".into(),
        ..UsageRequest::default()
    };
    assert!(matches!(
        collectors::request_all_dns_usage(&c, &bad, Duration::from_secs(1)).await,
        Err(FanoutError::InvalidRequest(_))
    ));
    let started = Instant::now();
    let e = collectors::request_all_dns_usage(&c, &request(), Duration::from_secs(30))
        .await
        .expect_err("no DNS node");
    assert!(matches!(e, FanoutError::NoNodes(Role::Dns)), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "fails at once, not after the timeout"
    );
    let d = DowntimeRequest {
        start_time: WireTime::from_utc(Utc::now()),
        end_time: WireTime::from_utc(Utc::now() - chrono::TimeDelta::hours(1)),
        member_name: String::new(),
    };
    assert!(matches!(
        collectors::request_all_monitors_downtime(&c, &d, Duration::from_secs(1)).await,
        Err(FanoutError::InvalidRequest(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_larger_than_max_payload_arrives_complete_in_parts() {
    const N: usize = 200_000;
    let server = NatsServer::start().expect("server");
    let big = dns_node(&server.url(), "dns-big", rows("dns-big", N, 1)).await;
    let c = collector(&server.url(), 1).await;
    let max = c.connection().max_payload();
    let report = collectors::request_all_dns_usage(&c, &request(), Duration::from_secs(120))
        .await
        .expect("fan-out");
    assert!(report.complete, "incomplete: {:?}", report.incomplete);
    assert_eq!(report.records.len(), N);
    assert!(
        report.bytes > max * 4,
        "the reply ({} bytes) was several times max_payload ({max})",
        report.bytes
    );
    assert!(
        big.node
            .metrics()
            .encode()
            .contains("ibp_reply_parts_sent_total")
    );

    // A Go requester (no header) never sees parts: it gets one reply saying why.
    let raw = async_nats::connect(server.url()).await.expect("raw");
    let payload = serde_json::to_vec(&serde_json::json!({"startDate":"2026-11-20","endDate":"2026-11-20","domain":"","memberName":"","country":""})).expect("json");
    let msg = raw
        .request("dns.usage.getUsage", payload.into())
        .await
        .expect("a reply, not silence");
    assert!(msg.headers.is_none(), "Go-shaped reply: no headers");
    let resp: UsageResponse = ibp_wire::decode(&msg.payload).expect("Go-shaped UsageResponse");
    assert_eq!(resp.node_id, "dns-big");
    assert!(resp.usage_records.is_empty());
    assert!(resp.error.contains("max_payload"), "{}", resp.error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_go_shaped_request_gets_a_single_go_shaped_reply() {
    let server = NatsServer::start().expect("server");
    let _d = dns_node(&server.url(), "dns-1", rows("dns-1", 3, 5)).await;
    let raw = async_nats::connect(server.url()).await.expect("raw");
    let req = r#"{"startDate":"2026-11-20","endDate":"2026-11-20","domain":"","memberName":"","country":""}"#;
    let msg = raw
        .request("dns.usage.getUsage", req.into())
        .await
        .expect("reply");
    assert!(msg.headers.is_none());
    let v: serde_json::Value = serde_json::from_slice(&msg.payload).expect("json");
    let keys: Vec<&str> = v
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        ["nodeID", "usageRecords"],
        "exactly the Go keys; error omitted when empty"
    );
    let rec = &v["usageRecords"][0];
    assert_eq!(
        rec["date"], "2026-11-20T00:00:00Z",
        "dates as Go DNS nodes send them"
    );
    assert_eq!(rec["hits"], 5);
    // A bad request is answered with an error, not with silence.
    let bad = r#"{"startDate":"2026-13-40","endDate":"2026-11-20"}"#;
    let msg = raw
        .request("dns.usage.getUsage", bad.into())
        .await
        .expect("reply");
    let resp: UsageResponse = ibp_wire::decode(&msg.payload).expect("decodes");
    assert!(resp.error.contains("startDate"), "{}", resp.error);
    // Without a reply subject the answer goes to dns.usage.usageData.
    let mut pushed = raw.subscribe("dns.usage.usageData").await.expect("sub");
    raw.flush().await.expect("flush");
    raw.publish("dns.usage.getUsage", req.into())
        .await
        .expect("publish");
    let m = tokio::time::timeout(
        Duration::from_secs(10),
        futures::StreamExt::next(&mut pushed),
    )
    .await
    .expect("pushed")
    .expect("message");
    let resp: UsageResponse = ibp_wire::decode(&m.payload).expect("decodes");
    assert_eq!(resp.usage_records.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitors_answer_downtime_with_outages_that_overlap_the_window() {
    let server = NatsServer::start().expect("server");
    let mut dirs = Vec::new();
    let mut monitors = Vec::new();
    for i in 0..3 {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::open(&format!("sqlite://{}", dir.path().join("m.db").display()))
            .await
            .expect("store");
        let (svc, services, _rx) = MonitorService::open(StorageHealth::standalone(store))
            .await
            .expect("monitor service");
        let key = EventKey {
            check_type: CheckType::Site,
            check_name: "ping".into(),
            member_name: "alpha".into(),
            domain_name: String::new(),
            endpoint: String::new(),
            is_ipv6: false,
        };
        // An outage that started before the window and is still open.
        let w = EventWrite {
            key,
            status: false,
            at: Utc
                .with_ymd_and_hms(2026, 11, 26, 22, 0, 0)
                .single()
                .expect("t"),
            error: "down".into(),
            votes: None,
            data: Data::none(),
            proposal_id: format!("p{i}"),
        };
        svc.store().record_decision(&w).await.expect("record");
        let node = Node::connect(opts(&format!("monitor-{i}"), &server.url()))
            .await
            .expect("connect");
        node.enable(Role::Monitor, services).await.expect("enable");
        monitors.push(node);
        dirs.push(dir);
    }
    let c = Node::connect(opts("collector", &server.url()))
        .await
        .expect("connect");
    c.enable(Role::Collator, RoleServices::default())
        .await
        .expect("enable");
    assert!(
        c.wait_for_active(Role::Monitor, 3, Duration::from_secs(20))
            .await
    );
    let req = DowntimeRequest {
        start_time: WireTime::from_utc(
            Utc.with_ymd_and_hms(2026, 11, 27, 0, 0, 0)
                .single()
                .expect("t"),
        ),
        end_time: WireTime::from_utc(
            Utc.with_ymd_and_hms(2026, 11, 27, 6, 0, 0)
                .single()
                .expect("t"),
        ),
        member_name: "alpha".into(),
    };
    let report = collectors::request_all_monitors_downtime(&c, &req, Duration::from_secs(10))
        .await
        .expect("fan-out");
    assert!(report.complete);
    assert_eq!(
        report.records.len(),
        3,
        "each monitor reports the outage that began before the window"
    );
    assert!(
        report
            .records
            .iter()
            .all(|e| e.end_time.is_zero() && e.start_time.to_go_string() == "2026-11-26T22:00:00Z")
    );
    let none = DowntimeRequest {
        member_name: "beta".into(),
        ..req
    };
    assert!(
        collectors::request_all_monitors_downtime(&c, &none, Duration::from_secs(10))
            .await
            .expect("fan-out")
            .records
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_in_parts_respect_a_small_max_payload() {
    let server = NatsServer::start_with(ServerOptions {
        max_payload: Some(64 * 1024),
        ..Default::default()
    })
    .expect("server");
    let _d = dns_node(&server.url(), "dns-1", rows("dns-1", 3_000, 2)).await;
    let c = collector(&server.url(), 1).await;
    let report = collectors::request_all_dns_usage(&c, &request(), Duration::from_secs(30))
        .await
        .expect("fan-out");
    assert!(report.complete);
    assert_eq!(report.records.iter().map(|r| r.hits).sum::<i64>(), 6_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_node_on_mariadb_answers_and_a_broken_store_is_answered_as_an_error() {
    let server = NatsServer::start().expect("server");
    let db = ibp_testkit::TestDatabase::create().await.expect("MariaDB");
    let store = Store::open(&db.url).await.expect("store");
    let (svc, services) = DnsService::open(
        StorageHealth::standalone(store),
        "dns-maria",
        HitLimits::default(),
    )
    .await
    .expect("dns");
    svc.store()
        .increment_usage(&rows("dns-maria", 40, 3))
        .await
        .expect("seed");
    let node = Node::connect(opts("dns-maria", &server.url()))
        .await
        .expect("connect");
    node.enable(Role::Dns, services).await.expect("enable");
    let c = collector(&server.url(), 1).await;
    let report = collectors::request_all_dns_usage(&c, &request(), Duration::from_secs(10))
        .await
        .expect("fan-out");
    assert_eq!(report.records.iter().map(|r| r.hits).sum::<i64>(), 120);
    assert!(
        report
            .records
            .iter()
            .all(|r| r.node_id == "dns-maria" && r.date == "2026-11-20T00:00:00Z")
    );
    // The database goes away: the request is answered with the reason, not with silence.
    svc.store().close().await;
    let report = collectors::request_all_dns_usage(&c, &request(), Duration::from_secs(10))
        .await
        .expect("fan-out");
    assert_eq!(report.answered, vec!["dns-maria".to_string()]);
    assert!(
        report
            .errors
            .get("dns-maria")
            .is_some_and(|e| e.contains("usage store")),
        "{:?}",
        report.errors
    );
    db.drop_now().await;
}
