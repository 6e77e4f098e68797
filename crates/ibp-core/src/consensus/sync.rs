//! Catching up from the cluster (an extension; Go monitors have no such thing). A monitor
//! that was down, stopped or cut off has missed decisions: its file gives back what it had,
//! not what the others decided meanwhile. It asks the other monitors for their official
//! results and takes one only when as many active monitors as a decision needs (majority,
//! floor included) report the very same decision — no single monitor can make it adopt
//! anything — and only when it holds nothing newer for that check.

use std::collections::{BTreeMap, BTreeSet};

use ibp_wire::{FinalizeMessage, Proposal, Role, WireTime};

use super::Consensus;
use crate::check::CheckKey;
use crate::membership::Membership;
use crate::time::Now;
use crate::{Counters, Effect};

/// The decisions reported by at least `need` distinct repliers that `counts`, one per
/// check and proposal (the passed ones only), in check order.
pub fn attested(
    replies: &BTreeMap<String, Vec<FinalizeMessage>>,
    need: usize,
    counts: impl Fn(&str) -> bool,
) -> Vec<Proposal> {
    let mut by_decision: BTreeMap<(CheckKey, String), (Proposal, BTreeSet<&str>)> = BTreeMap::new();
    for (replier, results) in replies {
        if !counts(replier) {
            continue;
        }
        for f in results
            .iter()
            .filter(|f| f.passed && !f.proposal.id.is_empty())
        {
            by_decision
                .entry((CheckKey::of(&f.proposal), f.proposal.id.clone()))
                .or_insert_with(|| (f.proposal.clone(), BTreeSet::new()))
                .1
                .insert(replier.as_str());
        }
    }
    by_decision
        .into_values()
        .filter(|(_, by)| by.len() >= need.max(1))
        .map(|(p, _)| p)
        .collect()
}

/// What [`Consensus::apply_synced`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncOutcome {
    /// Results taken (a quorum attested them and nothing newer was held).
    pub applied: usize,
    /// Decisions a quorum attested but this node did not take: it knew them, held a newer
    /// result, or does not know the check.
    pub skipped: usize,
}

impl Consensus {
    /// This node's official results as finalize messages it sends, for a peer catching up.
    pub fn sync_snapshot(&self) -> Vec<FinalizeMessage> {
        self.official
            .values()
            .map(|o| FinalizeMessage {
                proposal: o.proposal.clone(),
                sender_node_id: self.me.clone(),
                passed: true,
                decided_at: WireTime::from_utc(o.applied_at),
            })
            .collect()
    }

    /// Applies the official results other monitors reported (by replier). A decision is
    /// taken when the active monitors reporting it reach the number of votes a decision
    /// needs now, its check is known, this node has not decided it already, and the result
    /// held for the check is older (by the proposers' clocks, the only clocks the two
    /// decisions share) or was only restored from disk.
    pub fn apply_synced(
        &mut self,
        replies: &BTreeMap<String, Vec<FinalizeMessage>>,
        now: Now,
        m: &Membership,
        c: &mut Counters,
        out: &mut Vec<Effect>,
    ) -> SyncOutcome {
        let mut outcome = SyncOutcome::default();
        if m.role() != Role::Monitor {
            return outcome;
        }
        let need = self.majority(m.count_active(Role::Monitor, now));
        let me = self.me.clone();
        let attested = attested(replies, need, |r| r != me && m.is_active_monitor(r, now));
        for proposal in attested {
            let key = CheckKey::of(&proposal);
            let id = proposal.id.clone();
            let newer_held = self.official.get(&key).is_some_and(|cur| {
                cur.proposal.id == id
                    || (!cur.restored
                        && proposal.timestamp.instant() <= cur.proposal.timestamp.instant())
            });
            if !self.knows(&key) || self.already_decided(&id, true) || newer_held {
                outcome.skipped += 1;
                continue;
            }
            self.mark_decided(&id, true, Some(now), now);
            let decided_at = proposal.timestamp;
            let restored = self.official.get(&key).is_some_and(|cur| cur.restored);
            // Against a restored result the proposers' clocks order the two (see
            // `apply_official`); against nothing, it is simply taken.
            if self.apply_official(&proposal, Some(now), restored, decided_at, now, c, out) {
                c.synced_results += 1;
                outcome.applied += 1;
            } else {
                outcome.skipped += 1;
            }
        }
        outcome
    }
}
