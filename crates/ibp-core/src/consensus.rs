//! Consensus (protocol §5): propose, track, vote, decide, finalize, time out, collect garbage.
//!
//! Pure: the caller passes the time and the membership view; everything to do comes back
//! as [`Effect`]s. Differences from the Go reference, all invisible on the wire:
//! * decisions are remembered for `decided_ttl`, so duplicate finalizes, late votes and
//!   repeated proposals of a decided ID change nothing;
//! * a passed decision never overwrites a newer official result for the same check
//!   (ordered by when this node first saw each proposal; by proposer clock only when it
//!   never saw one of them);
//! * ageing uses the local time a proposal was first seen, not the proposer's clock;
//! * tracked proposals, buffered-vote buckets and remembered decisions are capped;
//! * an optional quorum floor keeps a minority partition from ever deciding;
//! * a change of local observation re-votes on the tracked proposals for that check.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ibp_wire::{Data, FinalizeMessage, Proposal, Role, Vote, WireTime};
use serde::Serialize;

mod sync;
pub use sync::{SyncOutcome, attested};

use crate::check::ProposalKey;
use crate::membership::Membership;
use crate::time::{Now, after, elapsed};
use crate::{
    CheckKey, CoreConfig, Counters, Decision, Effect, Observation, OfficialChange, Outbound,
};

/// Source of proposal IDs (UUID v4 in production, seeded in simulations).
pub trait IdSource: Send {
    /// A fresh, unique proposal ID.
    fn next_id(&mut self) -> String;
}

impl<F: FnMut() -> String + Send> IdSource for F {
    fn next_id(&mut self) -> String {
        self()
    }
}

/// A proposal this node tracks.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Tracked {
    /// The proposal as received (or created).
    pub proposal: Proposal,
    /// Local time this node first saw it (its age, and its order against other decisions).
    pub received_at: Now,
    /// Votes by node ID (last vote per node wins).
    pub votes: BTreeMap<String, bool>,
    /// Timeouts so far.
    pub timeouts: u32,
    /// When it is next re-evaluated.
    pub next_timeout: Now,
    /// True when this node created it.
    pub own: bool,
    /// Last time this node broadcast it (own proposals only).
    pub last_broadcast: Option<Now>,
}

#[derive(Debug, Clone)]
struct PendingBucket {
    votes: BTreeMap<String, (bool, Now)>,
}

#[derive(Debug, Clone)]
struct Held {
    finalize: FinalizeMessage,
    until: Now,
}

/// What a node's member list and check configuration contain. A proposal, observation or
/// decision about anything else is not tracked or applied (counted), as Go monitors skip a
/// finalize whose member or check they do not know; it also bounds what strangers on the
/// bus can make a node hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Known {
    /// Member names (`Details.Name`).
    pub members: BTreeSet<String>,
    /// `(check type, check name)` pairs of the configured checks; empty means any check.
    pub checks: BTreeSet<(String, String)>,
}

impl Known {
    /// Whether `key` is about a known member and check.
    pub fn knows(&self, key: &CheckKey) -> bool {
        self.members.contains(&key.member_name)
            && (self.checks.is_empty()
                || self
                    .checks
                    .contains(&(key.check_type.clone(), key.check_name.clone())))
    }
}

/// An official result.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Official {
    /// The status (true = online).
    pub status: bool,
    /// The proposal that decided it.
    pub proposal: Proposal,
    /// Local time this node first saw that proposal, when it did (not after a restart).
    pub seen_at: Option<Now>,
    /// Restored from disk at start-up (not decided while this process ran).
    #[serde(skip)]
    pub restored: bool,
    /// Local time the result was applied.
    pub applied_at: Now,
}

/// A local observation.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Local {
    /// The observed status.
    pub status: bool,
    /// The check's error text.
    pub error_text: String,
    /// The check's details.
    #[serde(skip)]
    pub data: Data,
    /// Local time of the observation.
    pub observed_at: Now,
}

/// What [`Consensus::propose`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProposeOutcome {
    /// A new proposal with this ID was created and published.
    Created(String),
    /// A matching proposal was already tracked; this node voted on it again.
    Revoted(String),
    /// A matching own proposal was republished with its original ID (and voted on again).
    Republished(String),
    /// Refused: the cap on tracked proposals is reached, or this node is not a monitor.
    Refused,
}

impl ProposeOutcome {
    /// The proposal ID concerned, if any.
    pub fn id(&self) -> Option<&str> {
        match self {
            ProposeOutcome::Created(id)
            | ProposeOutcome::Revoted(id)
            | ProposeOutcome::Republished(id) => Some(id),
            ProposeOutcome::Refused => None,
        }
    }
}

/// What [`Consensus::observe`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ObserveOutcome {
    /// The observation equals the official result: recorded, nothing proposed.
    Unchanged,
    /// The observation agreed with an undecided proposal of another monitor (or an own
    /// one); this node voted for it, and with that vote it is now the official result.
    Decided(String),
    /// The observation differs from the official result (or there is none): proposed.
    Proposed(ProposeOutcome),
    /// The member or check is not in this node's lists: nothing recorded.
    Unknown,
}

