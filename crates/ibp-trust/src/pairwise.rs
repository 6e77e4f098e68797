//! Pairwise authenticators: how a monitor accepts a signed message without an Ed25519
//! verification on the hot path.
//!
//! Verifying a signature is the costliest step of a decision in `enforce` mode (every
//! monitor checks the proposal and the votes it counts). As in PBFT, a sender also
//! attaches one short MAC per receiver, keyed by a secret only the two share: both derive
//! it from their Ed25519 keys (converted to X25519, as libsodium's
//! `crypto_sign_ed25519_*_to_curve25519` does) with a static Diffie-Hellman. A MAC over a
//! SHA-256 of the signature and the signed bytes, under that key, proves to the receiver
//! the message comes from the holder of the sender's key just as the signature does, for
//! about a hundredth of the cost. The Ed25519 signature still travels with every message, so
//! nodes without a pairwise key (DNS nodes, the collator, other implementations) and
//! anyone auditing later verify it as before; a receiver whose authenticator is missing or
//! does not match falls back to it. Format in `docs/signing.md`.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use curve25519_dalek::edwards::CompressedEdwardsY;
use hmac::{Hmac, Mac};
use ibp_wire::Role;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroize;

use crate::{Identity, TrustList};

type HmacSha256 = Hmac<Sha256>;

/// Bytes of a tag kept (of HMAC-SHA256's 32): 128 bits.
const TAG_BYTES: usize = 16;
/// Domain separation for the key derivation.
const KDF_LABEL: &[u8] = b"ibp-mac-v1";

/// The pairwise keys of one node with every trusted node.
pub struct Pairwise {
    /// Trusted senders' public keys → the key shared with them.
    keys: HashMap<String, [u8; 32]>,
    /// Keys of those this node makes tags for (trusted monitors but itself).
    receivers: Vec<[u8; 32]>,
}

impl std::fmt::Debug for Pairwise {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        f.debug_struct("Pairwise")
            .field("peers", &self.keys.len())
            .field("receivers", &self.receivers.len())
            .finish()
    }
}

impl Drop for Pairwise {
    fn drop(&mut self) {
        for k in self.keys.values_mut() {
            k.zeroize();
        }
        for k in &mut self.receivers {
            k.zeroize();
        }
    }
}

impl Pairwise {
    /// The keys `me` shares with every key in `trust` (keys that do not convert, or give
    /// a degenerate shared secret, get none: their messages are verified by signature).
    pub fn new(me: &Identity, trust: &TrustList) -> Pairwise {
        let mut keys = HashMap::new();
        let mut receivers = Vec::new();
        let secret = me.dh_secret();
        for t in trust.iter() {
            if t.public_key == me.public_key() {
                continue;
            }
            let Some(key) = derive(&secret, me.raw_public(), t.raw()) else {
                continue;
            };
            if t.role == Role::Monitor {
                receivers.push(key);
            }
            keys.insert(t.public_key.clone(), key);
        }
        let mut secret = secret;
        secret.zeroize();
        Pairwise { keys, receivers }
    }

    /// The [`crate::HDR_MAC`] value for a message with signature `sig` over `input`:
    /// one tag per trusted monitor, comma-separated, unaddressed (each receiver looks for
    /// its own; `None` when there are none).
    pub fn header(&self, sig: &[u8; 64], input: &[u8]) -> Option<String> {
        if self.receivers.is_empty() {
            return None;
        }
        let covered = digest(sig, input);
        let mut out = String::with_capacity(self.receivers.len() * 23);
        for (i, key) in self.receivers.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            URL_SAFE_NO_PAD.encode_string(tag(key, &covered), &mut out);
        }
        Some(out)
    }

    /// Whether `header` holds a tag for this node that proves `sender` sent `sig` over
    /// `input`. False when there is none, it does not match, or no key is shared with
    /// `sender`: the caller then verifies the signature.
    pub fn accepts(&self, sender: &str, header: &str, sig: &[u8; 64], input: &[u8]) -> bool {
        let Some(key) = self.keys.get(sender) else {
            return false;
        };
        // No header can make this node compare more than a monitor count's worth of tags.
        const MAX_TAGS: usize = 256;
        let want = tag(key, &digest(sig, input));
        header.split(',').take(MAX_TAGS).any(|part| {
            let mut given = [0u8; TAG_BYTES];
            // Exactly one tag's worth: a shortened tag would be a shorter guess.
            matches!(
                URL_SAFE_NO_PAD.decode_slice(part.trim(), &mut given),
                Ok(TAG_BYTES)
            ) && bool::from(given.ct_eq(&want))
        })
    }

    /// Trusted nodes this node shares a key with.
    pub fn peers(&self) -> usize {
        self.keys.len()
    }
}

/// What every tag of a message covers: `SHA-256(sig || input)`, hashed once per message
/// rather than once per receiver (a signer makes a tag for every other monitor; the
/// message is most of the bytes).
fn digest(sig: &[u8; 64], input: &[u8]) -> [u8; 32] {
    Sha256::new()
        .chain_update(sig)
        .chain_update(input)
        .finalize()
        .into()
}

fn tag(key: &[u8; 32], covered: &[u8; 32]) -> [u8; TAG_BYTES] {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(covered);
    let full = mac.finalize().into_bytes();
    let mut out = [0u8; TAG_BYTES];
    out.copy_from_slice(&full[..TAG_BYTES]);
    out
}

