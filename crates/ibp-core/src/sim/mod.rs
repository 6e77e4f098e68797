//! A deterministic, seeded simulation of N monitors over an in-memory bus.
//!
//! The bus loses, duplicates, delays and reorders messages, partitions and heals the
//! network; nodes crash (with or without a clean leave) and restart with their persisted
//! official results; every node's clock is skewed. The monitors observe a changing truth
//! with lag and noise, then the network heals and observations settle. Invariants:
//!
//! * **support** — every official result a node applies was observed, within the lifetime
//!   of a proposal, by at least `min_votes` monitors (`min_quorum` when a quorum floor is
//!   configured);
//! * **convergence** — after the network heals and observations are stable, every monitor
//!   ends with the same official results, equal to the truth;
//! * **bounded memory** — tracked proposals, vote buckets and known nodes never exceed
//!   their caps.
//!
//! Mixed clusters add monitors that follow the Go rules ([`go`]: the library's HEAD and the
//! v0.6.12 the Go monitor pins). Then the invariants are about the Rust nodes:
//!
//! * **no stale overwrite** — a Rust node never applies a decision over an official result
//!   whose proposal it saw after this one's;
//! * **floor** — with a quorum floor, a Rust node's official state only changes on a
//!   decision it received at least `floor` agreeing votes for, whoever finalized it;
//! * **support** and **convergence** as above, for the Rust nodes (a v0.6.12 monitor decides
//!   with one vote, so without a floor one observation may be all that backs a result).
//!
//! Everything is derived from the seed, so a failing seed replays exactly
//! (`IBP_SIM_SEED=<seed> cargo test -p ibp-core --test simulation -- --nocapture`).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::time::Duration;

use chrono::{TimeDelta, TimeZone, Utc};
use ibp_wire::{CheckType, Role};

use crate::time::{Now, after};
use crate::{CheckKey, CoreConfig, Effect, Engine, Input, Observation, Outbound, SelfInfo};

pub mod go;

pub use go::{GoMonitor, GoVersion};

/// A small deterministic PRNG (SplitMix64): replays must not depend on a crate version.
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> SimRng {
        SimRng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    /// True with probability `permille / 1000`.
    pub fn chance(&mut self, permille: u64) -> bool {
        self.below(1000) < permille
    }
}

/// The shape of one simulated run. [`SimConfig::random`] draws one from a seed.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Number of monitors (3 to 9).
    pub monitors: usize,
    /// Number of distinct checks observed.
    pub checks: usize,
    /// Message loss during the chaos phase, per mille.
    pub loss_permille: u64,
    /// Message duplication, per mille.
    pub dup_permille: u64,
    /// Maximum delivery delay (reordering comes from random delays).
    pub max_delay: Duration,
    /// Maximum clock skew of a node, either way.
    pub max_skew: Duration,
    /// Whether the chaos phase partitions the network.
    pub partitions: bool,
    /// Whether nodes crash and restart during the chaos phase.
    pub crashes: bool,
    /// Probability (per mille) that a monitor observes the wrong status after a change.
    pub noise_permille: u64,
    /// Quorum floor (`monitors / 2 + 1`) on or off.
    pub quorum_floor: bool,
    /// Use tiny caps so the refusal paths run.
    pub small_caps: bool,
    /// Length of the chaos phase.
    pub chaos: Duration,
    /// Length of the settled phase after healing.
    pub settle: Duration,
    /// Period of each monitor's check round.
    pub check_interval: Duration,
    /// Print every event (for replaying a failing seed).
    pub trace: bool,
    /// Monitors (the last ones) that follow the Go library's HEAD rules.
    pub go_head: usize,
    /// Monitors that follow the Go v0.6.12 rules.
    pub go_v0612: usize,
}