/// The consensus state machine of one monitor.
pub struct Consensus {
    cfg: CoreConfig,
    me: String,
    tracked: BTreeMap<String, Tracked>,
    by_key: BTreeMap<ProposalKey, BTreeSet<String>>,
    timeouts: BTreeSet<(Now, String)>,
    pending: BTreeMap<String, PendingBucket>,
    /// Decided proposal IDs: whether they passed, and when this node first saw them (kept
    /// after the proposal is forgotten, so a late finalize is still ordered correctly).
    decided: BTreeMap<String, (bool, Option<Now>)>,
    /// First-seen times of proposals that expired undecided (their late finalizes, which
    /// v0.6.12 monitors produce for ten minutes, are ordered by it).
    expired_seen: BTreeMap<String, Now>,
    expired_order: std::collections::VecDeque<(Now, String)>,
    /// Passed finalizes waiting for the agreeing votes that back them (quorum floor / trust).
    held: BTreeMap<String, Held>,
    /// The members and checks this node knows, once it has its lists.
    known: Option<Known>,
    decided_order: std::collections::VecDeque<(Now, String)>,
    local: BTreeMap<CheckKey, Local>,
    official: BTreeMap<CheckKey, Official>,
    ids: Box<dyn IdSource>,
    next_gc: Option<Now>,
}

impl std::fmt::Debug for Consensus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consensus")
            .field("me", &self.me)
            .field("tracked", &self.tracked.len())
            .field("pending", &self.pending.len())
            .field("official", &self.official.len())
            .finish_non_exhaustive()
    }
}

impl Consensus {
    /// A consensus engine for monitor `me`.
    pub fn new(me: impl Into<String>, cfg: CoreConfig, ids: Box<dyn IdSource>) -> Consensus {
        Consensus {
            cfg,
            me: me.into(),
            tracked: BTreeMap::new(),
            by_key: BTreeMap::new(),
            timeouts: BTreeSet::new(),
            pending: BTreeMap::new(),
            decided: BTreeMap::new(),
            expired_seen: BTreeMap::new(),
            expired_order: Default::default(),
            held: BTreeMap::new(),
            known: None,
            decided_order: Default::default(),
            local: BTreeMap::new(),
            official: BTreeMap::new(),
            ids,
            next_gc: None,
        }
    }

    // ----- observations and proposals -------------------------------------------------

    /// Records a local observation without proposing. When the status changed, re-votes
    /// on the tracked proposals for that check so they reflect the latest observation.
    pub fn set_local(
        &mut self,
        obs: Observation,
        now: Now,
        m: &Membership,
        c: &mut Counters,
        out: &mut Vec<Effect>,
    ) {
        self.record_local(obs, now, m, c, out);
    }

    /// Records a local observation; returns the proposals it voted on again.
    fn record_local(
        &mut self,
        obs: Observation,
        now: Now,
        m: &Membership,
        c: &mut Counters,
        out: &mut Vec<Effect>,
    ) -> Vec<String> {
        let Observation {
            key,
            status,
            error_text,
            data,
        } = obs;
        if !self.knows(&key) {
            c.unknown_checks += 1;
            return Vec::new();
        }
        if !self.local.contains_key(&key) && self.local.len() >= self.cfg.max_results {
            c.refused_results += 1;
            return Vec::new();
        }
        let changed = self.local.get(&key).is_none_or(|l| l.status != status);
        self.local.insert(
            key.clone(),
            Local {
                status,
                error_text,
                data,
                observed_at: now,
            },
        );
        if changed {
            let ids: Vec<String> = [true, false]
                .into_iter()
                .filter_map(|s| self.by_key.get(&(key.clone(), s)))
                .flatten()
                .cloned()
                .collect();
            for id in &ids {
                self.vote_own(id, now, m, c, out);
            }
            return ids;
        }
        Vec::new()
    }

    /// A local observation as a Go monitor handles a check result: record it, and propose
    /// when it differs from the official result or there is none.
    pub fn observe(
        &mut self,
        obs: Observation,
        now: Now,
        m: &Membership,
        c: &mut Counters,
        out: &mut Vec<Effect>,
    ) -> ObserveOutcome {
        if !self.knows(&obs.key) {
            c.unknown_checks += 1;
            return ObserveOutcome::Unknown;
        }
        let agreeing: Vec<String> = self
            .by_key
            .get(&(obs.key.clone(), obs.status))
            .map(|ids| ids.iter().cloned().collect())
            .unwrap_or_default();
        let is_official = |s: &Self| {
            s.official
                .get(&obs.key)
                .is_some_and(|o| o.status == obs.status)
        };
        let was_official = is_official(self);
        let revoted = self.record_local(obs.clone(), now, m, c, out);
        if is_official(self) {
            return match revoted.iter().find(|id| agreeing.contains(id)) {
                Some(id) if !was_official => ObserveOutcome::Decided(id.clone()),
                _ => ObserveOutcome::Unchanged,
            };
        }
        ObserveOutcome::Proposed(self.propose_inner(obs, now, m, c, out, &revoted))
    }

