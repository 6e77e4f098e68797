use std::fmt;
use std::str::FromStr;

/// The role a node plays in the cluster (protocol §1).
///
/// The wire strings are fixed by the Go nodes and compared exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// `IBPMonitor`: proposes, votes and finalizes member status; answers downtime requests.
    Monitor,
    /// `IBPDns`: answers usage requests; takes no part in consensus.
    Dns,
    /// `IBPCollator`: records outages from finalizes and collects usage hourly.
    Collator,
}

impl Role {
    /// Every role, in a stable order.
    pub const ALL: [Role; 3] = [Role::Monitor, Role::Dns, Role::Collator];

    /// The exact wire string of the role.
    pub const fn as_wire(self) -> &'static str {
        match self {
            Role::Monitor => "IBPMonitor",
            Role::Dns => "IBPDns",
            Role::Collator => "IBPCollator",
        }
    }

    /// The short name operators type on the command line (`monitor`, `dns`, `collator`).
    pub const fn short_name(self) -> &'static str {
        match self {
            Role::Monitor => "monitor",
            Role::Dns => "dns",
            Role::Collator => "collator",
        }
    }

    /// Parses the exact wire string; anything else (including the empty string) is `None`.
    pub fn from_wire(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_wire() == s)
    }

    /// Guesses the role of a node first seen without one, as the Go nodes do (protocol §4):
    /// an ID containing `monitor` (any case) is a monitor, one containing `dns` is a DNS node.
    pub fn guess_from_node_id(node_id: &str) -> Option<Role> {
        let lower = node_id.to_ascii_lowercase();
        if lower.contains("monitor") {
            Some(Role::Monitor)
        } else if lower.contains("dns") {
            Some(Role::Dns)
        } else {
            None
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_wire())
    }
}

/// A role string that is neither a wire role nor a short name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown role {0:?}: expected monitor, dns or collator (or IBPMonitor, IBPDns, IBPCollator)"
)]
pub struct UnknownRole(pub String);

impl FromStr for Role {
    type Err = UnknownRole;

    /// Accepts the wire strings and the short names, case-insensitively.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        Role::ALL
            .into_iter()
            .find(|r| t.eq_ignore_ascii_case(r.as_wire()) || t.eq_ignore_ascii_case(r.short_name()))
            .ok_or_else(|| UnknownRole(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_strings_are_exact() {
        assert_eq!(Role::Monitor.as_wire(), "IBPMonitor");
        assert_eq!(Role::Dns.as_wire(), "IBPDns");
        assert_eq!(Role::Collator.as_wire(), "IBPCollator");
        assert_eq!(Role::from_wire("ibpmonitor"), None);
        assert_eq!(Role::from_wire(""), None);
    }

    #[test]
    fn parse_accepts_short_and_wire_names() {
        assert_eq!("monitor".parse::<Role>(), Ok(Role::Monitor));
        assert_eq!("IBPDns".parse::<Role>(), Ok(Role::Dns));
        assert_eq!("Collator".parse::<Role>(), Ok(Role::Collator));
        assert!("router".parse::<Role>().is_err());
    }

    #[test]
    fn guess_follows_go_rules() {
        assert_eq!(
            Role::guess_from_node_id("EU-Monitor-1"),
            Some(Role::Monitor)
        );
        assert_eq!(Role::guess_from_node_id("DNS1"), Some(Role::Dns));
        assert_eq!(Role::guess_from_node_id("collator"), None);
    }
}
