//! One node's core: membership plus, by role, consensus (monitor) or the vote cache
//! (collator, and DNS nodes, which follow decisions without voting). The shell feeds it
//! messages and the time; it returns effects.

use ibp_wire::{ClusterMessage, FinalizeMessage, Proposal, Role, Vote};

use crate::check::CheckKey;
use crate::collator::VoteCache;
use crate::consensus::{Consensus, IdSource, ObserveOutcome, ProposeOutcome};
use crate::membership::{Membership, SelfInfo, sent_at};
use crate::time::Now;
use crate::{CoreConfig, Counters, Effect, Observation};

/// A decoded message from the bus.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// `consensus.cluster`.
    Cluster(ClusterMessage),
    /// The leave extension subject.
    Leave(ClusterMessage),
    /// `consensus.propose`.
    Proposal(Proposal),
    /// `consensus.vote`.
    Vote(Vote),
    /// `consensus.finalize`.
    Finalize(FinalizeMessage),
    /// Any other message naming its sender (usage or downtime data): the sender is alive.
    Heard(String),
}

/// Why the engine refused a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// [`Engine::enable`] was called twice.
    #[error("the {0} role is already enabled on this node")]
    AlreadyEnabled(Role),
    /// A monitor-only call on a node of another role.
    #[error("this node runs the {0} role; only monitors propose and observe")]
    NotAMonitor(Role),
}

/// The core of one node.
pub struct Engine {
    cfg: CoreConfig,
    membership: Membership,
    consensus: Option<Consensus>,
    cache: Option<VoteCache>,
    counters: Counters,
    enabled: bool,
    /// Set by [`Engine::leave`]: the node publishes nothing after its leave, so no late
    /// vote or finalize (newer than the leave) brings it back on its peers.
    left: bool,
    gc_interval: std::time::Duration,
    next_gc: Option<Now>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("node", &self.membership.node_id())
            .field("role", &self.membership.role())
            .field("enabled", &self.enabled)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// A core for node `me` in `role`. `ids` supplies proposal IDs (monitors only).
    pub fn new(me: SelfInfo, role: Role, cfg: CoreConfig, ids: Box<dyn IdSource>) -> Engine {
        let consensus =
            (role == Role::Monitor).then(|| Consensus::new(me.node_id.clone(), cfg.clone(), ids));
        let cache = matches!(role, Role::Collator | Role::Dns).then(|| VoteCache::new(&cfg));
        Engine {
            gc_interval: cfg.gc_interval,
            cfg: cfg.clone(),
            membership: Membership::new(me, role, cfg),
            consensus,
            cache,
            counters: Counters::default(),
            enabled: false,
            left: false,
            next_gc: None,
        }
    }

    /// A core for a one-shot tool (see [`Membership::observer`]): it learns the cluster,
    /// is counted by nobody, and takes part in nothing.
    pub fn observer(me: SelfInfo, cfg: CoreConfig) -> Engine {
        Engine {
            gc_interval: cfg.gc_interval,
            cfg: cfg.clone(),
            membership: Membership::observer(me, cfg),
            consensus: None,
            cache: None,
            counters: Counters::default(),
            enabled: false,
            left: false,
            next_gc: None,
        }
    }

    /// Enables the role: the node starts announcing itself. Calling it twice is an error.
    pub fn enable(&mut self, now: Now) -> Result<Vec<Effect>, EngineError> {
        if self.enabled {
            return Err(EngineError::AlreadyEnabled(self.membership.role()));
        }
        self.enabled = true;
        self.membership.enable(now);
        Ok(self.tick(now))
    }

    /// Whether [`Engine::enable`] was called.
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Handles one message from the bus.
    pub fn handle(&mut self, input: Input, now: Now) -> Vec<Effect> {
        let out = self.handle_inner(input, now);
        self.gate(out)
    }

