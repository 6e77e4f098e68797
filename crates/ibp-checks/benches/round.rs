//! One round of wss checks as fast as the limits allow: 50 fake Substrate nodes on their own
//! loopback addresses (127.0.0.11–127.0.0.60), 20 paths each, 1,000 units, with the
//! in-flight limit at its default and at 4× that. The fake nodes run in a child process
//! (this binary again), so the CPU time and peak RSS printed are the checker's own.
//!
//! `cargo bench -p ibp-checks --bench round` prints one JSON object per limit.

use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ibp_checks::items::Item;
use ibp_checks::{Checker, CheckerSettings, Trust, Unit};
use ibp_testkit::endpoints::{self, Substrate};
use ibp_wire::CheckType;
use serde_json::json;

const NODES: u8 = 50;
const PATHS: usize = 20;

fn ip(i: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, 11 + i])
}

/// Child: serve the fake nodes, print their ports, wait for stdin to close.
fn serve_fakes() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let mut nodes = Vec::new();
        let mut out = std::io::stdout();
        for i in 0..NODES {
            let n = endpoints::substrate_at(ip(i), Substrate::default(), None)
                .await
                .expect("fake node");
            writeln!(out, "{}", n.port()).expect("stdout");
            nodes.push(n);
        }
        out.flush().expect("flush");
        let _ = tokio::task::spawn_blocking(|| {
            let mut s = String::new();
            let _ = std::io::stdin().read_line(&mut s);
        })
        .await;
        drop(nodes);
    });
}

fn cpu_seconds() -> f64 {
    let mut u = std::mem::MaybeUninit::<libc_rusage>::uninit();
    // SAFETY: getrusage fills the struct.
    if unsafe { getrusage(0, u.as_mut_ptr()) } != 0 {
        return 0.0;
    }
    // SAFETY: initialised by getrusage above.
    let u = unsafe { u.assume_init() };
    let t = |tv: [i64; 2]| tv[0] as f64 + tv[1] as f64 / 1e6;
    t(u.utime) + t(u.stime)
}

#[repr(C)]
struct libc_rusage {
    utime: [i64; 2],
    stime: [i64; 2],
    rest: [i64; 14],
}

unsafe extern "C" {
    fn getrusage(who: i32, usage: *mut libc_rusage) -> i32;
}

fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn units(ports: &[u16]) -> Vec<Unit> {
    let mut items = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        for p in 0..PATHS {
            let endpoint = format!("ws://rpc{i}.example.test:{port}/chain{p}");
            items.push(Item {
                check: "wss".into(),
                check_type: CheckType::Endpoint,
                member: format!("member-{i}"),
                service: "Testnet".into(),
                domain: ibp_checks::target::domain(&endpoint),
                endpoint,
                port: Some(*port),
                network_name: "Testnet".into(),
                state_root_hash: "0xabc1".into(),
                interval: Duration::from_secs(300),
                timeout: Duration::from_secs(30),
                options: json!({"ConnectTimeout": 10, "ReadTimeout": 15}),
                ipv4: ip(i as u8).to_string(),
                ipv6: String::new(),
            });
        }
    }
    ibp_checks::items::units(&items)
}

fn main() {
    if std::env::var("IBP_BENCH_FAKES").is_ok() {
        serve_fakes();
        return;
    }
    let me = std::env::current_exe().expect("exe");
    let mut child = Command::new(me)
        .env("IBP_BENCH_FAKES", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("fake nodes");
    let reader = BufReader::new(child.stdout.take().expect("stdout"));
    let ports: Vec<u16> = reader
        .lines()
        .take(NODES as usize)
        .map(|l| l.expect("line").trim().parse().expect("port"))
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let default = CheckerSettings::default().max_in_flight;
    for in_flight in [default, 4 * default] {
        let settings = CheckerSettings {
            max_in_flight: in_flight,
            ..CheckerSettings::default()
        };
        let checker = Arc::new(Checker::new(settings, Trust::load(None).expect("trust")));
        let us = units(&ports);
        let n = us.len();
        let cpu0 = cpu_seconds();
        let started = Instant::now();
        let results = rt.block_on(checker.run_once(us));
        let wall = started.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - cpu0;
        let up = results.iter().filter(|r| r.verdict.status).count();
        let mut lat: Vec<f64> = results
            .iter()
            .map(|r| r.verdict.latency.as_secs_f64() * 1000.0)
            .collect();
        lat.sort_by(|a, b| a.total_cmp(b));
        let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p) as usize];
        println!(
            "{}",
            json!({
                "bench": "checks_round_wss",
                "units": n,
                "fake_nodes": NODES,
                "max_in_flight": in_flight,
                "max_per_host": CheckerSettings::default().max_per_host,
                "up": up,
                "wall_s": (wall * 1000.0).round() / 1000.0,
                "checks_per_s": (n as f64 / wall).round(),
                "cpu_s": (cpu * 1000.0).round() / 1000.0,
                "peak_rss_mb": (peak_rss_mb() * 10.0).round() / 10.0,
                "latency_ms_p50": (pct(0.5) * 10.0).round() / 10.0,
                "latency_ms_p99": (pct(0.99) * 10.0).round() / 10.0,
            })
        );
        assert_eq!(up, n, "every check passes against the healthy fakes");
    }
    drop(child.stdin.take());
    let _ = child.wait();
}
