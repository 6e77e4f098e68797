//! Versioned, idempotent schema migrations, run explicitly by the role that owns each
//! table (D15). Applied versions are recorded in `ibp_schema_migrations`.

use crate::{Arg, Backend, Col, Store, StoreError, StoreErrorKind};

/// A group of tables a role owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Part {
    /// `requests` (DNS, collator).
    Usage,
    /// `member_events` and `ibp_processed_decisions` (collator, monitor).
    Events,
    /// `ibp_results` (monitor).
    Results,
    /// `ibp_dead_letters`: writes the database refused for good, kept for an operator
    /// (every role).
    DeadLetters,
}

/// What [`Store::migrate`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// Migrations applied now, by name.
    pub applied: Vec<String>,
    /// Whether `requests` has the 9-column unique key that per-node replace needs.
    pub usage_key_ok: bool,
    /// Problems that did not stop start-up but disable a feature (logged loudly).
    pub warnings: Vec<String>,
}

/// A migration not applied yet, as `check-config` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// Version.
    pub version: i64,
    /// What it does.
    pub name: &'static str,
    /// Whether it changes an existing table (needs ALTER), not only creates one.
    pub alters: bool,
    /// Whether the node starts without it (it is tried again at the next start).
    pub optional: bool,
}

/// What the database user may do (MySQL `SHOW GRANTS`; SQLite files allow everything).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Privileges {
    /// CREATE (new tables).
    pub create: bool,
    /// ALTER (widen keys and columns of existing tables).
    pub alter: bool,
}

struct Migration {
    version: i64,
    part: Part,
    name: &'static str,
    mysql: &'static [&'static str],
    sqlite: &'static [&'static str],
    /// A failure (e.g. no ALTER privilege on a Go table) is a warning, not a start-up
    /// error: the node works without it, less well. It is tried again at the next start.
    optional: bool,
}

const USAGE_COLUMNS: [&str; 9] = [
    "date",
    "node_id",
    "domain_name",
    "member_name",
    "network_asn",
    "network_name",
    "country_code",
    "country_name",
    "is_ipv6",
];

