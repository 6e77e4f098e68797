//! Fan-out benchmark (`cargo bench -p ibp-node --bench fanout`): 50 DNS nodes with 10,000
//! usage records each answer one usage request; the time to the complete result and the
//! bytes moved. Run with the production `max_payload` (8 MB) and the server default (1 MB).

use std::time::{Duration, Instant};

use ibp_node::cluster::{Node, NodeOptions, RoleServices};
use ibp_node::collectors;
use ibp_node::roles::{DnsService, HitLimits, StorageHealth};
use ibp_storage::{Store, UsageRow};
use ibp_testkit::{NatsServer, ServerOptions};
use ibp_wire::{NodeId, Role, UsageRequest};

const NODES: usize = 50;
const RECORDS: usize = 10_000;

fn rows(node: &str) -> Vec<UsageRow> {
    ibp_node::bench::usage_rows(node, RECORDS)
}

async fn run(max_payload: u64, dir: &std::path::Path) {
    // 50 replies of ~2 MB arrive at once: give the requester's connection room (the server
    // cuts off a client with more than max_pending bytes buffered as a slow consumer).
    let server = NatsServer::start_with(ServerOptions {
        max_payload: Some(max_payload),
        max_pending: Some(512 << 20),
        ..Default::default()
    })
    .expect("nats-server");
    let url = server.url();
    let mut dns = Vec::new();
    for i in 0..NODES {
        let id = format!("dns-{i:02}");
        let path = dir.join(format!("{id}-{max_payload}.db"));
        let store = Store::open(&format!("sqlite://{}", path.display()))
            .await
            .expect("store");
        let (svc, services) =
            DnsService::open(StorageHealth::standalone(store), &id, HitLimits::default())
                .await
                .expect("dns");
        svc.store().increment_usage(&rows(&id)).await.expect("seed");
        let node = Node::connect(NodeOptions::new(NodeId::new(id).expect("id"), url.clone()))
            .await
            .expect("connect");
        node.enable(Role::Dns, services).await.expect("enable");
        dns.push(node);
    }
    let c = Node::connect(NodeOptions::new(
        NodeId::new("collator").expect("id"),
        url.clone(),
    ))
    .await
    .expect("connect");
    c.enable(Role::Collator, RoleServices::default())
        .await
        .expect("enable");
    assert!(
        c.wait_for_active(Role::Dns, NODES, Duration::from_secs(60))
            .await
    );
    let req = UsageRequest {
        start_date: "2026-11-20".into(),
        end_date: "2026-11-20".into(),
        ..UsageRequest::default()
    };
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..5 {
        let started = Instant::now();
        let r = collectors::request_all_dns_usage(&c, &req, Duration::from_secs(60))
            .await
            .expect("fan-out");
        let t = started.elapsed();
        assert!(
            r.complete,
            "missing {} after {:?}: {:?}\nserver log:\n{}",
            r.missing.len(),
            t,
            r.missing,
            server.log_tail(20)
        );
        assert_eq!(r.records.len(), NODES * RECORDS);
        bytes = r.bytes;
        times.push(t);
    }
    times.sort();
    println!(
        "fan-out, {NODES} DNS nodes x {RECORDS} records, max_payload {} MB: complete in median {:.2} s (min {:.2} s, max {:.2} s over 5), {:.1} MB moved",
        max_payload / (1024 * 1024),
        times[2].as_secs_f64(),
        times[0].as_secs_f64(),
        times[4].as_secs_f64(),
        bytes as f64 / 1e6
    );
    for n in dns {
        n.shutdown(Duration::from_secs(1)).await;
    }
    c.shutdown(Duration::from_secs(1)).await;
}

fn main() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("dir");
    rt.block_on(async {
        run(8 * 1024 * 1024, dir.path()).await;
        run(1024 * 1024, dir.path()).await;
    });
}
