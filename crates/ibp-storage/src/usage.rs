//! The `requests` usage table: DNS increments, collator replaces, DNS answers.

use crate::events::check_width;
use crate::{Arg, Backend, Col, Store, StoreError, StoreErrorKind, Tx, fmt_date};
use chrono::NaiveDate;
use ibp_wire::UsageRecord;

/// One usage row: hits for a key on a day, counted by one DNS node.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsageRow {
    /// UTC day.
    pub date: NaiveDate,
    /// The DNS node that counted.
    pub node_id: String,
    /// Queried domain.
    pub domain: String,
    /// Member answered (`(none)` if none).
    pub member_name: String,
    /// `AS<number>` of the client.
    pub asn: String,
    /// Client network name.
    pub network_name: String,
    /// ISO country code (`??` when unknown).
    pub country_code: String,
    /// Country name (`Unknown` when unknown).
    pub country_name: String,
    /// Whether the queries came over IPv6.
    pub is_ipv6: bool,
    /// Hits.
    pub hits: i64,
}

impl UsageRow {
    /// A row from a wire record (its date parsed leniently). Fails on an unparseable date.
    pub fn from_record(r: &UsageRecord) -> Result<UsageRow, String> {
        Ok(UsageRow {
            date: r.day()?,
            node_id: r.node_id.clone(),
            domain: r.domain.clone(),
            member_name: r.member_name.clone(),
            asn: r.asn.clone(),
            network_name: r.network_name.clone(),
            country_code: r.country_code.clone(),
            country_name: r.country_name.clone(),
            is_ipv6: r.is_ipv6,
            hits: r.hits,
        })
    }

    /// The wire record, dated RFC 3339 midnight as Go DNS nodes send it.
    pub fn to_record(&self) -> UsageRecord {
        UsageRecord {
            node_id: self.node_id.clone(),
            date: UsageRecord::format_day(self.date),
            domain: self.domain.clone(),
            member_name: self.member_name.clone(),
            country_code: self.country_code.clone(),
            asn: self.asn.clone(),
            network_name: self.network_name.clone(),
            country_name: self.country_name.clone(),
            hits: self.hits,
            is_ipv6: self.is_ipv6,
        }
    }

    /// Checks every key column fits the Go schema's width. Key columns are never truncated
    /// (two keys cut to the same prefix would be merged, and one node's hits overwritten by
    /// another's); a row that does not fit is refused and set aside by its writer.
    pub fn validate(&self) -> Result<(), String> {
        for (what, v, max) in [
            ("node_id", &self.node_id, 32),
            ("domain_name", &self.domain, 128),
            ("member_name", &self.member_name, 64),
            ("network_asn", &self.asn, 32),
            ("network_name", &self.network_name, 96),
            ("country_code", &self.country_code, 2),
            ("country_name", &self.country_name, 64),
        ] {
            check_width(what, v, max)?;
        }
        if self.hits < 0 {
            return Err(format!("hits {} is negative", self.hits));
        }
        Ok(())
    }

    /// Columns in insert order (validated: see [`UsageRow::validate`]).
    fn columns(&self) -> [String; 8] {
        [
            fmt_date(self.date),
            self.node_id.clone(),
            self.domain.clone(),
            self.member_name.clone(),
            self.asn.clone(),
            self.network_name.clone(),
            self.country_code.clone(),
            self.country_name.clone(),
        ]
    }
}

/// What a usage request asks for (protocol §6; empty strings mean "any").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageFilter {
    /// First day.
    pub from: NaiveDate,
    /// Last day, inclusive.
    pub to: NaiveDate,
    /// Domain.
    pub domain: String,
    /// Member.
    pub member: String,
    /// Country code (compared ignoring case).
    pub country: String,
}

const CHUNK: usize = 400;

impl Store {
    /// Adds hits (DNS flush: increment semantics), in one transaction.
    pub async fn increment_usage(&self, rows: &[UsageRow]) -> Result<(), StoreError> {
        let update = self.sql(
            " ON DUPLICATE KEY UPDATE hits = hits + VALUES(hits)",
            " ON CONFLICT (date, node_id, domain_name, member_name, network_asn, network_name, country_code, country_name, is_ipv6) DO UPDATE SET hits = hits + excluded.hits",
        );
        self.write_usage(rows, update, "increment usage").await
    }