const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        part: Part::Usage,
        name: "create requests",
        mysql: &["CREATE TABLE IF NOT EXISTS requests (
            id INT UNSIGNED NOT NULL AUTO_INCREMENT,
            date DATE NULL DEFAULT NULL,
            node_id VARCHAR(32) NULL DEFAULT NULL,
            domain_name VARCHAR(128) NULL DEFAULT NULL,
            member_name VARCHAR(64) NULL DEFAULT NULL,
            network_asn VARCHAR(32) NULL DEFAULT NULL,
            network_name VARCHAR(96) NULL DEFAULT NULL,
            country_code VARCHAR(2) NULL DEFAULT NULL,
            country_name VARCHAR(64) NULL DEFAULT NULL,
            is_ipv6 TINYINT NULL DEFAULT NULL,
            hits INT UNSIGNED NULL DEFAULT NULL,
            PRIMARY KEY (id),
            UNIQUE KEY uniq_traffic_dedupe (date, node_id, domain_name, member_name, network_asn, network_name, country_code, country_name, is_ipv6)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci"],
        sqlite: &[
            "CREATE TABLE IF NOT EXISTS requests (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            date TEXT NULL,
            node_id TEXT NULL,
            domain_name TEXT NULL COLLATE NOCASE,
            member_name TEXT NULL COLLATE NOCASE,
            network_asn TEXT NULL COLLATE NOCASE,
            network_name TEXT NULL COLLATE NOCASE,
            country_code TEXT NULL COLLATE NOCASE,
            country_name TEXT NULL COLLATE NOCASE,
            is_ipv6 INTEGER NULL,
            hits INTEGER NULL)",
            "CREATE UNIQUE INDEX IF NOT EXISTS uniq_traffic_dedupe ON requests
            (date, node_id, domain_name, member_name, network_asn, network_name, country_code, country_name, is_ipv6)",
        ],
        optional: false,
    },
    Migration {
        version: 2,
        part: Part::Events,
        name: "create member_events",
        mysql: &["CREATE TABLE IF NOT EXISTS member_events (
            id INT UNSIGNED NOT NULL AUTO_INCREMENT,
            check_type VARCHAR(24) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
            check_name VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
            endpoint VARCHAR(256) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
            member_name VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
            domain_name VARCHAR(128) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL,
            status TINYINT NULL,
            is_ipv6 TINYINT NULL,
            start_time DATETIME NULL DEFAULT CURRENT_TIMESTAMP,
            end_time DATETIME NULL,
            error TEXT NULL,
            vote_data LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL CHECK (vote_data IS NULL OR JSON_VALID(vote_data)),
            additional_data LONGTEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL CHECK (additional_data IS NULL OR JSON_VALID(additional_data)),
            PRIMARY KEY (id),
            UNIQUE KEY uniq_member_event_v2 (check_type, check_name, member_name, domain_name, is_ipv6, start_time, endpoint(191)),
            KEY idx_member_events_open (member_name, end_time)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci"],
        sqlite: &[
            "CREATE TABLE IF NOT EXISTS member_events (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            check_type TEXT NULL,
            check_name TEXT NULL,
            endpoint TEXT NULL,
            member_name TEXT NULL,
            domain_name TEXT NULL,
            status INTEGER NULL,
            is_ipv6 INTEGER NULL,
            start_time TEXT NULL,
            end_time TEXT NULL,
            error TEXT NULL,
            vote_data TEXT NULL,
            additional_data TEXT NULL)",
            "CREATE INDEX IF NOT EXISTS idx_member_events_open ON member_events (member_name, end_time)",
        ],
        optional: false,
    },
    Migration {
        version: 3,
        part: Part::Events,
        name: "create ibp_processed_decisions",
        mysql: &["CREATE TABLE IF NOT EXISTS ibp_processed_decisions (
            proposal_id VARCHAR(64) NOT NULL,
            passed TINYINT NOT NULL,
            event_id BIGINT NULL,
            processed_at DATETIME(6) NOT NULL,
            PRIMARY KEY (proposal_id, passed)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci"],
        sqlite: &["CREATE TABLE IF NOT EXISTS ibp_processed_decisions (
            proposal_id TEXT NOT NULL,
            passed INTEGER NOT NULL,
            event_id INTEGER NULL,
            processed_at TEXT NOT NULL,
            PRIMARY KEY (proposal_id, passed))"],
        optional: false,
    },
    Migration {
        version: 4,
        part: Part::Results,
        name: "create ibp_results",
        mysql: &["CREATE TABLE IF NOT EXISTS ibp_results (
            kind VARCHAR(8) NOT NULL,
            key_hash CHAR(64) NOT NULL,
            check_type TEXT NOT NULL,
            check_name TEXT NOT NULL,
            member_name TEXT NOT NULL,
            domain_name TEXT NOT NULL,
            endpoint TEXT NOT NULL,
            is_ipv6 TINYINT NOT NULL,
            status TINYINT NOT NULL,
            error_text TEXT NULL,
            data LONGTEXT NULL,
            proposal LONGTEXT NULL,
            updated_at DATETIME(6) NOT NULL,
            PRIMARY KEY (kind, key_hash)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci"],
        sqlite: &["CREATE TABLE IF NOT EXISTS ibp_results (
            kind TEXT NOT NULL,
            key_hash TEXT NOT NULL,
            check_type TEXT NOT NULL,
            check_name TEXT NOT NULL,
            member_name TEXT NOT NULL,
            domain_name TEXT NOT NULL,
            endpoint TEXT NOT NULL,
            is_ipv6 INTEGER NOT NULL,
            status INTEGER NOT NULL,
            error_text TEXT NULL,
            data TEXT NULL,
            proposal TEXT NULL,
            updated_at TEXT NOT NULL,
            PRIMARY KEY (kind, key_hash))"],
        optional: false,
    },
    Migration {
        version: 5,
        part: Part::Usage,
        name: "index requests for the usage query",
        // MySQL: the Go table is left as it is (an index on a big production table is an
        // operator's decision).
        mysql: &[],
        sqlite: &["CREATE INDEX IF NOT EXISTS idx_requests_usage ON requests \
            (date, domain_name, member_name, country_code, network_asn, network_name, country_name, is_ipv6)"],
        optional: false,
    },
    Migration {
        version: 6,
        part: Part::Usage,
        name: "widen requests.hits to BIGINT UNSIGNED",
        // INT UNSIGNED overflows at 2^32-1 hits for one key and day; SQLite's INTEGER is
        // 64-bit already. Go readers scan the sum into an int64: unaffected.
        mysql: &["ALTER TABLE requests MODIFY hits BIGINT UNSIGNED NULL DEFAULT NULL"],
        sqlite: &[],
        optional: true,
    },
    Migration {
        version: 7,
        part: Part::Events,
        name: "sub-second member_events times",
        // Two outages of one check that open (or close and reopen) within one second must
        // not collide on the unique key that includes start_time.
        mysql: &["ALTER TABLE member_events MODIFY start_time DATETIME(6) NULL DEFAULT CURRENT_TIMESTAMP(6), MODIFY end_time DATETIME(6) NULL"],
        sqlite: &[],
        optional: true,
    },
    Migration {
        version: 8,
        part: Part::DeadLetters,
        name: "create ibp_dead_letters",
        mysql: &["CREATE TABLE IF NOT EXISTS ibp_dead_letters (
            id BIGINT NOT NULL AUTO_INCREMENT,
            kind VARCHAR(64) NOT NULL,
            payload LONGTEXT NOT NULL,
            error TEXT NOT NULL,
            created_at DATETIME(6) NOT NULL,
            PRIMARY KEY (id)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci"],
        sqlite: &["CREATE TABLE IF NOT EXISTS ibp_dead_letters (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            kind TEXT NOT NULL,
            payload TEXT NOT NULL,
            error TEXT NOT NULL,
            created_at TEXT NOT NULL)"],
        optional: false,
    },
    Migration {
        version: 9,
        part: Part::Events,
        name: "outage markers and decision times",
        // ibp_open_outages: one row per check with an outage this project opened, so two
        // collators on one database cannot both open one (the second's insert conflicts).
        // ibp_processed_decisions gains the check and the decision time, so a close that
        // arrives before its open (redelivery, reordering) still closes it.
        mysql: &[
            "CREATE TABLE IF NOT EXISTS ibp_open_outages (
            check_hash CHAR(64) NOT NULL,
            event_id BIGINT NOT NULL,
            PRIMARY KEY (check_hash)
        ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_general_ci",
            "ALTER TABLE ibp_processed_decisions ADD COLUMN check_hash CHAR(64) NULL, ADD COLUMN status TINYINT NULL, ADD COLUMN decided_at DATETIME(6) NULL, ADD KEY idx_processed_check (check_hash, status, decided_at)",
        ],
        sqlite: &[
            "CREATE TABLE IF NOT EXISTS ibp_open_outages (check_hash TEXT NOT NULL PRIMARY KEY, event_id INTEGER NOT NULL)",
            "ALTER TABLE ibp_processed_decisions ADD COLUMN check_hash TEXT NULL",
            "ALTER TABLE ibp_processed_decisions ADD COLUMN status INTEGER NULL",
            "ALTER TABLE ibp_processed_decisions ADD COLUMN decided_at TEXT NULL",
            "CREATE INDEX IF NOT EXISTS idx_processed_check ON ibp_processed_decisions (check_hash, status, decided_at)",
        ],
        optional: false,
    },
];

impl Store {
    /// Applies the migrations of `parts` that are not applied yet, then checks the legacy
    /// keys of an existing Go database: widens `uniq_traffic_dedupe` to the 9 columns
    /// (D8) and `uniq_member_event` to include `start_time`, so every outage gets its own
    /// row (D1). Neither change rewrites a row.
    pub async fn migrate(&self, parts: &[Part]) -> Result<MigrationReport, StoreError> {
        let mut report = MigrationReport::default();
        // Several nodes may share one database: migrate one at a time. The lock belongs
        // to a session, so it is taken and released on one dedicated connection.
        let mut lock = match &self.pool {
            crate::Pool::Mysql(p) => {
                let mut c = p.acquire().await.map_err(self.q("lock migrations"))?;
                let db: Option<String> = sqlx::query_scalar("SELECT DATABASE()")
                    .fetch_one(&mut *c)
                    .await
                    .map_err(self.q("select database"))?;
                if db.is_none_or(|d| d.is_empty()) {
                    return Err(self.err(
                        StoreErrorKind::InvalidUrl,
                        "open",
                        "the URL names no database: use mysql://user:pass@host:port/DATABASE",
                    ));
                }
                let got: Option<i64> = sqlx::query_scalar(
                    "SELECT CAST(GET_LOCK(CONCAT('ibp_migrate.', DATABASE()), 60) AS SIGNED)",
                )
                .fetch_one(&mut *c)
                .await
                .map_err(self.q("lock migrations"))?;
                if got != Some(1) {
                    return Err(self.err(
                        StoreErrorKind::Unavailable,
                        "lock migrations",
                        "another node has been migrating this database for 60 s; try again",
                    ));
                }
                Some(c)
            }
            crate::Pool::Sqlite(_) => None,
        };
        let r = self.migrate_locked(parts, &mut report).await;
        if let Some(c) = lock.as_mut() {
            let _ = sqlx::query("SELECT RELEASE_LOCK(CONCAT('ibp_migrate.', DATABASE()))")
                .execute(&mut **c)
                .await;
        }
        r?;
        for w in &report.warnings {
            tracing::error!(warning = %w, "schema check");
        }
        for a in &report.applied {
            tracing::info!(migration = %a, "schema migration applied");
        }
        Ok(report)
    }

    async fn migrate_locked(
        &self,
        parts: &[Part],
        report: &mut MigrationReport,
    ) -> Result<(), StoreError> {
        let create = self.sql(
            "CREATE TABLE IF NOT EXISTS ibp_schema_migrations (version BIGINT NOT NULL PRIMARY KEY, name VARCHAR(128) NOT NULL, applied_at DATETIME(6) NOT NULL)",
            "CREATE TABLE IF NOT EXISTS ibp_schema_migrations (version INTEGER NOT NULL PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)",
        );
        self.run(create, &[])
            .await
            .map_err(self.q("create ibp_schema_migrations"))?;
        let applied: Vec<i64> = self
            .fetch(
                "SELECT version FROM ibp_schema_migrations",
                &[],
                &[Col::Int],
            )
            .await
            .map_err(self.q("read ibp_schema_migrations"))?
            .iter()
            .map(|r| r[0].int())
            .collect();
        'next: for m in MIGRATIONS
            .iter()
            .filter(|m| parts.contains(&m.part) && !applied.contains(&m.version))
        {
            let stmts = match self.backend {
                Backend::Mysql => m.mysql,
                Backend::Sqlite => m.sqlite,
            };
            for s in stmts {
                if let Err(e) = self.run(s, &[]).await {
                    if m.optional {
                        report.warnings.push(format!(
                            "migration {} ({}) not applied: {e}; the node runs without it and tries again at the next start",
                            m.version, m.name
                        ));
                        continue 'next;
                    }
                    return Err(self.err(
                        crate::classify(&e),
                        m.name,
                        format!("{e} (a migration needs CREATE and ALTER privileges on this database; `ibp-node check-config` lists what is pending)"),
                    ));
                }
            }
            let now = crate::fmt_datetime(chrono::Utc::now());
            self.run(
                "INSERT INTO ibp_schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                &[Arg::Int(m.version), m.name.into(), now.into()],
            )
            .await
            .map_err(self.q("record migration"))?;
            report.applied.push(format!("{} {}", m.version, m.name));
        }
        if parts.contains(&Part::Usage) {
            report.usage_key_ok = self.check_usage_key(report).await?;
            self.usage_key_ok
                .store(report.usage_key_ok, std::sync::atomic::Ordering::SeqCst);
        }
        if parts.contains(&Part::Events) && self.backend == Backend::Mysql {
            self.check_event_key(report).await?;
        }
        Ok(())
    }

    async fn index_columns(&self, table: &str, index: &str) -> Result<Vec<String>, StoreError> {
        let rows = self
            .fetch(
                "SELECT CAST(COLUMN_NAME AS CHAR) FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND INDEX_NAME = ? ORDER BY SEQ_IN_INDEX",
                &[table.into(), index.into()],
                &[Col::Text],
            )
            .await
            .map_err(self.q("read index columns"))?;
        Ok(rows.iter().map(|r| r[0].text()).collect())
    }

    async fn has_column(&self, table: &str, column: &str) -> Result<bool, StoreError> {
        let rows = self
            .fetch(
                "SELECT CAST(COUNT(*) AS SIGNED) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND COLUMN_NAME = ?",
                &[table.into(), column.into()],
                &[Col::Int],
            )
            .await
            .map_err(self.q("read columns"))?;
        Ok(rows.first().is_some_and(|r| r[0].int() > 0))
    }

    async fn exec(&self, sql: &str) -> Result<(), sqlx::Error> {
        self.run(sql, &[]).await.map(|_| ())
    }

    /// D8: the collator's replace semantics are only safe with `node_id` and `is_ipv6` in
    /// the unique key. Widens an older key; if that is impossible, says so.
    async fn check_usage_key(&self, report: &mut MigrationReport) -> Result<bool, StoreError> {
        if self.backend == Backend::Sqlite {
            return Ok(true);
        }
        let cols = self
            .index_columns("requests", "uniq_traffic_dedupe")
            .await?;
        if cols == USAGE_COLUMNS {
            return Ok(true);
        }
        if !self.has_column("requests", "node_id").await? {
            if let Err(e) = self.exec("ALTER TABLE requests ADD COLUMN node_id VARCHAR(32) NULL DEFAULT NULL AFTER date").await {
                report.warnings.push(format!("requests has no node_id column and it cannot be added ({e}); usage replace is disabled"));
                return Ok(false);
            }
            report.applied.push("add requests.node_id".into());
        }
        let drop = if cols.is_empty() {
            ""
        } else {
            "DROP INDEX uniq_traffic_dedupe, "
        };
        let sql = format!(
            "ALTER TABLE requests {drop}ADD UNIQUE KEY uniq_traffic_dedupe ({})",
            USAGE_COLUMNS.join(", ")
        );
        match self.exec(&sql).await {
            Ok(()) => {
                report.applied.push(format!(
                    "widen uniq_traffic_dedupe from {cols:?} to the 9-column key"
                ));
                Ok(true)
            }
            Err(e) => {
                report.warnings.push(format!(
                    "uniq_traffic_dedupe is {cols:?}, not the 9-column key, and cannot be changed ({e}): per-node usage replace is refused (D8)"
                ));
                Ok(false)
            }
        }
    }

    /// D1: with the Go key (no `start_time`) every check has one row forever, so a repeat
    /// outage would overwrite the first. Widen it to include `start_time`.
    async fn check_event_key(&self, report: &mut MigrationReport) -> Result<(), StoreError> {
        let old = self
            .index_columns("member_events", "uniq_member_event")
            .await?;
        if old.is_empty() || old.iter().any(|c| c == "start_time") {
            return Ok(());
        }
        let v2 = self
            .index_columns("member_events", "uniq_member_event_v2")
            .await?;
        let add = if v2.is_empty() {
            ", ADD UNIQUE KEY uniq_member_event_v2 (check_type, check_name, member_name, domain_name, is_ipv6, start_time, endpoint(191))"
        } else {
            ""
        };
        let sql = format!("ALTER TABLE member_events DROP INDEX uniq_member_event{add}");
        match self.exec(&sql).await {
            Ok(()) => report
                .applied
                .push(format!("widen uniq_member_event {old:?} with start_time")),
            Err(e) => {
                return Err(self.err(
                    StoreErrorKind::Schema,
                    "member_events",
                    format!("the Go key uniq_member_event {old:?} allows one row per check forever and cannot be widened: {e}"),
                ));
            }
        }
        Ok(())
    }

    /// Migrations of `parts` not applied yet (nothing is changed), plus the one-time key
    /// checks a Go database may still need.
    pub async fn pending_migrations(&self, parts: &[Part]) -> Result<Vec<Pending>, StoreError> {
        let applied: Vec<i64> = match self
            .fetch(
                "SELECT version FROM ibp_schema_migrations",
                &[],
                &[Col::Int],
            )
            .await
        {
            Ok(rows) => rows.iter().map(|r| r[0].int()).collect(),
            // No bookkeeping table yet: nothing was applied.
            Err(_) => Vec::new(),
        };
        let mut out: Vec<Pending> = MIGRATIONS
            .iter()
            .filter(|m| parts.contains(&m.part) && !applied.contains(&m.version))
            .filter(|m| match self.backend {
                Backend::Mysql => !m.mysql.is_empty(),
                Backend::Sqlite => !m.sqlite.is_empty(),
            })
            .map(|m| Pending {
                version: m.version,
                name: m.name,
                alters: match self.backend {
                    Backend::Mysql => m.mysql.iter().any(|s| s.trim_start().starts_with("ALTER")),
                    Backend::Sqlite => false,
                },
                optional: m.optional,
            })
            .collect();
        if self.backend == Backend::Mysql {
            if parts.contains(&Part::Usage) {
                let cols = self
                    .index_columns("requests", "uniq_traffic_dedupe")
                    .await?;
                if !cols.is_empty() && cols != USAGE_COLUMNS {
                    out.push(Pending {
                        version: 0,
                        name: "widen requests.uniq_traffic_dedupe to the 9-column key",
                        alters: true,
                        optional: true,
                    });
                }
            }
            if parts.contains(&Part::Events) {
                let old = self
                    .index_columns("member_events", "uniq_member_event")
                    .await?;
                if !old.is_empty() && !old.iter().any(|c| c == "start_time") {
                    out.push(Pending {
                        version: 0,
                        name: "widen member_events.uniq_member_event with start_time (one way: a Go collator writing afterwards inserts a row per finalize)",
                        alters: true,
                        optional: false,
                    });
                }
            }
        }
        Ok(out)
    }

    /// What the connected user may do to this database.
    pub async fn privileges(&self) -> Result<Privileges, StoreError> {
        if self.backend == Backend::Sqlite {
            return Ok(Privileges {
                create: true,
                alter: true,
            });
        }
        let db = self
            .fetch("SELECT CAST(DATABASE() AS CHAR)", &[], &[Col::OptText])
            .await
            .map_err(self.q("select database"))?
            .first()
            .and_then(|r| r[0].opt_text())
            .unwrap_or_default();
        let grants = self
            .fetch("SHOW GRANTS", &[], &[Col::Text])
            .await
            .map_err(self.q("show grants"))?;
        let mut p = Privileges {
            create: false,
            alter: false,
        };
        for g in grants.iter().map(|r| r[0].text().to_ascii_uppercase()) {
            let Some((privs, rest)) = g.strip_prefix("GRANT ").and_then(|g| g.split_once(" ON "))
            else {
                continue;
            };
            let target = rest.split(" TO ").next().unwrap_or("").replace('`', "");
            let ours = target.starts_with("*.*")
                || target.starts_with(&format!("{}.", db.to_ascii_uppercase()));
            if !ours {
                continue;
            }
            let all = privs.contains("ALL PRIVILEGES");
            p.create |= all || privs.split(',').any(|x| x.trim() == "CREATE");
            p.alter |= all || privs.split(',').any(|x| x.trim() == "ALTER");
        }
        Ok(p)
    }

    /// Whether per-node usage replace is allowed (see [`MigrationReport::usage_key_ok`]).
    pub fn usage_key_ok(&self) -> bool {
        self.usage_key_ok.load(std::sync::atomic::Ordering::SeqCst)
    }
}
