//! Outage events (`member_events`), written from decisions, read by downtime requests and
//! by the Go collator's HTTP API.
//!
//! Semantics (fixing storage.md D1–D6, D12):
//! * an offline decision opens a new row, unless an outage of that check is already open
//!   (then its votes are merged); a repeat outage always gets its own row and start time;
//! * an online decision closes the open row: `end_time` is set and `status` stays 0, so Go
//!   readers (which filter `status = 0`) keep showing resolved outages;
//! * one decision is applied once, even when every monitor finalizes it and even across
//!   restarts or JetStream redeliveries (`ibp_processed_decisions`);
//! * `check_type` is written as a string and matched in both forms (`site` / `1`, …);
//! * reads select by overlap with the window, not by start time only.

use std::collections::BTreeMap;

use crate::{
    Arg, Backend, Cell, Col, Store, StoreError, StoreErrorKind, Tx, fit, fmt_datetime,
    parse_datetime,
};
use chrono::{DateTime, Utc};
use ibp_wire::{CheckType, Data, DowntimeEvent, WireTime};

/// Which check an event is about.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventKey {
    /// Check type.
    pub check_type: CheckType,
    /// Check name.
    pub check_name: String,
    /// Member.
    pub member_name: String,
    /// Domain (empty for site checks).
    pub domain_name: String,
    /// Endpoint URL (empty unless an endpoint check).
    pub endpoint: String,
    /// IP family.
    pub is_ipv6: bool,
}

impl EventKey {
    /// A stable hash of the check (SHA-256 hex), the key of this project's outage markers.
    pub fn hash(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for part in [
            self.check_type.as_str(),
            &self.check_name,
            &self.member_name,
            &self.domain_name,
            &self.endpoint_column(),
        ] {
            h.update(part.as_bytes());
            h.update([0u8]);
        }
        h.update([u8::from(self.is_ipv6)]);
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The `endpoint` column as the Go collator writes it: the URL for endpoint checks, the
    /// domain for domain checks, empty for site checks.
    fn endpoint_column(&self) -> String {
        match self.check_type {
            CheckType::Endpoint => self.endpoint.clone(),
            CheckType::Domain => self.domain_name.clone(),
            CheckType::Site => String::new(),
        }
    }
}

/// A decision to record.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventWrite {
    /// The check.
    pub key: EventKey,
    /// The decided status: false opens an outage, true closes it.
    pub status: bool,
    /// When it was decided (the finalize's `DecidedAt`).
    pub at: DateTime<Utc>,
    /// The proposal's error text.
    pub error: String,
    /// Who voted how (`None`: the votes are unknown; stored as JSON `null`).
    pub votes: Option<BTreeMap<String, bool>>,
    /// The proposal's data.
    pub data: Data,
    /// The proposal ID (decisions are applied once).
    pub proposal_id: String,
}

/// What recording a decision did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutageChange {
    /// A new outage row was opened.
    Opened(i64),
    /// An outage of that check was already open; its votes were merged.
    AlreadyOpen(i64),
    /// The open outage was closed.
    Closed(i64),
    /// An online decision with no open outage: nothing to close.
    NothingOpen,
    /// This decision was recorded before (a duplicate finalize or a redelivery).
    Duplicate,
    /// An offline decision recorded after the online one that ended its outage: the
    /// outage was written whole, already closed.
    Backfilled(i64),
    /// An offline decision older than the check's latest recorded close: nothing to open.
    Stale,
}

/// Why recording inside a transaction stopped.
pub(crate) enum Recording {
    /// Another writer opened the outage meanwhile: roll back and record again.
    Conflict,
    /// A storage error.
    Failed(StoreError),
}

impl From<StoreError> for Recording {
    fn from(e: StoreError) -> Recording {
        Recording::Failed(e)
    }
}

/// Refuses a value too long for its key column: truncating it could merge two checks.
pub(crate) fn check_width(what: &str, value: &str, max: usize) -> Result<(), String> {
    let n = value.chars().count();
    if n > max {
        Err(format!(
            "{what} of {n} characters does not fit its {max}-character column: {:?}",
            value.chars().take(80).collect::<String>()
        ))
    } else {
        Ok(())
    }
}

