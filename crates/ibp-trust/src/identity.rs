//! A node's signing identity and the signature format.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, SecondsFormat, Utc};
use nkeys::{KeyPair, KeyPairType};

/// Why a seed or key could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(String);

/// A node's Ed25519 key pair (an NKey *user* key, so the same seed can be the node's NATS
/// NKey credential).
pub struct Identity {
    kp: KeyPair,
    public: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the seed.
        f.debug_struct("Identity")
            .field("public_key", &self.public)
            .finish()
    }
}

/// The three header values of one signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// [`crate::HDR_KEY`].
    pub key: String,
    /// [`crate::HDR_SIG_TIME`].
    pub time: String,
    /// [`crate::HDR_SIG`].
    pub sig: String,
}

/// The signature headers of a received message, as found (any may be missing).
#[derive(Debug, Clone, Copy, Default)]
pub struct SigHeaders<'a> {
    /// [`crate::HDR_KEY`].
    pub key: Option<&'a str>,
    /// [`crate::HDR_SIG_TIME`].
    pub time: Option<&'a str>,
    /// [`crate::HDR_SIG`].
    pub sig: Option<&'a str>,
}

/// The bytes signed: `subject + "\n" + time + "\n" + payload`, the payload exactly as
/// published.
pub fn signing_input(subject: &str, time: &str, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(subject.len() + time.len() + payload.len() + 2);
    v.extend_from_slice(subject.as_bytes());
    v.push(b'\n');
    v.extend_from_slice(time.as_bytes());
    v.push(b'\n');
    v.extend_from_slice(payload);
    v
}

impl Identity {
    /// A new random identity.
    pub fn generate() -> Identity {
        let kp = KeyPair::new_user();
        let public = kp.public_key();
        Identity { kp, public }
    }

    /// The identity of an NKey user seed (`SU…`; surrounding whitespace ignored).
    pub fn from_seed(seed: &str) -> Result<Identity, KeyError> {
        let seed = seed.trim();
        let kp =
            KeyPair::from_seed(seed).map_err(|e| KeyError(format!("not an NKey seed: {e}")))?;
        if !matches!(kp.key_pair_type(), KeyPairType::User) {
            return Err(KeyError(format!(
                "an NKey seed of type {:?}; a node key is a user key (seed starting SU)",
                kp.key_pair_type()
            )));
        }
        let public = kp.public_key();
        Ok(Identity { kp, public })
    }

    /// The seed (`SU…`), for writing the key file.
    pub fn seed(&self) -> Result<String, KeyError> {
        self.kp.seed().map_err(|e| KeyError(e.to_string()))
    }

    /// The public key (`U…`).
    pub fn public_key(&self) -> &str {
        &self.public
    }

    /// Signs `payload` published on `subject` at `at`.
    pub fn sign(&self, subject: &str, payload: &[u8], at: DateTime<Utc>) -> Signature {
        let time = at.to_rfc3339_opts(SecondsFormat::Micros, true);
        let input = signing_input(subject, &time, payload);
        // Signing with a loaded private key cannot fail (nkeys returns a Result only for
        // public-only key pairs, which an Identity never holds).
        let sig = self.kp.sign(&input).unwrap_or_default();
        Signature {
            key: self.public.clone(),
            time,
            sig: URL_SAFE_NO_PAD.encode(sig),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_round_trips_and_keeps_the_public_key() {
        let a = Identity::generate();
        let b = Identity::from_seed(&a.seed().expect("seed")).expect("parses");
        assert_eq!(a.public_key(), b.public_key());
        assert!(a.public_key().starts_with('U'));
    }

    #[test]
    fn non_user_seeds_and_garbage_are_refused_with_the_reason() {
        let server = KeyPair::new_server().seed().expect("seed");
        let e = Identity::from_seed(&server).expect_err("server seed");
        assert!(e.to_string().contains("user key"), "{e}");
        let e = Identity::from_seed("SUnotaseed").expect_err("garbage");
        assert!(e.to_string().contains("not an NKey seed"), "{e}");
    }

    #[test]
    fn the_signature_is_base64url_without_padding_and_the_time_ends_in_z() {
        let id = Identity::generate();
        let at = DateTime::parse_from_rfc3339("2026-11-30T12:00:00.5Z")
            .expect("time")
            .with_timezone(&Utc);
        let s = id.sign("consensus.vote", b"{}", at);
        assert_eq!(s.time, "2026-11-30T12:00:00.500000Z");
        assert_eq!(s.sig.len(), 86, "64 bytes in unpadded base64");
        assert!(!s.sig.contains(['=', '+', '/']));
        let raw = URL_SAFE_NO_PAD.decode(&s.sig).expect("decodes");
        let pk = KeyPair::from_public_key(&s.key).expect("public");
        pk.verify(&signing_input("consensus.vote", &s.time, b"{}"), &raw)
            .expect("verifies");
    }
}
