//! The connection manager against real nats-server processes.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ibp_node::connection::{Concurrency, ConnectErrorKind, ConnectOptions, Connection, StateKind};
use ibp_node::metrics::Metrics;
use ibp_testkit::{Auth, NatsCluster, NatsServer, ServerOptions};
use tokio::sync::Notify;

fn opts_for(server: &NatsServer) -> ConnectOptions {
    let a = server.client_auth();
    ConnectOptions {
        servers: server.url(),
        user: a.user_pass.as_ref().map(|u| u.0.clone()),
        password: a.user_pass.as_ref().map(|u| u.1.clone()),
        token: a.token.clone(),
        nkey_seed: a.nkey_seed.clone(),
        credentials_file: a.creds_file.clone(),
        tls_ca_file: a.ca_file.clone(),
        tls_cert_file: a.client_cert.as_ref().map(|c| c.0.clone()),
        tls_key_file: a.client_cert.as_ref().map(|c| c.1.clone()),
        reconnect_delay: Duration::from_millis(100),
        connect_timeout: Duration::from_secs(5),
        ..ConnectOptions::default()
    }
}

async fn connect(opts: &ConnectOptions) -> Connection {
    Connection::connect(opts, Arc::new(Metrics::new()))
        .await
        .expect("connects")
}

/// Publishes on one connection and receives on another: proves the connection works.
/// Across a cluster, interest reaches the other servers asynchronously (there is no client
/// event for it), so the probe is re-sent until it arrives.
async fn round_trip(a: &Connection, b: &Connection, subject: &str) {
    let got = Arc::new(Notify::new());
    let g = got.clone();
    let sub = b
        .subscribe(subject, Concurrency::Sequential, move |_m| {
            let g = g.clone();
            async move { g.notify_one() }
        })
        .await
        .expect("subscribes");
    b.barrier().await.expect("barrier");
    let arrived = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            a.publish_bytes(subject, "hi".into())
                .await
                .expect("publishes");
            a.flush().await.expect("flush");
            if tokio::time::timeout(Duration::from_millis(100), got.notified())
                .await
                .is_ok()
            {
                return;
            }
        }
    })
    .await;
    assert!(
        arrived.is_ok(),
        "message did not arrive; a: {:?} b: {:?}",
        a.state(),
        b.state()
    );
    sub.stop(Duration::from_secs(1)).await;
}

#[tokio::test]
async fn connects_with_every_auth_mode() {
    let modes = [
        ("none", ServerOptions::default()),
        (
            "user/password",
            ServerOptions {
                auth: Auth::UserPass("ibp".into(), "s3cret".into()),
                ..Default::default()
            },
        ),
        (
            "token",
            ServerOptions {
                auth: Auth::Token("t0ken".into()),
                ..Default::default()
            },
        ),
        (
            "nkey",
            ServerOptions {
                auth: Auth::NKey,
                ..Default::default()
            },
        ),
        (
            "credentials",
            ServerOptions {
                auth: Auth::Credentials,
                ..Default::default()
            },
        ),
        (
            "tls",
            ServerOptions {
                tls: true,
                ..Default::default()
            },
        ),
        (
            "mutual tls + user/password",
            ServerOptions {
                tls: true,
                verify_clients: true,
                auth: Auth::UserPass("u".into(), "p".into()),
                ..Default::default()
            },
        ),
    ];
    for (name, o) in modes {
        let server = NatsServer::start_with(o).unwrap_or_else(|e| panic!("{name}: {e}"));
        let opts = opts_for(&server);
        let a = Connection::connect(&opts, Arc::new(Metrics::new()))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let b = connect(&opts).await;
        assert_eq!(a.state().state, StateKind::Connected, "{name}");
        eprintln!("auth mode {name}: connected");
        round_trip(&a, &b, "auth.check").await;
        eprintln!("auth mode {name}: round trip ok");
    }
}

