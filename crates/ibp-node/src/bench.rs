//! `ibp-node bench`: numbers an operator can reproduce on their own machine. It starts its
//! own nats-server and nodes (in this process, on loopback), runs the workloads and prints
//! one JSON document:
//!
//! * decision latency (p50/p90/p99/max) with 3, 5 and 9 monitors: from a monitor's
//!   observation to the decision applied on every monitor;
//! * cold-start burst drain: 5 monitors each propose N distinct checks at once (production:
//!   ~800 items × 2 families per monitor), the time until all are official everywhere, the
//!   messages per second it took, and CPU seconds per 1,000 decisions (nodes and nats-server);
//! * usage fan-out: 10 and 50 DNS nodes with 10,000 records each answer one request;
//! * resident memory idle (nodes up, no load) and at the peak.
//!
//! The server runs with production's `max_payload` (8 MB) and a `max_pending` of 512 MB.
//! `--quick` runs smaller sizes (what CI runs); the full run is what BENCHMARKS.md records.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::NaiveDate;
use ibp_core::{CheckKey, Observation};
use ibp_storage::{Store, UsageRow};
use ibp_wire::{CheckType, NodeId, Role, UsageRequest};
use serde_json::{Value, json};

use crate::cluster::{Node, NodeOptions, RoleServices};
use crate::roles::{DnsService, HitLimits, StorageHealth};

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct BenchOptions {
    /// Smaller sizes (seconds, for CI).
    pub quick: bool,
    /// The nats-server binary (default: `NATS_SERVER_BIN`, else the `PATH`).
    pub nats_server: Option<PathBuf>,
}

fn key(tag: &str, i: usize) -> CheckKey {
    CheckKey::new(
        CheckType::Endpoint,
        "wss",
        format!("member-{tag}-{}", i % 50),
        format!("d{i}.bench.test"),
        format!("wss://d{i}.bench.test/"),
        false,
    )
}

/// CPU seconds (user + system) of process `pid` so far (Linux `/proc`; 100 ticks/s).
fn cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

/// `VmRSS` and `VmHWM` (peak) of this process, MB.
fn rss_mb() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e6).round() / 1e3
}

/// The `p` quantile (0–1) of `sorted` durations (zero when empty).
pub fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn monitors(url: &str, n: usize, tag: &str) -> Result<Vec<Node>, String> {
    let mut out = Vec::new();
    for i in 0..n {
        let id = NodeId::new(format!("m{tag}-{i}")).map_err(|e| e.to_string())?;
        let mut o = NodeOptions::new(id, url);
        o.reconcile_interval = Duration::from_secs(3600);
        o.sync_interval = Duration::ZERO;
        let node = Node::connect(o).await.map_err(|e| e.to_string())?;
        node.enable(Role::Monitor, RoleServices::default())
            .await
            .map_err(|e| e.to_string())?;
        out.push(node);
    }
    for m in &out {
        if !m
            .wait_for_active(Role::Monitor, n, Duration::from_secs(30))
            .await
        {
            return Err(format!("{n} monitors did not see each other"));
        }
    }
    Ok(out)
}

async fn stop(nodes: Vec<Node>) {
    for n in nodes {
        n.shutdown(Duration::from_secs(1)).await;
    }
}

/// Decision latency with `n` monitors over `trials` decisions.
async fn latency(url: &str, n: usize, trials: usize) -> Result<Value, String> {
    let tag = format!("lat{n}");
    let nodes = monitors(url, n, &tag).await?;
    let mut out = Vec::with_capacity(trials);
    for t in 0..trials + 10 {
        let k = key(&tag, t);
        for m in &nodes[1..] {
            m.set_local(Observation::new(k.clone(), false))
                .await
                .map_err(|e| e.to_string())?;
        }
        let mut rxs: Vec<_> = nodes.iter().map(Node::decisions).collect();
        let started = Instant::now();
        nodes[0]
            .observe(Observation::new(k.clone(), false))
            .await
            .map_err(|e| e.to_string())?;
        let mut last = Duration::ZERO;
        for rx in &mut rxs {
            let got = tokio::time::timeout(Duration::from_secs(30), async {
                while let Ok(d) = rx.recv().await {
                    if CheckKey::of(&d.proposal) == k {
                        return true;
                    }
                }
                false
            })
            .await;
            if !matches!(got, Ok(true)) {
                return Err(format!(
                    "decision {t} with {n} monitors not seen everywhere"
                ));
            }
            last = last.max(started.elapsed());
        }
        for m in &nodes {
            m.wait_until(|n| n.proposal_count() == 0, Duration::from_secs(5))
                .await;
        }
        // The first ten warm connections and caches up.
        if t >= 10 {
            out.push(last);
        }
    }
    stop(nodes).await;
    out.sort();
    Ok(json!({
        "monitors": n, "decisions": trials,
        "p50Ms": ms(pct(&out, 0.5)), "p90Ms": ms(pct(&out, 0.9)),
        "p99Ms": ms(pct(&out, 0.99)), "maxMs": ms(pct(&out, 1.0)),
    }))
}

