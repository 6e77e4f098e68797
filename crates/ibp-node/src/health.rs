//! What a node can honestly say about itself: each part that can fail (NATS, storage, the
//! JetStream consumer, the timer task, the node ID) reports here, and `/healthz` answers 503
//! naming every failing part. One registry per node; nothing global.

use std::collections::BTreeMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// The parts a node reports on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Part {
    /// The NATS connection.
    Nats,
    /// Database writes (and a periodic ping).
    Storage,
    /// The collator's durable JetStream consumer.
    JetStream,
    /// The core's timer task (heartbeats, timeouts, garbage collection).
    Timers,
    /// Another live node claims this node's ID.
    NodeId,
    /// The member and service lists.
    Lists,
    /// Built-in checks.
    Checks,
    /// Signing and trust: this node's key is not trusted, or the trust file cannot be read.
    Security,
}

impl Part {
    /// The part's name in `/healthz`.
    pub fn name(self) -> &'static str {
        match self {
            Part::Nats => "nats",
            Part::Storage => "storage",
            Part::JetStream => "jetstream",
            Part::Timers => "timers",
            Part::NodeId => "nodeId",
            Part::Lists => "lists",
            Part::Checks => "checks",
            Part::Security => "security",
        }
    }
}

/// One failing part.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    /// Which part.
    pub part: &'static str,
    /// What is wrong, for an operator.
    pub detail: String,
    /// Since when it has been failing.
    pub since: DateTime<Utc>,
    /// For events rather than states (a panic, a conflicting node): shown until then.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
}

/// The health registry of one node.
#[derive(Debug, Default)]
pub struct Health {
    failing: Mutex<BTreeMap<Part, Problem>>,
}

impl Health {
    /// A registry where everything is fine.
    pub fn new() -> Health {
        Health::default()
    }

    /// Marks `part` failing (keeps the first `since` while it stays failing).
    pub fn fail(&self, part: Part, detail: impl Into<String>) {
        let detail = detail.into();
        let mut f = self
            .failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let first = !f.contains_key(&part);
        let since = f.get(&part).map(|p| p.since).unwrap_or_else(Utc::now);
        if first {
            tracing::warn!(part = part.name(), detail = %detail, "health: part failing");
        }
        f.insert(
            part,
            Problem {
                part: part.name(),
                detail,
                since,
                until: None,
            },
        );
    }

    /// Reports an event on `part` (a panic, a conflicting node) as a problem for `for_`
    /// after its last occurrence.
    pub fn fail_for(&self, part: Part, detail: impl Into<String>, for_: std::time::Duration) {
        let detail = detail.into();
        let now = Utc::now();
        let until = now + chrono::TimeDelta::from_std(for_).unwrap_or(chrono::TimeDelta::MAX);
        let mut f = self
            .failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let since = f.get(&part).map(|p| p.since).unwrap_or(now);
        f.insert(
            part,
            Problem {
                part: part.name(),
                detail,
                since,
                until: Some(until),
            },
        );
    }

    /// Marks `part` healthy again.
    pub fn recover(&self, part: Part) {
        let mut f = self
            .failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(p) = f.remove(&part) {
            tracing::info!(part = part.name(), since = %p.since, "health: part recovered");
        }
    }

    /// Whether `part` is failing.
    pub fn is_failing(&self, part: Part) -> bool {
        self.problems().iter().any(|p| p.part == part.name())
    }

    /// Every failing part, in a stable order.
    pub fn problems(&self) -> Vec<Problem> {
        let now = Utc::now();
        let mut f = self
            .failing
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f.retain(|_, p| p.until.is_none_or(|u| u > now));
        f.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_fails_keeps_its_start_and_recovers() {
        let h = Health::new();
        assert!(h.problems().is_empty());
        h.fail(Part::Storage, "database is locked");
        let since = h.problems()[0].since;
        h.fail(Part::Storage, "still locked");
        let p = h.problems();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].since, since, "the first failure time is kept");
        assert_eq!(p[0].detail, "still locked");
        h.fail(Part::Nats, "disconnected");
        assert_eq!(h.problems().len(), 2);
        h.recover(Part::Storage);
        assert!(!h.is_failing(Part::Storage));
        assert!(h.is_failing(Part::Nats));
        h.fail_for(
            Part::Timers,
            "panicked",
            std::time::Duration::from_secs(600),
        );
        assert!(h.is_failing(Part::Timers));
        h.fail_for(Part::NodeId, "seen", std::time::Duration::ZERO);
        assert!(
            !h.is_failing(Part::NodeId),
            "an expired event is no problem"
        );
    }
}
