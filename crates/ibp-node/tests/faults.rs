//! The fault suite: real `ibp-node` processes on a real 3-server NATS cluster (full-mesh
//! routes on loopback), five monitors spread over the servers (each with its home server
//! first, `retain_servers_order`), and a collator; servers killed, restarted, split at the
//! TCP level; monitors stalled. Every scenario checks its outcome through the HTTP API, is
//! bounded in time, cleans up after itself and prints what it checked.
//!
//! Run alone: `cargo test -p ibp-node --test faults -- --nocapture --test-threads 1`; with
//! `IBP_FAULTS_LOG=info` the nodes log more (their logs are in the system temp directory,
//! `ibp-node-test-*.log`).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::{free_port, get, post, ready, signal};
use ibp_testkit::{NatsCluster, Partition, ServerOptions};
use serde_json::{Value, json};

/// A generous bound for a cluster to settle after a fault (the figures are in the bench).
const SETTLE: Duration = Duration::from_secs(120);

struct Node {
    proc: common::Proc,
    home: usize,
}

/// The cluster's client URLs with server `home` first.
fn urls(cluster: &NatsCluster, home: usize) -> String {
    let all: Vec<String> = cluster.urls().split(',').map(str::to_string).collect();
    let mut v = vec![all[home].clone()];
    v.extend(
        all.iter()
            .enumerate()
            .filter(|(i, _)| *i != home)
            .map(|(_, u)| u.clone()),
    );
    v.join(",")
}

async fn start_node(
    role: &str,
    id: &str,
    cluster: &NatsCluster,
    home: usize,
    dir: &std::path::Path,
    consensus: &Value,
) -> Node {
    start_with(
        role,
        id,
        cluster,
        home,
        dir,
        &json!({"consensus": consensus}),
    )
    .await
}

/// Starts `ibp-node run` homed on server `home`; `extra` holds `IbpNode` sections merged
/// over the suite's defaults.
async fn start_with(
    role: &str,
    id: &str,
    cluster: &NatsCluster,
    home: usize,
    dir: &std::path::Path,
    extra: &Value,
) -> Node {
    let http = format!("127.0.0.1:{}", free_port());
    let db = format!("sqlite://{}", dir.join(format!("{id}.db")).display());
    let cfg = dir.join(format!("{id}.json"));
    let mut ibp = json!({
        "nats": {"retain_servers_order": true, "reconnect_delay": "100ms", "connect_timeout": "2s"},
        "monitor": {"reconcile_interval": "1s"},
        "collator": {"hourly": false, "backfill_days": 0},
    });
    for (section, v) in extra.as_object().into_iter().flatten() {
        match (
            ibp.get_mut(section).and_then(Value::as_object_mut),
            v.as_object(),
        ) {
            (Some(base), Some(over)) => base.extend(over.clone()),
            _ => {
                ibp[section] = v.clone();
            }
        }
    }
    std::fs::write(&cfg, json!({ "IbpNode": ibp }).to_string()).expect("config");
    let work = dir.join(id);
    std::fs::create_dir_all(&work).expect("work dir");
    let nats = urls(cluster, home);
    let level = std::env::var("IBP_FAULTS_LOG").unwrap_or_else(|_| "warn".into());
    let mut child = common::spawn_env(
        &[
            "run",
            "--config",
            cfg.to_str().expect("utf-8"),
            "--role",
            role,
            "--node-id",
            id,
            "--nats-url",
            &nats,
            "--http",
            &http,
            "--db",
            &db,
            "--work-dir",
            work.to_str().expect("utf-8"),
        ],
        &[("RUST_LOG", level.as_str())],
    );
    ready(&http, &mut child).await;
    Node {
        proc: common::Proc {
            child,
            http,
            id: id.to_string(),
        },
        home,
    }
}