    /// Stores hits with replace semantics keyed by node (collator: re-imports are
    /// idempotent and nodes never overwrite each other). Refused when the table's unique
    /// key lacks `node_id`/`is_ipv6` (D8).
    pub async fn replace_usage(&self, rows: &[UsageRow]) -> Result<(), StoreError> {
        self.replace_allowed()?;
        self.write_usage(rows, self.replace_clause(), "replace usage")
            .await
    }

    /// Like [`Store::replace_usage`], and in the same transaction removes the node-less rows
    /// (`node_id` NULL or `''`, written by a Go collator) of `legacy_days`: once every DNS
    /// node's own rows for a day are stored, those rows would count the same hits twice.
    /// Returns how many legacy rows were removed.
    pub async fn replace_usage_taking_over(
        &self,
        rows: &[UsageRow],
        legacy_days: &[NaiveDate],
    ) -> Result<u64, StoreError> {
        self.replace_allowed()?;
        let mut tx = self.begin().await.map_err(self.q("replace usage"))?;
        let mut removed = 0;
        for d in legacy_days {
            removed += tx
                .run(
                    "DELETE FROM requests WHERE date = ? AND (node_id IS NULL OR node_id = '')",
                    &[Arg::Text(fmt_date(*d))],
                )
                .await
                .map_err(self.q("remove legacy usage rows"))?
                .rows;
        }
        self.write_usage_in(&mut tx, rows, self.replace_clause(), "replace usage")
            .await?;
        tx.commit().await.map_err(self.q("replace usage"))?;
        Ok(removed)
    }

    /// Hits of node-less (Go collator) rows per day in `[from, to]`.
    pub async fn legacy_usage_totals(
        &self,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<(NaiveDate, i64)>, StoreError> {
        let (date_expr, int) = match self.backend {
            Backend::Mysql => ("DATE_FORMAT(date, '%Y-%m-%d')", "SIGNED"),
            Backend::Sqlite => ("date", "INTEGER"),
        };
        let rows = self
            .fetch(
                &format!(
                    "SELECT {date_expr}, CAST(COALESCE(SUM(hits), 0) AS {int}) FROM requests WHERE date >= ? AND date <= ? \
                     AND (node_id IS NULL OR node_id = '') GROUP BY {date_expr} ORDER BY 1"
                ),
                &[Arg::Text(fmt_date(from)), Arg::Text(fmt_date(to))],
                &[Col::Text, Col::Int],
            )
            .await
            .map_err(self.q("legacy usage totals"))?;
        Ok(rows
            .iter()
            .filter_map(|r| {
                Some((
                    NaiveDate::parse_from_str(&r[0].text(), "%Y-%m-%d").ok()?,
                    r[1].int(),
                ))
            })
            .collect())
    }

    fn replace_allowed(&self) -> Result<(), StoreError> {
        if self.backend == Backend::Mysql && !self.usage_key_ok() {
            return Err(self.err(
                StoreErrorKind::Schema,
                "replace usage",
                "the requests table's unique key lacks node_id/is_ipv6 (run migrate with Part::Usage): replacing would overwrite other nodes' rows",
            ));
        }
        Ok(())
    }

    fn replace_clause(&self) -> &'static str {
        self.sql(
            " ON DUPLICATE KEY UPDATE hits = VALUES(hits)",
            " ON CONFLICT (date, node_id, domain_name, member_name, network_asn, network_name, country_code, country_name, is_ipv6) DO UPDATE SET hits = excluded.hits",
        )
    }

