//! The storage layer against real SQLite files and the real MariaDB.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, TimeZone, Utc};
use ibp_core::CheckKey;
use ibp_storage::{
    EventKey, EventWrite, OutageChange, Part, ResultKind, Store, StoredResult, UsageFilter,
    UsageRow,
};
use ibp_testkit::TestDatabase;
use ibp_wire::{CheckType, Data, Proposal};

enum Guard {
    #[allow(dead_code)]
    Dir(tempfile::TempDir),
    #[allow(dead_code)]
    Db(TestDatabase),
}

/// A fresh, migrated store on each backend.
async fn stores() -> Vec<(&'static str, Store, Guard)> {
    let dir = tempfile::tempdir().expect("tempdir");
    let sqlite = Store::open(&format!(
        "sqlite://{}",
        dir.path().join("node.db").display()
    ))
    .await
    .expect("sqlite");
    let db = TestDatabase::create()
        .await
        .expect("MariaDB on 127.0.0.1:3306 (set IBP_TEST_MYSQL_URL)");
    let mysql = Store::open(&db.url).await.expect("mysql");
    let mut out = vec![
        ("sqlite", sqlite, Guard::Dir(dir)),
        ("mysql", mysql, Guard::Db(db)),
    ];
    for (name, s, _) in &mut out {
        let r = s
            .migrate(&[Part::Usage, Part::Events, Part::Results])
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(r.usage_key_ok, "{name}");
    }
    out
}

fn day(d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 4, d).expect("date")
}

fn at(h: u32, m: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 4, 15, h, m, 0)
        .single()
        .expect("time")
}

fn row(node: &str, d: u32, domain: &str, member: &str, cc: &str, v6: bool, hits: i64) -> UsageRow {
    UsageRow {
        date: day(d),
        node_id: node.into(),
        domain: domain.into(),
        member_name: member.into(),
        asn: "AS1".into(),
        network_name: "net".into(),
        country_code: cc.into(),
        country_name: "Country".into(),
        is_ipv6: v6,
        hits,
    }
}

fn filter(from: u32, to: u32, domain: &str, member: &str, country: &str) -> UsageFilter {
    UsageFilter {
        from: day(from),
        to: day(to),
        domain: domain.into(),
        member: member.into(),
        country: country.into(),
    }
}

#[tokio::test]
async fn usage_increments_and_answers_with_the_go_query_semantics() {
    for (name, s, _g) in stores().await {
        s.increment_usage(&[
            row("dns1", 15, "rpc.a.io", "alpha", "DE", false, 5),
            row("dns1", 15, "rpc.a.io", "alpha", "DE", false, 7),
        ])
        .await
        .expect("increment");
        s.increment_usage(&[
            row("dns2", 15, "rpc.a.io", "alpha", "DE", false, 1),
            row("dns1", 15, "rpc.a.io", "beta", "FR", true, 3),
            row("dns1", 16, "rpc.b.io", "alpha", "DE", false, 10),
            row("dns1", 20, "rpc.b.io", "alpha", "DE", false, 99),
        ])
        .await
        .expect("increment");
        // Grouped across nodes: 5 + 7 + 1.
        let by_member = s
            .query_usage(&filter(15, 16, "rpc.a.io", "alpha", ""))
            .await
            .expect("query");
        assert_eq!(by_member.len(), 1, "{name}");
        assert_eq!(by_member[0].hits, 13, "{name}");
        assert_eq!(
            by_member[0].date, "2026-04-15T00:00:00Z",
            "{name}: Go DNS nodes send RFC 3339 midnight"
        );
        let by_domain = s
            .query_usage(&filter(15, 16, "RPC.A.IO", "", ""))
            .await
            .expect("query");
        assert_eq!(
            by_domain.iter().map(|r| r.hits).sum::<i64>(),
            16,
            "{name}: domain match ignores case"
        );
        let all = s
            .query_usage(&filter(15, 16, "", "", ""))
            .await
            .expect("query");
        assert_eq!(
            all.iter().map(|r| r.hits).sum::<i64>(),
            26,
            "{name}: the range is inclusive and stops at the 16th"
        );
        let member_only = s
            .query_usage(&filter(1, 30, "", "alpha", "de"))
            .await
            .expect("query");
        assert_eq!(
            member_only.iter().map(|r| r.hits).sum::<i64>(),
            122,
            "{name}: member and country filters"
        );
        let v6 = all
            .iter()
            .find(|r| r.member_name == "beta")
            .expect("beta row");
        assert!(v6.is_ipv6 && v6.country_code == "FR", "{name}");
        let totals: BTreeMap<String, i64> = s
            .usage_totals_by_node(day(1), day(30))
            .await
            .expect("totals")
            .into_iter()
            .collect();
        assert_eq!(totals["dns1"], 124, "{name}");
        assert_eq!(totals["dns2"], 1, "{name}");
    }
}

