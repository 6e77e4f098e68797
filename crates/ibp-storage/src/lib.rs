//! Storage of IBP GeoDNS nodes, one interface over two backends:
//!
//! * **SQLite** — the embedded default, one file per node (`sqlite://PATH`);
//! * **MySQL / MariaDB** — production, including a database the Go deployment already
//!   uses (`mysql://user:pass@host:port/db`). Its tables (`requests`, `member_events`;
//!   `docs/spec/storage.md`) are used as they are: rows are never rewritten; missing
//!   tables are created; schema changes are versioned migrations ([`Store::migrate`]).
//!
//! Tables of this project's own (`ibp_results`, `ibp_processed_decisions`,
//! `ibp_schema_migrations`) sit beside them and are invisible to Go readers.
//!
//! Datetimes are stored in UTC. Text key columns are written as `''`, never NULL (D7), and
//! truncated to their column widths (D11).

mod dead_letters;
mod events;
mod migrate;
mod results;
mod usage;

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

pub use dead_letters::DeadLetter;
pub use events::{EventKey, EventWrite, OutageChange, StoredEvent};
pub use migrate::{MigrationReport, Part, Pending, Privileges};
pub use results::{OfficialWrite, ResultKind, StoredResult};
pub use usage::{UsageFilter, UsageRow};

/// Which database a store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite file.
    Sqlite,
    /// MySQL or MariaDB.
    Mysql,
}

/// A storage failure.
#[derive(Debug, thiserror::Error)]
#[error("storage ({backend:?}): {context}: {message}")]
pub struct StoreError {
    kind: StoreErrorKind,
    backend: Option<Backend>,
    context: String,
    message: String,
}

/// What kind of storage failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// The URL is not `sqlite://…` or `mysql://…`, or is malformed.
    InvalidUrl,
    /// The database cannot be reached or opened.
    Unavailable,
    /// A query failed.
    Query,
    /// The schema does not allow the operation (e.g. the usage key lacks `node_id`).
    Schema,
    /// Stored data could not be read back.
    Corrupt,
    /// The database refused this data for good (a constraint, a value too long or out of
    /// range): retrying the same write can never succeed. Writers set it aside.
    Rejected,
}

impl StoreError {
    /// What kind of failure this is.
    pub fn kind(&self) -> StoreErrorKind {
        self.kind
    }

    /// Whether retrying the same write can never succeed (see [`StoreErrorKind::Rejected`]).
    pub fn is_permanent(&self) -> bool {
        self.kind == StoreErrorKind::Rejected
    }

    /// Whether the database itself was unreachable (as opposed to refusing a statement).
    pub fn is_unavailable(&self) -> bool {
        self.kind == StoreErrorKind::Unavailable
    }

    pub(crate) fn new(
        kind: StoreErrorKind,
        backend: Option<Backend>,
        context: impl Into<String>,
        e: impl std::fmt::Display,
    ) -> StoreError {
        StoreError {
            kind,
            backend,
            context: context.into(),
            message: e.to_string(),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum Pool {
    Sqlite(SqlitePool),
    Mysql(MySqlPool),
}

/// A bound query argument.
#[derive(Debug, Clone)]
pub(crate) enum Arg {
    Text(String),
    Int(i64),
    OptText(Option<String>),
}

impl From<String> for Arg {
    fn from(s: String) -> Arg {
        Arg::Text(s)
    }
}

impl From<&str> for Arg {
    fn from(s: &str) -> Arg {
        Arg::Text(s.to_string())
    }
}

impl From<i64> for Arg {
    fn from(i: i64) -> Arg {
        Arg::Int(i)
    }
}

impl From<bool> for Arg {
    fn from(b: bool) -> Arg {
        Arg::Int(i64::from(b))
    }
}

impl From<Option<String>> for Arg {
    fn from(s: Option<String>) -> Arg {
        Arg::OptText(s)
    }
}

/// How to read a result column (queries CAST to these, so both backends agree).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Col {
    Int,
    Text,
    OptText,
}

/// A read result cell.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cell {
    Int(i64),
    Text(String),
    Null,
}

impl Cell {
    pub(crate) fn int(&self) -> i64 {
        match self {
            Cell::Int(i) => *i,
            Cell::Text(t) => t.trim().parse().unwrap_or(0),
            Cell::Null => 0,
        }
    }

    pub(crate) fn text(&self) -> String {
        match self {
            Cell::Text(t) => t.clone(),
            Cell::Int(i) => i.to_string(),
            Cell::Null => String::new(),
        }
    }

    pub(crate) fn opt_text(&self) -> Option<String> {
        match self {
            Cell::Null => None,
            c => Some(c.text()),
        }
    }
}

/// Outcome of a statement.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Done {
    pub(crate) rows: u64,
    pub(crate) last_id: i64,
}

