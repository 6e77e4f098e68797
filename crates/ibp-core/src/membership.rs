//! Cluster membership (protocol §4): who is in the cluster, in which role, and who is active.
//!
//! Pure: every method takes the current time; outgoing joins come back as [`Effect`]s.

use std::collections::BTreeMap;

use ibp_wire::{ClusterMessage, NodeInfo, Role, WireTime};
use serde::Serialize;

use crate::time::{Now, after, elapsed};
use crate::{CoreConfig, Counters, Effect, Outbound};

/// How this node describes itself in joins.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SelfInfo {
    /// The validated node ID.
    pub node_id: String,
    /// Public address (may be empty).
    pub public_address: String,
    /// Listen address of the node's API.
    pub listen_address: String,
    /// Listen port of the node's API, as a string (wire format).
    pub listen_port: String,
}

/// What this node knows of another node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    /// The node's ID.
    pub node_id: String,
    /// Its role string (announced, or guessed; may be empty).
    pub role: String,
    /// Public address it announced.
    pub public_address: String,
    /// Listen address it announced.
    pub listen_address: String,
    /// Listen port it announced.
    pub listen_port: String,
    /// Local time it was last heard from.
    pub last_heard: Now,
    /// Local time it was first seen.
    pub first_seen: Now,
    /// True after it announced a clean shutdown (and was not heard from since).
    pub left: bool,
    /// The node's own clock when it announced the leave. Messages it sent before that
    /// (delivered late, on another subscription) must not bring it back.
    #[serde(skip)]
    pub left_at: Option<Now>,
    /// Local time the leave was received: the late-message rule above holds only for
    /// [`LEAVE_WINDOW`] after it, so a leave stamped in the future (a bad clock, a forgery)
    /// cannot keep a live node out.
    #[serde(skip)]
    pub left_received: Option<Now>,
}

/// How long after a leave messages the node sent before it are still told apart from a
/// restart. Late deliveries arrive within milliseconds; a restart takes seconds.
pub const LEAVE_WINDOW: std::time::Duration = std::time::Duration::from_secs(30);

/// The membership state machine.
#[derive(Debug)]
pub struct Membership {
    cfg: CoreConfig,
    me: SelfInfo,
    role: Role,
    nodes: BTreeMap<String, Member>,
    enabled: bool,
    last_join: Option<Now>,
    startup_left: u32,
    next_startup: Option<Now>,
    next_heartbeat: Option<Now>,
    /// Announces no role and never counts itself (one-shot tools learning the cluster).
    observer: bool,
    last_conflict_join: Option<Now>,
}

/// Result of recording that a node was heard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// A node seen for the first time.
    New,
    /// A known node.
    Known,
    /// Ignored: empty ID, or this node's own ID.
    Ignored,
    /// Refused: the node cap is reached.
    Refused,
}

impl Membership {
    /// A membership view for this node in `role`. Nothing is sent until [`Membership::enable`].
    pub fn new(me: SelfInfo, role: Role, cfg: CoreConfig) -> Membership {
        Membership {
            cfg,
            me,
            role,
            nodes: BTreeMap::new(),
            enabled: false,
            last_join: None,
            startup_left: 0,
            next_startup: None,
            next_heartbeat: None,
            observer: false,
            last_conflict_join: None,
        }
    }

    /// A view for a one-shot tool: its joins carry no role (Go nodes then guess none from a
    /// tool ID), so the cluster learns it exists and answers with its own joins, but it is
    /// never counted as a monitor, DNS node or collator by anyone, itself included.
    pub fn observer(me: SelfInfo, cfg: CoreConfig) -> Membership {
        let mut m = Membership::new(me, Role::Collator, cfg);
        m.observer = true;
        m
    }

    /// Whether this is a one-shot tool's view (see [`Membership::observer`]).
    pub fn is_observer(&self) -> bool {
        self.observer
    }

    /// This node's ID.
    pub fn node_id(&self) -> &str {
        &self.me.node_id
    }