#[tokio::test]
async fn usage_replace_is_idempotent_and_per_node() {
    for (name, s, _g) in stores().await {
        let batch = vec![
            row("dns1", 15, "d", "m", "DE", false, 40),
            row("dns2", 15, "d", "m", "DE", false, 2),
        ];
        s.replace_usage(&batch).await.expect("replace");
        s.replace_usage(&batch).await.expect("replace again");
        let totals: BTreeMap<String, i64> = s
            .usage_totals_by_node(day(15), day(15))
            .await
            .expect("totals")
            .into_iter()
            .collect();
        assert_eq!(
            (totals["dns1"], totals["dns2"]),
            (40, 2),
            "{name}: nodes never overwrite each other"
        );
        s.replace_usage(&[row("dns1", 15, "d", "m", "DE", false, 45)])
            .await
            .expect("replace");
        let totals: BTreeMap<String, i64> = s
            .usage_totals_by_node(day(15), day(15))
            .await
            .expect("totals")
            .into_iter()
            .collect();
        assert_eq!(
            totals["dns1"], 45,
            "{name}: newer totals replace older ones"
        );
    }
}

fn ekey(member: &str) -> EventKey {
    EventKey {
        check_type: CheckType::Endpoint,
        check_name: "wss".into(),
        member_name: member.into(),
        domain_name: "rpc.a.io".into(),
        endpoint: "wss://rpc.a.io/x".into(),
        is_ipv6: false,
    }
}

fn decision(
    member: &str,
    id: &str,
    status: bool,
    when: DateTime<Utc>,
    votes: Option<&[(&str, bool)]>,
) -> EventWrite {
    EventWrite {
        key: ekey(member),
        status,
        at: when,
        error: if status {
            String::new()
        } else {
            "timeout".into()
        },
        votes: votes.map(|v| v.iter().map(|(k, a)| (k.to_string(), *a)).collect()),
        data: Data::from_value(&serde_json::json!({"PeerCount": 3})),
        proposal_id: id.into(),
    }
}

#[tokio::test]
async fn outages_open_close_repeat_and_ignore_duplicates() {
    for (name, s, _g) in stores().await {
        let r = s
            .record_decision(&decision(
                "alpha",
                "p1",
                false,
                at(10, 0),
                Some(&[("m1", true), ("m2", true)]),
            ))
            .await
            .expect("record");
        assert!(matches!(r, OutageChange::Opened(_)), "{name}: {r:?}");
        // Every monitor finalizes: duplicates change nothing, votes are not lost.
        for _ in 0..3 {
            assert_eq!(
                s.record_decision(&decision("alpha", "p1", false, at(10, 1), None))
                    .await
                    .expect("record"),
                OutageChange::Duplicate,
                "{name}"
            );
        }
        // A second offline decision while open merges votes.
        let r = s
            .record_decision(&decision(
                "alpha",
                "p2",
                false,
                at(10, 5),
                Some(&[("m3", false)]),
            ))
            .await
            .expect("record");
        assert!(matches!(r, OutageChange::AlreadyOpen(_)), "{name}");
        let r = s
            .record_decision(&decision("alpha", "p3", true, at(11, 0), None))
            .await
            .expect("record");
        assert!(matches!(r, OutageChange::Closed(_)), "{name}");
        assert_eq!(
            s.record_decision(&decision("alpha", "p4", true, at(11, 1), None))
                .await
                .expect("record"),
            OutageChange::NothingOpen
        );
        // A repeat outage gets its own row and start time.
        let r = s
            .record_decision(&decision(
                "alpha",
                "p5",
                false,
                at(12, 0),
                Some(&[("m1", true)]),
            ))
            .await
            .expect("record");
        assert!(matches!(r, OutageChange::Opened(_)), "{name}");
        let all = s.all_events().await.expect("events");
        assert_eq!(all.len(), 2, "{name}");
        assert_eq!(all[0].start_time, at(10, 0));
        assert_eq!(all[0].end_time, Some(at(11, 0)));
        assert!(
            !all[0].status,
            "{name}: a closed outage keeps status 0 so Go readers see it"
        );
        assert_eq!(
            all[0].vote_data,
            Some(serde_json::json!({"m1": true, "m2": true, "m3": false})),
            "{name}"
        );
        assert_eq!(
            all[0].additional_data,
            Some(serde_json::json!({"PeerCount": 3}))
        );
        assert_eq!(all[1].start_time, at(12, 0));
        assert_eq!(all[1].end_time, None);
        assert_eq!(s.open_events().await.expect("open").len(), 1);
    }
}

