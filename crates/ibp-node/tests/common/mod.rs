//! Helpers shared by the node's integration tests.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use ibp_node::config::{FileConfig, NodeConfig, Overrides};

pub mod signed;

/// A node config for `role` with its own SQLite file under `dir`, HTTP on a free port.
pub fn node_config(role: &str, id: &str, url: &str, dir: &Path) -> NodeConfig {
    let o = Overrides {
        role: Some(role.into()),
        node_id: Some(id.into()),
        nats_url: Some(url.into()),
        http: Some("127.0.0.1:0".into()),
        db: Some(format!(
            "sqlite://{}",
            dir.join(format!("{id}.db")).display()
        )),
        work_dir: Some(dir.to_path_buf()),
        dns_listen: None,
    };
    let mut cfg = NodeConfig::resolve(&FileConfig::default(), &o).expect("config");
    cfg.collator.hourly = false;
    cfg.collator.backfill_days = 0;
    cfg.usage_timeout = Duration::from_secs(10);
    cfg
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

pub const BIN: &str = env!("CARGO_BIN_EXE_ibp-node");

/// A started node with its HTTP address and ID; stopped when dropped (through [`Spawned`]).
pub struct Proc {
    pub child: Spawned,
    pub http: String,
    pub id: String,
}

/// A spawned `ibp-node`, killed and reaped when dropped, so a test that fails, or forgets,
/// never leaves a daemon running on the machine (a dropped `Child` keeps running).
/// Derefs to the [`Child`].
pub struct Spawned(Child);

impl std::ops::Deref for Spawned {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Spawned {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Starts `ibp-node` with `args`; its stderr goes to a file (a pipe nobody reads would
/// block a chatty process), see [`log_of`].
pub fn spawn(args: &[&str]) -> Spawned {
    spawn_env(args, &[])
}

/// [`spawn`] with extra environment variables.
pub fn spawn_env(args: &[&str], env: &[(&str, &str)]) -> Spawned {
    let log = std::env::temp_dir().join(format!(
        "ibp-node-test-{}-{}.log",
        std::process::id(),
        uuid_like()
    ));
    let file = std::fs::File::create(&log).expect("log file");
    let mut cmd = Command::new(BIN);
    // Never the source tree: a node without --work-dir creates ./ibp-data.
    cmd.args(args)
        .current_dir(std::env::temp_dir())
        .env("RUST_LOG", "warn")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(file));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().expect("spawn ibp-node");
    LOGS.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(child.id(), log);
    Spawned(child)
}

static LOGS: std::sync::Mutex<std::collections::BTreeMap<u32, std::path::PathBuf>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

fn uuid_like() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

/// What a spawned process wrote to stderr so far.
pub fn log_of(child: &Child) -> String {
    LOGS.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .get(&child.id())
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default()
}

/// Sends a signal to a child process.
pub fn signal(child: &Child, sig: i32) {
    unsafe extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    // SAFETY: kill(2) on our own child's PID.
    unsafe { kill(child.id() as i32, sig) };
}

/// SIGTERM, then waits (bounded) for the exit; returns the status and the log.
pub fn terminate(child: &mut Child, within: Duration) -> (std::process::ExitStatus, String) {
    signal(child, 15);
    let deadline = Instant::now() + within;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return (status, log_of(child));
        }
        assert!(
            Instant::now() < deadline,
            "did not exit within {within:?} after SIGTERM:\n{}",
            log_of(child)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the process answers /healthz (an external process: polling is the only way).
pub async fn ready(http: &str, child: &mut Child) {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client.get(format!("http://{http}/livez")).send().await
            && r.status().is_success()
        {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("ibp-node exited early with {status}:\n{}", log_of(child));
        }
        assert!(
            Instant::now() < deadline,
            "ibp-node at {http} did not come up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Starts `ibp-node run` as `role`/`id` on `nats` with its database in `dir` and a free
/// HTTP port, without waiting for it; returns it and its HTTP address.
pub fn spawn_node(role: &str, id: &str, nats: &str, dir: &std::path::Path) -> (Spawned, String) {
    let http = format!("127.0.0.1:{}", free_port());
    let db = format!("sqlite://{}", dir.join(format!("{id}.db")).display());
    let child = spawn(&[
        "run",
        "--role",
        role,
        "--node-id",
        id,
        "--nats-url",
        nats,
        "--http",
        &http,
        "--db",
        &db,
    ]);
    (child, http)
}

/// [`spawn_node`], then waits until it answers over HTTP.
pub async fn node(role: &str, id: &str, nats: &str, dir: &std::path::Path) -> Proc {
    let (mut child, http) = spawn_node(role, id, nats, dir);
    ready(&http, &mut child).await;
    Proc {
        child,
        http,
        id: id.to_string(),
    }
}

pub async fn get(http: &str, path: &str) -> (u16, Value) {
    let r = reqwest::get(format!("http://{http}{path}"))
        .await
        .expect("GET");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

pub async fn post(http: &str, path: &str, body: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("http://{http}{path}"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("POST");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Waits for a condition on a node's HTTP view (no event crosses the process boundary).
pub async fn until(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `ibp-node` as a one-shot command, run outside the source tree.
pub fn cmd() -> Command {
    let mut c = Command::new(BIN);
    c.current_dir(std::env::temp_dir());
    c
}

/// `n` monitor nodes (`monitor-0`…) on `url`, each seeing all `n` active; reconcile is
/// left to the tests.
pub async fn monitor_nodes(url: &str, n: usize) -> Vec<ibp_node::cluster::Node> {
    use ibp_node::cluster::{Node, NodeOptions, RoleServices};
    use ibp_wire::{NodeId, Role};
    let mut out = Vec::new();
    for i in 0..n {
        let mut o = NodeOptions::new(NodeId::new(format!("monitor-{i}")).expect("id"), url);
        o.reconcile_interval = Duration::from_secs(3600);
        let node = Node::connect(o).await.expect("connect");
        node.enable(Role::Monitor, RoleServices::default())
            .await
            .expect("enable");
        out.push(node);
    }
    for m in &out {
        assert!(
            m.wait_for_active(Role::Monitor, n, Duration::from_secs(20))
                .await
        );
    }
    out
}
