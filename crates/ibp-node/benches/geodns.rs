//! GeoDNS benchmarks (`cargo bench -p ibp-node --bench geodns`), all on loopback: three
//! monitors and a DNS node in this process on one nats-server, made-up MaxMind databases,
//! and (when installed) a real PowerDNS with its caches off in front of `/dns`.
//!
//! 1. Queries per second and p50/p99 latency, closed loop with 32 clients: the remote
//!    backend directly (`POST /dns`, what PowerDNS sends), PowerDNS over UDP, and the
//!    built-in listener over UDP. Each query comes from another client address.
//! 2. Decision to answer: a member goes down (then up) by consensus; from the moment a
//!    stranger's client receives the finalize to the first answer that follows it, through
//!    the listener and through PowerDNS, probed in a tight loop. 20 rounds each way.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hickory_proto::op::{Edns, Message};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
use hickory_proto::rr::{Name, RData, RecordType};
use ibp_core::{CheckKey, Observation};
use ibp_node::app::App;
use ibp_node::config::{FileConfig, NodeConfig, Overrides};
use ibp_testkit::NatsServer;
use ibp_testkit::geo::{PowerDns, write_maxmind};
use ibp_wire::CheckType;

const MEMBERS: &str = r#"{
  "Alpha": {"Details": {"Name": "Alpha"}, "Service": {"Active": 1, "ServiceIPv4": "127.20.0.1", "ServiceIPv6": "fd00:20::1"},
            "ServiceAssignments": {"Professional": ["Polkadot"]}, "Location": {"Latitude": 50.0, "Longitude": 8.5}},
  "Beta":  {"Details": {"Name": "Beta"}, "Service": {"Active": 1, "ServiceIPv4": "127.20.0.2", "ServiceIPv6": "fd00:20::2"},
            "ServiceAssignments": {"Professional": ["Polkadot"]}, "Location": {"Latitude": 39.0, "Longitude": -77.0}}
}"#;
const SERVICES: &str = r#"{"Polkadot": {"Configuration": {"Active": 1},
  "Providers": {"Alpha": {"RpcUrls": ["wss://rpc.example.test/polkadot"]}}}}"#;
const NAME: &str = "rpc.example.test.";
const CLIENTS: usize = 32;
const RUN: Duration = Duration::from_secs(5);
const ROUNDS: usize = 20;

