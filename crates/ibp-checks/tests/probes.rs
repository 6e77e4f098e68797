//! Every pass condition and single failure of checks.md §6, against real servers on
//! loopback: a `jsonrpsee` Substrate node over WebSocket (plain and TLS with a private CA),
//! a `jsonrpsee` Ethereum node over HTTP, TLS listeners with certificates expiring in 3
//! and 30 days, raw servers for what no JSON-RPC server sends, ICMP to 127.0.0.1.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ibp_checks::head::HeadTracker;
use ibp_checks::{Item, Trust, Verdict};
use ibp_testkit::endpoints::{self, Ethereum, Substrate, TestCa};
use ibp_wire::CheckType;
use serde_json::{Value, json};

/// A change to a fake node's behaviour that a check must notice.
type Tweak<T> = Box<dyn Fn(&mut T) + Send>;

const LOOPBACK: &str = "127.0.0.1";

fn ip() -> IpAddr {
    LOOPBACK.parse().expect("ip")
}

fn item(check: &str, t: CheckType, endpoint: &str, options: Value) -> Item {
    Item {
        check: check.into(),
        check_type: t,
        member: "Test Member".into(),
        service: "Svc".into(),
        domain: ibp_checks::target::domain(endpoint),
        endpoint: endpoint.into(),
        port: ibp_checks::target::port(endpoint, "https"),
        network_name: "Testnet".into(),
        state_root_hash: "0xabc1".into(),
        interval: Duration::from_secs(60),
        timeout: Duration::from_secs(30),
        options,
        ipv4: LOOPBACK.into(),
        ipv6: String::new(),
    }
}

fn fast() -> Value {
    json!({"ConnectTimeout": 2, "ReadTimeout": 1})
}

fn trust(ca: Option<&TestCa>) -> Trust {
    Trust::load(ca.map(|c| c.path())).expect("trust")
}

async fn wss(node_port: u16, trust: &Trust) -> Verdict {
    let it = item(
        "wss",
        CheckType::Endpoint,
        &format!("ws://rpc.example.test:{node_port}/testnet"),
        fast(),
    );
    ibp_checks::wss::check(&it, ip(), trust, None, "k").await
}

#[tokio::test]
async fn wss_passes_against_a_healthy_substrate_node() {
    let node = endpoints::substrate(Substrate::default(), None)
        .await
        .expect("node");
    let v = wss(node.port(), &trust(None)).await;
    assert!(v.status, "{v:?}");
    assert_eq!(v.error_text, "");
    for (k, want) in [
        ("Syncing", json!(false)),
        ("Peers", json!(true)),
        ("PeerCount", json!(5)),
        ("Network", json!(true)),
        ("Archive", json!(true)),
    ] {
        assert_eq!(v.data[k], want, "{k}: {}", v.data);
    }
    assert!(v.data["LatencyMs"].is_u64());
}

#[tokio::test]
async fn wss_single_failures_give_the_go_texts() {
    let t = trust(None);
    let cases: Vec<(&str, Tweak<Substrate>, &str)> = vec![
        (
            "syncing",
            Box::new(|s| s.syncing = Some(true)),
            "Syncing or not enough peers",
        ),
        (
            "too few peers",
            Box::new(|s| s.peers = json!(4)),
            "Syncing or not enough peers",
        ),
        (
            "no isSyncing",
            Box::new(|s| s.syncing = None),
            "Peer check failed: invalid isSyncing field",
        ),
        ("peers as text", Box::new(|s| s.peers = json!("7")), ""),
        (
            "wrong chain",
            Box::new(|s| s.chain = "Other".into()),
            "Wrong network",
        ),
        (
            "genesis mismatch",
            Box::new(|s| s.state_root = Some("0xdead".into())),
            "Network check failed: genesis state root mismatch: expected 0xabc1, got 0xdead",
        ),
        (
            "no state root",
            Box::new(|s| s.state_root = None),
            "Network check failed: state root not found in genesis header",
        ),
        (
            "empty latest",
            Box::new(|s| s.latest = None),
            "chain_getBlockHash() returned an empty result",
        ),
        (
            "health error",
            Box::new(|s| s.health_error = Some((-32601, "Method not found".into()))),
            "Peer check failed: system_health: rpc error -32601: Method not found",
        ),
    ];
    for (name, change, want) in cases {
        let mut b = Substrate::default();
        change(&mut b);
        let node = endpoints::substrate(b, None).await.expect("node");
        let v = wss(node.port(), &t).await;
        if want.is_empty() {
            assert!(v.status, "{name}: {v:?}");
        } else {
            assert!(!v.status, "{name}");
            assert_eq!(v.error_text, want, "{name}");
            assert_eq!(v.data, Value::Null, "{name}: no data on failure");
        }
    }
}

