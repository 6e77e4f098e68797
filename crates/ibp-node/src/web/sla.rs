//! The SLA report from a database and the member/service lists (the rule itself is pure:
//! `ibp_core::sla`).

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use ibp_core::sla::{BilledMember, Month, Outage, Report};
use ibp_lists::{IbpConfig, host_of};
use ibp_storage::{Store, StoreError, StoredEvent};

/// Every member of the lists with every service it is assigned, each with its RPC hosts. A
/// service assigned but missing from the service list is reported with no hosts (only its
/// member's site outages count for it).
pub fn billed_members(lists: &IbpConfig) -> Vec<BilledMember> {
    lists
        .members
        .values()
        .map(|m| {
            let mut services: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            for name in m.assignments.values().flatten() {
                let hosts = lists
                    .services
                    .get(name)
                    .map(|s| s.rpc_urls.iter().filter_map(|u| host_of(u)).collect())
                    .unwrap_or_default();
                services.insert(name.clone(), hosts);
            }
            BilledMember {
                name: m.name.clone(),
                services,
            }
        })
        .collect()
}

/// A stored outage row as the report reads it.
pub fn outage(e: &StoredEvent) -> Outage {
    Outage {
        member: e.member_name.clone(),
        check_type: e.check_type.clone(),
        check_name: e.check_name.clone(),
        domain: e.domain_name.clone(),
        endpoint: e.endpoint.clone(),
        ipv6: e.is_ipv6,
        start: e.start_time,
        end: e.end_time,
        error: e.error.clone(),
    }
}

/// The report of `month` from `store`, made at `now`.
pub async fn report(
    store: &Store,
    lists: &IbpConfig,
    month: Month,
    now: DateTime<Utc>,
) -> Result<Report, StoreError> {
    let rows = store.events_for_period(month.start, month.end).await?;
    let outages: Vec<Outage> = rows.iter().map(outage).collect();
    Ok(ibp_core::sla::report(
        month,
        &billed_members(lists),
        &outages,
        now,
    ))
}
