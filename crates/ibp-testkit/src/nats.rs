use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;

/// How long a server may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// Why the harness could not do what a test asked.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// No `nats-server` binary was found.
    #[error(
        "nats-server not found: set NATS_SERVER_BIN or install it (apt-get install nats-server)"
    )]
    NoBinary,
    /// Writing config files or certificates failed.
    #[error("harness I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The server exited or did not become ready in time.
    #[error("nats-server {name} did not become ready: {reason}\n--- last log lines ---\n{log}")]
    NotReady {
        /// Server name.
        name: String,
        /// What happened.
        reason: String,
        /// The tail of its log.
        log: String,
    },
    /// Generating keys, certificates or JWTs failed.
    #[error("harness crypto: {0}")]
    Crypto(String),
}

/// Finds the `nats-server` binary: `NATS_SERVER_BIN`, then `PATH`, then `/usr/sbin`
/// (where Debian installs it, often not on a user's `PATH`).
pub fn nats_server_bin() -> Result<PathBuf, HarnessError> {
    if let Ok(p) = std::env::var("NATS_SERVER_BIN") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(HarnessError::NoBinary)
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
        .ok_or(HarnessError::NoBinary)
}

/// Authentication a test server requires.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Auth {
    /// No authentication.
    #[default]
    None,
    /// `user` / `password`.
    UserPass(String, String),
    /// A token.
    Token(String),
    /// An NKey user (generated).
    NKey,
    /// Operator mode with a user credentials file (generated operator, account and user).
    Credentials,
}

/// Options of a test server.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// Enable JetStream (with its own store directory).
    pub jetstream: bool,
    /// Authentication.
    pub auth: Auth,
    /// Serve TLS with a generated CA and server certificate.
    pub tls: bool,
    /// With TLS, require client certificates signed by the CA.
    pub verify_clients: bool,
    /// `max_payload` in bytes (server default 1 MB).
    pub max_payload: Option<u64>,
    /// `max_pending` in bytes: how much the server buffers for a slow client before it cuts
    /// it off as a slow consumer (server default 64 MB).
    pub max_pending: Option<u64>,
    /// Extra configuration appended verbatim.
    pub extra: String,
}

/// What a client needs to connect to a test server.
#[derive(Debug, Clone, Default)]
pub struct ClientAuth {
    /// User and password.
    pub user_pass: Option<(String, String)>,
    /// Token.
    pub token: Option<String>,
    /// NKey seed.
    pub nkey_seed: Option<String>,
    /// Credentials file.
    pub creds_file: Option<PathBuf>,
    /// CA certificate (PEM) to trust.
    pub ca_file: Option<PathBuf>,
    /// Client certificate and key (PEM).
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

struct Log {
    lines: Mutex<Vec<String>>,
    changed: Condvar,
}

/// A `nats-server` child process on a free loopback port.
pub struct NatsServer {
    name: String,
    port: u16,
    monitor_port: u16,
    config_path: PathBuf,
    dir: tempfile::TempDir,
    child: Option<Child>,
    log: Arc<Log>,
    client: ClientAuth,
}

/// `n` distinct free loopback ports. The listeners are held until all are chosen, so the
/// OS cannot hand out the same port twice; another process can still take one before the
/// server binds it, which [`NatsServer::start_with`] retries.
fn free_ports(n: usize) -> Result<Vec<u16>, HarnessError> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

fn port_clash(e: &HarnessError) -> bool {
    matches!(e, HarnessError::NotReady { log, .. } if log.contains("address already in use"))
}

impl NatsServer {
    /// Starts a plain server (no auth, no TLS, no JetStream).
    pub fn start() -> Result<NatsServer, HarnessError> {
        NatsServer::start_with(ServerOptions::default())
    }

    /// Starts a server with `opts`.
    pub fn start_with(opts: ServerOptions) -> Result<NatsServer, HarnessError> {
        let mut attempt = 0;
        loop {
            let mut s = NatsServer::prepare("nats", &opts, "")?;
            match s.spawn() {
                Ok(()) => return Ok(s),
                Err(e) if port_clash(&e) && attempt < 5 => attempt += 1,
                Err(e) => return Err(e),
            }
        }
    }