impl SimConfig {
    /// A random configuration derived from `seed`.
    pub fn random(seed: u64) -> SimConfig {
        let mut r = SimRng::new(seed ^ 0xC0FF_EE00_D15E_A5E5);
        SimConfig {
            monitors: r.range(3, 9) as usize,
            checks: r.range(1, 5) as usize,
            loss_permille: [0, 10, 50, 200][r.below(4) as usize],
            dup_permille: [0, 20, 100][r.below(3) as usize],
            max_delay: Duration::from_millis(r.range(1, 400)),
            max_skew: Duration::from_secs(r.range(0, 90)),
            partitions: r.chance(500),
            crashes: r.chance(500),
            noise_permille: [0, 50, 150][r.below(3) as usize],
            quorum_floor: r.chance(400),
            small_caps: r.chance(150),
            chaos: Duration::from_secs(r.range(120, 900)),
            settle: Duration::from_secs(20 * 60),
            check_interval: Duration::from_secs(r.range(20, 90)),
            trace: false,
            go_head: 0,
            go_v0612: 0,
        }
    }

    /// A mixed cluster derived from `seed`: Rust monitors beside Go HEAD and Go v0.6.12
    /// monitors (at least one Go and one Rust node), with or without the quorum floor.
    pub fn mixed(seed: u64) -> SimConfig {
        let mut cfg = SimConfig::random(seed);
        let mut r = SimRng::new(seed ^ 0x600D_1B51);
        let go = (r.range(1, 3) as usize).min(cfg.monitors - 1);
        cfg.go_v0612 = r.below(go as u64 + 1) as usize;
        cfg.go_head = go - cfg.go_v0612;
        cfg
    }

    /// Number of Rust monitors (the first ones).
    pub fn rust_monitors(&self) -> usize {
        self.monitors - self.go_head - self.go_v0612
    }
}

/// What a run found.
#[derive(Debug, Clone, Default)]
pub struct SimReport {
    /// The seed.
    pub seed: u64,
    /// Invariant violations (empty when the run is correct).
    pub violations: Vec<String>,
    /// Messages delivered.
    pub delivered: u64,
    /// Messages dropped by loss or partition.
    pub dropped: u64,
    /// Decisions reached (own finalizes published).
    pub decisions: u64,
    /// Official results applied (all nodes).
    pub applies: u64,
    /// Items refused by a cap (all nodes).
    pub refused: u64,
}

#[derive(Debug, Clone)]
enum Ev {
    Deliver {
        to: usize,
        input: Box<Input>,
    },
    Wake {
        node: usize,
    },
    CheckRound {
        node: usize,
    },
    /// `chaos` beliefs still in flight when the network settles are discarded.
    Belief {
        node: usize,
        key: usize,
        status: bool,
        chaos: bool,
    },
    Truth {
        key: usize,
        status: bool,
    },
    Partition {
        groups: Vec<u8>,
    },
    Heal,
    Crash {
        node: usize,
        clean: bool,
    },
    Restart {
        node: usize,
    },
    Settle,
}

struct Queued {
    at: Now,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        self.at == o.at && self.seq == o.seq
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> Ordering {
        // Reversed: BinaryHeap is a max-heap and we want the earliest event first.
        o.at.cmp(&self.at).then(o.seq.cmp(&self.seq))
    }
}

/// A simulated monitor: this project's engine or a Go-rule model.
enum Brain {
    Rust(Box<Engine>),
    Go(Box<GoMonitor>),
}

impl Brain {
    fn handle(&mut self, input: Input, now: Now) -> Vec<Effect> {
        match self {
            Brain::Rust(e) => e.handle(input, now),
            Brain::Go(g) => g.handle(input, now),
        }
    }

    fn tick(&mut self, now: Now) -> Vec<Effect> {
        match self {
            Brain::Rust(e) => e.tick(now),
            Brain::Go(g) => g.tick(now),
        }
    }

    fn observe(&mut self, key: CheckKey, status: bool, now: Now) -> Vec<Effect> {
        match self {
            Brain::Rust(e) => match e.observe(Observation::new(key, status), now) {
                Ok((_, fx)) => fx,
                Err(_) => Vec::new(),
            },
            Brain::Go(g) => g.observe(key, status, now),
        }
    }

