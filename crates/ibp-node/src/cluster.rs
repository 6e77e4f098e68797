//! The node handle: the async shell that wires the pure core (`ibp_core::Engine`) to NATS
//! and tokio. One handle per node; many nodes can run in one process.

mod sync;
pub use sync::SUBJECT as SYNC_SUBJECT;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::FutureExt;
use ibp_core::{
    CheckKey, CoreConfig, Decision, Effect, Engine, EngineError, Input, Observation,
    ObserveOutcome, OfficialChange, ProposeOutcome, SelfInfo,
};
use ibp_wire::{
    CheckType, ClusterMessage, Data, FinalizeMessage, NodeId, Proposal, Role, Vote, subjects,
};
use serde::Serialize;
use tokio::sync::{Notify, broadcast, mpsc, watch};
use tokio::task::JoinHandle;

use crate::collectors::{self, DowntimeSource, UsagePushSink, UsageSource};
use crate::connection::{
    Concurrency, ConnectError, ConnectOptions, Connection, SubscriptionHandle,
};
use crate::metrics::Metrics;

/// The wall clock the node hands to its core.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
}

/// The production clock: the wall clock read once, then advanced by the monotonic clock.
/// Timers and ages therefore never jump when the wall clock is stepped (NTP, a resumed VM);
/// the core would otherwise stall heartbeats and timeouts for as long as a backward step.
/// NTP's gradual slewing still applies, so timestamps on the wire keep tracking real time.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    start_wall: DateTime<Utc>,
    start: std::time::Instant,
}

impl SystemClock {
    /// A clock anchored at the current wall time.
    pub fn new() -> SystemClock {
        SystemClock {
            start_wall: Utc::now(),
            start: std::time::Instant::now(),
        }
    }
}