    /// This node's role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Starts announcing: startup joins from `now`, first heartbeat after `first_heartbeat`.
    pub fn enable(&mut self, now: Now) {
        self.enabled = true;
        self.startup_left = self.cfg.startup_joins;
        self.next_startup = Some(now);
        self.next_heartbeat = Some(after(now, self.cfg.first_heartbeat));
    }

    /// Announces again from `now` (after a reconnect): the startup joins are repeated.
    pub fn reannounce(&mut self, now: Now) {
        if self.enabled {
            self.startup_left = self.cfg.startup_joins;
            self.next_startup = Some(now);
        }
    }

    fn self_info(&self, now: Now) -> NodeInfo {
        NodeInfo {
            node_id: self.me.node_id.clone(),
            public_address: self.me.public_address.clone(),
            listen_address: self.me.listen_address.clone(),
            listen_port: self.me.listen_port.clone(),
            node_role: if self.observer {
                String::new()
            } else {
                self.role.as_wire().to_string()
            },
            last_heard: WireTime::from_utc(now),
        }
    }

    /// A join, unless it is not forced and one was sent within the throttle window.
    fn join(&mut self, forced: bool, now: Now, out: &mut Vec<Effect>) {
        if !forced
            && let Some(last) = self.last_join
            && elapsed(last, now) < self.cfg.join_throttle
        {
            return;
        }
        self.last_join = Some(now);
        out.push(Effect::Publish(Outbound::Join(ClusterMessage {
            kind: "join".to_string(),
            sender: self.self_info(now),
            members: None,
        })));
    }

    /// The clean-shutdown notice (extension subject; Go nodes never see it).
    pub fn leave(&mut self, now: Now, out: &mut Vec<Effect>) {
        if !self.enabled {
            return;
        }
        self.enabled = false;
        out.push(Effect::Publish(Outbound::Leave(ClusterMessage {
            kind: ibp_wire::ext::LEAVE_TYPE.to_string(),
            sender: self.self_info(now),
            members: None,
        })));
    }

    /// Records that `node_id` was heard now. `consensus_sender` is true for senders of
    /// proposals, votes and finalizes, which are recorded as monitors when their role is
    /// unknown, whatever their name.
    pub fn heard(
        &mut self,
        node_id: &str,
        consensus_sender: bool,
        sent: Option<Now>,
        now: Now,
        counters: &mut Counters,
        out: &mut Vec<Effect>,
    ) -> Heard {
        if node_id.is_empty() || node_id == self.me.node_id {
            return Heard::Ignored;
        }
        if let Some(m) = self.nodes.get_mut(node_id) {
            if m.left
                && m.left_received
                    .is_some_and(|r| elapsed(r, now) < LEAVE_WINDOW)
                && matches!((sent, m.left_at), (Some(s), Some(l)) if s <= l)
            {
                return Heard::Known;
            }
            m.last_heard = now;
            m.left = false;
            m.left_at = None;
            m.left_received = None;
            if m.role.is_empty() && consensus_sender {
                m.role = Role::Monitor.as_wire().to_string();
            }
            return Heard::Known;
        }
        if self.nodes.len() >= self.cfg.max_nodes {
            counters.refused_nodes += 1;
            return Heard::Refused;
        }
        let role = if consensus_sender {
            Role::Monitor.as_wire().to_string()
        } else {
            Role::guess_from_node_id(node_id)
                .map(|r| r.as_wire().to_string())
                .unwrap_or_default()
        };
        out.push(Effect::NodeJoined {
            node_id: node_id.to_string(),
            role: role.clone(),
        });
        self.nodes.insert(
            node_id.to_string(),
            Member {
                node_id: node_id.to_string(),
                role,
                public_address: String::new(),
                listen_address: String::new(),
                listen_port: String::new(),
                last_heard: now,
                first_seen: now,
                left: false,
                left_at: None,
                left_received: None,
            },
        );
        Heard::New
    }