    fn next_deadline(&self) -> Option<Now> {
        match self {
            Brain::Rust(e) => e.next_deadline(),
            Brain::Go(g) => g.next_deadline(),
        }
    }

    fn rust(&self) -> Option<&Engine> {
        match self {
            Brain::Rust(e) => Some(e),
            Brain::Go(_) => None,
        }
    }
}

struct Node {
    id: String,
    go: Option<GoVersion>,
    engine: Option<Brain>,
    /// Per proposal: when this node first saw it (since its last start).
    seen: BTreeMap<String, Now>,
    /// Per proposal: the voters whose agreeing votes reached this node (since its start).
    agreed: BTreeMap<String, BTreeSet<String>>,
    /// Per check: the proposal of its current official result (as the sim watched it).
    current: BTreeMap<CheckKey, String>,
    /// Nodes whose clean leave this node handled while they were down.
    saw_leave: BTreeSet<String>,
    skew: TimeDelta,
    persisted: BTreeMap<CheckKey, ibp_wire::Proposal>,
    belief: Vec<Option<bool>>,
    wake_at: Option<Now>,
    group: u8,
}

struct Sim {
    cfg: SimConfig,
    core: CoreConfig,
    rng: SimRng,
    now: Now,
    seq: u64,
    queue: BinaryHeap<Queued>,
    nodes: Vec<Node>,
    keys: Vec<CheckKey>,
    truth: Vec<bool>,
    /// Per node, per key: belief changes (global time, status).
    history: Vec<Vec<Vec<(Now, bool)>>>,
    settled: bool,
    report: SimReport,
    partitioned: bool,
}

fn start() -> Now {
    Utc.with_ymd_and_hms(2026, 11, 27, 0, 0, 0)
        .single()
        .unwrap_or(chrono::DateTime::<Utc>::UNIX_EPOCH)
}

/// Runs one simulation.
pub fn run(seed: u64, cfg: &SimConfig) -> SimReport {
    let mut core = CoreConfig::default();
    if cfg.quorum_floor {
        core.min_quorum = Some(cfg.monitors / 2 + 1);
    }
    if cfg.small_caps {
        core.max_proposals = 4;
        core.max_pending_buckets = 3;
        core.max_nodes = cfg.monitors + 1;
    }
    let mut sim = Sim {
        cfg: cfg.clone(),
        core,
        rng: SimRng::new(seed),
        now: start(),
        seq: 0,
        queue: BinaryHeap::new(),
        nodes: Vec::new(),
        keys: (0..cfg.checks)
            .map(|i| {
                CheckKey::new(
                    [CheckType::Site, CheckType::Domain, CheckType::Endpoint][i % 3],
                    "check",
                    format!("member{}", i / 2),
                    if i % 3 == 0 {
                        String::new()
                    } else {
                        format!("d{i}.example")
                    },
                    if i % 3 == 2 {
                        format!("wss://d{i}.example/x")
                    } else {
                        String::new()
                    },
                    i % 2 == 1,
                )
            })
            .collect(),
        truth: vec![true; cfg.checks],
        history: Vec::new(),
        settled: false,
        report: SimReport {
            seed,
            ..SimReport::default()
        },
        partitioned: false,
    };
    sim.setup();
    sim.run();
    sim.check_convergence();
    sim.report
}

impl Sim {
    fn push(&mut self, at: Now, ev: Ev) {
        self.seq += 1;
        self.queue.push(Queued {
            at,
            seq: self.seq,
            ev,
        });
    }

    fn local_now(&self, node: usize) -> Now {
        self.now + self.nodes[node].skew
    }

    fn trace(&self, what: impl FnOnce() -> String) {
        if self.cfg.trace {
            println!("{} {}", (self.now - start()).num_milliseconds(), what());
        }
    }

