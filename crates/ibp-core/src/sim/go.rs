//! Monitors that follow the Go rules, for mixed clusters in the simulation: the reference
//! library at HEAD (protocol.md) and the v0.6.12 the Go monitor program pins (checks.md
//! §4.3). They speak the same messages as the Rust engine and share none of its fixes:
//! every passed finalize is applied (duplicates and stale ones too), proposals age by the
//! proposer's clock, leaves are ignored, and v0.6.12 decides with one vote, never
//! republishes, retries undecided proposals until they age out and keeps a proposal after
//! another node's finalize (so it can finalize it again).

use std::collections::BTreeMap;
use std::time::Duration;

use ibp_wire::{ClusterMessage, FinalizeMessage, NodeInfo, Proposal, Role, Vote, WireTime};

use crate::time::{Now, after, elapsed};
use crate::{CheckKey, Effect, Input, OfficialChange, Outbound};

/// Which Go library a simulated monitor runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoVersion {
    /// `ibp-geodns-libs` HEAD (v0.7 line): protocol.md §5.
    Head,
    /// v0.6.12, pinned by the Go monitor program.
    V0612,
}

#[derive(Debug, Clone)]
struct Tracked {
    proposal: Proposal,
    votes: BTreeMap<String, bool>,
    own: bool,
    last_broadcast: Now,
    next_timeout: Now,
    timeouts: u32,
}

/// One Go-rule monitor.
#[derive(Debug)]
pub struct GoMonitor {
    id: String,
    version: GoVersion,
    nodes: BTreeMap<String, (String, Now)>,
    tracked: BTreeMap<String, Tracked>,
    pending: BTreeMap<String, Vec<(String, bool, Now)>>,
    local: BTreeMap<CheckKey, bool>,
    official: BTreeMap<CheckKey, Proposal>,
    counter: u64,
    prefix: String,
    startup_left: u32,
    next_startup: Option<Now>,
    next_heartbeat: Option<Now>,
    next_gc: Option<Now>,
}

const ACTIVE: Duration = Duration::from_secs(600);
const STALE: Duration = Duration::from_secs(900);
const TIMEOUT: Duration = Duration::from_secs(30);
const PROPOSAL_TTL: Duration = Duration::from_secs(600);
const VOTE_TTL: Duration = Duration::from_secs(120);

impl GoMonitor {
    /// A monitor `id` running `version`; `prefix` makes its proposal IDs unique per start.
    pub fn new(id: &str, version: GoVersion, prefix: String) -> GoMonitor {
        GoMonitor {
            id: id.to_string(),
            version,
            nodes: BTreeMap::new(),
            tracked: BTreeMap::new(),
            pending: BTreeMap::new(),
            local: BTreeMap::new(),
            official: BTreeMap::new(),
            counter: 0,
            prefix,
            startup_left: 0,
            next_startup: None,
            next_heartbeat: None,
            next_gc: None,
        }
    }

    /// Restores official results from its cache file.
    pub fn restore(&mut self, official: &BTreeMap<CheckKey, Proposal>) {
        self.official = official.clone();
    }

    /// Official results (what its cache file would hold).
    pub fn official(&self) -> &BTreeMap<CheckKey, Proposal> {
        &self.official
    }

    /// Enables the monitor role: three startup joins, then heartbeats.
    pub fn enable(&mut self, now: Now) -> Vec<Effect> {
        self.startup_left = 3;
        self.next_startup = Some(now);
        self.next_heartbeat = Some(after(now, Duration::from_secs(2)));
        self.next_gc = Some(now);
        self.tick(now)
    }

    fn join(&self, now: Now) -> Effect {
        Effect::Publish(Outbound::Join(ClusterMessage {
            kind: "join".into(),
            sender: NodeInfo {
                node_id: self.id.clone(),
                node_role: Role::Monitor.as_wire().into(),
                last_heard: WireTime::from_utc(now),
                ..NodeInfo::default()
            },
            members: None,
        }))
    }

    fn heard(&mut self, id: &str, consensus: bool, now: Now) -> bool {
        if id.is_empty() || id == self.id {
            return false;
        }
        let new = !self.nodes.contains_key(id);
        let e = self.nodes.entry(id.to_string()).or_insert_with(|| {
            let role = if consensus {
                Role::Monitor.as_wire().to_string()
            } else {
                Role::guess_from_node_id(id)
                    .map(|r| r.as_wire().to_string())
                    .unwrap_or_default()
            };
            (role, now)
        });
        e.1 = now;
        if e.0.is_empty() && consensus {
            e.0 = Role::Monitor.as_wire().into();
        }
        new
    }

    fn active_monitors(&self, now: Now) -> usize {
        1 + self
            .nodes
            .values()
            .filter(|(r, h)| r == Role::Monitor.as_wire() && elapsed(*h, now) < ACTIVE)
            .count()
    }

