//! Prometheus metrics of one node. Each node owns its registry (no global state), so many
//! nodes can run in one process and each exposes only its own numbers.

use std::sync::Mutex;

use ibp_core::Counters;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = Vec<(&'static str, String)>;

fn histogram_family() -> Family<Labels, Histogram> {
    Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.000_1, 2.0, 22)))
}

/// The metrics of one node.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// Messages received, by subject (reply inboxes are grouped as `_INBOX`).
    pub messages_in: Family<Labels, Counter>,
    /// Messages published, by subject.
    pub messages_out: Family<Labels, Counter>,
    /// Messages that failed to decode, by subject.
    pub decode_failures: Family<Labels, Counter>,
    /// Publishes that failed, by subject.
    pub publish_failures: Family<Labels, Counter>,
    /// Message handlers that panicked (the subscription goes on).
    pub handler_panics: Counter,
    /// Reconnections to NATS after a disconnect.
    pub reconnects: Counter,
    /// Disconnections from NATS.
    pub disconnects: Counter,
    /// Slow-consumer events reported by the client (messages dropped by the client).
    pub slow_consumers: Counter,
    /// Proposals currently tracked.
    pub proposals_tracked: Gauge,
    /// Decisions learned, by `outcome` (passed/failed) and `by` (self/peer).
    pub decisions: Family<Labels, Counter>,
    /// Time from first seeing a proposal to its decision, seconds.
    pub decision_latency: Histogram,
    /// Active nodes, by role.
    pub active_nodes: Family<Labels, Gauge>,
    /// Duration of fan-out requests, by kind (usage/downtime), seconds.
    pub fanout_duration: Family<Labels, Histogram>,
    /// Things the core refused, dropped or ignored, by kind (caps, duplicates, expiries).
    pub core_events: Family<Labels, Counter>,
    last_core: Mutex<Counters>,
    /// Fan-out replies split into parts (sent).
    pub reply_parts_sent: Counter,
    /// Replies too large for a Go requester, answered with an error instead.
    pub replies_too_large: Counter,
    /// Storage writes or reads that failed, by operation (each retry counts).
    pub storage_errors: Family<Labels, Counter>,
    /// Writes the database refused for good and that were set aside, by kind.
    pub dead_letters: Family<Labels, Counter>,
    /// Items waiting to be written, by writer.
    pub write_queue: Family<Labels, Gauge>,
    /// Collator without JetStream: decisions it missed while it was away, by kind
    /// (`missed_start`, `missed_end`), as the monitors' official results tell at its start.
    pub collator_gaps: Family<Labels, Gauge>,
    /// Things a node ignored or held on purpose, by reason (stray replies, held finalizes,
    /// unknown checks, …).
    pub ignored: Family<Labels, Counter>,
    /// Duration of built-in checks, by check.
    pub check_duration: Family<Labels, Histogram>,
    /// Built-in check results, by check and outcome.
    pub checks: Family<Labels, Counter>,
    /// Received consensus messages that failed signature or trust checks, by subject,
    /// reason and claimed sender (a trusted ID, or `unknown`), in `verify` and `enforce`.
    pub trust_rejections: Family<Labels, Counter>,
    /// Received consensus messages that passed the checks, by subject.
    pub trust_verified: Family<Labels, Counter>,
    /// Of those, accepted through a pairwise authenticator instead of an Ed25519
    /// verification, by subject.
    pub trust_by_mac: Family<Labels, Counter>,
    /// Signatures remembered against replays.
    pub trust_replay_memory: Gauge,
    /// Votes and finalizes on proposals already decided, not checked (they change
    /// nothing; enforce drops them), by subject.
    pub trust_moot: Family<Labels, Counter>,
    /// Pages of official results asked of other monitors while catching up.
    pub sync_pages: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// Groups reply inboxes under one label so the label set stays bounded.