    fn setup(&mut self) {
        let n = self.cfg.monitors;
        let skew_ms = self.cfg.max_skew.as_millis() as u64;
        let rust = self.cfg.rust_monitors();
        for i in 0..n {
            let skew = self.rng.below(2 * skew_ms + 1) as i64 - skew_ms as i64;
            let go = if i < rust {
                None
            } else if i < rust + self.cfg.go_head {
                Some(GoVersion::Head)
            } else {
                Some(GoVersion::V0612)
            };
            self.nodes.push(Node {
                id: format!("monitor-{i}"),
                go,
                engine: None,
                seen: BTreeMap::new(),
                agreed: BTreeMap::new(),
                current: BTreeMap::new(),
                saw_leave: BTreeSet::new(),
                skew: TimeDelta::milliseconds(skew),
                persisted: BTreeMap::new(),
                belief: vec![None; self.cfg.checks],
                wake_at: None,
                group: 0,
            });
            self.history.push(vec![Vec::new(); self.cfg.checks]);
        }
        for i in 0..n {
            let at = after(self.now, Duration::from_millis(self.rng.below(3000)));
            self.push(at, Ev::Restart { node: i });
        }
        // The truth starts online; every monitor observes it after a lag.
        for i in 0..n {
            for k in 0..self.cfg.checks {
                let at = after(self.now, Duration::from_millis(self.rng.range(500, 5000)));
                self.push(
                    at,
                    Ev::Belief {
                        node: i,
                        key: k,
                        status: true,
                        chaos: true,
                    },
                );
            }
        }
        let chaos_end = after(self.now, self.cfg.chaos);
        // Truth changes during chaos.
        for k in 0..self.cfg.checks {
            let flips = self.rng.range(1, 4);
            let mut status = true;
            for _ in 0..flips {
                status = !status;
                let at = after(
                    self.now,
                    Duration::from_millis(self.rng.below(self.cfg.chaos.as_millis() as u64)),
                );
                self.push(at, Ev::Truth { key: k, status });
            }
        }
        if self.cfg.partitions {
            let mut t = 0u64;
            let chaos_ms = self.cfg.chaos.as_millis() as u64;
            while t < chaos_ms {
                t += self.rng.range(30_000, 300_000);
                let groups = (0..n).map(|_| self.rng.below(2) as u8).collect();
                self.push(
                    after(self.now, Duration::from_millis(t)),
                    Ev::Partition { groups },
                );
                t += self.rng.range(10_000, 200_000);
                self.push(after(self.now, Duration::from_millis(t)), Ev::Heal);
            }
        }
        if self.cfg.crashes {
            for i in 0..n {
                if self.rng.chance(400) {
                    let t = self.rng.below(self.cfg.chaos.as_millis() as u64);
                    let clean = self.rng.chance(500);
                    self.push(
                        after(self.now, Duration::from_millis(t)),
                        Ev::Crash { node: i, clean },
                    );
                    let back = t + self.rng.range(5_000, 400_000);
                    self.push(
                        after(self.now, Duration::from_millis(back)),
                        Ev::Restart { node: i },
                    );
                }
            }
        }
        self.push(chaos_end, Ev::Settle);
    }

    fn run(&mut self) {
        let end = after(after(self.now, self.cfg.chaos), self.cfg.settle);
        while let Some(q) = self.queue.pop() {
            if q.at > end {
                break;
            }
            self.now = q.at;
            self.step(q.ev);
        }
        self.now = end;
    }

