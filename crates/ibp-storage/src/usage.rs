//! The `requests` usage table: DNS increments, collator replaces, DNS answers.

use crate::{Arg, Backend, Col, Store, StoreError, StoreErrorKind, fit, fmt_date};
use chrono::NaiveDate;
use ibp_wire::UsageRecord;

/// One usage row: hits for a key on a day, counted by one DNS node.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
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

    /// Columns in insert order, truncated to the Go schema's widths (D11).
    fn columns(&self) -> [String; 8] {
        [
            fmt_date(self.date),
            fit(&self.node_id, 32),
            fit(&self.domain, 128),
            fit(&self.member_name, 64),
            fit(&self.asn, 32),
            fit(&self.network_name, 96),
            fit(&self.country_code, 2),
            fit(&self.country_name, 64),
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
        if self.backend == Backend::Mysql && !self.usage_key_ok() {
            return Err(self.err(
                StoreErrorKind::Schema,
                "replace usage",
                "the requests table's unique key lacks node_id/is_ipv6 (run migrate with Part::Usage): replacing would overwrite other nodes' rows",
            ));
        }
        let update = self.sql(
            " ON DUPLICATE KEY UPDATE hits = VALUES(hits)",
            " ON CONFLICT (date, node_id, domain_name, member_name, network_asn, network_name, country_code, country_name, is_ipv6) DO UPDATE SET hits = excluded.hits",
        );
        self.write_usage(rows, update, "replace usage").await
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
        let head = "INSERT INTO requests (date, node_id, domain_name, member_name, network_asn, network_name, country_code, country_name, is_ipv6, hits) VALUES ";
        let mut tx = self.begin().await.map_err(self.q(what))?;
        for chunk in rows.chunks(CHUNK) {
            let values = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; chunk.len()].join(", ");
            let sql = format!("{head}{values}{update}");
            let mut args = Vec::with_capacity(chunk.len() * 10);
            for r in chunk {
                args.extend(r.columns().into_iter().map(Arg::Text));
                args.push(Arg::from(r.is_ipv6));
                args.push(Arg::Int(r.hits.max(0)));
            }
            tx.run(&sql, &args).await.map_err(self.q(what))?;
        }
        tx.commit().await.map_err(self.q(what))
    }

    /// Answers a usage request as the Go DNS node does (storage §1.5): grouped sums over the
    /// inclusive date range, by member+domain, domain, or everything; then the member filter
    /// (exact, for the "everything" path) and the country filter (ignoring case). Rows with
    /// a NULL date or domain are skipped and a NULL family counts as IPv4 (D10).
    pub async fn query_usage(&self, f: &UsageFilter) -> Result<Vec<UsageRecord>, StoreError> {
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
             CAST(COALESCE(is_ipv6, 0) AS {int}) AS c7, {sum_expr} AS c8 \
             FROM requests WHERE date IS NOT NULL AND domain_name IS NOT NULL AND date >= ? AND date <= ?",
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
            " GROUP BY c0, c1, c2, c3, c4, c5, c6, c7 ORDER BY c0, c1",
        );
        if self.backend == Backend::Sqlite {
            // This project's SQLite files never hold NULL keys, so group the raw columns in
            // the order of idx_requests_usage: SQLite then aggregates while scanning the
            // index instead of sorting. NULLs, should any appear, form their own groups and
            // are mapped to '' below.
            sql = "SELECT date AS c0, domain_name AS c1, member_name AS c2, country_code AS c3, network_asn AS c4, \
                   network_name AS c5, country_name AS c6, is_ipv6 AS c7, CAST(COALESCE(SUM(hits), 0) AS INTEGER) AS c8 \
                   FROM requests WHERE date IS NOT NULL AND domain_name IS NOT NULL AND date >= ? AND date <= ?"
                .to_string();
            if by_domain {
                sql.push_str(" AND domain_name = ?");
            }
            if by_member {
                sql.push_str(" AND member_name = ?");
            }
            sql.push_str(" GROUP BY date, domain_name, member_name, country_code, network_asn, network_name, country_name, is_ipv6");
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
                "SELECT CAST(COALESCE(json_group_array(json_object('nodeid', '', 'date', c0 || 'T00:00:00Z', 'domain', c1, \
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
            ];
            self.fetch(&sql, &args, &cols)
                .await
                .map_err(|e| self.err(StoreErrorKind::Query, "query usage", e))?
                .into_iter()
                .map(|r| {
                    let day = r[0].text();
                    UsageRecord {
                        node_id: String::new(),
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