/// Waits for `what` up to `within`, polling the HTTP API (no event crosses a process).
async fn wait(what: &str, within: Duration, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn check(i: usize, status: bool) -> Value {
    json!({"checkType":"endpoint","checkName":"wss","memberName": format!("member-{}", i % 7),
           "domainName": format!("d{i}.test"), "endpoint": format!("wss://d{i}.test/"),
           "isIPv6": false, "status": status, "errorText": if status {""} else {"timeout"}})
}

fn batch(range: std::ops::Range<usize>, status: bool) -> String {
    Value::Array(range.map(|i| check(i, status)).collect()).to_string()
}

/// `/v1/official` as domain → status.
async fn official(http: &str) -> std::collections::BTreeMap<String, bool> {
    get(http, "/v1/official").await.1["results"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|x| {
                    Some((
                        x["domainName"].as_str()?.to_string(),
                        x["status"].as_bool()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn active_monitors(http: &str) -> u64 {
    get(http, "/v1/cluster").await.1["activeMonitors"]
        .as_u64()
        .unwrap_or(0)
}

async fn post_all(nodes: &[&Node], body: &str) {
    let posts = nodes.iter().map(|n| {
        let http = n.proc.http.clone();
        let body = body.to_string();
        async move {
            let (s, r) = post(&http, "/v1/observations", &body).await;
            assert_eq!(s, 202, "{http}: {r}");
        }
    });
    futures::future::join_all(posts).await;
}

/// Every monitor has `status` as the official result of every check in `range`.
async fn all_decided(ms: &[&Node], range: std::ops::Range<usize>, status: bool, within: Duration) {
    for m in ms {
        wait(
            &format!("{}: {} checks official {status}", m.proc.id, range.len()),
            within,
            async || {
                let o = official(&m.proc.http).await;
                range
                    .clone()
                    .all(|i| o.get(&format!("d{i}.test")) == Some(&status))
            },
        )
        .await;
    }
}

/// The collator's outage rows: (domain, open).
async fn outages(http: &str) -> Vec<(String, bool)> {
    get(http, "/v1/events?limit=5000").await.1["events"]
        .as_array()
        .map(|e| {
            e.iter()
                .map(|x| {
                    (
                        x["domainName"].as_str().unwrap_or("").to_string(),
                        x["endTime"].is_null(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

struct World {
    cluster: NatsCluster,
    partition: Option<Partition>,
    monitors: Vec<Node>,
    collator: Option<Node>,
    _dir: tempfile::TempDir,
}

impl World {
    async fn start(homes: &[usize], collator: bool, consensus: Value, split: bool) -> World {
        World::start_full(homes, collator, consensus, split, ServerOptions::default()).await
    }

    async fn start_full(
        homes: &[usize],
        collator: bool,
        consensus: Value,
        split: bool,
        server: ServerOptions,
    ) -> World {
        let dir = tempfile::tempdir().expect("dir");
        let (cluster, partition) = if split {
            let (c, p) = NatsCluster::start_partitionable(server)
                .await
                .expect("cluster");
            (c, Some(p))
        } else {
            (NatsCluster::start(server).expect("cluster"), None)
        };
        let mut monitors = Vec::new();
        for (i, home) in homes.iter().enumerate() {
            monitors.push(
                start_node(
                    "monitor",
                    &format!("monitor-{}", i + 1),
                    &cluster,
                    *home,
                    dir.path(),
                    &consensus,
                )
                .await,
            );
        }
        let collator = if collator {
            Some(
                start_node(
                    "collator",
                    "collator-1",
                    &cluster,
                    0,
                    dir.path(),
                    &consensus,
                )
                .await,
            )
        } else {
            None
        };
        let n = monitors.len() as u64;
        for m in &monitors {
            wait(
                &format!("{} sees {n} active monitors", m.proc.id),
                SETTLE,
                async || active_monitors(&m.proc.http).await == n,
            )
            .await;
        }
        println!(
            "cluster: 3 nats-servers (routes{}), monitors homed on {:?}{}",
            if split {
                " through cuttable proxies"
            } else {
                ""
            },
            monitors.iter().map(|m| m.home).collect::<Vec<_>>(),
            if collator.is_some() {
                ", a collator on server 0"
            } else {
                ""
            }
        );
        World {
            cluster,
            partition,
            monitors,
            collator,
            _dir: dir,
        }
    }

    fn ms(&self) -> Vec<&Node> {
        self.monitors.iter().collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_during_a_burst_of_1000_proposals_loses_nothing() {
    let mut w = World::start(&[0, 1, 2, 0, 1], true, json!({}), false).await;
    let n = 1000;
    let body = batch(0..n, false);
    let ms = w.ms();
    let first = ms[0].proc.http.clone();
    let burst = tokio::spawn({
        let https: Vec<String> = ms.iter().map(|m| m.proc.http.clone()).collect();
        async move {
            futures::future::join_all(https.iter().map(|h| {
                let body = body.clone();
                async move { post(h, "/v1/observations", &body).await }
            }))
            .await
        }
    });
    // Mid-burst: once the first decisions are in, server 2 dies without a goodbye.
    wait("the first decisions", SETTLE, async || {
        official(&first).await.len() >= 50
    })
    .await;
    let before = official(&first).await.len();
    w.cluster.server(2).kill();
    println!("killed server 2 (kill -9) after {before} of {n} decisions");
    for (s, r) in burst.await.expect("burst") {
        assert_eq!(s, 202, "{r}");
    }
    all_decided(&w.ms(), 0..n, false, SETTLE).await;
    println!("all 5 monitors: {n} checks official offline");
    let col = w.collator.as_ref().expect("collator").proc.http.clone();
    wait("the collator recorded every outage", SETTLE, async || {
        outages(&col).await.len() >= n
    })
    .await;
    let rows = outages(&col).await;
    let distinct: BTreeSet<&String> = rows.iter().map(|(d, _)| d).collect();
    assert_eq!(rows.len(), n, "one row per outage");
    assert_eq!(distinct.len(), n, "every outage exactly once");
    println!("collator: {n} outage rows, each check once");
    // The dead server comes back and rejoins; the cluster still decides through it.
    w.cluster.server(2).restart().expect("restart");
    w.cluster
        .wait_routes(Duration::from_secs(30))
        .expect("server 2 rejoins the routes");
    post_all(&w.ms(), &batch(0..1, true)).await;
    all_decided(&w.ms(), 0..1, true, SETTLE).await;
    wait("the collator closed the outage", SETTLE, async || {
        outages(&col)
            .await
            .iter()
            .any(|(d, open)| d == "d0.test" && !open)
    })
    .await;
    println!(
        "server 2 restarted and rejoined; a recovery decided everywhere and closed its outage"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_server_under_load_loses_nothing() {
    let mut w = World::start(&[0, 1, 2, 0, 1], true, json!({}), false).await;
    let wave = 200;
    for s in 0..3 {
        let range = s * wave..(s + 1) * wave;
        let body = batch(range.clone(), false);
        let https: Vec<String> = w.ms().iter().map(|m| m.proc.http.clone()).collect();
        let load = tokio::spawn(async move {
            futures::future::join_all(https.iter().map(|h| {
                let body = body.clone();
                async move { post(h, "/v1/observations", &body).await }
            }))
            .await
        });
        w.cluster.server(s).stop();
        w.cluster.server(s).restart().expect("restart");
        for (st, r) in load.await.expect("load") {
            assert_eq!(st, 202, "{r}");
        }
        w.cluster
            .wait_routes(Duration::from_secs(30))
            .expect("routes back");
        println!("server {s} restarted during a wave of {wave} proposals");
    }
    let n = 3 * wave;
    all_decided(&w.ms(), 0..n, false, SETTLE).await;
    let col = w.collator.as_ref().expect("collator").proc.http.clone();
    wait("the collator recorded every outage", SETTLE, async || {
        outages(&col).await.len() >= n
    })
    .await;
    let rows = outages(&col).await;
    let distinct: BTreeSet<&String> = rows.iter().map(|(d, _)| d).collect();
    assert_eq!((rows.len(), distinct.len()), (n, n), "each outage once");
    println!("all 5 monitors: {n} checks official offline; collator: {n} rows, each once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitor_stalled_past_the_proposal_timeout_changes_no_newer_decision() {
    let timeout = Duration::from_secs(1);
    let w = World::start(
        &[0, 1, 2, 0, 1],
        false,
        json!({"proposal_timeout": "1s"}),
        false,
    )
    .await;
    let ms = w.ms();
    let stalled = ms[4];
    // It proposes "down" alone, then stops (SIGSTOP) with that proposal in flight.
    post_all(&[stalled], &batch(0..1, false)).await;
    signal(&stalled.proc.child, libc_sigstop());
    println!(
        "{} stopped (SIGSTOP) with its own proposal pending",
        stalled.proc.id
    );
    // The others decide down, then up: the newer decision.
    post_all(&ms[..3], &batch(0..1, false)).await;
    all_decided(&ms[..4], 0..1, false, SETTLE).await;
    post_all(&ms[..4], &batch(0..1, true)).await;
    all_decided(&ms[..4], 0..1, true, SETTLE).await;
    // The stall itself: longer than three proposal timeouts, so the stopped monitor's
    // timers are all due when it resumes.
    tokio::time::sleep(timeout * 4).await;
    signal(&stalled.proc.child, libc_sigcont());
    println!(
        "{} resumed (SIGCONT) after {:?}",
        stalled.proc.id,
        timeout * 4
    );
    all_decided(&[stalled], 0..1, true, SETTLE).await;
    // Whatever it sent on waking (votes, timeouts, a finalize of its old proposal), the
    // newer decision stands everywhere.
    let healthz = |h: String| async move { get(&h, "/healthz").await.0 };
    assert_eq!(healthz(stalled.proc.http.clone()).await, 200);
    for m in &ms {
        let o = official(&m.proc.http).await;
        assert_eq!(o.get("d0.test"), Some(&true), "{}", m.proc.id);
    }
    println!("all 5 monitors: the newer decision (online) stands");
}

fn libc_sigstop() -> i32 {
    19
}

fn libc_sigcont() -> i32 {
    18
}

/// Splits the monitors 2 | 3 (servers 0 | 1+2), posts the same conflicting observations
/// (the 2-side sees a check down, the 3-side up), and returns the official results of both
/// sides before healing; after healing the checks run again everywhere (up) and every
/// monitor converges.
async fn split(consensus: Value) -> (Vec<Option<bool>>, Vec<Option<bool>>) {
    let w = World::start(&[0, 0, 1, 2, 1], false, consensus, true).await;
    let ms = w.ms();
    let (two, three) = (&ms[..2], &ms[2..]);
    let part = w.partition.as_ref().expect("partitionable");
    part.isolate_server0();
    wait("server 0 loses its routes", SETTLE, async || {
        w.cluster_routes(0) == Some(0)
    })
    .await;
    println!("split: monitors 1-2 on server 0 | monitors 3-5 on servers 1-2");
    // Each side sees the other go stale (short activity window) before the checks differ.
    for (ns, n) in [(two, 2), (three, 3)] {
        for m in ns {
            wait(
                &format!("{} sees {n} active monitors", m.proc.id),
                SETTLE,
                async || active_monitors(&m.proc.http).await == n,
            )
            .await;
        }
    }
    post_all(three, &batch(0..1, true)).await;
    post_all(two, &batch(0..1, false)).await;
    all_decided(three, 0..1, true, SETTLE).await;
    // Long enough for the 2-side to decide if it can (its proposals time out 3 × 1 s).
    tokio::time::sleep(Duration::from_secs(4)).await;
    let side = |ns: &[&Node]| {
        let hs: Vec<String> = ns.iter().map(|n| n.proc.http.clone()).collect();
        async move {
            let mut v = Vec::new();
            for h in hs {
                v.push(official(&h).await.get("d0.test").copied());
            }
            v
        }
    };
    let (a, b) = (side(two).await, side(three).await);
    part.heal();
    w_routes(&w).await;
    // The checks run again after the split: everyone sees the check up.
    post_all(&ms, &batch(0..1, true)).await;
    all_decided(&ms, 0..1, true, SETTLE).await;
    println!("healed: all 5 monitors converged on online");
    (a, b)
}

async fn w_routes(w: &World) {
    let deadline = Instant::now() + SETTLE;
    loop {
        if (0..3).all(|i| w.cluster_routes(i) == Some(2)) {
            return;
        }
        assert!(Instant::now() < deadline, "routes did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl World {
    fn cluster_routes(&self, i: usize) -> Option<u64> {
        self.cluster.num_routes(i)
    }
}

/// A monitor unheard for 2 s no longer counts (the reference: 10 min), so a split shows
/// within seconds.
fn short_windows() -> Value {
    json!({
        "proposal_timeout": "1s",
        "heartbeat_interval": "300ms",
        "first_heartbeat": "100ms",
        "join_throttle": "100ms",
        "active_window": "2s",
        "stale_after": "3s"
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_quorum_floor_the_minority_side_of_a_split_never_decides() {
    let mut c = short_windows();
    c["min_quorum"] = json!(3);
    let (two, three) = split(c).await;
    assert_eq!(three, vec![Some(true); 3], "the 3-side went on deciding");
    assert_eq!(two, vec![None, None], "the 2-side decided nothing");
    println!("floor 3: 2-side {two:?} (nothing decided), 3-side {three:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_floor_a_split_decides_on_both_sides_and_converges_after_healing() {
    let (two, three) = split(short_windows()).await;
    assert_eq!(three, vec![Some(true); 3], "the 3-side decided online");
    assert_eq!(
        two,
        vec![Some(false); 2],
        "split brain: the 2-side decided offline on its own"
    );
    println!("no floor: 2-side {two:?}, 3-side {three:?}: split brain, then converged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitor_killed_mid_consensus_returns_catches_up_from_the_cluster_and_votes_again() {
    let mut w = World::start(&[0, 1, 2, 0, 1], false, json!({}), false).await;
    post_all(&w.ms(), &batch(0..50, false)).await;
    all_decided(&w.ms(), 0..50, false, SETTLE).await;
    // Its writer has caught up (a kill -9 loses what is still queued; the docs say so).
    let m5 = w.monitors[4].proc.http.clone();
    wait("monitor-5 wrote its official results", SETTLE, async || {
        let text = reqwest::get(format!("http://{m5}/metrics"))
            .await
            .expect("metrics")
            .text()
            .await
            .unwrap_or_default();
        text.lines()
            .any(|l| l.starts_with("ibp_write_queue_depth{writer=\"official\"} 0"))
    })
    .await;
    // Killed (kill -9) while the others are deciding a burst it will never see.
    let mut gone = w.monitors.pop().expect("monitor-5");
    let others = w.ms();
    let burst = {
        let https: Vec<String> = others.iter().map(|m| m.proc.http.clone()).collect();
        tokio::spawn(async move {
            let up = batch(0..25, true);
            let down = batch(50..60, false);
            for h in &https {
                let _ = post(h, "/v1/observations", &up).await;
                let _ = post(h, "/v1/observations", &down).await;
            }
        })
    };
    gone.proc.child.kill().expect("kill -9");
    let _ = gone.proc.child.wait();
    println!("monitor-5 killed (kill -9) mid-consensus");
    burst.await.expect("burst");
    all_decided(&others, 0..25, true, SETTLE).await;
    all_decided(&others, 50..60, false, SETTLE).await;
    println!("the other 4 went on deciding: 25 recoveries, 10 new outages");
    // Its database holds what it had decided before the kill.
    let dir = w._dir.path().to_path_buf();
    let db = format!("sqlite://{}", dir.join("monitor-5.db").display());
    let store = ibp_storage::Store::open(&db).await.expect("its database");
    let rows = store
        .load_results(ibp_storage::ResultKind::Official)
        .await
        .expect("official rows");
    store.close().await;
    let persisted: BTreeSet<String> = rows
        .iter()
        .filter(|r| !r.status)
        .map(|r| r.key.domain_name.clone())
        .collect();
    assert_eq!(persisted.len(), 50, "every decision it saw was persisted");
    // Back with its own database and work directory.
    let back = start_node(
        "monitor",
        "monitor-5",
        &w.cluster,
        gone.home,
        &dir,
        &json!({}),
    )
    .await;
    drop(gone);
    wait(
        "monitor-5 holds its persisted results",
        SETTLE,
        async || {
            let o = official(&back.proc.http).await;
            (25..50).all(|i| o.get(&format!("d{i}.test")) == Some(&false))
        },
    )
    .await;
    // What it missed comes from the other monitors: nothing was posted to it.
    all_decided(&[&back], 0..25, true, SETTLE).await;
    all_decided(&[&back], 50..60, false, SETTLE).await;
    let metrics = reqwest::get(format!("http://{}/metrics", back.proc.http))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains("kind=\"synced_result\""),
        "taken from the cluster, counted"
    );
    println!("monitor-5 restarted: its file gave back 50 results, the cluster the 35 it missed");
    // It votes again: a decision that needs its vote (3 of 5) is made.
    let voters: Vec<&Node> = vec![&w.monitors[0], &w.monitors[1], &back];
    post_all(&voters, &batch(60..61, false)).await;
    let mut all = w.ms();
    all.push(&back);
    all_decided(&all, 60..61, false, SETTLE).await;
    println!("a decision needing monitor-5's vote was made on all 5");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_listeners_on_every_subject_the_whole_topology_starts_decides_and_answers() {
    use futures::StreamExt;
    let cluster = NatsCluster::start(ServerOptions {
        jetstream: true,
        ..ServerOptions::default()
    })
    .expect("cluster");
    // An operator's tools on every server, there before any node starts: a subscriber on
    // `>` each, and a JetStream stream on `>`.
    let all: Vec<String> = cluster.urls().split(',').map(str::to_string).collect();
    let mut watchers = Vec::new();
    let mut clients = Vec::new();
    for u in &all {
        let c = async_nats::connect(u.as_str()).await.expect("watcher");
        let mut sub = c.subscribe(">").await.expect("sub >");
        watchers.push(tokio::spawn(
            async move { while sub.next().await.is_some() {} },
        ));
        c.flush().await.expect("flush");
        clients.push(c);
    }
    let js = async_nats::jetstream::new(async_nats::connect(all[0].as_str()).await.expect("js"));
    // A clustered JetStream answers once its servers have elected a meta leader.
    let deadline = Instant::now() + SETTLE;
    loop {
        let r = js
            .create_stream(async_nats::jetstream::stream::Config {
                name: "EVERYTHING".into(),
                subjects: vec![">".into()],
                storage: async_nats::jetstream::stream::StorageType::Memory,
                ..Default::default()
            })
            .await;
        match r {
            Ok(_) => break,
            Err(e) if Instant::now() < deadline => {
                println!("stream on > not yet: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => panic!("stream on >: {e}"),
        }
    }
    let dir = tempfile::tempdir().expect("dir");
    let none = json!({});
    let mut monitors = Vec::new();
    for (i, home) in [0, 1, 2, 0, 1].into_iter().enumerate() {
        monitors.push(
            start_with(
                "monitor",
                &format!("monitor-{}", i + 1),
                &cluster,
                home,
                dir.path(),
                &none,
            )
            .await,
        );
    }
    let mut dns = Vec::new();
    for (i, home) in [1, 2].into_iter().enumerate() {
        dns.push(
            start_with(
                "dns",
                &format!("dns-{}", i + 1),
                &cluster,
                home,
                dir.path(),
                &none,
            )
            .await,
        );
    }
    let collator = start_with(
        "collator",
        "collator-1",
        &cluster,
        2,
        dir.path(),
        &json!({"collator": {"jetstream": true}}),
    )
    .await;
    let everyone: Vec<&Node> = monitors.iter().chain(&dns).chain([&collator]).collect();
    for n in &everyone {
        wait(
            &format!("{} sees 5 monitors and 2 DNS nodes", n.proc.id),
            SETTLE,
            async || {
                let c = get(&n.proc.http, "/v1/cluster").await.1;
                c["activeMonitors"] == 5 && c["activeDns"] == 2
            },
        )
        .await;
    }
    println!("all 8 nodes started with a `>` subscriber on each server and a stream on `>`");
    let ms: Vec<&Node> = monitors.iter().collect();
    post_all(&ms[..3], &batch(0..1, false)).await;
    all_decided(&ms, 0..1, false, SETTLE).await;
    wait("the collator recorded the outage", SETTLE, async || {
        outages(&collator.proc.http).await.len() == 1
    })
    .await;
    println!("a decision was made on all 5 monitors and recorded by the collator");
    let urls = cluster.urls();
    let day = chrono::Utc::now().date_naive().to_string();
    let from = (chrono::Utc::now() - chrono::TimeDelta::hours(1)).to_rfc3339();
    let to = (chrono::Utc::now() + chrono::TimeDelta::hours(1)).to_rfc3339();
    for (args, answered) in [
        (vec!["usage", "--from", &day, "--to", &day], 2),
        (vec!["downtime", "--from", &from, "--to", &to], 5),
    ] {
        let out = common::cmd()
            .args(&args)
            .args(["--nats-url", &urls, "--timeout", "10s"])
            .output()
            .expect("runs");
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        assert!(
            out.status.success(),
            "{args:?}: {report} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(report["complete"], true, "{report}");
        assert_eq!(
            report["answered"].as_array().map(Vec::len),
            Some(answered),
            "{report}"
        );
    }
    println!("usage and downtime fan-outs answered by every DNS node and monitor");
    for w in watchers {
        w.abort();
    }
    drop(clients);
}

async fn metric(http: &str, line_prefix: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://{http}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// An outage opens; the collator is killed (kill -9); while it is away the cluster opens
/// another outage; then it starts again on the same database.
async fn collator_restart(jetstream: bool) -> (World, Node) {
    let cluster = NatsCluster::start(ServerOptions {
        jetstream,
        ..ServerOptions::default()
    })
    .expect("cluster");
    let dir = tempfile::tempdir().expect("dir");
    let mut monitors = Vec::new();
    for (i, home) in [0, 1, 2, 0, 1].into_iter().enumerate() {
        monitors.push(
            start_with(
                "monitor",
                &format!("monitor-{}", i + 1),
                &cluster,
                home,
                dir.path(),
                &json!({}),
            )
            .await,
        );
    }
    let col_cfg = json!({"collator": {"jetstream": jetstream}});
    let collator = start_with("collator", "collator-1", &cluster, 0, dir.path(), &col_cfg).await;
    for m in &monitors {
        wait("5 active monitors", SETTLE, async || {
            active_monitors(&m.proc.http).await == 5
        })
        .await;
    }
    let mut w = World {
        cluster,
        partition: None,
        monitors,
        collator: Some(collator),
        _dir: dir,
    };
    post_all(&w.ms(), &batch(0..1, false)).await;
    all_decided(&w.ms(), 0..1, false, SETTLE).await;
    let col = w.collator.as_ref().expect("collator").proc.http.clone();
    wait("the collator opened the outage", SETTLE, async || {
        outages(&col).await == vec![("d0.test".to_string(), true)]
    })
    .await;
    let mut gone = w.collator.take().expect("collator");
    gone.proc.child.kill().expect("kill -9");
    let _ = gone.proc.child.wait();
    println!(
        "collator killed (kill -9) during the outage of d0 ({})",
        if jetstream {
            "JetStream"
        } else {
            "no JetStream"
        }
    );
    post_all(&w.ms(), &batch(1..2, false)).await;
    all_decided(&w.ms(), 1..2, false, SETTLE).await;
    println!("while it was away: d1 went offline");
    let back = start_with(
        "collator",
        "collator-1",
        &w.cluster,
        0,
        w._dir.path(),
        &col_cfg,
    )
    .await;
    (w, back)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collator_restarted_without_jetstream_reports_what_it_missed_and_closes_its_outage() {
    let (w, back) = collator_restart(false).await;
    let http = back.proc.http.clone();
    wait("the gap is reported", SETTLE, async || {
        metric(&http, "ibp_collator_gaps{kind=\"missed_start\"}").await == Some(1.0)
    })
    .await;
    assert_eq!(
        metric(&http, "ibp_collator_gaps{kind=\"missed_end\"}").await,
        Some(0.0)
    );
    let log = common::log_of(&back.proc.child);
    assert!(
        log.contains("missed while away") && log.contains("d1.test"),
        "the log names the missed check:\n{log}"
    );
    println!(
        "restarted without JetStream: the missed outage of d1 reported (log, ibp_collator_gaps)"
    );
    // The outage open across the restart closes correctly.
    post_all(&w.ms(), &batch(0..1, true)).await;
    all_decided(&w.ms(), 0..1, true, SETTLE).await;
    wait("d0's row closed", SETTLE, async || {
        outages(&http).await == vec![("d0.test".to_string(), false)]
    })
    .await;
    println!("the outage open across the restart was closed on its row, once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collator_restarted_with_jetstream_loses_and_doubles_nothing() {
    let (w, back) = collator_restart(true).await;
    let http = back.proc.http.clone();
    wait(
        "the missed outage recorded from the stream",
        SETTLE,
        async || outages(&http).await.len() == 2,
    )
    .await;
    post_all(&w.ms(), &batch(0..1, true)).await;
    all_decided(&w.ms(), 0..1, true, SETTLE).await;
    wait("d0's row closed", SETTLE, async || {
        let rows = outages(&http).await;
        rows.contains(&("d0.test".to_string(), false))
            && rows.contains(&("d1.test".to_string(), true))
    })
    .await;
    let rows = outages(&http).await;
    assert_eq!(rows.len(), 2, "no outage doubled: {rows:?}");
    assert_eq!(
        metric(&http, "ibp_collator_gaps{kind=\"missed_start\"}").await,
        None,
        "nothing to report with JetStream"
    );
    println!("restarted with JetStream: d1 recorded from the stream, d0 closed, each once");
}

/// Five monitors, monitor-4's clock stepped back 10 minutes and monitor-5's forward 10
/// (`IbpNode.testing.clock_offset`); `security` holds each monitor's `IbpNode.security`.
async fn stepped_clocks(security: impl Fn(&str) -> Value) -> World {
    let cluster = NatsCluster::start(ServerOptions::default()).expect("cluster");
    let dir = tempfile::tempdir().expect("dir");
    let mut monitors = Vec::new();
    for (i, home) in [0, 1, 2, 0, 1].into_iter().enumerate() {
        let id = format!("monitor-{}", i + 1);
        let mut extra = json!({"security": security(&id)});
        match i {
            3 => extra["testing"] = json!({"clock_offset": "-10m"}),
            4 => extra["testing"] = json!({"clock_offset": "+10m"}),
            _ => {}
        }
        monitors.push(start_with("monitor", &id, &cluster, home, dir.path(), &extra).await);
    }
    World {
        cluster,
        partition: None,
        monitors,
        collator: None,
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stepped_clocks_in_off_mode_apply_no_decision_out_of_order() {
    let w = stepped_clocks(|_| json!({})).await;
    let ms = w.ms();
    for m in &ms {
        wait("5 active monitors", SETTLE, async || {
            active_monitors(&m.proc.http).await == 5
        })
        .await;
    }
    // Down, proposed by the monitor 10 minutes ahead ...
    post_all(&ms[4..5], &batch(0..1, false)).await;
    post_all(&ms[..2], &batch(0..1, false)).await;
    all_decided(&ms, 0..1, false, SETTLE).await;
    // ... then up, proposed by the one 10 minutes behind: 20 minutes "older" by the
    // proposers' clocks, and still the newer decision.
    post_all(&ms[3..4], &batch(0..1, true)).await;
    post_all(&ms[..2], &batch(0..1, true)).await;
    all_decided(&ms, 0..1, true, SETTLE).await;
    let first = official(&ms[0].proc.http).await;
    for m in &ms[1..] {
        assert_eq!(official(&m.proc.http).await, first, "{}", m.proc.id);
    }
    println!(
        "clocks -10 min / +10 min, off mode: the later decision (online) applied on all 5, same official state"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stepped_clocks_in_enforce_mode_are_refused_and_reported() {
    let keys: Vec<(String, ibp_trust::Identity)> = (1..=5)
        .map(|i| (format!("monitor-{i}"), ibp_trust::Identity::generate()))
        .collect();
    let seeds = tempfile::tempdir().expect("seeds");
    let trust: Vec<Value> = keys
        .iter()
        .map(|(id, k)| json!({"public_key": k.public_key(), "node_id": id, "role": "IBPMonitor"}))
        .collect();
    let files: BTreeMap<String, String> = keys
        .iter()
        .map(|(id, k)| {
            use std::os::unix::fs::PermissionsExt;
            let p = seeds.path().join(format!("{id}.nk"));
            std::fs::write(&p, k.seed().expect("seed")).expect("seed file");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("mode");
            (id.clone(), p.display().to_string())
        })
        .collect();
    let w = stepped_clocks(
        |id| json!({"mode": "enforce", "seed_file": files[id], "trust": trust, "max_age": "2m"}),
    )
    .await;
    let ms = w.ms();
    // Monitors 1-3 agree with each other; 4 and 5 are 10 minutes off everyone.
    for m in &ms[..3] {
        wait("3 monitors with a right clock", SETTLE, async || {
            active_monitors(&m.proc.http).await == 3
        })
        .await;
    }
    post_all(&ms[..3], &batch(0..1, false)).await;
    all_decided(&ms[..3], 0..1, false, SETTLE).await;
    let h = &ms[0].proc.http;
    wait("monitor-5's messages refused as expired", SETTLE, async || {
        metric(
            h,
            "ibp_trust_rejections_total{subject=\"consensus.cluster\",reason=\"expired\",sender=\"monitor-5\"}",
        )
        .await
        .is_some_and(|n| n > 0.0)
    })
    .await;
    let (_, health) = get(h, "/healthz").await;
    let warnings = health["warnings"].to_string();
    assert!(
        warnings.contains("monitor-5") && warnings.contains("ahead of"),
        "{health}"
    );
    assert!(
        warnings.contains("monitor-4") && warnings.contains("behind"),
        "{health}"
    );
    let (_, own) = get(&ms[4].proc.http, "/healthz").await;
    assert!(
        own["warnings"].to_string().contains("monitor-1"),
        "the stepped monitor sees it too: {own}"
    );
    let log = common::log_of(&ms[0].proc.child);
    assert!(log.contains("expired"), "logged:\n{log}");
    assert_eq!(
        official(&ms[4].proc.http).await.get("d0.test"),
        None,
        "the stepped monitor took nothing it could not verify"
    );
    println!(
        "enforce: monitors 4 (-10 min) and 5 (+10 min) refused as expired (metric, log, /healthz warnings); monitors 1-3 decided"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_monitor_cut_off_as_a_slow_consumer_reconnects_and_reconciles() {
    // Tight server limits (1 MB pending, 2 s write deadline): the stopped monitor's ~7 MB
    // of burst traffic overflow them, while monitors that read keep up even on a loaded
    // machine.
    let server = ServerOptions {
        max_pending: Some(1 << 20),
        extra: "write_deadline: \"2s\"\n".into(),
        ..ServerOptions::default()
    };
    let w = World::start_full(&[0, 1, 2, 0, 1], false, json!({}), false, server).await;
    let ms = w.ms();
    let slow = ms[4];
    let reconnects = async || {
        metric(&slow.proc.http, "ibp_nats_reconnects_total")
            .await
            .unwrap_or(0.0)
    };
    let before = reconnects().await;
    // Its handlers stop (SIGSTOP) while a burst of 2,000 decisions floods its connection.
    signal(&slow.proc.child, libc_sigstop());
    post_all(&ms[..4], &batch(0..2000, false)).await;
    all_decided(&ms[..4], 0..2000, false, SETTLE).await;
    let server_home = slow.home;
    wait(
        "the server cuts the slow consumer off",
        SETTLE,
        async || w.cluster.slow_consumers(server_home).is_some_and(|n| n > 0),
    )
    .await;
    println!(
        "monitor-5 stalled under a burst of 2,000 decisions; server {server_home} cut it off as a slow consumer"
    );
    signal(&slow.proc.child, libc_sigcont());
    let resumed = chrono::Utc::now();
    wait("monitor-5 reconnects", SETTLE, async || {
        reconnects().await > before
    })
    .await;
    // Re-announced: the others hear it again after it resumed.
    wait("monitor-1 hears monitor-5 again", SETTLE, async || {
        get(&ms[0].proc.http, "/v1/cluster").await.1["nodes"]
            .as_array()
            .is_some_and(|n| {
                n.iter().any(|x| {
                    x["nodeId"] == "monitor-5"
                        && x["lastHeard"]
                            .as_str()
                            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                            .is_some_and(|t| t > resumed)
                })
            })
    })
    .await;
    // Polled here rather than through `all_decided`, so a failure shows what it holds and
    // what it logged.
    let deadline = Instant::now() + SETTLE;
    let mut got = 0;
    while Instant::now() < deadline {
        let have = official(&slow.proc.http).await;
        got = (0..2000)
            .filter(|i| have.get(&format!("d{i}.test")) == Some(&false))
            .count();
        if got == 2000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if got < 2000 {
        let log = common::log_of(&slow.proc.child);
        let tail: Vec<&str> = log
            .lines()
            .filter(|l| !l.contains("DEBUG"))
            .rev()
            .take(60)
            .collect();
        let have = official(&slow.proc.http).await;
        let missing: Vec<String> = (0..2000)
            .map(|i| format!("d{i}.test"))
            .filter(|d| have.get(d) != Some(&false))
            .take(3)
            .collect();
        let mut held = String::new();
        for m in &ms {
            let (_, o) = get(&m.proc.http, "/v1/official").await;
            for r in o["results"].as_array().into_iter().flatten() {
                if missing.iter().any(|d| r["domainName"] == d.as_str()) {
                    held += &format!("{}: {r}\n", m.proc.id);
                }
            }
        }
        panic!(
            "monitor-5 holds {got} of 2,000 results after {SETTLE:?}; missing {missing:?}, held:\n{held}its log (newest first):\n{}",
            tail.join("\n")
        );
    }
    // Pulled page by page (~64 KB each, one in flight per monitor), not four whole
    // answers at once into a connection just cut off for falling behind.
    let pages = metric(&slow.proc.http, "ibp_sync_pages_total")
        .await
        .unwrap_or(0.0);
    assert!(
        pages > 8.0,
        "2,000 results from 4 monitors in {pages} pages"
    );
    println!(
        "monitor-5 reconnected, re-announced and caught up: 2,000 official results, nothing lost ({pages} pages asked; slow consumers on server {server_home}: {:?}, reconnects: {})",
        w.cluster.slow_consumers(server_home),
        reconnects().await - before
    );
}