    async fn write_usage(
        &self,
        rows: &[UsageRow],
        update: &str,
        what: &str,
    ) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin().await.map_err(self.q(what))?;
        self.write_usage_in(&mut tx, rows, update, what).await?;
        tx.commit().await.map_err(self.q(what))
    }

    async fn write_usage_in(
        &self,
        tx: &mut Tx,
        rows: &[UsageRow],
        update: &str,
        what: &str,
    ) -> Result<(), StoreError> {
        if let Some((i, e)) = rows
            .iter()
            .enumerate()
            .find_map(|(i, r)| r.validate().err().map(|e| (i, e)))
        {
            return Err(self.err(
                StoreErrorKind::Rejected,
                what,
                format!(
                    "row {i} ({} {} {}): {e}",
                    rows[i].date, rows[i].node_id, rows[i].domain
                ),
            ));
        }
        let head = "INSERT INTO requests (date, node_id, domain_name, member_name, network_asn, network_name, country_code, country_name, is_ipv6, hits) VALUES ";
        for chunk in rows.chunks(CHUNK) {
            let values = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ");
            let sql = format!("{head}{values}{update}");
            let mut args = Vec::with_capacity(chunk.len() * 10);
            for r in chunk {
                args.extend(r.columns().into_iter().map(Arg::Text));
                args.push(Arg::from(r.is_ipv6));
                args.push(Arg::Int(r.hits));
            }
            tx.run(&sql, &args).await.map_err(self.q(what))?;
        }
        Ok(())
    }

    /// Answers a usage request as the Go DNS node does (storage §1.5): grouped sums over the
    /// inclusive date range, by member+domain, domain, or everything; then the member filter
    /// (exact, for the "everything" path) and the country filter (ignoring case). Rows with
    /// a NULL date or domain are skipped and a NULL family counts as IPv4 (D10).
    pub async fn query_usage(&self, f: &UsageFilter) -> Result<Vec<UsageRecord>, StoreError> {
        self.query_usage_grouped(f, false).await
    }

    /// Like [`Store::query_usage`], but rows counted under different node IDs stay apart and
    /// each record carries the ID it was counted under (`nodeid`). A DNS node whose ID
    /// changed answers its old rows under the old ID, so a collector replacing per node
    /// never counts them twice.
    pub async fn query_usage_by_node(
        &self,
        f: &UsageFilter,
    ) -> Result<Vec<UsageRecord>, StoreError> {
        self.query_usage_grouped(f, true).await
    }

    async fn query_usage_grouped(
        &self,
        f: &UsageFilter,
        per_node: bool,
    ) -> Result<Vec<UsageRecord>, StoreError> {
        let (date_expr, sum_expr) = match self.backend {
            Backend::Mysql => (
                "DATE_FORMAT(date, '%Y-%m-%d')",
                "CAST(COALESCE(SUM(hits), 0) AS SIGNED)",
            ),
            Backend::Sqlite => ("date", "CAST(COALESCE(SUM(hits), 0) AS INTEGER)"),
        };
        let by_domain = !f.domain.is_empty();
        let by_member = by_domain && !f.member.is_empty();
        let mut sql = format!(
            "SELECT {date_expr} AS c0, domain_name AS c1, COALESCE(member_name, '') AS c2, COALESCE(country_code, '') AS c3, \
             COALESCE(network_asn, '') AS c4, COALESCE(network_name, '') AS c5, COALESCE(country_name, '') AS c6, \
             CAST(COALESCE(is_ipv6, 0) AS {int}) AS c7, {sum_expr} AS c8, {node} AS c9 \
             FROM requests WHERE date IS NOT NULL AND domain_name IS NOT NULL AND date >= ? AND date <= ?",
            node = if per_node {
                "COALESCE(node_id, '')"
            } else {
                "''"
            },
            int = if self.backend == Backend::Mysql {
                "SIGNED"
            } else {
                "INTEGER"
            }
        );
        if by_domain {
            sql.push_str(" AND domain_name = ?");
        }
        if by_member {
            sql.push_str(" AND member_name = ?");
        }
        sql.push_str(
            // By the select's aliases: MySQL's ONLY_FULL_GROUP_BY does not match the CAST in
            // the select list against a bare COALESCE here.
            if per_node {
                " GROUP BY c0, c1, c2, c3, c4, c5, c6, c7, c9 ORDER BY c0, c1"
            } else {
                " GROUP BY c0, c1, c2, c3, c4, c5, c6, c7 ORDER BY c0, c1"
            },
        );
        if self.backend == Backend::Sqlite {
            // This project's SQLite files never hold NULL keys, so group the raw columns in
            // the order of idx_requests_usage: SQLite then aggregates while scanning the
            // index instead of sorting. NULLs, should any appear, form their own groups and
            // are mapped to '' below.
            sql = format!(
                "SELECT date AS c0, domain_name AS c1, member_name AS c2, country_code AS c3, network_asn AS c4, \
                 network_name AS c5, country_name AS c6, is_ipv6 AS c7, CAST(COALESCE(SUM(hits), 0) AS INTEGER) AS c8, {} AS c9 \
                 FROM requests WHERE date IS NOT NULL AND domain_name IS NOT NULL AND date >= ? AND date <= ?",
                if per_node {
                    "COALESCE(node_id, '')"
                } else {
                    "''"
                }
            );
            if by_domain {
                sql.push_str(" AND domain_name = ?");
            }
            if by_member {
                sql.push_str(" AND member_name = ?");
            }
            sql.push_str(" GROUP BY date, domain_name, member_name, country_code, network_asn, network_name, country_name, is_ipv6");
            if per_node {
                sql.push_str(", node_id");
            }
        }
        let mut args = vec![Arg::Text(fmt_date(f.from)), Arg::Text(fmt_date(f.to))];
        if by_domain {
            args.push(f.domain.as_str().into());
        }
        if by_member {
            args.push(f.member.as_str().into());
        }
        let rows: Vec<UsageRecord> = if self.backend == Backend::Sqlite {
            // The SQLite driver pays per row; let SQLite build the records as one JSON
            // array instead (the keys are the wire's, so the strict decoder reads it).
            let json_sql = format!(
                "SELECT CAST(COALESCE(json_group_array(json_object('nodeid', COALESCE(c9, ''), 'date', c0 || 'T00:00:00Z', 'domain', c1, \
                 'memberName', COALESCE(c2, ''), 'countryCode', COALESCE(c3, ''), 'asn', COALESCE(c4, ''), \
                 'networkName', COALESCE(c5, ''), 'countryName', COALESCE(c6, ''), 'hits', c8, \
                 'isIPv6', json(CASE WHEN c7 = 1 THEN 'true' ELSE 'false' END))), '[]') AS TEXT) \
                 FROM ({sql})"
            );
            let cells = self
                .fetch(&json_sql, &args, &[Col::Text])
                .await
                .map_err(|e| self.err(StoreErrorKind::Query, "query usage", e))?;
            let text = cells
                .first()
                .map(|r| r[0].text())
                .unwrap_or_else(|| "[]".into());
            serde_json::from_str(&text)
                .map_err(|e| self.err(StoreErrorKind::Corrupt, "read usage rows", e))?
        } else {
            let cols = [
                Col::Text,
                Col::Text,
                Col::Text,
                Col::Text,
                Col::Text,
                Col::Text,
                Col::Text,
                Col::Int,
                Col::Int,
                Col::Text,
            ];
            self.fetch(&sql, &args, &cols)
                .await
                .map_err(|e| self.err(StoreErrorKind::Query, "query usage", e))?
                .into_iter()
                .map(|r| {
                    let day = r[0].text();
                    UsageRecord {
                        node_id: r[9].text(),
                        date: NaiveDate::parse_from_str(&day, "%Y-%m-%d")
                            .map(UsageRecord::format_day)
                            .unwrap_or(day),
                        domain: r[1].text(),
                        member_name: r[2].text(),
                        country_code: r[3].text(),
                        asn: r[4].text(),
                        network_name: r[5].text(),
                        country_name: r[6].text(),
                        is_ipv6: r[7].int() == 1,
                        hits: r[8].int(),
                    }
                })
                .collect()
        };
        Ok(rows
            .into_iter()
            .filter(|r| by_domain || f.member.is_empty() || r.member_name == f.member)
            .filter(|r| f.country.is_empty() || r.country_code.eq_ignore_ascii_case(&f.country))
            .collect())
    }

    /// Total hits per node over a date range (operators' view; tests).
    pub async fn usage_totals_by_node(
        &self,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        let sql = self.sql(
            "SELECT COALESCE(node_id, ''), CAST(COALESCE(SUM(hits), 0) AS SIGNED) FROM requests WHERE date >= ? AND date <= ? GROUP BY COALESCE(node_id, '') ORDER BY 1",
            "SELECT COALESCE(node_id, ''), CAST(COALESCE(SUM(hits), 0) AS INTEGER) FROM requests WHERE date >= ? AND date <= ? GROUP BY COALESCE(node_id, '') ORDER BY 1",
        );
        let rows = self
            .fetch(
                sql,
                &[Arg::Text(fmt_date(from)), Arg::Text(fmt_date(to))],
                &[Col::Text, Col::Int],
            )
            .await
            .map_err(self.q("usage totals"))?;
        Ok(rows.iter().map(|r| (r[0].text(), r[1].int())).collect())
    }
}