    /// Drops every publish once the node has left.
    fn gate(&self, mut out: Vec<Effect>) -> Vec<Effect> {
        if self.left {
            out.retain(|e| !matches!(e, Effect::Publish(_)));
        }
        out
    }

    fn handle_inner(&mut self, input: Input, now: Now) -> Vec<Effect> {
        let mut out = Vec::new();
        let c = &mut self.counters;
        match input {
            Input::Cluster(msg) => self.membership.on_cluster(&msg, now, c, &mut out),
            Input::Leave(msg) => {
                if self.membership.on_leave(&msg, now, c, &mut out)
                    && let Some(cons) = &mut self.consensus
                {
                    cons.reevaluate(now, &self.membership, c, &mut out);
                }
            }
            Input::Heard(id) => {
                if !self.membership.left_recently(&id, now) {
                    self.membership.heard(&id, false, None, now, c, &mut out);
                }
            }
            Input::Proposal(p) => {
                self.membership.heard(
                    &p.sender_node_id,
                    true,
                    sent_at(&p.timestamp),
                    now,
                    c,
                    &mut out,
                );
                if let Some(cons) = &mut self.consensus {
                    cons.on_proposal(p, now, &self.membership, c, &mut out);
                } else if let Some(cache) = &mut self.cache {
                    cache.on_proposal(p, now, c);
                }
            }
            Input::Vote(mut v) => {
                // Go nodes always send SenderNodeID == NodeID; an empty sender is taken as the
                // voter, a different one is a forged vote and is dropped.
                if v.sender_node_id.is_empty() {
                    v.sender_node_id = v.node_id.clone();
                }
                if v.sender_node_id != v.node_id {
                    c.invalid_messages += 1;
                    return out;
                }
                // A voter the node cap refused can never count: do not store its vote.
                if self.membership.heard(
                    &v.sender_node_id,
                    true,
                    sent_at(&v.timestamp),
                    now,
                    c,
                    &mut out,
                ) == crate::membership::Heard::Refused
                {
                    c.refused_pending_votes += 1;
                    return out;
                }
                if let Some(cons) = &mut self.consensus {
                    cons.on_vote(v, now, &self.membership, c, &mut out);
                } else if let Some(cache) = &mut self.cache {
                    cache.on_vote(v, now, c);
                    self.release_early(now, &mut out);
                }
            }
            Input::Finalize(f) => {
                let finalizer = f.finalizer().to_string();
                // A v0.2.0/v0.6.12 finalize names no sender: the proposer it falls back to
                // did not necessarily send it, so it proves nothing about a node that left.
                let fallback = f.sender_node_id.is_empty();
                if !(fallback && self.membership.is_left(&finalizer)) {
                    self.membership.heard(
                        &finalizer,
                        true,
                        sent_at(&f.decided_at),
                        now,
                        c,
                        &mut out,
                    );
                }
                if let Some(cons) = &mut self.consensus {
                    cons.on_finalize(f, now, &self.membership, c, &mut out);
                } else if let Some(cache) = &mut self.cache {
                    cache.on_finalize(f, now, c);
                    self.release_early(now, &mut out);
                }
            }
        }
        out
    }

    /// A DNS node follows decisions as soon as they stand: at once without a quorum floor
    /// or enforced trust, else as soon as the votes it cached back them (the grace is only
    /// for votes still in flight).
    fn release_early(&mut self, now: Now, out: &mut Vec<Effect>) {
        if self.membership.role() != Role::Dns {
            return;
        }
        let Some(cache) = &mut self.cache else {
            return;
        };
        let m = &self.membership;
        let cfg = &self.cfg;
        let check =
            |votes: &std::collections::BTreeMap<String, bool>| backing_of(votes, m, cfg, now);
        let required = cfg.tally_required();
        out.extend(
            cache.release_ready(required.then_some(&check as &dyn Fn(&_) -> (usize, usize))),
        );
    }

