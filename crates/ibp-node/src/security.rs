//! The node's side of trusted consensus: signing what it publishes on the consensus
//! subjects, checking what it receives against the trust list, and what the mode makes of
//! a failed check. The rules are in `ibp-trust` (pure); here they meet headers, metrics,
//! logs and the trust file.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::header::HeaderName;
use chrono::{DateTime, Utc};
use ibp_trust::{
    HDR_KEY, HDR_MAC, HDR_SIG, HDR_SIG_TIME, Identity, Mode, Pairwise, Reject, SigHeaders,
    TrustEntry, TrustList, Trusted, Verifier,
};
use ibp_wire::{ClusterMessage, FinalizeMessage, Proposal, Role, Vote};

use crate::metrics::Metrics;

/// Signatures remembered against replays, at most (a trusted node's legitimate traffic
/// over the age window stays far below this).
pub const DEFAULT_REPLAY_MEMORY: usize = 262_144;

/// Signing nonces kept ready (64 bytes each): a burst of this many signatures costs a
/// hash each; the pool is refilled in the background once below [`NONCES_LOW`].
pub const NONCES_READY: usize = 512;
/// The pool level that starts a refill.
pub const NONCES_LOW: usize = 128;

/// What a received consensus message says about who sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim<'a> {
    /// Node IDs the body names as its sender (all must be the key's).
    pub ids: Vec<&'a str>,
    /// The role the body claims or the subject needs (`None`: the body states none).
    pub role: Option<Role>,
}

/// Messages whose sender a signature must vouch for.
pub trait Claims {
    /// Who the body says sent it.
    fn claim(&self) -> Claim<'_>;

    /// For votes and finalizes: the proposal they settle, and (finalizes) whether it
    /// passed, so a node can tell one that can change nothing anymore.
    fn settles(&self) -> Option<(&str, Option<bool>)> {
        None
    }
}

impl Claims for ClusterMessage {
    fn claim(&self) -> Claim<'_> {
        Claim {
            ids: vec![self.sender.node_id.as_str()],
            role: Role::from_wire(&self.sender.node_role),
        }
    }
}

impl Claims for Proposal {
    fn claim(&self) -> Claim<'_> {
        Claim {
            ids: vec![self.sender_node_id.as_str()],
            role: Some(Role::Monitor),
        }
    }
}

impl Claims for Vote {
    fn settles(&self) -> Option<(&str, Option<bool>)> {
        Some((self.proposal_id.as_str(), None))
    }

    fn claim(&self) -> Claim<'_> {
        let mut ids = vec![self.sender_node_id.as_str()];
        if !self.node_id.is_empty() {
            ids.push(self.node_id.as_str());
        }
        Claim {
            ids,
            role: Some(Role::Monitor),
        }
    }
}

impl Claims for FinalizeMessage {
    fn settles(&self) -> Option<(&str, Option<bool>)> {
        Some((self.proposal.id.as_str(), Some(self.passed)))
    }

    fn claim(&self) -> Claim<'_> {
        Claim {
            ids: vec![self.finalizer()],
            role: Some(Role::Monitor),
        }
    }
}

/// Where the trust list comes from.
#[derive(Debug, Clone, Default)]
pub struct TrustSources {
    /// `IbpNode.security.trust`.
    pub inline: Vec<TrustEntry>,
    /// `IbpNode.security.trust_file` (reloaded like the member list).
    pub file: Option<PathBuf>,
}

impl TrustSources {
    /// Reads the file (if any) and builds the merged list.
    pub fn load(&self) -> Result<TrustList, String> {
        let from_file = match &self.file {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    format!(
                        "IbpNode.security.trust_file: cannot read {}: {e}",
                        p.display()
                    )
                })?;
                TrustList::parse_json(&text, "IbpNode.security.trust_file")
                    .map_err(|e| e.to_string())?
            }
            None => Vec::new(),
        };
        TrustList::build([
            ("IbpNode.security.trust", &self.inline[..]),
            ("IbpNode.security.trust_file", &from_file[..]),
        ])
        .map_err(|e| e.to_string())
    }
}

