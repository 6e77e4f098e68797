//! `ibp-node demo`: a whole cluster in one process on embedded defaults.
//!
//! It starts a private `nats-server` on a free loopback port, then 3 monitors, 2 DNS nodes
//! and 1 collator (SQLite files in a temporary directory), with the real IBP member and
//! service lists, and plays a script. One member's endpoint is served by a fake Substrate
//! node on loopback ([`endpoint`]); the monitors run their real `wss` check against it
//! (and against nothing else: no traffic leaves the machine). The node loses its peers,
//! every check fails, consensus marks the endpoint offline; it recovers, consensus marks it
//! online; the DNS nodes count hits; the collator records the outage and collects usage.

mod dns;
mod endpoint;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use chrono::Utc;
use ibp_core::{CheckKey, Decision};
use ibp_wire::{CheckType, DowntimeRequest, Role, WireTime};

use crate::app::App;
use crate::collectors;
use crate::config::{CheckDef, FileConfig, NodeConfig, Overrides};
use crate::ibp_config::{IbpConfig, SharedIbpConfig, host_of};
use crate::roles::Hit;

/// The member list the demo is built from (public `ibp-network/config`, Apache-2.0).
pub const MEMBERS_JSON: &str =
    include_str!("../../../../fixtures/ibp-config/members_professional.json");
/// The service list the demo is built from.
pub const SERVICES_JSON: &str = include_str!("../../../../fixtures/ibp-config/services_rpc.json");

/// Demo options.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DemoArgs {
    /// Leave the nodes running after the script (explore them with the HTTP API; Ctrl-C to stop).
    #[arg(long)]
    pub keep: bool,
    /// The nats-server binary (default: NATS_SERVER_BIN, PATH, /usr/sbin).
    #[arg(long)]
    pub nats_server: Option<PathBuf>,
    /// The member whose endpoint fails (default: the first member of the list).
    #[arg(long)]
    pub member: Option<String>,
}

struct Clock0(Instant);

impl Clock0 {
    fn say(&self, msg: impl AsRef<str>) {
        println!(
            "[{:>6.3}s] {}",
            self.0.elapsed().as_secs_f64(),
            msg.as_ref()
        );
    }
}

pub(crate) fn find_nats(explicit: &Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(p) = explicit {
        return if p.is_file() {
            Ok(p.clone())
        } else {
            Err(format!("--nats-server {}: no such file", p.display()))
        };
    }
    if let Ok(p) = std::env::var("NATS_SERVER_BIN") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
        .ok_or_else(|| "nats-server not found. Install it (sudo apt-get install nats-server) or run ./run demo, which installs it.".to_string())
}

pub(crate) struct NatsChild {
    pub(crate) child: Child,
    pub(crate) port: u16,
}

impl Drop for NatsChild {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn start_nats(bin: &PathBuf, dir: &std::path::Path) -> Result<NatsChild, String> {
    start_nats_with(bin, dir, "")
}

/// [`start_nats`] with extra server configuration (`max_payload: …`).
pub(crate) fn start_nats_with(
    bin: &PathBuf,
    dir: &std::path::Path,
    conf: &str,
) -> Result<NatsChild, String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))?
        .port();
    let mut cmd = Command::new(bin);
    if !conf.is_empty() {
        let path = dir.join("nats-server.conf");
        std::fs::write(&path, conf).map_err(|e| format!("{}: {e}", path.display()))?;
        cmd.arg("-c").arg(path);
    }
    let mut child = cmd
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir.join("jetstream"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let (tx, rx) = std_mpsc::channel();
    if let Some(err) = child.stderr.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if line.contains("Server is ready") {
                    let _ = tx.send(());
                }
            }
        });
    }
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(()) => Ok(NatsChild { child, port }),
        Err(_) => {
            let _ = child.kill();
            Err(format!("nats-server on port {port} did not become ready"))
        }
    }
}

fn node_config(
    role: Role,
    id: &str,
    nats: &str,
    dir: &std::path::Path,
) -> Result<NodeConfig, String> {
    let o = Overrides {
        role: Some(role.short_name().to_string()),
        node_id: Some(id.to_string()),
        nats_url: Some(nats.to_string()),
        http: Some("127.0.0.1:0".to_string()),
        db: Some(format!(
            "sqlite://{}",
            dir.join(format!("{id}.db")).display()
        )),
        work_dir: Some(dir.to_path_buf()),
        // dns-1 answers DNS itself, so the demo can ask it like a resolver would.
        dns_listen: (id == "dns-1").then(|| "127.0.0.1:0".to_string()),
    };
    let mut cfg = NodeConfig::resolve(&FileConfig::default(), &o).map_err(|e| e.to_string())?;
    cfg.collator.hourly = false;
    cfg.collator.backfill_days = 0;
    cfg.usage_timeout = Duration::from_secs(5);
    cfg.reconcile_interval = Duration::from_secs(5);
    Ok(cfg)
}

