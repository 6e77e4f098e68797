//! An existing database of the Go deployment (its schema and rows) is used as it is.

use chrono::{NaiveDate, TimeZone, Utc};
use ibp_storage::{EventKey, EventWrite, OutageChange, Part, Store, UsageFilter, UsageRow};
use ibp_testkit::TestDatabase;
use ibp_wire::{CheckType, Data};
use sqlx::{Connection, Row};

const GO_REQUESTS: &str = "CREATE TABLE requests (
  id INT UNSIGNED NOT NULL AUTO_INCREMENT, date DATE DEFAULT NULL, node_id VARCHAR(32) DEFAULT NULL,
  domain_name VARCHAR(128) DEFAULT NULL, member_name VARCHAR(64) DEFAULT NULL, network_asn VARCHAR(32) DEFAULT NULL,
  network_name VARCHAR(96) DEFAULT NULL, country_code VARCHAR(2) DEFAULT NULL, country_name VARCHAR(64) DEFAULT NULL,
  is_ipv6 TINYINT DEFAULT NULL, hits INT UNSIGNED DEFAULT NULL, PRIMARY KEY (id),
  UNIQUE KEY uniq_traffic_dedupe (date, domain_name, member_name, network_asn, network_name, country_code, country_name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci";

const GO_EVENTS: &str = "CREATE TABLE member_events (
  id INT UNSIGNED NOT NULL AUTO_INCREMENT,
  check_type VARCHAR(24) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin DEFAULT NULL,
  check_name VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin DEFAULT NULL,
  endpoint VARCHAR(256) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin DEFAULT NULL,
  member_name VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin DEFAULT NULL,
  domain_name VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin DEFAULT NULL,
  status TINYINT DEFAULT NULL, is_ipv6 TINYINT DEFAULT NULL,
  start_time DATETIME DEFAULT CURRENT_TIMESTAMP, end_time DATETIME DEFAULT NULL, error TEXT,
  vote_data LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin DEFAULT NULL CHECK (json_valid(vote_data)),
  additional_data LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin DEFAULT NULL CHECK (json_valid(additional_data)),
  PRIMARY KEY (id),
  UNIQUE KEY uniq_member_event (check_type, check_name, endpoint, member_name, domain_name, is_ipv6)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci";

#[tokio::test]
async fn an_existing_go_database_is_used_without_rewriting_its_rows() {
    let db = TestDatabase::create().await.expect("MariaDB");
    let mut conn = sqlx::MySqlConnection::connect(&db.url)
        .await
        .expect("connect");
    sqlx::query(GO_REQUESTS)
        .execute(&mut conn)
        .await
        .expect("go requests");
    sqlx::query(GO_EVENTS)
        .execute(&mut conn)
        .await
        .expect("go member_events");
    // Rows as the deployed Go nodes left them: NULL keys (v0.7.0 DNS), no node ID,
    // numeric check types (v0.2.0 collator), a closed collator row (status 1) and an open one.
    for q in [
        "INSERT INTO requests (date, node_id, domain_name, member_name, network_asn, network_name, country_code, country_name, is_ipv6, hits) VALUES ('2026-04-15', NULL, 'rpc.a.io', 'alpha', NULL, NULL, 'DE', 'Germany', NULL, 11)",
        "INSERT INTO requests (date, node_id, domain_name, member_name, network_asn, network_name, country_code, country_name, is_ipv6, hits) VALUES ('2026-04-15', '', 'rpc.a.io', 'alpha', 'AS1', 'net', 'DE', 'Germany', 0, 4)",
        "INSERT INTO member_events (check_type, check_name, endpoint, member_name, domain_name, status, is_ipv6, start_time, end_time, error, vote_data, additional_data) VALUES ('1', 'ping', '', 'alpha', '', 1, 0, '2026-04-01 10:00:00', '2026-04-01 11:00:00', 'down', '{\"m1\":true}', 'null')",
        "INSERT INTO member_events (check_type, check_name, endpoint, member_name, domain_name, status, is_ipv6, start_time, end_time, error, vote_data, additional_data) VALUES ('3', 'wss', 'wss://rpc.a.io/x', 'alpha', 'rpc.a.io', 0, 0, '2026-04-15 09:00:00', NULL, 'timeout', 'null', '{\"PeerCount\":0}')",
    ] {
        sqlx::query(q).execute(&mut conn).await.expect("seed");
    }
    let count = |t: &'static str| format!("SELECT CAST(COUNT(*) AS SIGNED) FROM {t}");
    let req_before: Vec<(String, i64)> = sqlx::query("SELECT CAST(COALESCE(domain_name,'') AS CHAR), CAST(hits AS SIGNED) FROM requests ORDER BY id")
        .fetch_all(&mut conn).await.expect("rows").iter().map(|r| (r.get(0), r.get(1))).collect();

    let store = Store::open(&db.url).await.expect("open");
    let report = store
        .migrate(&[Part::Usage, Part::Events])
        .await
        .expect("migrate");
    assert!(
        report.usage_key_ok,
        "the 7-column key was widened: {report:?}"
    );
    assert!(
        report
            .applied
            .iter()
            .any(|a| a.contains("uniq_traffic_dedupe")),
        "{report:?}"
    );
    assert!(
        report
            .applied
            .iter()
            .any(|a| a.contains("uniq_member_event")),
        "{report:?}"
    );

    // Rows untouched.
    let req_after: Vec<(String, i64)> = sqlx::query("SELECT CAST(COALESCE(domain_name,'') AS CHAR), CAST(hits AS SIGNED) FROM requests ORDER BY id")
        .fetch_all(&mut conn).await.expect("rows").iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(req_before, req_after);
    let n: i64 = sqlx::query(&count("member_events"))
        .fetch_one(&mut conn)
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 2);

    // The DNS answer reads the Go rows, NULL keys included (D10).
    let day = NaiveDate::from_ymd_opt(2026, 4, 15).expect("date");
    let got = store
        .query_usage(&UsageFilter {
            from: day,
            to: day,
            domain: "rpc.a.io".into(),
            member: "alpha".into(),
            country: String::new(),
        })
        .await
        .expect("query");
    assert_eq!(got.iter().map(|r| r.hits).sum::<i64>(), 15);
    // Per-node replace works next to the old rows.
    store
        .replace_usage(&[UsageRow {
            date: day,
            node_id: "dns1".into(),
            domain: "rpc.a.io".into(),
            member_name: "alpha".into(),
            hits: 7,
            ..UsageRow::default()
        }])
        .await
        .expect("replace");

    // A second open row for the same check, written with the string check type (D5).
    sqlx::query("INSERT INTO member_events (check_type, check_name, endpoint, member_name, domain_name, status, is_ipv6, start_time, end_time, error, vote_data, additional_data) VALUES ('endpoint', 'wss', 'wss://rpc.a.io/x', 'alpha', 'rpc.a.io', 0, 0, '2026-04-15 09:10:00', NULL, 'timeout', 'null', 'null')")
        .execute(&mut conn).await.expect("second open row");
    // The open Go outages (numeric and string check type) are read, and closed together.
    let open = store.open_events().await.expect("open");
    assert_eq!(open.len(), 2);
    assert_eq!(
        open[0].check_type, "endpoint",
        "numeric check types are normalised on read"
    );
    let key = EventKey {
        check_type: CheckType::Endpoint,
        check_name: "wss".into(),
        member_name: "alpha".into(),
        domain_name: "rpc.a.io".into(),
        endpoint: "wss://rpc.a.io/x".into(),
        is_ipv6: false,
    };
    let close = EventWrite {
        key: key.clone(),
        status: true,
        at: Utc
            .with_ymd_and_hms(2026, 4, 15, 9, 30, 0)
            .single()
            .expect("t"),
        error: String::new(),
        votes: None,
        data: Data::none(),
        proposal_id: "p-close".into(),
    };
    assert!(matches!(
        store.record_decision(&close).await.expect("close"),
        OutageChange::Closed(_)
    ));
    assert!(
        store.open_events().await.expect("open").is_empty(),
        "both open rows closed"
    );
    // The Go-closed row (status 1, with an end time) is an outage for readers here.
    let window = store
        .events_overlapping(
            Some("alpha"),
            Utc.with_ymd_and_hms(2026, 4, 1, 0, 0, 0)
                .single()
                .expect("t"),
            Utc.with_ymd_and_hms(2026, 4, 2, 0, 0, 0)
                .single()
                .expect("t"),
        )
        .await
        .expect("read");
    assert_eq!(window.len(), 1);
    assert_eq!(
        (window[0].check_type.as_str(), window[0].check_name.as_str()),
        ("site", "ping")
    );
    // A repeat outage of the same check now gets its own row (the widened key allows it).
    let reopen = EventWrite {
        key,
        status: false,
        at: Utc
            .with_ymd_and_hms(2026, 4, 15, 12, 0, 0)
            .single()
            .expect("t"),
        error: "again".into(),
        votes: None,
        data: Data::none(),
        proposal_id: "p-again".into(),
    };
    assert!(matches!(
        store.record_decision(&reopen).await.expect("reopen"),
        OutageChange::Opened(_)
    ));
    let all = store.all_events().await.expect("all");
    assert_eq!(all.len(), 4);
    let first_wss = all.iter().find(|e| e.check_name == "wss").expect("wss");
    assert_eq!(first_wss.error, "timeout", "the Go row keeps its data");
    // The Go collator API query (status 0, overlapping) still sees the closed outage.
    let go_view: i64 = sqlx::query("SELECT CAST(COUNT(*) AS SIGNED) FROM member_events WHERE status = 0 AND start_time <= '2026-04-15 23:59:59' AND (end_time IS NULL OR end_time >= '2026-04-15 00:00:00')")
        .fetch_one(&mut conn).await.expect("count").get(0);
    assert_eq!(go_view, 3);
    // Migrating again changes nothing.
    let again = store
        .migrate(&[Part::Usage, Part::Events])
        .await
        .expect("migrate again");
    assert!(again.applied.is_empty(), "{again:?}");
    drop(conn);
    db.drop_now().await;
}