    /// Handles a `consensus.cluster` message.
    pub fn on_cluster(
        &mut self,
        msg: &ClusterMessage,
        now: Now,
        counters: &mut Counters,
        out: &mut Vec<Effect>,
    ) {
        let s = &msg.sender;
        if s.node_id.is_empty() {
            counters.invalid_messages += 1;
            return;
        }
        if s.node_id == self.me.node_id {
            // No-echo connections never deliver our own joins: another node uses our ID.
            counters.node_id_conflicts += 1;
            out.push(Effect::IdConflict {
                other: format!(
                    "role {:?}, address {:?}, listen {:?}:{:?}",
                    s.node_role, s.public_address, s.listen_address, s.listen_port
                ),
            });
            // Answer once per throttle window, so the other instance sees the conflict too
            // (without the two feeding each other a storm of joins).
            if self.enabled
                && self
                    .last_conflict_join
                    .is_none_or(|t| elapsed(t, now) >= self.cfg.join_throttle)
            {
                self.last_conflict_join = Some(now);
                self.join(true, now, out);
            }
            return;
        }
        if msg.kind != "join" {
            // Go nodes only send joins; any cluster message still proves the sender is alive.
            self.heard(
                &s.node_id,
                false,
                sent_at(&s.last_heard),
                now,
                counters,
                out,
            );
            return;
        }
        let was_left = self.nodes.get(&s.node_id).is_some_and(|m| m.left);
        let status = self.heard(
            &s.node_id,
            false,
            sent_at(&s.last_heard),
            now,
            counters,
            out,
        );
        let Some(m) = self.nodes.get_mut(&s.node_id) else {
            return;
        };
        if m.left {
            // A join sent before the node's leave, delivered late: ignore it.
            return;
        }
        let mut filled = false;
        for (slot, incoming) in [
            (&mut m.role, &s.node_role),
            (&mut m.public_address, &s.public_address),
            (&mut m.listen_address, &s.listen_address),
            (&mut m.listen_port, &s.listen_port),
        ] {
            // Like the reference, a join only fills in what is missing: a node's role and
            // addresses cannot be rewritten by a later message claiming its ID.
            if !incoming.is_empty() && slot.is_empty() {
                filled = true;
                *slot = incoming.clone();
            }
        }
        if self.enabled && (status == Heard::New || filled || was_left) {
            self.join(true, now, out);
        }
    }

    /// Handles a clean-shutdown notice: the node stops counting at once.
    pub fn on_leave(
        &mut self,
        msg: &ClusterMessage,
        now: Now,
        counters: &mut Counters,
        out: &mut Vec<Effect>,
    ) -> bool {
        let id = &msg.sender.node_id;
        if id.is_empty() || msg.kind != ibp_wire::ext::LEAVE_TYPE {
            counters.invalid_messages += 1;
            return false;
        }
        if id == &self.me.node_id {
            counters.node_id_conflicts += 1;
            return false;
        }
        match self.nodes.get_mut(id) {
            Some(m) if !m.left => {
                m.left = true;
                m.left_at = sent_at(&msg.sender.last_heard);
                m.left_received = Some(now);
                out.push(Effect::NodeLeft {
                    node_id: id.clone(),
                    announced: true,
                });
                true
            }
            Some(_) => false,
            None => {
                // A leave handled before the node's own earlier join (they travel on
                // different subjects): remember it, so that join does not add the node.
                if self.nodes.len() >= self.cfg.max_nodes {
                    counters.refused_nodes += 1;
                    return false;
                }
                let role = Role::guess_from_node_id(id)
                    .map(|r| r.as_wire().to_string())
                    .unwrap_or_default();
                self.nodes.insert(
                    id.clone(),
                    Member {
                        node_id: id.clone(),
                        role,
                        public_address: String::new(),
                        listen_address: String::new(),
                        listen_port: String::new(),
                        last_heard: now,
                        first_seen: now,
                        left: true,
                        left_at: sent_at(&msg.sender.last_heard),
                        left_received: Some(now),
                    },
                );
                false
            }
        }
    }

    /// Startup joins and heartbeats that are due.
    pub fn tick(&mut self, now: Now, out: &mut Vec<Effect>) {
        if !self.enabled {
            return;
        }
        if self.startup_left > 0
            && let Some(at) = self.next_startup
            && at <= now
        {
            self.startup_left -= 1;
            self.next_startup =
                (self.startup_left > 0).then(|| after(now, self.cfg.startup_join_interval));
            self.join(true, now, out);
        }
        if let Some(at) = self.next_heartbeat
            && at <= now
        {
            self.next_heartbeat = Some(after(now, self.cfg.heartbeat_interval));
            self.join(false, now, out);
        }
    }

