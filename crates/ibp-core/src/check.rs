//! Identity of a check result: what a proposal is about.

use ibp_wire::{CheckType, Data, Proposal};
use serde::{Deserialize, Serialize};

/// Identifies one check result: (check type, check name, member, domain, endpoint, IP family).
/// Local and official results are kept per key; IPv4 and IPv6 are separate keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckKey {
    /// `site`, `domain` or `endpoint` (other strings never get a local result).
    pub check_type: String,
    /// The check, e.g. `wss`.
    pub check_name: String,
    /// The member checked.
    pub member_name: String,
    /// Hostname; empty for site checks.
    pub domain_name: String,
    /// Endpoint URL; empty unless an endpoint check.
    pub endpoint: String,
    /// The IP family.
    #[serde(rename = "isIPv6")]
    pub is_ipv6: bool,
}

impl CheckKey {
    /// Builds a key, normalising the domain to lower case as the Go monitor does.
    pub fn new(
        check_type: CheckType,
        check_name: impl Into<String>,
        member_name: impl Into<String>,
        domain_name: impl Into<String>,
        endpoint: impl Into<String>,
        is_ipv6: bool,
    ) -> CheckKey {
        CheckKey {
            check_type: check_type.as_str().to_string(),
            check_name: check_name.into(),
            member_name: member_name.into(),
            domain_name: domain_name.into().to_ascii_lowercase(),
            endpoint: endpoint.into(),
            is_ipv6,
        }
    }

    /// The key a proposal is about (fields taken as they are on the wire).
    pub fn of(p: &Proposal) -> CheckKey {
        CheckKey {
            check_type: p.check_type.clone(),
            check_name: p.check_name.clone(),
            member_name: p.member_name.clone(),
            domain_name: p.domain_name.clone(),
            endpoint: p.endpoint.clone(),
            is_ipv6: p.is_ipv6,
        }
    }

    /// The check type, if it is one the protocol votes on.
    pub fn typed(&self) -> Option<CheckType> {
        match self.check_type.as_str() {
            "site" => Some(CheckType::Site),
            "domain" => Some(CheckType::Domain),
            "endpoint" => Some(CheckType::Endpoint),
            _ => None,
        }
    }
}

impl std::fmt::Display for CheckKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{}/{}",
            self.check_type, self.check_name, self.member_name
        )?;
        if !self.domain_name.is_empty() {
            write!(f, "/{}", self.domain_name)?;
        }
        if !self.endpoint.is_empty() {
            write!(f, "/{}", self.endpoint)?;
        }
        f.write_str(if self.is_ipv6 { "/v6" } else { "/v4" })
    }
}

/// The key under which concurrent proposals are merged: the check plus the proposed status.
pub(crate) type ProposalKey = (CheckKey, bool);

/// One result of a check as a monitor saw it: what to record locally and, if it differs
/// from the official result, what to propose.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    /// The check.
    pub key: CheckKey,
    /// The observed status (true = online).
    pub status: bool,
    /// The check's error text (empty when fine).
    pub error_text: String,
    /// Free-form details of the check.
    pub data: Data,
}

impl Observation {
    /// An observation without error text or details.
    pub fn new(key: CheckKey, status: bool) -> Observation {
        Observation {
            key,
            status,
            error_text: String::new(),
            data: Data::none(),
        }
    }
}
