//! What `ibp-node check-config` finds out before a node runs: whether its database answers,
//! which schema changes the first start would make, and whether the user may make them (a
//! migration that needs ALTER on a Go table fails at start without the privilege).

use ibp_storage::{Part, Store};
use ibp_wire::Role;

use crate::config::NodeConfig;

/// What the database check found.
#[derive(Debug, Default)]
pub struct DatabaseReport {
    /// Lines for the operator.
    pub lines: Vec<String>,
    /// Set when `run` would fail at start because of the database.
    pub fatal: Option<String>,
}

/// The tables a role owns.
pub fn parts(role: Role) -> &'static [Part] {
    match role {
        Role::Monitor => &[Part::Events, Part::Results, Part::DeadLetters],
        Role::Dns => &[Part::Usage, Part::DeadLetters],
        Role::Collator => &[Part::Usage, Part::Events, Part::DeadLetters],
    }
}

/// Connects to a MySQL/MariaDB database (a SQLite file is created at start and always
/// migrates) and reports pending migrations and privileges. Changes nothing.
pub async fn database(cfg: &NodeConfig) -> DatabaseReport {
    let mut r = DatabaseReport::default();
    if cfg.db.starts_with("sqlite:") {
        r.lines
            .push("database: SQLite file, created and migrated at start".into());
        return r;
    }
    let shown = ibp_storage::redact_url(&cfg.db);
    let store = match tokio::time::timeout(std::time::Duration::from_secs(10), Store::open(&cfg.db))
        .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            r.fatal = Some(format!("database {shown}: {e}"));
            return r;
        }
        Err(_) => {
            r.fatal = Some(format!("database {shown}: no answer within 10 s"));
            return r;
        }
    };
    let pending = store.pending_migrations(parts(cfg.role)).await;
    let privs = store.privileges().await;
    store.close().await;
    let (pending, privs) = match (pending, privs) {
        (Ok(p), Ok(v)) => (p, v),
        (Err(e), _) | (_, Err(e)) => {
            r.fatal = Some(format!("database {shown}: {e}"));
            return r;
        }
    };
    r.lines.push(format!(
        "database: {shown} answers; the user may CREATE: {}, ALTER: {}",
        yes(privs.create),
        yes(privs.alter)
    ));
    if pending.is_empty() {
        r.lines.push("schema: up to date".into());
    }
    let mut blocking = Vec::new();
    for m in &pending {
        let need = if m.alters { "ALTER" } else { "CREATE" };
        let allowed = if m.alters { privs.alter } else { privs.create };
        let outcome = match (allowed, m.optional) {
            (true, _) => "will be applied at start",
            (false, true) => "cannot be applied (no privilege): the node starts without it",
            (false, false) => {
                blocking.push(format!("{} (needs {need})", m.name));
                "CANNOT be applied: start would fail"
            }
        };
        r.lines.push(format!(
            "pending migration{}: {} [{need}] — {outcome}",
            if m.version > 0 {
                format!(" {}", m.version)
            } else {
                String::new()
            },
            m.name
        ));
    }
    if !blocking.is_empty() {
        r.fatal = Some(format!(
            "the first start would fail: {} — grant the privilege for the first start or apply the change by hand (docs/storage.md)",
            blocking.join("; ")
        ));
    }
    r
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}
