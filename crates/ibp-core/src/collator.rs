//! The collator's proposal and vote cache (protocol §5, storage §3): it never votes, it only
//! remembers who voted how, so an outage can be recorded with its votes.
//!
//! Fixes over the reference: entries age by local receive time (D13), the cache is
//! bounded, and a decision is reported once — duplicate finalizes from the other monitors
//! never overwrite the votes of the first (D3). A decision is reported a short grace after
//! its first finalize, so a vote handled just after its voter's finalize still counts.

use std::collections::{BTreeMap, VecDeque};

use ibp_wire::{FinalizeMessage, Proposal, Vote};

use crate::time::{Now, after, elapsed};
use crate::{CoreConfig, Counters, Decision, Effect};

#[derive(Debug, Clone)]
struct Entry {
    proposal: Option<Proposal>,
    votes: BTreeMap<String, bool>,
    created_at: Now,
}

/// One cache entry as shown to operators.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CachedProposal {
    /// The proposal ID.
    pub id: String,
    /// The proposal, unless only votes arrived so far (a stub).
    pub proposal: Option<Proposal>,
    /// Votes by voter.
    pub votes: BTreeMap<String, bool>,
    /// Local time the entry was created.
    pub cached_at: Now,
}

/// Counts the votes behind a decision: `(agreeing votes of active monitors, needed)`.
pub type Backing<'a> = dyn Fn(&BTreeMap<String, bool>) -> (usize, usize) + 'a;

/// The collator cache.
#[derive(Debug)]
pub struct VoteCache {
    ttl: std::time::Duration,
    janitor_interval: std::time::Duration,
    cap: usize,
    max_voters: usize,
    entries: BTreeMap<String, Entry>,
    finalized: BTreeMap<String, bool>,
    finalized_order: VecDeque<(Now, String)>,
    next_janitor: Option<Now>,
    grace: std::time::Duration,
    /// Decisions waiting out the vote grace: proposal ID → (report at, finalize, received at).
    closing: BTreeMap<String, (Now, FinalizeMessage, Now)>,
}

impl VoteCache {
    /// A cache with the reference lifetime (10 min) and janitor period (30 s), capped at
    /// `cfg.max_proposals` entries.
    pub fn new(cfg: &CoreConfig) -> VoteCache {
        VoteCache {
            ttl: cfg.proposal_ttl,
            janitor_interval: std::time::Duration::from_secs(30),
            cap: cfg.max_proposals,
            max_voters: cfg.max_nodes,
            entries: BTreeMap::new(),
            finalized: BTreeMap::new(),
            finalized_order: VecDeque::new(),
            next_janitor: None,
            grace: cfg.collator_vote_grace,
            closing: BTreeMap::new(),
        }
    }

    /// Caches a proposal, merging with a stub created by an earlier vote.
    pub fn on_proposal(&mut self, p: Proposal, now: Now, c: &mut Counters) {
        if p.id.is_empty() {
            c.invalid_messages += 1;
            return;
        }
        if self.finalized.contains_key(&p.id) {
            c.duplicate_proposals += 1;
            return;
        }
        if let Some(e) = self.entries.get_mut(&p.id) {
            e.proposal = Some(p);
            return;
        }
        if self.entries.len() >= self.cap {
            c.refused_proposals += 1;
            return;
        }
        self.entries.insert(
            p.id.clone(),
            Entry {
                proposal: Some(p),
                votes: BTreeMap::new(),
                created_at: now,
            },
        );
    }

    /// Records a vote (last vote per voter wins); creates a stub if the proposal is unknown.
    pub fn on_vote(&mut self, v: Vote, now: Now, c: &mut Counters) {
        if v.proposal_id.is_empty() || v.node_id.is_empty() {
            c.invalid_messages += 1;
            return;
        }
        if self.finalized.contains_key(&v.proposal_id) && !self.closing.contains_key(&v.proposal_id)
        {
            c.late_votes += 1;
            return;
        }
        if !self.entries.contains_key(&v.proposal_id) && self.entries.len() >= self.cap {
            c.refused_pending_votes += 1;
            return;
        }
        let e = self.entries.entry(v.proposal_id).or_insert_with(|| Entry {
            proposal: None,
            votes: BTreeMap::new(),
            created_at: now,
        });
        if e.votes.len() < self.max_voters || e.votes.contains_key(&v.node_id) {
            e.votes.insert(v.node_id, v.agree);
        } else {
            c.refused_pending_votes += 1;
        }
    }

    /// Handles a finalize. The first one of a decision starts the vote grace; the decision
    /// is reported by [`VoteCache::tick`] once it is over, with every vote cached by then.
    /// Repeats are counted and ignored. A passed finalize after a failed one still counts.
    pub fn on_finalize(&mut self, f: FinalizeMessage, now: Now, c: &mut Counters) {
        let id = f.proposal.id.clone();
        if id.is_empty() {
            c.invalid_messages += 1;
            return;
        }
        if self
            .finalized
            .get(&id)
            .is_some_and(|passed| *passed || !f.passed)
        {
            c.duplicate_finalizes += 1;
            return;
        }
        if self.finalized.insert(id.clone(), f.passed).is_none() {
            self.finalized_order.push_back((now, id.clone()));
        }
        c.decisions_received += 1;
        if f.passed {
            c.decisions_passed += 1;
        } else {
            c.decisions_failed += 1;
        }
        self.closing.insert(id, (after(now, self.grace), f, now));
    }

