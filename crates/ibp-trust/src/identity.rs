//! A node's signing identity and the signature format.

use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, SecondsFormat, Utc};
use curve25519_dalek::Scalar;
use curve25519_dalek::edwards::EdwardsPoint;
use ed25519_dalek::hazmat::ExpandedSecretKey;
use nkeys::{KeyPair, KeyPairType};
use sha2::{Digest, Sha512};
use zeroize::Zeroize;

use crate::pairwise::Pairwise;

/// Why a seed or key could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(String);

/// A node's Ed25519 key pair (an NKey *user* key, so the same seed can be the node's NATS
/// NKey credential).
///
/// Signatures are standard Ed25519 (any verifier accepts them) but use a random nonce
/// drawn ahead of time: `R = r·B`, the costly part of signing, is computed in idle time
/// ([`Identity::precompute`]), so signing a message on the hot path costs a hash and a
/// scalar multiply-add. Verification cannot tell how `r` was chosen; what matters is that
/// each `r` is secret, uniform and used once (taken out of the pool under a lock). With
/// the pool empty a fresh nonce is drawn on the spot.
pub struct Identity {
    kp: KeyPair,
    public: String,
    raw_public: [u8; 32],
    /// The Ed25519 secret scalar `a`.
    scalar: Scalar,
    /// The lower half of SHA-512(seed): the X25519 secret of the same key (clamped when
    /// used), for pairwise authenticator keys.
    dh: [u8; 32],
    nonces: Mutex<Vec<Nonce>>,
}

/// A signing nonce: secret `r` and the encoded `R = r·B`.
struct Nonce {
    r: Scalar,
    big_r: [u8; 32],
}

impl Nonce {
    /// A uniformly random nonce from the operating system's generator.
    fn fresh() -> Option<Nonce> {
        let mut wide = [0u8; 64];
        getrandom::getrandom(&mut wide).ok()?;
        let r = Scalar::from_bytes_mod_order_wide(&wide);
        wide.zeroize();
        if r == Scalar::ZERO {
            return None;
        }
        let big_r = EdwardsPoint::mul_base(&r).compress().to_bytes();
        Some(Nonce { r, big_r })
    }
}

impl Drop for Nonce {
    fn drop(&mut self) {
        self.r.zeroize();
    }
}

impl Drop for Identity {
    fn drop(&mut self) {
        self.scalar.zeroize();
        self.dh.zeroize();
    }
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
    /// [`crate::HDR_MAC`]: authenticators for the trusted monitors, when made for them.
    pub mac: Option<String>,
}

