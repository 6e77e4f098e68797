//! Catching up from the cluster (an extension; Go monitors have no such thing). A monitor
//! that was down, stopped or cut off has missed decisions: its file gives back what it had,
//! not what the others decided meanwhile. It asks the other monitors for their official
//! results and takes one only when as many active monitors as a decision needs (majority,
//! floor included) report the same official status — no single monitor can make it adopt
//! anything — and only when it holds nothing newer for that check.

use std::collections::{BTreeMap, BTreeSet};

use ibp_wire::{FinalizeMessage, Proposal, Role, WireTime};

use super::Consensus;
use crate::check::CheckKey;
use crate::membership::Membership;
use crate::time::Now;
use crate::{Counters, Effect};

/// The official results at least `need` distinct repliers that `counts` agree on, one per
/// check (the passed ones only), in check order.
///
/// Repliers agree when they hold the same status, not necessarily through the same
/// proposal: monitors that see a change at the same moment each propose it, several of
/// those proposals pass, and each monitor keeps whichever it applied first (a later one
/// with the same status changes nothing). Requiring one proposal ID would leave such a
/// check, split two and two, to nobody. The status is what a quorum vouches for; of the
/// agreeing proposals the one most of them hold is taken, on a tie the oldest (a replier
/// cannot date a decision ahead to hold back newer ones), then the smallest ID.
pub fn attested(
    replies: &BTreeMap<String, Vec<FinalizeMessage>>,
    need: usize,
    counts: impl Fn(&str) -> bool,
) -> Vec<Proposal> {
    type Held<'a> = (BTreeSet<&'a str>, BTreeMap<&'a str, (&'a Proposal, usize)>);
    let mut by_status: BTreeMap<(CheckKey, bool), Held<'_>> = BTreeMap::new();
    for (replier, results) in replies {
        if !counts(replier) {
            continue;
        }
        // One report per check and replier: a replier listing a check twice counts once.
        let mut seen: BTreeSet<CheckKey> = BTreeSet::new();
        for f in results
            .iter()
            .filter(|f| f.passed && !f.proposal.id.is_empty())
        {
            let key = CheckKey::of(&f.proposal);
            if !seen.insert(key.clone()) {
                continue;
            }
            let (by, proposals) = by_status
                .entry((key, f.proposal.proposed_status))
                .or_default();
            by.insert(replier.as_str());
            proposals
                .entry(f.proposal.id.as_str())
                .or_insert((&f.proposal, 0))
                .1 += 1;
        }
    }
    by_status
        .into_values()
        .filter(|(by, _)| by.len() >= need.max(1))
        .filter_map(|(_, proposals)| {
            proposals
                .into_values()
                .min_by(|(a, na), (b, nb)| {
                    nb.cmp(na)
                        .then(a.timestamp.instant().cmp(&b.timestamp.instant()))
                        .then(a.id.cmp(&b.id))
                })
                .map(|(p, _)| p.clone())
        })
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
        self.official.values().map(|o| self.synced(o)).collect()
    }

    /// One page of [`Consensus::sync_snapshot`] in check order: at most `limit` results
    /// for checks after `after`, and whether more follow. A peer pulls page by page, so a
    /// node catching up (perhaps just cut off as a slow consumer) never has every monitor's
    /// whole answer in flight at once.
    pub fn sync_page(
        &self,
        after: Option<&CheckKey>,
        limit: usize,
    ) -> (Vec<(CheckKey, FinalizeMessage)>, bool) {
        use std::ops::Bound;
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut page: Vec<(CheckKey, FinalizeMessage)> = self
            .official
            .range((from, Bound::Unbounded))
            .take(limit.max(1) + 1)
            .map(|(k, o)| (k.clone(), self.synced(o)))
            .collect();
        let more = page.len() > limit.max(1);
        page.truncate(limit.max(1));
        (page, more)
    }

    fn synced(&self, o: &super::Official) -> FinalizeMessage {
        FinalizeMessage {
            proposal: o.proposal.clone(),
            sender_node_id: self.me.clone(),
            passed: true,
            decided_at: WireTime::from_utc(o.applied_at),
        }
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
