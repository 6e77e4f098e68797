//! Checking a received message's signature, and what a node does about a failed check.

use std::str::FromStr;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, TimeDelta, Utc};
use ibp_wire::Role;

use crate::identity::{SigHeaders, signing_input};
use crate::pairwise::Pairwise;
use crate::replay::ReplayCache;
use crate::trust::{TrustList, Trusted};

/// What a node does with messages that fail verification (`IbpNode.security.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// The reference behaviour: nothing is checked (a node with a key still signs).
    #[default]
    Off,
    /// Everything is checked and failures are counted and logged, but nothing is dropped:
    /// what `enforce` would drop, seen before switching.
    Verify,
    /// Failures are dropped; only trusted monitors count, propose, vote and finalize, and a
    /// finalize needs the verified votes behind it.
    Enforce,
}

impl Mode {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Verify => "verify",
            Mode::Enforce => "enforce",
        }
    }

    /// Whether received messages are checked.
    pub fn checks(self) -> bool {
        self != Mode::Off
    }

    /// Whether failures are dropped.
    pub fn drops(self) -> bool {
        self == Mode::Enforce
    }
}

impl FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Mode, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" => Ok(Mode::Off),
            "verify" => Ok(Mode::Verify),
            "enforce" => Ok(Mode::Enforce),
            other => Err(format!("{other:?} is not off, verify or enforce")),
        }
    }
}

/// Why a message failed verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reject {
    /// No signature headers.
    Unsigned,
    /// Signature headers that cannot be read (one missing, a bad time or encoding).
    Malformed,
    /// Signed by a key the trust list does not hold.
    Untrusted,
    /// Signed further than `max_age` from the receiver's clock (or the stored time).
    Expired,
    /// The same signature was accepted before within the window.
    Replayed,
    /// The signature does not match the subject, time and payload.
    BadSignature,
    /// The body names another node than the one the key speaks for.
    SenderMismatch,
    /// The body claims, or the subject needs, another role than the key's.
    RoleMismatch,
}

impl Reject {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Reject::Unsigned => "unsigned",
            Reject::Malformed => "malformed",
            Reject::Untrusted => "untrusted",
            Reject::Expired => "expired",
            Reject::Replayed => "replayed",
            Reject::BadSignature => "bad_signature",
            Reject::SenderMismatch => "sender_mismatch",
            Reject::RoleMismatch => "role_mismatch",
        }
    }
}

impl std::fmt::Display for Reject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Checks signatures: age window, replays (bounded memory), trust, the signature itself.
#[derive(Debug)]
pub struct Verifier {
    max_age: TimeDelta,
    replay: ReplayCache,
    pairwise: Option<std::sync::Arc<Pairwise>>,
    by_mac: u64,
}

struct Parsed {
    time: DateTime<Utc>,
    sig: [u8; 64],
}

fn parse<'a>(h: &SigHeaders<'a>) -> Result<(&'a str, &'a str, Parsed), Reject> {
    let (key, time, sig) = match (h.key, h.time, h.sig) {
        (None, None, None) => return Err(Reject::Unsigned),
        (Some(k), Some(t), Some(s)) => (k, t, s),
        _ => return Err(Reject::Malformed),
    };
    if !time.ends_with('Z') {
        return Err(Reject::Malformed);
    }
    let at = DateTime::parse_from_rfc3339(time)
        .map_err(|_| Reject::Malformed)?
        .with_timezone(&Utc);
    let raw = URL_SAFE_NO_PAD
        .decode(sig.trim())
        .map_err(|_| Reject::Malformed)?;
    let sig: [u8; 64] = raw.try_into().map_err(|_| Reject::Malformed)?;
    Ok((key.trim(), time, Parsed { time: at, sig }))
}

impl Verifier {
    /// A verifier accepting signatures at most `max_age` from the receiver's clock and
    /// remembering at most `replay_cap` accepted signatures.
    pub fn new(max_age: Duration, replay_cap: usize) -> Verifier {
        Verifier {
            max_age: TimeDelta::from_std(max_age).unwrap_or(TimeDelta::MAX),
            replay: ReplayCache::new(replay_cap),
            pairwise: None,
            by_mac: 0,
        }
    }