/// A node's security state: its mode, key, trust list and replay memory.
pub struct Security {
    mode: Mode,
    identity: Option<Arc<Identity>>,
    sources: TrustSources,
    trust: RwLock<Arc<TrustList>>,
    /// A nonce refill is running.
    refilling: Arc<std::sync::atomic::AtomicBool>,
    verifier: Mutex<Verifier>,
    log_gate: crate::connection::LogGate,
    /// Trusted senders whose signatures were refused as outside `max_age`: the skew
    /// (their signing time minus this node's clock, seconds) and when, for `/healthz`.
    skews: Mutex<BTreeMap<String, (i64, DateTime<Utc>)>>,
}

/// How long a refused signature's clock skew is shown in `/healthz`.
pub const SKEW_SHOWN: Duration = Duration::from_secs(300);

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("mode", &self.mode)
            .field("public_key", &self.public_key())
            .field("trusted", &self.trust().len())
            .finish()
    }
}

impl Default for Security {
    fn default() -> Self {
        Security::off()
    }
}

impl Security {
    /// The reference behaviour: no key, nothing checked.
    pub fn off() -> Security {
        Security::new(
            Mode::Off,
            None,
            TrustSources::default(),
            TrustList::default(),
            Duration::from_secs(120),
            DEFAULT_REPLAY_MEMORY,
        )
    }

    /// A security state; `trust` is the list already loaded from `sources`.
    pub fn new(
        mode: Mode,
        identity: Option<Arc<Identity>>,
        sources: TrustSources,
        trust: TrustList,
        max_age: Duration,
        replay_memory: usize,
    ) -> Security {
        // The keys shared with trusted nodes live in the verifier, which checks tags;
        // signing takes them from there.
        let mut verifier = Verifier::new(max_age, replay_memory);
        verifier.set_pairwise(pairwise_of(identity.as_deref(), &trust));
        Security {
            mode,
            identity,
            sources,
            trust: RwLock::new(Arc::new(trust)),
            refilling: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            verifier: Mutex::new(verifier),
            log_gate: crate::connection::LogGate::new(),
            skews: Mutex::new(BTreeMap::new()),
        }
    }

    /// Whether the signing nonces are drawn (no refill running, the pool above its low
    /// mark) or there is no key: the steady state of a running node, which benchmarks
    /// wait for.
    pub fn signing_ready(&self) -> bool {
        self.identity.as_ref().is_none_or(|id| {
            !self.refilling.load(std::sync::atomic::Ordering::Acquire)
                && id.nonces_left() >= NONCES_LOW
        })
    }

    /// Tops up the signing nonces in the background (a thread at idle priority) when they
    /// run low; without a runtime, or with a refill already running, nothing.
    pub fn refill_nonces(&self) {
        use std::sync::atomic::Ordering;
        let Some(id) = self.identity.clone() else {
            return;
        };
        if id.nonces_left() >= NONCES_LOW {
            return;
        }
        // Outside a running node (a one-shot tool, a unit test) signing draws on the spot.
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        if self.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let flag = self.refilling.clone();
        // A thread of its own at idle priority, not the runtime's blocking pool: a refill
        // is ~7 ms of curve arithmetic that must not take a core from the decision it
        // follows (on two cores it did: the next hop's receivers waited for it). It runs
        // when the machine has nothing else to do; a monitor kept busy that long signs
        // with nonces drawn on the spot, which is slower, never wrong.
        let spawned = std::thread::Builder::new()
            .name("ibp-nonces".into())
            .spawn({
                let flag = flag.clone();
                move || {
                    // Cleared however the refill ends, so a later one can start.
                    struct Done(Arc<std::sync::atomic::AtomicBool>);
                    impl Drop for Done {
                        fn drop(&mut self) {
                            self.0.store(false, std::sync::atomic::Ordering::Release);
                        }
                    }
                    let _done = Done(flag);
                    idle_priority();
                    id.precompute(NONCES_READY);
                }
            });
        if spawned.is_err() {
            flag.store(false, Ordering::Release);
        }
    }