    fn is_active_monitor(&self, id: &str, now: Now) -> bool {
        id == self.id
            || self
                .nodes
                .get(id)
                .is_some_and(|(r, h)| r == Role::Monitor.as_wire() && elapsed(*h, now) < ACTIVE)
    }

    /// A message from the bus.
    pub fn handle(&mut self, input: Input, now: Now) -> Vec<Effect> {
        let mut out = Vec::new();
        match input {
            Input::Cluster(m) => {
                let s = &m.sender;
                if s.node_id == self.id || s.node_id.is_empty() {
                    return out;
                }
                let new = self.heard(&s.node_id, false, now);
                if let Some(e) = self.nodes.get_mut(&s.node_id)
                    && e.0.is_empty()
                {
                    e.0 = s.node_role.clone();
                }
                if new {
                    out.push(self.join(now));
                }
            }
            // Go nodes never subscribe to the leave extension.
            Input::Leave(_) | Input::Heard(_) => {}
            Input::Proposal(p) => {
                self.heard(&p.sender_node_id, true, now);
                if p.id.is_empty() || self.tracked.contains_key(&p.id) {
                    return out;
                }
                let id = p.id.clone();
                self.track(p, false, now);
                if let Some(votes) = self.pending.remove(&id)
                    && let Some(t) = self.tracked.get_mut(&id)
                {
                    for (voter, agree, _) in votes {
                        t.votes.insert(voter, agree);
                    }
                }
                if !self.decide(&id, now, &mut out) {
                    self.vote_own(&id, now, &mut out);
                }
            }
            Input::Vote(v) => {
                self.heard(&v.node_id, true, now);
                if let Some(t) = self.tracked.get_mut(&v.proposal_id) {
                    t.votes.insert(v.node_id, v.agree);
                    let id = v.proposal_id;
                    self.decide(&id, now, &mut out);
                } else {
                    self.pending
                        .entry(v.proposal_id)
                        .or_default()
                        .push((v.node_id, v.agree, now));
                }
            }
            Input::Finalize(f) => {
                self.heard(f.finalizer(), true, now);
                if f.passed {
                    self.apply(&f.proposal, &f.decided_at, &mut out);
                }
                if self.version == GoVersion::Head {
                    self.tracked.remove(&f.proposal.id);
                    self.pending.remove(&f.proposal.id);
                }
            }
        }
        out
    }

    fn apply(&mut self, p: &Proposal, decided_at: &WireTime, out: &mut Vec<Effect>) {
        let key = CheckKey::of(p);
        if key.typed().is_none() {
            return;
        }
        let flipped = self
            .official
            .get(&key)
            .is_none_or(|o| o.proposed_status != p.proposed_status);
        self.official.insert(key.clone(), p.clone());
        out.push(Effect::ApplyOfficial(OfficialChange {
            key,
            status: p.proposed_status,
            flipped,
            proposal: p.clone(),
            decided_at: *decided_at,
        }));
    }

    fn track(&mut self, p: Proposal, own: bool, now: Now) {
        self.tracked.insert(
            p.id.clone(),
            Tracked {
                proposal: p,
                votes: BTreeMap::new(),
                own,
                last_broadcast: now,
                next_timeout: after(now, TIMEOUT),
                timeouts: 0,
            },
        );
    }

    /// A check result: recorded locally, proposed when it differs from the official one.
    pub fn observe(&mut self, key: CheckKey, status: bool, now: Now) -> Vec<Effect> {
        let mut out = Vec::new();
        self.local.insert(key.clone(), status);
        if self
            .official
            .get(&key)
            .is_some_and(|o| o.proposed_status == status)
        {
            return out;
        }
        let existing = self
            .tracked
            .iter()
            .find(|(_, t)| CheckKey::of(&t.proposal) == key && t.proposal.proposed_status == status)
            .map(|(id, _)| id.clone());
        if let Some(id) = existing {
            if self.version == GoVersion::Head
                && let Some(t) = self.tracked.get_mut(&id)
                && t.own
                && elapsed(t.last_broadcast, now) >= Duration::from_secs(10)
            {
                t.last_broadcast = now;
                out.push(Effect::Publish(Outbound::Propose(t.proposal.clone())));
            }
            self.vote_own(&id, now, &mut out);
            return out;
        }
        self.counter += 1;
        let p = Proposal {
            id: format!("{}-{}", self.prefix, self.counter),
            sender_node_id: self.id.clone(),
            check_type: key.check_type.clone(),
            check_name: key.check_name.clone(),
            member_name: key.member_name.clone(),
            domain_name: key.domain_name.clone(),
            endpoint: key.endpoint.clone(),
            proposed_status: status,
            is_ipv6: key.is_ipv6,
            timestamp: WireTime::from_utc(now),
            ..Proposal::default()
        };
        out.push(Effect::Publish(Outbound::Propose(p.clone())));
        let id = p.id.clone();
        self.track(p, true, now);
        self.vote_own(&id, now, &mut out);
        out
    }