fn published(nodes: &[Node]) -> f64 {
    nodes
        .iter()
        .flat_map(|n| {
            n.metrics()
                .encode()
                .lines()
                .filter(|l| l.starts_with("ibp_messages_out_total"))
                .filter_map(|l| l.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()))
                .collect::<Vec<_>>()
        })
        .sum()
}

/// 5 monitors each propose `per` distinct checks at once.
async fn burst(url: &str, nats_pid: u32, per: usize) -> Result<Value, String> {
    let n = 5;
    let tag = format!("burst{per}");
    let nodes = monitors(url, n, &tag).await?;
    let total = n * per;
    let keys: Vec<CheckKey> = (0..total).map(|i| key(&tag, i)).collect();
    for m in &nodes {
        for k in &keys {
            m.set_local(Observation::new(k.clone(), false))
                .await
                .map_err(|e| e.to_string())?;
        }
    }
    let msgs_before = published(&nodes);
    let cpu_before = cpu_seconds(std::process::id()) + cpu_seconds(nats_pid);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, m) in nodes.iter().enumerate() {
        let m = m.clone();
        let mine: Vec<CheckKey> = keys[i * per..(i + 1) * per].to_vec();
        tasks.push(tokio::spawn(async move {
            for k in mine {
                let _ = m.observe(Observation::new(k, false)).await;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let mut finished = true;
    for m in &nodes {
        finished &= m
            .wait_until(|n| n.official_count() >= total, Duration::from_secs(300))
            .await;
    }
    let elapsed = started.elapsed();
    let cpu = cpu_seconds(std::process::id()) + cpu_seconds(nats_pid) - cpu_before;
    let msgs = published(&nodes) - msgs_before;
    let lost = total - nodes.iter().map(Node::official_count).min().unwrap_or(0);
    stop(nodes).await;
    Ok(json!({
        "monitors": n, "perMonitor": per, "decisions": total, "complete": finished,
        "drainS": (elapsed.as_secs_f64() * 1000.0).round() / 1000.0, "lost": lost,
        "messages": msgs, "messagesPerS": (msgs / elapsed.as_secs_f64()).round(),
        "cpuSPer1000Decisions": (cpu / total as f64 * 1000.0 * 1000.0).round() / 1000.0,
    }))
}

/// `n` made-up usage rows of one day counted by `node` (7 members, 22 domains, 5 countries).
pub fn usage_rows(node: &str, n: usize) -> Vec<UsageRow> {
    let day = NaiveDate::from_ymd_opt(2026, 11, 20).unwrap_or_default();
    (0..n)
        .map(|i| UsageRow {
            date: day,
            node_id: node.into(),
            domain: format!("rpc{}.bench.test", i % 22),
            member_name: format!("member-{}", i % 7),
            asn: format!("AS{}", 1000 + i),
            network_name: format!("Network {i}"),
            country_code: ["DE", "FR", "US", "JP", "BR"][i % 5].into(),
            country_name: "Country".into(),
            is_ipv6: i % 2 == 0,
            hits: (i % 97) as i64 + 1,
        })
        .collect()
}

/// `dns` DNS nodes with `records` usage records each answer one usage request.
async fn fanout(
    url: &str,
    dir: &std::path::Path,
    dns: usize,
    records: usize,
) -> Result<Value, String> {
    let mut nodes = Vec::new();
    for i in 0..dns {
        let id = format!("dns{dns}-{i:02}");
        let path = dir.join(format!("{id}.db"));
        let store = Store::open(&format!("sqlite://{}", path.display()))
            .await
            .map_err(|e| e.to_string())?;
        let (svc, services) =
            DnsService::open(StorageHealth::standalone(store), &id, HitLimits::default())
                .await
                .map_err(|e| e.to_string())?;
        svc.store()
            .increment_usage(&usage_rows(&id, records))
            .await
            .map_err(|e| e.to_string())?;
        let node = Node::connect(NodeOptions::new(
            NodeId::new(id).map_err(|e| e.to_string())?,
            url,
        ))
        .await
        .map_err(|e| e.to_string())?;
        node.enable(Role::Dns, services)
            .await
            .map_err(|e| e.to_string())?;
        nodes.push(node);
    }
    let c = Node::connect(NodeOptions::new(
        NodeId::new(format!("bench-collator-{dns}")).map_err(|e| e.to_string())?,
        url,
    ))
    .await
    .map_err(|e| e.to_string())?;
    c.enable(Role::Collator, RoleServices::default())
        .await
        .map_err(|e| e.to_string())?;
    if !c
        .wait_for_active(Role::Dns, dns, Duration::from_secs(60))
        .await
    {
        return Err(format!("{dns} DNS nodes did not join"));
    }
    let req = UsageRequest {
        start_date: "2026-11-20".into(),
        end_date: "2026-11-20".into(),
        ..UsageRequest::default()
    };
    let started = Instant::now();
    let r = crate::collectors::request_all_dns_usage(&c, &req, Duration::from_secs(120))
        .await
        .map_err(|e| e.to_string())?;
    let took = started.elapsed();
    let out = json!({
        "dnsNodes": dns, "recordsPerNode": records, "complete": r.complete,
        "records": r.records.len(), "seconds": (took.as_secs_f64() * 1000.0).round() / 1000.0,
        "mb": (r.bytes as f64 / 1e4).round() / 100.0,
    });
    stop(nodes).await;
    c.shutdown(Duration::from_secs(1)).await;
    Ok(out)
}

/// Runs everything and returns the JSON report.
pub async fn run(o: BenchOptions) -> Result<Value, String> {
    let bin = crate::demo::find_nats(&o.nats_server)?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    // Production's max_payload; room for 50 usage replies of ~2 MB arriving at once (the
    // default max_pending, 64 MB, cuts the requesting collator off as a slow consumer).
    let nats = crate::demo::start_nats_with(
        &bin,
        dir.path(),
        "max_payload: 8388608\nmax_pending: 536870912\n",
    )?;
    let url = format!("nats://127.0.0.1:{}", nats.port);
    let pid = nats.child.id();
    let started = Instant::now();
    let idle = {
        let nodes = monitors(&url, 5, "idle").await?;
        let (rss, _) = rss_mb();
        stop(nodes).await;
        rss
    };
    let trials = if o.quick { 30 } else { 200 };
    let mut lat = Vec::new();
    for n in [3, 5, 9] {
        lat.push(latency(&url, n, trials).await?);
    }
    let sizes: &[usize] = if o.quick {
        &[100, 1000]
    } else {
        &[100, 1000, 5000]
    };
    let mut bursts = Vec::new();
    for per in sizes {
        bursts.push(burst(&url, pid, *per).await?);
    }
    let dns_sizes: &[usize] = if o.quick { &[10] } else { &[10, 50] };
    let mut fan = Vec::new();
    for d in dns_sizes {
        fan.push(fanout(&url, dir.path(), *d, 10_000).await?);
    }
    let (_, peak) = rss_mb();
    drop(nats);
    Ok(json!({
        "quick": o.quick,
        "machine": {
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "os": std::env::consts::OS,
        },
        "decisionLatency": lat,
        "burst": bursts,
        "fanout": fan,
        "rssMb": {"idleWith5Monitors": (idle * 10.0).round() / 10.0, "peak": (peak * 10.0).round() / 10.0},
        "totalS": (started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    }))
}