    /// Removes nodes unheard for `stale_after` (never this node); returns their IDs.
    pub fn remove_stale(&mut self, now: Now, out: &mut Vec<Effect>) -> Vec<String> {
        let stale: Vec<String> = self
            .nodes
            .values()
            .filter(|m| elapsed(m.last_heard, now) >= self.cfg.stale_after)
            .map(|m| m.node_id.clone())
            .collect();
        for id in &stale {
            self.nodes.remove(id);
            out.push(Effect::NodeLeft {
                node_id: id.clone(),
                announced: false,
            });
        }
        stale
    }

    /// When membership next needs [`Membership::tick`].
    pub fn next_deadline(&self) -> Option<Now> {
        if !self.enabled {
            return None;
        }
        let startup = if self.startup_left > 0 {
            self.next_startup
        } else {
            None
        };
        [startup, self.next_heartbeat].into_iter().flatten().min()
    }

    fn member_active(&self, m: &Member, now: Now) -> bool {
        !m.left && elapsed(m.last_heard, now) < self.cfg.active_window
    }

    /// Whether `node_id` is an active monitor. This node counts while its role is enabled
    /// (from [`Membership::enable`] until [`Membership::leave`]), as in the Go nodes, which
    /// record themselves when they enable a role.
    pub fn is_active_monitor(&self, node_id: &str, now: Now) -> bool {
        if node_id == self.me.node_id {
            return self.enabled && !self.observer && self.role == Role::Monitor;
        }
        self.nodes
            .get(node_id)
            .is_some_and(|m| m.role == Role::Monitor.as_wire() && self.member_active(m, now))
    }

    /// Active nodes of `role`, this node included while enabled.
    pub fn count_active(&self, role: Role, now: Now) -> usize {
        let me = usize::from(self.enabled && !self.observer && self.role == role);
        me + self
            .nodes
            .values()
            .filter(|m| m.role == role.as_wire() && self.member_active(m, now))
            .count()
    }

    /// IDs of the active nodes of `role`, this node included, sorted.
    pub fn active_ids(&self, role: Role, now: Now) -> Vec<String> {
        let mut ids: Vec<String> = self
            .nodes
            .values()
            .filter(|m| m.role == role.as_wire() && self.member_active(m, now))
            .map(|m| m.node_id.clone())
            .collect();
        if self.enabled && !self.observer && self.role == role {
            ids.push(self.me.node_id.clone());
            ids.sort();
        }
        ids
    }

    /// Whether `node_id` left less than [`LEAVE_WINDOW`] ago: data it sent without a send
    /// time (usage or downtime answers) cannot be ordered against the leave, and must not
    /// bring it back.
    pub fn left_recently(&self, node_id: &str, now: Now) -> bool {
        self.nodes.get(node_id).is_some_and(|m| {
            m.left
                && m.left_received
                    .is_some_and(|r| elapsed(r, now) < LEAVE_WINDOW)
        })
    }

    /// Whether `node_id` announced a clean shutdown and was not heard from since.
    pub fn is_left(&self, node_id: &str) -> bool {
        self.nodes.get(node_id).is_some_and(|m| m.left)
    }

    /// Every known node (not this one), sorted by ID, with whether it is active.
    pub fn members(&self, now: Now) -> Vec<(Member, bool)> {
        self.nodes
            .values()
            .map(|m| (m.clone(), self.member_active(m, now)))
            .collect()
    }

    /// Number of known nodes (not counting this one).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// True when no other node is known.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// This node's self-description.
    pub fn me(&self) -> &SelfInfo {
        &self.me
    }
}

/// The sender's clock on a message, unless it is Go's zero time (unset).
pub fn sent_at(t: &WireTime) -> Option<Now> {
    (!t.is_zero()).then(|| t.instant())
}
