use std::fmt;
use std::str::FromStr;

/// A validated node identifier (the `Nats.NodeID` of a node's config).
///
/// Node IDs become part of NATS subjects (`_INBOX.<NodeID>.usageReply.<nanos>`), so an ID
/// containing a space, a dot, `*`, `>` or a control character would break routing for every
/// node of the cluster (protocol §2). Such IDs are refused when a node starts.
///
/// Messages received from the network keep their sender IDs as plain strings: a Go node
/// may legally send any ID, and refusing it would change our view of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(String);

/// Why a node ID was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeIdError {
    /// The ID is empty (or only whitespace).
    #[error("node ID is empty")]
    Empty,
    /// The ID contains a character that would break NATS subjects.
    #[error(
        "node ID {id:?} contains {what} at byte {index}: node IDs become part of NATS subjects and may not contain spaces, dots, '*', '>' or control characters"
    )]
    ForbiddenChar {
        /// The refused ID.
        id: String,
        /// A description of the offending character.
        what: &'static str,
        /// Its byte offset in the ID.
        index: usize,
    },
}

impl NodeId {
    /// Validates and wraps an ID.
    pub fn new(id: impl Into<String>) -> Result<NodeId, NodeIdError> {
        let id = id.into();
        if id.trim().is_empty() {
            return Err(NodeIdError::Empty);
        }
        for (index, c) in id.char_indices() {
            let what = match c {
                ' ' => Some("a space"),
                '.' => Some("a dot"),
                '*' => Some("'*'"),
                '>' => Some("'>'"),
                c if c.is_whitespace() => Some("whitespace"),
                c if c.is_control() => Some("a control character"),
                _ => None,
            };
            if let Some(what) = what {
                return Err(NodeIdError::ForbiddenChar { id, what, index });
            }
        }
        Ok(NodeId(id))
    }

    /// The ID as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Consumes the ID into its string.
    pub fn into_string(self) -> String {
        self.0
    }
}

impl FromStr for NodeId {
    type Err = NodeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NodeId::new(s)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for NodeId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_ids() {
        for id in ["MONITOR-NODE-1", "DNS1", "monitor-go-1", "a_b", "ÄÖ"] {
            assert_eq!(NodeId::new(id).map(|n| n.to_string()), Ok(id.to_string()));
        }
    }

    #[test]
    fn rejects_ids_that_break_subjects() {
        assert_eq!(NodeId::new(""), Err(NodeIdError::Empty));
        assert_eq!(NodeId::new("  "), Err(NodeIdError::Empty));
        for (id, idx) in [
            ("a b", 1),
            ("a.b", 1),
            ("a*", 1),
            (">", 0),
            ("x\ty", 1),
            ("x\u{7}", 1),
        ] {
            match NodeId::new(id) {
                Err(NodeIdError::ForbiddenChar { index, .. }) => assert_eq!(index, idx, "{id:?}"),
                other => panic!("{id:?} gave {other:?}"),
            }
        }
        let msg = NodeId::new("bad.id").unwrap_err().to_string();
        assert!(msg.contains("a dot"), "{msg}");
    }
}