/// An outage row as stored.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredEvent {
    /// Row ID.
    pub id: i64,
    /// Check type, normalised to its string form.
    pub check_type: String,
    /// Check name.
    pub check_name: String,
    /// `endpoint` column as stored.
    pub endpoint: String,
    /// Member.
    pub member_name: String,
    /// Domain.
    pub domain_name: String,
    /// `status` column (0 for outages written by this project).
    pub status: bool,
    /// IP family.
    pub is_ipv6: bool,
    /// Start of the outage.
    pub start_time: DateTime<Utc>,
    /// End, when closed.
    pub end_time: Option<DateTime<Utc>>,
    /// Error text.
    pub error: String,
    /// Votes (`None` for SQL NULL or JSON null).
    pub vote_data: Option<serde_json::Value>,
    /// Check data.
    pub additional_data: Option<serde_json::Value>,
}

impl StoredEvent {
    /// The wire shape a monitor sends in a downtime response.
    pub fn to_wire(&self) -> DowntimeEvent {
        let endpoint = if self.check_type == "endpoint" {
            self.endpoint.clone()
        } else {
            String::new()
        };
        DowntimeEvent {
            member_name: self.member_name.clone(),
            check_type: self.check_type.clone(),
            check_name: self.check_name.clone(),
            domain_name: self.domain_name.clone(),
            endpoint,
            status: false,
            start_time: WireTime::from_utc(self.start_time),
            end_time: self.end_time.map(WireTime::from_utc).unwrap_or_default(),
            error_text: self.error.clone(),
            data: self
                .additional_data
                .as_ref()
                .map(Data::from_value)
                .unwrap_or_default(),
            is_ipv6: self.is_ipv6,
        }
    }
}

// Text columns are cast because the Go schema makes them binary-collated, which the MySQL
// driver reports as VARBINARY.
const OPEN_COLUMNS: &str = "CAST(id AS SIGNED), CAST(check_type AS CHAR), CAST(COALESCE(check_name, '') AS CHAR), \
    CAST(COALESCE(endpoint, '') AS CHAR), CAST(COALESCE(member_name, '') AS CHAR), CAST(COALESCE(domain_name, '') AS CHAR), \
    CAST(COALESCE(status, 0) AS SIGNED), CAST(COALESCE(is_ipv6, 0) AS SIGNED), \
    {start}, {end}, CAST(COALESCE(error, '') AS CHAR), CAST(vote_data AS CHAR), CAST(additional_data AS CHAR)";

impl Store {
    fn event_select(&self) -> String {
        let (start, end) = match self.backend {
            Backend::Mysql => (
                "DATE_FORMAT(start_time, '%Y-%m-%d %H:%i:%s.%f')",
                "DATE_FORMAT(end_time, '%Y-%m-%d %H:%i:%s.%f')",
            ),
            Backend::Sqlite => ("start_time", "end_time"),
        };
        let cols = OPEN_COLUMNS.replace("{start}", start).replace("{end}", end);
        match self.backend {
            Backend::Mysql => cols,
            Backend::Sqlite => cols
                .replace("AS CHAR)", "AS TEXT)")
                .replace("AS SIGNED)", "AS INTEGER)"),
        }
    }

    /// Records a passed decision (see the module docs) in its own transaction. Two writers
    /// on one database (two collators) never open the same outage twice: the second one's
    /// marker insert conflicts, and it records again against what the first committed.
    pub async fn record_decision(&self, w: &EventWrite) -> Result<OutageChange, StoreError> {
        let mut attempt = 0;
        loop {
            let mut tx = self.begin().await.map_err(self.q("begin"))?;
            match self.record_in(&mut tx, w).await {
                Ok(change) => {
                    tx.commit().await.map_err(self.q("commit"))?;
                    return Ok(change);
                }
                Err(Recording::Conflict) if attempt < 5 => {
                    drop(tx);
                    attempt += 1;
                }
                Err(Recording::Conflict) => {
                    return Err(self.err(
                        StoreErrorKind::Query,
                        "open outage",
                        "another writer keeps opening this check's outage; retrying later",
                    ));
                }
                Err(Recording::Failed(e)) => return Err(e),
            }
        }
    }