    /// Proposes `status` for `key` (the reference `ProposeCheckStatus`). If an undecided
    /// proposal with the same check and status is tracked, votes on it again instead, and
    /// republishes it when it is this node's own and was last broadcast at least
    /// `republish_after` ago. As in the reference, the vote comes from the local result:
    /// record it first ([`Consensus::set_local`]), or use [`Consensus::observe`].
    pub fn propose(
        &mut self,
        obs: Observation,
        now: Now,
        m: &Membership,
        c: &mut Counters,
        out: &mut Vec<Effect>,
    ) -> ProposeOutcome {
        self.propose_inner(obs, now, m, c, out, &[])
    }

    fn propose_inner(
        &mut self,
        obs: Observation,
        now: Now,
        m: &Membership,
        c: &mut Counters,
        out: &mut Vec<Effect>,
        already_voted: &[String],
    ) -> ProposeOutcome {
        if m.role() != Role::Monitor {
            return ProposeOutcome::Refused;
        }
        let Observation {
            key,
            status,
            error_text,
            data,
        } = obs;
        let pkey = (key.clone(), status);
        if let Some(ids) = self.by_key.get(&pkey) {
            // Prefer an own proposal, so it can be republished; else the oldest.
            let chosen = ids
                .iter()
                .find(|id| self.tracked.get(*id).is_some_and(|t| t.own))
                .or_else(|| {
                    ids.iter()
                        .min_by_key(|id| self.tracked.get(*id).map(|t| t.received_at))
                })
                .cloned();
            if let Some(id) = chosen {
                let mut republished = false;
                if let Some(t) = self.tracked.get_mut(&id)
                    && t.own
                    && t.last_broadcast
                        .is_none_or(|b| elapsed(b, now) >= self.cfg.republish_after)
                {
                    t.last_broadcast = Some(now);
                    out.push(Effect::Publish(Outbound::Propose(t.proposal.clone())));
                    c.proposals_republished += 1;
                    republished = true;
                }
                if !already_voted.contains(&id) {
                    self.vote_own(&id, now, m, c, out);
                }
                return if republished {
                    ProposeOutcome::Republished(id)
                } else {
                    ProposeOutcome::Revoted(id)
                };
            }
        }
        if self.tracked.len() >= self.cfg.max_proposals {
            c.refused_proposals += 1;
            return ProposeOutcome::Refused;
        }
        let id = self.ids.next_id();
        let proposal = Proposal {
            id: id.clone(),
            sender_node_id: self.me.clone(),
            check_type: key.check_type.clone(),
            check_name: key.check_name.clone(),
            member_name: key.member_name.clone(),
            domain_name: key.domain_name.clone(),
            endpoint: key.endpoint.clone(),
            proposed_status: status,
            error_text,
            data,
            is_ipv6: key.is_ipv6,
            timestamp: WireTime::from_utc(now),
        };
        c.proposals_created += 1;
        out.push(Effect::Publish(Outbound::Propose(proposal.clone())));
        self.track(proposal, true, now);
        self.apply_pending(&id, m, now, c, out);
        self.vote_own(&id, now, m, c, out);
        ProposeOutcome::Created(id)
    }

    /// Proposes again every local observation that differs from the official result. The
    /// Go monitor does this implicitly by re-running its checks; it is what repairs a
    /// decision that was lost (a dropped finalize, a reconnect).
    pub fn reconcile(
        &mut self,
        now: Now,
        m: &Membership,
        c: &mut Counters,
        out: &mut Vec<Effect>,
    ) -> usize {
        // Results no longer refreshed (a check removed from the config, a member gone) stay
        // readable, as the Go monitor keeps them, but are not proposed over and over.
        let fresh = self.cfg.stale_local_after;
        let differing: Vec<(CheckKey, Local)> = self
            .local
            .iter()
            .filter(|(k, l)| {
                k.typed().is_some()
                    && elapsed(l.observed_at, now) < fresh
                    && self.known.as_ref().is_none_or(|kn| kn.knows(k))
                    && self.official.get(*k).is_none_or(|o| o.status != l.status)
            })
            .map(|(k, l)| (k.clone(), l.clone()))
            .collect();
        let n = differing.len();
        for (key, l) in differing {
            let obs = Observation {
                key,
                status: l.status,
                error_text: l.error_text,
                data: l.data,
            };
            self.propose(obs, now, m, c, out);
        }
        n
    }

