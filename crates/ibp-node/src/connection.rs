//! The NATS connection manager: options as the reference client, every auth mode, an
//! observable connection state, and subscriptions that never lose messages silently.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::{HeaderMap, Message};
use bytes::Bytes;
use futures::FutureExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::metrics::Metrics;

/// Connection options. `Default` gives the reference client's values (protocol §7).
/// `Debug` shows which secrets are set, never their values.
#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectOptions {
    /// Server URLs, comma-separated (`nats://a:4222,nats://b:4222`).
    pub servers: String,
    /// Client name shown in the server's monitoring (`connz`).
    pub name: Option<String>,
    /// User name (with `password`).
    pub user: Option<String>,
    /// Password (with `user`). Never logged.
    #[serde(skip_serializing)]
    pub password: Option<String>,
    /// Token. Never logged.
    #[serde(skip_serializing)]
    pub token: Option<String>,
    /// NKey seed (`SU…`). Never logged.
    #[serde(skip_serializing)]
    pub nkey_seed: Option<String>,
    /// Credentials file (JWT + NKey seed).
    pub credentials_file: Option<PathBuf>,
    /// CA certificate (PEM) to trust for TLS.
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS.
    pub tls_cert_file: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    pub tls_key_file: Option<PathBuf>,
    /// Require TLS even if the server does not ask for it.
    pub tls_required: bool,
    /// Delay between reconnect attempts (2 s).
    #[serde(with = "ibp_core::duration_serde")]
    pub reconnect_delay: Duration,
    /// Give up after this many reconnect attempts (`None`: reconnect forever).
    pub max_reconnects: Option<usize>,
    /// Timeout of one connection attempt, TCP to first PONG (10 s).
    #[serde(with = "ibp_core::duration_serde")]
    pub connect_timeout: Duration,
    /// Ping interval (200 s).
    #[serde(with = "ibp_core::duration_serde")]
    pub ping_interval: Duration,
    /// Unanswered pings before the connection is declared stale (5). The client library
    /// fixes its own limit at 2, so the ping period is scaled to give the same detection
    /// time as the reference: `ping_interval × (max_pings_outstanding + 1)`.
    pub max_pings_outstanding: u32,
    /// Do not receive own publishes (true, as the reference).
    pub no_echo: bool,
    /// Messages a subscription may hold before the client drops (and reports) them
    /// (1,048,576, as the reference's 1,000,000 pending messages).
    pub subscription_capacity: usize,
    /// Keep retrying the first connection instead of failing after one round of attempts.
    pub retry_on_initial_connect: bool,
    /// Try the servers in the order given (the first is this node's home: the server on the
    /// same host, say) instead of shuffling them, at connect and at every reconnect.
    pub retain_servers_order: bool,
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |o: &Option<String>| o.as_ref().map(|_| "***");
        f.debug_struct("ConnectOptions")
            .field("servers", &redact_servers(&self.servers))
            .field("name", &self.name)
            .field("user", &self.user)
            .field("password", &set(&self.password))
            .field("token", &set(&self.token))
            .field("nkey_seed", &set(&self.nkey_seed))
            .field("credentials_file", &self.credentials_file)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_required", &self.tls_required)
            .field("reconnect_delay", &self.reconnect_delay)
            .field("connect_timeout", &self.connect_timeout)
            .field("ping_interval", &self.ping_interval)
            .field("max_pings_outstanding", &self.max_pings_outstanding)
            .field("no_echo", &self.no_echo)
            .field("subscription_capacity", &self.subscription_capacity)
            .finish_non_exhaustive()
    }
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            servers: "nats://127.0.0.1:4222".to_string(),
            name: None,
            user: None,
            password: None,
            token: None,
            nkey_seed: None,
            credentials_file: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_required: false,
            reconnect_delay: Duration::from_secs(2),
            max_reconnects: None,
            connect_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(200),
            max_pings_outstanding: 5,
            no_echo: true,
            subscription_capacity: 1 << 20,
            retry_on_initial_connect: false,
            retain_servers_order: false,
        }
    }
}

/// Why connecting failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to NATS at {servers}: {message}")]
pub struct ConnectError {
    kind: ConnectErrorKind,
    servers: String,
    message: String,
}

/// What kind of connection failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectErrorKind {
    /// The options are unusable (bad URL, unreadable credentials file, half a TLS pair).
    InvalidOptions,
    /// The server refused the credentials.
    Authorization,
    /// No server answered within the timeout.
    Unreachable,
    /// TLS failed.
    Tls,
    /// Anything else.
    Other,
}