#[tokio::test]
async fn a_wrong_password_fails_fast_with_a_clear_error() {
    let server = NatsServer::start_with(ServerOptions {
        auth: Auth::UserPass("ibp".into(), "right".into()),
        ..Default::default()
    })
    .expect("server");
    let mut opts = opts_for(&server);
    opts.password = Some("wrong".into());
    // A guard against hanging (reconnect-forever), not a speed measurement.
    let r = tokio::time::timeout(
        Duration::from_secs(30),
        Connection::connect(&opts, Arc::new(Metrics::new())),
    )
    .await
    .expect("does not retry forever");
    let e = r.expect_err("refused");
    assert_eq!(e.kind(), ConnectErrorKind::Authorization, "{e}");
    let text = e.to_string();
    assert!(
        text.contains("authorization") && text.contains(&server.url()),
        "{text}"
    );
    assert!(
        !text.contains("wrong"),
        "the password must not appear in errors: {text}"
    );
}

#[tokio::test]
async fn an_unreachable_server_and_bad_options_fail_with_their_reason() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let opts = ConnectOptions {
        servers: format!("nats://127.0.0.1:{port}"),
        connect_timeout: Duration::from_secs(2),
        ..Default::default()
    };
    let e = Connection::connect(&opts, Arc::new(Metrics::new()))
        .await
        .expect_err("nobody listens");
    assert_eq!(e.kind(), ConnectErrorKind::Unreachable, "{e}");
    let bad = ConnectOptions {
        user: Some("x".into()),
        ..Default::default()
    };
    let e = Connection::connect(&bad, Arc::new(Metrics::new()))
        .await
        .expect_err("half a credential");
    assert_eq!(e.kind(), ConnectErrorKind::InvalidOptions);
    assert!(e.to_string().contains("user and password"), "{e}");
}

#[tokio::test]
async fn subscriptions_resume_after_the_server_is_killed_and_restarted() {
    let mut server = NatsServer::start().expect("server");
    let opts = opts_for(&server);
    let a = connect(&opts).await;
    let b = connect(&opts).await;
    let seen = Arc::new(AtomicUsize::new(0));
    let got = Arc::new(Notify::new());
    let (s2, g2) = (seen.clone(), got.clone());
    let _sub = b
        .subscribe("resume.check", Concurrency::Sequential, move |_m| {
            let (s, g) = (s2.clone(), g2.clone());
            async move {
                s.fetch_add(1, Ordering::SeqCst);
                g.notify_one();
            }
        })
        .await
        .expect("subscribes");
    b.barrier().await.expect("barrier");
    a.publish_bytes("resume.check", "1".into())
        .await
        .expect("publish");
    tokio::time::timeout(Duration::from_secs(10), got.notified())
        .await
        .expect("first message");

    let mut state = b.watch_state();
    server.kill();
    tokio::time::timeout(
        Duration::from_secs(30),
        state.wait_for(|s| s.state == StateKind::Disconnected),
    )
    .await
    .expect("disconnect noticed")
    .expect("watch open");
    server.restart().expect("restarts");
    let s = tokio::time::timeout(
        Duration::from_secs(30),
        state.wait_for(|s| s.state == StateKind::Reconnected),
    )
    .await
    .expect("reconnects")
    .expect("watch open")
    .clone();
    assert_eq!(s.reconnects, 1);
    let mut sa = a.watch_state();
    tokio::time::timeout(
        Duration::from_secs(30),
        sa.wait_for(|s| s.state == StateKind::Reconnected),
    )
    .await
    .expect("publisher reconnects")
    .expect("watch open");
    b.barrier().await.expect("barrier");
    a.publish_bytes("resume.check", "2".into())
        .await
        .expect("publish after restart");
    tokio::time::timeout(Duration::from_secs(10), got.notified())
        .await
        .expect("the subscription resumed");
    assert_eq!(seen.load(Ordering::SeqCst), 2);
    assert!(b.metrics().encode().contains("ibp_nats_reconnects_total 1"));
}