#[tokio::test]
async fn downtime_reads_select_by_overlap() {
    for (name, s, _g) in stores().await {
        s.record_decision(&decision("alpha", "a1", false, at(8, 0), None))
            .await
            .expect("record");
        s.record_decision(&decision("alpha", "a2", true, at(9, 0), None))
            .await
            .expect("record");
        s.record_decision(&decision("beta", "b1", false, at(9, 30), None))
            .await
            .expect("record");
        s.record_decision(&decision("alpha", "a3", false, at(13, 0), None))
            .await
            .expect("record");
        // Window 8:30–10:00: alpha's 8:00–9:00 outage started before it but overlaps.
        let ev = s
            .events_overlapping(Some("alpha"), at(8, 30), at(10, 0))
            .await
            .expect("read");
        assert_eq!(ev.len(), 1, "{name}");
        assert_eq!(ev[0].start_time, at(8, 0));
        let all = s
            .events_overlapping(None, at(8, 30), at(10, 0))
            .await
            .expect("read");
        assert_eq!(all.len(), 2, "{name}: beta's open outage too");
        let wire = ev[0].to_wire();
        assert_eq!(
            (
                wire.check_type.as_str(),
                wire.endpoint.as_str(),
                wire.status
            ),
            ("endpoint", "wss://rpc.a.io/x", false)
        );
        assert!(
            s.events_overlapping(Some("alpha"), at(9, 1), at(12, 0))
                .await
                .expect("read")
                .is_empty(),
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_reopened_store_closes_an_outage_opened_before_the_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("c.db").display());
    {
        let s = Store::open(&url).await.expect("open");
        s.migrate(&[Part::Events]).await.expect("migrate");
        s.record_decision(&decision("alpha", "x1", false, at(10, 0), None))
            .await
            .expect("record");
        s.close().await;
    }
    let s = Store::open(&url).await.expect("reopen");
    s.migrate(&[Part::Events])
        .await
        .expect("migrate is idempotent");
    assert_eq!(
        s.record_decision(&decision("alpha", "x1", false, at(10, 0), None))
            .await
            .expect("record"),
        OutageChange::Duplicate,
        "a redelivered decision is recognised after a restart"
    );
    assert!(matches!(
        s.record_decision(&decision("alpha", "x2", true, at(10, 30), None))
            .await
            .expect("record"),
        OutageChange::Closed(_)
    ));
}

#[tokio::test]
async fn monitor_results_survive_a_reopen() {
    for (name, s, _g) in stores().await {
        let k = CheckKey::new(CheckType::Domain, "ssl", "alpha", "RPC.a.io", "", true);
        let p = Proposal {
            id: "p1".into(),
            member_name: "alpha".into(),
            ..Proposal::default()
        };
        let r = StoredResult {
            kind: ResultKind::Official,
            key: k.clone(),
            status: false,
            error_text: "expired".into(),
            data: Data::from_value(&serde_json::json!({"DaysUntilExpiry": -1})),
            proposal: Some(p.clone()),
            updated_at: at(10, 0),
        };
        s.save_results(std::slice::from_ref(&r))
            .await
            .expect("save");
        let mut r2 = r.clone();
        r2.status = true;
        s.save_results(&[r2]).await.expect("upsert");
        let back = s.load_results(ResultKind::Official).await.expect("load");
        assert_eq!(back.len(), 1, "{name}");
        assert!(back[0].status);
        assert_eq!(back[0].key, k);
        assert_eq!(back[0].proposal.as_ref().map(|p| p.id.as_str()), Some("p1"));
        assert!(
            s.load_results(ResultKind::Local)
                .await
                .expect("load")
                .is_empty()
        );
    }
}

#[tokio::test]
async fn bad_urls_name_the_problem() {
    let e = Store::open("postgres://x").await.expect_err("unsupported");
    assert!(e.to_string().contains("sqlite://PATH or mysql://"), "{e}");
    let e = Store::open("mysql://u:secret@127.0.0.1:1/db")
        .await
        .expect_err("unreachable");
    assert!(
        !e.to_string().contains("secret"),
        "passwords never appear: {e}"
    );
}

#[tokio::test]
async fn a_mysql_url_without_a_database_says_so() {
    for url in [
        "mysql://root@127.0.0.1:3306/",
        "mysql://root@127.0.0.1:3306",
        "mariadb://root:pw@127.0.0.1:3306/?ssl-mode=disabled",
    ] {
        let Err(e) = Store::open(url).await else {
            panic!("{url} accepted");
        };
        assert_eq!(
            e.kind(),
            ibp_storage::StoreErrorKind::InvalidUrl,
            "{url}: {e}"
        );
        assert!(e.to_string().contains("names no database"), "{url}: {e}");
        assert!(!e.to_string().contains(":pw@"), "{e}");
    }
}