    /// Removes and returns what is cached for a proposal (the durable path, which reads
    /// finalizes from a stream instead of [`VoteCache::on_finalize`]).
    pub fn take(&mut self, id: &str) -> Option<(Option<Proposal>, BTreeMap<String, bool>)> {
        self.entries.remove(id).map(|e| (e.proposal, e.votes))
    }

    fn report(&mut self, f: FinalizeMessage, received: Now) -> Decision {
        let entry = self.entries.remove(&f.proposal.id);
        Decision {
            finalizer: f.finalizer().to_string(),
            passed: f.passed,
            decided_at: f.decided_at,
            by_self: false,
            applied: false,
            latency: entry.as_ref().map(|e| elapsed(e.created_at, received)),
            tally: None,
            votes: entry.map(|e| e.votes),
            proposal: f.proposal,
        }
    }

    /// Reports, before their grace is over, the decisions that need nothing more: all of
    /// them without `backing`, else those a failed finalize closed or whose cached votes
    /// already back them. (A DNS node applies decisions at once; the collator waits the
    /// grace so its outage records carry every vote.)
    pub fn release_ready(&mut self, backing: Option<&Backing<'_>>) -> Vec<Effect> {
        let ready: Vec<String> = self
            .closing
            .iter()
            .filter(|(id, (_, f, _))| match backing {
                None => true,
                Some(_) if !f.passed => true,
                Some(check) => {
                    let empty = BTreeMap::new();
                    let votes = self.entries.get(*id).map(|e| &e.votes).unwrap_or(&empty);
                    let (yes, need) = check(votes);
                    yes >= need
                }
            })
            .map(|(id, _)| id.clone())
            .collect();
        let mut out = Vec::with_capacity(ready.len());
        for id in ready {
            if let Some((_, f, received)) = self.closing.remove(&id) {
                out.push(Effect::Decided(self.report(f, received)));
            }
        }
        out
    }

    /// Reports decisions whose vote grace is over; every 30 s drops entries older than the
    /// lifetime (local time) and forgets old decisions. With `backing` set (a quorum floor,
    /// enforced trust), a passed decision is reported only if the cached agreeing votes of
    /// active monitors reach what the cluster needs; otherwise it is refused.
    pub fn tick(
        &mut self,
        now: Now,
        backing: Option<&Backing<'_>>,
        c: &mut Counters,
    ) -> Vec<Effect> {
        let due: Vec<String> = self
            .closing
            .iter()
            .filter(|(_, (at, _, _))| *at <= now)
            .map(|(id, _)| id.clone())
            .collect();
        let mut out = Vec::with_capacity(due.len());
        for id in due {
            if let Some((_, f, received)) = self.closing.remove(&id) {
                let d = self.report(f, received);
                if let (true, Some(check)) = (d.passed, backing) {
                    let empty = BTreeMap::new();
                    let (yes, need) = check(d.votes.as_ref().unwrap_or(&empty));
                    if yes < need {
                        c.finalizes_unbacked += 1;
                        out.push(Effect::FinalizeRefused {
                            finalizer: d.finalizer.clone(),
                            proposal: d.proposal,
                            agreeing: yes,
                            needed: need,
                        });
                        continue;
                    }
                }
                out.push(Effect::Decided(d));
            }
        }
        if self.next_janitor.is_some_and(|at| at > now) {
            return out;
        }
        self.next_janitor = Some(after(now, self.janitor_interval));
        let ttl = self.ttl;
        let before = self.entries.len();
        self.entries.retain(|_, e| elapsed(e.created_at, now) < ttl);
        c.expired_proposals += (before - self.entries.len()) as u64;
        // Decisions are remembered 1.5 × the lifetime: longer than any monitor still tracks them.
        let keep = ttl + ttl / 2;
        while let Some((at, _)) = self.finalized_order.front() {
            if elapsed(*at, now) < keep && self.finalized_order.len() <= self.cap * 4 {
                break;
            }
            if let Some((_, id)) = self.finalized_order.pop_front() {
                self.finalized.remove(&id);
            }
        }
        out
    }

    /// When [`VoteCache::tick`] is next needed.
    pub fn next_deadline(&self) -> Option<Now> {
        let closing = self.closing.values().map(|(at, _, _)| *at).min();
        [self.next_janitor, closing].into_iter().flatten().min()
    }

    /// Number of cached entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Cached proposals with their votes, for the proposals view.
    pub fn snapshot(&self) -> Vec<CachedProposal> {
        self.entries
            .iter()
            .map(|(id, e)| CachedProposal {
                id: id.clone(),
                proposal: e.proposal.clone(),
                votes: e.votes.clone(),
                cached_at: e.created_at,
            })
            .collect()
    }
}