#[tokio::test]
async fn fails_over_between_the_servers_of_a_three_server_cluster() {
    let mut cluster = NatsCluster::start(ServerOptions::default()).expect("cluster");
    // The subscriber knows only server 0 first; the cluster tells it about the others.
    let mut sub_opts = ConnectOptions {
        servers: cluster.urls(),
        reconnect_delay: Duration::from_millis(100),
        ..Default::default()
    };
    let sub_conn = connect(&sub_opts).await;
    let first = sub_conn.state().server.expect("server");
    sub_opts.servers = cluster.server(2).url();
    let pub_conn = connect(&sub_opts).await;
    round_trip(&pub_conn, &sub_conn, "failover.before").await;

    // Kill whichever server the subscriber is on.
    let victim = (0..3)
        .find(|i| first.ends_with(&format!(":{}", cluster.server(*i).port())))
        .expect("known server");
    let mut state = sub_conn.watch_state();
    cluster.server(victim).kill();
    tokio::time::timeout(
        Duration::from_secs(30),
        state.wait_for(|s| s.state == StateKind::Reconnected),
    )
    .await
    .expect("fails over")
    .expect("watch open");
    let now_on = sub_conn.state().server.expect("server");
    assert!(
        !now_on.ends_with(&format!(":{}", cluster.server(victim).port())),
        "moved off the killed server: {now_on}"
    );
    // The publisher may have been on the victim too; wait until it is connected somewhere.
    let mut ps = pub_conn.watch_state();
    tokio::time::timeout(
        Duration::from_secs(30),
        ps.wait_for(|s| s.state != StateKind::Disconnected),
    )
    .await
    .expect("publisher connected")
    .expect("watch open");
    round_trip(&pub_conn, &sub_conn, "failover.after").await;
}

#[tokio::test]
async fn a_burst_of_200k_messages_reaches_one_subscriber_without_loss() {
    const N: usize = 200_000;
    let server = NatsServer::start().expect("server");
    let opts = opts_for(&server);
    let publisher = connect(&opts).await;
    let subscriber = connect(&opts).await;
    let seen = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(Notify::new());
    let (s2, d2) = (seen.clone(), done.clone());
    let _sub = subscriber
        .subscribe("burst", Concurrency::default(), move |_m| {
            let (s, d) = (s2.clone(), d2.clone());
            async move {
                if s.fetch_add(1, Ordering::SeqCst) + 1 == N {
                    d.notify_one();
                }
            }
        })
        .await
        .expect("subscribes");
    subscriber.barrier().await.expect("barrier");
    for i in 0..N {
        publisher
            .publish_bytes("burst", format!("{i}").into())
            .await
            .expect("publish");
    }
    publisher.flush().await.expect("flush");
    tokio::time::timeout(Duration::from_secs(120), done.notified())
        .await
        .unwrap_or_else(|_| panic!("only {} of {N} handled", seen.load(Ordering::SeqCst)));
    assert_eq!(seen.load(Ordering::SeqCst), N);
    assert!(
        !subscriber
            .metrics()
            .encode()
            .contains("ibp_nats_slow_consumers_total 1")
    );
}