impl ConnectError {
    /// What kind of failure this is.
    pub fn kind(&self) -> ConnectErrorKind {
        self.kind
    }

    fn new(kind: ConnectErrorKind, servers: &str, message: impl Into<String>) -> ConnectError {
        let mut message = message.into();
        // Messages may quote the URL they were given: never its secrets.
        for raw in servers.split(',').map(str::trim) {
            let shown = redact_servers(raw);
            if shown != raw {
                message = message.replace(raw, &shown);
            }
        }
        ConnectError {
            kind,
            servers: redact_servers(servers),
            message,
        }
    }
}

/// A server list with every URL's userinfo (user:password, or a token) replaced by `***`.
pub fn redact_servers(servers: &str) -> String {
    servers
        .split(',')
        .map(|u| {
            let t = u.trim();
            match (t.find("://"), t.rfind('@')) {
                (Some(s), Some(at)) if at > s => format!("{}***@{}", &t[..s + 3], &t[at + 1..]),
                _ => t.to_string(),
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Credentials written into a server URL, as nats.go and nats-py take them:
/// `nats://user:password@host` or `nats://token@host`. Returns the URL without them.
fn url_credentials(url: &str) -> (String, Option<(String, Option<String>)>) {
    let Ok(mut u) = url::Url::parse(url) else {
        return (url.to_string(), None);
    };
    if u.username().is_empty() {
        return (url.to_string(), None);
    }
    let decode = |s: &str| {
        url::form_urlencoded::parse(format!("x={s}").as_bytes())
            .next()
            .map(|(_, v)| v.into_owned())
            .unwrap_or_else(|| s.to_string())
    };
    let user = decode(u.username());
    let password = u.password().map(decode);
    let _ = u.set_username("");
    let _ = u.set_password(None);
    let bare = u.as_str().trim_end_matches('/').to_string();
    (bare, Some((user, password)))
}

/// The connection's state as the rest of the node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnState {
    /// Current state.
    pub state: StateKind,
    /// The server currently (or last) connected to.
    pub server: Option<String>,
    /// How many times the connection came back after a disconnect.
    pub reconnects: u64,
}

/// Connection states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StateKind {
    /// Connected (for the first time).
    Connected,
    /// Lost the connection; the client is reconnecting.
    Disconnected,
    /// Connected again after a disconnect.
    Reconnected,
    /// Closed for good (shutdown or reconnects exhausted).
    Closed,
}

/// How a subscription runs its handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Concurrency {
    /// One message at a time, in arrival order.
    Sequential,
    /// Up to this many handlers at once (the reference allows 256).
    Bounded(usize),
}

impl Default for Concurrency {
    fn default() -> Self {
        Concurrency::Bounded(256)
    }
}

/// Why a publish or subscribe failed.
#[derive(Debug, thiserror::Error)]
#[error("{op} on {subject}: {message}")]
pub struct BusError {
    op: &'static str,
    subject: String,
    message: String,
}

impl BusError {
    pub(crate) fn new(op: &'static str, subject: &str, e: impl std::fmt::Display) -> BusError {
        BusError {
            op,
            subject: subject.to_string(),
            message: e.to_string(),
        }
    }

    /// The operation (`publish`, `subscribe`, `flush`, `encode`).
    pub fn op(&self) -> &'static str {
        self.op
    }
}

/// A connection to NATS, shared by everything a node does. Cheap to clone.
#[derive(Clone)]
pub struct Connection {
    client: async_nats::Client,
    state: watch::Receiver<ConnState>,
    metrics: Arc<Metrics>,
    cell: ClientCell,
    log_gate: Arc<LogGate>,
}

/// Bounds the logs a flood of bad messages can cause: at most `PER_WINDOW` lines per
/// window; the next line after a window says how many were suppressed. Every bad message
/// is still counted in the metrics.
#[derive(Debug)]
pub struct LogGate {
    state: std::sync::Mutex<(std::time::Instant, u32, u64)>,
}

impl Default for LogGate {
    fn default() -> Self {
        LogGate::new()
    }
}

impl LogGate {
    const PER_WINDOW: u32 = 20;
    const WINDOW: Duration = Duration::from_secs(10);

    /// A gate with the default window.
    pub fn new() -> LogGate {
        LogGate {
            state: std::sync::Mutex::new((std::time::Instant::now(), 0, 0)),
        }
    }

