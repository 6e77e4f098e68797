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
use crate::roles::{CollatorService, DnsService, MonitorService};

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
    /// The member and service lists.
    pub ibp_config: SharedIbpConfig,
    store: Store,
    stop: watch::Sender<bool>,
    http_stop: watch::Sender<bool>,
    http_task: Option<JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
    drain_tasks: Vec<JoinHandle<()>>,
}

impl App {
    /// Starts a node with the system clock.
    pub async fn start(cfg: NodeConfig) -> Result<App, StartError> {
        App::start_with(cfg, Arc::new(SystemClock::new()), None).await
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
        let mut tasks = Vec::new();
        let mut drain_tasks = Vec::new();

        let (monitor, dns, collator, services, official_rx, decision_rx) = match cfg.role {
            Role::Monitor => {
                let (m, s, rx) = MonitorService::open(store.clone()).await?;
                (Some(m), None, None, s, Some(rx), None)
            }
            Role::Dns => {
                let (d, s) = DnsService::open(store.clone(), cfg.node_id.as_str()).await?;
                (None, Some(d), None, s, None, None)
            }
            Role::Collator => {
                let (c, mut s, rx) =
                    CollatorService::open(store.clone(), cfg.usage_timeout).await?;
                s.finalize_durable = cfg.collator.jetstream;
                if cfg.collator.jetstream {
                    s.decision_sink = None;
                }
                (None, None, Some(c), s, None, Some(rx))
            }
        };

        let opts = NodeOptions {
            node_id: cfg.node_id.clone(),
            connect: cfg.nats.clone(),
            core: cfg.core.clone(),
            public_address: cfg.public_address.clone(),
            listen_address: http_addr.ip().to_string(),
            listen_port: http_addr.port().to_string(),
            reconcile_interval: cfg.reconcile_interval,
            clock,
        };
        let node = Node::connect(opts).await?;
        node.enable(cfg.role, services).await?;

        if let (Some(m), Some(rx)) = (&monitor, official_rx) {
            drain_tasks.push(tokio::spawn(m.clone().persist_official(rx)));
        }
        if let Some(d) = &dns {
            drain_tasks.push(tokio::spawn(
                d.clone().run_flusher(cfg.flush_interval, stop.subscribe()),
            ));
        }
        if let Some(c) = &collator {
            if let Some(rx) = decision_rx
                && !cfg.collator.jetstream
            {
                drain_tasks.push(tokio::spawn(c.clone().record_decisions(rx)));
            }
            if cfg.collator.jetstream {
                let durable = format!("ibp-collator-{}", cfg.node_id);
                let t = c
                    .clone()
                    .consume_durable(node.clone(), durable, stop.subscribe())
                    .await
                    .map_err(StartError::JetStream)?;
                drain_tasks.push(t);
            }
            if cfg.collator.hourly {
                tasks.push(tokio::spawn(c.clone().run_hourly(
                    node.clone(),
                    cfg.collator.backfill_days,
                    stop.subscribe(),
                )));
            }
        }

        let ibp_config = ibp.unwrap_or_default();
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

        let state = AppState {
            node: node.clone(),
            monitor: monitor.clone(),
            dns: dns.clone(),
            collator: collator.clone(),
        };
        let (http_stop, rx) = watch::channel(false);
        let http_task = tokio::spawn(async move {
            if let Err(e) = serve(listener, state, rx).await {
                tracing::error!(error = %e, "HTTP API stopped");
            }
        });
        tracing::info!(node = %cfg.node_id, role = %cfg.role, http = %http_addr, db = %ibp_storage::redact_url(&cfg.db), nats = %cfg.nats.servers, "node started");
        Ok(App {
            node,
            http_addr,
            monitor,
            dns,
            collator,
            ibp_config,
            store,
            stop,
            http_stop,
            http_task: Some(http_task),
            tasks,
            drain_tasks,
        })
    }

    /// Leaves the cluster, finishes in-flight work, flushes storage, stops the API. Each
    /// step is bounded so the whole takes well under 5 s.
    pub async fn shutdown(mut self) {
        // Inputs first: no hit or observation may arrive after the final flush.
        let _ = self.http_stop.send(true);
        if let Some(h) = self.http_task.take() {
            let _ = tokio::time::timeout(crate::http::SHUTDOWN_GRACE, h).await;
        }
        let _ = self.stop.send(true);
        self.node.shutdown(Duration::from_secs(1)).await;
        for t in self.drain_tasks.drain(..) {
            if tokio::time::timeout(Duration::from_secs(2), t)
                .await
                .is_err()
            {
                tracing::warn!("a storage task did not finish within 2 s; what it held is lost");
            }
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
        self.store.close().await;
    }
}