    /// Records `w` inside `tx` (the monitor writes its official result in the same one).
    pub(crate) async fn record_in(
        &self,
        tx: &mut Tx,
        w: &EventWrite,
    ) -> Result<OutageChange, Recording> {
        let k = &w.key;
        let fail = |what: &str, e: sqlx::Error| Recording::Failed(self.q(what)(e));
        check_width("proposal ID", &w.proposal_id, 64).map_err(|m| self.rejected(m))?;
        check_width("check name", &k.check_name, 64).map_err(|m| self.rejected(m))?;
        check_width("member name", &k.member_name, 128).map_err(|m| self.rejected(m))?;
        check_width("domain name", &k.domain_name, 128).map_err(|m| self.rejected(m))?;
        let ep = k.endpoint_column();
        check_width("endpoint", &ep, 256).map_err(|m| self.rejected(m))?;
        let hash = k.hash();
        let at = fmt_datetime(w.at);
        let ignore = self.sql("INSERT IGNORE INTO", "INSERT OR IGNORE INTO");
        let claim = format!(
            "{ignore} ibp_processed_decisions (proposal_id, passed, processed_at, check_hash, status, decided_at) VALUES (?, 1, ?, ?, ?, ?)"
        );
        let claimed = tx
            .run(
                &claim,
                &[
                    Arg::Text(w.proposal_id.clone()),
                    Arg::Text(fmt_datetime(Utc::now())),
                    Arg::Text(hash.clone()),
                    Arg::from(w.status),
                    Arg::Text(at.clone()),
                ],
            )
            .await
            .map_err(|e| fail("claim decision", e))?;
        if claimed.rows == 0 {
            return Ok(OutageChange::Duplicate);
        }
        let ep_clause = if k.check_type == CheckType::Endpoint {
            "COALESCE(endpoint, '') = ?"
        } else {
            // Go monitors leave the endpoint NULL for site and domain rows.
            "(COALESCE(endpoint, '') = ? OR endpoint IS NULL)"
        };
        let int = self.sql("SIGNED", "INTEGER");
        let text = self.sql("CHAR", "TEXT");
        let start = self.sql(
            "DATE_FORMAT(start_time, '%Y-%m-%d %H:%i:%s.%f')",
            "start_time",
        );
        let same_check = format!(
            "check_type IN (?, ?) AND check_name = ? AND member_name = ? AND COALESCE(domain_name, '') = ? \
             AND {ep_clause} AND COALESCE(is_ipv6, 0) = ?"
        );
        let check_args = vec![
            Arg::from(k.check_type.as_str()),
            Arg::from(k.check_type.numeric()),
            Arg::Text(k.check_name.clone()),
            Arg::Text(k.member_name.clone()),
            Arg::Text(k.domain_name.clone()),
            Arg::Text(ep.clone()),
            Arg::from(k.is_ipv6),
        ];
        // Older data can hold several open rows for one check (a numeric and a string check
        // type, repeated Go monitor rows): the newest takes new votes, a close closes all
        // that began before it.
        let find = format!(
            "SELECT CAST(id AS {int}), CAST(vote_data AS {text}), {start} FROM member_events WHERE {same_check} \
             AND end_time IS NULL AND COALESCE(status, 0) = 0 ORDER BY start_time DESC, id DESC"
        );
        let open: Vec<(i64, Option<String>, Option<DateTime<Utc>>)> = tx
            .fetch(&find, &check_args, &[Col::Int, Col::OptText, Col::OptText])
            .await
            .map_err(|e| fail("find open outage", e))?
            .into_iter()
            .map(|r| {
                (
                    r[0].int(),
                    r[1].opt_text(),
                    r[2].opt_text().as_deref().and_then(parse_datetime),
                )
            })
            .collect();
        let mark_used = |event_id: i64, proposal: String| {
            (
                "UPDATE ibp_processed_decisions SET event_id = ? WHERE proposal_id = ? AND passed = 1",
                vec![Arg::Int(event_id), Arg::Text(proposal)],
            )
        };
        if w.status {
            let closable: Vec<i64> = open
                .iter()
                .filter(|(_, _, s)| s.is_none_or(|s| s <= w.at))
                .map(|(id, _, _)| *id)
                .collect();
            let Some(first) = closable.first().copied() else {
                // Nothing open, or only outages that began after this decision: it is
                // kept (event_id NULL) for an older offline decision still to come.
                return Ok(OutageChange::NothingOpen);
            };
            for id in &closable {
                tx.run(
                    "UPDATE member_events SET end_time = ? WHERE id = ?",
                    &[Arg::Text(at.clone()), Arg::Int(*id)],
                )
                .await
                .map_err(|e| fail("close outage", e))?;
            }
            tx.run(
                "DELETE FROM ibp_open_outages WHERE check_hash = ?",
                &[Arg::Text(hash.clone())],
            )
            .await
            .map_err(|e| fail("clear outage marker", e))?;
            let (sql, args) = mark_used(first, w.proposal_id.clone());
            tx.run(sql, &args)
                .await
                .map_err(|e| fail("mark decision", e))?;
            return Ok(OutageChange::Closed(first));
        }
        // An online decision that came after this offline one but was recorded before it
        // (redelivery, reordering) and closed nothing: the outage ran from here to there.
        let orphan: Option<(String, DateTime<Utc>)> = tx
            .fetch(
                &format!(
                    "SELECT proposal_id, CAST(decided_at AS {text}) FROM ibp_processed_decisions WHERE check_hash = ? AND status = 1 \
                     AND event_id IS NULL AND decided_at >= ? ORDER BY decided_at LIMIT 1"
                ),
                &[Arg::Text(hash.clone()), Arg::Text(at.clone())],
                &[Col::Text, Col::Text],
            )
            .await
            .map_err(|e| fail("find later close", e))?
            .first()
            .and_then(|r| Some((r[0].text(), parse_datetime(&r[1].text())?)));
        let newest_open = open.first().cloned();
        if let Some((close_id, close_at)) = orphan
            && newest_open
                .as_ref()
                .is_none_or(|(_, _, s)| s.is_some_and(|s| s >= close_at))
        {
            let id = self
                .insert_event(tx, w, &ep, Some(fmt_datetime(close_at)))
                .await?;
            let (sql, args) = mark_used(id, close_id);
            tx.run(sql, &args)
                .await
                .map_err(|e| fail("mark decision", e))?;
            return Ok(OutageChange::Backfilled(id));
        }
        if let Some((id, old_votes, _)) = newest_open {
            if let Some(new) = &w.votes {
                let mut merged: BTreeMap<String, bool> = old_votes
                    .as_deref()
                    .and_then(|s| serde_json::from_str(s).ok())
                    .unwrap_or_default();
                merged.extend(new.iter().map(|(k, v)| (k.clone(), *v)));
                let json = serde_json::to_string(&merged).unwrap_or_else(|_| "null".into());
                tx.run(
                    "UPDATE member_events SET vote_data = ? WHERE id = ?",
                    &[Arg::Text(json), Arg::Int(id)],
                )
                .await
                .map_err(|e| fail("merge votes", e))?;
            }
            return Ok(OutageChange::AlreadyOpen(id));
        }
        // Nothing open. An offline decision older than the check's latest recorded close
        // belongs to an outage that is already over: it opens nothing.
        let latest_close = tx
            .fetch(
                &format!(
                    "SELECT CAST(MAX(decided_at) AS {text}) FROM ibp_processed_decisions WHERE check_hash = ? AND status = 1"
                ),
                &[Arg::Text(hash.clone())],
                &[Col::OptText],
            )
            .await
            .map_err(|e| fail("find latest close", e))?
            .first()
            .and_then(|r| r[0].opt_text())
            .and_then(|t| parse_datetime(&t));
        if latest_close.is_some_and(|c| c > w.at) {
            return Ok(OutageChange::Stale);
        }
        let marked = tx
            .run(
                &format!("{ignore} ibp_open_outages (check_hash, event_id) VALUES (?, 0)"),
                &[Arg::Text(hash.clone())],
            )
            .await
            .map_err(|e| fail("mark outage", e))?;
        if marked.rows == 0 {
            // Another writer opened it (and committed) after this transaction looked, or a
            // stale marker remains from rows someone else closed: look again from scratch.
            let stale = tx
                .fetch(
                    &format!(
                        "SELECT CAST(COUNT(*) AS {int}) FROM ibp_open_outages o JOIN member_events e ON e.id = o.event_id \
                         WHERE o.check_hash = ? AND e.end_time IS NULL{lock}",
                        // A locking read sees what the other writer committed, not this
                        // transaction's older snapshot.
                        lock = self.sql(" FOR UPDATE", "")
                    ),
                    &[Arg::Text(hash.clone())],
                    &[Col::Int],
                )
                .await
                .map_err(|e| fail("check outage marker", e))?
                .first()
                .is_some_and(|r| r[0].int() == 0);
            if !stale {
                return Err(Recording::Conflict);
            }
        }
        let id = self.insert_event(tx, w, &ep, None).await?;
        tx.run(
            &format!(
                "{} ibp_open_outages (check_hash, event_id) VALUES (?, ?){}",
                self.sql("INSERT INTO", "INSERT OR REPLACE INTO"),
                self.sql(" ON DUPLICATE KEY UPDATE event_id = VALUES(event_id)", "")
            ),
            &[Arg::Text(hash), Arg::Int(id)],
        )
        .await
        .map_err(|e| fail("mark outage", e))?;
        Ok(OutageChange::Opened(id))
    }

