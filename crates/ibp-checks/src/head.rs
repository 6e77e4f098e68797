//! Stuck-head detection for wss and ethrpc (off by default): a node that is connected, has
//! peers and says it is not syncing, but serves a frozen chain, is what users feel most and
//! the Go checks miss. Pure bookkeeping; the time comes in.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What the head tracker concluded about one observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadVerdict {
    /// The block this endpoint reported.
    pub block: u64,
    /// How long it has reported that same block, when longer than allowed.
    pub stalled_for: Option<Duration>,
    /// Blocks behind the best this monitor saw for the chain recently.
    pub lag: u64,
    /// The lag allowed (`None`: not checked).
    pub max_lag: Option<u64>,
}

impl HeadVerdict {
    /// The failure text, when the head is stuck or lags too far.
    pub fn failure(&self) -> Option<String> {
        if let Some(d) = self.stalled_for {
            return Some(format!(
                "Head stuck at block #{} for {}s",
                self.block,
                d.as_secs()
            ));
        }
        match self.max_lag {
            Some(max) if self.lag > max => Some(format!(
                "Head lags the best known block by {} blocks (#{}, limit {max})",
                self.lag, self.block
            )),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    block: u64,
    since: Instant,
    at: Instant,
}

/// Heads per endpoint and the best per chain.
#[derive(Debug)]
pub struct HeadTracker {
    stall_after: Option<Duration>,
    max_lag: Option<u64>,
    endpoints: Mutex<HashMap<String, (String, Seen)>>,
}

/// Observations older than this do not count towards a chain's best block.
const BEST_WINDOW: Duration = Duration::from_secs(600);

impl HeadTracker {
    /// A tracker failing heads unchanged for `stall_after` or more than `max_lag` blocks
    /// behind the chain's best.
    pub fn new(stall_after: Option<Duration>, max_lag: Option<u64>) -> HeadTracker {
        HeadTracker {
            stall_after,
            max_lag,
            endpoints: Mutex::new(HashMap::new()),
        }
    }

    /// Records that `endpoint` (of `chain`) reported `block` at `now`.
    pub fn observe(&self, endpoint: &str, chain: &str, block: u64, now: Instant) -> HeadVerdict {
        let mut m = self
            .endpoints
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let prev = m.get(endpoint).map(|(_, s)| *s);
        let since = match prev {
            Some(p) if p.block == block => p.since,
            _ => now,
        };
        m.insert(
            endpoint.to_string(),
            (
                chain.to_string(),
                Seen {
                    block,
                    since,
                    at: now,
                },
            ),
        );
        let best = m
            .values()
            .filter(|(c, s)| c == chain && now.duration_since(s.at) <= BEST_WINDOW)
            .map(|(_, s)| s.block)
            .max()
            .unwrap_or(block);
        let stalled = now.duration_since(since);
        HeadVerdict {
            block,
            stalled_for: self.stall_after.filter(|a| stalled >= *a).map(|_| stalled),
            lag: best.saturating_sub(block),
            max_lag: self.max_lag,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frozen_or_lagging_head_fails() {
        let t = HeadTracker::new(Some(Duration::from_secs(60)), Some(10));
        let t0 = Instant::now();
        assert_eq!(t.observe("a", "dot", 100, t0).failure(), None);
        assert_eq!(t.observe("b", "dot", 100, t0).failure(), None);
        let later = t0 + Duration::from_secs(61);
        let v = t.observe("a", "dot", 100, later);
        assert!(
            v.failure()
                .is_some_and(|f| f.contains("stuck at block #100"))
        );
        let v = t.observe("b", "dot", 130, later);
        assert_eq!(v.failure(), None);
        let v = t.observe("c", "dot", 115, later);
        assert!(v.failure().is_some_and(|f| f.contains("lags")), "{v:?}");
        assert_eq!(v.lag, 15);
        // Another chain is another race.
        assert_eq!(t.observe("k", "ksm", 5, later).lag, 0);
    }
}
