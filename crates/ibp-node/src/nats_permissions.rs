//! What each role may publish and subscribe to on NATS, derived from the subjects the code
//! uses, and the nats-server `authorization` block that grants exactly that. A DNS node's
//! credentials then cannot publish `consensus.*` at all: the server refuses before any
//! node sees it. `ibp-node nats-permissions` prints the block; `docs/nats-secure.conf`
//! holds it (a test keeps them equal).

use ibp_wire::{Role, ext, subjects};

use crate::durable::DEAD_LETTER_SUBJECT;

/// Subjects a role may publish to and subscribe to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    /// Publish allow list.
    pub publish: Vec<&'static str>,
    /// Subscribe allow list.
    pub subscribe: Vec<&'static str>,
    /// Whether it answers requests (replies go to the requester's inbox, allowed only for
    /// messages it received with a reply subject).
    pub responds: bool,
}

/// Every node's reply inboxes (`_INBOX.<NodeID>.usageReply.…`, client request inboxes).
const INBOXES: &str = "_INBOX.>";

/// The permissions of `role`.
pub fn permissions(role: Role) -> Permissions {
    let mut publish = vec![subjects::CLUSTER, ext::LEAVE_SUBJECT];
    let mut subscribe = vec![subjects::CLUSTER, ext::LEAVE_SUBJECT, INBOXES];
    let responds = match role {
        Role::Monitor => {
            // Catching up from each other (crate::cluster::SYNC_SUBJECT) is monitors' own.
            publish.extend([
                subjects::PROPOSE,
                subjects::VOTE,
                subjects::FINALIZE,
                crate::cluster::SYNC_SUBJECT,
            ]);
            subscribe.extend([
                subjects::PROPOSE,
                subjects::VOTE,
                subjects::FINALIZE,
                subjects::DOWNTIME_GET,
                crate::cluster::SYNC_SUBJECT,
            ]);
            true
        }
        Role::Dns => {
            // DNS nodes answer from decisions (and the votes that back them in enforce
            // mode), and follow operators' country overrides; they publish no decision.
            publish.push(subjects::USAGE_DATA);
            subscribe.extend([
                subjects::USAGE_GET,
                subjects::VOTE,
                subjects::FINALIZE,
                ibp_geodns::overrides::SUBJECT,
            ]);
            true
        }
        Role::Collator => {
            // Requests to DNS nodes and monitors, JetStream's API and acknowledgements
            // (the durable consumer), and the dead-letter subject.
            publish.extend([
                subjects::USAGE_GET,
                subjects::DOWNTIME_GET,
                "$JS.API.>",
                "$JS.ACK.>",
                DEAD_LETTER_SUBJECT,
            ]);
            subscribe.extend([
                subjects::PROPOSE,
                subjects::VOTE,
                subjects::FINALIZE,
                subjects::USAGE_DATA,
            ]);
            false
        }
    };
    Permissions {
        publish,
        subscribe,
        responds,
    }
}

/// One user of the `authorization` block.
#[derive(Debug, Clone)]
pub struct User {
    /// Role the user acts as.
    pub role: Role,
    /// `user` (with `password`), or an NKey public key (`nkey`, password unused).
    pub user: String,
    /// Password (a bcrypt hash from `nats server passwd` in production).
    pub password: Option<String>,
}

fn list(items: &[&str]) -> String {
    items
        .iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The permissions of `role` as a nats-server `permissions` map.
pub fn permissions_block(role: Role) -> String {
    let p = permissions(role);
    let mut out = format!(
        "{{\n        publish: {{ allow: [{}] }}\n        subscribe: {{ allow: [{}] }}\n",
        list(&p.publish),
        list(&p.subscribe)
    );
    if p.responds {
        // Replies in parts (protocol extension) are several messages to one inbox.
        out.push_str("        allow_responses: { max: 100000, expires: \"5m\" }\n");
    }
    out.push_str("      }");
    out
}

/// The `authorization` block for `users`.
pub fn authorization(users: &[User]) -> String {
    let mut out = String::from("authorization {\n  users: [\n");
    for u in users {
        let who = if u.user.starts_with('U') && u.password.is_none() && u.user.len() == 56 {
            format!("nkey: {:?}", u.user)
        } else {
            format!(
                "user: {:?}, password: {:?}",
                u.user,
                u.password.clone().unwrap_or_default()
            )
        };
        out.push_str(&format!(
            "    {{ # {}\n      {who}\n      permissions: {}\n    }}\n",
            u.role,
            permissions_block(u.role)
        ));
    }
    out.push_str("  ]\n}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_monitors_may_publish_consensus_decisions() {
        for s in [subjects::PROPOSE, subjects::VOTE, subjects::FINALIZE] {
            assert!(permissions(Role::Monitor).publish.contains(&s));
            assert!(!permissions(Role::Dns).publish.contains(&s));
            assert!(!permissions(Role::Collator).publish.contains(&s));
        }
        assert!(
            !permissions(Role::Dns)
                .subscribe
                .contains(&subjects::PROPOSE)
        );
        // Every subject a role subscribes to in the protocol is allowed.
        for r in Role::ALL {
            for s in subjects::subscriptions(r) {
                assert!(permissions(r).subscribe.contains(s), "{r} {s}");
            }
        }
    }

    #[test]
    fn the_documented_configuration_is_the_generated_one() {
        let doc = include_str!("../../../docs/nats-secure.conf");
        for r in Role::ALL {
            let block = permissions_block(r);
            assert!(
                doc.contains(&block),
                "docs/nats-secure.conf is out of date for {r}; regenerate with `ibp-node nats-permissions`:\n{block}"
            );
        }
    }
}
