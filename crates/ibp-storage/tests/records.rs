//! Records that decide SLA money, in a mixed and crashing world: outages recorded whatever
//! the order decisions arrive in, same-second outages, two writers on one database, usage
//! counts that never overflow or collide, a Go collator's database taken over without
//! double counting. Every test runs on a real SQLite file and on the real MariaDB.

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use ibp_storage::{
    EventKey, EventWrite, OutageChange, Part, Store, StoreErrorKind, UsageFilter, UsageRow,
};
use ibp_testkit::TestDatabase;
use ibp_wire::{CheckType, Data};

enum Guard {
    #[allow(dead_code)]
    Dir(tempfile::TempDir, String),
    #[allow(dead_code)]
    Db(TestDatabase),
}

async fn stores() -> Vec<(&'static str, Store, Guard)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("node.db").display());
    let sqlite = Store::open(&url).await.expect("sqlite");
    let db = TestDatabase::create()
        .await
        .expect("MariaDB on 127.0.0.1:3306 (set IBP_TEST_MYSQL_URL)");
    let mysql = Store::open(&db.url).await.expect("mysql");
    let out = vec![
        ("sqlite", sqlite, Guard::Dir(dir, url)),
        ("mysql", mysql, Guard::Db(db)),
    ];
    for (name, s, _) in &out {
        let r = s
            .migrate(&[Part::Usage, Part::Events, Part::Results, Part::DeadLetters])
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(r.warnings.is_empty(), "{name}: {:?}", r.warnings);
    }
    out
}

fn t(h: u32, m: u32, s: u32, micros: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 2, h, m, s)
        .single()
        .expect("time")
        + chrono::TimeDelta::microseconds(i64::from(micros))
}

fn key() -> EventKey {
    EventKey {
        check_type: CheckType::Site,
        check_name: "ping".into(),
        member_name: "Amforc".into(),
        domain_name: String::new(),
        endpoint: String::new(),
        is_ipv6: false,
    }
}

fn decision(id: &str, status: bool, at: DateTime<Utc>) -> EventWrite {
    EventWrite {
        key: key(),
        status,
        at,
        error: if status { String::new() } else { "down".into() },
        votes: None,
        data: Data::none(),
        proposal_id: id.into(),
    }
}

fn spans(evs: &[ibp_storage::StoredEvent]) -> Vec<(DateTime<Utc>, Option<DateTime<Utc>>)> {
    evs.iter().map(|e| (e.start_time, e.end_time)).collect()
}

