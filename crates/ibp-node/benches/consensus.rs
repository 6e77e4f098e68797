//! Consensus benchmarks on one loopback nats-server (`cargo bench -p ibp-node --bench consensus`).
//!
//! 1. Decision latency: a monitor publishes a proposal every other monitor agrees with; the
//!    time until the decision is applied on every monitor. p50/p99 for 3, 5 and 9 monitors.
//!    And at 5 monitors with every message signed and verified (enforce mode) against
//!    the same without: what trust costs a decision (each variant on its own
//!    nats-server, one decision of each in turn).
//!    `cargo bench -p ibp-node --bench consensus -- trust` runs only that comparison;
//!    `IBP_BENCH_TRUST_ONLY=off|backed|enforce|signed` runs one variant alone (to profile
//!    it, or to read its CPU with `perf stat`) and prints its messages per decision.
//! 2. Cold-start burst: 5 monitors each propose 1,000 distinct checks at once; the time until
//!    all 5,000 are finalized on every monitor, and how many were lost.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ibp_core::{CheckKey, Observation};
use ibp_node::bench::pct;
use ibp_node::cluster::{Node, NodeOptions, RoleServices};
use ibp_node::security::{DEFAULT_REPLAY_MEMORY, Security, TrustSources};
use ibp_testkit::NatsServer;
use ibp_trust::{Identity, Mode, TrustEntry, TrustList};
use ibp_wire::{CheckType, NodeId, Role};

fn key(tag: &str, i: usize) -> CheckKey {
    CheckKey::new(
        CheckType::Endpoint,
        "wss",
        format!("member-{tag}-{i}"),
        "rpc.example.net",
        "wss://rpc.example.net/x",
        false,
    )
}

/// Every node's security in `mode` with a key, all trusting each other.
fn keyed(ids: &[String], mode: Mode) -> Vec<Arc<Security>> {
    let keys: Vec<Identity> = ids.iter().map(|_| Identity::generate()).collect();
    let entries: Vec<TrustEntry> = ids
        .iter()
        .zip(&keys)
        .map(|(id, k)| TrustEntry {
            public_key: k.public_key().into(),
            node_id: id.clone(),
            role: "IBPMonitor".into(),
        })
        .collect();
    let trust = TrustList::build([("trust", &entries[..])]).expect("trust");
    keys.into_iter()
        .map(|k| {
            Arc::new(Security::new(
                mode,
                Some(Arc::new(k)),
                TrustSources::default(),
                trust.clone(),
                Duration::from_secs(120),
                DEFAULT_REPLAY_MEMORY,
            ))
        })
        .collect()
}

/// How the monitors of a run treat each other's messages.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Trust {
    /// The reference: no signatures; a finalize is applied as it comes.
    Off,
    /// No signatures, but a finalize needs the votes this node saw (enforce's rule alone).
    Backed,
    /// Enforce: every message signed and verified, finalizes backed by verified votes.
    Enforce,
    /// Off with keys (the first step of a migration): every message signed and carrying
    /// its headers, nothing checked. What the headers alone cost.
    Signed,
}

async fn monitors(url: &str, n: usize, tag: &str) -> Vec<Node> {
    monitors_with(url, n, tag, Trust::Off).await
}

async fn monitors_with(url: &str, n: usize, tag: &str, trust: Trust) -> Vec<Node> {
    let ids: Vec<String> = (0..n).map(|i| format!("m{tag}-{i}")).collect();
    let security = match trust {
        Trust::Enforce => Some(keyed(&ids, Mode::Enforce)),
        Trust::Signed => Some(keyed(&ids, Mode::Off)),
        Trust::Off | Trust::Backed => None,
    };
    let mut out = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let mut o = NodeOptions::new(NodeId::new(id.clone()).expect("id"), url);
        o.reconcile_interval = Duration::from_secs(3600);
        if let Some(s) = &security {
            o.security = s[i].clone();
        }
        o.core.verify_finalizes = trust == Trust::Backed;
        let node = Node::connect(o).await.expect("connect");
        node.enable(Role::Monitor, RoleServices::default())
            .await
            .expect("enable");
        out.push(node);
    }
    for m in &out {
        assert!(
            m.wait_for_active(Role::Monitor, n, Duration::from_secs(30))
                .await
        );
    }
    // A node draws its signing nonces in the background after it starts; measure the
    // steady state, not that start-up work.
    let t = Instant::now();
    while !out.iter().all(|m| m.options().security.signing_ready()) {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "nonce pools not filled"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    out
}

fn tag_of(n: usize, trust: Trust) -> String {
    format!(
        "lat{n}{}",
        match trust {
            Trust::Off => "",
            Trust::Backed => "b",
            Trust::Enforce => "s",
            Trust::Signed => "k",
        }
    )
}

