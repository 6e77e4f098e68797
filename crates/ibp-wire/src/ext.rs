//! Extensions this project adds on top of the Go protocol (protocol §10).
//!
//! Go nodes never see these: they live in NATS headers (which Go nodes ignore) or on
//! subjects Go nodes do not subscribe to. Every name is versioned with an `Ibp-` /
//! `ibp.ext.` prefix so later extensions (signatures, trust lists) can sit beside them.

/// Subject on which a node announces a clean shutdown. Carries a [`crate::ClusterMessage`]
/// with `type` = [`LEAVE_TYPE`]. A new subject rather than `consensus.cluster`, because a
/// Go node treats any cluster message as a heartbeat and would count the leaving node as
/// freshly heard.
pub const LEAVE_SUBJECT: &str = "ibp.ext.cluster.leave";

/// The `type` of a leave message.
pub const LEAVE_TYPE: &str = "leave";

/// Request header: the requester accepts a reply split into parts. Value: `1`.
pub const HDR_ACCEPT_PARTS: &str = "Ibp-Accept-Parts";

/// Usage request header: keep rows counted under different node IDs apart and name each
/// record's ID in `nodeid` (a DNS node whose ID changed answers its old rows under the old
/// ID). Value: `1`. Go requesters never send it and get rows summed, as Go DNS nodes do.
pub const HDR_USAGE_PER_NODE: &str = "Ibp-Usage-Per-Node";

/// Reply header on each part: `<index>/<count>`, index from 1.
pub const HDR_PART: &str = "Ibp-Part";

/// Reply header shared by every part of one answer, so parts of two answers of the same
/// node (a node that answered twice) are never mixed.
pub const HDR_REPLY_ID: &str = "Ibp-Reply-Id";

/// Reply header naming the answering node, so a requester can attribute a part even before
/// decoding it.
pub const HDR_NODE: &str = "Ibp-Node";

/// Header carrying the software that sent a message (`ibp-geodns-nats/<version>`), so
/// operators can tell Rust nodes from Go nodes on the bus.
pub const HDR_SOFTWARE: &str = "Ibp-Software";

/// Parses an [`HDR_PART`] value (`"3/7"`) into `(index, count)`, index from 1.
pub fn parse_part(value: &str) -> Option<(u32, u32)> {
    let (i, n) = value.trim().split_once('/')?;
    let i: u32 = i.trim().parse().ok()?;
    let n: u32 = n.trim().parse().ok()?;
    (i >= 1 && i <= n).then_some((i, n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_header_parses_and_rejects() {
        assert_eq!(parse_part("1/1"), Some((1, 1)));
        assert_eq!(parse_part(" 3/7 "), Some((3, 7)));
        assert_eq!(parse_part("0/7"), None);
        assert_eq!(parse_part("8/7"), None);
        assert_eq!(parse_part("x/7"), None);
        assert_eq!(parse_part("7"), None);
    }
}