    /// Handles everything due at `now`: joins, heartbeats, timeouts, garbage collection.
    pub fn tick(&mut self, now: Now) -> Vec<Effect> {
        let out = self.tick_inner(now);
        self.gate(out)
    }

    fn tick_inner(&mut self, now: Now) -> Vec<Effect> {
        let mut out = Vec::new();
        let c = &mut self.counters;
        self.membership.tick(now, &mut out);
        if self.next_gc.is_none_or(|at| at <= now) {
            self.next_gc = Some(crate::time::after(now, self.gc_interval));
            let removed = self.membership.remove_stale(now, &mut out);
            if let Some(cons) = &mut self.consensus {
                cons.forget_nodes(&removed);
            }
        }
        if let Some(cons) = &mut self.consensus {
            cons.tick(now, &self.membership, c, &mut out);
        }
        if let Some(cache) = &mut self.cache {
            let m = &self.membership;
            let cfg = &self.cfg;
            let check =
                |votes: &std::collections::BTreeMap<String, bool>| backing_of(votes, m, cfg, now);
            let required = cfg.tally_required();
            out.extend(cache.tick(
                now,
                required.then_some(&check as &dyn Fn(&_) -> (usize, usize)),
                c,
            ));
        }
        out
    }

    /// When [`Engine::tick`] is next needed.
    pub fn next_deadline(&self) -> Option<Now> {
        let mut at = self.membership.next_deadline();
        for d in [
            self.next_gc,
            self.consensus.as_ref().and_then(Consensus::next_deadline),
            self.cache.as_ref().and_then(VoteCache::next_deadline),
        ]
        .into_iter()
        .flatten()
        {
            at = Some(at.map_or(d, |a| a.min(d)));
        }
        at
    }

    /// Announces again (after a reconnect) and republishes what may have been lost.
    pub fn reannounce(&mut self, now: Now) -> Vec<Effect> {
        if self.left {
            return Vec::new();
        }
        self.membership.reannounce(now);
        self.tick(now)
    }

    /// The clean-shutdown notice. After it the node sends no more joins.
    pub fn leave(&mut self, now: Now) -> Vec<Effect> {
        let mut out = Vec::new();
        if self.left {
            return out;
        }
        self.membership.leave(now, &mut out);
        self.left = true;
        out
    }

    /// Whether [`Engine::leave`] was called.
    pub fn has_left(&self) -> bool {
        self.left
    }

    /// Records a local observation; proposes when it differs from the official result.
    pub fn observe(
        &mut self,
        obs: Observation,
        now: Now,
    ) -> Result<(ObserveOutcome, Vec<Effect>), EngineError> {
        let mut out = Vec::new();
        let (cons, m, c) = self.parts()?;
        let r = cons.observe(obs, now, m, c, &mut out);
        Ok((r, self.gate(out)))
    }

    /// This monitor's official results, for a peer catching up (empty for other roles).
    pub fn sync_snapshot(&self) -> Vec<ibp_wire::FinalizeMessage> {
        self.consensus
            .as_ref()
            .map(|c| c.sync_snapshot())
            .unwrap_or_default()
    }

    /// One page of [`Engine::sync_snapshot`] (see [`Consensus::sync_page`]).
    pub fn sync_page(
        &self,
        after: Option<&CheckKey>,
        limit: usize,
    ) -> (Vec<(CheckKey, FinalizeMessage)>, bool) {
        self.consensus
            .as_ref()
            .map(|c| c.sync_page(after, limit))
            .unwrap_or_default()
    }

    /// Takes the official results other monitors reported, where a quorum of active
    /// monitors attests the same status (see [`Consensus::apply_synced`]).
    pub fn apply_synced(
        &mut self,
        replies: &std::collections::BTreeMap<String, Vec<ibp_wire::FinalizeMessage>>,
        now: Now,
    ) -> Result<(crate::consensus::SyncOutcome, Vec<Effect>), EngineError> {
        let mut out = Vec::new();
        let (cons, m, c) = self.parts()?;
        let r = cons.apply_synced(replies, now, m, c, &mut out);
        Ok((r, self.gate(out)))
    }