    /// Inserts an outage row (closed at `end` when given). A row of the same check that
    /// started in the same second (a schema without sub-second times) is re-opened instead.
    async fn insert_event(
        &self,
        tx: &mut Tx,
        w: &EventWrite,
        ep: &str,
        end: Option<String>,
    ) -> Result<i64, Recording> {
        let k = &w.key;
        let at = fmt_datetime(w.at);
        let votes_json = match &w.votes {
            Some(v) => serde_json::to_string(v).unwrap_or_else(|_| "null".into()),
            None => "null".to_string(),
        };
        let error = (!w.error.is_empty()).then(|| fit(&w.error, 8192));
        let data_json = w.data.to_value().to_string();
        let args = [
            Arg::from(k.check_type.as_str()),
            Arg::Text(k.check_name.clone()),
            Arg::Text(ep.to_string()),
            Arg::Text(k.member_name.clone()),
            Arg::Text(k.domain_name.clone()),
            Arg::from(k.is_ipv6),
            Arg::Text(at.clone()),
            Arg::OptText(end.clone()),
            // TEXT holds 64 KB; error texts come from the network.
            Arg::OptText(error.clone()),
            Arg::Text(votes_json.clone()),
            Arg::Text(data_json.clone()),
        ];
        // MySQL re-checks the unique key inside the INSERT; a savepoint keeps the
        // transaction usable when it conflicts.
        tx.run("SAVEPOINT ibp_insert_event", &[])
            .await
            .map_err(|e| Recording::Failed(self.q("savepoint")(e)))?;
        let r = tx
            .run(
                "INSERT INTO member_events (check_type, check_name, endpoint, member_name, domain_name, status, is_ipv6, start_time, end_time, error, vote_data, additional_data) \
                 VALUES (?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?)",
                &args,
            )
            .await;
        match r {
            Ok(done) => Ok(done.last_id),
            Err(e) if matches!(&e, sqlx::Error::Database(db) if db.kind() == sqlx::error::ErrorKind::UniqueViolation) =>
            {
                tx.run("ROLLBACK TO SAVEPOINT ibp_insert_event", &[])
                    .await
                    .map_err(|e| Recording::Failed(self.q("rollback to savepoint")(e)))?;
                let int = self.sql("SIGNED", "INTEGER");
                let found = tx
                    .fetch(
                        &format!(
                            "SELECT CAST(id AS {int}) FROM member_events WHERE check_type = ? AND check_name = ? AND member_name = ? \
                             AND COALESCE(domain_name, '') = ? AND COALESCE(is_ipv6, 0) = ? AND start_time = ? ORDER BY id DESC LIMIT 1"
                        ),
                        &[
                            Arg::from(k.check_type.as_str()),
                            Arg::Text(k.check_name.clone()),
                            Arg::Text(k.member_name.clone()),
                            Arg::Text(k.domain_name.clone()),
                            Arg::from(k.is_ipv6),
                            Arg::Text(at),
                        ],
                        &[Col::Int],
                    )
                    .await
                    .map_err(|e| Recording::Failed(self.q("find same-second outage")(e)))?;
                let Some(id) = found.first().map(|r| r[0].int()) else {
                    return Err(Recording::Failed(self.q("open outage")(e)));
                };
                tx.run(
                    "UPDATE member_events SET end_time = ?, status = 0, error = ?, vote_data = ?, additional_data = ? WHERE id = ?",
                    &[
                        Arg::OptText(end),
                        Arg::OptText(error),
                        Arg::Text(votes_json),
                        Arg::Text(data_json),
                        Arg::Int(id),
                    ],
                )
                .await
                .map_err(|e| Recording::Failed(self.q("reopen outage")(e)))?;
                Ok(id)
            }
            Err(e) => Err(Recording::Failed(self.q("open outage")(e))),
        }
    }

