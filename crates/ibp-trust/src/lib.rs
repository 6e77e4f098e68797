//! Trusted consensus: who may speak for which node, and proof that it did.
//!
//! Every node may hold an Ed25519 key in NATS NKey form ([`Identity`]). It signs what it
//! publishes on the consensus subjects; the signature rides in three NATS headers
//! ([`HDR_KEY`], [`HDR_SIG_TIME`], [`HDR_SIG`]) that Go nodes ignore, so the wire stays the
//! same. The [`TrustList`] maps public keys to node IDs and roles; a [`Verifier`] checks a
//! received message against it: signed, by a trusted key, recently, once, for the node ID
//! and role the body claims. What a node does with a rejection depends on its [`Mode`].
//! Monitors also accept a message through a [`Pairwise`] authenticator ([`HDR_MAC`]),
//! which proves the same as the signature for a fraction of the cost.
//!
//! Pure: no sockets, no files, no clock — the time comes in. The format is specified in
//! `docs/signing.md` so other implementations can sign too.

mod identity;
mod pairwise;
mod replay;
mod trust;
mod verify;

pub use identity::{Identity, KeyError, SigHeaders, Signature, signing_input};
pub use pairwise::Pairwise;
pub use replay::ReplayCache;
pub use trust::{TrustEntry, TrustError, TrustList, Trusted};
pub use verify::{Mode, Reject, Verifier};

/// The signer's public key (an NKey user key, `U…`).
pub const HDR_KEY: &str = "Ibp-Key";
/// The signing time: RFC 3339, UTC, `Z` suffix.
pub const HDR_SIG_TIME: &str = "Ibp-Sig-Time";
/// The Ed25519 signature, base64url without padding, over [`signing_input`].
pub const HDR_SIG: &str = "Ibp-Sig";
/// Optional: one authenticator per trusted monitor, `address=tag,…` ([`Pairwise`]).
pub const HDR_MAC: &str = "Ibp-Mac";