#[tokio::test]
async fn a_panicking_or_slow_handler_never_stops_the_subscription() {
    let server = NatsServer::start().expect("server");
    let opts = opts_for(&server);
    let a = connect(&opts).await;
    let b = connect(&opts).await;
    let handled = Arc::new(AtomicUsize::new(0));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let max_in_flight = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(Notify::new());
    let all = Arc::new(Notify::new());
    let (h, f, mx, r, al) = (
        handled.clone(),
        in_flight.clone(),
        max_in_flight.clone(),
        release.clone(),
        all.clone(),
    );
    let _sub = b
        .subscribe("handlers", Concurrency::Bounded(4), move |m| {
            let (h, f, mx, r, al) = (h.clone(), f.clone(), mx.clone(), r.clone(), al.clone());
            async move {
                let now = f.fetch_add(1, Ordering::SeqCst) + 1;
                mx.fetch_max(now, Ordering::SeqCst);
                let body = String::from_utf8_lossy(&m.payload).to_string();
                if body == "slow" {
                    r.notified().await;
                }
                f.fetch_sub(1, Ordering::SeqCst);
                if body == "panic" {
                    panic!("handler bug");
                }
                if h.fetch_add(1, Ordering::SeqCst) + 1 == 20 {
                    al.notify_one();
                }
            }
        })
        .await
        .expect("subscribes");
    b.barrier().await.expect("barrier");
    a.publish_bytes("handlers", "slow".into())
        .await
        .expect("publish");
    for _ in 0..5 {
        a.publish_bytes("handlers", "panic".into())
            .await
            .expect("publish");
    }
    for _ in 0..19 {
        a.publish_bytes("handlers", "ok".into())
            .await
            .expect("publish");
    }
    a.flush().await.expect("flush");
    // 19 fast messages pass the slow one and the 5 panics.
    let fast_done = async {
        while handled.load(Ordering::SeqCst) < 19 {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), fast_done)
        .await
        .expect("fast messages handled while one is stuck");
    release.notify_one();
    tokio::time::timeout(Duration::from_secs(20), all.notified())
        .await
        .expect("the slow one finishes too");
    assert!(
        max_in_flight.load(Ordering::SeqCst) <= 4,
        "bounded to 4 in flight"
    );
    assert!(b.metrics().encode().contains("ibp_handler_panics_total 5"));
}

#[tokio::test]
async fn typed_requests_round_trip_and_undecodable_messages_are_counted_and_dropped() {
    use ibp_wire::{UsageRequest, UsageResponse, Vote};
    let server = NatsServer::start().expect("server");
    let opts = opts_for(&server);
    let a = connect(&opts).await;
    let b = connect(&opts).await;
    let responder = b.clone();
    let _sub = b
        .subscribe_decoded::<UsageRequest, _, _>(
            "typed.req",
            Concurrency::default(),
            move |req, msg| {
                let r = responder.clone();
                async move {
                    let resp = UsageResponse {
                        node_id: req.domain,
                        ..UsageResponse::default()
                    };
                    if let Some(reply) = msg.reply {
                        r.publish(reply.as_str(), &resp).await.expect("reply");
                    }
                }
            },
        )
        .await
        .expect("subscribes");
    b.barrier().await.expect("barrier");
    let req = UsageRequest {
        domain: "echo-me".into(),
        ..UsageRequest::default()
    };
    let resp: UsageResponse = a
        .request("typed.req", &req, Duration::from_secs(10))
        .await
        .expect("reply");
    assert_eq!(resp.node_id, "echo-me");
    let e = a
        .request::<_, UsageResponse>("nobody.listens", &req, Duration::from_secs(10))
        .await
        .expect_err("no responders");
    assert_eq!(e.op(), "request");

    // A flood of garbage is counted, never handled, and the subscription keeps working.
    let seen = Arc::new(AtomicUsize::new(0));
    let got = Arc::new(Notify::new());
    let (s2, g2) = (seen.clone(), got.clone());
    let _votes = b
        .subscribe_decoded::<Vote, _, _>("typed.vote", Concurrency::Sequential, move |v, _| {
            let (s, g) = (s2.clone(), g2.clone());
            async move {
                assert_eq!(v.proposal_id, "p1");
                s.fetch_add(1, Ordering::SeqCst);
                g.notify_one();
            }
        })
        .await
        .expect("subscribes");
    b.barrier().await.expect("barrier");
    for i in 0..500 {
        a.publish_bytes("typed.vote", format!("{{not json {i}").into())
            .await
            .expect("publish");
    }
    a.publish_bytes(
        "typed.vote",
        r#"{"ProposalID":"p1","NodeID":"m","SenderNodeID":"m","Agree":true}"#.into(),
    )
    .await
    .expect("publish");
    a.flush().await.expect("flush");
    tokio::time::timeout(Duration::from_secs(10), got.notified())
        .await
        .expect("the good vote after the garbage");
    assert_eq!(seen.load(Ordering::SeqCst), 1);
    assert!(
        b.metrics()
            .encode()
            .contains(r#"ibp_decode_failures_total{subject="typed.vote"} 500"#)
    );
}