/// `HMAC-SHA256(label, X25519(a, B) || lower || higher)`, the two public keys in byte
/// order so both ends derive the same key.
fn derive(secret: &[u8; 32], mine: &[u8; 32], theirs: &[u8; 32]) -> Option<[u8; 32]> {
    let point = CompressedEdwardsY(*theirs).decompress()?;
    let mut shared = point.to_montgomery().mul_clamped(*secret).to_bytes();
    if shared == [0u8; 32] {
        return None;
    }
    let (lo, hi) = if mine <= theirs {
        (mine, theirs)
    } else {
        (theirs, mine)
    };
    let mut mac = HmacSha256::new_from_slice(KDF_LABEL).expect("HMAC takes any key length");
    mac.update(&shared);
    mac.update(lo);
    mac.update(hi);
    shared.zeroize();
    Some(mac.finalize().into_bytes().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TrustEntry;
    use crate::identity::signing_input;

    fn trust(ids: &[(&Identity, &str, &str)]) -> TrustList {
        let entries: Vec<TrustEntry> = ids
            .iter()
            .map(|(k, id, role)| TrustEntry {
                public_key: k.public_key().into(),
                node_id: (*id).into(),
                role: (*role).into(),
            })
            .collect();
        TrustList::build([("trust", &entries[..])]).expect("trust")
    }

    fn raw(s: &crate::Signature) -> [u8; 64] {
        URL_SAFE_NO_PAD
            .decode(&s.sig)
            .expect("b64")
            .try_into()
            .expect("64")
    }

    #[test]
    fn both_ends_derive_the_same_key_and_only_the_addressed_monitor_accepts() {
        let (a, b, c, d) = (
            Identity::generate(),
            Identity::generate(),
            Identity::generate(),
            Identity::generate(),
        );
        let t = trust(&[
            (&a, "monitor-a", "IBPMonitor"),
            (&b, "monitor-b", "IBPMonitor"),
            (&c, "monitor-c", "IBPMonitor"),
            (&d, "dns-d", "IBPDns"),
        ]);
        let (pa, pb, pc, pd) = (
            Pairwise::new(&a, &t),
            Pairwise::new(&b, &t),
            Pairwise::new(&c, &t),
            Pairwise::new(&d, &t),
        );
        assert_eq!(pa.keys.get(b.public_key()), pb.keys.get(a.public_key()));
        assert_ne!(pa.keys.get(b.public_key()), pa.keys.get(c.public_key()));
        let s = a.sign_for("consensus.vote", b"{}", chrono::Utc::now(), Some(&pa));
        let header = s.mac.clone().expect("tags for the monitors");
        assert_eq!(
            header.split(',').count(),
            2,
            "b and c, not a itself nor the DNS node"
        );
        assert_eq!(header.len(), 2 * 22 + 1, "two unpadded 16-byte tags");
        let input = signing_input("consensus.vote", &s.time, b"{}");
        let sig = raw(&s);
        assert!(pb.accepts(a.public_key(), &header, &sig, &input));
        assert!(pc.accepts(a.public_key(), &header, &sig, &input));
        // No tag for the DNS node: it verifies the signature.
        assert!(!pd.accepts(a.public_key(), &header, &sig, &input));
        // Another sender's name, other bytes, another signature: refused.
        assert!(!pb.accepts(c.public_key(), &header, &sig, &input));
        let other = signing_input("consensus.vote", &s.time, b"{ }");
        assert!(!pb.accepts(a.public_key(), &header, &sig, &other));
        let mut bent = sig;
        bent[40] ^= 1;
        assert!(!pb.accepts(a.public_key(), &header, &bent, &input));
        // c cannot make a tag b accepts in a's name: c's key with b is not a's.
        let forged = c.sign_for("consensus.vote", b"{}", chrono::Utc::now(), Some(&pc));
        let finput = signing_input("consensus.vote", &forged.time, b"{}");
        assert!(!pb.accepts(
            a.public_key(),
            forged.mac.as_deref().expect("tags"),
            &raw(&forged),
            &finput
        ));
        // Garbage headers are refused, never a panic.
        let long = "A".repeat(64);
        let many = vec!["AAAAAAAAAAAAAAAAAAAAAA"; 10_000].join(",");
        for junk in ["", ",,,", "=", "x=y", "%%%", &long, &many, &header[..10]] {
            assert!(!pb.accepts(a.public_key(), junk, &sig, &input), "{junk:?}");
        }
    }

    #[test]
    fn a_stranger_shares_no_key() {
        let (a, b, stranger) = (
            Identity::generate(),
            Identity::generate(),
            Identity::generate(),
        );
        let t = trust(&[
            (&a, "monitor-a", "IBPMonitor"),
            (&b, "monitor-b", "IBPMonitor"),
        ]);
        let pb = Pairwise::new(&b, &t);
        // The stranger builds tags from its own view (trusting b): b has no key for it.
        let st = trust(&[(&b, "monitor-b", "IBPMonitor")]);
        let ps = Pairwise::new(&stranger, &st);
        let s = stranger.sign_for("consensus.vote", b"{}", chrono::Utc::now(), Some(&ps));
        let input = signing_input("consensus.vote", &s.time, b"{}");
        let header = s.mac.clone().expect("a tag for b");
        assert!(!pb.accepts(stranger.public_key(), &header, &raw(&s), &input));
        // Nor can it claim a's key: the tag is under the stranger-b key.
        assert!(!pb.accepts(a.public_key(), &header, &raw(&s), &input));
    }
}