/// One decision: time from `observe` on the proposer to the decision being applied on
/// every monitor; then waits for its trailing finalizes to drain.
async fn trial(nodes: &[Node], tag: &str, t: usize) -> Duration {
    let k = key(tag, t);
    for m in &nodes[1..] {
        m.set_local(Observation::new(k.clone(), false))
            .await
            .expect("monitor");
    }
    let mut rxs: Vec<_> = nodes.iter().map(Node::decisions).collect();
    let started = Instant::now();
    nodes[0]
        .observe(Observation::new(k.clone(), false))
        .await
        .expect("observe");
    let mut last = Duration::ZERO;
    for rx in &mut rxs {
        loop {
            let d = rx.recv().await.expect("decision");
            if CheckKey::of(&d.proposal) == k {
                last = last.max(started.elapsed());
                break;
            }
        }
    }
    for m in nodes {
        m.wait_until(|n| n.proposal_count() == 0, Duration::from_secs(5))
            .await;
    }
    last
}

/// What the signatures cost per decision: checks done and skipped, all nodes.
fn checks_per_decision(nodes: &[Node], trials: usize) -> String {
    let mut per = std::collections::BTreeMap::<String, f64>::new();
    for m in nodes {
        for l in m.metrics().encode().lines() {
            for name in [
                "ibp_trust_verified_total",
                "ibp_trust_by_mac_total",
                "ibp_trust_moot_total",
                "ibp_messages_in_total",
                "ibp_messages_out_total",
            ] {
                if let Some(rest) = l.strip_prefix(name)
                    && let Some((labels, v)) = rest.rsplit_once(' ')
                {
                    *per.entry(format!("{name}{labels}")).or_default() +=
                        v.parse::<f64>().unwrap_or(0.0) / trials as f64;
                }
            }
        }
    }
    let text: Vec<String> = per.iter().map(|(k, v)| format!("{k} {v:.1}")).collect();
    text.join(", ")
}

/// `trials` decisions on `n` fresh monitors.
async fn latency(url: &str, n: usize, trials: usize, trust: Trust) -> Vec<Duration> {
    let tag = tag_of(n, trust);
    let nodes = monitors_with(url, n, &tag, trust).await;
    let mut out = Vec::with_capacity(trials);
    for t in 0..trials {
        out.push(trial(&nodes, &tag, t).await);
    }
    for m in nodes {
        m.shutdown(Duration::from_secs(1)).await;
    }
    out
}

/// The trust variants side by side: five monitors each, every variant on its own
/// nats-server (their subjects are the same), one decision of each in turn so the
/// machine's drift hits all alike.
async fn trust_compare(trials: usize) -> Vec<(Trust, Vec<Duration>)> {
    let all = [Trust::Off, Trust::Backed, Trust::Enforce, Trust::Signed];
    let only = std::env::var("IBP_BENCH_TRUST_ONLY").ok();
    let variants: Vec<Trust> = all
        .into_iter()
        .filter(|v| {
            only.as_deref()
                .is_none_or(|o| format!("{v:?}").eq_ignore_ascii_case(o))
        })
        .collect();
    assert!(
        !variants.is_empty(),
        "IBP_BENCH_TRUST_ONLY is one of off, backed, enforce, signed"
    );
    let mut servers = Vec::new();
    let mut sets = Vec::new();
    for &v in &variants {
        let server = NatsServer::start().expect("nats-server");
        let tag = tag_of(5, v);
        sets.push((
            v,
            tag.clone(),
            monitors_with(&server.url(), 5, &tag, v).await,
        ));
        servers.push(server);
    }
    // Warm-up, not measured.
    for t in 0..20 {
        for (_, tag, nodes) in &sets {
            trial(nodes, tag, t).await;
        }
    }
    let mut out: Vec<(Trust, Vec<Duration>)> = variants.iter().map(|v| (*v, Vec::new())).collect();
    for t in 20..20 + trials {
        for (i, (_, tag, nodes)) in sets.iter().enumerate() {
            out[i].1.push(trial(nodes, tag, t).await);
        }
    }
    for (v, _, nodes) in sets {
        if v == Trust::Enforce || only.is_some() {
            println!(
                "  per decision, all 5 monitors: {}",
                checks_per_decision(&nodes, trials + 20)
            );
        }
        for m in nodes {
            m.shutdown(Duration::from_secs(1)).await;
        }
    }
    drop(servers);
    out
}

