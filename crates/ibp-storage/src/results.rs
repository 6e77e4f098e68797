//! A monitor's local and official results (`ibp_results`), so a restart keeps the official
//! state. Written in transactions (no half-written cache file, D14).

use crate::events::Recording;
use crate::{
    Arg, Col, EventWrite, OutageChange, Store, StoreError, Tx, fmt_datetime, parse_datetime,
};
use chrono::{DateTime, Utc};
use ibp_core::CheckKey;
use ibp_wire::{Data, Proposal};
use sha2::{Digest, Sha256};

/// Which result store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ResultKind {
    /// Consensus results (updated by passed decisions).
    Official,
    /// This monitor's own latest observations.
    Local,
}

impl ResultKind {
    fn as_str(self) -> &'static str {
        match self {
            ResultKind::Official => "official",
            ResultKind::Local => "local",
        }
    }
}

/// One stored result.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredResult {
    /// Which store.
    pub kind: ResultKind,
    /// The check.
    pub key: CheckKey,
    /// Status (true = up).
    pub status: bool,
    /// Error text.
    pub error_text: String,
    /// Check details.
    pub data: Data,
    /// The deciding proposal (official results).
    pub proposal: Option<Proposal>,
    /// When it was last updated.
    pub updated_at: DateTime<Utc>,
}

fn result_args(r: &StoredResult) -> [Arg; 13] {
    let k = &r.key;
    let proposal = r
        .proposal
        .as_ref()
        .and_then(|p| ibp_wire::encode_to_string(p).ok());
    [
        Arg::from(r.kind.as_str()),
        Arg::Text(key_hash(k)),
        Arg::Text(k.check_type.clone()),
        Arg::Text(k.check_name.clone()),
        Arg::Text(k.member_name.clone()),
        Arg::Text(k.domain_name.clone()),
        Arg::Text(k.endpoint.clone()),
        Arg::from(k.is_ipv6),
        Arg::from(r.status),
        Arg::Text(r.error_text.clone()),
        Arg::Text(r.data.as_json().to_string()),
        Arg::OptText(proposal),
        Arg::Text(fmt_datetime(r.updated_at)),
    ]
}

fn key_hash(k: &CheckKey) -> String {
    let mut h = Sha256::new();
    for part in [
        &k.check_type,
        &k.check_name,
        &k.member_name,
        &k.domain_name,
        &k.endpoint,
    ] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    h.update([u8::from(k.is_ipv6)]);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// An official result to persist, with the outage event its flip records (monitors).
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OfficialWrite {
    /// The result row.
    pub result: StoredResult,
    /// The event to record with it, when the status flipped.
    pub event: Option<EventWrite>,
}

impl Store {
    /// Persists official results and their outage events **in one transaction**, so a crash
    /// never leaves an applied offline result without its open outage (or a recovery without
    /// its close). Replays are harmless: results are upserts and events are claimed by
    /// proposal ID.
    pub async fn apply_official(
        &self,
        items: &[OfficialWrite],
    ) -> Result<Vec<Option<OutageChange>>, StoreError> {
        let mut attempt = 0;
        'again: loop {
            let mut tx = self.begin().await.map_err(self.q("begin"))?;
            let mut out = Vec::with_capacity(items.len());
            for it in items {
                self.upsert_result(&mut tx, &it.result).await?;
                crate::failpoint("official.between_result_and_event");
                let change = match &it.event {
                    None => None,
                    Some(w) => match self.record_in(&mut tx, w).await {
                        Ok(c) => Some(c),
                        Err(Recording::Conflict) if attempt < 5 => {
                            attempt += 1;
                            continue 'again;
                        }
                        Err(Recording::Conflict) => {
                            return Err(self.err(
                                crate::StoreErrorKind::Query,
                                "apply official",
                                "another writer keeps opening this check's outage",
                            ));
                        }
                        Err(Recording::Failed(e)) => return Err(e),
                    },
                };
                out.push(change);
            }
            tx.commit().await.map_err(self.q("commit official"))?;
            return Ok(out);
        }
    }

    async fn upsert_result(&self, tx: &mut Tx, r: &StoredResult) -> Result<(), StoreError> {
        let upsert = self.result_upsert();
        tx.run(upsert, &result_args(r))
            .await
            .map_err(self.q("save result"))?;
        Ok(())
    }

    fn result_upsert(&self) -> &'static str {
        self.sql(
            "INSERT INTO ibp_results (kind, key_hash, check_type, check_name, member_name, domain_name, endpoint, is_ipv6, status, error_text, data, proposal, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE status = VALUES(status), error_text = VALUES(error_text), \
             data = VALUES(data), proposal = VALUES(proposal), updated_at = VALUES(updated_at)",
            "INSERT INTO ibp_results (kind, key_hash, check_type, check_name, member_name, domain_name, endpoint, is_ipv6, status, error_text, data, proposal, updated_at) \
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (kind, key_hash) DO UPDATE SET status = excluded.status, \
             error_text = excluded.error_text, data = excluded.data, proposal = excluded.proposal, updated_at = excluded.updated_at",
        )
    }

    /// Upserts results, all in one transaction.
    pub async fn save_results(&self, items: &[StoredResult]) -> Result<(), StoreError> {
        if items.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await.map_err(self.q("save results"))?;
        for r in items {
            self.upsert_result(&mut tx, r).await?;
        }
        tx.commit().await.map_err(self.q("save results"))
    }

    /// Loads every result of `kind`.
    pub async fn load_results(&self, kind: ResultKind) -> Result<Vec<StoredResult>, StoreError> {
        let sql = "SELECT check_type, check_name, member_name, domain_name, endpoint, CAST(is_ipv6 AS SIGNED), CAST(status AS SIGNED), \
                   COALESCE(error_text, ''), data, proposal, CAST(updated_at AS CHAR) FROM ibp_results WHERE kind = ?";
        let sql = match self.backend {
            crate::Backend::Mysql => sql.to_string(),
            crate::Backend::Sqlite => sql
                .replace("AS SIGNED)", "AS INTEGER)")
                .replace("AS CHAR)", "AS TEXT)"),
        };
        let cols = [
            Col::Text,
            Col::Text,
            Col::Text,
            Col::Text,
            Col::Text,
            Col::Int,
            Col::Int,
            Col::Text,
            Col::OptText,
            Col::OptText,
            Col::Text,
        ];
        let rows = self
            .fetch(&sql, &[Arg::from(kind.as_str())], &cols)
            .await
            .map_err(self.q("load results"))?;
        Ok(rows
            .into_iter()
            .map(|r| StoredResult {
                kind,
                key: CheckKey {
                    check_type: r[0].text(),
                    check_name: r[1].text(),
                    member_name: r[2].text(),
                    domain_name: r[3].text(),
                    endpoint: r[4].text(),
                    is_ipv6: r[5].int() == 1,
                },
                status: r[6].int() == 1,
                error_text: r[7].text(),
                data: r[8]
                    .opt_text()
                    .and_then(|d| serde_json::from_str::<serde_json::Value>(&d).ok())
                    .map(|v| Data::from_value(&v))
                    .unwrap_or_default(),
                proposal: r[9]
                    .opt_text()
                    .and_then(|p| ibp_wire::decode::<Proposal>(p.as_bytes()).ok()),
                updated_at: parse_datetime(&r[10].text()).unwrap_or_default(),
            })
            .collect())
    }
}
