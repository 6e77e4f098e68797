//! GeoDNS end to end with real components: three monitors decide over a real nats-server,
//! a DNS node answers through a real PowerDNS (remote backend, caches off, EDNS client
//! subnet on) and through its built-in listener, both asked with `dig`; client positions
//! come from made-up MaxMind databases (private and loopback ranges only, dns.md §8).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::signed::*;
use ibp_node::app::App;
use ibp_testkit::NatsServer;
use ibp_testkit::geo::{PowerDns, dig, write_maxmind};

/// Members: Alpha near Frankfurt (DE clients), Beta near Washington (US clients).
const MEMBERS: &str = r#"{
  "Alpha": {"Details": {"Name": "Alpha"}, "Service": {"Active": 1, "ServiceIPv4": "127.20.0.1", "ServiceIPv6": "fd00:20::1"},
            "ServiceAssignments": {"Professional": ["Polkadot"]}, "Location": {"Latitude": 50.0, "Longitude": 8.5}},
  "Beta":  {"Details": {"Name": "Beta"}, "Service": {"Active": 1, "ServiceIPv4": "127.20.0.2", "ServiceIPv6": "fd00:20::2"},
            "ServiceAssignments": {"Professional": ["Polkadot"]}, "Location": {"Latitude": 39.0, "Longitude": -77.0}}
}"#;
const SERVICES: &str = r#"{
  "Polkadot": {"Configuration": {"Active": 1},
               "Providers": {"Alpha": {"RpcUrls": ["wss://rpc.example.test/polkadot"]}}}
}"#;
const STATICS: &str = r#"[
  {"qname": "example.test", "qtype": "NS", "content": "ns1.example.test", "ttl": 3600, "auth": true},
  {"qname": "example.test", "qtype": "SOA", "content": "ns1.example.test. admin.example.test. 1 3600 600 1209600 3600", "ttl": 3600, "auth": true},
  {"qname": "www.example.test", "qtype": "A", "content": "127.20.0.9", "ttl": 300, "auth": true}
]"#;

const ALPHA: &str = "127.20.0.1";
const BETA: &str = "127.20.0.2";
/// Client sources the test databases place in Germany, the US and China.
const DE: &str = "127.0.0.2";
const US: &str = "127.0.0.4";
const CN: &str = "127.0.0.6";

thread_local! {
    /// What to print when an answer does not come (the DNS node's counters).
    static DIAG: std::cell::RefCell<Option<Box<dyn Fn() -> String>>> = const { std::cell::RefCell::new(None) };
}

fn diagnose(app: &App) {
    let node = app.node.clone();
    let g = app.geodns.clone();
    DIAG.with(|d| {
        *d.borrow_mut() = Some(Box::new(move || {
            node.refresh_metrics();
            let m: Vec<String> = node
                .metrics()
                .encode()
                .lines()
                .filter(|l| {
                    !l.starts_with('#')
                        && !l.ends_with(" 0")
                        && (l.contains("core_events")
                            || l.contains("trust")
                            || l.contains("decision"))
                })
                .map(str::to_string)
                .collect();
            format!(
                "{}\n{}",
                g.as_ref()
                    .map(|g| g.status().to_string())
                    .unwrap_or_default(),
                m.join("\n")
            )
        }))
    });
}

fn write_lists(dir: &Path) -> (String, String, String) {
    let w = |name: &str, body: &str| {
        let p = dir.join(name);
        std::fs::write(&p, body).expect("write");
        p.display().to_string()
    };
    (
        w("members.json", MEMBERS),
        w("services.json", SERVICES),
        w("static.json", STATICS),
    )
}

/// A directory with the test MaxMind databases and lists, and a nats-server.
fn setup() -> (tempfile::TempDir, (String, String, String), NatsServer) {
    let dir = tempfile::tempdir().expect("dir");
    write_maxmind(dir.path()).expect("test MaxMind databases");
    let lists = write_lists(dir.path());
    (dir, lists, NatsServer::start().expect("nats-server"))
}

fn with_lists(cfg: &mut ibp_node::config::NodeConfig, lists: &(String, String, String)) {
    cfg.config_urls
        .insert("MembersConfig".into(), lists.0.clone());
    cfg.config_urls
        .insert("ServicesConfig".into(), lists.1.clone());
    cfg.geodns.static_url = Some(lists.2.clone());
}