    /// Trusted senders refused in the last [`SKEW_SHOWN`] because their signatures were
    /// too far from this node's clock, with the skew: a stepped clock, here or there.
    pub fn clock_warnings(&self, now: DateTime<Utc>) -> Vec<String> {
        let Ok(mut skews) = self.skews.lock() else {
            return Vec::new();
        };
        let shown = chrono::TimeDelta::from_std(SKEW_SHOWN).unwrap_or(chrono::TimeDelta::MAX);
        skews.retain(|_, (_, at)| now.signed_duration_since(*at) <= shown);
        skews
            .iter()
            .map(|(who, (skew, _))| {
                format!(
                    "messages from {who} refused: signed {}s {} this node's clock (beyond max_age); one of the two clocks is wrong",
                    skew.abs(),
                    if *skew > 0 { "ahead of" } else { "behind" }
                )
            })
            .collect()
    }

    /// The mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// This node's public key, if it has one.
    pub fn public_key(&self) -> Option<&str> {
        self.identity.as_deref().map(Identity::public_key)
    }

    /// The current trust list.
    pub fn trust(&self) -> Arc<TrustList> {
        self.trust
            .read()
            .map(|t| t.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Whether this node's own key is in the trust list, for `node_id` and `role`.
    pub fn trusts_self(&self, node_id: &str, role: Role) -> bool {
        self.public_key()
            .and_then(|k| self.trust().get(k).cloned())
            .is_some_and(|t| t.node_id == node_id && t.role == role)
    }

    /// Re-reads the trust file. On an error the last good list stays.
    pub fn reload(&self) -> Result<usize, String> {
        let list = self.sources.load()?;
        let n = list.len();
        let pairwise = pairwise_of(self.identity.as_deref(), &list);
        if let Ok(mut v) = self.verifier.lock() {
            v.set_pairwise(pairwise);
        }
        if let Ok(mut t) = self.trust.write() {
            *t = Arc::new(list);
        }
        Ok(n)
    }

    /// Whether the trust list comes partly from a file to reload.
    pub fn has_trust_file(&self) -> bool {
        self.sources.file.is_some()
    }

    /// The signature headers for `payload` published on `subject` at `now` (none without
    /// a key).
    pub fn sign(&self, subject: &str, payload: &[u8], now: DateTime<Utc>) -> Option<HeaderMap> {
        let id = self.identity.as_ref()?;
        let pairwise = self.verifier.lock().ok().and_then(|v| v.pairwise());
        let s = id.sign_for(subject, payload, now, pairwise.as_deref());
        self.refill_nonces();
        if self.mode.checks()
            && let Ok(mut v) = self.verifier.lock()
        {
            v.remember_own(&s.sig, now, now);
        }
        // Static names and owned values: no copies on a path every publication takes.
        let mut h = HeaderMap::new();
        h.insert(NAME_KEY, s.key);
        h.insert(NAME_SIG_TIME, s.time);
        h.insert(NAME_SIG, s.sig);
        if let Some(mac) = s.mac {
            h.insert(NAME_MAC, mac);
        }
        Some(h)
    }

    /// Checks a live message. Counts and logs a failure in `verify` and `enforce`; returns
    /// whether the message may be handled (always, except failures in `enforce`).
    pub fn admit(
        &self,
        metrics: &Metrics,
        subject: &str,
        claim: Claim<'_>,
        headers: Option<&HeaderMap>,
        payload: &[u8],
        now: DateTime<Utc>,
    ) -> bool {
        let h = sig_headers(headers);
        let sender = claim.ids.first().copied();
        let mut expired = false;
        let ok = self.check(metrics, subject, Some(claim), h, |v, trust, h| {
            let before = v.accepted_by_mac();
            let r = v.verify(trust, subject, payload, h, now);
            metrics.trust_replay_memory.set(v.remembered() as i64);
            if v.accepted_by_mac() > before {
                metrics
                    .trust_by_mac
                    .get_or_create(&vec![("subject", crate::metrics::subject_label(subject))])
                    .inc();
            }
            expired = matches!(r, Err(Reject::Expired));
            r
        });
        if expired
            && let (Some(who), Some(t)) = (sender, h.time)
            && self.trust().knows_id(who)
            && let Ok(at) = DateTime::parse_from_rfc3339(t)
            && let Ok(mut skews) = self.skews.lock()
        {
            let skew = at
                .with_timezone(&Utc)
                .signed_duration_since(now)
                .num_seconds();
            skews.insert(who.to_string(), (skew, now));
        }
        ok
    }

    /// Checks a live message that any trusted key may send, whatever its role (an
    /// operator's `geodns.override.update`). Counted and concluded as [`Security::admit`].
    pub fn admit_any_trusted(
        &self,
        metrics: &Metrics,
        subject: &str,
        headers: Option<&HeaderMap>,
        payload: &[u8],
        now: DateTime<Utc>,
    ) -> bool {
        self.check(
            metrics,
            subject,
            None,
            sig_headers(headers),
            |v, trust, h| v.verify(trust, subject, payload, h, now),
        )
    }

    /// Checks a message a JetStream stream stored at `stored_at` (aged by that time; see
    /// [`Verifier::verify_stored`]). Same counting and outcome as [`Security::admit`].
    pub fn admit_stored(
        &self,
        metrics: &Metrics,
        subject: &str,
        claim: Claim<'_>,
        headers: Option<&HeaderMap>,
        payload: &[u8],
        stored_at: DateTime<Utc>,
    ) -> bool {
        self.check(
            metrics,
            subject,
            Some(claim),
            sig_headers(headers),
            |v, trust, h| v.verify_stored(trust, subject, payload, h, stored_at),
        )
    }

    /// Verifies a message; with a `claim`, the key must also be the sender's and role's
    /// the body names (without one, any trusted key may send it).
    fn check(
        &self,
        metrics: &Metrics,
        subject: &str,
        claim: Option<Claim<'_>>,
        h: SigHeaders<'_>,
        verify: impl FnOnce(&mut Verifier, &TrustList, SigHeaders<'_>) -> Result<Trusted, Reject>,
    ) -> bool {
        if !self.mode.checks() {
            return true;
        }
        let trust = self.trust();
        let verdict = self
            .verifier
            .lock()
            .map(|mut v| verify(&mut v, &trust, h))
            .unwrap_or(Err(Reject::Malformed))
            .and_then(|who| match &claim {
                Some(c) => check_claim(&who, c).map(|_| who),
                None => Ok(who),
            });
        self.conclude(metrics, subject, claim.as_ref(), &trust, verdict)
    }

    fn conclude(
        &self,
        metrics: &Metrics,
        subject: &str,
        claim: Option<&Claim<'_>>,
        trust: &TrustList,
        verdict: Result<Trusted, Reject>,
    ) -> bool {
        match verdict {
            Ok(_) => {
                metrics
                    .trust_verified
                    .get_or_create(&vec![("subject", crate::metrics::subject_label(subject))])
                    .inc();
                true
            }
            Err(reason) => {
                let claimed = claim.and_then(|c| c.ids.first().copied()).unwrap_or("");
                // The label stays bounded: strangers' made-up IDs are all `unknown`.
                let label = if trust.knows_id(claimed) {
                    claimed
                } else {
                    "unknown"
                };
                metrics.trust_rejected(subject, reason.as_str(), label);
                if let Some(suppressed) = self.log_gate.allow() {
                    tracing::warn!(subject, reason = %reason, sender = claimed, mode = self.mode.as_str(), suppressed,
                        "{}", if self.mode.drops() { "message failed verification; dropped" } else { "message failed verification; enforce mode would drop it" });
                }
                !self.mode.drops()
            }
        }
    }
}

/// Lowers the calling thread to the idle scheduling class (Linux `SCHED_IDLE`: it runs
/// only on a core nothing else wants). Best effort: elsewhere, or when refused, the thread
/// keeps its priority.
fn idle_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: an all-zero sched_param is valid on every libc (priority 0, which
        // SCHED_IDLE requires; musl has further fields); pid 0 is the calling thread
        // (scheduling policy is per thread on Linux); nothing else is touched.
        let rc = unsafe {
            let param: libc::sched_param = std::mem::zeroed();
            libc::sched_setscheduler(0, libc::SCHED_IDLE, &param)
        };
        if rc != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "nonce refill keeps normal priority");
        }
    }
}

