//! `ibp-node sla`: the monthly SLA report from a collator's (or monitor's) database, for
//! billing runs, as a table, JSON (the shape of `GET /v1/sla`) or CSV.

use chrono::{DateTime, Utc};
use ibp_core::sla::{Month, Report};
use ibp_lists::IbpConfig;
use ibp_storage::Store;

use crate::ibp_config::{FetchLimits, fetch};

/// Where the member and service lists come from.
#[derive(Debug, Clone)]
pub struct ListSources {
    /// Members (`MembersConfig`): a URL or a path.
    pub members: String,
    /// Services (`ServicesConfig`): a URL or a path.
    pub services: String,
}

/// Loads the lists, opens the database read-only in effect (nothing is written or
/// migrated) and makes the report of `month` at `now`.
pub async fn report(
    db: &str,
    month: &str,
    lists: &ListSources,
    now: DateTime<Utc>,
) -> Result<Report, String> {
    let month = Month::parse(month).map_err(|e| format!("--month: {e}"))?;
    let limits = FetchLimits::default();
    let members = fetch(&lists.members, limits).await?;
    let services = fetch(&lists.services, limits).await?;
    let lists = IbpConfig::parse(&members, &services).map_err(|e| format!("lists: {e}"))?;
    let shown = ibp_storage::redact_url(db);
    if let Some(path) = db
        .strip_prefix("sqlite://")
        .or_else(|| db.strip_prefix("sqlite:"))
        && !std::path::Path::new(path).exists()
    {
        return Err(format!("database {shown}: no such file"));
    }
    let store = Store::open(db)
        .await
        .map_err(|e| format!("database {shown}: {e}"))?;
    let r = crate::web::sla::report(&store, &lists, month, now)
        .await
        .map_err(|e| format!("database {shown}: {e}"));
    store.close().await;
    r
}

/// The report as an aligned table, members under the target marked.
pub fn table(r: &Report) -> String {
    let mut out = format!(
        "SLA {}: {} hours, target {} %\n",
        r.month, r.hours, r.target
    );
    let rows: Vec<[String; 6]> = r
        .members
        .iter()
        .flat_map(|m| {
            m.services.iter().map(move |s| {
                [
                    m.member.clone(),
                    s.service.clone(),
                    format!("{:.2}", s.combined.downtime_hours),
                    format!(
                        "{:.3} %{}",
                        s.combined.availability,
                        if s.combined.below_target {
                            " below"
                        } else {
                            ""
                        }
                    ),
                    format!("{:.3} %", s.ipv4.availability),
                    format!("{:.3} %", s.ipv6.availability),
                ]
            })
        })
        .collect();
    let head = [
        "member",
        "service",
        "downtime h",
        "availability",
        "IPv4",
        "IPv6",
    ];
    let mut w = head.map(str::len);
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            l.push_str(&format!("{c:<width$}  ", width = w[i]));
        }
        l.trim_end().to_string() + "\n"
    };
    out.push_str(&line(head.to_vec()));
    for r in &rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    let below = r.members.iter().filter(|m| m.below_target).count();
    out.push_str(&format!(
        "{below} of {} members below the target\n",
        r.members.len()
    ));
    out
}