impl SystemClock {
    /// A clock running `offset` from the host's (fault tests: a stepped clock).
    pub fn with_offset(offset: chrono::TimeDelta) -> SystemClock {
        SystemClock {
            start_wall: Utc::now() + offset,
            start: std::time::Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        ibp_core::time::after(self.start_wall, self.start.elapsed())
    }
}

/// A clock that follows tokio's (pausable) time, for tests with `tokio::time::pause`.
#[derive(Debug, Clone, Copy)]
pub struct TokioClock {
    start_wall: DateTime<Utc>,
    start: tokio::time::Instant,
}

impl TokioClock {
    /// A clock that reads `Utc::now()` at creation and then advances with tokio time.
    pub fn new() -> TokioClock {
        TokioClock {
            start_wall: Utc::now(),
            start: tokio::time::Instant::now(),
        }
    }
}

impl Default for TokioClock {
    fn default() -> Self {
        TokioClock::new()
    }
}

impl Clock for TokioClock {
    fn now(&self) -> DateTime<Utc> {
        ibp_core::time::after(self.start_wall, self.start.elapsed())
    }
}

/// Everything needed to start a node.
#[derive(Clone)]
pub struct NodeOptions {
    /// The node's ID (validated: no spaces, dots, `*`, `>`).
    pub node_id: NodeId,
    /// NATS connection options.
    pub connect: ConnectOptions,
    /// Core rules and caps.
    pub core: CoreConfig,
    /// Public address announced in joins.
    pub public_address: String,
    /// API listen address announced in joins.
    pub listen_address: String,
    /// API listen port announced in joins.
    pub listen_port: String,
    /// Monitors re-propose every local result that differs from the official one this
    /// often (the Go monitor's check loop does it implicitly). Repairs lost decisions.
    pub reconcile_interval: Duration,
    /// Monitors catch up from the other monitors at start, after reconnects and this often
    /// (zero: only at start and after reconnects); see [`Node::catch_up`].
    pub sync_interval: Duration,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// Signing and verification of consensus messages (off by default).
    pub security: Arc<crate::security::Security>,
}

impl NodeOptions {
    /// Options with defaults for everything but the ID and the servers.
    pub fn new(node_id: NodeId, servers: impl Into<String>) -> NodeOptions {
        NodeOptions {
            node_id,
            connect: ConnectOptions {
                servers: servers.into(),
                ..ConnectOptions::default()
            },
            core: CoreConfig::default(),
            public_address: String::new(),
            listen_address: String::new(),
            listen_port: String::new(),
            reconcile_interval: Duration::from_secs(30),
            sync_interval: Duration::from_secs(60),
            clock: Arc::new(SystemClock::new()),
            security: Arc::new(crate::security::Security::off()),
        }
    }
}

/// Services a role needs from outside the bus (storage, mostly). All optional: a node
/// without a usage store still answers usage requests, with an error saying so.
#[derive(Clone, Default)]
pub struct RoleServices {
    /// DNS: answers `dns.usage.getUsage`.
    pub usage: Option<Arc<dyn UsageSource>>,
    /// Monitor: answers `monitor.stats.getDowntime`.
    pub downtime: Option<Arc<dyn DowntimeSource>>,
    /// Collator: receives `dns.usage.usageData` pushes.
    pub usage_push: Option<Arc<dyn UsagePushSink>>,
    /// Monitor: every official change, in order, losslessly (to persist it). Bounded: when
    /// the writer falls behind, the core's effects wait for it.
    pub official_sink: Option<mpsc::Sender<OfficialChange>>,
    /// Every decision, in order, losslessly (the collator records outages from it).
    pub decision_sink: Option<mpsc::Sender<Decision>>,
    /// Monitor: official results persisted before a restart.
    pub restore_official: Vec<(Proposal, DateTime<Utc>)>,
    /// Monitor: local observations persisted before a restart, with when they were made
    /// (recorded, not proposed; reconcile proposes only those still fresh).
    pub restore_local: Vec<(Observation, DateTime<Utc>)>,
    /// Collator: finalizes are consumed from a JetStream stream (see
    /// [`Node::take_cached`]); the core subscription only marks their senders heard.
    pub finalize_durable: bool,
}

/// Why enabling a role failed.
#[derive(Debug, thiserror::Error)]
pub enum EnableError {
    /// A role is already enabled on this node.
    #[error("a role ({0}) is already enabled on this node; one node runs one role")]
    AlreadyEnabled(Role),
    /// Subscribing failed.
    #[error("cannot enable the role: {0}")]
    Bus(#[from] crate::connection::BusError),
}

/// Why a consensus call failed.
#[derive(Debug, thiserror::Error)]
pub enum ConsensusError {
    /// No role enabled yet.
    #[error("no role is enabled on this node")]
    NotEnabled,
    /// The core refused.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// One node as the cluster view shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeView {
    /// Node ID.
    pub node_id: String,
    /// Role string (may be empty or guessed).
    pub role: String,
    /// Public address it announced.
    pub public_address: String,
    /// Listen address it announced.
    pub listen_address: String,
    /// Listen port it announced.
    pub listen_port: String,
    /// Local time it was last heard.
    pub last_heard: DateTime<Utc>,
    /// Whether it counts as active.
    pub active: bool,
    /// Whether it announced a clean shutdown.
    pub left: bool,
    /// True for this node.
    pub is_self: bool,
}

/// The cluster as this node sees it.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSnapshot {
    /// This node's ID.
    pub node_id: String,
    /// This node's role, once enabled.
    pub role: Option<String>,
    /// Every known node, this one first.
    pub nodes: Vec<NodeView>,
    /// Active monitors (this node included).
    pub active_monitors: usize,
    /// Active DNS nodes.
    pub active_dns: usize,
    /// Active collators.
    pub active_collators: usize,
}

/// A tracked proposal as the proposals view shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProposalView {
    /// Proposal ID.
    pub id: String,
    /// The proposal (absent for a collator stub created by an early vote).
    pub proposal: Option<Proposal>,
    /// Votes by voter.
    pub votes: std::collections::BTreeMap<String, bool>,
    /// Local time first seen.
    pub received_at: DateTime<Utc>,
    /// Timeouts so far (monitors).
    pub timeouts: u32,
    /// Whether this node proposed it.
    pub own: bool,
}

struct Inner {
    id: NodeId,
    opts: NodeOptions,
    conn: Connection,
    metrics: Arc<Metrics>,
    health: Arc<crate::health::Health>,
    panic_timers: std::sync::atomic::AtomicBool,
    engine: Mutex<Option<Engine>>,
    role: Mutex<Option<Role>>,
    wake: Notify,
    decisions: broadcast::Sender<Decision>,
    services: Mutex<RoleServices>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    subs: Mutex<Vec<SubscriptionHandle>>,
    shutdown: watch::Sender<bool>,
    /// Bumped after every input and tick: lets callers wait for a condition on the node's
    /// state without polling.
    changed: watch::Sender<u64>,
}

