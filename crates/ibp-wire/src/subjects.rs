//! NATS subjects of the cluster (protocol §2) and the reply-inbox naming rules.

use crate::Role;

/// Membership: `join` messages (ClusterMessage). Every role publishes and subscribes.
pub const CLUSTER: &str = "consensus.cluster";
/// Proposals. Published by monitors, read by monitors and the collator.
pub const PROPOSE: &str = "consensus.propose";
/// Votes. Published by monitors, read by monitors and the collator.
pub const VOTE: &str = "consensus.vote";
/// Finalize messages. Published by monitors, read by monitors and the collator.
pub const FINALIZE: &str = "consensus.finalize";
/// Usage request (collator → DNS nodes), always with a reply subject in practice.
pub const USAGE_GET: &str = "dns.usage.getUsage";
/// Usage push (DNS → collator), used when a usage request had no reply subject.
pub const USAGE_DATA: &str = "dns.usage.usageData";
/// Downtime request (collator / tools → monitors); a request without a reply subject is ignored.
pub const DOWNTIME_GET: &str = "monitor.stats.getDowntime";
/// Legacy downtime push subject; nobody uses it today.
pub const DOWNTIME_DATA: &str = "monitor.stats.downtimeData";

/// The subjects a node of `role` subscribes to, exactly as the Go nodes do (protocol §2),
/// not counting the extension subjects of [`crate::ext`].
pub fn subscriptions(role: Role) -> &'static [&'static str] {
    match role {
        Role::Monitor => &[CLUSTER, PROPOSE, VOTE, FINALIZE, DOWNTIME_GET],
        Role::Dns => &[CLUSTER, USAGE_GET],
        Role::Collator => &[CLUSTER, PROPOSE, VOTE, FINALIZE, USAGE_DATA],
    }
}

/// Which kind of fan-out a reply inbox belongs to. The v0.2.0 collator routes replies by
/// these substrings, so the inbox names must keep them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplyKind {
    /// Replies to [`USAGE_GET`].
    Usage,
    /// Replies to [`DOWNTIME_GET`].
    Downtime,
}

/// Builds the per-request reply inbox `_INBOX.<NodeID>.usageReply.<unix-nanos>` (or
/// `downtimeReply`). `node_id` must be a validated [`crate::NodeId`] string.
pub fn reply_inbox(node_id: &str, kind: ReplyKind, unix_nanos: i128) -> String {
    let k = match kind {
        ReplyKind::Usage => "usageReply",
        ReplyKind::Downtime => "downtimeReply",
    };
    format!("_INBOX.{node_id}.{k}.{unix_nanos}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbox_keeps_go_naming() {
        assert_eq!(
            reply_inbox("COLLATOR", ReplyKind::Usage, 42),
            "_INBOX.COLLATOR.usageReply.42"
        );
        assert_eq!(
            reply_inbox("c", ReplyKind::Downtime, 7),
            "_INBOX.c.downtimeReply.7"
        );
    }

    #[test]
    fn role_subscriptions_match_protocol_table() {
        assert!(subscriptions(Role::Dns).contains(&USAGE_GET));
        assert!(!subscriptions(Role::Dns).contains(&PROPOSE));
        assert!(subscriptions(Role::Monitor).contains(&DOWNTIME_GET));
        assert!(subscriptions(Role::Collator).contains(&USAGE_DATA));
        assert!(!subscriptions(Role::Collator).contains(&DOWNTIME_GET));
    }
}