async fn start_dns(c: &Cluster, dir: &Path, lists: &(String, String, String), id: &str) -> App {
    let mut cfg = common::node_config("dns", id, &c.nats.url(), dir);
    with_lists(&mut cfg, lists);
    cfg.geodns.maxmind_dir = Some(dir.to_path_buf());
    cfg.geodns.listen = Some("127.0.0.1:0".parse().expect("addr"));
    cfg.geodns.monitors = vec![format!("http://{}/results", c.app("monitor-1").http_addr)];
    App::start(cfg).await.expect("DNS node starts")
}

/// `dig` through a server on 127.0.0.1:`port` from source `from`; the A answers.
fn ask(port: u16, from: &str, name: &str, qtype: &str, extra: &[&str]) -> Vec<String> {
    let p = port.to_string();
    let mut args = vec![
        "@127.0.0.1",
        "-p",
        &p,
        "-b",
        from,
        name,
        qtype,
        "+norecurse",
    ];
    args.extend_from_slice(extra);
    dig(&args).unwrap_or_else(|e| panic!("{e}"))
}

/// Waits (generously; the figure is measured by the benchmark) until both servers answer
/// `want` to `from`; returns how long it took.
async fn both_answer(ports: [u16; 2], from: &str, want: &str) -> Duration {
    let started = Instant::now();
    for port in ports {
        loop {
            let got = tokio::task::spawn_blocking({
                let from = from.to_string();
                move || ask(port, &from, "rpc.example.test", "A", &[])
            })
            .await
            .expect("dig");
            if got == vec![want.to_string()] {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "port {port}: {from} still gets {got:?}, want {want}\n{}",
                DIAG.with(|d| d.borrow().as_ref().map(|f| f()).unwrap_or_default())
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    started.elapsed()
}

async fn all_observe(c: &Cluster, member: &str, status: bool) {
    for a in c.apps.iter().filter(|a| a.monitor.is_some()) {
        observe(a, member, status).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn powerdns_and_the_built_in_listener_answer_geodns_and_follow_decisions() {
    let (dir, lists, nats) = setup();
    let c = cluster_with(
        nats,
        &[
            ("monitor-1", "monitor", "off"),
            ("monitor-2", "monitor", "off"),
            ("monitor-3", "monitor", "off"),
        ],
        |cfg| with_lists(cfg, &lists),
    )
    .await;
    // Beta goes down before the DNS node exists: it learns that from `/results`.
    all_observe(&c, "Beta", false).await;
    official_everywhere(&c, "Beta", false).await;

    let dns = start_dns(&c, dir.path(), &lists, "dns-1").await;
    diagnose(&dns);
    let listener = dns.dns_addr.expect("listener").port();
    let pdns = PowerDns::start(&format!("http://{}/dns", dns.http_addr), None).expect("PowerDNS");
    let ports = [pdns.port, listener];

    // Bootstrap from /results: US clients go to Alpha while Beta is down.
    both_answer(ports, US, ALPHA).await;
    // Beta recovers: the decision reaches the answers from the bus.
    all_observe(&c, "Beta", true).await;
    let t = both_answer(ports, US, BETA).await;
    println!(
        "recovery reached both servers' answers {:.0} ms after the observations",
        t.as_secs_f64() * 1000.0
    );
    both_answer(ports, DE, ALPHA).await;

    for port in ports {
        // The EDNS client subnet decides, not the resolver's address (W1).
        assert_eq!(
            ask(port, DE, "rpc.example.test", "A", &["+subnet=10.2.0.0/24"]),
            [BETA],
            "port {port}"
        );
        assert_eq!(
            ask(port, US, "rpc.example.test", "A", &["+subnet=10.1.0.0/24"]),
            [ALPHA],
            "port {port}"
        );
        assert_eq!(
            ask(port, DE, "rpc.example.test", "AAAA", &[]),
            ["fd00:20::1"],
            "port {port}"
        );
        // Unknown position (127.0.0.1 is unmapped): the first healthy member by key (W9).
        assert_eq!(
            ask(port, "127.0.0.1", "rpc.example.test", "A", &[]),
            [ALPHA],
            "port {port}"
        );
        // Static records, and the SOA of a service zone.
        assert_eq!(
            ask(port, DE, "www.example.test", "A", &[]),
            ["127.20.0.9"],
            "port {port}"
        );
        assert_eq!(
            ask(port, DE, "example.test", "NS", &[]),
            ["ns1.example.test."],
            "port {port}"
        );
        // One SOA at a zone apex, even where the static config has its own.
        assert_eq!(
            ask(port, DE, "example.test", "SOA", &[]).len(),
            1,
            "port {port}"
        );
        let soa = ask(port, DE, "rpc.example.test", "SOA", &[]);
        assert!(
            soa.len() == 1
                && soa[0].starts_with("dns-01.rpc.example.test. hostmaster.rpc.example.test."),
            "port {port}: {soa:?}"
        );
        // A name in a zone with nothing there is NXDOMAIN.
        let p = port.to_string();
        let full = std::process::Command::new("dig")
            .args([
                "@127.0.0.1",
                "-p",
                &p,
                "-b",
                DE,
                "nothing.example.test",
                "A",
                "+norecurse",
                "+time=3",
                "+tries=1",
            ])
            .output()
            .expect("dig");
        let text = String::from_utf8_lossy(&full.stdout);
        assert!(text.contains("status: NXDOMAIN"), "port {port}: {text}");
    }

    // Alpha goes down: DE clients switch to Beta on both paths; back after recovery.
    all_observe(&c, "Alpha", false).await;
    let t = both_answer(ports, DE, BETA).await;
    println!(
        "outage reached both servers' answers {:.0} ms after the observations",
        t.as_secs_f64() * 1000.0
    );
    all_observe(&c, "Alpha", true).await;
    both_answer(ports, DE, ALPHA).await;

    // Usage hits from real answers, with country and ASN from MaxMind.
    let g = dns.geodns.as_ref().expect("geodns");
    assert!(
        g.counters()
            .geo_answers
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    );
    let d = dns.dns.as_ref().expect("dns");
    d.flush().await;
    let today = chrono::Utc::now().date_naive();
    let rows = d
        .store()
        .query_usage(&ibp_storage::UsageFilter {
            from: today,
            to: today,
            domain: "rpc.example.test".into(),
            member: "Alpha".into(),
            country: "DE".into(),
        })
        .await
        .expect("usage");
    let text = format!("{rows:?}");
    assert!(
        text.contains("AS64501") && text.contains("Test Net DE") && text.contains("Germany"),
        "{text}"
    );

    // An override over NATS changes answers at once and survives a restart (W13).
    let client = async_nats::connect(c.nats.url()).await.expect("connect");
    client
        .publish(
            "geodns.override.update",
            r#"{"action":"set","domain":"rpc.example.test","countryCode":"CN","override":{"memberName":"Beta","ipv4":"","ipv6":""}}"#.into(),
        )
        .await
        .expect("publish");
    client.flush().await.expect("flush");
    both_answer(ports, CN, BETA).await;
    both_answer(ports, DE, ALPHA).await;
    drop(pdns);
    dns.shutdown().await;
    let dns = start_dns(&c, dir.path(), &lists, "dns-1").await;
    diagnose(&dns);
    let listener = dns.dns_addr.expect("listener").port();
    let pdns = PowerDns::start(&format!("http://{}/dns", dns.http_addr), None).expect("PowerDNS");
    both_answer([pdns.port, listener], CN, BETA).await;
    drop(pdns);
    dns.shutdown().await;
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_enforce_mode_a_dns_node_answers_only_from_backed_decisions_and_signed_overrides() {
    let (dir, lists, nats) = setup();
    let c = cluster_with(
        nats,
        &[
            ("monitor-1", "monitor", "enforce"),
            ("monitor-2", "monitor", "enforce"),
            ("monitor-3", "monitor", "enforce"),
            ("dns-1", "dns", "enforce"),
        ],
        |cfg| {
            with_lists(cfg, &lists);
            cfg.geodns.maxmind_dir = Some(dir.path().to_path_buf());
            cfg.geodns.listen = Some("127.0.0.1:0".parse().expect("addr"));
        },
    )
    .await;
    let dns = c.app("dns-1");
    diagnose(dns);
    let port = dns.dns_addr.expect("listener").port();
    both_answer([port, port], DE, ALPHA).await;

    // Forgeries: an unsigned finalize, and a validly signed one nobody voted for.
    let stranger = stranger(&c).await;
    send(
        &stranger,
        ibp_wire::subjects::FINALIZE,
        finalize("forged-1", "monitor-2", "Alpha", false),
        None,
    )
    .await;
    let body = finalize("lone-1", "monitor-1", "Alpha", false);
    let s = c
        .key("monitor-1")
        .sign(ibp_wire::subjects::FINALIZE, &body, chrono::Utc::now());
    send(&stranger, ibp_wire::subjects::FINALIZE, body, Some(s)).await;
    // An unsigned override.
    stranger
        .publish(
            "geodns.override.update",
            r#"{"action":"set","domain":"rpc.example.test","countryCode":"DE","override":{"memberName":"Beta"}}"#.into(),
        )
        .await
        .expect("publish");
    stranger.flush().await.expect("flush");
    let g = dns.geodns.as_ref().expect("geodns");
    let refused = dns
        .node
        .wait_until(
            |_| {
                g.counters()
                    .overrides_refused
                    .load(std::sync::atomic::Ordering::Relaxed)
                    >= 1
                    && metric(
                        dns,
                        "ibp_trust_rejections_total",
                        &["subject=\"consensus.finalize\""],
                    ) >= 1.0
            },
            WAIT,
        )
        .await;
    assert!(refused, "the forgeries were seen and refused");
    // The lone finalize waits for votes that never come; a real decision after it is
    // applied, so once it is, the forgeries have been handled too.
    all_observe(&c, "Beta", false).await;
    official_everywhere(&c, "Beta", false).await;
    both_answer([port, port], US, ALPHA).await;
    assert_eq!(
        ask(port, DE, "rpc.example.test", "A", &[]),
        [ALPHA],
        "forgeries changed nothing"
    );

    // A real outage of Alpha switches DE clients to Beta once Beta is back.
    all_observe(&c, "Beta", true).await;
    both_answer([port, port], US, BETA).await;
    all_observe(&c, "Alpha", false).await;
    both_answer([port, port], DE, BETA).await;

    // A signed override from a trusted key is applied.
    let body = br#"{"action":"set","domain":"rpc.example.test","countryCode":"US","override":{"memberName":"Alpha"}}"#.to_vec();
    let s = c
        .key("monitor-2")
        .sign("geodns.override.update", &body, chrono::Utc::now());
    send(&stranger, "geodns.override.update", body, Some(s)).await;
    all_observe(&c, "Alpha", true).await;
    both_answer([port, port], US, ALPHA).await;
    c.stop().await;
}

/// The issue's acceptance: a real PowerDNS in front of `ibp-node run --role dns --config
/// <the Go dns.json fixture, pointed at loopback>` answers GeoDNS and follows a decision;
/// the built-in listener gives the same answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_go_dns_config_runs_behind_powerdns_as_a_process() {
    let (dir, lists, nats) = setup();
    let c = cluster_with(
        nats,
        &[
            ("monitor-1", "monitor", "off"),
            ("monitor-2", "monitor", "off"),
            ("monitor-3", "monitor", "off"),
        ],
        |cfg| with_lists(cfg, &lists),
    )
    .await;
    let fixture = include_str!("../../../fixtures/go-configs/dns.json");
    let mut cfg: serde_json::Value = serde_json::from_str(fixture).expect("fixture");
    let http_port = common::free_port();
    let dns_port = common::free_port();
    let monitor = c.app("monitor-1").http_addr;
    let urls = &mut cfg["System"]["ConfigUrls"];
    urls["MembersConfig"] = lists.0.clone().into();
    urls["ServicesConfig"] = lists.1.clone().into();
    urls["StaticDNSConfig"] = lists.2.clone().into();
    cfg["System"]["WorkDir"] = dir.path().display().to_string().into();
    cfg["Maxmind"]["MaxmindDBPath"] = dir.path().display().to_string().into();
    cfg["Nats"] = serde_json::json!({"NodeID": "DNS1", "Url": c.nats.url()});
    cfg.as_object_mut().expect("object").remove("Mysql");
    cfg["DnsApi"]["ListenAddress"] = "127.0.0.1".into();
    cfg["DnsApi"]["ListenPort"] = http_port.to_string().into();
    cfg["DnsApi"]["MonitorAddress"] = monitor.ip().to_string().into();
    cfg["DnsApi"]["MonitorPort"] = monitor.port().to_string().into();
    let file = dir.path().join("dns.json");
    std::fs::write(&file, cfg.to_string()).expect("write");
    let listen = format!("127.0.0.1:{dns_port}");
    let file = file.display().to_string();
    let mut child = common::spawn(&[
        "run",
        "--role",
        "dns",
        "--config",
        &file,
        "--dns-listen",
        &listen,
    ]);
    let http = format!("127.0.0.1:{http_port}");
    common::ready(&http, &mut child).await;
    let pdns = PowerDns::start(&format!("http://{http}/dns"), None).expect("PowerDNS");
    let ports = [pdns.port, dns_port];

    both_answer(ports, DE, ALPHA).await;
    both_answer(ports, US, BETA).await;
    all_observe(&c, "Alpha", false).await;
    both_answer(ports, DE, BETA).await;
    all_observe(&c, "Alpha", true).await;
    both_answer(ports, DE, ALPHA).await;
    let (status, log) = common::terminate(&mut child, Duration::from_secs(10));
    assert!(status.success(), "{log}");
    drop(pdns);
    c.stop().await;
}

/// `getMemberEvents` (dns.md §6.1) over `/dns`: outages of a member starting in the range
/// from the node's database, the Go field names, open outages with the zero end time, and
/// the Go error answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_member_events_answers_from_the_database_as_the_go_node() {
    let dir = tempfile::tempdir().expect("dir");
    let nats = NatsServer::start().expect("nats-server");
    let mut cfg = common::node_config("dns", "dns-1", &nats.url(), dir.path());
    cfg.geodns.listen = None;
    let dns = App::start(cfg).await.expect("DNS node");
    let store = dns.dns.as_ref().expect("dns").store().clone();
    let started = chrono::Utc::now() - chrono::Duration::hours(2);
    let outage = |member: &str, domain: &str, id: &str| ibp_storage::EventWrite {
        key: ibp_storage::EventKey {
            check_type: ibp_wire::CheckType::Domain,
            check_name: "ssl".into(),
            member_name: member.into(),
            domain_name: domain.into(),
            endpoint: String::new(),
            is_ipv6: false,
        },
        status: false,
        at: started,
        error: "expired".into(),
        votes: None,
        data: ibp_wire::Data::from_value(&serde_json::json!({"DaysUntilExpiry": 0})),
        proposal_id: id.into(),
    };
    store
        .record_decision(&outage("Alpha", "rpc.example.test", "p1"))
        .await
        .expect("record");
    store
        .record_decision(&outage("Alpha", "other.example.test", "p2"))
        .await
        .expect("record");
    store
        .record_decision(&outage("Beta", "rpc.example.test", "p3"))
        .await
        .expect("record");

    let ask = |params: serde_json::Value| {
        let url = format!("http://{}/dns", dns.http_addr);
        async move {
            let r = reqwest::Client::new()
                .post(url)
                .body(
                    serde_json::json!({"method": "getMemberEvents", "parameters": params})
                        .to_string(),
                )
                .send()
                .await
                .expect("POST");
            let status = r.status().as_u16();
            (status, r.json::<serde_json::Value>().await.expect("json"))
        }
    };
    // Default range: the last 24 h.
    let (s, body) = ask(serde_json::json!({"memberName": "Alpha"})).await;
    assert_eq!(s, 200, "{body}");
    let events = body["result"].as_array().expect("array");
    assert_eq!(events.len(), 2, "{body}");
    let e = &events[0];
    assert_eq!(e["MemberName"], "Alpha");
    assert_eq!(e["CheckType"], "domain");
    assert_eq!(e["CheckName"], "ssl");
    assert_eq!(e["ErrorText"], "expired");
    assert_eq!(e["EndTime"], "0001-01-01T00:00:00Z", "open outage");
    assert_eq!(e["EndDate"], "");
    // The domain filter.
    let (_, body) =
        ask(serde_json::json!({"memberName": "Alpha", "domain": "rpc.example.test"})).await;
    assert_eq!(body["result"].as_array().map(Vec::len), Some(1), "{body}");
    // A range that starts after the outage began: none (events starting in range only).
    let after = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let (_, body) = ask(serde_json::json!({"memberName": "Alpha", "startTime": after})).await;
    assert_eq!(body["result"], serde_json::json!([]), "never null");
    // Go's error answers.
    let (s, body) = ask(serde_json::json!({"memberName": "Alpha", "endTime": "yesterday"})).await;
    assert_eq!((s, body["result"].as_str()), (400, Some("invalid endTime")));
    let (s, body) = ask(serde_json::json!({"memberName": "Alpha", "startTime": "soon"})).await;
    assert_eq!(
        (s, body["result"].as_str()),
        (400, Some("invalid startTime"))
    );
    dns.shutdown().await;
}
