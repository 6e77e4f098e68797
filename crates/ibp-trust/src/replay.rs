//! Bounded memory of the signatures already accepted within the age window.

use std::collections::{HashSet, VecDeque};

use chrono::{DateTime, Utc};

/// Signatures seen within the window, oldest first. Only signatures that verified are
/// remembered, so strangers cannot fill it; the cap bounds it even against a trusted
/// node gone mad (then the oldest are forgotten early, and counted).
#[derive(Debug)]
pub struct ReplayCache {
    cap: usize,
    set: HashSet<[u8; 64]>,
    order: VecDeque<(DateTime<Utc>, [u8; 64])>,
    evicted_early: u64,
}

impl ReplayCache {
    /// A cache of at most `cap` signatures.
    pub fn new(cap: usize) -> ReplayCache {
        ReplayCache {
            cap: cap.max(1),
            set: HashSet::new(),
            order: VecDeque::new(),
            evicted_early: 0,
        }
    }

    /// Whether `sig` was accepted before (and is still remembered).
    pub fn seen(&self, sig: &[u8; 64]) -> bool {
        self.set.contains(sig)
    }

    /// Remembers `sig`, signed at `at`; forgets what is older than `horizon`.
    pub fn insert(&mut self, sig: [u8; 64], at: DateTime<Utc>, horizon: DateTime<Utc>) {
        self.expire(horizon);
        while self.order.len() >= self.cap {
            if let Some((_, old)) = self.order.pop_front() {
                self.set.remove(&old);
                self.evicted_early += 1;
            }
        }
        if self.set.insert(sig) {
            self.order.push_back((at, sig));
        }
    }

    /// Forgets signatures made before `horizon` (they fail the age check anyway).
    pub fn expire(&mut self, horizon: DateTime<Utc>) {
        // Arrival order is close to signing order; a straggler signed earlier than the
        // front is forgotten a little late, which only costs memory within the cap.
        while let Some((at, sig)) = self.order.front().copied() {
            if at >= horizon {
                break;
            }
            self.order.pop_front();
            self.set.remove(&sig);
        }
    }

    /// Signatures remembered.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Signatures forgotten before their time because the cap was reached.
    pub fn evicted_early(&self) -> u64 {
        self.evicted_early
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + s, 0).expect("time")
    }

    #[test]
    fn remembers_within_the_window_and_forgets_after_it() {
        let mut c = ReplayCache::new(10);
        c.insert([1; 64], t(0), t(-120));
        assert!(c.seen(&[1; 64]));
        c.insert([2; 64], t(100), t(-20));
        assert!(c.seen(&[1; 64]), "still inside the window");
        c.expire(t(121) - TimeDelta::seconds(120));
        assert!(!c.seen(&[1; 64]));
        assert!(c.seen(&[2; 64]));
    }

    #[test]
    fn the_cap_holds_and_counts_what_it_forgot() {
        let mut c = ReplayCache::new(3);
        for i in 0..5u8 {
            c.insert([i; 64], t(i.into()), t(-120));
        }
        assert_eq!(c.len(), 3);
        assert_eq!(c.evicted_early(), 2);
        assert!(!c.seen(&[0; 64]));
        assert!(c.seen(&[4; 64]));
    }
}
