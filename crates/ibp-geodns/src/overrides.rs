//! Country overrides (dns.md §1.3, §4.1): "clients of country CC asking for domain D get
//! member M (or this address)". From the config file (`GeoDNSOverrides`) and from NATS
//! (`geodns.override.update`). Unlike the Go node (W13) the NATS ones survive a config
//! reload (they are a layer of their own, which the node also saves), names are
//! normalized, and a direct address must be of the family it is given for.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::normalize;

/// The NATS subject of override updates.
pub const SUBJECT: &str = "geodns.override.update";

/// One override.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Override {
    /// The member to send the country to (its map key or name, any case).
    #[serde(rename = "memberName", default)]
    pub member_name: String,
    /// Or, without a member, this IPv4 address.
    #[serde(default)]
    pub ipv4: String,
    /// Or this IPv6 address.
    #[serde(default)]
    pub ipv6: String,
}

impl Override {
    /// The direct address for the family, if it is one of that family.
    pub fn address(&self, v6: bool) -> Option<IpAddr> {
        let text = if v6 { &self.ipv6 } else { &self.ipv4 };
        text.trim()
            .parse::<IpAddr>()
            .ok()
            .filter(|ip| ip.is_ipv6() == v6)
    }
}

type Table = BTreeMap<String, BTreeMap<String, Override>>;

/// What a NATS update did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// An override was set.
    Set {
        /// Domain.
        domain: String,
        /// Country.
        country: String,
    },
    /// One was removed.
    Removed {
        /// Domain.
        domain: String,
        /// Country.
        country: String,
    },
    /// All of a domain's were removed.
    Cleared {
        /// Domain.
        domain: String,
    },
}

/// The layers: NATS updates over the file's section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Overrides {
    #[serde(skip)]
    file: Table,
    /// Set over NATS.
    #[serde(default)]
    bus: Table,
    /// Removed over NATS (hides the file's entry): domain → countries.
    #[serde(default)]
    removed: BTreeMap<String, BTreeSet<String>>,
    /// Cleared over NATS (hides all the file's entries of the domain).
    #[serde(default)]
    cleared: BTreeSet<String>,
}

fn country(cc: &str) -> String {
    cc.trim().to_ascii_uppercase()
}

#[derive(Deserialize)]
struct Update {
    #[serde(default)]
    action: String,
    #[serde(default)]
    domain: String,
    #[serde(rename = "countryCode", default)]
    country_code: String,
    #[serde(rename = "override", default)]
    value: Override,
}

impl Overrides {
    /// Replaces the file layer with a `GeoDNSOverrides` section
    /// (`{"<domain>": {"<CC>": {memberName, ipv4, ipv6}}}`).
    pub fn set_file(&mut self, section: &Value) -> Result<(), String> {
        let raw: BTreeMap<String, BTreeMap<String, Override>> =
            serde_json::from_value(section.clone()).map_err(|e| format!("GeoDNSOverrides: {e}"))?;
        self.file = raw
            .into_iter()
            .map(|(d, m)| {
                (
                    normalize(&d),
                    m.into_iter().map(|(c, o)| (country(&c), o)).collect(),
                )
            })
            .collect();
        Ok(())
    }

    /// Applies a NATS update (`{"action": "set"|"remove"|"clear", "domain", "countryCode",
    /// "override"}`).
    pub fn apply(&mut self, payload: &[u8]) -> Result<Change, String> {
        let u: Update =
            serde_json::from_slice(payload).map_err(|e| format!("not an override update: {e}"))?;
        let domain = normalize(&u.domain);
        let cc = country(&u.country_code);
        if domain.is_empty() {
            return Err("domain: missing".into());
        }
        match u.action.trim().to_ascii_lowercase().as_str() {
            "set" if !cc.is_empty() => {
                if let Some(set) = self.removed.get_mut(&domain) {
                    set.remove(&cc);
                }
                self.bus
                    .entry(domain.clone())
                    .or_default()
                    .insert(cc.clone(), u.value);
                Ok(Change::Set {
                    domain,
                    country: cc,
                })
            }
            "remove" if !cc.is_empty() => {
                if let Some(m) = self.bus.get_mut(&domain) {
                    m.remove(&cc);
                    if m.is_empty() {
                        self.bus.remove(&domain);
                    }
                }
                self.removed
                    .entry(domain.clone())
                    .or_default()
                    .insert(cc.clone());
                Ok(Change::Removed {
                    domain,
                    country: cc,
                })
            }
            "clear" => {
                self.bus.remove(&domain);
                self.removed.remove(&domain);
                self.cleared.insert(domain.clone());
                Ok(Change::Cleared { domain })
            }
            "set" | "remove" => Err("countryCode: missing".into()),
            other => Err(format!("action {other:?}: expected set, remove or clear")),
        }
    }

