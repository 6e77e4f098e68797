//! The check scheduler (checks.md §3, with its pacing fixed): every unit runs once per
//! interval, on a fixed grid — not "interval after the last completion", which drifts by the
//! run time — and units without a history are spread evenly over their interval, so a
//! start or a reload never bursts hundreds of dials at once. Remembered last-run times
//! survive a reload (keyed with the IP: a changed address is due at once). Pure: the time
//! comes in; the runner decides what may start.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::items::Unit;

#[derive(Debug, Clone)]
struct Slot {
    unit: Unit,
    due: Instant,
    running: bool,
    last_run: Option<Instant>,
}

/// One scheduled unit, for `GET /v1/checks`.
#[derive(Debug, Clone)]
pub struct Scheduled {
    /// The unit.
    pub unit: Unit,
    /// When it runs next.
    pub due: Instant,
    /// Whether it runs now.
    pub running: bool,
    /// When it last started.
    pub last_run: Option<Instant>,
}

/// The scheduler of one monitor.
#[derive(Debug, Default)]
pub struct Scheduler {
    slots: BTreeMap<String, Slot>,
    remembered: HashMap<String, Instant>,
}

impl Scheduler {
    /// An empty scheduler.
    pub fn new() -> Scheduler {
        Scheduler::default()
    }

    /// Replaces the units (a list reload): kept units keep their place; returning units
    /// are due an interval after their remembered last run; new ones are spread evenly
    /// over their interval from `now`.
    pub fn set_units(&mut self, units: Vec<Unit>, now: Instant) {
        let mut old = std::mem::take(&mut self.slots);
        let mut fresh: BTreeMap<Duration, Vec<Unit>> = BTreeMap::new();
        for u in units {
            let key = u.key();
            match old.remove(&key) {
                Some(mut s) if s.unit.schedule_key() == u.schedule_key() => {
                    s.unit = u;
                    self.slots.insert(key, s);
                }
                _ => match self.remembered.get(&u.schedule_key()) {
                    Some(last) => {
                        let due = (*last + u.item.interval).max(now);
                        self.slots.insert(
                            key,
                            Slot {
                                due,
                                running: false,
                                last_run: Some(*last),
                                unit: u,
                            },
                        );
                    }
                    None => fresh.entry(u.item.interval).or_default().push(u),
                },
            }
        }
        for (interval, us) in fresh {
            let n = us.len() as u32;
            for (i, u) in us.into_iter().enumerate() {
                let due = now + interval * i as u32 / n.max(1);
                self.slots.insert(
                    u.key(),
                    Slot {
                        unit: u,
                        due,
                        running: false,
                        last_run: None,
                    },
                );
            }
        }
        let live: std::collections::HashSet<String> =
            self.slots.values().map(|s| s.unit.schedule_key()).collect();
        self.remembered.retain(|k, _| live.contains(k));
    }

    /// Claims up to `max` due units that `may_start` allows, earliest first; they are
    /// running until [`Scheduler::finished`].
    pub fn take_due(
        &mut self,
        now: Instant,
        max: usize,
        mut may_start: impl FnMut(&Unit) -> bool,
    ) -> Vec<Unit> {
        let mut due: Vec<(Instant, String)> = self
            .slots
            .iter()
            .filter(|(_, s)| !s.running && s.due <= now)
            .map(|(k, s)| (s.due, k.clone()))
            .collect();
        due.sort();
        let mut out = Vec::new();
        for (_, k) in due {
            if out.len() >= max {
                break;
            }
            if let Some(s) = self.slots.get_mut(&k)
                && may_start(&s.unit)
            {
                s.running = true;
                s.last_run = Some(now);
                self.remembered.insert(s.unit.schedule_key(), now);
                out.push(s.unit.clone());
            }
        }
        out
    }

    /// A unit finished: it is due again one interval after its slot (or now, if it ran
    /// longer than that).
    pub fn finished(&mut self, key: &str, now: Instant) {
        if let Some(s) = self.slots.get_mut(key) {
            s.running = false;
            let mut next = s.due + s.unit.item.interval;
            if next <= now {
                // Missed slots are not made up in a burst.
                next = now;
            }
            s.due = next;
        }
    }

