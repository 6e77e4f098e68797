//! The HTTP API on a public listener: writes need the token (and are refused without
//! one), reads stay open, oversize bodies get 413, and neither silent clients nor a flood
//! of connections can hold the API. (The listener is on 0.0.0.0, the traffic on loopback.)

mod common;

use std::time::Duration;

use ibp_node::app::App;
use ibp_node::config::{NodeConfig, SecurityConfig, SecuritySection};
use ibp_testkit::NatsServer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const OBSERVATION: &str =
    r#"{"checkType":"site","checkName":"ping","memberName":"Alpha","isIPv6":false,"status":false}"#;

fn public(nats: &NatsServer, dir: &std::path::Path, security: SecuritySection) -> NodeConfig {
    let mut cfg = common::node_config("monitor", "monitor-1", &nats.url(), dir);
    cfg.http = "0.0.0.0:0".parse().expect("addr");
    cfg.security = SecurityConfig::resolve(Some(&security), None).expect("security");
    cfg
}

fn local(app: &App) -> String {
    format!("127.0.0.1:{}", app.http_addr.port())
}

async fn post_with(
    http: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> (u16, serde_json::Value, Option<String>) {
    let mut req = reqwest::Client::new()
        .post(format!("http://{http}{path}"))
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.expect("POST");
    let status = r.status().as_u16();
    let auth = r
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (status, r.json().await.unwrap_or_default(), auth)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_on_a_public_listener_need_the_token_and_reads_stay_open() {
    let nats = NatsServer::start().expect("nats");
    let dir = tempfile::tempdir().expect("dir");

    // A Go-style config listening on 0.0.0.0 without a token: it starts, writes refused.
    let app = App::start(public(&nats, dir.path(), SecuritySection::default()))
        .await
        .expect("starts");
    let http = local(&app);
    let (status, body, _) = post_with(&http, "/v1/observations", OBSERVATION, None).await;
    assert_eq!(status, 403, "{body}");
    let msg = body["error"].as_str().unwrap_or_default();
    assert!(
        msg.contains("http_write_token_file"),
        "the message names the setting: {msg}"
    );
    assert!(app.node.local().is_empty(), "nothing was recorded");
    let (status, _) = common::get(&http, "/v1/official").await;
    assert_eq!(status, 200, "reads stay open");
    let (status, _, _) = post_with(&http, "/results", "", None).await;
    assert_eq!(
        status, 200,
        "Go DNS nodes read /results without credentials, any method"
    );
    app.shutdown().await;

    // With a token.
    let token_file = dir.path().join("http.token");
    std::fs::write(&token_file, "s3cret-token\n").expect("token");
    let app = App::start(public(
        &nats,
        dir.path(),
        SecuritySection {
            http_write_token_file: Some(token_file),
            ..SecuritySection::default()
        },
    ))
    .await
    .expect("starts");
    let http = local(&app);
    let (status, body, auth) = post_with(&http, "/v1/observations", OBSERVATION, None).await;
    assert_eq!((status, auth.as_deref()), (401, Some("Bearer")), "{body}");
    let (status, _, _) = post_with(&http, "/v1/observations", OBSERVATION, Some("guess")).await;
    assert_eq!(status, 401);
    let (status, _, _) = post_with(&http, "/v1/usage/collect", "{}", Some("s3cret-to")).await;
    assert_eq!(
        status, 401,
        "every write endpoint is locked, not only observations"
    );
    assert!(app.node.local().is_empty(), "nothing was recorded");
    let (status, body, _) =
        post_with(&http, "/v1/observations", OBSERVATION, Some("s3cret-token")).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(
        app.node.local().len(),
        1,
        "the authorised write was recorded"
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_bodies_get_413_whether_declared_or_streamed() {
    let nats = NatsServer::start().expect("nats");
    let dir = tempfile::tempdir().expect("dir");
    let mut cfg = common::node_config("monitor", "monitor-1", &nats.url(), dir.path());
    cfg.security.http_max_body = 4096;
    let app = App::start(cfg).await.expect("starts");
    let http = local(&app);
    let big = format!("[{}]", vec![OBSERVATION; 100].join(","));
    assert!(big.len() > 4096);
    let (status, body, _) = post_with(&http, "/v1/observations", &big, None).await;
    assert_eq!(status, 413, "{body}");
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains("4096")),
        "{body}"
    );
    // Chunked: no length declared, cut off when the limit is reached.
    let mut tcp = tokio::net::TcpStream::connect(&http)
        .await
        .expect("connect");
    tcp.write_all(b"POST /v1/observations HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .expect("head");
    for c in big.as_bytes().chunks(512) {
        let mut chunk = format!("{:x}\r\n", c.len()).into_bytes();
        chunk.extend_from_slice(c);
        chunk.extend_from_slice(b"\r\n");
        // The server may answer and close before the last chunk: later writes may fail.
        if tcp.write_all(&chunk).await.is_err() {
            break;
        }
    }
    let _ = tcp.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(app.node.local().is_empty(), "nothing was recorded");
    let (status, _, _) = post_with(&http, "/v1/observations", OBSERVATION, None).await;
    assert_eq!(status, 202, "a normal body still goes through");
    app.shutdown().await;
}

/// Reads until the server closes the connection; `true` if it did within `within`.
async fn closed_within(s: &mut tokio::net::TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let read = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    };
    tokio::time::timeout(within, read).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_clients_and_connection_floods_cannot_hold_the_api() {
    let nats = NatsServer::start().expect("nats");
    let dir = tempfile::tempdir().expect("dir");
    let mut cfg = common::node_config("monitor", "monitor-1", &nats.url(), dir.path());
    cfg.security.http_max_connections = 8;
    let app = App::start(cfg).await.expect("starts");
    let http = local(&app);
    // Eight clients that connect and say nothing, or half a request line.
    let mut silent = Vec::new();
    for i in 0..8 {
        let mut s = tokio::net::TcpStream::connect(&http)
            .await
            .expect("connect");
        if i % 2 == 1 {
            s.write_all(b"GET /v1/cluster HTTP/1.1\r\nHost: x\r\n")
                .await
                .expect("write");
        }
        silent.push(s);
    }
    // The ninth is closed at once: the limit holds.
    let mut extra = tokio::net::TcpStream::connect(&http)
        .await
        .expect("connect");
    let _ = extra
        .write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    assert!(
        closed_within(&mut extra, Duration::from_secs(5)).await,
        "a connection beyond the limit is closed"
    );
    // The silent ones are closed by the header timeout (10 s; a generous bound here).
    for s in &mut silent {
        assert!(
            closed_within(s, ibp_node::http::HEADER_TIMEOUT * 3).await,
            "a silent client is disconnected"
        );
    }
    drop(silent);
    // And the API answers again (the server frees a slot just after it closes a
    // connection; from the outside that can only be polled).
    let client = reqwest::Client::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let r = client.get(format!("http://{http}/livez")).send().await;
        if r.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the API answers again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    app.shutdown().await;
}