    fn prepare(
        name: &str,
        opts: &ServerOptions,
        cluster_block: &str,
    ) -> Result<NatsServer, HarnessError> {
        let dir = tempfile::Builder::new().prefix("ibp-nats-").tempdir()?;
        let ports = free_ports(2)?;
        let (port, monitor_port) = (ports[0], ports[1]);
        let mut client = ClientAuth::default();
        let mut conf = format!(
            "server_name: {name}_{port}\nlisten: 127.0.0.1:{port}\nhttp: 127.0.0.1:{monitor_port}\n"
        );
        if let Some(mp) = opts.max_payload {
            conf.push_str(&format!("max_payload: {mp}\n"));
        }
        if opts.max_payload.is_some() || opts.max_pending.is_some() {
            // The server refuses a max_payload above max_pending; keep room.
            let pending = opts
                .max_pending
                .unwrap_or(64 << 20)
                .max(opts.max_payload.unwrap_or(0) * 4);
            conf.push_str(&format!("max_pending: {pending}\n"));
        }
        if opts.jetstream {
            let store = dir.path().join("jetstream");
            conf.push_str(&format!("jetstream {{ store_dir: {:?} }}\n", store));
        }
        match &opts.auth {
            Auth::None => {}
            Auth::UserPass(u, p) => {
                conf.push_str(&format!(
                    "authorization {{ user: {u:?}, password: {p:?} }}\n"
                ));
                client.user_pass = Some((u.clone(), p.clone()));
            }
            Auth::Token(t) => {
                conf.push_str(&format!("authorization {{ token: {t:?} }}\n"));
                client.token = Some(t.clone());
            }
            Auth::NKey => {
                let kp = nkeys::KeyPair::new_user();
                conf.push_str(&format!(
                    "authorization {{ users: [ {{ nkey: {:?} }} ] }}\n",
                    kp.public_key()
                ));
                client.nkey_seed =
                    Some(kp.seed().map_err(|e| HarnessError::Crypto(e.to_string()))?);
            }
            Auth::Credentials => {
                let (block, creds) = operator_mode(dir.path())?;
                conf.push_str(&block);
                client.creds_file = Some(creds);
            }
        }
        if opts.tls {
            let files = write_certificates(dir.path())?;
            conf.push_str(&format!(
                "tls {{ cert_file: {:?}, key_file: {:?}, ca_file: {:?}, verify: {} }}\n",
                files.server_cert, files.server_key, files.ca, opts.verify_clients
            ));
            client.ca_file = Some(files.ca);
            if opts.verify_clients {
                client.client_cert = Some((files.client_cert, files.client_key));
            }
        }
        conf.push_str(cluster_block);
        conf.push_str(&opts.extra);
        conf.push('\n');
        let config_path = dir.path().join("nats.conf");
        std::fs::write(&config_path, conf)?;
        Ok(NatsServer {
            name: format!("{name}_{port}"),
            port,
            monitor_port,
            config_path,
            dir,
            child: None,
            log: Arc::new(Log {
                lines: Mutex::new(Vec::new()),
                changed: Condvar::new(),
            }),
            client,
        })
    }