macro_rules! bind_args {
    ($q:expr, $args:expr) => {{
        let mut q = $q;
        for a in $args {
            q = match a {
                Arg::Text(s) => q.bind(s.clone()),
                Arg::Int(i) => q.bind(*i),
                Arg::OptText(o) => q.bind(o.clone()),
            };
        }
        q
    }};
}

macro_rules! read_rows {
    ($rows:expr, $cols:expr) => {{
        let mut out = Vec::with_capacity($rows.len());
        for r in &$rows {
            let mut cells = Vec::with_capacity($cols.len());
            for (i, c) in $cols.iter().enumerate() {
                cells.push(match c {
                    Col::Int => Cell::Int(sqlx::Row::try_get::<i64, _>(r, i)?),
                    Col::Text => Cell::Text(sqlx::Row::try_get::<String, _>(r, i)?),
                    Col::OptText => sqlx::Row::try_get::<Option<String>, _>(r, i)?
                        .map(Cell::Text)
                        .unwrap_or(Cell::Null),
                });
            }
            out.push(cells);
        }
        out
    }};
}

/// An open transaction on either backend.
pub(crate) enum Tx {
    Sqlite(sqlx::Transaction<'static, sqlx::Sqlite>),
    Mysql(sqlx::Transaction<'static, sqlx::MySql>),
}

impl Tx {
    pub(crate) async fn run(&mut self, sql: &str, args: &[Arg]) -> Result<Done, sqlx::Error> {
        Ok(match self {
            Tx::Sqlite(t) => {
                let r = bind_args!(sqlx::query(sql), args).execute(&mut **t).await?;
                Done {
                    rows: r.rows_affected(),
                    last_id: r.last_insert_rowid(),
                }
            }
            Tx::Mysql(t) => {
                let r = bind_args!(sqlx::query(sql), args).execute(&mut **t).await?;
                Done {
                    rows: r.rows_affected(),
                    last_id: i64::try_from(r.last_insert_id()).unwrap_or(i64::MAX),
                }
            }
        })
    }

    pub(crate) async fn fetch(
        &mut self,
        sql: &str,
        args: &[Arg],
        cols: &[Col],
    ) -> Result<Vec<Vec<Cell>>, sqlx::Error> {
        Ok(match self {
            Tx::Sqlite(t) => {
                let rows = bind_args!(sqlx::query(sql), args)
                    .fetch_all(&mut **t)
                    .await?;
                read_rows!(rows, cols)
            }
            Tx::Mysql(t) => {
                let rows = bind_args!(sqlx::query(sql), args)
                    .fetch_all(&mut **t)
                    .await?;
                read_rows!(rows, cols)
            }
        })
    }

    pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
        match self {
            Tx::Sqlite(t) => t.commit().await,
            Tx::Mysql(t) => t.commit().await,
        }
    }
}

/// A handle to the node's database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) pool: Pool,
    pub(crate) backend: Backend,
    /// Whether the `requests` unique key includes `node_id` and `is_ipv6` (D8): replace
    /// semantics are refused without it.
    pub(crate) usage_key_ok: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// Strips the password from a database URL for logs and errors.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}{}:***@{}", &url[..s + 3], user, &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

impl Store {
    /// Opens `sqlite://PATH` (creating the file) or `mysql://user:pass@host:port/db`.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        let shown = redact_url(url);
        if let Some(path) = url
            .strip_prefix("sqlite://")
            .or_else(|| url.strip_prefix("sqlite:"))
        {
            if path.is_empty() {
                return Err(StoreError::new(
                    StoreErrorKind::InvalidUrl,
                    Some(Backend::Sqlite),
                    "open",
                    "sqlite:// needs a file path, e.g. sqlite:///var/lib/ibp/node.db",
                ));
            }
            if let Some(dir) = std::path::Path::new(path).parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::new(
                        StoreErrorKind::Unavailable,
                        Some(Backend::Sqlite),
                        format!("create directory {}", dir.display()),
                        e,
                    )
                })?;
            }
            let opts = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))
                .map_err(|e| {
                    StoreError::new(StoreErrorKind::InvalidUrl, Some(Backend::Sqlite), &shown, e)
                })?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(Duration::from_secs(10))
                .foreign_keys(true);
            // Create every table on one connection before the pool exists: a pooled
            // connection that loaded the schema before an index was created can refuse
            // upserts against it ("ON CONFLICT clause does not match"). A node's SQLite file
            // is its own, so creating all its tables up front is harmless.
            let boot = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(opts.clone())
                .await
                .map_err(|e| {
                    StoreError::new(
                        StoreErrorKind::Unavailable,
                        Some(Backend::Sqlite),
                        &shown,
                        e,
                    )
                })?;
            let boot = Store {
                pool: Pool::Sqlite(boot),
                backend: Backend::Sqlite,
                usage_key_ok: Default::default(),
            };
            boot.migrate(&[Part::Usage, Part::Events, Part::Results, Part::DeadLetters])
                .await?;
            boot.close().await;
            let pool = SqlitePoolOptions::new()
                .max_connections(4)
                .connect_with(opts)
                .await
                .map_err(|e| {
                    StoreError::new(
                        StoreErrorKind::Unavailable,
                        Some(Backend::Sqlite),
                        &shown,
                        e,
                    )
                })?;
            return Ok(Store {
                pool: Pool::Sqlite(pool),
                backend: Backend::Sqlite,
                usage_key_ok: Default::default(),
            });
        }
        if url.starts_with("mysql://") || url.starts_with("mariadb://") {
            let url = url.replacen("mariadb://", "mysql://", 1);
            // Without a database every statement fails ("no database selected"), which the
            // migration lock would report as another node migrating: say what is wrong.
            let database = url
                .split_once("://")
                .and_then(|(_, rest)| rest.split_once('/'))
                .map(|(_, path)| path.split(['?', '#']).next().unwrap_or("").trim())
                .unwrap_or("");
            if database.is_empty() {
                return Err(StoreError::new(
                    StoreErrorKind::InvalidUrl,
                    Some(Backend::Mysql),
                    &shown,
                    "the URL names no database: mysql://user:password@host:port/DATABASE",
                ));
            }
            let opts = MySqlConnectOptions::from_str(&url)
                .map_err(|e| {
                    StoreError::new(StoreErrorKind::InvalidUrl, Some(Backend::Mysql), &shown, e)
                })?
                .charset("utf8mb4")
                .timezone(Some(String::from("+00:00")));
            let pool = MySqlPoolOptions::new()
                .max_connections(10)
                .acquire_timeout(Duration::from_secs(10))
                .max_lifetime(Duration::from_secs(3600))
                // A locked table (LOCK TABLES, a long ALTER) fails a statement after 10 s
                // instead of holding it for the server default of a year: the writer then
                // retries and /healthz says storage is failing.
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        sqlx::query(
                            "SET SESSION lock_wait_timeout = 10, innodb_lock_wait_timeout = 10",
                        )
                        .execute(conn)
                        .await
                        .map(|_| ())
                    })
                })
                .connect_with(opts)
                .await
                .map_err(|e| {
                    StoreError::new(StoreErrorKind::Unavailable, Some(Backend::Mysql), &shown, e)
                })?;
            return Ok(Store {
                pool: Pool::Mysql(pool),
                backend: Backend::Mysql,
                usage_key_ok: Default::default(),
            });
        }
        Err(StoreError::new(
            StoreErrorKind::InvalidUrl,
            None,
            &shown,
            "expected sqlite://PATH or mysql://user:pass@host:port/db",
        ))
    }

    /// The backend.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes the pool after pending work.
    pub async fn close(&self) {
        match &self.pool {
            Pool::Sqlite(p) => p.close().await,
            Pool::Mysql(p) => p.close().await,
        }
    }

    /// Checks the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.run("SELECT 1", &[])
            .await
            .map(|_| ())
            .map_err(|e| self.err(StoreErrorKind::Unavailable, "ping", e))
    }

    pub(crate) async fn run(&self, sql: &str, args: &[Arg]) -> Result<Done, sqlx::Error> {
        Ok(match &self.pool {
            Pool::Sqlite(p) => {
                let r = bind_args!(sqlx::query(sql), args).execute(p).await?;
                Done {
                    rows: r.rows_affected(),
                    last_id: r.last_insert_rowid(),
                }
            }
            Pool::Mysql(p) => {
                let r = bind_args!(sqlx::query(sql), args).execute(p).await?;
                Done {
                    rows: r.rows_affected(),
                    last_id: i64::try_from(r.last_insert_id()).unwrap_or(i64::MAX),
                }
            }
        })
    }

    pub(crate) async fn fetch(
        &self,
        sql: &str,
        args: &[Arg],
        cols: &[Col],
    ) -> Result<Vec<Vec<Cell>>, sqlx::Error> {
        Ok(match &self.pool {
            Pool::Sqlite(p) => {
                let rows = bind_args!(sqlx::query(sql), args).fetch_all(p).await?;
                read_rows!(rows, cols)
            }
            Pool::Mysql(p) => {
                let rows = bind_args!(sqlx::query(sql), args).fetch_all(p).await?;
                read_rows!(rows, cols)
            }
        })
    }

    pub(crate) async fn begin(&self) -> Result<Tx, sqlx::Error> {
        Ok(match &self.pool {
            Pool::Sqlite(p) => Tx::Sqlite(p.begin().await?),
            Pool::Mysql(p) => Tx::Mysql(p.begin().await?),
        })
    }

    pub(crate) fn err(
        &self,
        kind: StoreErrorKind,
        context: impl Into<String>,
        e: impl std::fmt::Display,
    ) -> StoreError {
        StoreError::new(kind, Some(self.backend), context, e)
    }

    pub(crate) fn q(&self, context: &str) -> impl Fn(sqlx::Error) -> StoreError + '_ {
        let context = context.to_string();
        move |e| self.err(classify(&e), context.clone(), e)
    }

    /// Picks the SQL text for the backend.
    pub(crate) fn sql<'a>(&self, mysql: &'a str, sqlite: &'a str) -> &'a str {
        match self.backend {
            Backend::Mysql => mysql,
            Backend::Sqlite => sqlite,
        }
    }
}