    fn track(&mut self, proposal: Proposal, own: bool, now: Now) {
        let id = proposal.id.clone();
        let next_timeout = after(now, self.cfg.proposal_timeout);
        self.by_key
            .entry((CheckKey::of(&proposal), proposal.proposed_status))
            .or_default()
            .insert(id.clone());
        self.timeouts.insert((next_timeout, id.clone()));
        self.tracked.insert(
            id,
            Tracked {
                proposal,
                received_at: now,
                votes: BTreeMap::new(),
                timeouts: 0,
                next_timeout,
                own,
                last_broadcast: own.then_some(now),
            },
        );
    }

    fn untrack(&mut self, id: &str) -> Option<Tracked> {
        let t = self.tracked.remove(id)?;
        let pkey = (CheckKey::of(&t.proposal), t.proposal.proposed_status);
        if let Some(set) = self.by_key.get_mut(&pkey) {
            set.remove(id);
            if set.is_empty() {
                self.by_key.remove(&pkey);
            }
        }
        self.timeouts.remove(&(t.next_timeout, id.to_string()));
        Some(t)
    }

    fn mark_decided(&mut self, id: &str, passed: bool, seen_at: Option<Now>, now: Now) {
        if self.decided.len() >= self.cfg.max_decided
            && let Some((_, old)) = self.decided_order.pop_front()
        {
            self.decided.remove(&old);
        }
        self.held.remove(id);
        let seen = seen_at.or_else(|| self.decided.get(id).and_then(|d| d.1));
        if self
            .decided
            .insert(id.to_string(), (passed, seen))
            .is_none()
        {
            self.decided_order.push_back((now, id.to_string()));
        }
    }

    /// Whether a finalize for `id` with `passed` adds nothing: the ID was decided with the
    /// same outcome, or it already passed. (A pass after a fail still counts, as it does
    /// for Go nodes, which apply every passed finalize.)
    /// Whether a vote (`finalize_passed` `None`) or finalize on proposal `id` can change
    /// nothing here: the proposal is decided (for a finalize: as passed, or as failed and
    /// the finalize says failed too). Such messages need no signature check.
    pub fn is_moot(&self, id: &str, finalize_passed: Option<bool>) -> bool {
        match finalize_passed {
            None => self.decided.contains_key(id),
            Some(p) => self.already_decided(id, p),
        }
    }

    fn already_decided(&self, id: &str, passed: bool) -> bool {
        self.decided.get(id).is_some_and(|d| d.0 || !passed)
    }

    /// When this node first saw proposal `id`, if it ever did (tracked, decided or expired).
    fn first_seen(&self, id: &str) -> Option<Now> {
        self.tracked
            .get(id)
            .map(|t| t.received_at)
            .or_else(|| self.decided.get(id).and_then(|d| d.1))
            .or_else(|| self.expired_seen.get(id).copied())
    }

    /// Whether passed finalizes must be backed by votes this node saw itself before they
    /// are applied: with a quorum floor, or when trust is enforced.
    fn tally_required(&self) -> bool {
        self.cfg.tally_required()
    }

    /// Agreeing votes of active monitors this node holds for `id` (tracked or buffered),
    /// and how many it would need to decide itself.
    pub fn backing(&self, id: &str, now: Now, m: &Membership) -> (usize, usize) {
        let need = self.majority(m.count_active(Role::Monitor, now));
        let mut voters: BTreeSet<&str> = BTreeSet::new();
        if let Some(t) = self.tracked.get(id) {
            voters.extend(
                t.votes
                    .iter()
                    .filter(|(v, a)| **a && m.is_active_monitor(v, now))
                    .map(|(v, _)| v.as_str()),
            );
        }
        if let Some(b) = self.pending.get(id) {
            voters.extend(
                b.votes
                    .iter()
                    .filter(|(v, (a, _))| *a && m.is_active_monitor(v, now))
                    .map(|(v, _)| v.as_str()),
            );
        }
        (voters.len(), need)
    }

    /// Replaces what this node knows (its member list and checks); `None` accepts any.
    pub fn set_known(&mut self, known: Option<Known>) {
        self.known = known;
    }

    fn knows(&self, key: &CheckKey) -> bool {
        self.known.as_ref().is_none_or(|k| k.knows(key))
    }

    // ----- received messages ----------------------------------------------------------

    /// Handles a received proposal.
    pub fn on_proposal(
        &mut self,
        p: Proposal,
        now: Now,
        m: &Membership,
        c: &mut Counters,
        out: &mut Vec<Effect>,
    ) {
        if p.id.is_empty() {
            c.invalid_messages += 1;
            return;
        }
        if self.tracked.contains_key(&p.id) || self.decided.contains_key(&p.id) {
            c.duplicate_proposals += 1;
            return;
        }
        if !self.knows(&CheckKey::of(&p)) {
            c.unknown_checks += 1;
            return;
        }
        if self.tracked.len() >= self.cfg.max_proposals {
            c.refused_proposals += 1;
            return;
        }
        let id = p.id.clone();
        self.track(p, false, now);
        self.apply_pending(&id, m, now, c, out);
        self.vote_own(&id, now, m, c, out);
    }

