//! The monthly SLA report: downtime hours and availability per member and service, by the
//! IBP collator's billing rule. Pure: outages, the lists and the time come in.
//!
//! The rule:
//! * a service's outages are the member's **site** outages plus its **domain** and
//!   **endpoint** outages whose domain is one of the service's RPC URL hosts;
//! * an open outage counts to the end of the period, or to now when that is earlier;
//!   closure is decided by the end time alone (rows the Go collator closed with status 1
//!   count like any other closed outage);
//! * outages are clipped to the month and overlapping ones merged before summing, per IP
//!   family, and for both families together as the union of their intervals;
//! * availability = (hours in month − downtime) / hours in month, in percent; the target is
//!   99.99 %.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Datelike, NaiveDate, TimeDelta, Utc};
use serde::Serialize;

/// The SLA target, percent.
pub const TARGET: f64 = 99.99;

/// One outage as the report reads it (a `member_events` row).
#[derive(Debug, Clone, PartialEq)]
pub struct Outage {
    /// Member.
    pub member: String,
    /// `site`, `domain` or `endpoint` (the Go collator's `1`, `2`, `3` are read as these).
    pub check_type: String,
    /// Check name.
    pub check_name: String,
    /// Domain (empty for site checks).
    pub domain: String,
    /// Endpoint URL, for endpoint checks.
    pub endpoint: String,
    /// IP family.
    pub ipv6: bool,
    /// Start.
    pub start: DateTime<Utc>,
    /// End; `None` while open.
    pub end: Option<DateTime<Utc>>,
    /// Error text.
    pub error: String,
}

/// A member as the report needs it: its name and the services it is assigned, each with
/// the hosts of the service's RPC URLs.
#[derive(Debug, Clone, PartialEq)]
pub struct BilledMember {
    /// Member name.
    pub name: String,
    /// Service name → its RPC URL hosts (lower case, no trailing dot).
    pub services: BTreeMap<String, BTreeSet<String>>,
}

/// A month, `YYYY-MM`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Month {
    /// Its first instant.
    pub start: DateTime<Utc>,
    /// The first instant of the next month.
    pub end: DateTime<Utc>,
}

impl Month {
    /// Parses `YYYY-MM` (years 2000–9999).
    pub fn parse(text: &str) -> Result<Month, String> {
        let bad = || format!("{text:?} is not a month like 2026-10 (YYYY-MM)");
        let (y, m) = text.trim().split_once('-').ok_or_else(bad)?;
        if y.len() != 4 || m.len() != 2 {
            return Err(bad());
        }
        let y: i32 = y.parse().map_err(|_| bad())?;
        let m: u32 = m.parse().map_err(|_| bad())?;
        if !(2000..=9999).contains(&y) {
            return Err(bad());
        }
        let first = NaiveDate::from_ymd_opt(y, m, 1).ok_or_else(bad)?;
        let next = if m == 12 {
            NaiveDate::from_ymd_opt(y + 1, 1, 1)
        } else {
            NaiveDate::from_ymd_opt(y, m + 1, 1)
        }
        .ok_or_else(bad)?;
        let at = |d: NaiveDate| d.and_hms_opt(0, 0, 0).map(|t| t.and_utc()).ok_or_else(bad);
        Ok(Month {
            start: at(first)?,
            end: at(next)?,
        })
    }

    /// The month containing `t`.
    pub fn of(t: DateTime<Utc>) -> Month {
        let text = format!("{:04}-{:02}", t.year(), t.month());
        Month::parse(&text).unwrap_or(Month {
            start: t,
            end: t + TimeDelta::days(30),
        })
    }

    /// `YYYY-MM`.
    pub fn label(&self) -> String {
        format!("{:04}-{:02}", self.start.year(), self.start.month())
    }

    /// Hours in the month.
    pub fn hours(&self) -> f64 {
        (self.end - self.start).num_seconds() as f64 / 3600.0
    }
}

/// Downtime and availability of one family (or both together).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Figures {
    /// Merged downtime within the month, hours.
    pub downtime_hours: f64,
    /// Percent.
    pub availability: f64,
    /// Under [`TARGET`].
    pub below_target: bool,
}