pub fn subject_label(subject: &str) -> String {
    if subject.starts_with("_INBOX.") {
        "_INBOX".to_string()
    } else {
        subject.to_string()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered under the `ibp_` prefix.
    pub fn new() -> Metrics {
        let m = Metrics {
            registry: Mutex::new(Registry::with_prefix("ibp")),
            messages_in: Family::default(),
            messages_out: Family::default(),
            decode_failures: Family::default(),
            publish_failures: Family::default(),
            handler_panics: Counter::default(),
            reconnects: Counter::default(),
            disconnects: Counter::default(),
            slow_consumers: Counter::default(),
            proposals_tracked: Gauge::default(),
            decisions: Family::default(),
            decision_latency: Histogram::new(exponential_buckets(0.000_1, 2.0, 22)),
            active_nodes: Family::default(),
            fanout_duration: histogram_family(),
            core_events: Family::default(),
            last_core: Mutex::new(Counters::default()),
            reply_parts_sent: Counter::default(),
            replies_too_large: Counter::default(),
            storage_errors: Family::default(),
            dead_letters: Family::default(),
            write_queue: Family::default(),
            collator_gaps: Family::default(),
            ignored: Family::default(),
            check_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 18))
            }),
            checks: Family::default(),
            trust_rejections: Family::default(),
            trust_verified: Family::default(),
            trust_by_mac: Family::default(),
            trust_replay_memory: Gauge::default(),
            trust_moot: Family::default(),
            sync_pages: Counter::default(),
        };
        if let Ok(mut r) = m.registry.lock() {
            r.register(
                "messages_in",
                "Messages received, by subject",
                m.messages_in.clone(),
            );
            r.register(
                "messages_out",
                "Messages published, by subject",
                m.messages_out.clone(),
            );
            r.register(
                "decode_failures",
                "Messages that failed to decode, by subject",
                m.decode_failures.clone(),
            );
            r.register(
                "publish_failures",
                "Publishes that failed, by subject",
                m.publish_failures.clone(),
            );
            r.register(
                "handler_panics",
                "Message handlers that panicked",
                m.handler_panics.clone(),
            );
            r.register(
                "nats_reconnects",
                "Reconnections to NATS",
                m.reconnects.clone(),
            );
            r.register(
                "nats_disconnects",
                "Disconnections from NATS",
                m.disconnects.clone(),
            );
            r.register(
                "nats_slow_consumers",
                "Slow-consumer events (client-side drops)",
                m.slow_consumers.clone(),
            );
            r.register(
                "proposals_tracked",
                "Proposals currently tracked",
                m.proposals_tracked.clone(),
            );
            r.register(
                "decisions",
                "Decisions learned, by outcome and by whom",
                m.decisions.clone(),
            );
            r.register(
                "decision_latency_seconds",
                "Time from first seeing a proposal to its decision",
                m.decision_latency.clone(),
            );
            r.register(
                "active_nodes",
                "Active nodes by role",
                m.active_nodes.clone(),
            );
            r.register(
                "fanout_duration_seconds",
                "Duration of fan-out requests",
                m.fanout_duration.clone(),
            );
            r.register(
                "core_events",
                "Messages the core refused (caps), ignored (duplicates, stale) or expired, by kind",
                m.core_events.clone(),
            );
            r.register(
                "reply_parts_sent",
                "Fan-out reply parts sent",
                m.reply_parts_sent.clone(),
            );
            r.register(
                "replies_too_large",
                "Replies too large for a requester without parts support",
                m.replies_too_large.clone(),
            );
            r.register(
                "storage_errors",
                "Failed storage operations (each retry counts), by operation",
                m.storage_errors.clone(),
            );
            r.register(
                "dead_letters",
                "Writes the database refused for good, set aside, by kind",
                m.dead_letters.clone(),
            );
            r.register(
                "write_queue_depth",
                "Items waiting to be written, by writer",
                m.write_queue.clone(),
            );
            r.register(
                "collator_gaps",
                "Decisions a collator without JetStream missed while away, by kind",
                m.collator_gaps.clone(),
            );
            r.register(
                "check_duration_seconds",
                "Duration of built-in checks, by check",
                m.check_duration.clone(),
            );
            r.register(
                "checks",
                "Built-in check results, by check and outcome",
                m.checks.clone(),
            );
            r.register(
                "trust_rejections",
                "Consensus messages failing signature or trust checks, by subject, reason and claimed sender",
                m.trust_rejections.clone(),
            );
            r.register(
                "trust_verified",
                "Consensus messages passing signature and trust checks, by subject",
                m.trust_verified.clone(),
            );
            r.register(
                "trust_by_mac",
                "Consensus messages accepted through a pairwise authenticator instead of an Ed25519 verification, by subject",
                m.trust_by_mac.clone(),
            );
            r.register(
                "trust_moot",
                "Votes and finalizes on already decided proposals, not checked (enforce drops them), by subject",
                m.trust_moot.clone(),
            );
            r.register(
                "sync_pages",
                "Pages of official results asked of other monitors while catching up",
                m.sync_pages.clone(),
            );
            r.register(
                "trust_replay_memory",
                "Signatures remembered against replays",
                m.trust_replay_memory.clone(),
            );
            r.register(
                "ignored",
                "Messages or data ignored or held on purpose, by reason",
                m.ignored.clone(),
            );
        }
        m
    }

    /// Counts a received message.
    pub fn received(&self, subject: &str) {
        self.messages_in
            .get_or_create(&vec![("subject", subject_label(subject))])
            .inc();
    }

    /// Counts a published message.
    pub fn sent(&self, subject: &str) {
        self.messages_out
            .get_or_create(&vec![("subject", subject_label(subject))])
            .inc();
    }

    /// Counts pages asked while catching up.
    pub fn sync_pages(&self, n: u64) {
        self.sync_pages.inc_by(n);
    }

    /// Counts a decode failure.
    pub fn decode_failed(&self, subject: &str) {
        self.decode_failures
            .get_or_create(&vec![("subject", subject_label(subject))])
            .inc();
    }

    /// Counts a failed publish.
    pub fn publish_failed(&self, subject: &str) {
        self.publish_failures
            .get_or_create(&vec![("subject", subject_label(subject))])
            .inc();
    }

    /// Records a decision.
    pub fn decided(&self, passed: bool, by_self: bool, latency: Option<std::time::Duration>) {
        let outcome = if passed { "passed" } else { "failed" };
        let by = if by_self { "self" } else { "peer" };
        self.decisions
            .get_or_create(&vec![
                ("outcome", outcome.to_string()),
                ("by", by.to_string()),
            ])
            .inc();
        if let Some(l) = latency {
            self.decision_latency.observe(l.as_secs_f64());
        }
    }

    /// Records a fan-out duration.
    pub fn fanout(&self, kind: &str, d: std::time::Duration) {
        self.fanout_duration
            .get_or_create(&vec![("kind", kind.to_string())])
            .observe(d.as_secs_f64());
    }

    /// Brings the core counters into the registry (the core is pure and keeps its own).
    pub fn sync_core(&self, now: Counters) {
        let Ok(mut last) = self.last_core.lock() else {
            return;
        };
        let pairs = [
            (
                "invalid_message",
                now.invalid_messages,
                last.invalid_messages,
            ),
            (
                "node_id_conflict",
                now.node_id_conflicts,
                last.node_id_conflicts,
            ),
            (
                "refused_proposal_cap",
                now.refused_proposals,
                last.refused_proposals,
            ),
            (
                "refused_vote_bucket_cap",
                now.refused_pending_votes,
                last.refused_pending_votes,
            ),
            ("refused_node_cap", now.refused_nodes, last.refused_nodes),
            (
                "duplicate_proposal",
                now.duplicate_proposals,
                last.duplicate_proposals,
            ),
            (
                "duplicate_finalize",
                now.duplicate_finalizes,
                last.duplicate_finalizes,
            ),
            ("stale_decision", now.stale_decisions, last.stale_decisions),
            ("synced_result", now.synced_results, last.synced_results),
            ("late_vote", now.late_votes, last.late_votes),
            ("buffered_vote", now.buffered_votes, last.buffered_votes),
            (
                "expired_proposal",
                now.expired_proposals,
                last.expired_proposals,
            ),
            ("expired_vote", now.expired_votes, last.expired_votes),
            (
                "proposal_created",
                now.proposals_created,
                last.proposals_created,
            ),
            (
                "proposal_republished",
                now.proposals_republished,
                last.proposals_republished,
            ),
            ("finalize_held", now.finalizes_held, last.finalizes_held),
            (
                "finalize_released",
                now.finalizes_released,
                last.finalizes_released,
            ),
            (
                "finalize_unbacked",
                now.finalizes_unbacked,
                last.finalizes_unbacked,
            ),
            (
                "finalize_mismatched",
                now.finalizes_mismatched,
                last.finalizes_mismatched,
            ),
            ("unknown_check", now.unknown_checks, last.unknown_checks),
            (
                "refused_result_cap",
                now.refused_results,
                last.refused_results,
            ),
        ];
        for (kind, n, l) in pairs {
            if n > l {
                self.core_events
                    .get_or_create(&vec![("kind", kind.to_string())])
                    .inc_by(n - l);
            }
        }
        *last = now;
    }

    /// Counts a failed storage operation.
    pub fn storage_error(&self, op: &str) {
        self.storage_errors
            .get_or_create(&vec![("op", op.to_string())])
            .inc();
    }

    /// Counts a write set aside.
    pub fn dead_lettered(&self, kind: &str) {
        self.dead_letters
            .get_or_create(&vec![("kind", kind.to_string())])
            .inc();
    }

    /// Sets how many decisions of `kind` a collator missed while away.
    pub fn set_collator_gaps(&self, kind: &str, n: usize) {
        self.collator_gaps
            .get_or_create(&vec![("kind", kind.to_string())])
            .set(n as i64);
    }

    /// Sets a writer's queue depth.
    pub fn set_write_queue(&self, writer: &str, n: usize) {
        self.write_queue
            .get_or_create(&vec![("writer", writer.to_string())])
            .set(n as i64);
    }

    /// Records one check's result.
    pub fn checked(&self, check: &str, ok: bool, took: std::time::Duration) {
        self.check_duration
            .get_or_create(&vec![("check", check.to_string())])
            .observe(took.as_secs_f64());
        self.checks
            .get_or_create(&vec![
                ("check", check.to_string()),
                ("outcome", if ok { "up" } else { "down" }.to_string()),
            ])
            .inc();
    }

    /// Counts a vote or finalize that could change nothing and was not checked.
    pub fn trust_moot(&self, subject: &str) {
        self.trust_moot
            .get_or_create(&vec![("subject", subject_label(subject))])
            .inc();
    }

    /// Counts a message failing verification.
    pub fn trust_rejected(&self, subject: &str, reason: &str, sender: &str) {
        self.trust_rejections
            .get_or_create(&vec![
                ("subject", subject_label(subject)),
                ("reason", reason.to_string()),
                ("sender", sender.to_string()),
            ])
            .inc();
    }

    /// Counts something ignored or held on purpose.
    pub fn ignore(&self, reason: &str) {
        self.ignored
            .get_or_create(&vec![("reason", reason.to_string())])
            .inc();
    }

    /// The current value of an ignore counter (tests, `/v1/status`).
    pub fn ignored_count(&self, reason: &str) -> u64 {
        self.ignored
            .get_or_create(&vec![("reason", reason.to_string())])
            .get()
    }

    /// Sets the active-node gauges.
    pub fn set_active(&self, role: &str, n: usize) {
        self.active_nodes
            .get_or_create(&vec![("role", role.to_string())])
            .set(n as i64);
    }

    /// Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Ok(r) = self.registry.lock() {
            let _ = encode(&mut out, &r);
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