    fn step(&mut self, ev: Ev) {
        match ev {
            Ev::Deliver { to, input } => {
                if self.nodes[to].engine.is_none() {
                    self.report.dropped += 1;
                    return;
                }
                self.report.delivered += 1;
                let now = self.local_now(to);
                let proposal_id = match input.as_ref() {
                    Input::Proposal(p) => Some(p.id.clone()),
                    _ => None,
                };
                match input.as_ref() {
                    Input::Leave(m) => {
                        let from = m.sender.node_id.clone();
                        if self
                            .nodes
                            .iter()
                            .any(|n| n.id == from && n.engine.is_none())
                        {
                            self.nodes[to].saw_leave.insert(from);
                        }
                    }
                    Input::Vote(v) if v.agree => {
                        self.nodes[to]
                            .agreed
                            .entry(v.proposal_id.clone())
                            .or_default()
                            .insert(v.node_id.clone());
                    }
                    _ => {}
                }
                let fx = match self.nodes[to].engine.as_mut() {
                    Some(e) => e.handle(*input, now),
                    None => return,
                };
                // What the node saw is what it tracked (a proposal refused by a cap is
                // never seen by it).
                if let Some(id) = proposal_id
                    && self.nodes[to]
                        .engine
                        .as_ref()
                        .and_then(Brain::rust)
                        .and_then(Engine::consensus)
                        .is_some_and(|c| c.tracked().contains_key(&id))
                {
                    self.nodes[to].seen.entry(id).or_insert(self.now);
                }
                self.effects(to, fx);
            }
            Ev::Wake { node } => {
                self.nodes[node].wake_at = None;
                let now = self.local_now(node);
                let fx = match self.nodes[node].engine.as_mut() {
                    Some(e) => e.tick(now),
                    None => return,
                };
                self.effects(node, fx);
            }
            Ev::CheckRound { node } => {
                if self.nodes[node].engine.is_none() {
                    return;
                }
                for k in 0..self.cfg.checks {
                    self.observe(node, k);
                }
                let at = after(self.now, self.cfg.check_interval);
                self.push(at, Ev::CheckRound { node });
            }
            Ev::Belief {
                node,
                key,
                status,
                chaos,
            } => {
                if chaos && self.settled {
                    return;
                }
                self.nodes[node].belief[key] = Some(status);
                let h = &mut self.history[node][key];
                if h.last().is_none_or(|(_, s)| *s != status) {
                    h.push((self.now, status));
                }
                self.trace(|| format!("{} believes key{key}={status}", self.nodes[node].id));
                if self.nodes[node].engine.is_some() {
                    self.observe(node, key);
                }
            }
            Ev::Truth { key, status } => {
                if self.settled {
                    return;
                }
                self.truth[key] = status;
                self.trace(|| format!("truth key{key}={status}"));
                for i in 0..self.nodes.len() {
                    let lag = Duration::from_millis(self.rng.range(100, 20_000));
                    let noisy = self.rng.chance(self.cfg.noise_permille);
                    let seen = if noisy { !status } else { status };
                    self.push(
                        after(self.now, lag),
                        Ev::Belief {
                            node: i,
                            key,
                            status: seen,
                            chaos: true,
                        },
                    );
                    if noisy {
                        let fix = lag + Duration::from_millis(self.rng.range(1_000, 120_000));
                        self.push(
                            after(self.now, fix),
                            Ev::Belief {
                                node: i,
                                key,
                                status,
                                chaos: true,
                            },
                        );
                    }
                }
            }
            Ev::Partition { groups } => {
                if self.settled {
                    return;
                }
                self.trace(|| format!("partition {groups:?}"));
                for (n, g) in self.nodes.iter_mut().zip(groups) {
                    n.group = g;
                }
                self.partitioned = true;
            }
            Ev::Heal => {
                self.trace(|| "heal".to_string());
                for n in &mut self.nodes {
                    n.group = 0;
                }
                self.partitioned = false;
            }
            Ev::Crash { node, clean } => {
                if self.settled {
                    return;
                }
                self.trace(|| format!("crash {} clean={clean}", self.nodes[node].id));
                let now = self.local_now(node);
                if let Some(Brain::Rust(mut e)) = self.nodes[node].engine.take()
                    && clean
                {
                    let fx = e.leave(now);
                    self.effects(node, fx);
                }
            }
            Ev::Restart { node } => self.restart(node),
            Ev::Settle => {
                self.settled = true;
                self.trace(|| "settle".to_string());
                for n in &mut self.nodes {
                    n.group = 0;
                }
                self.partitioned = false;
                for i in 0..self.nodes.len() {
                    if self.nodes[i].engine.is_none() {
                        self.restart(i);
                    }
                    for k in 0..self.cfg.checks {
                        let lag = Duration::from_millis(self.rng.range(100, 20_000));
                        let status = self.truth[k];
                        self.push(
                            after(self.now, lag),
                            Ev::Belief {
                                node: i,
                                key: k,
                                status,
                                chaos: false,
                            },
                        );
                    }
                }
            }
        }
    }