    /// The override for `domain` (normalized) and country `cc` (upper case).
    pub fn get(&self, domain: &str, cc: &str) -> Option<&Override> {
        if let Some(o) = self.bus.get(domain).and_then(|m| m.get(cc)) {
            return Some(o);
        }
        if self.cleared.contains(domain) || self.removed.get(domain).is_some_and(|s| s.contains(cc))
        {
            return None;
        }
        self.file.get(domain).and_then(|m| m.get(cc))
    }

    /// Whether any override exists.
    pub fn is_empty(&self) -> bool {
        self.bus.is_empty() && self.file.is_empty()
    }

    /// The NATS layer, to save (the file layer is in the file).
    pub fn saved(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }

    /// Restores a saved NATS layer, keeping the file layer.
    pub fn restore(&mut self, saved: &Value) -> Result<(), String> {
        let s: Overrides = serde_json::from_value(saved.clone()).map_err(|e| e.to_string())?;
        self.bus = s.bus;
        self.removed = s.removed;
        self.cleared = s.cleared;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nats_updates_layer_over_the_file_and_survive_its_reload() {
        let mut o = Overrides::default();
        o.set_file(&json!({"RPC.Example.Test": {"cn": {"memberName": "Beta"}}}))
            .expect("file");
        assert_eq!(
            o.get("rpc.example.test", "CN")
                .map(|x| x.member_name.as_str()),
            Some("Beta")
        );
        let set = json!({"action": "set", "domain": " rpc.example.test. ", "countryCode": "de",
            "override": {"memberName": "", "ipv4": "10.7.7.7", "ipv6": "10.7.7.8"}});
        assert_eq!(
            o.apply(set.to_string().as_bytes()),
            Ok(Change::Set {
                domain: "rpc.example.test".into(),
                country: "DE".into()
            })
        );
        let de = o.get("rpc.example.test", "DE").cloned().expect("set");
        assert_eq!(de.address(false), "10.7.7.7".parse().ok());
        assert_eq!(
            de.address(true),
            None,
            "an IPv4 address is not an AAAA answer"
        );
        // A file reload keeps the NATS layer.
        o.set_file(&json!({"rpc.example.test": {"CN": {"memberName": "Alpha"}}}))
            .expect("file");
        assert!(o.get("rpc.example.test", "DE").is_some());
        assert_eq!(
            o.get("rpc.example.test", "CN")
                .map(|x| x.member_name.as_str()),
            Some("Alpha")
        );
        // remove hides the file's entry; clear hides all of the domain's.
        o.apply(br#"{"action":"remove","domain":"rpc.example.test","countryCode":"CN"}"#)
            .expect("remove");
        assert!(o.get("rpc.example.test", "CN").is_none());
        o.apply(br#"{"action":"clear","domain":"rpc.example.test"}"#)
            .expect("clear");
        assert!(o.get("rpc.example.test", "DE").is_none());
        // Saved and restored.
        let saved = o.saved();
        let mut p = Overrides::default();
        p.set_file(&json!({"rpc.example.test": {"CN": {"memberName": "Alpha"}}}))
            .expect("file");
        p.restore(&saved).expect("restore");
        assert!(
            p.get("rpc.example.test", "CN").is_none(),
            "the clear is kept"
        );
        // Bad updates are refused with the reason.
        assert!(o.apply(b"{").is_err());
        assert!(
            o.apply(br#"{"action":"set","domain":"x"}"#)
                .unwrap_err()
                .contains("countryCode")
        );
        assert!(
            o.apply(br#"{"action":"nuke","domain":"x"}"#)
                .unwrap_err()
                .contains("nuke")
        );
    }
}
