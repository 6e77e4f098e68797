//! A whole node as an operator runs it: storage, NATS, the role, its services and the HTTP
//! API, started from a [`NodeConfig`] and shut down cleanly.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ibp_storage::Store;
use ibp_wire::Role;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::cluster::{Clock, Node, NodeOptions, SystemClock};
use crate::config::NodeConfig;
use crate::http::{AppState, serve};
use crate::ibp_config::SharedIbpConfig;
use crate::roles::{
    ChecksService, CollatorService, DnsService, GeoDnsService, MonitorService, StorageHealth,
};

/// Why a node could not start. The message is one line, naming the cause.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The HTTP address cannot be bound (taken, or not ours).
    #[error("cannot listen on {addr}: {source}")]
    Http {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The database cannot be opened or migrated.
    #[error("database: {0}")]
    Store(#[from] ibp_storage::StoreError),
    /// NATS is unreachable or refused us.
    #[error("{0}")]
    Nats(#[from] crate::connection::ConnectError),
    /// Enabling the role failed.
    #[error("{0}")]
    Enable(#[from] crate::cluster::EnableError),
    /// JetStream could not be set up.
    #[error("jetstream: {0}")]
    JetStream(String),
    /// The built-in checks cannot run (no trust store, a bad CA file).
    #[error("checks: {0}")]
    Checks(String),
    /// The DNS answering side cannot start (MaxMind, saved overrides).
    #[error("geodns: {0}")]
    GeoDns(#[from] crate::roles::GeoDnsError),
    /// The built-in DNS listener cannot bind.
    #[error("cannot listen for DNS on {addr}: {source}")]
    Dns {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A running node.
pub struct App {
    /// The node handle.
    pub node: Node,
    /// The HTTP API's address (the bound one, when port 0 was asked).
    pub http_addr: SocketAddr,
    /// Monitor services (monitor role).
    pub monitor: Option<MonitorService>,
    /// DNS services (DNS role).
    pub dns: Option<DnsService>,
    /// Collator services (collator role).
    pub collator: Option<CollatorService>,
    /// Built-in checks (monitors with enabled `Checks`).
    pub checks: Option<ChecksService>,
    /// GeoDNS answers (DNS role).
    pub geodns: Option<GeoDnsService>,
    /// The built-in DNS listener's address (UDP and TCP), when one runs.
    pub dns_addr: Option<SocketAddr>,
    dns_listener: Option<crate::dns_listener::DnsListener>,
    /// The member and service lists.
    pub ibp_config: SharedIbpConfig,
    store: Store,
    stop: watch::Sender<bool>,
    abandon: watch::Sender<bool>,
    shutdown_grace: Duration,
    http_stop: watch::Sender<bool>,
    http_task: Option<JoinHandle<()>>,
    /// The durable consumer: it acknowledges over the connection, so it finishes (or gives
    /// back) its messages before the connection closes.
    durable_task: Option<JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
    drain_tasks: Vec<JoinHandle<()>>,
}

impl App {
    /// Starts a node with the system clock.
    pub async fn start(cfg: NodeConfig) -> Result<App, StartError> {
        if !cfg.clock_offset.is_zero() {
            tracing::warn!(
                offset_s = cfg.clock_offset.num_seconds(),
                "IbpNode.testing.clock_offset: this node's clock is deliberately off (for fault tests only)"
            );
        }
        let clock = SystemClock::with_offset(cfg.clock_offset);
        App::start_with(cfg, Arc::new(clock), None).await
    }

    /// Starts a node. `ibp` gives fixed member/service lists (else they are loaded from
    /// `cfg.config_urls` and reloaded).
    pub async fn start_with(
        cfg: NodeConfig,
        clock: Arc<dyn Clock>,
        ibp: Option<SharedIbpConfig>,
    ) -> Result<App, StartError> {
        let listener = tokio::net::TcpListener::bind(cfg.http)
            .await
            .map_err(|source| StartError::Http {
                addr: cfg.http,
                source,
            })?;
        let http_addr = listener.local_addr().map_err(|source| StartError::Http {
            addr: cfg.http,
            source,
        })?;
        let store = Store::open(&cfg.db).await?;
        let (stop, _) = watch::channel(false);
        let (abandon, abandon_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let mut drain_tasks = Vec::new();
        let mut durable_task = None;

        let opts = NodeOptions {
            node_id: cfg.node_id.clone(),
            connect: cfg.nats.clone(),
            core: cfg.core.clone(),
            public_address: cfg.public_address.clone(),
            listen_address: http_addr.ip().to_string(),
            listen_port: http_addr.port().to_string(),
            reconcile_interval: cfg.reconcile_interval,
            sync_interval: cfg.sync_interval,
            clock,
            security: Arc::new(cfg.security.runtime()),
        };
        for w in &cfg.security.warnings {
            tracing::warn!(node = %cfg.node_id, "security: {w}");
        }
        let node = Node::connect(opts).await?;
        tasks.push(tokio::spawn(crate::security::watch_trust(
            node.clone(),
            cfg.role,
            cfg.config_reload,
            stop.subscribe(),
        )));
        let writes = StorageHealth::new(
            store.clone(),
            node.health().clone(),
            node.metrics().clone(),
            cfg.work_dir.clone(),
            abandon_rx,
        );

        let ibp_config = ibp.unwrap_or_else(|| {
            SharedIbpConfig::with_limits(crate::ibp_config::FetchLimits {
                max_bytes: cfg.lists_max_bytes,
                timeout: cfg.lists_timeout,
            })
        });
        if ibp_config.get().is_none()
            && let (Some(m), Some(s)) = (
                cfg.config_urls.get("MembersConfig"),
                cfg.config_urls.get("ServicesConfig"),
            )
        {
            tasks.push(ibp_config.spawn_reloader(
                m.clone(),
                s.clone(),
                cfg.config_reload,
                stop.subscribe(),
            ));
        }
        let checks = if cfg.role == Role::Monitor && cfg.run_checks {
            Some(
                ChecksService::new(
                    cfg.checker.clone(),
                    cfg.checks.iter().map(|c| c.spec()).collect(),
                )
                .map_err(StartError::Checks)?,
            )
        } else {
            None
        };

        let mut geodns = None;
        let mut geodns_rx = None;
        let (monitor, dns, collator, services, official_rx, decision_rx) = match cfg.role {
            Role::Monitor => {
                let (m, s, rx) = MonitorService::open(writes.clone()).await?;
                (Some(m), None, None, s, Some(rx), None)
            }
            Role::Dns => {
                let (d, mut s) =
                    DnsService::open(writes.clone(), cfg.node_id.as_str(), cfg.hit_limits).await?;
                let g = GeoDnsService::open(
                    cfg.geodns.clone(),
                    d.clone(),
                    &cfg.work_dir,
                    cfg.node_id.as_str(),
                    cfg.security.mode == ibp_trust::Mode::Enforce,
                )?;
                // Decisions reach the answers losslessly and in order.
                let (tx, rx) = tokio::sync::mpsc::channel(4096);
                s.decision_sink = Some(tx);
                geodns = Some(g);
                geodns_rx = Some(rx);
                (None, Some(d), None, s, None, None)
            }
            Role::Collator => {
                let (c, mut s, rx) =
                    CollatorService::open(writes.clone(), cfg.usage_timeout).await?;
                s.finalize_durable = cfg.collator.jetstream;
                if cfg.collator.jetstream {
                    s.decision_sink = None;
                }
                (None, None, Some(c), s, None, Some(rx))
            }
        };

        let mut durable = crate::durable::DurableOptions::for_node(cfg.node_id.as_str());
        durable.signed = cfg.security.mode == ibp_trust::Mode::Enforce;
        if cfg.role == Role::Collator && cfg.collator.jetstream {
            crate::durable::setup(&node, &durable)
                .await
                .map_err(|e| StartError::JetStream(e.to_string()))?;
        }
        // A subscription refused while the server is briefly away is cured by a retry; an
        // operator should not have to restart the process for it.
        let mut delay = Duration::from_millis(250);
        let mut attempt = 1;
        loop {
            match node.enable(cfg.role, services.clone()).await {
                Ok(()) => break,
                Err(e @ crate::cluster::EnableError::AlreadyEnabled(_)) => return Err(e.into()),
                Err(e) if attempt >= ENABLE_ATTEMPTS => return Err(e.into()),
                Err(e) => {
                    tracing::warn!(error = %e, attempt, retry_in = ?delay, "cannot enable the role yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                    attempt += 1;
                }
            }
        }
        drop(services);

        if let Some(c) = &collator
            && !cfg.collator.jetstream
        {
            tasks.push(tokio::spawn(crate::roles::gaps::check_at_start(
                node.clone(),
                c.store().clone(),
                stop.subscribe(),
            )));
        }
        if let (Some(m), Some(rx)) = (&monitor, official_rx) {
            drain_tasks.push(tokio::spawn(m.clone().persist_official(rx)));
        }
        if let Some(d) = &dns {
            drain_tasks.push(tokio::spawn(
                d.clone().run_flusher(cfg.flush_interval, stop.subscribe()),
            ));
        }
        let mut dns_listener = None;
        if let Some(g) = &geodns {
            if let Some(rx) = geodns_rx.take() {
                tasks.push(tokio::spawn(g.clone().follow_decisions(rx)));
            }
            g.rebuild(ibp_config.get().as_deref(), &[]);
            tasks.push(tokio::spawn(g.clone().follow_lists(
                ibp_config.clone(),
                crate::ibp_config::FetchLimits {
                    max_bytes: cfg.lists_max_bytes,
                    timeout: cfg.lists_timeout,
                },
                cfg.config_reload,
                stop.subscribe(),
            )));
            tasks.push(tokio::spawn(g.clone().poll_results(stop.subscribe())));
            let (g2, node2, stop2) = (g.clone(), node.clone(), stop.subscribe());
            tasks.push(tokio::spawn(async move {
                if let Err(e) = g2.follow_overrides(node2, stop2).await {
                    tracing::error!(error = %e, "cannot subscribe geodns.override.update");
                }
            }));
            if let Some(addr) = cfg.geodns.listen {
                let l = crate::dns_listener::DnsListener::start(addr, g.clone())
                    .await
                    .map_err(|source| StartError::Dns { addr, source })?;
                dns_listener = Some(l);
            }
        }
        if let Some(c) = &collator {
            if let Some(rx) = decision_rx
                && !cfg.collator.jetstream
            {
                drain_tasks.push(tokio::spawn(c.clone().record_decisions(rx)));
            }
            if cfg.collator.jetstream {
                durable_task = Some(tokio::spawn(crate::durable::run(
                    c.clone(),
                    node.clone(),
                    durable.clone(),
                    stop.subscribe(),
                )));
            }
            if cfg.collator.hourly {
                tasks.push(tokio::spawn(c.clone().run_hourly(
                    node.clone(),
                    cfg.collator.backfill_days,
                    stop.subscribe(),
                )));
            }
        }
        tasks.push(tokio::spawn(
            writes
                .clone()
                .watch(Duration::from_secs(10), stop.subscribe()),
        ));

        if cfg.role == Role::Monitor {
            // Once the lists are loaded, decisions about members or checks this node does
            // not know are not applied (as Go monitors skip them), and strangers cannot make
            // it hold results for any key they like.
            let node2 = node.clone();
            let lists = ibp_config.clone();
            let checks: std::collections::BTreeSet<(String, String)> = cfg
                .checks
                .iter()
                .map(|c| (c.check_type.as_str().to_string(), c.name.clone()))
                .collect();
            let mut loads = lists.subscribe();
            let mut stop_rx = stop.subscribe();
            tasks.push(tokio::spawn(async move {
                loop {
                    if let Some(l) = lists.get() {
                        node2.set_known(Some(ibp_core::consensus::Known {
                            members: l.members.values().map(|m| m.name.clone()).collect(),
                            checks: checks.clone(),
                        }));
                    }
                    tokio::select! {
                        r = loads.changed() => if r.is_err() { break },
                        _ = stop_rx.changed() => break,
                    }
                }
            }));
        }
        if let (Some(c), Some(m)) = (&checks, &monitor) {
            tasks.push(tokio::spawn(c.clone().run(
                node.clone(),
                m.clone(),
                ibp_config.clone(),
                stop.subscribe(),
            )));
        }
        let (http_stop, rx) = watch::channel(false);
        let (web, web_task) = crate::web::Web::start(
            node.decisions(),
            ibp_config.clone(),
            rx.clone(),
            stop.subscribe(),
        );
        tasks.push(web_task);
        let state = AppState {
            web,
            node: node.clone(),
            monitor: monitor.clone(),
            dns: dns.clone(),
            collator: collator.clone(),
            checks: checks.clone(),
            geodns: geodns.clone(),
            writes: crate::http::WriteLock::for_listener(
                http_addr,
                cfg.security.http_write_token.clone(),
            ),
            max_body: cfg.security.http_max_body,
            max_connections: cfg.security.http_max_connections,
        };
        if let Some(w) = state.writes.warning() {
            tracing::warn!(node = %cfg.node_id, "{w}");
        }
        let http_task = tokio::spawn(async move {
            if let Err(e) = serve(listener, state, rx).await {
                tracing::error!(error = %e, "HTTP API stopped");
            }
        });
        tracing::info!(node = %cfg.node_id, role = %cfg.role, role_from = %cfg.role_source, http = %http_addr, db = %ibp_storage::redact_url(&cfg.db), nats = %crate::connection::redact_servers(&cfg.nats.servers), "node started");
        Ok(App {
            node,
            http_addr,
            monitor,
            dns,
            collator,
            checks,
            geodns,
            dns_addr: dns_listener.as_ref().map(|l| l.addr),
            dns_listener,
            ibp_config,
            store,
            stop,
            abandon,
            shutdown_grace: cfg.shutdown_grace,
            http_stop,
            http_task: Some(http_task),
            durable_task,
            tasks,
            drain_tasks,
        })
    }

    /// Stops a node cleanly: HTTP first (no input after the final write), then the node's
    /// subscriptions and timers, then its leave; then everything it accepted is written,
    /// with progress in the log, within the shutdown grace. Whatever the database still
    /// cannot take when the grace is over goes to `unsaved-*.jsonl` in the work directory.
    pub async fn shutdown(mut self) {
        let _ = self.http_stop.send(true);
        if let Some(h) = self.http_task.take() {
            let _ = tokio::time::timeout(crate::http::SHUTDOWN_GRACE, h).await;
        }
        if let Some(l) = self.dns_listener.take() {
            l.shutdown().await;
        }
        let _ = self.stop.send(true);
        if let Some(t) = self.durable_task.take()
            && tokio::time::timeout(self.shutdown_grace, t).await.is_err()
        {
            tracing::warn!(
                "the durable consumer did not stop within the grace; unacknowledged decisions are redelivered later"
            );
        }
        self.node.shutdown(Duration::from_secs(1)).await;
        let started = std::time::Instant::now();
        let deadline = tokio::time::Instant::now() + self.shutdown_grace;
        let mut drains: Vec<JoinHandle<()>> = self.drain_tasks.drain(..).collect();
        let mut last_report = std::time::Instant::now();
        while !drains.is_empty() {
            let all = futures::future::join_all(drains.iter_mut());
            match tokio::time::timeout_at(
                deadline.min(tokio::time::Instant::now() + Duration::from_secs(1)),
                all,
            )
            .await
            {
                Ok(_) => break,
                Err(_) if tokio::time::Instant::now() >= deadline => {
                    tracing::error!(grace = ?self.shutdown_grace, "shutdown grace over with writes still pending: they go to unsaved-*.jsonl in the work directory");
                    let _ = self.abandon.send(true);
                    let _ = tokio::time::timeout(
                        Duration::from_secs(10),
                        futures::future::join_all(drains.iter_mut()),
                    )
                    .await;
                    break;
                }
                Err(_) => {
                    if last_report.elapsed() >= Duration::from_secs(1) {
                        last_report = std::time::Instant::now();
                        tracing::info!(
                            pending = self.pending_writes(),
                            elapsed_s = started.elapsed().as_secs(),
                            grace_s = self.shutdown_grace.as_secs(),
                            "writing what the node accepted before stopping"
                        );
                    }
                }
            }
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
        self.store.close().await;
    }

    /// Items accepted but not yet written (official changes, usage keys).
    pub fn pending_writes(&self) -> usize {
        self.monitor.as_ref().map(|m| m.pending()).unwrap_or(0)
            + self.dns.as_ref().map(|d| d.pending_keys()).unwrap_or(0)
    }
}

/// Attempts at enabling the role before start-up gives up (about a minute).
const ENABLE_ATTEMPTS: u32 = 15;