fn config(role: &str, id: &str, nats: &str, dir: &std::path::Path) -> NodeConfig {
    let o = Overrides {
        role: Some(role.into()),
        node_id: Some(id.into()),
        nats_url: Some(nats.into()),
        http: Some("127.0.0.1:0".into()),
        db: Some(format!(
            "sqlite://{}",
            dir.join(format!("{id}.db")).display()
        )),
        work_dir: Some(dir.to_path_buf()),
        dns_listen: (role == "dns").then(|| "127.0.0.1:0".into()),
    };
    let mut cfg = NodeConfig::resolve(&FileConfig::default(), &o).expect("config");
    for (k, f) in [
        ("MembersConfig", "members.json"),
        ("ServicesConfig", "services.json"),
    ] {
        cfg.config_urls
            .insert(k.into(), dir.join(f).display().to_string());
    }
    cfg.geodns.maxmind_dir = Some(dir.to_path_buf());
    cfg
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn report(what: &str, mut lat: Vec<Duration>, elapsed: Duration) {
    lat.sort();
    println!(
        "{what:<34} {:>8.0} q/s   p50 {:>6.3} ms   p99 {:>6.3} ms   ({} queries)",
        lat.len() as f64 / elapsed.as_secs_f64(),
        percentile(&lat, 0.5).as_secs_f64() * 1000.0,
        percentile(&lat, 0.99).as_secs_f64() * 1000.0,
        lat.len()
    );
}

/// A UDP query for the service name from client subnet `10.<a>.<b>.0/24` (ECS), so each
/// query stands for another client, as the backend sees real traffic.
fn query(i: usize) -> Vec<u8> {
    let mut m = Message::query();
    m.add_query(hickory_proto::op::Query::query(
        Name::from_ascii(NAME).expect("name"),
        RecordType::A,
    ));
    let mut e = Edns::new();
    let ip = std::net::Ipv4Addr::new(10, 1 + (i % 3) as u8, (i / 3 % 250) as u8, 0);
    e.options_mut()
        .insert(EdnsOption::Subnet(ClientSubnet::new(ip.into(), 24, 0)));
    m.edns = Some(e);
    m.to_vec().expect("encode")
}

/// The A answers of a reply.
fn answers(buf: &[u8]) -> Vec<std::net::Ipv4Addr> {
    Message::from_vec(buf)
        .map(|m| {
            m.answers
                .iter()
                .filter_map(|r| match &r.data {
                    RData::A(a) => Some(a.0),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn ask_udp(sock: &tokio::net::UdpSocket, q: &[u8]) -> Option<Vec<std::net::Ipv4Addr>> {
    sock.send(q).await.ok()?;
    let mut buf = [0u8; 1500];
    let n = tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf))
        .await
        .ok()?
        .ok()?;
    Some(answers(&buf[..n]))
}

async fn load_udp(what: &str, server: SocketAddr) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        tasks.push(tokio::spawn(async move {
            let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("bind");
            sock.connect(server).await.expect("connect");
            let mut lat = Vec::new();
            let mut i = c;
            let mut failed = 0;
            while started.elapsed() < RUN {
                let t = Instant::now();
                match ask_udp(&sock, &query(i)).await {
                    Some(a) if !a.is_empty() => lat.push(t.elapsed()),
                    _ => failed += 1,
                }
                i += CLIENTS;
            }
            (lat, failed)
        }));
    }
    let mut all = Vec::new();
    let mut failed = 0;
    for t in tasks {
        let (l, f) = t.await.expect("client");
        all.extend(l);
        failed += f;
    }
    report(what, all, started.elapsed());
    if failed > 0 {
        println!("{:<34} {failed} queries unanswered or empty", "");
    }
}

async fn load_backend(http: SocketAddr) {
    let client = reqwest::Client::new();
    let url = format!("http://{http}/dns");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = c;
            while started.elapsed() < RUN {
                let body = format!(
                    r#"{{"method":"lookup","parameters":{{"qname":"{NAME}","qtype":"ANY","remote":"127.0.0.1","real-remote":"10.{}.{}.0/24","zone-id":-1}}}}"#,
                    1 + i % 3,
                    i / 3 % 250
                );
                let t = Instant::now();
                let r = client.post(&url).body(body).send().await.expect("POST");
                assert!(r.status().is_success());
                let _ = r.bytes().await.expect("body");
                lat.push(t.elapsed());
                i += CLIENTS;
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("client"));
    }
    report("remote backend POST /dns (ANY)", all, started.elapsed());
}

/// Probes `server` in a tight loop until the answer to a DE client is `want`; returns
/// when it was first seen.
async fn first_answer(
    server: SocketAddr,
    want: std::net::Ipv4Addr,
    stop: Arc<AtomicBool>,
) -> Option<Instant> {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.ok()?;
    sock.connect(server).await.ok()?;
    // 10.1.0.0/16 is Germany in the test databases: Alpha's side of the world.
    let q = query(0);
    while !stop.load(Ordering::Relaxed) {
        if ask_udp(&sock, &q).await.is_some_and(|a| a == [want]) {
            return Some(Instant::now());
        }
    }
    None
}

fn key() -> CheckKey {
    CheckKey::new(CheckType::Site, "ping", "Alpha", "", "", false)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let dir = tempfile::tempdir().expect("dir");
    write_maxmind(dir.path()).expect("MaxMind test databases");
    std::fs::write(dir.path().join("members.json"), MEMBERS).expect("write");
    std::fs::write(dir.path().join("services.json"), SERVICES).expect("write");
    let nats = NatsServer::start().expect("nats-server");
    let mut monitors = Vec::new();
    for i in 1..=3 {
        let cfg = config("monitor", &format!("monitor-{i}"), &nats.url(), dir.path());
        monitors.push(App::start(cfg).await.expect("monitor"));
    }
    let dns = App::start(config("dns", "dns-1", &nats.url(), dir.path()))
        .await
        .expect("DNS node");
    for a in monitors.iter().chain([&dns]) {
        assert!(
            a.node
                .wait_for_active(ibp_wire::Role::Monitor, 3, Duration::from_secs(20))
                .await
        );
    }
    let listener = dns.dns_addr.expect("listener");
    let pdns = PowerDns::start(&format!("http://{}/dns", dns.http_addr), None)
        .map_err(|e| println!("PowerDNS not run: {e}"))
        .ok();
    let pdns_addr: Option<SocketAddr> = pdns.as_ref().map(|p| ([127, 0, 0, 1], p.port).into());
    // Wait until the lists are loaded and answers flow.
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .expect("bind");
    sock.connect(listener).await.expect("connect");
    let deadline = Instant::now() + Duration::from_secs(20);
    while ask_udp(&sock, &query(0)).await.is_none_or(|a| a.is_empty()) {
        assert!(Instant::now() < deadline, "the DNS node never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    println!(
        "GeoDNS throughput ({CLIENTS} clients, closed loop, {} s each; 2-core machine, all in one process)",
        RUN.as_secs()
    );
    load_backend(dns.http_addr).await;
    load_udp("built-in listener (UDP, A)", listener).await;
    if let Some(p) = pdns_addr {
        load_udp("PowerDNS -> /dns (UDP, A, no cache)", p).await;
    }

    // Decision to answer.
    let spy = async_nats::connect(nats.url()).await.expect("spy");
    let mut finalizes = spy
        .subscribe("consensus.finalize")
        .await
        .expect("subscribe");
    spy.flush().await.expect("flush");
    let alpha: std::net::Ipv4Addr = "127.20.0.1".parse().expect("ip");
    let beta: std::net::Ipv4Addr = "127.20.0.2".parse().expect("ip");
    let mut via_listener = Vec::new();
    let mut via_pdns = Vec::new();
    for round in 0..ROUNDS * 2 {
        let down = round % 2 == 0;
        let want = if down { beta } else { alpha };
        let stop = Arc::new(AtomicBool::new(false));
        let probe_l = tokio::spawn(first_answer(listener, want, stop.clone()));
        let probe_p = pdns_addr.map(|p| tokio::spawn(first_answer(p, want, stop.clone())));
        for m in &monitors[1..] {
            m.node
                .set_local(Observation::new(key(), !down))
                .await
                .expect("local");
        }
        monitors[0]
            .node
            .observe(Observation::new(key(), !down))
            .await
            .expect("observe");
        let decided = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(m) = finalizes.next().await {
                if let Ok(f) = ibp_wire::decode::<ibp_wire::FinalizeMessage>(&m.payload)
                    && f.passed
                    && f.proposal.member_name == "Alpha"
                    && f.proposal.proposed_status != down
                {
                    return Instant::now();
                }
            }
            Instant::now()
        })
        .await
        .expect("a decision");
        let settle = tokio::time::timeout(Duration::from_secs(10), probe_l).await;
        let t = settle
            .ok()
            .and_then(|r| r.ok())
            .flatten()
            .expect("listener follows");
        via_listener.push(t.saturating_duration_since(decided));
        if let Some(p) = probe_p {
            let t = tokio::time::timeout(Duration::from_secs(10), p)
                .await
                .ok()
                .and_then(|r| r.ok())
                .flatten()
                .expect("PowerDNS follows");
            via_pdns.push(t.saturating_duration_since(decided));
        }
        stop.store(true, Ordering::Relaxed);
        // Let the late votes and finalizes of this round settle before the next.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let show = |what: &str, mut v: Vec<Duration>| {
        v.sort();
        println!(
            "decision -> answer, {what:<22} p50 {:>6.2} ms   p99 {:>6.2} ms   max {:>6.2} ms   ({} changes; target < 1000 ms, Go node: up to 30 s + TTL by design)",
            percentile(&v, 0.5).as_secs_f64() * 1000.0,
            percentile(&v, 0.99).as_secs_f64() * 1000.0,
            v.last().copied().unwrap_or_default().as_secs_f64() * 1000.0,
            v.len()
        );
    };
    show("built-in listener", via_listener);
    if !via_pdns.is_empty() {
        show("PowerDNS, caches off", via_pdns);
    }
    drop(pdns);
    dns.shutdown().await;
    for m in monitors {
        m.shutdown().await;
    }
}
