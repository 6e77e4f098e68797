//! A whole cluster (3 monitors, 1 DNS node, 1 collator with JetStream) under the per-role
//! permissions of `docs/nats-secure.conf`, over TLS with a private CA and client
//! certificates: everything works, and a DNS node's credentials cannot publish
//! `consensus.*` or read votes. A control shows the forgery would have worked with
//! credentials that may publish it.

mod common;

use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use ibp_core::{CheckKey, Observation};
use ibp_node::app::App;
use ibp_node::nats_permissions::{User, authorization};
use ibp_node::roles::Hit;
use ibp_testkit::{NatsServer, ServerOptions};
use ibp_wire::{CheckType, DowntimeRequest, FinalizeMessage, Proposal, Role, WireTime, subjects};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(20);

fn key(member: &str) -> CheckKey {
    CheckKey::new(CheckType::Site, "ping", member, "", "", false)
}

fn password(role: Role) -> String {
    format!("pw-{}-{}", role.short_name(), std::process::id())
}

fn users() -> Vec<User> {
    Role::ALL
        .into_iter()
        .map(|role| User {
            role,
            user: role.short_name().into(),
            password: Some(password(role)),
        })
        .collect()
}

fn config(
    server: &NatsServer,
    role: Role,
    id: &str,
    dir: &std::path::Path,
) -> ibp_node::config::NodeConfig {
    let mut cfg = common::node_config(role.short_name(), id, &server.url(), dir);
    let auth = server.client_auth();
    cfg.nats.user = Some(role.short_name().into());
    cfg.nats.password = Some(password(role));
    cfg.nats.tls_ca_file = auth.ca_file.clone();
    if let Some((c, k)) = &auth.client_cert {
        cfg.nats.tls_cert_file = Some(c.clone());
        cfg.nats.tls_key_file = Some(k.clone());
    }
    cfg.nats.tls_required = true;
    cfg
}

/// A raw client with `role`'s credentials and the client certificate; server errors
/// (permission violations) arrive on the channel.
async fn client_as(
    server: &NatsServer,
    role: Role,
) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
    let auth = server.client_auth();
    let (tx, rx) = mpsc::unbounded_channel();
    let mut o = async_nats::ConnectOptions::with_user_and_password(
        role.short_name().into(),
        password(role),
    )
    .require_tls(true)
    .event_callback(move |e| {
        let tx = tx.clone();
        async move {
            if let async_nats::Event::ServerError(e) = e {
                let _ = tx.send(e.to_string());
            }
        }
    });
    if let Some(ca) = &auth.ca_file {
        o = o.add_root_certificates(ca.clone());
    }
    if let Some((c, k)) = &auth.client_cert {
        o = o.add_client_certificate(c.clone(), k.clone());
    }
    (o.connect(server.url()).await.expect("connects"), rx)
}

fn forged_finalize(member: &str) -> Bytes {
    let proposal = Proposal {
        id: format!("forged-{member}"),
        sender_node_id: "monitor-1".into(),
        check_type: "site".into(),
        check_name: "ping".into(),
        member_name: member.into(),
        proposed_status: false,
        timestamp: WireTime::from_utc(Utc::now()),
        ..Proposal::default()
    };
    Bytes::from(
        ibp_wire::encode(&FinalizeMessage {
            proposal,
            sender_node_id: "monitor-1".into(),
            passed: true,
            decided_at: WireTime::from_utc(Utc::now()),
        })
        .expect("encode"),
    )
}