    /// The keys this node shares with trusted nodes, for accepting their authenticators
    /// ([`Pairwise`]); `None` verifies every signature.
    pub fn set_pairwise(&mut self, p: Option<std::sync::Arc<Pairwise>>) {
        self.pairwise = p;
    }

    /// The keys set by [`Verifier::set_pairwise`], which signing uses too.
    pub fn pairwise(&self) -> Option<std::sync::Arc<Pairwise>> {
        self.pairwise.clone()
    }

    /// Messages accepted through an authenticator rather than an Ed25519 verification.
    pub fn accepted_by_mac(&self) -> u64 {
        self.by_mac
    }

    /// Checks a live message published on `subject` with `payload`, received at `now`:
    /// signed, by a trusted key, within the window, not seen before. Returns who signed.
    pub fn verify(
        &mut self,
        trust: &TrustList,
        subject: &str,
        payload: &[u8],
        h: SigHeaders<'_>,
        now: DateTime<Utc>,
    ) -> Result<Trusted, Reject> {
        let (key, time, p) = parse(&h)?;
        let who = trust.get(key).ok_or(Reject::Untrusted)?;
        if now.signed_duration_since(p.time).abs() > self.max_age {
            return Err(Reject::Expired);
        }
        if self.replay.seen(&p.sig) {
            return Err(Reject::Replayed);
        }
        let input = signing_input(subject, time, payload);
        // The authenticator covers the signature too, so the replay memory, keyed by the
        // signature, cannot be dodged by bending the signature of a MAC-accepted copy.
        let by_mac = match (&self.pairwise, h.mac) {
            (Some(pw), Some(header)) => pw.accepts(key, header, &p.sig, &input),
            _ => false,
        };
        if by_mac {
            self.by_mac += 1;
        } else if !who.verifies(&input, &p.sig) {
            return Err(Reject::BadSignature);
        }
        self.replay.insert(p.sig, p.time, now - self.max_age);
        Ok(who.clone())
    }

    /// Checks a message a JetStream stream stored at `stored_at`: aged by that time, not
    /// the receiver's clock, so catching up after a restart loses nothing; no replay
    /// memory (a stream redelivers by design, and what it delivers is recorded
    /// idempotently; a copy published again later is stored later and fails the age).
    pub fn verify_stored(
        &self,
        trust: &TrustList,
        subject: &str,
        payload: &[u8],
        h: SigHeaders<'_>,
        stored_at: DateTime<Utc>,
    ) -> Result<Trusted, Reject> {
        let (key, time, p) = parse(&h)?;
        let who = trust.get(key).ok_or(Reject::Untrusted)?;
        if stored_at.signed_duration_since(p.time).abs() > self.max_age {
            return Err(Reject::Expired);
        }
        if !who.verifies(&signing_input(subject, time, payload), &p.sig) {
            return Err(Reject::BadSignature);
        }
        Ok(who.clone())
    }

    /// Remembers a signature this node made itself, so a copy of its own message sent
    /// back to it is a replay too (a node does not receive what it publishes).
    pub fn remember_own(&mut self, sig: &str, at: DateTime<Utc>, now: DateTime<Utc>) {
        if let Ok(raw) = URL_SAFE_NO_PAD.decode(sig)
            && let Ok(sig) = <[u8; 64]>::try_from(raw)
        {
            self.replay.insert(sig, at, now - self.max_age);
        }
    }

    /// Checks what the body claims against the key: the node ID it names (when it names
    /// one) and the role (claimed in the body, or needed by the subject).
    pub fn claim(who: &Trusted, node_id: Option<&str>, role: Option<Role>) -> Result<(), Reject> {
        if let Some(id) = node_id
            && id != who.node_id
        {
            return Err(Reject::SenderMismatch);
        }
        if let Some(r) = role
            && r != who.role
        {
            return Err(Reject::RoleMismatch);
        }
        Ok(())
    }

    /// Accepted signatures remembered now.
    pub fn remembered(&self) -> usize {
        self.replay.len()
    }

