//! The trust list: which public key speaks for which node ID and role.

use std::collections::HashMap;
use std::sync::Arc;

use ibp_wire::Role;
use nkeys::{KeyPair, KeyPairType};
use serde::Deserialize;

/// One entry as configured (`IbpNode.security.trust[]`, or the `trust_file` array).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustEntry {
    /// The node's public key (`U…`).
    pub public_key: String,
    /// The node ID it speaks for.
    pub node_id: String,
    /// Its role: `IBPMonitor`, `IBPDns`, `IBPCollator` (or `monitor`, `dns`, `collator`).
    pub role: String,
}

/// A bad trust list: where and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct TrustError {
    /// The field, e.g. `trust[2].public_key`.
    pub field: String,
    /// Why.
    pub reason: String,
}

/// A trusted key.
#[derive(Clone)]
pub struct Trusted {
    /// The node ID it speaks for.
    pub node_id: String,
    /// Its role.
    pub role: Role,
    /// The public key (`U…`).
    pub public_key: String,
    key: Arc<KeyPair>,
    raw: [u8; 32],
}

impl std::fmt::Debug for Trusted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trusted")
            .field("node_id", &self.node_id)
            .field("role", &self.role)
            .field("public_key", &self.public_key)
            .finish()
    }
}

impl Trusted {
    /// Whether `sig` is this key's signature of `input`.
    pub fn verifies(&self, input: &[u8], sig: &[u8]) -> bool {
        self.key.verify(input, sig).is_ok()
    }

    /// The 32 bytes of the Ed25519 public key.
    pub(crate) fn raw(&self) -> &[u8; 32] {
        &self.raw
    }
}

/// Public keys → trusted nodes.
#[derive(Debug, Clone, Default)]
pub struct TrustList {
    by_key: HashMap<String, Trusted>,
}

fn role_of(s: &str) -> Option<Role> {
    Role::from_wire(s).or_else(|| {
        Role::ALL
            .into_iter()
            .find(|r| r.short_name().eq_ignore_ascii_case(s))
    })
}

impl TrustList {
    /// Parses a JSON array of entries; `field` names it in errors (`trust`, `trust_file`).
    pub fn parse_json(json: &str, field: &str) -> Result<Vec<TrustEntry>, TrustError> {
        serde_json::from_str::<Vec<TrustEntry>>(json).map_err(|e| TrustError {
            field: field.to_string(),
            reason: format!("expected an array of {{public_key, node_id, role}}: {e}"),
        })
    }

    /// Builds the list from entries, merged in order. `field` prefixes error locations.
    /// The same key listed twice for the same node and role is fine (a key in both the
    /// config and the trust file); for another node or role it is an error.
    pub fn build<'a>(
        sources: impl IntoIterator<Item = (&'a str, &'a [TrustEntry])>,
    ) -> Result<TrustList, TrustError> {
        let mut by_key: HashMap<String, Trusted> = HashMap::new();
        for (field, entries) in sources {
            for (i, e) in entries.iter().enumerate() {
                let at = |k: &str| format!("{field}[{i}].{k}");
                let kp =
                    KeyPair::from_public_key(e.public_key.trim()).map_err(|err| TrustError {
                        field: at("public_key"),
                        reason: format!("not an NKey public key: {err}"),
                    })?;
                if !matches!(kp.key_pair_type(), KeyPairType::User) {
                    return Err(TrustError {
                        field: at("public_key"),
                        reason: "not a user key (node keys start with U)".into(),
                    });
                }
                let node_id = ibp_wire::NodeId::new(e.node_id.clone())
                    .map_err(|err| TrustError {
                        field: at("node_id"),
                        reason: err.to_string(),
                    })?
                    .to_string();
                let role = role_of(e.role.trim()).ok_or_else(|| TrustError {
                    field: at("role"),
                    reason: format!("{:?} is not IBPMonitor, IBPDns or IBPCollator", e.role),
                })?;
                let key = e.public_key.trim().to_string();
                let raw = raw_public(&key).ok_or_else(|| TrustError {
                    field: at("public_key"),
                    reason: "not an NKey public key".into(),
                })?;
                if let Some(prev) = by_key.get(&key) {
                    if prev.node_id != node_id || prev.role != role {
                        return Err(TrustError {
                            field: at("public_key"),
                            reason: format!(
                                "already trusted for {} ({}); one key speaks for one node",
                                prev.node_id, prev.role
                            ),
                        });
                    }
                    continue;
                }
                by_key.insert(
                    key.clone(),
                    Trusted {
                        node_id,
                        role,
                        public_key: key,
                        key: Arc::new(kp),
                        raw,
                    },
                );
            }
        }
        Ok(TrustList { by_key })
    }

    /// The node a key speaks for.
    pub fn get(&self, public_key: &str) -> Option<&Trusted> {
        self.by_key.get(public_key)
    }

    /// Whether some key speaks for `node_id`.
    pub fn knows_id(&self, node_id: &str) -> bool {
        self.by_key.values().any(|t| t.node_id == node_id)
    }

    /// Every trusted key.
    pub fn iter(&self) -> impl Iterator<Item = &Trusted> {
        self.by_key.values()
    }

    /// Trusted keys.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether nothing is trusted.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

/// The raw key of an NKey public key: base32 of one prefix byte, the 32 key bytes and a
/// CRC (already checked by `KeyPair::from_public_key`).
pub(crate) fn raw_public(key: &str) -> Option<[u8; 32]> {
    let bytes = data_encoding::BASE32_NOPAD.decode(key.as_bytes()).ok()?;
    bytes.get(1..33)?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;

    fn entry(k: &str, id: &str, role: &str) -> TrustEntry {
        TrustEntry {
            public_key: k.into(),
            node_id: id.into(),
            role: role.into(),
        }
    }

    #[test]
    fn merges_sources_and_names_the_bad_field() {
        let a = Identity::generate();
        let b = Identity::generate();
        let cfg = [entry(a.public_key(), "monitor-1", "IBPMonitor")];
        let file = [
            entry(a.public_key(), "monitor-1", "monitor"),
            entry(b.public_key(), "dns-1", "IBPDns"),
        ];
        let t = TrustList::build([("trust", &cfg[..]), ("trust_file", &file[..])]).expect("ok");
        assert_eq!(t.len(), 2);
        assert_eq!(t.get(b.public_key()).map(|x| x.role), Some(Role::Dns));

        let bad = [entry(a.public_key(), "monitor-2", "IBPMonitor")];
        let e = TrustList::build([("trust", &cfg[..]), ("trust_file", &bad[..])])
            .expect_err("conflict");
        assert_eq!(e.field, "trust_file[0].public_key");
        let e = TrustList::build([("trust", &[entry("UABC", "m", "IBPMonitor")][..])])
            .expect_err("key");
        assert_eq!(e.field, "trust[0].public_key");
        let e = TrustList::build([("trust", &[entry(a.public_key(), "m", "boss")][..])])
            .expect_err("role");
        assert_eq!(e.field, "trust[0].role");
        let e = TrustList::build([("trust", &[entry(a.public_key(), "a b", "dns")][..])])
            .expect_err("id");
        assert_eq!(e.field, "trust[0].node_id");
        let e = TrustList::parse_json("{}", "trust_file").expect_err("shape");
        assert_eq!(e.field, "trust_file");
    }
}