/// The keys a node with `identity` shares with the nodes of `trust` (none without a key
/// or with nobody trusted).
fn pairwise_of(identity: Option<&Identity>, trust: &TrustList) -> Option<Arc<Pairwise>> {
    let id = identity?;
    let p = Pairwise::new(id, trust);
    (p.peers() > 0).then(|| Arc::new(p))
}

fn check_claim(who: &Trusted, claim: &Claim<'_>) -> Result<(), Reject> {
    for id in &claim.ids {
        Verifier::claim(who, Some(id), None)?;
    }
    match claim.role {
        Some(r) => Verifier::claim(who, None, Some(r)),
        // A node must say what it is; a trusted key does not lend its role to a silent body.
        None => Err(Reject::RoleMismatch),
    }
}

// Header names built once: looking up or inserting by `&str` makes a `HeaderName` (an
// allocation and a scan of the standard names) on every call.
const NAME_KEY: HeaderName = HeaderName::from_static(HDR_KEY);
const NAME_SIG_TIME: HeaderName = HeaderName::from_static(HDR_SIG_TIME);
const NAME_SIG: HeaderName = HeaderName::from_static(HDR_SIG);
const NAME_MAC: HeaderName = HeaderName::from_static(HDR_MAC);

fn sig_headers(h: Option<&HeaderMap>) -> SigHeaders<'_> {
    let get = |k: HeaderName| h.and_then(|h| h.get(k)).map(|v| v.as_str());
    SigHeaders {
        key: get(NAME_KEY),
        time: get(NAME_SIG_TIME),
        sig: get(NAME_SIG),
        mac: get(NAME_MAC),
    }
}