    /// Records a local observation without proposing.
    pub fn set_local(&mut self, obs: Observation, now: Now) -> Result<Vec<Effect>, EngineError> {
        let mut out = Vec::new();
        let (cons, m, c) = self.parts()?;
        cons.set_local(obs, now, m, c, &mut out);
        Ok(self.gate(out))
    }

    /// Proposes a status (the reference `ProposeCheckStatus`).
    pub fn propose(
        &mut self,
        obs: Observation,
        now: Now,
    ) -> Result<(ProposeOutcome, Vec<Effect>), EngineError> {
        let mut out = Vec::new();
        let (cons, m, c) = self.parts()?;
        let r = cons.propose(obs, now, m, c, &mut out);
        Ok((r, self.gate(out)))
    }

    /// Proposes every local observation that differs from the official result.
    pub fn reconcile(&mut self, now: Now) -> Vec<Effect> {
        let mut out = Vec::new();
        if let Ok((cons, m, c)) = self.parts() {
            cons.reconcile(now, m, c, &mut out);
        }
        self.gate(out)
    }

    fn parts(&mut self) -> Result<(&mut Consensus, &Membership, &mut Counters), EngineError> {
        let role = self.membership.role();
        let cons = self
            .consensus
            .as_mut()
            .ok_or(EngineError::NotAMonitor(role))?;
        Ok((cons, &self.membership, &mut self.counters))
    }

    /// The membership view.
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// The consensus state (monitors only).
    pub fn consensus(&self) -> Option<&Consensus> {
        self.consensus.as_ref()
    }

    /// Mutable consensus state, to restore persisted official results at start-up.
    pub fn consensus_mut(&mut self) -> Option<&mut Consensus> {
        self.consensus.as_mut()
    }

    /// Whether decisions must be backed by votes this node saw (quorum floor, trust), and if
    /// so the agreeing votes of active monitors among `votes` and how many are needed.
    pub fn backing(
        &self,
        votes: &std::collections::BTreeMap<String, bool>,
        now: Now,
    ) -> Option<(usize, usize)> {
        self.cfg
            .tally_required()
            .then(|| backing_of(votes, &self.membership, &self.cfg, now))
    }

    /// Replaces what this node knows (members and checks): proposals, observations and
    /// decisions about anything else are not tracked or applied. `None` accepts any.
    pub fn set_known(&mut self, known: Option<crate::consensus::Known>) {
        if let Some(c) = &mut self.consensus {
            c.set_known(known);
        }
    }

    /// Takes what the collator cached for a proposal (the durable finalize path).
    pub fn take_cached(
        &mut self,
        id: &str,
    ) -> Option<(Option<Proposal>, std::collections::BTreeMap<String, bool>)> {
        self.cache.as_mut().and_then(|c| c.take(id))
    }

    /// The collator's vote cache (collators only).
    pub fn vote_cache(&self) -> Option<&VoteCache> {
        self.cache.as_ref()
    }

    /// What the core refused, dropped or ignored so far.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Active nodes of `role`, this node included.
    pub fn count_active(&self, role: Role, now: Now) -> usize {
        self.membership.count_active(role, now)
    }
}

/// Agreeing votes of active monitors among `votes`, and the number a decision needs with
/// this node's rules (majority of active monitors, minimum votes, quorum floor).
fn backing_of(
    votes: &std::collections::BTreeMap<String, bool>,
    m: &Membership,
    cfg: &CoreConfig,
    now: Now,
) -> (usize, usize) {
    let need = cfg.majority(m.count_active(ibp_wire::Role::Monitor, now));
    let yes = votes
        .iter()
        .filter(|(v, a)| **a && m.is_active_monitor(v, now))
        .count();
    (yes, need)
}