    fn rejected(&self, message: String) -> Recording {
        Recording::Failed(self.err(StoreErrorKind::Rejected, "record decision", message))
    }

    /// Outages overlapping `[from, to]` (start ≤ to and not ended before from), for one
    /// member or all (D12).
    pub async fn events_overlapping(
        &self,
        member: Option<&str>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.events_overlapping_page(member, from, to, None, u32::MAX)
            .await
    }

    /// One page of [`Store::events_overlapping`], in (start time, ID) order: at most `limit`
    /// outages after the cursor `after` (the last one of the previous page). Large answers
    /// are built page by page instead of holding every row at once.
    pub async fn events_overlapping_page(
        &self,
        member: Option<&str>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        after: Option<(DateTime<Utc>, i64)>,
        limit: u32,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let mut sql = format!(
            "SELECT {} FROM member_events WHERE start_time IS NOT NULL AND start_time <= ? AND (end_time IS NULL OR end_time >= ?) \
             AND (COALESCE(status, 0) = 0 OR end_time IS NOT NULL)",
            self.event_select()
        );
        let mut args = vec![Arg::Text(fmt_datetime(to)), Arg::Text(fmt_datetime(from))];
        if let Some(m) = member {
            sql.push_str(" AND member_name = ?");
            args.push(m.into());
        }
        if let Some((t, id)) = after {
            sql.push_str(" AND (start_time > ? OR (start_time = ? AND id > ?))");
            args.push(Arg::Text(fmt_datetime(t)));
            args.push(Arg::Text(fmt_datetime(t)));
            args.push(Arg::Int(id));
        }
        sql.push_str(" ORDER BY start_time, id LIMIT ?");
        args.push(Arg::Int(i64::from(limit)));
        self.read_events(&sql, &args).await
    }