    fn restart(&mut self, node: usize) {
        if self.nodes[node].engine.is_some() {
            return;
        }
        self.trace(|| format!("start {}", self.nodes[node].id));
        let id = self.nodes[node].id.clone();
        let prefix = format!("{id}-{}", self.rng.next_u64() % 1_000_000);
        let now = self.local_now(node);
        // A restarted process remembers nothing of what it saw; its results come back from
        // disk (Go: the official cache file).
        self.nodes[node].seen.clear();
        self.nodes[node].agreed.clear();
        self.nodes[node].saw_leave.clear();
        let me = self.nodes[node].id.clone();
        for n in &mut self.nodes {
            n.saw_leave.remove(&me);
        }
        self.nodes[node].current = self.nodes[node]
            .persisted
            .iter()
            .map(|(k, p)| (k.clone(), p.id.clone()))
            .collect();
        // Results restored from disk predate everything this process sees from now on.
        let restored: Vec<String> = self.nodes[node].current.values().cloned().collect();
        let started = self.now;
        for id in restored {
            self.nodes[node].seen.insert(id, started);
        }
        let (brain, fx) = match self.nodes[node].go {
            None => {
                let mut counter = 0u64;
                let ids = Box::new(move || {
                    counter += 1;
                    format!("{prefix}-{counter}")
                });
                let me = SelfInfo {
                    node_id: id,
                    ..SelfInfo::default()
                };
                let mut e = Engine::new(me, Role::Monitor, self.core.clone(), ids);
                if let Some(c) = e.consensus_mut() {
                    for p in self.nodes[node].persisted.values() {
                        c.restore_official(p.clone(), now, now);
                    }
                }
                let fx = e.enable(now).unwrap_or_default();
                (Brain::Rust(Box::new(e)), fx)
            }
            Some(v) => {
                let mut g = GoMonitor::new(&id, v, prefix);
                g.restore(&self.nodes[node].persisted);
                let fx = g.enable(now);
                (Brain::Go(Box::new(g)), fx)
            }
        };
        self.nodes[node].engine = Some(brain);
        self.effects(node, fx);
        // The monitor's check loop; beliefs survive (they are re-observed at once).
        let first = after(
            self.now,
            Duration::from_millis(self.rng.below(self.cfg.check_interval.as_millis() as u64)),
        );
        self.push(first, Ev::CheckRound { node });
    }

    fn observe(&mut self, node: usize, key: usize) {
        let Some(status) = self.nodes[node].belief[key] else {
            return;
        };
        let now = self.local_now(node);
        let k = self.keys[key].clone();
        let fx = match self.nodes[node].engine.as_mut() {
            Some(e) => e.observe(k, status, now),
            None => return,
        };
        self.effects(node, fx);
    }

