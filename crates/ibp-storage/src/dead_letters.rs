//! `ibp_dead_letters`: writes the database refused for good (a value too long for its key
//! column, a constraint, a number out of range). They are kept here, whole, instead of
//! blocking every later write or being dropped; an operator can read them
//! (`GET /v1/dead-letters`) and replay them by hand.

use chrono::{DateTime, Utc};

use crate::{Arg, Col, Store, StoreError, fit, fmt_datetime, parse_datetime};

/// One set-aside write.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeadLetter {
    /// Row ID.
    pub id: i64,
    /// What it was (`official`, `decision`, `usage_increment`, `usage_replace`, …).
    pub kind: String,
    /// The write, as JSON.
    pub payload: serde_json::Value,
    /// Why the database refused it.
    pub error: String,
    /// When it was set aside.
    pub created_at: DateTime<Utc>,
}

impl Store {
    /// Sets a refused write aside.
    pub async fn dead_letter(
        &self,
        kind: &str,
        payload: &serde_json::Value,
        error: &str,
    ) -> Result<(), StoreError> {
        self.run(
            "INSERT INTO ibp_dead_letters (kind, payload, error, created_at) VALUES (?, ?, ?, ?)",
            &[
                Arg::Text(fit(kind, 64)),
                Arg::Text(payload.to_string()),
                Arg::Text(fit(error, 8192)),
                Arg::Text(fmt_datetime(Utc::now())),
            ],
        )
        .await
        .map(|_| ())
        .map_err(self.q("dead letter"))
    }

    /// The newest `limit` dead letters, newest first.
    pub async fn dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>, StoreError> {
        let sql = self.sql(
            "SELECT CAST(id AS SIGNED), kind, CAST(payload AS CHAR), CAST(error AS CHAR), CAST(created_at AS CHAR) FROM ibp_dead_letters ORDER BY id DESC LIMIT ?",
            "SELECT id, kind, payload, error, created_at FROM ibp_dead_letters ORDER BY id DESC LIMIT ?",
        );
        let rows = self
            .fetch(
                sql,
                &[Arg::Int(i64::from(limit))],
                &[Col::Int, Col::Text, Col::Text, Col::Text, Col::Text],
            )
            .await
            .map_err(self.q("read dead letters"))?;
        Ok(rows
            .iter()
            .map(|r| DeadLetter {
                id: r[0].int(),
                kind: r[1].text(),
                payload: serde_json::from_str(&r[2].text()).unwrap_or(serde_json::Value::Null),
                error: r[3].text(),
                created_at: parse_datetime(&r[4].text()).unwrap_or_default(),
            })
            .collect())
    }

    /// How many writes were set aside in all.
    pub async fn dead_letter_count(&self) -> Result<u64, StoreError> {
        let sql = self.sql(
            "SELECT CAST(COUNT(*) AS SIGNED) FROM ibp_dead_letters",
            "SELECT COUNT(*) FROM ibp_dead_letters",
        );
        let rows = self
            .fetch(sql, &[], &[Col::Int])
            .await
            .map_err(self.q("count dead letters"))?;
        Ok(rows.first().map(|r| r[0].int().max(0) as u64).unwrap_or(0))
    }
}