    /// Every outage row overlapping `[from, to)` whatever its `status`, for the SLA report:
    /// closure is decided by `end_time` alone, so rows the Go collator closed with
    /// `status = 1` count as closed outages.
    pub async fn events_for_period(
        &self,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let sql = format!(
            "SELECT {} FROM member_events WHERE start_time IS NOT NULL AND start_time < ? AND (end_time IS NULL OR end_time > ?) ORDER BY start_time, id",
            self.event_select()
        );
        let args = vec![Arg::Text(fmt_datetime(to)), Arg::Text(fmt_datetime(from))];
        self.read_events(&sql, &args).await
    }

    /// Outages still open.
    pub async fn open_events(&self) -> Result<Vec<StoredEvent>, StoreError> {
        let sql = format!(
            "SELECT {} FROM member_events WHERE end_time IS NULL AND COALESCE(status, 0) = 0 AND start_time IS NOT NULL ORDER BY start_time, id",
            self.event_select()
        );
        self.read_events(&sql, &[]).await
    }

    /// Every outage row (operators' view; tests), oldest first.
    pub async fn all_events(&self) -> Result<Vec<StoredEvent>, StoreError> {
        let sql = format!(
            "SELECT {} FROM member_events WHERE start_time IS NOT NULL ORDER BY start_time, id",
            self.event_select()
        );
        self.read_events(&sql, &[]).await
    }
}

const EVENT_COLS: [Col; 13] = [
    Col::Int,
    Col::OptText,
    Col::Text,
    Col::Text,
    Col::Text,
    Col::Text,
    Col::Int,
    Col::Int,
    Col::OptText,
    Col::OptText,
    Col::Text,
    Col::OptText,
    Col::OptText,
];

impl Store {
    async fn read_events(&self, sql: &str, args: &[Arg]) -> Result<Vec<StoredEvent>, StoreError> {
        let rows = self
            .fetch(sql, args, &EVENT_COLS)
            .await
            .map_err(self.q("read member_events"))?;
        rows.iter()
            .map(|r| read_event(r))
            .collect::<Result<Vec<_>, String>>()
            .map_err(|e| self.err(StoreErrorKind::Corrupt, "read member_events", e))
    }
}

fn read_event(r: &[Cell]) -> Result<StoredEvent, String> {
    let raw_type = r[1].text();
    let check_type = CheckType::parse(&raw_type)
        .map(|c| c.as_str().to_string())
        .unwrap_or(raw_type);
    let start = r[8].text();
    let json = |c: &Cell| -> Option<serde_json::Value> {
        c.opt_text()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .filter(|v| !v.is_null())
    };
    Ok(StoredEvent {
        id: r[0].int(),
        check_type,
        check_name: r[2].text(),
        endpoint: r[3].text(),
        member_name: r[4].text(),
        domain_name: r[5].text(),
        status: r[6].int() == 1,
        is_ipv6: r[7].int() == 1,
        start_time: parse_datetime(&start).ok_or_else(|| format!("bad start_time {start:?}"))?,
        end_time: r[9].opt_text().as_deref().and_then(parse_datetime),
        error: r[10].text(),
        vote_data: json(&r[11]),
        additional_data: json(&r[12]),
    })
}