/// Keeps `/healthz` honest about trust and reloads the trust file every `period` (as the
/// member list is reloaded); a bad reload keeps the last good list and says so.
pub async fn watch_trust(
    node: crate::cluster::Node,
    role: Role,
    period: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let sec = node.options().security.clone();
    let health = node.health().clone();
    let judge = |sec: &Security| {
        if sec.public_key().is_some()
            && sec.mode().checks()
            && !sec.trusts_self(node.id().as_str(), role)
        {
            health.fail(
                crate::health::Part::Security,
                format!(
                    "this node's key {} is not trusted as {} ({}): nodes in enforce mode drop what it signs",
                    sec.public_key().unwrap_or_default(),
                    node.id(),
                    role
                ),
            );
        } else {
            health.recover(crate::health::Part::Security);
        }
    };
    judge(&sec);
    if !sec.has_trust_file() {
        return;
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = stop.changed() => return,
        }
        match sec.reload() {
            Ok(n) => {
                tracing::debug!(trusted = n, "trust list reloaded");
                judge(&sec);
            }
            Err(e) => {
                tracing::warn!(error = %e, "trust file reload failed; keeping the last good trust list");
                health.fail(
                    crate::health::Part::Security,
                    format!("trust file reload failed (the last good list is in use): {e}"),
                );
            }
        }
    }
}