    /// Makes units `select` picks due now (an operator asking for a check).
    pub fn run_now(&mut self, now: Instant, select: impl Fn(&Unit) -> bool) -> usize {
        let mut n = 0;
        for s in self.slots.values_mut().filter(|s| select(&s.unit)) {
            s.due = now;
            n += 1;
        }
        n
    }

    /// The earliest due time of a unit not running.
    pub fn next_due(&self) -> Option<Instant> {
        self.slots
            .values()
            .filter(|s| !s.running)
            .map(|s| s.due)
            .min()
    }

    /// Every unit with its schedule.
    pub fn snapshot(&self) -> Vec<Scheduled> {
        self.slots
            .values()
            .map(|s| Scheduled {
                unit: s.unit.clone(),
                due: s.due,
                running: s.running,
                last_run: s.last_run,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::items::Item;
    use ibp_wire::CheckType;
    use std::sync::Arc;

    fn unit(member: &str, ip: &str, interval: u64) -> Unit {
        Unit {
            item: Arc::new(Item {
                check: "wss".into(),
                check_type: CheckType::Endpoint,
                member: member.into(),
                service: "S".into(),
                domain: "d".into(),
                endpoint: format!("wss://d/{member}"),
                port: None,
                network_name: String::new(),
                state_root_hash: String::new(),
                interval: Duration::from_secs(interval),
                timeout: Duration::from_secs(10),
                options: serde_json::Value::Null,
                ipv4: ip.into(),
                ipv6: String::new(),
            }),
            is_ipv6: false,
            ip: ip.parse().map_err(|_| String::new()),
        }
    }

    #[test]
    fn units_are_spread_over_their_interval_and_keep_a_fixed_period() {
        let t0 = Instant::now();
        let mut s = Scheduler::new();
        let units: Vec<Unit> = (0..100)
            .map(|i| unit(&format!("m{i:03}"), "10.0.0.1", 300))
            .collect();
        s.set_units(units, t0);
        // No start-up burst: about one unit per 3 s.
        assert_eq!(s.take_due(t0, 1000, |_| true).len(), 1);
        let at_150 = s.take_due(t0 + Duration::from_secs(150), 1000, |_| true);
        assert_eq!(at_150.len(), 50, "half the interval, half the units");
        // A run that took 40 s does not shift the next slot.
        s.finished(&at_150[0].key(), t0 + Duration::from_secs(190));
        let next = s
            .snapshot()
            .into_iter()
            .find(|x| x.unit.key() == at_150[0].key())
            .expect("slot")
            .due;
        assert!(next <= t0 + Duration::from_secs(450));
    }

    #[test]
    fn a_reload_keeps_places_and_a_changed_ip_is_due_at_once() {
        let t0 = Instant::now();
        let mut s = Scheduler::new();
        s.set_units(
            vec![unit("a", "10.0.0.1", 60), unit("b", "10.0.0.2", 60)],
            t0,
        );
        for at in [0, 30] {
            let t = t0 + Duration::from_secs(at);
            let got = s.take_due(t, 10, |_| true);
            assert_eq!(got.len(), 1);
            s.finished(&got[0].key(), t + Duration::from_secs(1));
        }
        let t1 = t0 + Duration::from_secs(40);
        s.set_units(
            vec![unit("a", "10.0.0.1", 60), unit("b", "10.0.0.9", 60)],
            t1,
        );
        let due = s.take_due(t1, 10, |_| true);
        assert_eq!(due.len(), 1);
        assert_eq!(
            due[0].item.member, "b",
            "the changed address is checked at once"
        );
        assert!(s.take_due(t1, 10, |_| true).is_empty());
    }

    #[test]
    fn limits_are_the_runners_and_a_running_unit_never_runs_twice() {
        let t0 = Instant::now();
        let mut s = Scheduler::new();
        s.set_units(
            (0..10)
                .map(|i| unit(&format!("m{i}"), "10.0.0.1", 1))
                .collect(),
            t0,
        );
        let t = t0 + Duration::from_secs(5);
        let mut per_host = 0;
        let got = s.take_due(t, 100, |_| {
            per_host += 1;
            per_host <= 3
        });
        assert_eq!(got.len(), 3);
        assert_eq!(s.take_due(t, 100, |_| true).len(), 7);
        assert!(s.take_due(t, 100, |_| true).is_empty(), "all running");
    }
}
