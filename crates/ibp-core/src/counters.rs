//! What the core refused, dropped or ignored, for metrics and logs.

use serde::Serialize;

/// Monotonic counters kept by the core. Everything refused because of a cap is counted
/// here, so operators can see floods instead of silent drops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    /// Messages that decoded but make no sense (empty IDs, mismatched voter, wrong type).
    pub invalid_messages: u64,
    /// Joins carrying this node's own ID (another node is misconfigured with our ID).
    pub node_id_conflicts: u64,
    /// Proposals refused because `max_proposals` were tracked.
    pub refused_proposals: u64,
    /// Votes refused because `max_pending_buckets` buckets existed.
    pub refused_pending_votes: u64,
    /// Nodes refused because `max_nodes` were known.
    pub refused_nodes: u64,
    /// Repeats of a proposal ID already tracked or decided.
    pub duplicate_proposals: u64,
    /// Finalizes of a decision this node already knew.
    pub duplicate_finalizes: u64,
    /// Passed decisions not applied because a newer one was already official.
    pub stale_decisions: u64,
    /// Official results taken from other monitors while catching up (a quorum attested them).
    pub synced_results: u64,
    /// Votes that arrived before their proposal and were buffered.
    pub buffered_votes: u64,
    /// Votes for proposals already decided.
    pub late_votes: u64,
    /// Tracked proposals dropped after `proposal_ttl`.
    pub expired_proposals: u64,
    /// Buffered votes dropped after `buffered_vote_ttl`.
    pub expired_votes: u64,
    /// Proposals created by this node.
    pub proposals_created: u64,
    /// Own proposals republished with their original ID.
    pub proposals_republished: u64,
    /// Decisions reached by this node.
    pub decisions_by_self: u64,
    /// Decisions learned from other nodes' finalizes.
    pub decisions_received: u64,
    /// Decisions (own or received) that passed.
    pub decisions_passed: u64,
    /// Decisions (own or received) that failed.
    pub decisions_failed: u64,
    /// Passed finalizes held until this node saw the votes backing them.
    pub finalizes_held: u64,
    /// Held finalizes applied once their votes arrived.
    pub finalizes_released: u64,
    /// Held finalizes dropped: their votes never came (minority, one-vote or forged).
    pub finalizes_unbacked: u64,
    /// Held finalizes dropped because their proposal is not the one this node tracks
    /// under that ID (the votes behind them were cast on another check or status).
    pub finalizes_mismatched: u64,
    /// Proposals, observations and decisions about members or checks this node does not
    /// know (not in its lists).
    pub unknown_checks: u64,
    /// Results refused because `max_results` were held.
    pub refused_results: u64,
}