async fn decision_for(
    rx: &mut tokio::sync::broadcast::Receiver<Decision>,
    key: &CheckKey,
    status: bool,
) -> Result<Decision, String> {
    let wait = async {
        loop {
            match rx.recv().await {
                // A proposal can fail when it reaches monitors whose own check has not
                // yet seen the change; the one that passes is the decision.
                Ok(d)
                    if d.passed
                        && CheckKey::of(&d.proposal) == *key
                        && d.proposal.proposed_status == status =>
                {
                    return Ok(d);
                }
                Ok(_) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(e) => return Err(format!("decision stream closed: {e}")),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .map_err(|_| format!("no decision on {key} within 10 s"))?
}

fn fmt_latency(d: &Decision) -> String {
    d.latency
        .map(|l| format!("{:.2} ms", l.as_secs_f64() * 1000.0))
        .unwrap_or_else(|| "?".into())
}

/// The peers the demo's `wss` check asks for.
const MIN_PEERS: u64 = 5;

/// The built-in `wss` check, fast enough for a demo: every 2 s, a changed result confirmed
/// once 200 ms later before it is proposed.
fn with_checks(cfg: &mut NodeConfig) {
    cfg.checks = vec![CheckDef {
        name: "wss".into(),
        enabled: true,
        check_type: CheckType::Endpoint,
        timeout: 5,
        minimum_interval: 2,
        extra_options: serde_json::json!({"ConnectTimeout": 2, "ReadTimeout": 2, "MinimumPeers": MIN_PEERS}),
    }];
    cfg.run_checks = true;
    cfg.checker.confirm_count = 1;
    cfg.checker.confirm_spacing = Duration::from_millis(200);
}

/// The lists the monitors check: only `member`, at 127.0.0.1, serving `service` at `url`.
fn monitor_lists(
    ibp: &IbpConfig,
    member: &str,
    service: &str,
    url: &str,
) -> Result<IbpConfig, String> {
    let mut m = ibp.member(member).ok_or("member vanished")?.clone();
    m.ipv4 = "127.0.0.1".into();
    m.ipv6 = String::new();
    let mut s = ibp.services.get(service).ok_or("service vanished")?.clone();
    s.rpc_urls = vec![url.to_string()];
    let mut out = IbpConfig::default();
    out.members.insert(m.name.clone(), m);
    out.services.insert(s.name.clone(), s);
    Ok(out)
}

/// Runs every monitor's checks now instead of at their next slot.
fn run_checks_now(monitors: &[&App]) {
    for m in monitors {
        if let Some(c) = &m.checks {
            c.checker().run_now(|_| true);
        }
    }
}

/// Waits until every monitor holds `status` as the official result of `key`.
async fn wait_official(monitors: &[&App], key: &CheckKey, status: bool) -> Result<(), String> {
    for m in monitors {
        let ok = m
            .node
            .wait_until(
                |n| {
                    n.official()
                        .iter()
                        .any(|(k, o)| k == key && o.status == status)
                },
                Duration::from_secs(15),
            )
            .await;
        if !ok {
            return Err(format!(
                "{} did not apply the {} decision on {key}",
                m.node.id(),
                if status { "online" } else { "offline" }
            ));
        }
    }
    Ok(())
}

/// The last result of `key`'s check on `app`, for the narration.
fn last_check(app: &App, key: &CheckKey) -> String {
    let Some(checks) = &app.checks else {
        return "no checks".into();
    };
    checks
        .view()
        .into_iter()
        .find(|v| v.member == key.member_name && v.endpoint == key.endpoint)
        .and_then(|v| v.last)
        .map(|l| {
            if l.status {
                format!("healthy in {} ms", l.latency_ms)
            } else {
                format!("\"{}\" after {} ms", l.error_text, l.latency_ms)
            }
        })
        .unwrap_or_else(|| "not run yet".into())
}

/// How many monitors agreed, as the finalizer counted them.
fn agreeing(d: &Decision) -> usize {
    d.tally.map(|(yes, _)| yes).unwrap_or_else(|| {
        d.votes
            .as_ref()
            .map(|v| v.values().filter(|a| **a).count())
            .unwrap_or(0)
    })
}

/// The passed decision on `key` as its finalizer made it (with the finalizer's tally and
/// latency), from decision streams subscribed before the change.
async fn decided(
    watches: &mut [(String, tokio::sync::broadcast::Receiver<Decision>)],
    key: &CheckKey,
    status: bool,
) -> Result<Decision, String> {
    let first = decision_for(&mut watches[0].1, key, status).await?;
    if first.by_self {
        return Ok(first);
    }
    match watches.iter_mut().find(|(id, _)| *id == first.finalizer) {
        Some((_, rx)) => decision_for(rx, key, status).await,
        None => Ok(first),
    }
}

/// Runs the demo.
pub async fn run(args: DemoArgs) -> Result<(), String> {
    let t = Clock0(Instant::now());
    let bin = find_nats(&args.nats_server)?;
    let dir = tempfile::Builder::new()
        .prefix("ibp-demo-")
        .tempdir()
        .map_err(|e| format!("temp dir: {e}"))?;
    let nats = start_nats(&bin, dir.path())?;
    let url = format!("nats://127.0.0.1:{}", nats.port);
    t.say(format!(
        "nats-server ready at {url} (work dir {})",
        dir.path().display()
    ));

    let ibp = IbpConfig::parse(MEMBERS_JSON, SERVICES_JSON)?;
    let member = match &args.member {
        Some(m) => ibp
            .member(m)
            .ok_or_else(|| format!("--member {m:?} is not in the member list"))?
            .name
            .clone(),
        None => ibp
            .members
            .keys()
            .next()
            .cloned()
            .ok_or("the member list is empty")?,
    };
    let (service, endpoint) = ibp
        .member_endpoints(&member)
        .into_iter()
        .next()
        .ok_or_else(|| format!("member {member} serves no endpoint"))?;
    let domain = host_of(&endpoint).unwrap_or_default();
    t.say(format!(
        "IBP config: {} members, {} services; the script breaks {member}'s {service} endpoint {endpoint}",
        ibp.members.len(),
        ibp.services.len()
    ));
    let fake = {
        let s = ibp.services.get(&service).ok_or("service vanished")?;
        endpoint::FakeNode::start(&s.network_name, &s.state_root_hash, 24).await?
    };
    let target = ibp_checks::target::parse_check_target(&endpoint, "wss")?;
    let checked_url = format!("ws://{domain}:{}{}", fake.addr.port(), target.request_uri);
    t.say(format!(
        "the monitors check only {member}'s {service} endpoint, as {checked_url}: a fake Substrate node on {} stands in for it",
        fake.addr
    ));
    let checked = SharedIbpConfig::fixed(monitor_lists(&ibp, &member, &service, &checked_url)?);
    let shared = SharedIbpConfig::fixed(ibp);

    let mut apps: Vec<App> = Vec::new();
    let layout = [
        (Role::Monitor, "monitor-1"),
        (Role::Monitor, "monitor-2"),
        (Role::Monitor, "monitor-3"),
        (Role::Dns, "dns-1"),
        (Role::Dns, "dns-2"),
        (Role::Collator, "collator-1"),
    ];
    for (role, id) in layout {
        let mut cfg = node_config(role, id, &url, dir.path())?;
        let lists = if role == Role::Monitor {
            with_checks(&mut cfg);
            checked.clone()
        } else {
            shared.clone()
        };
        let app = App::start_with(
            cfg,
            std::sync::Arc::new(crate::cluster::SystemClock::new()),
            Some(lists),
        )
        .await
        .map_err(|e| format!("{id}: {e}"))?;
        apps.push(app);
    }
    for a in &apps {
        let ok = a
            .node
            .wait_for_active(Role::Monitor, 3, Duration::from_secs(10))
            .await
            && a.node
                .wait_for_active(Role::Dns, 2, Duration::from_secs(10))
                .await;
        if !ok {
            return Err(format!("{} did not see the whole cluster", a.node.id()));
        }
    }
    t.say("cluster formed: 3 monitors, 2 DNS nodes, 1 collator (every node sees every other)");
    for a in &apps {
        t.say(format!(
            "  {:<11} {:<9} http://{}",
            a.node.id().as_str(),
            a.node.role().map(|r| r.short_name()).unwrap_or(""),
            a.http_addr
        ));
    }

    let key = CheckKey::new(
        CheckType::Endpoint,
        "wss",
        member.clone(),
        domain.clone(),
        checked_url.clone(),
        false,
    );
    let (m1, m2, m3) = (&apps[0], &apps[1], &apps[2]);
    let monitors = [m1, m2, m3];
    let mut decisions = Vec::new();

    // Baseline: the monitors' first checks pass and the first proposal makes it official.
    wait_official(&monitors, &key, true).await?;
    t.say(format!(
        "baseline: every monitor's wss check passes ({}); consensus marks the endpoint ONLINE",
        last_check(m1, &key)
    ));

    let listener = apps[3].dns_addr.ok_or("dns-1 has no DNS listener")?;
    let before = dns::ask(listener, &domain).await?;
    t.say(format!(
        "dns-1 answers {domain} A with {} (dig @127.0.0.1 -p {} {domain})",
        dns::show(&before),
        listener.port()
    ));

    // The outage: the node loses its peers; every monitor's check sees it.
    let watch = || {
        monitors
            .iter()
            .map(|m| (m.node.id().to_string(), m.node.decisions()))
            .collect::<Vec<_>>()
    };
    let mut watches = watch();
    let changed = Instant::now();
    fake.set_peers(2);
    t.say(format!(
        "{member}'s node drops to 2 peers (the wss check wants at least {MIN_PEERS})"
    ));
    run_checks_now(&monitors);
    let d_off = decided(&mut watches, &key, false).await?;
    let off_after = changed.elapsed();
    t.say(format!(
        "consensus: OFFLINE ({} of 3 monitors agree), finalized by {} {:.0} ms after the change (its check confirms a change once, 200 ms later, before proposing)",
        agreeing(&d_off),
        d_off.finalizer,
        off_after.as_secs_f64() * 1000.0,
    ));
    decisions.push(("offline", d_off.clone()));
    let (during, took) = dns::changed(listener, &domain, &before, Duration::from_secs(5)).await?;
    t.say(format!(
        "dns-1 now answers {domain} with {} ({:.0} ms after the decision reached monitor-1): {member} is out of the answers",
        dns::show(&during),
        took.as_secs_f64() * 1000.0
    ));
    wait_official(&monitors, &key, false).await?;
    t.say(format!(
        "every monitor's official result: OFFLINE; monitor-1's check says: {}",
        last_check(m1, &key)
    ));

    // DNS traffic.
    let countries = [
        ("DE", "Germany"),
        ("FR", "France"),
        ("US", "United States"),
        ("JP", "Japan"),
    ];
    let mut sent = Vec::new();
    for (i, app) in apps[3..5].iter().enumerate() {
        let dns = app.dns.as_ref().ok_or("dns")?;
        let mut total = 0;
        for (j, (cc, cn)) in countries.iter().enumerate() {
            let hits = ((i + 1) * 100 + j * 37) as i64;
            total += hits;
            dns.record_dns_hit(&Hit {
                date: None,
                domain: domain.clone(),
                member: member.clone(),
                country_code: cc.to_string(),
                country_name: cn.to_string(),
                asn: format!("AS{}", 3320 + j),
                network: "Demo Net".into(),
                is_ipv6: j % 2 == 1,
                hits: Some(hits),
            })
            .map_err(|e| e.to_string())?;
        }
        dns.flush().await;
        sent.push((app.node.id().to_string(), total));
        t.say(format!(
            "{} answered {total} queries for {domain} and flushed its counters",
            app.node.id()
        ));
    }

    // Recovery.
    let mut watches = watch();
    let changed = Instant::now();
    fake.set_peers(24);
    t.say("the node is back to 24 peers");
    run_checks_now(&monitors);
    let d_on = decided(&mut watches, &key, true).await?;
    let on_after = changed.elapsed();
    t.say(format!(
        "consensus: ONLINE ({} of 3 agree), finalized by {} {:.0} ms after the change; monitor-1's check: {}",
        agreeing(&d_on),
        d_on.finalizer,
        on_after.as_secs_f64() * 1000.0,
        last_check(m1, &key)
    ));
    decisions.push(("online", d_on.clone()));
    let (after, took) = dns::changed(listener, &domain, &during, Duration::from_secs(5)).await?;
    t.say(format!(
        "dns-1 answers {domain} with {} again ({:.0} ms after the decision)",
        dns::show(&after),
        took.as_secs_f64() * 1000.0
    ));
    // Those answers were real: dns-1 counted each as a usage hit (country unknown).
    let answered = apps[3]
        .geodns
        .as_ref()
        .map(|g| {
            g.counters()
                .geo_answers
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .unwrap_or(0) as i64;
    if let Some(s) = sent.iter_mut().find(|(n, _)| n == "dns-1") {
        s.1 += answered;
    }
    apps[3].dns.as_ref().ok_or("dns")?.flush().await;

    // The collator's outage record.
    let collator = &apps[5];
    let cstore = collator
        .collator
        .as_ref()
        .ok_or("collator")?
        .store()
        .clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    let outage = loop {
        let evs = cstore.all_events().await.map_err(|e| e.to_string())?;
        if let Some(e) = evs
            .iter()
            .find(|e| e.member_name == member && e.end_time.is_some())
        {
            break e.clone();
        }
        if Instant::now() > deadline {
            return Err("the collator did not record the outage".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    t.say(format!(
        "collator recorded the outage: {} → {}",
        outage.start_time,
        outage.end_time.map(|e| e.to_string()).unwrap_or_default()
    ));

    // Usage collection and a downtime fan-out.
    let today = Utc::now().date_naive();
    let report = collator
        .collator
        .as_ref()
        .ok_or("collator")?
        .collect(&collator.node, today, today)
        .await?;
    t.say(format!(
        "collator collected usage from {} DNS nodes ({} rows)",
        report.answered.len(),
        report.stored
    ));
    let req = DowntimeRequest {
        start_time: WireTime::from_utc(Utc::now() - chrono::TimeDelta::hours(1)),
        end_time: WireTime::from_utc(Utc::now()),
        member_name: member.clone(),
    };
    let dt =
        collectors::request_all_monitors_downtime(&collator.node, &req, Duration::from_secs(5))
            .await
            .map_err(|e| e.to_string())?;
    t.say(format!(
        "downtime fan-out: {} monitors answered, {} events",
        dt.answered.len(),
        dt.records.len()
    ));

    println!();
    println!("=== summary ===");
    println!("decisions on {key}:");
    for (what, d) in &decisions {
        println!(
            "  {what:<8} passed={} finalized by {} ({} from first seeing the proposal; proposal {})",
            d.passed,
            d.finalizer,
            fmt_latency(d),
            d.proposal.id
        );
    }
    println!(
        "outage recorded by the collator: start {} end {} votes {}",
        outage.start_time,
        outage.end_time.map(|e| e.to_string()).unwrap_or_default(),
        outage.vote_data.clone().unwrap_or(serde_json::Value::Null)
    );
    println!("usage collected per DNS node (today):");
    for (node, hits) in &report.hits_by_node {
        let expected = sent
            .iter()
            .find(|(n, _)| n == node)
            .map(|(_, h)| *h)
            .unwrap_or(0);
        println!("  {node:<8} {hits} hits (counted {expected})");
    }
    for (node, expected) in &sent {
        if report.hits_by_node.get(node) != Some(expected) {
            return Err(format!(
                "usage of {node} collected wrong: expected {expected}"
            ));
        }
    }
    println!("total time {:.2} s", t.0.elapsed().as_secs_f64());

    if args.keep {
        println!();
        println!("--keep: the nodes keep running. Status pages (open in a browser):");
        for a in &apps {
            println!(
                "  http://{}/   ({} {})",
                a.http_addr,
                a.node.id(),
                a.node.role().map(|r| r.short_name()).unwrap_or("")
            );
        }
        println!(
            "  http://{}/sla   (the collator's SLA report)",
            apps[5].http_addr
        );
        println!("Or the JSON API:");
        println!("  curl -s http://{}/v1/cluster", apps[0].http_addr);
        println!("  curl -s http://{}/v1/checks", apps[0].http_addr);
        println!("  curl -s http://{}/results", apps[0].http_addr);
        println!("  curl -s http://{}/v1/events", apps[5].http_addr);
        println!(
            "  curl -s -XPOST http://{}/v1/observations -d '{{\"checkType\":\"site\",\"checkName\":\"ping\",\"memberName\":\"{member}\",\"isIPv6\":false,\"status\":false}}'",
            apps[0].http_addr
        );
        // SIGTERM too (systemd, `kill`): the work directory is removed either way. The
        // handler is in place before the line that invites the signal.
        #[cfg(unix)]
        let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
        println!("Ctrl-C (or SIGTERM) to stop.");
        #[cfg(unix)]
        match term {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
    for a in apps {
        a.shutdown().await;
    }
    drop(nats);
    Ok(())
}