/// One outage as the report shows it: clipped to the month.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportedOutage {
    /// Start within the month (RFC 3339).
    pub start: DateTime<Utc>,
    /// End within the month (the month's end or now for an open outage).
    pub end: DateTime<Utc>,
    /// Whether the outage is still open.
    pub open: bool,
    /// `site`, `domain` or `endpoint`.
    pub check_type: String,
    /// Check name.
    pub check_name: String,
    /// Domain, for domain and endpoint checks.
    pub domain: String,
    /// Endpoint, for endpoint checks.
    pub endpoint: String,
    /// IP family.
    pub ipv6: bool,
    /// Hours within the month (before merging with overlapping outages).
    pub hours: f64,
    /// Error text.
    pub error: String,
}

/// One service of one member.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceReport {
    /// Service name.
    pub service: String,
    /// Both families together (the union of their outage intervals).
    #[serde(flatten)]
    pub combined: Figures,
    /// IPv4 only.
    pub ipv4: Figures,
    /// IPv6 only.
    pub ipv6: Figures,
    /// The outages counted, in start order.
    pub outages: Vec<ReportedOutage>,
}

/// One member.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemberReport {
    /// Member name.
    pub member: String,
    /// Every service it is assigned, by name.
    pub services: Vec<ServiceReport>,
    /// Whether any of its services is under the target.
    pub below_target: bool,
}

/// The report of one month.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// `YYYY-MM`.
    pub month: String,
    /// Hours in the month.
    pub hours: f64,
    /// Percent.
    pub target: f64,
    /// When the report was made; open outages count up to here within the current month.
    pub generated_at: DateTime<Utc>,
    /// Every member of the member list, by name.
    pub members: Vec<MemberReport>,
}

/// `site`/`domain`/`endpoint`, whichever form the row holds (the Go collator's `1`/`2`/`3`).
fn kind(check_type: &str) -> &str {
    match ibp_wire::CheckType::parse(check_type) {
        Some(t) => t.as_str(),
        None => check_type.trim(),
    }
}

fn host(d: &str) -> String {
    d.trim().trim_end_matches('.').to_ascii_lowercase()
}

fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

/// Sum of the union of `intervals`, seconds.
fn merged_seconds(mut intervals: Vec<(DateTime<Utc>, DateTime<Utc>)>) -> i64 {
    intervals.sort();
    let mut total = 0;
    let mut current: Option<(DateTime<Utc>, DateTime<Utc>)> = None;
    for (s, e) in intervals {
        match &mut current {
            Some((_, ce)) if s <= *ce => {
                if e > *ce {
                    *ce = e;
                }
            }
            _ => {
                if let Some((cs, ce)) = current {
                    total += (ce - cs).num_milliseconds();
                }
                current = Some((s, e));
            }
        }
    }
    if let Some((cs, ce)) = current {
        total += (ce - cs).num_milliseconds();
    }
    total / 1000 + i64::from(total % 1000 >= 500)
}

fn figures(hours: f64, seconds: i64) -> Figures {
    let down = seconds as f64 / 3600.0;
    let availability = if hours > 0.0 {
        (hours - down) / hours * 100.0
    } else {
        100.0
    };
    Figures {
        downtime_hours: round(down, 4),
        availability: round(availability, 3),
        below_target: availability < TARGET,
    }
}