    /// Handles a received vote: counted if its proposal is tracked, buffered if the
    /// proposal has not arrived yet, ignored if it was already decided.
    pub fn on_vote(
        &mut self,
        v: Vote,
        now: Now,
        m: &Membership,
        c: &mut Counters,
        out: &mut Vec<Effect>,
    ) {
        if v.proposal_id.is_empty() || v.node_id.is_empty() || v.node_id == self.me {
            c.invalid_messages += 1;
            return;
        }
        if self.decided.contains_key(&v.proposal_id) {
            c.late_votes += 1;
            return;
        }
        if let Some(t) = self.tracked.get_mut(&v.proposal_id) {
            if t.votes.len() >= self.cfg.max_nodes && !t.votes.contains_key(&v.node_id) {
                c.refused_pending_votes += 1;
                return;
            }
            t.votes.insert(v.node_id, v.agree);
            let id = v.proposal_id;
            self.settle(&id, now, m, c, out);
            return;
        }
        if !self.pending.contains_key(&v.proposal_id)
            && self.pending.len() >= self.cfg.max_pending_buckets
        {
            c.refused_pending_votes += 1;
            return;
        }
        let id = v.proposal_id.clone();
        let bucket = self
            .pending
            .entry(v.proposal_id)
            .or_insert_with(|| PendingBucket {
                votes: BTreeMap::new(),
            });
        if bucket.votes.len() >= self.cfg.max_nodes && !bucket.votes.contains_key(&v.node_id) {
            c.refused_pending_votes += 1;
            return;
        }
        bucket.votes.insert(v.node_id, (v.agree, now));
        c.buffered_votes += 1;
        self.release_held(&id, now, m, c, out);
    }

    /// Concludes a tracked proposal if its votes allow: a finalize already here and now
    /// backed is applied as received (as a Go monitor applies a finalize) before this
    /// node would decide the same itself. Both need the same agreeing votes, and deciding
    /// would publish one more finalize of a decision the cluster already has. Returns
    /// whether the proposal is concluded.
    fn settle(
        &mut self,
        id: &str,
        now: Now,
        m: &Membership,
        c: &mut Counters,
        out: &mut Vec<Effect>,
    ) -> bool {
        self.release_held(id, now, m, c, out);
        !self.tracked.contains_key(id) || self.decide(id, now, m, c, out)
    }

    /// Whether `p` claims the ID of a tracked proposal but another check or status.
    fn differs_from_tracked(&self, p: &Proposal) -> bool {
        self.tracked.get(&p.id).is_some_and(|t| {
            CheckKey::of(&t.proposal) != CheckKey::of(p)
                || t.proposal.proposed_status != p.proposed_status
        })
    }

    /// Applies a held finalize once the votes behind it are here.
    fn release_held(
        &mut self,
        id: &str,
        now: Now,
        m: &Membership,
        c: &mut Counters,
        out: &mut Vec<Effect>,
    ) {
        if !self.held.contains_key(id) {
            return;
        }
        // Votes name only a proposal ID: a finalize backed by them must be about the
        // proposal they were cast on, or one trusted monitor could pair honest votes with
        // another check or status of its own under the same ID.
        if self
            .held
            .get(id)
            .is_some_and(|h| self.differs_from_tracked(&h.finalize.proposal))
        {
            self.held.remove(id);
            c.finalizes_mismatched += 1;
            return;
        }
        let (yes, need) = self.backing(id, now, m);
        if yes >= need
            && let Some(mut h) = self.held.remove(id)
        {
            c.finalizes_released += 1;
            // Dated by this node's clock, as its own decision would be: it decided when
            // it held the votes, whatever the finalizer's clock says.
            h.finalize.decided_at = WireTime::from_utc(now);
            self.apply_finalize(h.finalize, now, c, out);
        }
    }

    /// Handles a received finalize: forget the proposal, apply it if it passed. With a
    /// quorum floor (or trust enforced), a passed finalize is applied only once this node
    /// holds the agreeing votes of active monitors it would need to decide itself; until
    /// then (a short grace for votes still in flight) it is held, and then dropped.
    pub fn on_finalize(
        &mut self,
        f: FinalizeMessage,
        now: Now,
        m: &Membership,
        c: &mut Counters,
        out: &mut Vec<Effect>,
    ) {
        let id = f.proposal.id.clone();
        if id.is_empty() {
            c.invalid_messages += 1;
            return;
        }
        if f.passed && !self.knows(&CheckKey::of(&f.proposal)) {
            c.unknown_checks += 1;
            return;
        }
        if f.passed && self.tally_required() && !self.already_decided(&id, true) {
            if self.differs_from_tracked(&f.proposal) {
                c.finalizes_mismatched += 1;
                return;
            }
            let (yes, need) = self.backing(&id, now, m);
            if yes < need {
                if !self.held.contains_key(&id) {
                    if self.held.len() >= self.cfg.max_pending_buckets {
                        c.refused_pending_votes += 1;
                        return;
                    }
                    c.finalizes_held += 1;
                    self.held.insert(
                        id,
                        Held {
                            finalize: f,
                            until: after(now, self.cfg.finalize_grace),
                        },
                    );
                }
                return;
            }
        }
        self.apply_finalize(f, now, c, out);
    }

