//! What the core asks its shell to do.

use std::collections::BTreeMap;
use std::time::Duration;

use ibp_wire::{ClusterMessage, FinalizeMessage, Proposal, Vote, WireTime};

use crate::CheckKey;

/// A message to publish. The shell encodes it and sends it on its subject.
#[derive(Debug, Clone, PartialEq)]
pub enum Outbound {
    /// A `join` on `consensus.cluster` (startup, heartbeat or answer to a new node).
    Join(ClusterMessage),
    /// A clean-shutdown notice on the extension subject [`ibp_wire::ext::LEAVE_SUBJECT`].
    Leave(ClusterMessage),
    /// A proposal on `consensus.propose` (new, or republished with its original ID).
    Propose(Proposal),
    /// This node's vote on `consensus.vote`.
    Vote(Vote),
    /// This node's decision on `consensus.finalize`.
    Finalize(FinalizeMessage),
}

impl Outbound {
    /// The subject the message goes to.
    pub fn subject(&self) -> &'static str {
        use ibp_wire::subjects;
        match self {
            Outbound::Join(_) => subjects::CLUSTER,
            Outbound::Leave(_) => ibp_wire::ext::LEAVE_SUBJECT,
            Outbound::Propose(_) => subjects::PROPOSE,
            Outbound::Vote(_) => subjects::VOTE,
            Outbound::Finalize(_) => subjects::FINALIZE,
        }
    }

    /// Encodes the payload as a Go node would.
    pub fn encode(&self) -> Vec<u8> {
        let r = match self {
            Outbound::Join(m) | Outbound::Leave(m) => ibp_wire::encode(m),
            Outbound::Propose(m) => ibp_wire::encode(m),
            Outbound::Vote(m) => ibp_wire::encode(m),
            Outbound::Finalize(m) => ibp_wire::encode(m),
        };
        // These types contain only strings, booleans, timestamps and already-valid raw JSON.
        r.unwrap_or_default()
    }
}

/// A decision this node learned of: its own, or one received from another monitor.
/// Reported once per proposal ID.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The decided proposal.
    pub proposal: Proposal,
    /// Whether it passed.
    pub passed: bool,
    /// The node that decided (this node for own decisions).
    pub finalizer: String,
    /// The finalizer's clock at the decision.
    pub decided_at: WireTime,
    /// True when this node reached the decision itself (and published a finalize).
    pub by_self: bool,
    /// Whether it became this node's official result (false for failed decisions and for
    /// stale ones that would have overwritten a newer result).
    pub applied: bool,
    /// Time from when this node first tracked the proposal to the decision, if it tracked it.
    pub latency: Option<Duration>,
    /// Agreeing / disagreeing counted votes at the decision (own decisions only).
    pub tally: Option<(usize, usize)>,
    /// Every vote this node had recorded for the proposal, by voter (`None` when it never
    /// tracked or cached the proposal). The collator stores this as `vote_data`.
    pub votes: Option<BTreeMap<String, bool>>,
}

/// A change of an official result, to persist and to serve to DNS nodes.
#[derive(Debug, Clone, PartialEq)]
pub struct OfficialChange {
    /// The check.
    pub key: CheckKey,
    /// The new official status (true = online).
    pub status: bool,
    /// Whether the status differs from the previous official one (or there was none).
    pub flipped: bool,
    /// The proposal that decided it (error text, data).
    pub proposal: Proposal,
    /// When the decision was made (the finalizer's `DecidedAt`): outage records are
    /// stamped with it, not with the time they are stored.
    pub decided_at: WireTime,
}

/// An effect for the shell to carry out, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// Publish a message.
    Publish(Outbound),
    /// A passed decision became official.
    ApplyOfficial(OfficialChange),
    /// A decision became known (for observers, metrics and the collator).
    Decided(Decision),
    /// A node joined the cluster view.
    NodeJoined {
        /// The node.
        node_id: String,
        /// Its role string.
        role: String,
    },
    /// A passed finalize was not applied: within the grace this node never held the
    /// agreeing votes of active monitors it would need to decide itself (quorum floor,
    /// enforced trust). A minority partition, a one-vote v0.6.12 monitor or a forger.
    FinalizeRefused {
        /// The proposal it was about.
        proposal: Proposal,
        /// Who sent it (empty for v0.2.0/v0.6.12 senders).
        finalizer: String,
        /// Agreeing votes this node held.
        agreeing: usize,
        /// Votes it needed.
        needed: usize,
    },
    /// Another live node uses this node's ID: its join (or vote) reached this node, which a
    /// no-echo connection never delivers for its own messages.
    IdConflict {
        /// What the other node announced (address, port, role), to help find it.
        other: String,
    },
    /// A node left: announced a clean shutdown, or went stale and was removed.
    NodeLeft {
        /// The node.
        node_id: String,
        /// True for a clean-shutdown notice, false for removal after going stale.
        announced: bool,
    },
}