/// A node of the cluster. Cheap to clone; every clone is the same node.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.inner.id)
            .field("role", &self.role())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Connects to NATS. No role yet: see [`Node::enable`].
    pub async fn connect(mut opts: NodeOptions) -> Result<Node, ConnectError> {
        if opts.security.mode().drops() {
            // Enforce: a finalize counts only with the verified votes behind it.
            opts.core.verify_finalizes = true;
        }
        // Signing nonces are drawn while the node connects, not on its first messages.
        opts.security.refill_nonces();
        let metrics = Arc::new(Metrics::new());
        let mut connect = opts.connect.clone();
        if connect.name.is_none() {
            connect.name = Some(format!("ibp-node {}", opts.node_id));
        }
        let conn = Connection::connect(&connect, metrics.clone()).await?;
        let (decisions, _) = broadcast::channel(4096);
        let (shutdown, _) = watch::channel(false);
        let (changed, _) = watch::channel(0);
        Ok(Node {
            inner: Arc::new(Inner {
                id: opts.node_id.clone(),
                opts,
                conn,
                metrics,
                health: Arc::new(crate::health::Health::new()),
                panic_timers: std::sync::atomic::AtomicBool::new(false),
                engine: Mutex::new(None),
                role: Mutex::new(None),
                wake: Notify::new(),
                decisions,
                services: Mutex::new(RoleServices::default()),
                tasks: Mutex::new(Vec::new()),
                subs: Mutex::new(Vec::new()),
                shutdown,
                changed,
            }),
        })
    }

    /// This node's ID.
    pub fn id(&self) -> &NodeId {
        &self.inner.id
    }

    /// The role, once enabled.
    pub fn role(&self) -> Option<Role> {
        *self
            .inner
            .role
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The NATS connection.
    pub fn connection(&self) -> &Connection {
        &self.inner.conn
    }

    /// Whether a message any trusted key may send (whatever its role) is admitted under
    /// this node's trust mode; failures are counted and logged as for consensus messages.
    pub fn admit_operator(&self, subject: &str, msg: &async_nats::Message) -> bool {
        self.inner.opts.security.admit_any_trusted(
            &self.inner.metrics,
            subject,
            msg.headers.as_ref(),
            &msg.payload,
            self.inner.opts.clock.now(),
        )
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    /// Signing and verification (mode, key, trust list, refused clocks).
    pub fn security(&self) -> &Arc<crate::security::Security> {
        &self.inner.opts.security
    }

    /// The node's health registry.
    pub fn health(&self) -> &Arc<crate::health::Health> {
        &self.inner.health
    }

    /// The node's options.
    pub fn options(&self) -> &NodeOptions {
        &self.inner.opts
    }

    /// The current time on this node's clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.inner.opts.clock.now()
    }

    /// Enables `role`: subscribes exactly the role's subjects (protocol §2, plus the leave
    /// extension), starts the joins, heartbeat, timers and garbage collection, and
    /// re-announces after every reconnect. A second call is an error.
    pub async fn enable(&self, role: Role, services: RoleServices) -> Result<(), EnableError> {
        {
            let mut r = self
                .inner
                .role
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(r) = *r {
                return Err(EnableError::AlreadyEnabled(r));
            }
            *r = Some(role);
        }
        let mut subs = Vec::new();
        match self.enable_inner(role, services, &mut subs).await {
            Ok(()) => Ok(()),
            Err(e) => {
                // Undo, so the caller can try again (e.g. once the server is back).
                for s in subs {
                    s.stop(Duration::from_millis(100)).await;
                }
                *self.engine() = None;
                *self
                    .inner
                    .role
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
                Err(e)
            }
        }
    }

    /// Joins the cluster as a one-shot tool: learns every node (its join makes them answer
    /// with theirs) but announces no role, is counted by nobody and takes part in nothing.
    /// [`Node::shutdown`] announces its leave; its ID is its own, so no live node is hurt.
    pub async fn enable_observer(&self) -> Result<(), EnableError> {
        {
            let mut r = self
                .inner
                .role
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(r) = *r {
                return Err(EnableError::AlreadyEnabled(r));
            }
            *r = Some(Role::Collator);
        }
        let o = &self.inner.opts;
        let me = SelfInfo {
            node_id: self.inner.id.to_string(),
            public_address: o.public_address.clone(),
            listen_address: o.listen_address.clone(),
            listen_port: o.listen_port.clone(),
        };
        *self.engine() = Some(Engine::observer(me, o.core.clone()));
        let mut subs = Vec::new();
        let r = async {
            subs.push(
                self.subscribe_input::<ClusterMessage>(subjects::CLUSTER, Input::Cluster)
                    .await?,
            );
            subs.push(
                self.subscribe_input::<ClusterMessage>(ibp_wire::ext::LEAVE_SUBJECT, Input::Leave)
                    .await?,
            );
            self.inner.conn.flush().await?;
            Ok::<(), crate::connection::BusError>(())
        }
        .await;
        if let Err(e) = r {
            for s in subs {
                s.stop(Duration::from_millis(100)).await;
            }
            return Err(e.into());
        }
        if let Ok(mut s) = self.inner.subs.lock() {
            s.extend(subs);
        }
        let fx = self.with_engine(|e, now| e.enable(now).unwrap_or_default());
        self.run_effects(fx).await;
        self.spawn_driver(Role::Collator);
        Ok(())
    }

    async fn enable_inner(
        &self,
        role: Role,
        services: RoleServices,
        subs: &mut Vec<SubscriptionHandle>,
    ) -> Result<(), EnableError> {
        let o = &self.inner.opts;
        let me = SelfInfo {
            node_id: self.inner.id.to_string(),
            public_address: o.public_address.clone(),
            listen_address: o.listen_address.clone(),
            listen_port: o.listen_port.clone(),
        };
        let ids = Box::new(|| uuid::Uuid::new_v4().to_string());
        let mut engine = Engine::new(me, role, o.core.clone(), ids);
        let now = self.now();
        if let Some(c) = engine.consensus_mut() {
            for (p, at) in &services.restore_official {
                c.restore_official(p.clone(), *at, now);
            }
            for (obs, at) in &services.restore_local {
                c.restore_local(obs.clone(), *at);
            }
        }
        if let Ok(mut s) = self.inner.services.lock() {
            *s = services.clone();
        }
        *self.engine() = Some(engine);

        subs.push(
            self.subscribe_input::<ClusterMessage>(subjects::CLUSTER, Input::Cluster)
                .await?,
        );
        subs.push(
            self.subscribe_input::<ClusterMessage>(ibp_wire::ext::LEAVE_SUBJECT, Input::Leave)
                .await?,
        );
        if matches!(role, Role::Monitor | Role::Collator) {
            subs.push(
                self.subscribe_input::<Proposal>(subjects::PROPOSE, Input::Proposal)
                    .await?,
            );
        }
        // DNS nodes follow decisions (and, for the floor and enforce mode, the votes that
        // back them) to answer from them at once; they never vote.
        if matches!(role, Role::Monitor | Role::Collator | Role::Dns) {
            subs.push(
                self.subscribe_input::<Vote>(subjects::VOTE, Input::Vote)
                    .await?,
            );
            if role == Role::Collator && services.finalize_durable {
                // Finalizes come from the JetStream consumer; here only their senders count.
                let node = self.clone();
                subs.push(
                    self.inner
                        .conn
                        .subscribe_decoded::<FinalizeMessage, _, _>(
                            subjects::FINALIZE,
                            Concurrency::Sequential,
                            move |f, _| {
                                let node = node.clone();
                                async move { node.heard(f.finalizer()) }
                            },
                        )
                        .await?,
                );
            } else {
                subs.push(
                    self.subscribe_input::<FinalizeMessage>(subjects::FINALIZE, Input::Finalize)
                        .await?,
                );
            }
        }
        match role {
            Role::Monitor => {
                subs.push(
                    collectors::serve_downtime(self.clone(), services.downtime.clone()).await?,
                );
                subs.push(self.serve_sync().await?);
            }
            Role::Dns => {
                subs.push(collectors::serve_usage(self.clone(), services.usage.clone()).await?)
            }
            Role::Collator => subs.push(
                collectors::receive_usage_pushes(self.clone(), services.usage_push.clone()).await?,
            ),
        }
        // Our subscriptions must be live at the server before anyone answers our joins. No
        // round trip is needed for that: the server handles one connection's SUBs before its
        // later PUBs, and a cluster forwards the interest over a route before the message
        // (same route, in order), so an answer to our join can only come after our SUB. (A
        // request to a subject nobody serves would not do: anyone listening on `>` receives
        // it and never answers.)
        self.inner.conn.flush().await?;
        if let Ok(mut s) = self.inner.subs.lock() {
            s.extend(subs.drain(..));
        }

        let fx = self.with_engine(|e, now| e.enable(now).unwrap_or_default());
        self.run_effects(fx).await;
        self.spawn_driver(role);
        tracing::info!(node = %self.inner.id, role = %role, "role enabled");
        Ok(())
    }

    async fn subscribe_input<T>(
        &self,
        subject: &str,
        wrap: fn(T) -> Input,
    ) -> Result<SubscriptionHandle, crate::connection::BusError>
    where
        T: ibp_wire::WireDecode + crate::security::Claims + Send + 'static,
    {
        let node = self.clone();
        self.inner
            .conn
            .subscribe_decoded::<T, _, _>(subject, Concurrency::Sequential, move |msg, raw| {
                let node = node.clone();
                async move {
                    let sec = &node.inner.opts.security;
                    // A vote or finalize on a proposal this monitor has decided changes
                    // nothing (the core ignores it): no signature check, the costliest
                    // step, is spent on it. Enforce drops it; verify passes it on, as off.
                    let moot = sec.mode().checks()
                        && msg
                            .settles()
                            .is_some_and(|(id, passed)| node.is_moot(id, passed));
                    // A dropped message is handled too: waiters see it.
                    let dropped = || node.inner.changed.send_modify(|g| *g += 1);
                    if moot {
                        node.inner.metrics.trust_moot(raw.subject.as_str());
                        if sec.mode().drops() {
                            dropped();
                            return;
                        }
                    } else if !sec.admit(
                        &node.inner.metrics,
                        raw.subject.as_str(),
                        msg.claim(),
                        raw.headers.as_ref(),
                        &raw.payload,
                        node.now(),
                    ) {
                        dropped();
                        return;
                    }
                    let fx = node.with_engine(|e, now| e.handle(wrap(msg), now));
                    node.run_effects(fx).await;
                    node.inner.changed.send_modify(|g| *g += 1);
                    // Even an input without effects can move the next deadline (a newly
                    // tracked proposal's timeout).
                    node.inner.wake.notify_one();
                }
            })
            .await
    }

    /// The engine lock. A panic while it was held (a bug in the core) leaves the state as
    /// the last completed input left it; keep serving rather than going silent.
    fn engine(&self) -> std::sync::MutexGuard<'_, Option<Engine>> {
        self.inner
            .engine
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `f` on the engine under the lock (never across an await) with the current time.
    fn with_engine<R: Default>(&self, f: impl FnOnce(&mut Engine, DateTime<Utc>) -> R) -> R {
        let now = self.now();
        self.engine()
            .as_mut()
            .map(|e| f(e, now))
            .unwrap_or_default()
    }

    fn try_engine<R>(
        &self,
        f: impl FnOnce(&mut Engine, DateTime<Utc>) -> Result<R, EngineError>,
    ) -> Result<R, ConsensusError> {
        let now = self.now();
        let mut g = self.engine();
        let e = g.as_mut().ok_or(ConsensusError::NotEnabled)?;
        Ok(f(e, now)?)
    }

    /// Reads the engine (for snapshots).
    fn read_engine<R: Default>(&self, f: impl FnOnce(&Engine, DateTime<Utc>) -> R) -> R {
        let now = self.now();
        self.engine()
            .as_ref()
            .map(|e| f(e, now))
            .unwrap_or_default()
    }

    /// Carries out the core's effects, in order.
    async fn run_effects(&self, fx: Vec<Effect>) {
        if fx.is_empty() {
            return;
        }
        for e in fx {
            match e {
                Effect::Publish(out) => {
                    let subject = out.subject();
                    let payload = out.encode();
                    let signed = self.inner.opts.security.sign(subject, &payload, self.now());
                    let _ = match signed {
                        Some(h) => {
                            self.inner
                                .conn
                                .publish_with_headers(subject, h, payload.into())
                                .await
                        }
                        None => self.inner.conn.publish_bytes(subject, payload.into()).await,
                    };
                }
                Effect::ApplyOfficial(change) => {
                    tracing::info!(node = %self.inner.id, check = %change.key, status = change.status, flipped = change.flipped, proposal = %change.proposal.id, "official result applied");
                    let tx = self
                        .inner
                        .services
                        .lock()
                        .ok()
                        .and_then(|s| s.official_sink.clone());
                    if let Some(tx) = tx {
                        let _ = tx.send(change).await;
                    }
                }
                Effect::Decided(d) => {
                    self.inner.metrics.decided(d.passed, d.by_self, d.latency);
                    tracing::info!(
                        node = %self.inner.id, proposal = %d.proposal.id, check = %CheckKey::of(&d.proposal),
                        proposed = d.proposal.proposed_status, passed = d.passed, by_self = d.by_self, finalizer = %d.finalizer,
                        latency_ms = d.latency.map(|l| l.as_secs_f64() * 1000.0), "decision"
                    );
                    let tx = self
                        .inner
                        .services
                        .lock()
                        .ok()
                        .and_then(|s| s.decision_sink.clone());
                    if let Some(tx) = tx {
                        let _ = tx.send(d.clone()).await;
                    }
                    let _ = self.inner.decisions.send(d);
                }
                Effect::NodeJoined { node_id, role } => {
                    tracing::info!(node = %self.inner.id, peer = %node_id, role = %role, "node joined");
                }
                Effect::FinalizeRefused {
                    proposal,
                    finalizer,
                    agreeing,
                    needed,
                } => {
                    self.inner.metrics.ignore("finalize_unbacked");
                    tracing::warn!(node = %self.inner.id, proposal = %proposal.id, check = %CheckKey::of(&proposal), finalizer = %finalizer, agreeing, needed,
                        "a passed finalize was not applied: this node never saw the agreeing votes it would need to decide itself");
                }
                Effect::IdConflict { other } => {
                    tracing::error!(node = %self.inner.id, other = %other, "another live node uses this node's ID: give every node its own ID (Nats.NodeID / --node-id)");
                    self.inner.health.fail_for(
                        crate::health::Part::NodeId,
                        format!("another live node uses the ID {} ({other})", self.inner.id),
                        Duration::from_secs(600),
                    );
                }
                Effect::NodeLeft { node_id, announced } => {
                    tracing::info!(node = %self.inner.id, peer = %node_id, announced, "node left");
                }
            }
        }
        self.inner.changed.send_modify(|g| *g += 1);
        self.inner.wake.notify_one();
    }

    async fn timer_loop(self, mut stop: watch::Receiver<bool>) {
        loop {
            let next = self.read_engine(|e, _| e.next_deadline());
            let wait = match next {
                Some(at) => (at - self.now()).to_std().unwrap_or(Duration::ZERO),
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {
                    if self.inner.panic_timers.swap(false, std::sync::atomic::Ordering::SeqCst) {
                        panic!("injected timer panic (test hook)");
                    }
                    let fx = self.with_engine(|e, now| e.tick(now));
                    self.run_effects(fx).await;
                }
                _ = self.inner.wake.notified() => {}
                _ = stop.changed() => break,
            }
        }
    }

    /// Test hook: the timer task panics at its next tick (to show it is restarted).
    #[doc(hidden)]
    pub fn inject_timer_panic(&self) {
        self.inner
            .panic_timers
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.inner.wake.notify_one();
    }

    fn spawn_driver(&self, role: Role) {
        let mut tasks = Vec::new();
        // Timers: sleep until the core's next deadline, or until an input may have moved it.
        // A panic (a bug) must not silence heartbeats, timeouts and garbage collection while
        // the node still votes: the loop is restarted and the panic shown in /healthz.
        let node = self.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let stop = node.inner.shutdown.subscribe();
                let r = std::panic::AssertUnwindSafe(node.clone().timer_loop(stop))
                    .catch_unwind()
                    .await;
                if r.is_ok() {
                    break;
                }
                node.inner.metrics.handler_panics.inc();
                tracing::error!(node = %node.inner.id, "the timer task panicked; restarted");
                node.inner.health.fail_for(
                    crate::health::Part::Timers,
                    "the timer task panicked and was restarted (see the log)",
                    Duration::from_secs(600),
                );
            }
        }));
        // Re-announce after every reconnect; monitors also re-propose what may be lost.
        let node = self.clone();
        let mut state = self.inner.conn.watch_state();
        let mut stop = self.inner.shutdown.subscribe();
        tasks.push(tokio::spawn(async move {
            let mut seen = state.borrow().reconnects;
            loop {
                tokio::select! {
                    r = state.changed() => if r.is_err() { break },
                    _ = stop.changed() => break,
                }
                let n = state.borrow().reconnects;
                if n > seen {
                    seen = n;
                    tracing::info!(node = %node.inner.id, reconnects = n, "re-announcing after reconnect");
                    let mut fx = node.with_engine(|e, now| e.reannounce(now));
                    fx.extend(node.with_engine(|e, now| e.reconcile(now)));
                    node.run_effects(fx).await;
                }
            }
        }));
        if role == Role::Monitor {
            tasks.push(tokio::spawn(
                self.clone().sync_loop(self.inner.opts.sync_interval),
            ));
            let node = self.clone();
            let mut stop = self.inner.shutdown.subscribe();
            let every = self
                .inner
                .opts
                .reconcile_interval
                .max(Duration::from_millis(100));
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tokio::select! {
                        _ = tick.tick() => {
                            let fx = node.with_engine(|e, now| e.reconcile(now));
                            node.run_effects(fx).await;
                        }
                        _ = stop.changed() => break,
                    }
                }
            }));
        }
        if let Ok(mut t) = self.inner.tasks.lock() {
            t.extend(tasks);
        }
    }

    // ----- the reference library's API -----------------------------------------------

    /// Proposes a status for a check (the reference `ProposeCheckStatus`).
    #[allow(clippy::too_many_arguments)]
    pub async fn propose_check_status(
        &self,
        check_type: CheckType,
        check_name: &str,
        member_name: &str,
        domain_name: &str,
        endpoint: &str,
        status: bool,
        error_text: &str,
        data: Data,
        is_ipv6: bool,
    ) -> Result<ProposeOutcome, ConsensusError> {
        let obs = Observation {
            key: CheckKey::new(
                check_type,
                check_name,
                member_name,
                domain_name,
                endpoint,
                is_ipv6,
            ),
            status,
            error_text: error_text.to_string(),
            data,
        };
        let (r, fx) = self.try_engine(|e, now| e.propose(obs, now))?;
        self.run_effects(fx).await;
        Ok(r)
    }

    /// Records a local observation; proposes when it differs from the official result.
    pub async fn observe(&self, obs: Observation) -> Result<ObserveOutcome, ConsensusError> {
        let (r, fx) = self.try_engine(|e, now| e.observe(obs, now))?;
        self.run_effects(fx).await;
        Ok(r)
    }

    /// Records a local observation without proposing (the vote source).
    pub async fn set_local(&self, obs: Observation) -> Result<(), ConsensusError> {
        let fx = self.try_engine(|e, now| e.set_local(obs, now))?;
        self.run_effects(fx).await;
        Ok(())
    }

    /// Replaces what this node knows (members and checks, from its lists): proposals,
    /// observations and decisions about anything else are counted and not applied.
    pub fn set_known(&self, known: Option<ibp_core::consensus::Known>) {
        self.with_engine(|e, _| e.set_known(known));
    }

    /// With a quorum floor or enforced trust, whether `votes` back a passed decision:
    /// `Some((agreeing, needed))`; `None` when no backing is required.
    pub fn backing(
        &self,
        votes: &std::collections::BTreeMap<String, bool>,
    ) -> Option<(usize, usize)> {
        self.read_engine(|e, now| e.backing(votes, now))
    }

    /// Takes the proposal and votes the collator cached for `id` (the durable finalize
    /// path reads finalizes from a stream, not from the core).
    pub fn take_cached(
        &self,
        id: &str,
    ) -> Option<(Option<Proposal>, std::collections::BTreeMap<String, bool>)> {
        self.with_engine(|e, _| e.take_cached(id))
    }

    /// The collator's vote grace (see `CoreConfig::collator_vote_grace`).
    pub fn vote_grace(&self) -> Duration {
        self.inner.opts.core.collator_vote_grace
    }

    /// Proposes again every local observation that differs from the official result.
    pub async fn reconcile(&self) {
        let fx = self.with_engine(|e, now| e.reconcile(now));
        self.run_effects(fx).await;
    }

    /// Whether a vote or finalize on proposal `id` can change nothing on this monitor (see
    /// `Consensus::is_moot`); always false on other roles.
    fn is_moot(&self, id: &str, finalize_passed: Option<bool>) -> bool {
        self.read_engine(|e, _| {
            e.consensus()
                .is_some_and(|c| c.is_moot(id, finalize_passed))
        })
    }

    /// Handles a vote that did not come from the live subscription (the collator's
    /// JetStream consumer, after checking it).
    pub async fn feed_vote(&self, v: ibp_wire::Vote) {
        let fx = self.with_engine(|e, now| e.handle(Input::Vote(v), now));
        self.run_effects(fx).await;
        self.inner.wake.notify_one();
    }

    /// Records that `node_id` was heard (it answered a request or pushed data). Ignored in
    /// `enforce` mode: those messages are not signed, and membership then follows signed
    /// messages only.
    pub fn heard(&self, node_id: &str) {
        if node_id.is_empty() || self.inner.opts.security.mode().drops() {
            return;
        }
        let fx = self.with_engine(|e, now| e.handle(Input::Heard(node_id.to_string()), now));
        if !fx.is_empty() {
            let node = self.clone();
            tokio::spawn(async move { node.run_effects(fx).await });
        }
    }

    /// Active monitors, this node included.
    pub fn count_active_monitors(&self) -> usize {
        self.count_active(Role::Monitor)
    }

    /// Active DNS nodes.
    pub fn count_active_dns(&self) -> usize {
        self.count_active(Role::Dns)
    }

    /// Active nodes of `role`.
    pub fn count_active(&self, role: Role) -> usize {
        self.read_engine(|e, now| e.count_active(role, now))
    }

    /// IDs of the active nodes of `role`.
    pub fn active_ids(&self, role: Role) -> Vec<String> {
        self.read_engine(|e, now| e.membership().active_ids(role, now))
    }

    /// Waits until at least `n` nodes of `role` are active.
    pub async fn wait_for_active(&self, role: Role, n: usize, timeout: Duration) -> bool {
        self.wait_until(|node| node.count_active(role) >= n, timeout)
            .await
    }

    /// Waits until `cond` holds, re-checking after every input the node handles (no
    /// polling). Returns whether it held before the timeout.
    pub async fn wait_until(&self, cond: impl Fn(&Node) -> bool, timeout: Duration) -> bool {
        let mut rx = self.inner.changed.subscribe();
        let waited = tokio::time::timeout(timeout, async {
            loop {
                if cond(self) {
                    return;
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        waited.is_ok() && cond(self)
    }

    /// Number of messages and ticks the node has handled so far (for [`Node::wait_until`]).
    pub fn handled(&self) -> u64 {
        *self.inner.changed.borrow()
    }

    /// The cluster as this node sees it.
    pub fn cluster(&self) -> ClusterSnapshot {
        let id = self.inner.id.to_string();
        let o = &self.inner.opts;
        let role = self.role();
        let mut snap = self.read_engine(|e, now| {
            let mut nodes = vec![NodeView {
                node_id: id.clone(),
                role: role.map(|r| r.as_wire().to_string()).unwrap_or_default(),
                public_address: o.public_address.clone(),
                listen_address: o.listen_address.clone(),
                listen_port: o.listen_port.clone(),
                last_heard: now,
                active: true,
                left: false,
                is_self: true,
            }];
            nodes.extend(
                e.membership()
                    .members(now)
                    .into_iter()
                    .map(|(m, active)| NodeView {
                        node_id: m.node_id,
                        role: m.role,
                        public_address: m.public_address,
                        listen_address: m.listen_address,
                        listen_port: m.listen_port,
                        last_heard: m.last_heard,
                        active,
                        left: m.left,
                        is_self: false,
                    }),
            );
            ClusterSnapshot {
                node_id: id.clone(),
                role: role.map(|r| r.as_wire().to_string()),
                nodes,
                active_monitors: e.count_active(Role::Monitor, now),
                active_dns: e.count_active(Role::Dns, now),
                active_collators: e.count_active(Role::Collator, now),
            }
        });
        if snap.node_id.is_empty() {
            snap.node_id = id;
        }
        snap
    }

    /// Tracked proposals (monitor) or cached proposals (collator).
    pub fn proposals(&self) -> Vec<ProposalView> {
        self.read_engine(|e, _| {
            if let Some(c) = e.consensus() {
                c.tracked()
                    .iter()
                    .map(|(id, t)| ProposalView {
                        id: id.clone(),
                        proposal: Some(t.proposal.clone()),
                        votes: t.votes.clone(),
                        received_at: t.received_at,
                        timeouts: t.timeouts,
                        own: t.own,
                    })
                    .collect()
            } else if let Some(cache) = e.vote_cache() {
                cache
                    .snapshot()
                    .into_iter()
                    .map(|c| ProposalView {
                        id: c.id,
                        proposal: c.proposal,
                        votes: c.votes,
                        received_at: c.cached_at,
                        timeouts: 0,
                        own: false,
                    })
                    .collect()
            } else {
                Vec::new()
            }
        })
    }

    /// Official results (monitors).
    pub fn official(&self) -> Vec<(CheckKey, ibp_core::consensus::Official)> {
        self.read_engine(|e, _| {
            e.consensus()
                .map(|c| {
                    c.official()
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                })
                .unwrap_or_default()
        })
    }

    /// Number of official results (monitors), without copying them.
    pub fn official_count(&self) -> usize {
        self.read_engine(|e, _| e.consensus().map(|c| c.official().len()).unwrap_or(0))
    }

    /// Number of tracked (monitor) or cached (collator) proposals, without copying them.
    pub fn proposal_count(&self) -> usize {
        self.read_engine(|e, _| {
            e.consensus()
                .map(|c| c.tracked().len())
                .or(e.vote_cache().map(|c| c.len()))
                .unwrap_or(0)
        })
    }

    /// Local observations (monitors).
    pub fn local(&self) -> Vec<(CheckKey, ibp_core::consensus::Local)> {
        self.read_engine(|e, _| {
            e.consensus()
                .map(|c| {
                    c.local()
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                })
                .unwrap_or_default()
        })
    }

    /// A stream of decisions as this node learns them. A receiver that falls more than
    /// 4096 decisions behind loses the oldest (it gets `Lagged`); for a lossless feed use
    /// [`RoleServices::decision_sink`].
    pub fn decisions(&self) -> broadcast::Receiver<Decision> {
        self.inner.decisions.subscribe()
    }

    /// What the core refused, dropped or ignored so far.
    pub fn counters(&self) -> ibp_core::Counters {
        self.read_engine(|e, _| e.counters())
    }

    /// Brings gauges and core counters into the metrics before a scrape.
    pub fn refresh_metrics(&self) {
        let (counters, tracked, actives) = self.read_engine(|e, now| {
            let tracked = e
                .consensus()
                .map(|c| c.tracked().len())
                .or(e.vote_cache().map(|c| c.len()))
                .unwrap_or(0);
            let actives: Vec<(Role, usize)> = Role::ALL
                .iter()
                .map(|r| (*r, e.count_active(*r, now)))
                .collect();
            (e.counters(), tracked, actives)
        });
        let m = &self.inner.metrics;
        m.sync_core(counters);
        m.proposals_tracked.set(tracked as i64);
        for (r, n) in actives {
            m.set_active(r.short_name(), n);
        }
    }

    /// Leaves the cluster cleanly: stops the subscriptions (letting handlers in flight
    /// finish, up to `grace`) and the timers, then announces the leave and closes the
    /// connection after flushing what is pending.
    pub async fn shutdown(&self, grace: Duration) {
        // Inputs and timers first, the leave last: a vote, finalize or join sent after the
        // leave would be newer than it and bring this node back on every peer.
        let subs: Vec<SubscriptionHandle> = self
            .inner
            .subs
            .lock()
            .map(|mut s| s.drain(..).collect())
            .unwrap_or_default();
        for s in subs {
            s.stop(grace).await;
        }
        let _ = self.inner.shutdown.send(true);
        let tasks: Vec<JoinHandle<()>> = self
            .inner
            .tasks
            .lock()
            .map(|mut t| t.drain(..).collect())
            .unwrap_or_default();
        for t in tasks {
            let _ = tokio::time::timeout(grace, t).await;
        }
        let fx = self.with_engine(|e, now| e.leave(now));
        self.run_effects(fx).await;
        self.inner.conn.close().await;
        // Drop the sinks so the tasks persisting decisions see their channels close.
        if let Ok(mut s) = self.inner.services.lock() {
            *s = RoleServices::default();
        }
        tracing::info!(node = %self.inner.id, "node shut down");
    }
}