    fn apply_finalize(
        &mut self,
        f: FinalizeMessage,
        now: Now,
        c: &mut Counters,
        out: &mut Vec<Effect>,
    ) {
        let id = f.proposal.id.clone();
        // A proposal this node never saw is ordered by the arrival of its finalize: the
        // node orders decisions by when it learned of them, never by proposers' clocks.
        let known_since = self.first_seen(&id);
        let seen_at = Some(known_since.unwrap_or(now));
        let learned_late = known_since.is_none();
        let tracked = self.untrack(&id);
        self.pending.remove(&id);
        if self.already_decided(&id, f.passed) {
            c.duplicate_finalizes += 1;
            return;
        }
        self.mark_decided(&id, f.passed, seen_at, now);
        c.decisions_received += 1;
        let applied = f.passed
            && self.apply_official(
                &f.proposal,
                seen_at,
                learned_late,
                f.decided_at,
                now,
                c,
                out,
            );
        if f.passed {
            c.decisions_passed += 1;
        } else {
            c.decisions_failed += 1;
        }
        out.push(Effect::Decided(Decision {
            finalizer: f.finalizer().to_string(),
            passed: f.passed,
            decided_at: f.decided_at,
            by_self: false,
            applied,
            latency: tracked.as_ref().map(|t| elapsed(t.received_at, now)),
            tally: None,
            votes: tracked.map(|t| t.votes),
            proposal: f.proposal,
        }));
    }

    fn apply_pending(
        &mut self,
        id: &str,
        m: &Membership,
        now: Now,
        c: &mut Counters,
        out: &mut Vec<Effect>,
    ) {
        let Some(bucket) = self.pending.remove(id) else {
            return;
        };
        if let Some(t) = self.tracked.get_mut(id) {
            for (node, (agree, _)) in bucket.votes {
                t.votes.insert(node, agree);
            }
        }
        self.settle(id, now, m, c, out);
    }

    /// Votes from the local observation, records the vote at once (no echo), publishes it.
    fn vote_own(
        &mut self,
        id: &str,
        now: Now,
        m: &Membership,
        c: &mut Counters,
        out: &mut Vec<Effect>,
    ) {
        if m.role() != Role::Monitor {
            return;
        }
        let Some(t) = self.tracked.get_mut(id) else {
            return;
        };
        let key = CheckKey::of(&t.proposal);
        if key.typed().is_none() {
            return;
        }
        let Some(local) = self.local.get(&key) else {
            return;
        };
        let agree = local.status == t.proposal.proposed_status;
        t.votes.insert(self.me.clone(), agree);
        out.push(Effect::Publish(Outbound::Vote(Vote {
            proposal_id: id.to_string(),
            sender_node_id: self.me.clone(),
            node_id: self.me.clone(),
            agree,
            timestamp: WireTime::from_utc(now),
        })));
        self.settle(id, now, m, c, out);
    }

    /// The number of votes a decision needs with `total` active monitors.
    pub fn majority(&self, total: usize) -> usize {
        self.cfg.majority(total)
    }

    /// Counts the votes of active monitors; finalizes if a side has the majority.
    fn decide(
        &mut self,
        id: &str,
        now: Now,
        m: &Membership,
        c: &mut Counters,
        out: &mut Vec<Effect>,
    ) -> bool {
        if m.role() != Role::Monitor {
            return false;
        }
        let Some(t) = self.tracked.get(id) else {
            return false;
        };
        let total = m.count_active(Role::Monitor, now);
        if total < self.cfg.min_active_monitors {
            return false;
        }
        let maj = self.majority(total);
        let (mut yes, mut no) = (0, 0);
        for (voter, agree) in &t.votes {
            if m.is_active_monitor(voter, now) {
                if *agree {
                    yes += 1;
                } else {
                    no += 1;
                }
            }
        }
        let passed = if yes >= maj {
            true
        } else if no >= maj {
            false
        } else {
            return false;
        };
        self.finalize_own(id, passed, Some((yes, no)), now, c, out);
        true
    }