#[tokio::test]
async fn wss_times_out_on_a_silent_node_and_reports_refused_and_bad_handshakes() {
    let t = trust(None);
    let node = endpoints::substrate(
        Substrate {
            silent: Some("system_chain".into()),
            ..Substrate::default()
        },
        None,
    )
    .await
    .expect("node");
    let v = wss(node.port(), &t).await;
    assert!(
        v.error_text
            .starts_with("Network check failed: system_chain: read tcp 127.0.0.1:")
            && v.error_text.ends_with(": i/o timeout"),
        "{}",
        v.error_text
    );
    // Refused: the port closed.
    node.gate.close().await;
    let v = wss(node.port(), &t).await;
    assert_eq!(
        v.error_text,
        format!(
            "Failed to connect on IP=127.0.0.1 => dial tcp 127.0.0.1:{}: connect: connection refused",
            node.port()
        )
    );
    // An HTTP 200 where the upgrade should be.
    let http = endpoints::raw_responder(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", None)
        .await
        .expect("raw");
    let v = wss(http.addr().port(), &t).await;
    assert_eq!(
        v.error_text,
        "Failed to connect on IP=127.0.0.1 => websocket: bad handshake"
    );
    // Not JSON-RPC at all.
    let junk = endpoints::scripted_ws(|_| Some("this is not json".into()))
        .await
        .expect("ws");
    let v = wss(junk.addr().port(), &t).await;
    assert!(
        v.error_text
            .starts_with("chain_getBlockHash(): failed to decode response:"),
        "{}",
        v.error_text
    );
    // The reply's id is a string: Go's decoder refuses it.
    let bad_id =
        endpoints::scripted_ws(|_| Some(r#"{"jsonrpc":"2.0","id":"1","result":"0x1"}"#.into()))
            .await
            .expect("ws");
    let v = wss(bad_id.addr().port(), &t).await;
    assert!(
        v.error_text.contains("cannot unmarshal string"),
        "{}",
        v.error_text
    );
}

#[tokio::test]
async fn wss_over_tls_verifies_the_certificate_with_the_hostname() {
    let ca = TestCa::new().expect("ca");
    let good = ca.leaf(&["rpc.example.test"], 30 * 86_400).expect("leaf");
    let node = endpoints::substrate(Substrate::default(), Some(&good))
        .await
        .expect("node");
    let url = format!("wss://rpc.example.test:{}/testnet", node.port());
    let it = item("wss", CheckType::Endpoint, &url, fast());
    let v = ibp_checks::wss::check(&it, ip(), &trust(Some(&ca)), None, "k").await;
    assert!(v.status, "{v:?}");
    // Without the private CA the chain is unknown.
    let v = ibp_checks::wss::check(&it, ip(), &trust(None), None, "k").await;
    assert!(
        v.error_text
            .starts_with("Failed to connect on IP=127.0.0.1 => tls:"),
        "{}",
        v.error_text
    );
    // A certificate for another name.
    let other = ca.leaf(&["other.example.test"], 30 * 86_400).expect("leaf");
    let node2 = endpoints::substrate(Substrate::default(), Some(&other))
        .await
        .expect("node");
    let it = item(
        "wss",
        CheckType::Endpoint,
        &format!("wss://rpc.example.test:{}/testnet", node2.port()),
        fast(),
    );
    let v = ibp_checks::wss::check(&it, ip(), &trust(Some(&ca)), None, "k").await;
    assert!(
        !v.status && v.error_text.contains("tls:"),
        "{}",
        v.error_text
    );
}

#[tokio::test]
async fn a_frozen_or_lagging_head_fails_wss_when_detection_is_on() {
    let heads = HeadTracker::new(Some(Duration::from_millis(300)), Some(10));
    let t = trust(None);
    let a = endpoints::substrate(
        Substrate {
            head: 100,
            ..Substrate::default()
        },
        None,
    )
    .await
    .expect("a");
    let b = endpoints::substrate(
        Substrate {
            head: 130,
            ..Substrate::default()
        },
        None,
    )
    .await
    .expect("b");
    let check = |port: u16, key: &'static str| {
        let it = item(
            "wss",
            CheckType::Endpoint,
            &format!("ws://rpc.example.test:{port}/testnet"),
            fast(),
        );
        let (t, heads) = (t.clone(), &heads);
        async move { ibp_checks::wss::check(&it, ip(), &t, Some(heads), key).await }
    };
    let v = check(b.port(), "b").await;
    assert!(v.status && v.data["BlockNumber"] == 130, "{v:?}");
    let v = check(a.port(), "a").await;
    assert_eq!(
        v.error_text,
        "Head lags the best known block by 30 blocks (#100, limit 10)"
    );
    assert_eq!(v.data["BlockLag"], 30, "data kept on a head failure");
    // b stops producing blocks; the tracker's clock is real time, so let it pass.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let v = check(b.port(), "b").await;
    assert!(
        v.error_text.starts_with("Head stuck at block #130 for"),
        "{}",
        v.error_text
    );
    b.set(|s| s.head = 131);
    assert!(check(b.port(), "b").await.status, "moving again");
}

async fn eth(port: u16, options: Value) -> Verdict {
    let mut it = item(
        "ethrpc",
        CheckType::Endpoint,
        &format!("http://eth.example.test:{port}/"),
        options,
    );
    it.network_name = "0x190f1b41".into();
    ibp_checks::ethrpc::check(&it, ip(), &trust(None), None, "e").await
}

#[tokio::test]
async fn ethrpc_passes_and_fails_with_the_go_texts() {
    let node = endpoints::ethereum(Ethereum::default(), None)
        .await
        .expect("node");
    let v = eth(node.port(), fast()).await;
    assert!(v.status, "{v:?}");
    assert_eq!(v.data["chainIdDec"], 420_420_417);
    assert_eq!(v.data["network"], "0x190f1b41");
    let cases: Vec<(Tweak<Ethereum>, &str)> = vec![
        (
            Box::new(|e| e.syncing = json!({"startingBlock": "0x0"})),
            "Node is syncing",
        ),
        (Box::new(|e| e.syncing = json!(true)), "Node is syncing"),
        (
            Box::new(|e| e.syncing = json!(0)),
            "Invalid eth_syncing response: unexpected payload 0",
        ),
        (
            Box::new(|e| {
                e.chain_id = json!("0x1");
                e.net_version = json!("1");
            }),
            "Wrong network: expected 0x190f1b41, got net_version=1 chainId=0x1 (decimal=1)",
        ),
        (
            Box::new(|e| e.error = Some(("net_version".into(), -32601, "nope".into()))),
            "net_version failed: RPC error -32601: nope",
        ),
        (
            Box::new(|e| e.chain_id = json!(420_420_417)),
            "Invalid eth_chainId response",
        ),
    ];
    for (change, want) in cases {
        node.set(|e| *e = Ethereum::default());
        node.set(|e| change(e));
        let v = eth(node.port(), fast()).await;
        assert_eq!(v.error_text, want);
    }
    let broken = endpoints::raw_responder(
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx",
        None,
    )
    .await
    .expect("raw");
    let v = eth(broken.addr().port(), fast()).await;
    assert_eq!(v.error_text, "eth_chainId failed: HTTP error 500: x");
    node.gate.close().await;
    let v = eth(node.port(), fast()).await;
    assert!(
        v.error_text
            .starts_with("eth_chainId failed: request failed:"),
        "{}",
        v.error_text
    );
}

async fn ssl(ca: &TestCa, valid_secs: i64, names: &[&str]) -> Verdict {
    let leaf = ca.leaf(names, valid_secs).expect("leaf");
    let gate = endpoints::tls_listener(&leaf).await.expect("tls");
    let url = format!("wss://rpc.example.test:{}/x", gate.addr().port());
    let mut it = item("ssl", CheckType::Domain, &url, json!({"ConnectTimeout": 2}));
    it.endpoint = String::new();
    ibp_checks::ssl::check(&it, ip(), &trust(Some(ca))).await
}

#[tokio::test]
async fn ssl_checks_expiry_on_the_urls_port() {
    let ca = TestCa::new().expect("ca");
    let v = ssl(&ca, 30 * 86_400, &["rpc.example.test"]).await;
    assert!(v.status, "{v:?}");
    assert_eq!(v.data["DaysUntilExpiry"], 29, "whole days, truncated");
    assert!(
        v.data["Port"].is_string() && v.data["Port"] != "443",
        "{}",
        v.data
    );
    let v = ssl(&ca, 3 * 86_400, &["rpc.example.test"]).await;
    assert_eq!(v.error_text, "Less than 5 days to expiry");
    assert_eq!(v.data["DaysUntilExpiry"], 2);
    let v = ssl(&ca, 30 * 86_400, &["other.example.test"]).await;
    assert!(
        v.error_text.starts_with("TLS handshake failed:"),
        "{}",
        v.error_text
    );
    let v = ssl(&ca, -86_400, &["rpc.example.test"]).await;
    assert!(
        v.error_text.starts_with("TLS handshake failed:")
            && v.error_text.to_lowercase().contains("expired"),
        "{}",
        v.error_text
    );
    let closed =
        endpoints::tls_listener(&ca.leaf(&["rpc.example.test"], 86_400 * 30).expect("leaf"))
            .await
            .expect("tls");
    let port = closed.addr().port();
    closed.close().await;
    let mut it = item(
        "ssl",
        CheckType::Domain,
        &format!("wss://rpc.example.test:{port}/x"),
        json!({"ConnectTimeout": 2}),
    );
    it.endpoint = String::new();
    let v = ibp_checks::ssl::check(&it, ip(), &trust(Some(&ca))).await;
    assert_eq!(
        v.error_text,
        format!("TCP connect error: dial tcp 127.0.0.1:{port}: connect: connection refused")
    );
}

#[tokio::test]
async fn ping_answers_from_loopback_and_applies_its_thresholds() {
    let it = item(
        "ping",
        CheckType::Site,
        "",
        json!({"PingCount": 3, "PingInterval": 10}),
    );
    let v = ibp_checks::ping::check(&it, ip()).await;
    assert!(
        v.status,
        "ICMP to 127.0.0.1 (needs unprivileged ICMP or CAP_NET_RAW): {v:?}"
    );
    for k in ["PacketLoss", "MinRtt", "AvgRtt", "MaxRtt", "StdDevRtt"] {
        assert!(v.data.get(k).is_some(), "{k}");
    }
    let strict = item(
        "ping",
        CheckType::Site,
        "",
        json!({"PingCount": 2, "PingInterval": 10, "MaxLatency": -1}),
    );
    let v = ibp_checks::ping::check(&strict, ip()).await;
    assert_eq!(v.error_text, "PingCheck: avgRtt=0ms, loss=0%");
    let small = item("ping", CheckType::Site, "", json!({"PingSize": 16}));
    let v = ibp_checks::ping::check(&small, ip()).await;
    assert_eq!(
        v.error_text,
        "size 16 is less than minimum required size 24"
    );
}

#[tokio::test]
async fn a_unit_without_an_address_and_a_check_past_its_timeout_fail_clearly() {
    let checker = Arc::new(ibp_checks::Checker::new(
        ibp_checks::CheckerSettings::default(),
        trust(None),
    ));
    let mut it = item(
        "wss",
        CheckType::Endpoint,
        "ws://rpc.example.test:1/x",
        fast(),
    );
    it.ipv4 = String::new();
    let units = ibp_checks::items::units(&[it]);
    assert_eq!(units.len(), 1);
    let v = checker.check(&units[0]).await;
    assert_eq!(v.error_text, "No IPv4 or IPv6 configured");
    // A node that never answers is cut off at the item's Timeout, not its read timeouts.
    let node = endpoints::substrate(
        Substrate {
            silent: Some("chain_getBlockHash".into()),
            ..Substrate::default()
        },
        None,
    )
    .await
    .expect("node");
    let mut it = item(
        "wss",
        CheckType::Endpoint,
        &format!("ws://rpc.example.test:{}/x", node.port()),
        json!({"ReadTimeout": 60}),
    );
    it.timeout = Duration::from_secs(1);
    let units = ibp_checks::items::units(&[it]);
    let v = checker.check(&units[0]).await;
    assert_eq!(v.error_text, "check timed out after 1s (Timeout)");
}
