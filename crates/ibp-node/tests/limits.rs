//! Resource limits: pending usage keys, member-list fetches, large HTTP and NATS answers.

mod common;

use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use ibp_node::app::App;
use ibp_node::ibp_config::{FetchLimits, fetch};
use ibp_node::roles::HitLimits;
use ibp_storage::{EventKey, EventWrite};
use ibp_testkit::{NatsServer, TestDatabase};
use ibp_wire::{CheckType, Data};
use serde_json::json;
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_usage_keys_stay_bounded_while_the_database_is_away_and_no_hit_is_lost() {
    let server = NatsServer::start().expect("server");
    let db = TestDatabase::create().await.expect("MariaDB");
    let dir = tempfile::tempdir().expect("dir");
    let mut cfg = common::node_config("dns", "dns-1", &server.url(), dir.path());
    cfg.db = db.url.clone();
    cfg.hit_limits = HitLimits {
        flush_at: 100,
        max_keys: 200,
    };
    let app = App::start(cfg).await.expect("dns");
    let http = app.http_addr.to_string();
    let dns = app.dns.clone().expect("dns");
    let mut lock = db.session().await.expect("session");
    lock.execute("LOCK TABLES requests WRITE")
        .await
        .expect("lock");
    let (mut accepted, mut refused) = (0u64, 0u64);
    for batch in 0..40 {
        let hits: Vec<serde_json::Value> = (0..50)
            .map(|i| {
                json!({"domain": "rpc.example.org", "member": "Amforc", "countryCode": "DE",
                            "asn": format!("AS{}", batch * 50 + i)})
            })
            .collect();
        let r = reqwest::Client::new()
            .post(format!("http://{http}/v1/usage/hits"))
            .body(json!(hits).to_string())
            .send()
            .await
            .expect("POST");
        match r.status().as_u16() {
            202 => accepted += 50,
            503 => {
                assert!(r.headers().contains_key("retry-after"));
                refused += 50;
            }
            other => panic!("unexpected status {other}"),
        }
        assert!(
            dns.pending_keys() <= 250,
            "{} keys pending: memory must stay bounded",
            dns.pending_keys()
        );
    }
    assert!(refused > 0, "past the cap new keys are refused, not held");
    assert!(accepted >= 200, "{accepted}");
    lock.execute("UNLOCK TABLES").await.expect("unlock");
    app.shutdown().await;
    let store = ibp_storage::Store::open(&db.url).await.expect("open");
    let today = Utc::now().date_naive();
    let totals = store
        .usage_totals_by_node(today, today)
        .await
        .expect("totals");
    assert_eq!(
        totals,
        vec![("dns-1".to_string(), accepted as i64)],
        "every accepted hit counted (some under a coarser key)"
    );
}

/// A loopback HTTP server answering every request with `body`, forever if `endless`.
async fn serve(endless: bool, delay: Duration) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = tokio::io::AsyncReadExt::read(&mut s, &mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n")
                    .await;
                let chunk = vec![b' '; 64 * 1024];
                loop {
                    tokio::time::sleep(delay).await;
                    if s.write_all(&chunk).await.is_err() || !endless {
                        break;
                    }
                }
            });
        }
    });
    format!("http://{addr}/members.json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_list_fetch_is_bounded_in_size_and_time() {
    let limits = FetchLimits {
        max_bytes: 1 << 20,
        timeout: Duration::from_secs(3),
    };
    let huge = serve(true, Duration::ZERO).await;
    let started = Instant::now();
    let e = fetch(&huge, limits).await.expect_err("refused");
    assert!(e.contains("larger than 1048576 bytes"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    let slow = serve(true, Duration::from_millis(500)).await;
    let started = Instant::now();
    let e = fetch(&slow, limits).await.expect_err("refused");
    assert!(e.contains("not complete within"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // A file is bounded the same way.
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("big.json");
    std::fs::write(&path, vec![b' '; (1 << 20) + 1]).expect("write");
    let e = fetch(path.to_str().expect("utf-8"), limits)
        .await
        .expect_err("refused");
    assert!(e.contains("larger than"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_event_answers_are_paginated_over_http_and_whole_over_nats() {
    let server = NatsServer::start().expect("server");
    let dir = tempfile::tempdir().expect("dir");
    let m1 = App::start(common::node_config(
        "monitor",
        "monitor-1",
        &server.url(),
        dir.path(),
    ))
    .await
    .expect("monitor");
    let store = m1.monitor.as_ref().expect("monitor").store().clone();
    let n = 5_300;
    let t0 = Utc
        .with_ymd_and_hms(2026, 11, 1, 0, 0, 0)
        .single()
        .expect("t");
    for i in 0..n {
        store
            .record_decision(&EventWrite {
                key: EventKey {
                    check_type: CheckType::Site,
                    check_name: "ping".into(),
                    member_name: format!("member-{i}"),
                    domain_name: String::new(),
                    endpoint: String::new(),
                    is_ipv6: false,
                },
                status: false,
                at: t0 + chrono::TimeDelta::seconds(i64::from(i % 600)),
                error: "down".into(),
                votes: None,
                data: Data::none(),
                proposal_id: format!("p{i}"),
            })
            .await
            .expect("record");
    }
    let http = m1.http_addr.to_string();
    let mut seen = std::collections::BTreeSet::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut path = "/v1/events?from=2026-10-31&to=2026-11-02&limit=2000".to_string();
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={}", urlencode(c)));
        }
        let (status, body) = common::get(&http, &path).await;
        assert_eq!(status, 200, "{body}");
        pages += 1;
        for e in body["events"].as_array().expect("events") {
            assert!(seen.insert(e["id"].as_i64().expect("id")), "no event twice");
        }
        match body["next"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    assert_eq!((seen.len(), pages), (n as usize, 3));
    // A Go requester gets the one reply it expects, built page by page.
    let asker = App::start(common::node_config(
        "collator",
        "collator-1",
        &server.url(),
        dir.path(),
    ))
    .await
    .expect("collator");
    assert!(
        asker
            .node
            .wait_for_active(ibp_wire::Role::Monitor, 1, Duration::from_secs(20))
            .await
    );
    let report = ibp_node::collectors::request_all_monitors_downtime(
        &asker.node,
        &ibp_wire::DowntimeRequest {
            start_time: ibp_wire::WireTime::from_utc(t0 - chrono::TimeDelta::hours(1)),
            end_time: ibp_wire::WireTime::from_utc(t0 + chrono::TimeDelta::days(1)),
            member_name: String::new(),
        },
        Duration::from_secs(20),
    )
    .await
    .expect("downtime");
    assert!(report.complete, "{:?}", report.missing);
    assert_eq!(report.records.len(), n as usize);
    asker.shutdown().await;
    m1.shutdown().await;
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