/// The report for `month`, made at `now`.
pub fn report(
    month: Month,
    members: &[BilledMember],
    outages: &[Outage],
    now: DateTime<Utc>,
) -> Report {
    let hours = month.hours();
    let period_end = month.end.min(now.max(month.start));
    let mut by_member: BTreeMap<&str, Vec<&Outage>> = BTreeMap::new();
    for o in outages {
        by_member.entry(o.member.as_str()).or_default().push(o);
    }
    let mut sorted: Vec<&BilledMember> = members.iter().collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    let members = sorted
        .into_iter()
        .map(|m| {
            let mine = by_member.get(m.name.as_str()).cloned().unwrap_or_default();
            let services: Vec<ServiceReport> = m
                .services
                .iter()
                .map(|(name, hosts)| {
                    let mut counted: Vec<ReportedOutage> = mine
                        .iter()
                        .filter(|o| match kind(&o.check_type) {
                            "site" => true,
                            "domain" | "endpoint" => hosts.contains(&host(&o.domain)),
                            _ => false,
                        })
                        .filter_map(|o| {
                            let start = o.start.max(month.start);
                            let end = o.end.unwrap_or(period_end).min(month.end);
                            (end > start).then(|| ReportedOutage {
                                start,
                                end,
                                open: o.end.is_none(),
                                check_type: kind(&o.check_type).to_string(),
                                check_name: o.check_name.clone(),
                                domain: o.domain.clone(),
                                endpoint: o.endpoint.clone(),
                                ipv6: o.ipv6,
                                hours: round((end - start).num_seconds() as f64 / 3600.0, 4),
                                error: o.error.clone(),
                            })
                        })
                        .collect();
                    counted.sort_by_key(|a| (a.start, a.ipv6));
                    let span = |f: &dyn Fn(&ReportedOutage) -> bool| {
                        merged_seconds(
                            counted
                                .iter()
                                .filter(|o| f(o))
                                .map(|o| (o.start, o.end))
                                .collect(),
                        )
                    };
                    ServiceReport {
                        service: name.clone(),
                        combined: figures(hours, span(&|_| true)),
                        ipv4: figures(hours, span(&|o| !o.ipv6)),
                        ipv6: figures(hours, span(&|o| o.ipv6)),
                        outages: counted,
                    }
                })
                .collect();
            MemberReport {
                member: m.name.clone(),
                below_target: services.iter().any(|s| s.combined.below_target),
                services,
            }
        })
        .collect();
    Report {
        month: month.label(),
        hours,
        target: TARGET,
        generated_at: now,
        members,
    }
}