    /// `Some(suppressed since the last logged line)` when this one may be logged.
    pub fn allow(&self) -> Option<u64> {
        let mut s = self.state.lock().ok()?;
        if s.0.elapsed() >= Self::WINDOW {
            s.0 = std::time::Instant::now();
            s.1 = 0;
        }
        if s.1 < Self::PER_WINDOW {
            s.1 += 1;
            let suppressed = std::mem::take(&mut s.2);
            Some(suppressed)
        } else {
            s.2 += 1;
            None
        }
    }
}

type ClientCell = Arc<std::sync::Mutex<Option<async_nats::Client>>>;

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("state", &*self.state.borrow())
            .finish()
    }
}

fn classify(e: &async_nats::ConnectError) -> ConnectErrorKind {
    use async_nats::ConnectErrorKind as K;
    match e.kind() {
        K::AuthorizationViolation | K::Authentication => ConnectErrorKind::Authorization,
        K::TimedOut | K::Io => ConnectErrorKind::Unreachable,
        K::Tls => ConnectErrorKind::Tls,
        K::ServerParse | K::Dns => ConnectErrorKind::InvalidOptions,
        _ => ConnectErrorKind::Other,
    }
}

impl Connection {
    /// Connects with `opts`. Without `retry_on_initial_connect`, fails after one round of
    /// attempts (each bounded by `connect_timeout`) with an error saying why.
    pub async fn connect(
        opts: &ConnectOptions,
        metrics: Arc<Metrics>,
    ) -> Result<Connection, ConnectError> {
        let mut from_url = None;
        let servers: Vec<async_nats::ServerAddr> = opts
            .servers
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                let (bare, creds) = url_credentials(s);
                if from_url.is_none() {
                    from_url = creds;
                }
                bare.parse::<async_nats::ServerAddr>().map_err(|e| {
                    ConnectError::new(
                        ConnectErrorKind::InvalidOptions,
                        &opts.servers,
                        format!("bad server URL {s:?}: {e}"),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        if servers.is_empty() {
            return Err(ConnectError::new(
                ConnectErrorKind::InvalidOptions,
                &opts.servers,
                "no server URL given",
            ));
        }
        let mut o = async_nats::ConnectOptions::new();
        if let Some(n) = &opts.name {
            o = o.name(n);
        }
        match (&opts.user, &opts.password, &opts.token, from_url) {
            // Credentials in the URL, when none are configured otherwise.
            (None, None, None, Some((user, Some(password)))) => {
                o = o.user_and_password(user, password)
            }
            (None, None, None, Some((token, None))) => o = o.token(token),
            _ => {}
        }
        match (&opts.user, &opts.password) {
            (Some(u), Some(p)) => o = o.user_and_password(u.clone(), p.clone()),
            (Some(_), None) | (None, Some(_)) => {
                return Err(ConnectError::new(
                    ConnectErrorKind::InvalidOptions,
                    &opts.servers,
                    "user and password must be given together",
                ));
            }
            (None, None) => {}
        }
        if let Some(t) = &opts.token {
            o = o.token(t.clone());
        }
        if let Some(seed) = &opts.nkey_seed {
            o = o.nkey(seed.clone());
        }
        if let Some(path) = &opts.credentials_file {
            o = o.credentials_file(path).await.map_err(|e| {
                ConnectError::new(
                    ConnectErrorKind::InvalidOptions,
                    &opts.servers,
                    format!("cannot read credentials file {}: {e}", path.display()),
                )
            })?;
        }
        if let Some(ca) = &opts.tls_ca_file {
            o = o.add_root_certificates(ca.clone());
        }
        match (&opts.tls_cert_file, &opts.tls_key_file) {
            (Some(c), Some(k)) => o = o.add_client_certificate(c.clone(), k.clone()),
            (None, None) => {}
            _ => {
                return Err(ConnectError::new(
                    ConnectErrorKind::InvalidOptions,
                    &opts.servers,
                    "tls_cert_file and tls_key_file must be given together",
                ));
            }
        }
        if opts.tls_required || opts.tls_ca_file.is_some() {
            o = o.require_tls(true);
        }
        let delay = opts.reconnect_delay;
        // async-nats declares a connection stale after 2 unanswered pings; scale the period
        // so detection takes as long as the reference's `max_pings_outstanding`.
        let ping = opts
            .ping_interval
            .mul_f64(f64::from(opts.max_pings_outstanding + 1) / 3.0);
        o = o
            .connection_timeout(opts.connect_timeout)
            .ping_interval(ping.max(Duration::from_millis(100)))
            .max_reconnects(opts.max_reconnects)
            .reconnect_delay_callback(
                move |attempts| if attempts <= 1 { Duration::ZERO } else { delay },
            )
            .subscription_capacity(opts.subscription_capacity.max(1))
            .client_capacity(65_536);
        if opts.no_echo {
            o = o.no_echo();
        }
        if opts.retry_on_initial_connect {
            o = o.retry_on_initial_connect();
        }
        if opts.retain_servers_order {
            o = o.retain_servers_order();
        }
        let (tx, rx) = watch::channel(ConnState {
            state: StateKind::Disconnected,
            server: None,
            reconnects: 0,
        });
        let tx = Arc::new(tx);
        let events_tx = tx.clone();
        let ev_metrics = metrics.clone();
        let connected_once = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // The callback is built before the client exists; it reads the server from the client
        // once connect() has returned.
        // It holds a clone of the client, which would keep the connection alive forever:
        // `Connection::close` empties the cell.
        let client_cell: ClientCell = Arc::new(std::sync::Mutex::new(None));
        let cell = client_cell.clone();
        o = o.event_callback(move |event| {
            let tx = events_tx.clone();
            let m = ev_metrics.clone();
            let once = connected_once.clone();
            let cell = cell.clone();
            async move {
                let server = cell.lock().ok().and_then(|c| {
                    c.as_ref().map(|c| {
                        let i = c.server_info();
                        format!("{}:{}", i.host, i.port)
                    })
                });
                match event {
                    async_nats::Event::Connected => {
                        let again = once.swap(true, std::sync::atomic::Ordering::SeqCst);
                        if again {
                            m.reconnects.inc();
                            tracing::info!(server = ?server, "nats reconnected");
                        } else {
                            tracing::info!(server = ?server, "nats connected");
                        }
                        tx.send_modify(|s| {
                            s.state = if again {
                                StateKind::Reconnected
                            } else {
                                StateKind::Connected
                            };
                            if again {
                                s.reconnects += 1;
                            }
                            if server.is_some() {
                                s.server = server.clone();
                            }
                        });
                    }
                    async_nats::Event::Disconnected => {
                        m.disconnects.inc();
                        tracing::warn!(server = ?server, "nats disconnected; reconnecting");
                        tx.send_modify(|s| s.state = StateKind::Disconnected);
                    }
                    async_nats::Event::Closed => {
                        tracing::info!("nats connection closed");
                        tx.send_modify(|s| s.state = StateKind::Closed);
                    }
                    async_nats::Event::SlowConsumer(sid) => {
                        m.slow_consumers.inc();
                        tracing::error!(
                            sid,
                            "nats subscription is a slow consumer: the client dropped messages"
                        );
                    }
                    async_nats::Event::LameDuckMode => {
                        tracing::warn!(server = ?server, "nats server entered lame duck mode")
                    }
                    async_nats::Event::Draining => tracing::debug!("nats connection draining"),
                    async_nats::Event::ServerError(e) => {
                        tracing::warn!(error = %e, "nats server error")
                    }
                    async_nats::Event::ClientError(e) => {
                        tracing::debug!(error = %e, "nats client error")
                    }
                }
            }
        });
        let client = o
            .connect(servers.as_slice())
            .await
            .map_err(|e| ConnectError::new(classify(&e), &opts.servers, e.to_string()))?;
        let info = client.server_info();
        let url = format!("{}:{}", info.host, info.port);
        if let Ok(mut c) = client_cell.lock() {
            *c = Some(client.clone());
        }
        tx.send_modify(|s| {
            s.server = Some(url.clone());
            if s.state == StateKind::Disconnected && s.reconnects == 0 {
                s.state = StateKind::Connected;
            }
        });
        tracing::info!(server = %url, max_payload = info.max_payload, "connected to nats");
        Ok(Connection {
            client,
            state: rx,
            metrics,
            cell: client_cell,
            log_gate: Arc::new(LogGate::new()),
        })
    }

    /// Flushes what is pending and closes the connection, for every clone of it. Returns
    /// once what was published is on the socket and the connection is closed (each step
    /// bounded): the client's own drain only starts closing, and a process that exits
    /// right after it loses its last messages (a leave, say).
    pub async fn close(&self) {
        if let Ok(mut c) = self.cell.lock() {
            c.take();
        }
        if tokio::time::timeout(Duration::from_secs(2), self.client.flush())
            .await
            .is_err()
        {
            tracing::warn!("NATS flush on close did not finish within 2 s");
        }
        if let Err(e) = self.client.drain().await {
            tracing::debug!(error = %e, "drain on close");
        }
        let mut state = self.state.clone();
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            state.wait_for(|s| s.state == StateKind::Closed),
        )
        .await;
    }

    /// The underlying client, for what the helpers here do not cover (JetStream).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The current state.
    pub fn state(&self) -> ConnState {
        self.state.borrow().clone()
    }

    /// A watch of the state: roles re-announce when `reconnects` grows.
    pub fn watch_state(&self) -> watch::Receiver<ConnState> {
        self.state.clone()
    }

    /// Whether the client is connected right now.
    pub fn is_connected(&self) -> bool {
        matches!(
            self.client.connection_state(),
            async_nats::connection::State::Connected
        )
    }

    /// The largest payload the server accepts (from its INFO).
    pub fn max_payload(&self) -> usize {
        self.client.server_info().max_payload
    }

    /// Publishes raw bytes.
    pub async fn publish_bytes(&self, subject: &str, payload: Bytes) -> Result<(), BusError> {
        let r = self.client.publish(subject.to_string(), payload).await;
        self.count_publish(subject, r)
    }

    /// Publishes raw bytes with headers.
    pub async fn publish_with_headers(
        &self,
        subject: &str,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<(), BusError> {
        let r = self
            .client
            .publish_with_headers(subject.to_string(), headers, payload)
            .await;
        self.count_publish(subject, r)
    }

    /// Publishes raw bytes with a reply subject and headers.
    pub async fn publish_request(
        &self,
        subject: &str,
        reply: &str,
        headers: HeaderMap,
        payload: Bytes,
    ) -> Result<(), BusError> {
        let r = self
            .client
            .publish_with_reply_and_headers(
                subject.to_string(),
                reply.to_string(),
                headers,
                payload,
            )
            .await;
        self.count_publish(subject, r)
    }

    fn count_publish<E: std::fmt::Display>(
        &self,
        subject: &str,
        r: Result<(), E>,
    ) -> Result<(), BusError> {
        match r {
            Ok(()) => {
                self.metrics.sent(subject);
                Ok(())
            }
            Err(e) => {
                self.metrics.publish_failed(subject);
                tracing::warn!(subject, error = %e, "publish failed");
                Err(BusError::new("publish", subject, e))
            }
        }
    }

    /// Encodes `msg` as a Go node would and publishes it.
    pub async fn publish<T: Serialize + ?Sized>(
        &self,
        subject: &str,
        msg: &T,
    ) -> Result<(), BusError> {
        let bytes = ibp_wire::encode(msg).map_err(|e| BusError::new("encode", subject, e))?;
        self.publish_bytes(subject, bytes.into()).await
    }

    /// Sends a request (encoded as Go would) and decodes the single reply leniently.
    pub async fn request<Req, Resp>(
        &self,
        subject: &str,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, BusError>
    where
        Req: Serialize + ?Sized,
        Resp: ibp_wire::WireDecode,
    {
        let payload = ibp_wire::encode(req).map_err(|e| BusError::new("encode", subject, e))?;
        let msg = tokio::time::timeout(
            timeout,
            self.client.request(subject.to_string(), payload.into()),
        )
        .await
        .map_err(|_| BusError::new("request", subject, format!("no reply within {timeout:?}")))?
        .map_err(|e| BusError::new("request", subject, e))?;
        self.metrics.sent(subject);
        self.metrics.received(msg.subject.as_str());
        ibp_wire::decode::<Resp>(&msg.payload).map_err(|e| {
            self.metrics.decode_failed(msg.subject.as_str());
            BusError::new("decode", subject, e)
        })
    }

    /// Waits until everything published so far was written to the socket. This is not a
    /// server round trip; see [`Connection::barrier`].
    pub async fn flush(&self) -> Result<(), BusError> {
        self.client
            .flush()
            .await
            .map_err(|e| BusError::new("flush", "*", e))
    }

    /// A server round trip: when it returns, the server has processed everything this
    /// connection sent before it, subscriptions included. (A flush only reaches the socket,
    /// so a message published by another node right after a subscribe could still miss it.)
    /// It sends an empty request to a subject nobody serves and waits for the server's
    /// "no responders" answer.
    pub async fn barrier(&self) -> Result<(), BusError> {
        let subject = format!("_IBP.barrier.{}", uuid::Uuid::new_v4().simple());
        match self.client.request(subject.clone(), Bytes::new()).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => Ok(()),
            Err(e) => Err(BusError::new("barrier", &subject, e)),
        }
    }

    /// Subscribes and runs `handler` for every message, with the given concurrency.
    ///
    /// The subscription is drained by its own task into the handlers, so a slow or
    /// panicking handler never stops it: a panic is caught, counted and logged, and the
    /// next message is handled. Backpressure: when all handler slots are busy the task
    /// waits, and messages queue in the client's subscription buffer
    /// (`subscription_capacity`); only past that does the client drop them, and that is
    /// counted as a slow-consumer event.
    pub async fn subscribe<F, Fut>(
        &self,
        subject: &str,
        concurrency: Concurrency,
        handler: F,
    ) -> Result<SubscriptionHandle, BusError>
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let sub = self
            .client
            .subscribe(subject.to_string())
            .await
            .map_err(|e| BusError::new("subscribe", subject, e))?;
        Ok(self.drive(subject, sub, concurrency, handler))
    }

    /// Subscribes and decodes every message as `T` with the Go-lenient decoder. A message
    /// that fails to decode is counted, logged with its subject and dropped.
    pub async fn subscribe_decoded<T, F, Fut>(
        &self,
        subject: &str,
        concurrency: Concurrency,
        handler: F,
    ) -> Result<SubscriptionHandle, BusError>
    where
        T: ibp_wire::WireDecode + Send + 'static,
        F: Fn(T, Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let metrics = self.metrics.clone();
        let handler = Arc::new(handler);
        let gate = self.log_gate.clone();
        self.subscribe(subject, concurrency, move |msg: Message| {
            let decoded = ibp_wire::decode::<T>(&msg.payload);
            let metrics = metrics.clone();
            let handler = handler.clone();
            let gate = gate.clone();
            async move {
                match decoded {
                    Ok(v) => handler(v, msg).await,
                    Err(e) => {
                        metrics.decode_failed(msg.subject.as_str());
                        if let Some(suppressed) = gate.allow() {
                            tracing::warn!(subject = %msg.subject, error = %e, bytes = msg.payload.len(), suppressed, "dropping undecodable message");
                        }
                    }
                }
            }
        })
        .await
    }

    fn drive<F, Fut>(
        &self,
        subject: &str,
        mut sub: async_nats::Subscriber,
        concurrency: Concurrency,
        handler: F,
    ) -> SubscriptionHandle
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        use futures::StreamExt;
        let limit = match concurrency {
            Concurrency::Sequential => 1,
            Concurrency::Bounded(n) => n.max(1),
        };
        let slots = Arc::new(Semaphore::new(limit));
        let metrics = self.metrics.clone();
        let handler = Arc::new(handler);
        let name = subject.to_string();
        let task_slots = slots.clone();
        let task = tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                metrics.received(msg.subject.as_str());
                // Acquiring before spawning keeps arrival order for Sequential (the
                // semaphore is fair) and bounds the number of handlers in flight.
                let Ok(permit) = task_slots.clone().acquire_owned().await else {
                    break;
                };
                let handler = handler.clone();
                let metrics = metrics.clone();
                let subject = msg.subject.clone();
                tokio::spawn(async move {
                    let r = std::panic::AssertUnwindSafe(handler(msg))
                        .catch_unwind()
                        .await;
                    drop(permit);
                    if r.is_err() {
                        metrics.handler_panics.inc();
                        tracing::error!(%subject, "message handler panicked; the subscription goes on");
                    }
                });
            }
            tracing::debug!(subject = %name, "subscription ended");
        });
        SubscriptionHandle { task, slots, limit }
    }
}

/// A running subscription. Dropping it does not stop it; call [`SubscriptionHandle::stop`].
#[derive(Debug)]
pub struct SubscriptionHandle {
    task: JoinHandle<()>,
    slots: Arc<Semaphore>,
    limit: usize,
}

impl SubscriptionHandle {
    /// Stops receiving and waits (up to `timeout`) for handlers in flight to finish.
    pub async fn stop(self, timeout: Duration) {
        self.task.abort();
        let _ = self.task.await;
        let limit = u32::try_from(self.limit).unwrap_or(u32::MAX);
        let _ = tokio::time::timeout(timeout, self.slots.acquire_many(limit)).await;
    }

    /// Whether the subscription task is still running.
    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }
}