    /// Accepted signatures forgotten early because the memory was full.
    pub fn evicted_early(&self) -> u64 {
        self.replay.evicted_early()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Identity, TrustEntry};

    fn at(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).expect("time")
    }

    fn setup() -> (Identity, Identity, TrustList) {
        let good = Identity::generate();
        let stranger = Identity::generate();
        let entries = [TrustEntry {
            public_key: good.public_key().into(),
            node_id: "monitor-1".into(),
            role: "IBPMonitor".into(),
        }];
        let t = TrustList::build([("trust", &entries[..])]).expect("trust");
        (good, stranger, t)
    }

    fn hdrs(s: &crate::Signature) -> SigHeaders<'_> {
        s.headers()
    }

    /// A monitor with pairwise keys accepts a trusted monitor's message by its
    /// authenticator, with the same verdicts the signature alone gives: a bent tag falls
    /// back to the signature, a bent signature under a good tag is refused, a copy is a
    /// replay, and a tag cannot vouch for bytes or a key it was not made for.
    #[test]
    fn authenticators_give_the_signatures_verdicts_without_the_curve() {
        let (a, b) = (Identity::generate(), Identity::generate());
        let entries: Vec<TrustEntry> = [(&a, "monitor-a"), (&b, "monitor-b")]
            .iter()
            .map(|(k, id)| TrustEntry {
                public_key: k.public_key().into(),
                node_id: (*id).into(),
                role: "IBPMonitor".into(),
            })
            .collect();
        let t = TrustList::build([("trust", &entries[..])]).expect("trust");
        let pa = crate::Pairwise::new(&a, &t);
        let pb = std::sync::Arc::new(crate::Pairwise::new(&b, &t));
        let mut v = Verifier::new(Duration::from_secs(120), 1000);
        v.set_pairwise(Some(pb));
        let subj = "consensus.vote";
        let body = br#"{"ProposalID":"p"}"#;

        let s = a.sign_for(subj, body, at(0), Some(&pa));
        assert!(s.mac.is_some());
        assert_eq!(
            v.verify(&t, subj, b"{}", hdrs(&s), at(0)).err(),
            Some(Reject::BadSignature),
            "the tag is over the bytes"
        );
        assert_eq!(v.accepted_by_mac(), 0);
        let who = v.verify(&t, subj, body, hdrs(&s), at(0)).expect("by tag");
        assert_eq!(who.node_id, "monitor-a");
        assert_eq!(v.accepted_by_mac(), 1);
        assert_eq!(
            v.verify(&t, subj, body, hdrs(&s), at(1)).err(),
            Some(Reject::Replayed)
        );

        // A bent tag: the signature still proves it.
        let s = a.sign_for(subj, body, at(2), Some(&pa));
        let bent_tag = s.mac.clone().map(|mut m| {
            // The header holds one tag here (b's): bend its first character.
            let c = if m.starts_with('A') { "B" } else { "A" };
            m.replace_range(0..1, c);
            m
        });
        let h = SigHeaders {
            mac: bent_tag.as_deref(),
            ..hdrs(&s)
        };
        v.verify(&t, subj, body, h, at(2)).expect("by signature");
        assert_eq!(v.accepted_by_mac(), 1);

        // A bent signature under the original tag: the tag covers the signature.
        let s = a.sign_for(subj, body, at(3), Some(&pa));
        let mut raw = URL_SAFE_NO_PAD.decode(&s.sig).expect("b64");
        raw[5] ^= 1;
        let bent_sig = URL_SAFE_NO_PAD.encode(raw);
        let h = SigHeaders {
            sig: Some(&bent_sig),
            ..hdrs(&s)
        };
        assert_eq!(
            v.verify(&t, subj, body, h, at(3)).err(),
            Some(Reject::BadSignature)
        );
        // Out of the window: the tag does not lift the age rule.
        assert_eq!(
            v.verify(&t, subj, body, hdrs(&s), at(200)).err(),
            Some(Reject::Expired)
        );
    }

    #[test]
    fn every_failure_has_its_reason() {
        let (good, stranger, t) = setup();
        let mut v = Verifier::new(Duration::from_secs(120), 1000);
        let subj = "consensus.vote";
        let body = br#"{"ProposalID":"p"}"#;
        let s = good.sign(subj, body, at(0));

        assert_eq!(
            v.verify(&t, subj, body, SigHeaders::default(), at(0)).err(),
            Some(Reject::Unsigned)
        );
        let partial = SigHeaders {
            sig: None,
            ..hdrs(&s)
        };
        assert_eq!(
            v.verify(&t, subj, body, partial, at(0)).err(),
            Some(Reject::Malformed)
        );
        let s2 = stranger.sign(subj, body, at(0));
        assert_eq!(
            v.verify(&t, subj, body, hdrs(&s2), at(0)).err(),
            Some(Reject::Untrusted)
        );
        assert_eq!(
            v.verify(&t, subj, body, hdrs(&s), at(121)).err(),
            Some(Reject::Expired)
        );
        assert_eq!(
            v.verify(&t, subj, body, hdrs(&s), at(-121)).err(),
            Some(Reject::Expired)
        );
        assert_eq!(
            v.verify(&t, "consensus.finalize", body, hdrs(&s), at(1))
                .err(),
            Some(Reject::BadSignature),
            "the subject is signed"
        );
        assert_eq!(
            v.verify(&t, subj, b"{}", hdrs(&s), at(1)).err(),
            Some(Reject::BadSignature)
        );
        let who = v.verify(&t, subj, body, hdrs(&s), at(1)).expect("valid");
        assert_eq!(who.node_id, "monitor-1");
        assert_eq!(
            v.verify(&t, subj, body, hdrs(&s), at(2)).err(),
            Some(Reject::Replayed)
        );
        assert_eq!(
            Verifier::claim(&who, Some("monitor-2"), None),
            Err(Reject::SenderMismatch)
        );
        assert_eq!(
            Verifier::claim(&who, Some("monitor-1"), Some(Role::Dns)),
            Err(Reject::RoleMismatch)
        );
        assert_eq!(
            Verifier::claim(&who, Some("monitor-1"), Some(Role::Monitor)),
            Ok(())
        );
    }

    #[test]
    fn a_stored_message_is_aged_by_its_stored_time() {
        let (good, _, t) = setup();
        let v = Verifier::new(Duration::from_secs(120), 10);
        let s = good.sign("consensus.finalize", b"x", at(0));
        // Replayed from the stream an hour later: fine, it was stored at once.
        assert!(
            v.verify_stored(&t, "consensus.finalize", b"x", hdrs(&s), at(1))
                .is_ok()
        );
        assert!(
            v.verify_stored(&t, "consensus.finalize", b"x", hdrs(&s), at(1))
                .is_ok()
        );
        // Published again into the stream much later: too old.
        assert_eq!(
            v.verify_stored(&t, "consensus.finalize", b"x", hdrs(&s), at(3600))
                .err(),
            Some(Reject::Expired)
        );
    }

    proptest::proptest! {
        #[test]
        fn any_change_to_subject_time_or_payload_breaks_the_signature(
            payload in proptest::collection::vec(proptest::num::u8::ANY, 0..256),
            flip in 0usize..1024,
            bit in 0u8..8,
        ) {
            let (good, _, t) = setup();
            let mut v = Verifier::new(Duration::from_secs(120), 10);
            let s = good.sign("consensus.propose", &payload, at(0));
            let mut bad = payload.clone();
            if bad.is_empty() {
                bad.push(1);
            } else {
                let i = flip % bad.len();
                bad[i] ^= 1 << bit;
            }
            proptest::prop_assert_eq!(
                v.verify(&t, "consensus.propose", &bad, hdrs(&s), at(0)).err(),
                Some(Reject::BadSignature)
            );
            let later = good.sign("consensus.propose", &payload, at(1));
            let mixed = SigHeaders { time: Some(&later.time), ..hdrs(&s) };
            proptest::prop_assert_eq!(
                v.verify(&t, "consensus.propose", &payload, mixed, at(0)).err(),
                Some(Reject::BadSignature)
            );
            proptest::prop_assert!(v.verify(&t, "consensus.propose", &payload, hdrs(&s), at(0)).is_ok());
        }
    }
}