#[tokio::test]
async fn outages_in_one_second_each_get_their_row() {
    for (name, s, _g) in stores().await {
        // down, up, down within one second: two outages, the second still open.
        for (id, status, at) in [
            ("a", false, t(10, 0, 0, 100)),
            ("b", true, t(10, 0, 0, 400_000)),
            ("c", false, t(10, 0, 0, 900_000)),
        ] {
            s.record_decision(&decision(id, status, at))
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        let all = s.all_events().await.expect("events");
        assert_eq!(
            spans(&all),
            vec![
                (t(10, 0, 0, 100), Some(t(10, 0, 0, 400_000))),
                (t(10, 0, 0, 900_000), None)
            ],
            "{name}"
        );
    }
}

#[tokio::test]
async fn outages_are_recorded_whatever_order_their_decisions_arrive_in() {
    for (name, s, _g) in stores().await {
        // The true history: down 10:00, up 10:10, down 10:20 (still down).
        // Recorded as: up 10:10, down 10:20, down 10:00.
        assert_eq!(
            s.record_decision(&decision("up1", true, t(10, 10, 0, 0)))
                .await
                .expect("up"),
            OutageChange::NothingOpen,
            "{name}"
        );
        assert!(matches!(
            s.record_decision(&decision("down2", false, t(10, 20, 0, 0)))
                .await
                .expect("down2"),
            OutageChange::Opened(_)
        ));
        let r = s
            .record_decision(&decision("down1", false, t(10, 0, 0, 0)))
            .await
            .expect("down1");
        assert!(matches!(r, OutageChange::Backfilled(_)), "{name}: {r:?}");
        let all = s.all_events().await.expect("events");
        assert_eq!(
            spans(&all),
            vec![
                (t(10, 0, 0, 0), Some(t(10, 10, 0, 0))),
                (t(10, 20, 0, 0), None)
            ],
            "{name}: both outages, the first closed by the earlier-recorded recovery"
        );
        // An offline decision older than a recovery that already closed an outage opens
        // nothing that would never close.
        assert!(matches!(
            s.record_decision(&decision("up2", true, t(10, 30, 0, 0)))
                .await
                .expect("up2"),
            OutageChange::Closed(_)
        ));
        assert_eq!(
            s.record_decision(&decision("down-late", false, t(10, 25, 0, 0)))
                .await
                .expect("late"),
            OutageChange::Stale,
            "{name}"
        );
        assert!(
            s.open_events().await.expect("open").is_empty(),
            "{name}: nothing open forever"
        );
        // A recovery older than the open outage does not close it.
        assert!(matches!(
            s.record_decision(&decision("down3", false, t(11, 0, 0, 0)))
                .await
                .expect("down3"),
            OutageChange::Opened(_)
        ));
        assert_eq!(
            s.record_decision(&decision("up-old", true, t(10, 59, 0, 0)))
                .await
                .expect("old up"),
            OutageChange::NothingOpen,
            "{name}"
        );
        assert_eq!(s.open_events().await.expect("open").len(), 1, "{name}");
    }
}

#[tokio::test]
async fn two_writers_on_one_database_open_an_outage_once() {
    let db = TestDatabase::create().await.expect("MariaDB");
    let a = Store::open(&db.url).await.expect("a");
    a.migrate(&[Part::Events, Part::DeadLetters])
        .await
        .expect("migrate");
    let b = Store::open(&db.url).await.expect("b");
    for round in 0..20u32 {
        let da = decision(&format!("a{round}"), false, t(12, round, 0, 0));
        let db = decision(&format!("b{round}"), false, t(12, round, 0, 1));
        let (ra, rb) = tokio::join!(a.record_decision(&da), b.record_decision(&db));
        let changes = [ra.expect("a"), rb.expect("b")];
        assert_eq!(
            changes
                .iter()
                .filter(|c| matches!(c, OutageChange::Opened(_)))
                .count(),
            1,
            "round {round}: {changes:?}"
        );
        assert_eq!(a.open_events().await.expect("open").len(), 1);
        a.record_decision(&decision(&format!("up{round}"), true, t(12, round, 30, 0)))
            .await
            .expect("close");
        assert!(a.open_events().await.expect("open").is_empty());
    }
}

fn row(node: &str, hits: i64) -> UsageRow {
    UsageRow {
        date: NaiveDate::from_ymd_opt(2026, 11, 2).expect("day"),
        node_id: node.into(),
        domain: "rpc.example.org".into(),
        member_name: "Amforc".into(),
        asn: "AS1".into(),
        network_name: "Net".into(),
        country_code: "DE".into(),
        country_name: "Germany".into(),
        is_ipv6: false,
        hits,
    }
}

fn day_filter() -> UsageFilter {
    let d = NaiveDate::from_ymd_opt(2026, 11, 2).expect("day");
    UsageFilter {
        from: d,
        to: d,
        domain: String::new(),
        member: String::new(),
        country: String::new(),
    }
}

#[tokio::test]
async fn hit_counts_past_four_billion_are_kept() {
    for (name, s, _g) in stores().await {
        let big = i64::from(u32::MAX) - 5;
        s.increment_usage(&[row("dns-1", big)])
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        s.increment_usage(&[row("dns-1", big)])
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let got = s.query_usage(&day_filter()).await.expect("query");
        assert_eq!(got.len(), 1, "{name}");
        assert_eq!(got[0].hits, 2 * big, "{name}");
    }
}

#[tokio::test]
async fn a_key_too_long_for_its_column_is_refused_not_cut() {
    for (name, s, _g) in stores().await {
        let a = row("dns-frankfurt-production-cluster-node-01", 12);
        let b = row("dns-frankfurt-production-cluster-node-02", 5);
        for r in [&a, &b] {
            let e = s
                .replace_usage(std::slice::from_ref(r))
                .await
                .expect_err("refused");
            assert_eq!(e.kind(), StoreErrorKind::Rejected, "{name}: {e}");
            assert!(e.is_permanent());
            assert!(e.to_string().contains("node_id"), "{name}: {e}");
        }
        assert!(
            s.query_usage(&day_filter()).await.expect("q").is_empty(),
            "{name}: nothing stored under a cut ID"
        );
        let mut long_member = row("dns-1", 1);
        long_member.member_name = "m".repeat(65);
        assert!(
            s.increment_usage(&[long_member])
                .await
                .is_err_and(|e| e.is_permanent())
        );
        let mut ev = decision("x", false, t(9, 0, 0, 0));
        ev.key.endpoint = format!("wss://{}/x", "h".repeat(300));
        ev.key.check_type = CheckType::Endpoint;
        ev.key.domain_name = "h".into();
        assert!(
            s.record_decision(&ev)
                .await
                .is_err_and(|e| e.is_permanent()),
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_go_collators_node_less_rows_are_replaced_only_by_a_complete_collection() {
    for (name, s, g) in stores().await {
        // What the Go collator wrote for the day: node_id NULL and ''.
        let legacy = ["NULL", "''"];
        for (i, node) in legacy.iter().enumerate() {
            let sql = format!(
                "INSERT INTO requests (date, node_id, domain_name, member_name, network_asn, network_name, country_code, country_name, is_ipv6, hits) \
                 VALUES ('2026-11-02', {node}, 'rpc.example.org', 'Amforc', 'AS{i}', 'Net', 'DE', 'Germany', 0, 50)"
            );
            raw(&g, &sql).await;
        }
        let total = |s: Store| async move {
            s.usage_totals_by_node(
                NaiveDate::from_ymd_opt(2026, 11, 2).expect("d"),
                NaiveDate::from_ymd_opt(2026, 11, 2).expect("d"),
            )
            .await
            .expect("totals")
            .iter()
            .map(|(_, h)| h)
            .sum::<i64>()
        };
        assert_eq!(total(s.clone()).await, 100, "{name}");
        // An incomplete collection (a DNS node missing) leaves them.
        s.replace_usage(&[row("dns-1", 60)]).await.expect("replace");
        assert_eq!(total(s.clone()).await, 160, "{name}: legacy rows kept");
        // A complete one replaces them in the same transaction: 60 + 40, not 200.
        let d = NaiveDate::from_ymd_opt(2026, 11, 2).expect("d");
        let removed = s
            .replace_usage_taking_over(&[row("dns-1", 60), row("dns-2", 40)], &[d])
            .await
            .expect("take over");
        assert_eq!(removed, 2, "{name}");
        assert_eq!(total(s.clone()).await, 100, "{name}");
    }
}

/// Runs SQL beside the store, as another program (a Go collator) would.
async fn raw(g: &Guard, sql: &str) {
    use sqlx::Connection;
    match g {
        Guard::Db(db) => {
            let mut c = sqlx::MySqlConnection::connect(&db.url).await.expect("conn");
            sqlx::query(sql).execute(&mut c).await.expect("raw sql");
        }
        Guard::Dir(_, url) => {
            let mut c = sqlx::SqliteConnection::connect(url).await.expect("conn");
            sqlx::query(sql).execute(&mut c).await.expect("raw sql");
        }
    }
}