    fn vote_own(&mut self, id: &str, now: Now, out: &mut Vec<Effect>) {
        let Some(t) = self.tracked.get_mut(id) else {
            return;
        };
        let Some(local) = self.local.get(&CheckKey::of(&t.proposal)) else {
            return;
        };
        let agree = *local == t.proposal.proposed_status;
        t.votes.insert(self.id.clone(), agree);
        out.push(Effect::Publish(Outbound::Vote(Vote {
            proposal_id: id.to_string(),
            sender_node_id: self.id.clone(),
            node_id: self.id.clone(),
            agree,
            timestamp: WireTime::from_utc(now),
        })));
        self.decide(id, now, out);
    }

    fn decide(&mut self, id: &str, now: Now, out: &mut Vec<Effect>) -> bool {
        let Some(t) = self.tracked.get(id) else {
            return false;
        };
        let total = self.active_monitors(now);
        let min_votes = match self.version {
            GoVersion::Head => {
                if total < 2 {
                    return false;
                }
                2
            }
            GoVersion::V0612 => 1,
        };
        let need = (total / 2 + 1).max(min_votes);
        let (mut yes, mut no) = (0, 0);
        for (voter, agree) in &t.votes {
            if self.is_active_monitor(voter, now) {
                if *agree {
                    yes += 1;
                } else {
                    no += 1;
                }
            }
        }
        let passed = if yes >= need {
            true
        } else if no >= need {
            false
        } else {
            return false;
        };
        self.finalize(id, passed, now, out);
        true
    }

    fn finalize(&mut self, id: &str, passed: bool, now: Now, out: &mut Vec<Effect>) {
        let Some(t) = self.tracked.remove(id) else {
            return;
        };
        self.pending.remove(id);
        let decided_at = WireTime::from_utc(now);
        out.push(Effect::Publish(Outbound::Finalize(FinalizeMessage {
            proposal: t.proposal.clone(),
            // v0.6.12 finalizes name no sender.
            sender_node_id: match self.version {
                GoVersion::Head => self.id.clone(),
                GoVersion::V0612 => String::new(),
            },
            passed,
            decided_at,
        })));
        if passed {
            self.apply(&t.proposal, &decided_at, out);
        }
    }

    /// Timers: joins, heartbeats, proposal timeouts, garbage collection.
    pub fn tick(&mut self, now: Now) -> Vec<Effect> {
        let mut out = Vec::new();
        if self.startup_left > 0 && self.next_startup.is_some_and(|t| t <= now) {
            self.startup_left -= 1;
            self.next_startup =
                (self.startup_left > 0).then(|| after(now, Duration::from_millis(500)));
            out.push(self.join(now));
        }
        if self.next_heartbeat.is_some_and(|t| t <= now) {
            self.next_heartbeat = Some(after(now, Duration::from_secs(90)));
            out.push(self.join(now));
        }
        let due: Vec<String> = self
            .tracked
            .iter()
            .filter(|(_, t)| t.next_timeout <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            if let Some(t) = self.tracked.get_mut(&id) {
                t.timeouts += 1;
                t.next_timeout = after(now, TIMEOUT);
            }
            if self.decide(&id, now, &mut out) {
                continue;
            }
            if self.version == GoVersion::Head {
                let timeouts = self.tracked.get(&id).map(|t| t.timeouts).unwrap_or(0);
                if self.active_monitors(now) == 0 || timeouts >= 3 {
                    self.finalize(&id, false, now, &mut out);
                }
            }
        }
        if self.next_gc.is_none_or(|t| t <= now) {
            self.next_gc = Some(after(now, Duration::from_secs(5)));
            // Ages by the proposer's clock, as the reference does.
            self.tracked.retain(|_, t| {
                t.proposal.timestamp.is_zero()
                    || elapsed(t.proposal.timestamp.instant(), now) < PROPOSAL_TTL
            });
            for votes in self.pending.values_mut() {
                votes.retain(|(_, _, at)| elapsed(*at, now) < VOTE_TTL);
            }
            self.pending.retain(|_, v| !v.is_empty());
            let stale: Vec<String> = self
                .nodes
                .iter()
                .filter(|(_, (_, h))| elapsed(*h, now) >= STALE)
                .map(|(id, _)| id.clone())
                .collect();
            for id in stale {
                self.nodes.remove(&id);
                for t in self.tracked.values_mut() {
                    t.votes.remove(&id);
                }
            }
        }
        out
    }

    /// When [`GoMonitor::tick`] is next needed.
    pub fn next_deadline(&self) -> Option<Now> {
        let startup = (self.startup_left > 0)
            .then_some(self.next_startup)
            .flatten();
        let timeout = self.tracked.values().map(|t| t.next_timeout).min();
        [startup, self.next_heartbeat, self.next_gc, timeout]
            .into_iter()
            .flatten()
            .min()
    }
}