    fn finalize_own(
        &mut self,
        id: &str,
        passed: bool,
        tally: Option<(usize, usize)>,
        now: Now,
        c: &mut Counters,
        out: &mut Vec<Effect>,
    ) {
        let Some(t) = self.untrack(id) else { return };
        self.pending.remove(id);
        self.mark_decided(id, passed, Some(t.received_at), now);
        let decided_at = WireTime::from_utc(now);
        out.push(Effect::Publish(Outbound::Finalize(FinalizeMessage {
            proposal: t.proposal.clone(),
            sender_node_id: self.me.clone(),
            passed,
            decided_at,
        })));
        let applied = passed
            && self.apply_official(
                &t.proposal,
                Some(t.received_at),
                false,
                decided_at,
                now,
                c,
                out,
            );
        c.decisions_by_self += 1;
        if passed {
            c.decisions_passed += 1;
        } else {
            c.decisions_failed += 1;
        }
        out.push(Effect::Decided(Decision {
            finalizer: self.me.clone(),
            passed,
            decided_at,
            by_self: true,
            applied,
            latency: Some(elapsed(t.received_at, now)),
            tally,
            votes: Some(t.votes),
            proposal: t.proposal,
        }));
    }

    /// Makes a passed proposal the official result, unless a newer decision already is.
    #[allow(clippy::too_many_arguments)]
    fn apply_official(
        &mut self,
        p: &Proposal,
        seen_at: Option<Now>,
        learned_late: bool,
        decided_at: WireTime,
        now: Now,
        c: &mut Counters,
        out: &mut Vec<Effect>,
    ) -> bool {
        let key = CheckKey::of(p);
        if key.typed().is_none() {
            return false;
        }
        let previous = self.official.get(&key);
        if let Some(cur) = previous {
            if cur.proposal.id == p.id {
                return false;
            }
            // Only this node's own order counts, never the proposers' clocks (a fast or
            // forged clock would otherwise block every later decision). A proposal this node
            // never tracked is ordered by its arrival: a duplicate of a decision it already
            // knew never gets here (the decided set stops it first).
            let stale = if cur.restored && learned_late {
                // A result restored from disk against a finalize for a proposal this process
                // never saw (e.g. a v0.6.12 retry after a restart): the proposers' clocks are
                // all there is to order them by. (Between two decisions of this process they
                // never are: a forged future timestamp would block the check.)
                !p.timestamp.is_zero()
                    && !cur.proposal.timestamp.is_zero()
                    && p.timestamp.instant() < cur.proposal.timestamp.instant()
            } else {
                matches!((seen_at, cur.seen_at), (Some(new), Some(old)) if new < old)
            };
            if stale {
                c.stale_decisions += 1;
                return false;
            }
        }
        if previous.is_none() && self.official.len() >= self.cfg.max_results {
            c.refused_results += 1;
            return false;
        }
        let flipped = previous.is_none_or(|o| o.status != p.proposed_status);
        self.official.insert(
            key.clone(),
            Official {
                status: p.proposed_status,
                proposal: p.clone(),
                seen_at,
                restored: false,
                applied_at: now,
            },
        );
        out.push(Effect::ApplyOfficial(OfficialChange {
            key,
            status: p.proposed_status,
            flipped,
            proposal: p.clone(),
            decided_at,
        }));
        true
    }

    /// Restores a local observation persisted before a restart, with the time it was made
    /// (no effects: nothing is proposed or voted).
    pub fn restore_local(&mut self, obs: Observation, observed_at: Now) {
        if self.local.len() >= self.cfg.max_results && !self.local.contains_key(&obs.key) {
            return;
        }
        self.local.insert(
            obs.key,
            Local {
                status: obs.status,
                error_text: obs.error_text,
                data: obs.data,
                observed_at,
            },
        );
    }

    /// Restores an official result persisted before a restart (no effects). Its proposal
    /// counts as decided from `now` on, so a late repeat of that decision (a v0.6.12 monitor
    /// retrying it) cannot be applied again over a newer one.
    pub fn restore_official(&mut self, proposal: Proposal, applied_at: Now, now: Now) {
        if !proposal.id.is_empty() {
            self.mark_decided(&proposal.id, true, Some(now), now);
        }
        let key = CheckKey::of(&proposal);
        if self.official.len() >= self.cfg.max_results && !self.official.contains_key(&key) {
            return;
        }
        self.official.insert(
            key,
            Official {
                status: proposal.proposed_status,
                proposal,
                seen_at: None,
                restored: true,
                applied_at,
            },
        );
    }

    // ----- time -----------------------------------------------------------------------