/// Every monitor proposes `per` distinct checks at once.
async fn burst(url: &str, n: usize, per: usize) -> (Duration, usize, usize) {
    let tag = "burst";
    let nodes = monitors(url, n, tag).await;
    let total = n * per;
    let keys: Vec<CheckKey> = (0..total).map(|i| key(tag, i)).collect();
    for m in &nodes {
        for k in &keys {
            m.set_local(Observation::new(k.clone(), false))
                .await
                .expect("monitor");
        }
    }
    let done_at: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; n]));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (i, m) in nodes.iter().enumerate() {
        let m = m.clone();
        let mine: Vec<CheckKey> = keys[i * per..(i + 1) * per].to_vec();
        tasks.push(tokio::spawn(async move {
            for k in mine {
                m.propose_check_status(
                    CheckType::Endpoint,
                    &k.check_name,
                    &k.member_name,
                    &k.domain_name,
                    &k.endpoint,
                    false,
                    "",
                    ibp_wire::Data::none(),
                    false,
                )
                .await
                .expect("propose");
            }
        }));
    }
    let mut waits = Vec::new();
    for (i, m) in nodes.iter().enumerate() {
        let m = m.clone();
        let done = done_at.clone();
        waits.push(tokio::spawn(async move {
            let ok = m
                .wait_until(|n| n.official_count() >= total, Duration::from_secs(120))
                .await;
            if ok && let Ok(mut d) = done.lock() {
                d[i] = Some(Instant::now());
            }
        }));
    }
    for t in tasks {
        t.await.expect("proposer");
    }
    for w in waits {
        w.await.expect("waiter");
    }
    let finished = done_at
        .lock()
        .map(|d| d.iter().flatten().max().copied())
        .ok()
        .flatten();
    let elapsed = finished.map(|f| f - started).unwrap_or(Duration::MAX);
    let min_applied = nodes.iter().map(|m| m.official_count()).min().unwrap_or(0);
    let lost = total - min_applied;
    for m in nodes {
        m.shutdown(Duration::from_secs(1)).await;
    }
    (elapsed, total, lost)
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let server = NatsServer::start().expect("nats-server");
        let url = server.url();
        println!("consensus benchmarks ({} cores, nats-server {url})", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0));
        // `-- trust`: only the signed-against-unsigned comparison.
        let only_trust = std::env::args().any(|a| a == "trust");
        for n in [3, 5, 9] {
            if only_trust {
                break;
            }
            let trials = 300;
            let _warm = latency(&url, n, 20, Trust::Off).await;
            let mut l = latency(&url, n, trials, Trust::Off).await;
            l.sort();
            println!(
                "decision latency, {n} monitors, {trials} decisions: p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
                pct(&l, 0.5).as_secs_f64() * 1e3,
                pct(&l, 0.99).as_secs_f64() * 1e3,
                l.last().map(|d| d.as_secs_f64() * 1e3).unwrap_or(0.0)
            );
        }
        // Signed against unsigned, one decision of each in turn; and enforce's rule (a
        // finalize needs the votes this node saw) without signatures, to tell the cost of
        // the rule from the cost of the cryptography.
        let mut runs = trust_compare(300).await;
        for (_, l) in &mut runs {
            l.sort();
        }
        let get = |v: Trust| {
            runs.iter()
                .find(|(t, _)| *t == v)
                .map(|(_, l)| l.clone())
                .unwrap_or_default()
        };
        let (plain, backed, signed, keyed_off) = (
            get(Trust::Off),
            get(Trust::Backed),
            get(Trust::Enforce),
            get(Trust::Signed),
        );
        for (what, l) in [
            ("unsigned (off)", &plain),
            ("unsigned, finalizes backed by own votes", &backed),
            ("signed (enforce)", &signed),
            ("signed, nothing checked (off with keys)", &keyed_off),
        ] {
            if l.is_empty() {
                continue;
            }
            println!(
                "decision latency, 5 monitors, {what}, {} decisions: p50 {:.3} ms  p99 {:.3} ms",
                l.len(),
                pct(l, 0.5).as_secs_f64() * 1e3,
                pct(l, 0.99).as_secs_f64() * 1e3,
            );
        }
        if [&plain, &backed, &signed, &keyed_off].iter().any(|l| l.is_empty()) {
            return; // one variant alone (IBP_BENCH_TRUST_ONLY): nothing to compare
        }
        let d = |a: &[Duration], b: &[Duration], p: f64| (pct(a, p).as_secs_f64() - pct(b, p).as_secs_f64()) * 1e3;
        println!(
            "enforce adds {:.3} ms at p50, {:.3} ms at p99: the backed-finalize rule {:.3} / {:.3} ms, signatures {:.3} / {:.3} ms",
            d(&signed, &plain, 0.5),
            d(&signed, &plain, 0.99),
            d(&backed, &plain, 0.5),
            d(&backed, &plain, 0.99),
            d(&signed, &backed, 0.5),
            d(&signed, &backed, 0.99),
        );
        println!(
            "signing and carrying the headers alone (off with keys) adds {:.3} ms at p50, {:.3} ms at p99",
            d(&keyed_off, &plain, 0.5),
            d(&keyed_off, &plain, 0.99),
        );
        if only_trust {
            return;
        }
        let (elapsed, total, lost) = burst(&url, 5, 1000).await;
        println!("cold-start burst, 5 monitors x 1,000 checks: {total} finalized on every monitor in {:.2} s, {lost} lost", elapsed.as_secs_f64());
    });
}