    fn effects(&mut self, node: usize, fx: Vec<Effect>) {
        for e in fx {
            match e {
                Effect::Publish(out) => {
                    match &out {
                        Outbound::Finalize(_) => self.report.decisions += 1,
                        Outbound::Propose(p) => {
                            self.nodes[node]
                                .seen
                                .entry(p.id.clone())
                                .or_insert(self.now);
                        }
                        Outbound::Vote(v) if v.agree => {
                            self.nodes[node]
                                .agreed
                                .entry(v.proposal_id.clone())
                                .or_default()
                                .insert(v.node_id.clone());
                        }
                        _ => {}
                    }
                    self.broadcast(node, out);
                }
                Effect::ApplyOfficial(change) => {
                    self.report.applies += 1;
                    if self.nodes[node].go.is_none() {
                        self.check_support(node, &change.key, change.status, &change.proposal.id);
                        self.check_order(node, &change.key, &change.proposal.id);
                        self.check_floor(node, &change.key, &change.proposal.id);
                    }
                    self.nodes[node]
                        .current
                        .insert(change.key.clone(), change.proposal.id.clone());
                    self.nodes[node]
                        .persisted
                        .insert(change.key, change.proposal);
                }
                _ => {}
            }
        }
        self.check_caps(node);
        self.check_left(node);
        self.schedule_wake(node);
    }

    fn broadcast(&mut self, from: usize, out: Outbound) {
        let input = match out {
            Outbound::Join(m) => Input::Cluster(m),
            Outbound::Leave(m) => Input::Leave(m),
            Outbound::Propose(p) => Input::Proposal(p),
            Outbound::Vote(v) => Input::Vote(v),
            Outbound::Finalize(f) => Input::Finalize(f),
        };
        for to in 0..self.nodes.len() {
            if to == from {
                continue; // no echo
            }
            let cut = self.partitioned && self.nodes[to].group != self.nodes[from].group;
            let lost = !self.settled && self.rng.chance(self.cfg.loss_permille);
            if cut || lost {
                self.report.dropped += 1;
                continue;
            }
            let copies = if self.rng.chance(self.cfg.dup_permille) {
                2
            } else {
                1
            };
            for _ in 0..copies {
                let delay = Duration::from_micros(
                    self.rng.range(100, self.cfg.max_delay.as_micros() as u64),
                );
                self.push(
                    after(self.now, delay),
                    Ev::Deliver {
                        to,
                        input: Box::new(input.clone()),
                    },
                );
            }
        }
    }

    fn schedule_wake(&mut self, node: usize) {
        let Some(e) = &self.nodes[node].engine else {
            return;
        };
        let Some(local) = e.next_deadline() else {
            return;
        };
        let global = (local - self.nodes[node].skew).max(self.now);
        if self.nodes[node].wake_at.is_some_and(|w| w <= global) {
            return;
        }
        self.nodes[node].wake_at = Some(global);
        self.push(global, Ev::Wake { node });
    }

    fn check_caps(&mut self, node: usize) {
        let Some(e) = self.nodes[node].engine.as_ref().and_then(Brain::rust) else {
            return;
        };
        let c = e.counters();
        self.report.refused = self
            .report
            .refused
            .max(c.refused_nodes + c.refused_pending_votes + c.refused_proposals);
        let Some(cons) = e.consensus() else { return };
        let caps = &self.core;
        if cons.tracked().len() > caps.max_proposals
            || cons.pending_buckets() > caps.max_pending_buckets
            || e.membership().len() > caps.max_nodes
            || cons.decided_len() > caps.max_decided
        {
            let v = format!(
                "bounded memory: {} holds {} proposals, {} buckets, {} nodes (caps {}, {}, {})",
                self.nodes[node].id,
                cons.tracked().len(),
                cons.pending_buckets(),
                e.membership().len(),
                caps.max_proposals,
                caps.max_pending_buckets,
                caps.max_nodes
            );
            self.report.violations.push(v);
        }
    }