    /// Handles due timeouts and garbage collection.
    pub fn tick(&mut self, now: Now, m: &Membership, c: &mut Counters, out: &mut Vec<Effect>) {
        let unbacked: Vec<String> = self
            .held
            .iter()
            .filter(|(_, h)| h.until <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in unbacked {
            let (yes, need) = self.backing(&id, now, m);
            if let Some(h) = self.held.remove(&id) {
                if yes >= need {
                    c.finalizes_released += 1;
                    self.apply_finalize(h.finalize, now, c, out);
                } else {
                    c.finalizes_unbacked += 1;
                    out.push(Effect::FinalizeRefused {
                        proposal: h.finalize.proposal,
                        finalizer: h.finalize.sender_node_id,
                        agreeing: yes,
                        needed: need,
                    });
                }
            }
        }
        while let Some((at, id)) = self.timeouts.first().cloned() {
            if at > now {
                break;
            }
            self.timeouts.remove(&(at, id.clone()));
            self.on_timeout(&id, now, m, c, out);
        }
        match self.next_gc {
            Some(at) if at > now => {}
            _ => {
                self.next_gc = Some(after(now, self.cfg.gc_interval));
                self.gc(now, c);
            }
        }
    }

    fn on_timeout(
        &mut self,
        id: &str,
        now: Now,
        m: &Membership,
        c: &mut Counters,
        out: &mut Vec<Effect>,
    ) {
        let Some(t) = self.tracked.get_mut(id) else {
            return;
        };
        t.timeouts += 1;
        let timeouts = t.timeouts;
        if self.settle(id, now, m, c, out) {
            return;
        }
        if m.role() != Role::Monitor {
            return;
        }
        if m.count_active(Role::Monitor, now) == 0 || timeouts >= self.cfg.max_timeouts {
            self.finalize_own(id, false, None, now, c, out);
            return;
        }
        let next = after(now, self.cfg.proposal_timeout);
        if let Some(t) = self.tracked.get_mut(id) {
            t.next_timeout = next;
            self.timeouts.insert((next, id.to_string()));
        }
    }

    fn gc(&mut self, now: Now, c: &mut Counters) {
        let ttl = self.cfg.proposal_ttl;
        let expired: Vec<String> = self
            .tracked
            .iter()
            .filter(|(_, t)| elapsed(t.received_at, now) >= ttl)
            .map(|(id, _)| id.clone())
            .collect();
        for id in expired {
            if let Some(t) = self.untrack(&id) {
                if self.expired_seen.len() >= self.cfg.max_decided
                    && let Some((_, old)) = self.expired_order.pop_front()
                {
                    self.expired_seen.remove(&old);
                }
                self.expired_seen.insert(id.clone(), t.received_at);
                self.expired_order.push_back((now, id));
            }
            c.expired_proposals += 1;
        }
        while let Some((at, _)) = self.expired_order.front() {
            if elapsed(*at, now) < self.cfg.decided_ttl {
                break;
            }
            if let Some((_, id)) = self.expired_order.pop_front() {
                self.expired_seen.remove(&id);
            }
        }
        let vttl = self.cfg.buffered_vote_ttl;
        self.pending.retain(|_, b| {
            let before = b.votes.len();
            b.votes.retain(|_, (_, at)| elapsed(*at, now) < vttl);
            c.expired_votes += (before - b.votes.len()) as u64;
            !b.votes.is_empty()
        });
        let dttl = self.cfg.decided_ttl;
        while let Some((at, _)) = self.decided_order.front() {
            if elapsed(*at, now) < dttl {
                break;
            }
            if let Some((_, id)) = self.decided_order.pop_front() {
                self.decided.remove(&id);
            }
        }
    }

    /// Forgets removed nodes' votes on tracked proposals and their buffered votes.
    pub fn forget_nodes(&mut self, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        for t in self.tracked.values_mut() {
            for id in ids {
                t.votes.remove(id);
            }
        }
        self.pending.retain(|_, b| {
            for id in ids {
                b.votes.remove(id);
            }
            !b.votes.is_empty()
        });
    }

    /// Re-evaluates every tracked proposal (after the number of active monitors dropped).
    pub fn reevaluate(
        &mut self,
        now: Now,
        m: &Membership,
        c: &mut Counters,
        out: &mut Vec<Effect>,
    ) {
        let ids: Vec<String> = self.tracked.keys().cloned().collect();
        for id in ids {
            self.settle(&id, now, m, c, out);
        }
    }

    /// When [`Consensus::tick`] is next needed.
    pub fn next_deadline(&self) -> Option<Now> {
        let timeout = self.timeouts.first().map(|(at, _)| *at);
        let held = self.held.values().map(|h| h.until).min();
        [timeout, self.next_gc, held].into_iter().flatten().min()
    }

    // ----- views ----------------------------------------------------------------------

    /// Tracked proposals, by ID.
    pub fn tracked(&self) -> &BTreeMap<String, Tracked> {
        &self.tracked
    }

    /// Number of buffered-vote buckets.
    pub fn pending_buckets(&self) -> usize {
        self.pending.len()
    }

    /// Number of passed finalizes held for their votes.
    pub fn held_len(&self) -> usize {
        self.held.len()
    }

    /// Number of remembered decided IDs.
    pub fn decided_len(&self) -> usize {
        self.decided.len()
    }

    /// Official results.
    pub fn official(&self) -> &BTreeMap<CheckKey, Official> {
        &self.official
    }

    /// Local observations.
    pub fn local(&self) -> &BTreeMap<CheckKey, Local> {
        &self.local
    }

    /// The configured proposal timeout.
    pub fn proposal_timeout(&self) -> Duration {
        self.cfg.proposal_timeout
    }
}