    fn spawn(&mut self) -> Result<(), HarnessError> {
        let bin = nats_server_bin()?;
        let mut child = Command::new(bin)
            .arg("-c")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()?;
        let stderr = child.stderr.take();
        let log = self.log.clone();
        if let Ok(mut l) = log.lines.lock() {
            l.clear();
        }
        std::thread::spawn(move || {
            let Some(stderr) = stderr else { return };
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut l) = log.lines.lock() {
                    l.push(line);
                }
                log.changed.notify_all();
            }
            log.changed.notify_all();
        });
        self.child = Some(child);
        self.wait_for_log("Server is ready", 1, READY_TIMEOUT)
    }

    /// Waits until `needle` appeared `count` times in the server log since it (re)started.
    pub fn wait_for_log(
        &mut self,
        needle: &str,
        count: usize,
        timeout: Duration,
    ) -> Result<(), HarnessError> {
        let deadline = Instant::now() + timeout;
        let mut lines = self
            .log
            .lines
            .lock()
            .map_err(|_| self.not_ready("log lock poisoned"))?;
        loop {
            if lines.iter().filter(|l| l.contains(needle)).count() >= count {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                drop(lines);
                return Err(self.not_ready(&format!("exited with {status}")));
            }
            let now = Instant::now();
            if now >= deadline {
                drop(lines);
                return Err(self.not_ready(&format!("no {needle:?} within {timeout:?}")));
            }
            // Wake on every new log line; the short cap only notices a silent exit.
            let (l, _) = self
                .log
                .changed
                .wait_timeout(lines, (deadline - now).min(Duration::from_millis(200)))
                .map_err(|_| self.not_ready("log lock poisoned"))?;
            lines = l;
        }
    }

    fn not_ready(&self, reason: &str) -> HarnessError {
        HarnessError::NotReady {
            name: self.name.clone(),
            reason: reason.to_string(),
            log: self.log_tail(30),
        }
    }

    /// The last `n` lines of the server log.
    pub fn log_tail(&self, n: usize) -> String {
        self.log
            .lines
            .lock()
            .map(|l| l[l.len().saturating_sub(n)..].join("\n"))
            .unwrap_or_default()
    }

    /// `nats://127.0.0.1:<port>` (`tls://…` for a TLS server).
    pub fn url(&self) -> String {
        let scheme = if self.client.ca_file.is_some() {
            "tls"
        } else {
            "nats"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// What a client needs to authenticate.
    pub fn client_auth(&self) -> &ClientAuth {
        &self.client
    }

    /// The server's working directory (config, certificates, JetStream store).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Stops the server gracefully (SIGTERM) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: kill(2) on our own child's PID has no memory-safety requirements.
            unsafe {
                libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
            }
            let _ = c.wait();
        }
    }

    /// Kills the server with SIGKILL (no goodbye to clients) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the server again on the same port with the same configuration and store.
    pub fn restart(&mut self) -> Result<(), HarnessError> {
        self.kill();
        self.spawn()
    }

    /// Fetches a monitoring endpoint (`/varz`, `/routez`, `/connz`, …) as JSON.
    pub fn monitor(&self, path: &str) -> Result<serde_json::Value, HarnessError> {
        let mut s = TcpStream::connect(("127.0.0.1", self.monitor_port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut body = String::new();
        s.read_to_string(&mut body)?;
        let json = body.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        serde_json::from_str(json)
            .map_err(|e| HarnessError::Crypto(format!("bad monitoring JSON from {path}: {e}")))
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The proxies on server 0's routes (see [`NatsCluster::start_partitionable`]).
pub struct Partition {
    p01: crate::proxy::TcpProxy,
    p02: crate::proxy::TcpProxy,
}

impl Partition {
    /// Cuts server 0 off from servers 1 and 2 (which stay joined).
    pub fn isolate_server0(&self) {
        self.p01.cut();
        self.p02.cut();
    }

    /// Lets the routes through again; they reconnect on the servers' own schedule.
    pub fn heal(&self) {
        self.p01.heal();
        self.p02.heal();
    }
}

/// Three `nats-server` processes joined by routes into one cluster.
pub struct NatsCluster {
    servers: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts a 3-server cluster and waits until every server has routes to the others.
    /// A port another process took between choosing and binding it is retried (5 times).
    pub fn start(opts: ServerOptions) -> Result<NatsCluster, HarnessError> {
        let mut attempt = 0;
        loop {
            match NatsCluster::start_once(&opts) {
                Err(e) if attempt < 5 && NatsCluster::retryable(&e) => attempt += 1,
                r => return r,
            }
        }
    }

    fn retryable(e: &HarnessError) -> bool {
        matches!(e, HarnessError::NotReady { reason, .. } if reason.contains("exited"))
    }

    fn start_once(opts: &ServerOptions) -> Result<NatsCluster, HarnessError> {
        let opts = opts.clone();
        let n = 3;
        let cluster_ports = free_ports(n)?;
        let mut servers = Vec::new();
        for (i, cp) in cluster_ports.iter().enumerate() {
            let routes: Vec<String> = cluster_ports
                .iter()
                .filter(|p| *p != cp)
                .map(|p| format!("nats-route://127.0.0.1:{p}"))
                .collect();
            let block = format!(
                "cluster {{ name: ibp_test, listen: 127.0.0.1:{cp}, routes: [{}] }}\n",
                routes.join(", ")
            );
            servers.push(NatsServer::prepare(&format!("c{i}"), &opts, &block)?);
        }
        for s in &mut servers {
            s.spawn()?;
        }
        let mut c = NatsCluster { servers };
        c.wait_routes(Duration::from_secs(20))?;
        Ok(c)
    }

    /// Starts a 3-server cluster whose routes from server 0 run through TCP proxies the
    /// test controls: [`Partition::isolate_server0`] splits the cluster into server 0 and
    /// servers 1+2 at the TCP level, [`Partition::heal`] joins it again. Servers advertise
    /// no usable route address, so no implicit route can bypass the proxies.
    pub async fn start_partitionable(
        opts: ServerOptions,
    ) -> Result<(NatsCluster, Partition), HarnessError> {
        let cp = free_ports(3)?;
        let to = |p: u16| std::net::SocketAddr::from(([127, 0, 0, 1], p));
        let p01 = crate::proxy::TcpProxy::start(to(cp[1])).await?;
        let p02 = crate::proxy::TcpProxy::start(to(cp[2])).await?;
        let routes: [Vec<String>; 3] = [
            vec![
                format!("nats-route://{}", p01.addr()),
                format!("nats-route://{}", p02.addr()),
            ],
            vec![format!("nats-route://127.0.0.1:{}", cp[2])],
            vec![],
        ];
        let mut servers = Vec::new();
        for (i, r) in routes.iter().enumerate() {
            let block = format!(
                "cluster {{ name: ibp_test, listen: 127.0.0.1:{}, advertise: \"127.0.0.1:1\", routes: [{}] }}\n",
                cp[i],
                r.join(", ")
            );
            servers.push(NatsServer::prepare(&format!("p{i}"), &opts, &block)?);
        }
        for s in &mut servers {
            s.spawn()?;
        }
        let mut c = NatsCluster { servers };
        c.wait_routes(Duration::from_secs(20))?;
        Ok((c, Partition { p01, p02 }))
    }

    /// Waits until every running server reports routes to every other running server.
    pub fn wait_routes(&mut self, timeout: Duration) -> Result<(), HarnessError> {
        let deadline = Instant::now() + timeout;
        loop {
            let running: Vec<usize> = (0..self.servers.len())
                .filter(|i| self.servers[*i].is_running())
                .collect();
            let want = running.len().saturating_sub(1) as u64;
            let ok = running.iter().all(|i| {
                self.servers[*i]
                    .monitor("/routez")
                    .ok()
                    .and_then(|v| v["num_routes"].as_u64())
                    .is_some_and(|n| n >= want)
            });
            if ok {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.servers[0].not_ready("cluster routes did not form"));
            }
            // Route formation has no client-visible event; poll the monitoring endpoint.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The routes server `i` reports now (`None` when it does not answer).
    pub fn num_routes(&self, i: usize) -> Option<u64> {
        self.servers.get(i)?.monitor("/routez").ok()?["num_routes"].as_u64()
    }

    /// Clients server `i` has cut off as slow consumers so far.
    pub fn slow_consumers(&self, i: usize) -> Option<u64> {
        self.servers.get(i)?.monitor("/varz").ok()?["slow_consumers"].as_u64()
    }

    /// Comma-separated client URLs of all servers.
    pub fn urls(&self) -> String {
        self.servers
            .iter()
            .map(NatsServer::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Server `i` (0–2).
    pub fn server(&mut self, i: usize) -> &mut NatsServer {
        &mut self.servers[i]
    }

    /// Number of servers.
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Always false: a cluster has servers.
    pub fn is_empty(&self) -> bool {
        self.servers.is_empty()
    }
}

struct CertFiles {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn crypto<E: std::fmt::Display>(e: E) -> HarnessError {
    HarnessError::Crypto(e.to_string())
}

fn write_certificates(dir: &Path) -> Result<CertFiles, HarnessError> {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        SanType,
    };
    let ca_key = KeyPair::generate().map_err(crypto)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(crypto)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "ibp test CA");
    let ca = ca_params.self_signed(&ca_key).map_err(crypto)?;

    let server_key = KeyPair::generate().map_err(crypto)?;
    let mut sp = CertificateParams::new(vec!["localhost".to_string()]).map_err(crypto)?;
    sp.subject_alt_names
        .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
    sp.extended_key_usages
        .push(ExtendedKeyUsagePurpose::ServerAuth);
    let server = sp.signed_by(&server_key, &ca, &ca_key).map_err(crypto)?;

    let client_key = KeyPair::generate().map_err(crypto)?;
    let mut cp = CertificateParams::new(vec!["ibp-client".to_string()]).map_err(crypto)?;
    cp.distinguished_name.push(DnType::CommonName, "ibp-client");
    cp.extended_key_usages
        .push(ExtendedKeyUsagePurpose::ClientAuth);
    let client = cp.signed_by(&client_key, &ca, &ca_key).map_err(crypto)?;

    let files = CertFiles {
        ca: dir.join("ca.pem"),
        server_cert: dir.join("server.pem"),
        server_key: dir.join("server-key.pem"),
        client_cert: dir.join("client.pem"),
        client_key: dir.join("client-key.pem"),
    };
    std::fs::write(&files.ca, ca.pem())?;
    std::fs::write(&files.server_cert, server.pem())?;
    std::fs::write(&files.server_key, server_key.serialize_pem())?;
    std::fs::write(&files.client_cert, client.pem())?;
    std::fs::write(&files.client_key, client_key.serialize_pem())?;
    Ok(files)
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn jwt(issuer: &nkeys::KeyPair, claims: serde_json::Value) -> Result<String, HarnessError> {
    let header = b64(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#);
    let body = b64(claims.to_string().as_bytes());
    let signing_input = format!("{header}.{body}");
    let sig = issuer.sign(signing_input.as_bytes()).map_err(crypto)?;
    Ok(format!("{signing_input}.{}", b64(&sig)))
}

/// Operator mode: generated operator, account and user; returns the server config block
/// and the path of the user's credentials file.
fn operator_mode(dir: &Path) -> Result<(String, PathBuf), HarnessError> {
    let op = nkeys::KeyPair::new_operator();
    let acc = nkeys::KeyPair::new_account();
    let user = nkeys::KeyPair::new_user();
    let iat = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let op_jwt = jwt(
        &op,
        serde_json::json!({"jti": format!("op{iat}"), "iat": iat, "iss": op.public_key(), "sub": op.public_key(), "name": "ibp-test-operator",
                            "nats": {"type": "operator", "version": 2}}),
    )?;
    let limits = serde_json::json!({"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1, "wildcards": true, "conn": -1, "leaf": -1});
    let acc_jwt = jwt(
        &op,
        serde_json::json!({"jti": format!("acc{iat}"), "iat": iat, "iss": op.public_key(), "sub": acc.public_key(), "name": "ibp-test-account",
                            "nats": {"limits": limits, "default_permissions": {"pub": {}, "sub": {}}, "type": "account", "version": 2}}),
    )?;
    let user_jwt = jwt(
        &acc,
        serde_json::json!({"jti": format!("user{iat}"), "iat": iat, "iss": acc.public_key(), "sub": user.public_key(), "name": "ibp-test-user",
                            "nats": {"pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1, "type": "user", "version": 2}}),
    )?;
    let seed = user.seed().map_err(crypto)?;
    let creds = format!(
        "-----BEGIN NATS USER JWT-----\n{user_jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n"
    );
    let op_path = dir.join("operator.jwt");
    std::fs::write(&op_path, &op_jwt)?;
    let creds_path = dir.join("user.creds");
    std::fs::write(&creds_path, creds)?;
    let block = format!(
        "operator: {:?}\nresolver: MEMORY\nresolver_preload: {{ {}: {:?} }}\n",
        op_path,
        acc.public_key(),
        acc_jwt
    );
    Ok((block, creds_path))
}