/// Sorts a driver error into what a writer should do with it: `Rejected` when this data
/// can never be stored, `Unavailable` when the database cannot be reached, `Query` for the
/// rest (retried; a writer sets the data aside only once the database answers a ping).
pub(crate) fn classify(e: &sqlx::Error) -> StoreErrorKind {
    use sqlx::error::ErrorKind as K;
    match e {
        sqlx::Error::Database(db) => {
            if matches!(
                db.kind(),
                K::UniqueViolation
                    | K::ForeignKeyViolation
                    | K::NotNullViolation
                    | K::CheckViolation
            ) {
                return StoreErrorKind::Rejected;
            }
            if let Some(my) = db.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() {
                // Data too long, out of range, incorrect value or datetime, truncated,
                // CHECK (MariaDB 4025, MySQL 3819), BIGINT out of range, NULL into NOT
                // NULL, duplicate key, foreign keys.
                const REJECTED: [u16; 12] = [
                    1406, 1264, 1366, 1292, 1265, 4025, 3819, 1690, 1048, 1062, 1451, 1452,
                ];
                if REJECTED.contains(&my.number()) {
                    return StoreErrorKind::Rejected;
                }
            }
            let code = db.code().map(|c| c.to_string()).unwrap_or_default();
            // SQLSTATE class 22 (data exception) and 23 (integrity); SQLite's TOOBIG (18),
            // CONSTRAINT (19, and its extended codes) and MISMATCH (20).
            if code.starts_with("22") && code.len() == 5
                || code.starts_with("23") && code.len() == 5
            {
                return StoreErrorKind::Rejected;
            }
            if let Ok(n) = code.parse::<u32>()
                && code.len() < 5
                && matches!(n & 0xff, 18..=20)
            {
                return StoreErrorKind::Rejected;
            }
            let msg = db.message().to_ascii_lowercase();
            if msg.contains("data too long") || msg.contains("out of range") {
                return StoreErrorKind::Rejected;
            }
            StoreErrorKind::Query
        }
        sqlx::Error::Encode(_) | sqlx::Error::TypeNotFound { .. } => StoreErrorKind::Rejected,
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => StoreErrorKind::Unavailable,
        _ => StoreErrorKind::Query,
    }
}