async fn violation(rx: &mut mpsc::UnboundedReceiver<String>, what: &str) {
    let got = tokio::time::timeout(WAIT, async {
        while let Some(e) = rx.recv().await {
            if e.to_ascii_lowercase().contains("permissions violation") && e.contains(what) {
                return e;
            }
        }
        String::new()
    })
    .await
    .unwrap_or_default();
    assert!(!got.is_empty(), "the server refused {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_runs_under_per_role_permissions_and_dns_credentials_cannot_publish_consensus() {
    let server = NatsServer::start_with(ServerOptions {
        jetstream: true,
        tls: true,
        verify_clients: true,
        extra: authorization(&users()),
        ..Default::default()
    })
    .expect("nats-server with TLS and permissions");
    let dir = tempfile::tempdir().expect("dir");
    let mut monitors = Vec::new();
    for i in 1..=3 {
        let cfg = config(&server, Role::Monitor, &format!("monitor-{i}"), dir.path());
        monitors.push(App::start(cfg).await.expect("monitor starts"));
    }
    let dns = App::start(config(&server, Role::Dns, "dns-1", dir.path()))
        .await
        .expect("dns starts");
    let mut ccfg = config(&server, Role::Collator, "collator-1", dir.path());
    ccfg.collator.jetstream = true;
    let collator = App::start(ccfg).await.expect("collator starts");
    for a in monitors.iter().chain([&dns, &collator]) {
        assert!(
            a.node.wait_for_active(Role::Monitor, 3, WAIT).await,
            "{} sees the monitors",
            a.node.id()
        );
        assert!(
            a.node.wait_for_active(Role::Dns, 1, WAIT).await,
            "{} sees the DNS node",
            a.node.id()
        );
    }

    // Consensus, the durable record, usage and downtime fan-outs all work.
    // monitor-2 sees it first, so it agrees when monitor-1 proposes.
    monitors[1]
        .node
        .set_local(Observation::new(key("Alpha"), false))
        .await
        .expect("local");
    monitors[0]
        .monitor
        .as_ref()
        .expect("monitor")
        .observe(
            &monitors[0].node,
            vec![Observation::new(key("Alpha"), false)],
        )
        .await
        .expect("observe");
    for m in &monitors {
        assert!(
            m.node
                .wait_until(
                    |n| n
                        .official()
                        .iter()
                        .any(|(k, o)| *k == key("Alpha") && !o.status),
                    WAIT
                )
                .await,
            "{} decides the outage",
            m.node.id()
        );
    }
    let c = collator.collator.clone().expect("collator");
    assert!(
        c.wait_recorded(1, WAIT).await,
        "the collator records it through JetStream"
    );
    let d = dns.dns.as_ref().expect("dns");
    d.record_dns_hit(&Hit {
        date: None,
        domain: "rpc.alpha.io".into(),
        member: "Alpha".into(),
        country_code: "DE".into(),
        country_name: "Germany".into(),
        asn: "AS3320".into(),
        network: "x".into(),
        is_ipv6: false,
        hits: Some(7),
    })
    .expect("hit");
    d.flush().await;
    let today = Utc::now().date_naive();
    let report = c
        .collect(&collator.node, today, today)
        .await
        .expect("collects");
    assert_eq!(report.hits_by_node.get("dns-1"), Some(&7), "{report:?}");
    let req = DowntimeRequest {
        start_time: WireTime::from_utc(Utc::now() - chrono::TimeDelta::hours(1)),
        end_time: WireTime::from_utc(Utc::now()),
        member_name: "Alpha".into(),
    };
    let dt = ibp_node::collectors::request_all_monitors_downtime(
        &collator.node,
        &req,
        Duration::from_secs(10),
    )
    .await
    .expect("downtime");
    assert_eq!(dt.answered.len(), 3, "every monitor answers");

    // A DNS node's credentials: no consensus publishing, no reading proposals (it reads
    // votes and finalizes to answer from decisions).
    let (evil, mut errors) = client_as(&server, Role::Dns).await;
    evil.publish(subjects::FINALIZE.to_string(), forged_finalize("Victim"))
        .await
        .expect("sent (the server refuses it)");
    evil.flush().await.expect("flush");
    violation(&mut errors, subjects::FINALIZE).await;
    let _sub = evil
        .subscribe(subjects::PROPOSE.to_string())
        .await
        .expect("sub sent");
    evil.flush().await.expect("flush");
    violation(&mut errors, subjects::PROPOSE).await;
    for m in &monitors {
        assert!(
            m.node
                .official()
                .iter()
                .all(|(k, _)| k.member_name != "Victim"),
            "{}: the refused finalize never arrived",
            m.node.id()
        );
    }
    // Control: the same bytes with credentials allowed to publish them do arrive (the
    // cluster runs in security mode off, so only the server stood in the way above).
    let (monitor_creds, _) = client_as(&server, Role::Monitor).await;
    monitor_creds
        .publish(subjects::FINALIZE.to_string(), forged_finalize("Control"))
        .await
        .expect("publish");
    monitor_creds.flush().await.expect("flush");
    assert!(
        monitors[0]
            .node
            .wait_until(
                |n| n.official().iter().any(|(k, _)| k.member_name == "Control"),
                WAIT
            )
            .await,
        "with monitor credentials the forgery gets through: permissions are what stopped it"
    );

    for a in monitors.into_iter().chain([dns, collator]) {
        a.shutdown().await;
    }
}
