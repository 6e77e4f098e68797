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
    Arg, Backend, Cell, Col, Store, StoreError, StoreErrorKind, fit, fmt_datetime, parse_datetime,
};
use chrono::{DateTime, Utc};
use ibp_wire::{CheckType, Data, DowntimeEvent, WireTime};

/// Which check an event is about.
#[derive(Debug, Clone, PartialEq, Eq)]
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
#[derive(Debug, Clone)]
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

    /// Records a passed decision (see the module docs). One transaction.
    pub async fn record_decision(&self, w: &EventWrite) -> Result<OutageChange, StoreError> {
        let ignore = self.sql("INSERT IGNORE INTO", "INSERT OR IGNORE INTO");
        let claim = format!(
            "{ignore} ibp_processed_decisions (proposal_id, passed, processed_at) VALUES (?, 1, ?)"
        );
        let k = &w.key;
        let ep = fit(&k.endpoint_column(), 256);
        let ep_clause = if k.check_type == CheckType::Endpoint {
            "COALESCE(endpoint, '') = ?"
        } else {
            // Go monitors leave the endpoint NULL for site and domain rows.
            "(COALESCE(endpoint, '') = ? OR endpoint IS NULL)"
        };
        let find = format!(
            "SELECT CAST(id AS {int}), CAST(vote_data AS {text}) FROM member_events WHERE check_type IN (?, ?) AND check_name = ? AND member_name = ? \
             AND COALESCE(domain_name, '') = ? AND {ep_clause} AND COALESCE(is_ipv6, 0) = ? AND end_time IS NULL \
             AND COALESCE(status, 0) = 0 ORDER BY start_time DESC, id DESC",
            int = self.sql("SIGNED", "INTEGER"),
            text = self.sql("CHAR", "TEXT"),
        );
        let at = fmt_datetime(w.at);
        let votes_json = match &w.votes {
            Some(v) => serde_json::to_string(v).unwrap_or_else(|_| "null".into()),
            None => "null".to_string(),
        };
        let data_json = w.data.to_value().to_string();
        let mut tx = self.begin().await.map_err(self.q("begin"))?;
        let claimed = tx
            .run(
                &claim,
                &[Arg::Text(fit(&w.proposal_id, 64)), Arg::Text(at.clone())],
            )
            .await
            .map_err(self.q("claim decision"))?;
        if claimed.rows == 0 {
            drop(tx);
            return Ok(OutageChange::Duplicate);
        }
        let find_args = [
            Arg::from(k.check_type.as_str()),
            Arg::from(k.check_type.numeric()),
            Arg::Text(fit(&k.check_name, 64)),
            Arg::Text(fit(&k.member_name, 128)),
            Arg::Text(fit(&k.domain_name, 128)),
            Arg::Text(ep.clone()),
            Arg::from(k.is_ipv6),
        ];
        // Older data can hold several open rows for one check (a numeric and a string check
        // type, repeated Go monitor rows): the newest takes new votes, a close closes all.
        let all_open: Vec<(i64, Option<String>)> = tx
            .fetch(&find, &find_args, &[Col::Int, Col::OptText])
            .await
            .map_err(self.q("find open outage"))?
            .into_iter()
            .map(|r| (r[0].int(), r[1].opt_text()))
            .collect();
        let open = all_open.first().cloned();
        let change = match (w.status, open) {
            (false, Some((id, old_votes))) => {
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
                    .map_err(self.q("merge votes"))?;
                }
                OutageChange::AlreadyOpen(id)
            }
            (false, None) => {
                let args = [
                    Arg::from(k.check_type.as_str()),
                    Arg::Text(fit(&k.check_name, 64)),
                    Arg::Text(ep.clone()),
                    Arg::Text(fit(&k.member_name, 128)),
                    Arg::Text(fit(&k.domain_name, 128)),
                    Arg::from(k.is_ipv6),
                    Arg::Text(at.clone()),
                    // TEXT holds 64 KB; error texts come from the network.
                    Arg::OptText((!w.error.is_empty()).then(|| fit(&w.error, 8192))),
                    Arg::Text(votes_json),
                    Arg::Text(data_json),
                ];
                let r = tx
                    .run(
                        "INSERT INTO member_events (check_type, check_name, endpoint, member_name, domain_name, status, is_ipv6, start_time, end_time, error, vote_data, additional_data) \
                         VALUES (?, ?, ?, ?, ?, 0, ?, ?, NULL, ?, ?, ?)",
                        &args,
                    )
                    .await
                    .map_err(self.q("open outage"))?;
                OutageChange::Opened(r.last_id)
            }
            (true, Some((id, _))) => {
                for (other, _) in &all_open {
                    tx.run(
                        "UPDATE member_events SET end_time = ? WHERE id = ?",
                        &[Arg::Text(at.clone()), Arg::Int(*other)],
                    )
                    .await
                    .map_err(self.q("close outage"))?;
                }
                OutageChange::Closed(id)
            }
            (true, None) => OutageChange::NothingOpen,
        };
        tx.commit().await.map_err(self.q("commit"))?;
        Ok(change)
    }

    /// Outages overlapping `[from, to]` (start ≤ to and not ended before from), for one
    /// member or all (D12).
    pub async fn events_overlapping(
        &self,
        member: Option<&str>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let mut sql = format!(
            "SELECT {} FROM member_events WHERE start_time IS NOT NULL AND start_time <= ? AND (end_time IS NULL OR end_time >= ?) \
             AND (COALESCE(status, 0) = 0 OR end_time IS NOT NULL)",
            self.event_select()
        );
        if member.is_some() {
            sql.push_str(" AND member_name = ?");
        }
        sql.push_str(" ORDER BY start_time, id");
        let mut args = vec![Arg::Text(fmt_datetime(to)), Arg::Text(fmt_datetime(from))];
        if let Some(m) = member {
            args.push(m.into());
        }
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