/// `YYYY-MM-DD`.
pub(crate) fn fmt_date(d: NaiveDate) -> String {
    d.format("%Y-%m-%d").to_string()
}

/// `YYYY-MM-DD HH:MM:SS.ffffff` in UTC (both backends compare it as a datetime / text).
pub(crate) fn fmt_datetime(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S%.6f").to_string()
}

/// Parses what [`fmt_datetime`] (or MySQL) wrote.
pub(crate) fn parse_datetime(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
        .or_else(|_| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f"))
        .ok()
        .map(|n| n.and_utc())
        .or_else(|| {
            DateTime::parse_from_rfc3339(s)
                .ok()
                .map(|d| d.with_timezone(&Utc))
        })
}

/// Truncates to at most `max` characters (column widths; D11).
pub(crate) fn fit(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// Test-only crash points. When the environment variable `IBP_FAILPOINT` names `point`, the
/// process aborts right there (as a `kill -9` would stop it), so tests can show that what
/// is written in one transaction survives a crash in the middle of it. Unset in
/// production; costs one environment lookup, cached.
pub fn failpoint(point: &str) {
    static ARMED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let armed = ARMED.get_or_init(|| std::env::var("IBP_FAILPOINT").ok());
    if armed.as_deref() == Some(point) {
        eprintln!("ibp failpoint {point}: aborting");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("mysql://collator:s3cret@db:3306/c"),
            "mysql://collator:***@db:3306/c"
        );
        assert_eq!(redact_url("sqlite:///tmp/x.db"), "sqlite:///tmp/x.db");
    }

    #[test]
    fn datetimes_round_trip() {
        let t = DateTime::parse_from_rfc3339("2026-11-27T10:50:59.123456Z")
            .expect("time")
            .with_timezone(&Utc);
        assert_eq!(parse_datetime(&fmt_datetime(t)), Some(t));
        assert_eq!(fit("abcdef", 3), "abc");
    }
}