    fn check_support(&mut self, node: usize, key: &CheckKey, status: bool, pid: &str) {
        let Some(k) = self.keys.iter().position(|x| x == key) else {
            self.report.violations.push(format!(
                "{} applied an unknown key {key}",
                self.nodes[node].id
            ));
            return;
        };
        // A counted vote was cast at most a proposal lifetime (plus buffering) ago.
        let window = self.core.proposal_ttl + self.core.buffered_vote_ttl + Duration::from_secs(60);
        let since = self.now - TimeDelta::from_std(window).unwrap_or(TimeDelta::zero());
        let supporters: BTreeSet<usize> = (0..self.nodes.len())
            .filter(|&m| {
                let h = &self.history[m][k];
                h.iter().enumerate().any(|(i, (t, s))| {
                    let until = h.get(i + 1).map(|(t2, _)| *t2).unwrap_or(self.now);
                    *s == status && *t <= self.now && until >= since
                })
            })
            .collect();
        // A v0.6.12 monitor decides with one vote; without a floor a Rust node follows it.
        let min_votes = if self.cfg.go_v0612 > 0 {
            1
        } else {
            self.core.min_votes
        };
        let needed = self.core.min_quorum.unwrap_or(0).max(min_votes);
        if supporters.len() < needed {
            self.report.violations.push(format!(
                "support: {} applied {key}={status} (proposal {pid}) observed by only {:?}, needs {needed}",
                self.nodes[node].id, supporters
            ));
        }
        self.trace(|| format!("{} applies key{k}={status} ({pid})", self.nodes[node].id));
    }

    /// A node that left cleanly stays gone on every Rust node that handled its leave, until it
    /// restarts: nothing it sent before (a late vote or join), and no finalize naming it only
    /// as a proposer (v0.6.12), brings it back.
    fn check_left(&mut self, node: usize) {
        let n = &self.nodes[node];
        if n.saw_leave.is_empty() {
            return;
        }
        let Some(e) = n.engine.as_ref().and_then(Brain::rust) else {
            return;
        };
        let now = self.local_now(node);
        for (m, active) in e.membership().members(now) {
            if active && n.saw_leave.contains(&m.node_id) {
                let v = format!(
                    "leave: {} counts {} as active after its clean leave",
                    n.id, m.node_id
                );
                self.report.violations.push(v);
            }
        }
    }

    /// A Rust node never replaces an official result with a decision about a proposal it
    /// saw before the one behind that result.
    fn check_order(&mut self, node: usize, key: &CheckKey, pid: &str) {
        let n = &self.nodes[node];
        let Some(cur) = n.current.get(key) else {
            return;
        };
        if let (Some(new), Some(old)) = (n.seen.get(pid), n.seen.get(cur))
            && new < old
        {
            let v = format!(
                "order: {} applied {pid} over {cur} for {key}, though it saw {pid} first",
                n.id
            );
            self.report.violations.push(v);
        }
    }

    /// With a floor, a Rust node applies only decisions it received enough agreeing votes
    /// for, whoever finalized them (a one-vote v0.6.12 monitor, a minority partition).
    fn check_floor(&mut self, node: usize, key: &CheckKey, pid: &str) {
        let Some(floor) = self.core.min_quorum else {
            return;
        };
        let n = &self.nodes[node];
        let got = n.agreed.get(pid).map(BTreeSet::len).unwrap_or(0);
        if got < floor {
            let v = format!(
                "floor: {} applied {pid} for {key} with {got} agreeing votes, floor {floor}",
                n.id
            );
            self.report.violations.push(v);
        }
    }

    fn check_convergence(&mut self) {
        for n in self.nodes.iter().filter(|n| n.go.is_none()) {
            let Some(cons) = n
                .engine
                .as_ref()
                .and_then(Brain::rust)
                .and_then(Engine::consensus)
            else {
                self.report
                    .violations
                    .push(format!("convergence: {} is not running at the end", n.id));
                continue;
            };
            for (k, key) in self.keys.iter().enumerate() {
                let got = cons.official().get(key).map(|o| o.status);
                if got != Some(self.truth[k]) {
                    self.report.violations.push(format!(
                        "convergence: {} has {key} = {got:?}, truth is {}",
                        n.id, self.truth[k]
                    ));
                }
            }
        }
    }
}