impl Signature {
    /// The headers as a receiver finds them.
    pub fn headers(&self) -> SigHeaders<'_> {
        SigHeaders {
            key: Some(&self.key),
            time: Some(&self.time),
            sig: Some(&self.sig),
            mac: self.mac.as_deref(),
        }
    }
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
    /// [`crate::HDR_MAC`].
    pub mac: Option<&'a str>,
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
    fn of(kp: KeyPair) -> Result<Identity, KeyError> {
        let public = kp.public_key();
        let seed = kp.seed().map_err(|e| KeyError(e.to_string()))?;
        let (_, mut raw) =
            nkeys::decode_seed(&seed).map_err(|e| KeyError(format!("not an NKey seed: {e}")))?;
        // SHA-512(seed): its lower half is both the Ed25519 scalar (clamped) and the
        // X25519 secret.
        let mut wide: [u8; 64] = Sha512::digest(raw).into();
        raw.zeroize();
        let esk = ExpandedSecretKey::from_bytes(&wide);
        let mut dh = [0u8; 32];
        dh.copy_from_slice(&wide[..32]);
        wide.zeroize();
        let raw_public = crate::trust::raw_public(&public)
            .ok_or_else(|| KeyError("the key pair's public key does not decode".into()))?;
        Ok(Identity {
            kp,
            public,
            raw_public,
            scalar: esk.scalar,
            dh,
            nonces: Mutex::new(Vec::new()),
        })
    }

    /// A new random identity.
    pub fn generate() -> Identity {
        // A freshly generated user key always has a seed that decodes.
        Identity::of(KeyPair::new_user()).expect("a generated NKey user key")
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
        Identity::of(kp)
    }

    /// The seed (`SU…`), for writing the key file.
    pub fn seed(&self) -> Result<String, KeyError> {
        self.kp.seed().map_err(|e| KeyError(e.to_string()))
    }

    /// The public key (`U…`).
    pub fn public_key(&self) -> &str {
        &self.public
    }

    /// The X25519 secret of this key (see [`Pairwise`]).
    pub(crate) fn dh_secret(&self) -> [u8; 32] {
        self.dh
    }

    /// The 32 bytes of the public key.
    pub(crate) fn raw_public(&self) -> &[u8; 32] {
        &self.raw_public
    }

    /// Signs `payload` published on `subject` at `at`.
    pub fn sign(&self, subject: &str, payload: &[u8], at: DateTime<Utc>) -> Signature {
        self.sign_for(subject, payload, at, None)
    }

    /// Signs as [`Identity::sign`] and, with `pairwise`, adds an authenticator for every
    /// trusted monitor, which lets them accept the message without an Ed25519
    /// verification.
    pub fn sign_for(
        &self,
        subject: &str,
        payload: &[u8],
        at: DateTime<Utc>,
        pairwise: Option<&Pairwise>,
    ) -> Signature {
        let time = at.to_rfc3339_opts(SecondsFormat::Micros, true);
        let input = signing_input(subject, &time, payload);
        let sig = self.sign_raw(&input);
        Signature {
            key: self.public.clone(),
            mac: pairwise.and_then(|p| p.header(&sig, &input)),
            time,
            sig: URL_SAFE_NO_PAD.encode(sig),
        }
    }

    /// An Ed25519 signature of `input`: `R || s` with `s = H(R || A || input)·a + r`.
    fn sign_raw(&self, input: &[u8]) -> [u8; 64] {
        // Never wait for the pool: the refill holds its lock from a thread at idle
        // priority, which a busy machine may not run for a while. Busy or poisoned, a
        // nonce is drawn on the spot.
        let pooled = self.nonces.try_lock().ok().and_then(|mut p| p.pop());
        let Some(n) = pooled.or_else(Nonce::fresh) else {
            // No randomness to be had: the deterministic RFC 8032 signature. Signing with
            // a loaded private key cannot fail (nkeys errs only for public-only pairs).
            let mut out = [0u8; 64];
            if let Ok(sig) = self.kp.sign(input) {
                out.copy_from_slice(&sig);
            }
            return out;
        };
        let k = Scalar::from_hash(
            Sha512::new()
                .chain_update(n.big_r)
                .chain_update(self.raw_public)
                .chain_update(input),
        );
        let s = k * self.scalar + n.r;
        let mut out = [0u8; 64];
        out[..32].copy_from_slice(&n.big_r);
        out[32..].copy_from_slice(s.as_bytes());
        out
    }

    /// Fills the nonce pool up to `target`, computing outside the lock so signing never
    /// waits for it. Returns how many it added.
    pub fn precompute(&self, target: usize) -> usize {
        let mut added = 0;
        loop {
            let have = self.nonces_left();
            if have >= target {
                return added;
            }
            let batch: Vec<Nonce> = (0..(target - have).min(32))
                .filter_map(|_| Nonce::fresh())
                .collect();
            if batch.is_empty() {
                return added;
            }
            added += batch.len();
            match self.nonces.lock() {
                Ok(mut p) => p.extend(batch),
                Err(_) => return added,
            }
        }
    }

    /// Nonces ready in the pool.
    pub fn nonces_left(&self) -> usize {
        self.nonces.lock().map(|p| p.len()).unwrap_or(0)
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

    /// Signatures from the pool and from fresh nonces are plain Ed25519: nkeys (which
    /// NATS itself uses) and ed25519-dalek's strict check both accept them; every one is
    /// different (a nonce is never used twice) and none verifies for other bytes.
    #[test]
    fn pooled_and_fresh_nonce_signatures_are_standard_ed25519_and_never_repeat() {
        let id = Identity::generate();
        assert_eq!(id.precompute(64), 64);
        assert_eq!(id.nonces_left(), 64);
        let pk = KeyPair::from_public_key(id.public_key()).expect("public");
        let dalek = ed25519_dalek::VerifyingKey::from_bytes(id.raw_public()).expect("key");
        let at = Utc::now();
        let mut seen = std::collections::HashSet::new();
        // 64 from the pool, then 64 drawn on the spot.
        for i in 0..128 {
            let s = id.sign("consensus.vote", b"same bytes", at);
            let raw = URL_SAFE_NO_PAD.decode(&s.sig).expect("b64");
            let input = signing_input("consensus.vote", &s.time, b"same bytes");
            pk.verify(&input, &raw)
                .unwrap_or_else(|e| panic!("signature {i}: {e}"));
            let sig = ed25519_dalek::Signature::from_slice(&raw).expect("64 bytes");
            dalek.verify_strict(&input, &sig).expect("strict");
            assert!(pk.verify(b"other bytes", &raw).is_err());
            assert!(seen.insert(raw[..32].to_vec()), "nonce R reused at {i}");
        }
        assert_eq!(id.nonces_left(), 0);
    }

    #[test]
    fn a_seeded_identity_signs_what_the_seed_verifies() {
        let a = Identity::generate();
        let b = Identity::from_seed(&a.seed().expect("seed")).expect("parses");
        b.precompute(4);
        let s = b.sign("consensus.propose", b"{}", Utc::now());
        let raw = URL_SAFE_NO_PAD.decode(&s.sig).expect("b64");
        let pk = KeyPair::from_public_key(a.public_key()).expect("public");
        pk.verify(&signing_input("consensus.propose", &s.time, b"{}"), &raw)
            .expect("the seed's public key verifies");
    }
}