/// The report as CSV: one line per member, service and family (`all`, `ipv4`, `ipv6`).
pub fn to_csv(r: &Report) -> String {
    let mut out =
        String::from("month,member,service,family,downtime_hours,availability,below_target\n");
    let quote = |s: &str| {
        if s.contains([',', '"', '\n']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    };
    for m in &r.members {
        for s in &m.services {
            for (family, f) in [("all", &s.combined), ("ipv4", &s.ipv4), ("ipv6", &s.ipv6)] {
                out.push_str(&format!(
                    "{},{},{},{family},{},{},{}\n",
                    r.month,
                    quote(&m.member),
                    quote(&s.service),
                    f.downtime_hours,
                    f.availability,
                    f.below_target
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s)
            .expect("time")
            .with_timezone(&Utc)
    }

    fn outage(ty: &str, domain: &str, v6: bool, start: &str, end: Option<&str>) -> Outage {
        Outage {
            member: "Amforc".into(),
            check_type: ty.into(),
            check_name: "x".into(),
            domain: domain.into(),
            endpoint: String::new(),
            ipv6: v6,
            start: t(start),
            end: end.map(t),
            error: String::new(),
        }
    }

    fn members() -> Vec<BilledMember> {
        let hosts = |h: &[&str]| h.iter().map(|s| s.to_string()).collect();
        vec![
            BilledMember {
                name: "Amforc".into(),
                services: BTreeMap::from([
                    (
                        "Polkadot".into(),
                        hosts(&["rpc.ibp.network", "polkadot.dotters.network"]),
                    ),
                    ("Kusama".into(), hosts(&["kusama.dotters.network"])),
                ]),
            },
            BilledMember {
                name: "Stake Plus".into(),
                services: BTreeMap::from([("Polkadot".into(), hosts(&["rpc.ibp.network"]))]),
            },
        ]
    }

    /// Worked by hand: October 2026 has 31 × 24 = 744 hours.
    /// Polkadot, IPv4: the site outage from 30 Sep 23:00 to 1 Oct 01:00 counts from 00:00
    /// (1 h), the domain outage 00:30–02:00 overlaps it (union 00:00–02:00 = 2 h), the Go
    /// collator's row (type "1", status 1, closed) 15 Oct 10:00–10:30 adds 0.5 h: 2.5 h.
    /// IPv6: the endpoint outage open since 31 Oct 23:30 counts to the month's end: 0.5 h.
    /// Both: 3 h, availability (744 − 3) / 744 = 99.5968… → 99.597 %.
    /// Kusama: only the site outages (its host had no outage): 1.5 h.
    #[test]
    fn a_hand_computed_month_with_overlaps_across_the_boundary() {
        let outages = vec![
            outage(
                "site",
                "",
                false,
                "2026-09-30T23:00:00Z",
                Some("2026-10-01T01:00:00Z"),
            ),
            outage(
                "domain",
                "RPC.ibp.network.",
                false,
                "2026-10-01T00:30:00Z",
                Some("2026-10-01T02:00:00Z"),
            ),
            outage(
                "1",
                "",
                false,
                "2026-10-15T10:00:00Z",
                Some("2026-10-15T10:30:00Z"),
            ),
            outage(
                "endpoint",
                "polkadot.dotters.network",
                true,
                "2026-10-31T23:30:00Z",
                None,
            ),
            outage(
                "domain",
                "other.example",
                false,
                "2026-10-02T00:00:00Z",
                Some("2026-10-03T00:00:00Z"),
            ),
            outage(
                "site",
                "",
                false,
                "2026-11-01T00:00:00Z",
                Some("2026-11-02T00:00:00Z"),
            ),
        ];
        let r = report(
            Month::parse("2026-10").expect("month"),
            &members(),
            &outages,
            t("2026-11-20T00:00:00Z"),
        );
        assert_eq!(r.hours, 744.0);
        assert_eq!(r.members.len(), 2, "every member appears");
        let amforc = &r.members[0];
        assert_eq!(amforc.member, "Amforc");
        let names: Vec<&str> = amforc.services.iter().map(|s| s.service.as_str()).collect();
        assert_eq!(names, ["Kusama", "Polkadot"]);
        let dot = &amforc.services[1];
        assert_eq!(dot.ipv4.downtime_hours, 2.5);
        assert_eq!(dot.ipv6.downtime_hours, 0.5);
        assert_eq!(dot.combined.downtime_hours, 3.0);
        assert_eq!(dot.combined.availability, 99.597);
        assert!(dot.combined.below_target);
        assert_eq!(dot.outages.len(), 4);
        assert_eq!(dot.outages[0].start, t("2026-10-01T00:00:00Z"), "clipped");
        assert_eq!(dot.outages[0].check_type, "site");
        assert_eq!(dot.outages[2].check_type, "site", "Go's numeric type read");
        assert!(dot.outages[3].open);
        assert_eq!(dot.outages[3].end, t("2026-11-01T00:00:00Z"));
        let ksm = &amforc.services[0];
        assert_eq!(ksm.combined.downtime_hours, 1.5);
        assert_eq!(
            ksm.combined.availability,
            round((744.0 - 1.5) / 744.0 * 100.0, 3)
        );
        let sp = &r.members[1];
        assert_eq!(sp.services[0].combined.downtime_hours, 0.0);
        assert_eq!(sp.services[0].combined.availability, 100.0);
        assert!(!sp.below_target);
        assert!(amforc.below_target);
    }

    #[test]
    fn an_open_outage_in_the_current_month_counts_to_now() {
        let outages = vec![outage("site", "", false, "2026-11-30T10:00:00Z", None)];
        let r = report(
            Month::parse("2026-11").expect("month"),
            &members(),
            &outages,
            t("2026-11-30T12:00:00Z"),
        );
        assert_eq!(r.members[0].services[0].combined.downtime_hours, 2.0);
        assert_eq!(r.hours, 720.0);
    }

    #[test]
    fn months_parse_strictly() {
        assert!(Month::parse("2026-1").is_err());
        assert!(Month::parse("2026-13").is_err());
        assert!(Month::parse("1999-01").is_err());
        assert!(Month::parse("-2026-10").is_err());
        let d = Month::parse("2026-12").expect("december");
        assert_eq!(d.end, t("2027-01-01T00:00:00Z"));
        assert_eq!(Month::parse("2028-02").expect("leap").hours(), 29.0 * 24.0);
        assert_eq!(Month::of(t("2026-10-31T23:59:59Z")).label(), "2026-10");
    }

    #[test]
    fn csv_has_a_line_per_member_service_and_family() {
        let r = report(
            Month::parse("2026-10").expect("month"),
            &members(),
            &[],
            t("2026-11-20T00:00:00Z"),
        );
        let csv = to_csv(&r);
        assert_eq!(csv.lines().count(), 1 + 3 * 3);
        assert!(
            csv.contains("2026-10,Stake Plus,Polkadot,all,0,100,false"),
            "{csv}"
        );
    }
}
