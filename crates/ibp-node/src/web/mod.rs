//! The status page every node serves at `GET /`: the cluster, the status board, the live
//! feed of decisions, outages, usage, and (collator and monitors) the SLA report at `/sla`.
//!
//! Server-rendered shell plus a small script, every asset embedded in the binary (no CDN, no
//! external request: it works offline). The script reads one view model, `GET /v1/page`,
//! and listens to `GET /v1/stream` (server-sent events): every decision the node learns is
//! pushed at once, and the page redraws from a fresh view model.

pub mod sla;

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{NaiveDate, TimeDelta, Utc};
use ibp_core::Decision;
use ibp_wire::Role;
use serde_json::{Value, json};
use tokio::sync::{broadcast, watch};

use crate::http::AppState;
use crate::ibp_config::SharedIbpConfig;

/// Decisions the live feed keeps.
pub const FEED: usize = 200;
/// Days of usage and outage history the page shows.
pub const HISTORY_DAYS: i64 = 30;

const INDEX: &str = include_str!("assets/index.html");
const SLA_PAGE: &str = include_str!("assets/sla.html");
const APP_JS: &str = include_str!("assets/app.js");
const SLA_JS: &str = include_str!("assets/sla.js");
const STYLE: &str = include_str!("assets/style.css");

/// The page's state: the recent decisions, the live stream's fan-out, the lists.
#[derive(Clone)]
pub struct Web {
    feed: Arc<Mutex<VecDeque<Value>>>,
    live: broadcast::Sender<Value>,
    lists: SharedIbpConfig,
    stop: watch::Receiver<bool>,
}

impl Web {
    /// Follows `decisions` until `node_stop` is set; live streams end when `http_stop` is
    /// (a stream never ends by itself, and a graceful HTTP stop waits for every response).
    pub fn start(
        mut decisions: broadcast::Receiver<Decision>,
        lists: SharedIbpConfig,
        http_stop: watch::Receiver<bool>,
        mut node_stop: watch::Receiver<bool>,
    ) -> (Web, tokio::task::JoinHandle<()>) {
        let (live, _) = broadcast::channel(1024);
        let web = Web {
            feed: Arc::new(Mutex::new(VecDeque::with_capacity(FEED))),
            live,
            lists,
            stop: http_stop,
        };
        let w = web.clone();
        let task = tokio::spawn(async move {
            loop {
                if *node_stop.borrow() {
                    break;
                }
                tokio::select! {
                    r = decisions.recv() => match r {
                        Ok(d) => w.push(decision_view(&d)),
                        Err(broadcast::error::RecvError::Lagged(n)) => {
                            tracing::debug!(missed = n, "status page feed lagged");
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                    c = node_stop.changed() => if c.is_err() { break },
                }
            }
        });
        (web, task)
    }

    fn push(&self, v: Value) {
        if let Ok(mut f) = self.feed.lock() {
            if f.len() == FEED {
                f.pop_back();
            }
            f.push_front(v.clone());
        }
        let _ = self.live.send(v);
    }

    fn recent(&self) -> Vec<Value> {
        self.feed
            .lock()
            .map(|f| f.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// One decision as the feed shows it.
pub fn decision_view(d: &Decision) -> Value {
    let p = &d.proposal;
    json!({
        "id": p.id,
        "memberName": p.member_name,
        "checkType": p.check_type,
        "checkName": p.check_name,
        "domainName": p.domain_name,
        "endpoint": p.endpoint,
        "isIPv6": p.is_ipv6,
        "proposedStatus": p.proposed_status,
        "proposer": p.sender_node_id,
        "errorText": p.error_text,
        "data": p.data.to_value(),
        "passed": d.passed,
        "applied": d.applied,
        "finalizer": d.finalizer,
        "bySelf": d.by_self,
        "decidedAt": d.decided_at.instant(),
        "seenAt": Utc::now(),
        "latencyMs": d.latency.map(|l| l.as_secs_f64() * 1000.0),
        "votes": d.votes,
    })
}

/// The page's routes.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/sla", get(sla_page))
        .route("/assets/app.js", get(|| asset(APP_JS, "text/javascript")))
        .route("/assets/sla.js", get(|| asset(SLA_JS, "text/javascript")))
        .route("/assets/style.css", get(|| asset(STYLE, "text/css")))
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
        .route("/v1/page", get(page))
        .route("/v1/stream", get(stream))
        .route("/v1/sla", get(sla_json))
}

async fn asset(body: &'static str, kind: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

fn html(body: String) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    // Everything the page loads comes from the node itself.
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'",
        ),
    );
    r
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn fill(template: &str, s: &AppState) -> String {
    let role = s.node.role().map(Role::short_name).unwrap_or("tool");
    template
        .replace("{{node}}", &escape(s.node.id().as_str()))
        .replace("{{role}}", role)
        .replace("{{version}}", env!("CARGO_PKG_VERSION"))
}

async fn index(State(s): State<AppState>) -> Response {
    html(fill(INDEX, &s))
}

async fn sla_page(State(s): State<AppState>) -> Response {
    html(fill(SLA_PAGE, &s))
}

fn service_of(lists: Option<&ibp_lists::IbpConfig>, check_type: &str, domain: &str) -> String {
    if check_type == "site" || domain.is_empty() {
        return String::new();
    }
    lists
        .and_then(|l| l.service_for_domain(domain))
        .map(|s| s.name.clone())
        .unwrap_or_default()
}

/// What a board row is about.
struct Target<'a> {
    member: &'a str,
    check_type: &'a str,
    check_name: &'a str,
    domain: &'a str,
    endpoint: &'a str,
    ipv6: bool,
}

impl<'a> Target<'a> {
    fn of(k: &'a ibp_core::CheckKey) -> Target<'a> {
        Target {
            member: &k.member_name,
            check_type: k.check_type.as_str(),
            check_name: &k.check_name,
            domain: &k.domain_name,
            endpoint: &k.endpoint,
            ipv6: k.is_ipv6,
        }
    }

    fn of_row(r: &'a Value) -> Target<'a> {
        let s = |k: &str| r[k].as_str().unwrap_or("");
        Target {
            member: s("memberName"),
            check_type: s("checkType"),
            check_name: s("checkName"),
            domain: s("domainName"),
            endpoint: s("endpoint"),
            ipv6: r["isIPv6"].as_bool().unwrap_or(false),
        }
    }

    fn id(&self) -> String {
        format!(
            "{}\u{1}{}\u{1}{}\u{1}{}\u{1}{}\u{1}{}",
            self.member, self.check_type, self.check_name, self.domain, self.endpoint, self.ipv6
        )
    }
}

/// The board row of `t`, made blank the first time.
fn slot<'r>(
    rows: &'r mut BTreeMap<String, Value>,
    lists: Option<&ibp_lists::IbpConfig>,
    t: &Target<'_>,
) -> &'r mut Value {
    rows.entry(t.id()).or_insert_with(|| {
        json!({"memberName": t.member, "checkType": t.check_type, "checkName": t.check_name,
               "domainName": t.domain, "endpoint": t.endpoint, "isIPv6": t.ipv6,
               "service": service_of(lists, t.check_type, t.domain),
               "official": null, "local": null, "since": null, "errorText": ""})
    })
}

/// The status board: one row per check, official beside local on monitors, the health the
/// answers follow on DNS nodes, the open outages on the collator.
fn board(s: &AppState, lists: Option<&ibp_lists::IbpConfig>, open: &[Value]) -> Vec<Value> {
    let mut rows: BTreeMap<String, Value> = BTreeMap::new();
    if s.monitor.is_some() {
        for (k, o) in s.node.official() {
            let r = slot(&mut rows, lists, &Target::of(&k));
            r["official"] = json!(o.status);
            r["since"] = json!(o.applied_at);
            r["errorText"] = json!(o.proposal.error_text);
            r["proposalId"] = json!(o.proposal.id);
        }
        for (k, l) in s.node.local() {
            let r = slot(&mut rows, lists, &Target::of(&k));
            r["local"] = json!(l.status);
            r["localAt"] = json!(l.observed_at);
            if r["errorText"].as_str().is_none_or(str::is_empty) {
                r["errorText"] = json!(l.error_text);
            }
        }
    } else if let Some(g) = &s.geodns {
        for mut h in g.health_rows() {
            // The resolver keys members in lower case; show the list's spelling.
            if let Some(m) = lists.and_then(|l| l.member(h["memberName"].as_str().unwrap_or(""))) {
                h["memberName"] = json!(m.name);
            }
            let r = slot(&mut rows, lists, &Target::of_row(&h));
            r["official"] = h["official"].clone();
            r["since"] = h["since"].clone();
            r["source"] = h["source"].clone();
        }
    } else {
        for o in open {
            let r = slot(&mut rows, lists, &Target::of_row(o));
            r["official"] = json!(false);
            r["since"] = o["start"].clone();
            r["errorText"] = o["errorText"].clone();
        }
    }
    rows.into_values().collect()
}

fn outage_view(e: &ibp_storage::StoredEvent) -> Value {
    let end = e.end_time.unwrap_or_else(Utc::now);
    json!({
        "id": e.id, "memberName": e.member_name, "checkType": e.check_type,
        "checkName": e.check_name, "domainName": e.domain_name, "endpoint": e.endpoint,
        "isIPv6": e.is_ipv6, "start": e.start_time, "end": e.end_time,
        "open": e.end_time.is_none(),
        "hours": (end - e.start_time).num_seconds().max(0) as f64 / 3600.0,
        "errorText": e.error, "votes": e.vote_data,
    })
}

async fn outages(store: &ibp_storage::Store) -> Result<Value, String> {
    let now = Utc::now();
    let mut rows = store
        .events_overlapping(None, now - TimeDelta::days(HISTORY_DAYS), now)
        .await
        .map_err(|e| e.to_string())?;
    rows.sort_by(|a, b| {
        (b.end_time.is_none(), b.start_time, b.id).cmp(&(a.end_time.is_none(), a.start_time, a.id))
    });
    rows.truncate(500);
    Ok(Value::Array(rows.iter().map(outage_view).collect()))
}

async fn usage(store: &ibp_storage::Store) -> Result<Value, String> {
    let today = Utc::now().date_naive();
    let from = today - TimeDelta::days(HISTORY_DAYS - 1);
    let f = ibp_storage::UsageFilter {
        from,
        to: today,
        domain: String::new(),
        member: String::new(),
        country: String::new(),
    };
    let recs = store.query_usage(&f).await.map_err(|e| e.to_string())?;
    let mut days: BTreeMap<NaiveDate, i64> = (0..HISTORY_DAYS)
        .map(|i| (from + TimeDelta::days(i), 0))
        .collect();
    let mut members: BTreeMap<String, i64> = BTreeMap::new();
    let mut countries: BTreeMap<String, i64> = BTreeMap::new();
    for r in recs {
        if let Some(d) = r
            .date
            .get(..10)
            .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
        {
            *days.entry(d).or_default() += r.hits;
        }
        *members.entry(r.member_name).or_default() += r.hits;
        let c = if r.country_code.is_empty() {
            "??".to_string()
        } else {
            r.country_code
        };
        *countries.entry(c).or_default() += r.hits;
    }
    let top = |m: BTreeMap<String, i64>, key: &str| {
        let mut v: Vec<(String, i64)> = m.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(10);
        Value::Array(
            v.into_iter()
                .map(|(k, h)| json!({ key: k, "hits": h }))
                .collect(),
        )
    };
    Ok(json!({
        "days": days.into_iter().map(|(d, h)| json!({"date": d, "hits": h})).collect::<Vec<_>>(),
        "members": top(members, "member"),
        "countries": top(countries, "country"),
    }))
}

fn events_store(s: &AppState) -> Option<&ibp_storage::Store> {
    s.collator
        .as_ref()
        .map(|c| c.store())
        .or_else(|| s.monitor.as_ref().map(|m| m.store()))
}

fn usage_store(s: &AppState) -> Option<&ibp_storage::Store> {
    s.collator
        .as_ref()
        .map(|c| c.store())
        .or_else(|| s.dns.as_ref().map(|d| d.store()))
}

/// `GET /v1/page`: everything the page shows, for this node's role.
async fn page(State(s): State<AppState>) -> Response {
    let lists = s.web.lists.get();
    let mut problems = Vec::new();
    let outages = match events_store(&s) {
        Some(store) => outages(store).await.unwrap_or_else(|e| {
            problems.push(format!("outages: {e}"));
            Value::Null
        }),
        None => Value::Null,
    };
    let open: Vec<Value> = outages
        .as_array()
        .map(|a| a.iter().filter(|o| o["open"] == true).cloned().collect())
        .unwrap_or_default();
    let board = board(&s, lists.as_deref(), &open);
    let offline = board
        .iter()
        .filter(|r| r["official"] == json!(false))
        .count();
    let usage = match usage_store(&s) {
        Some(store) => usage(store).await.unwrap_or_else(|e| {
            problems.push(format!("usage: {e}"));
            Value::Null
        }),
        None => Value::Null,
    };
    let proposals = if s.node.role() == Some(Role::Dns) {
        Value::Null
    } else {
        json!(s.node.proposals())
    };
    let members: Vec<String> = lists
        .as_ref()
        .map(|l| l.members.values().map(|m| m.name.clone()).collect())
        .unwrap_or_default();
    let services: Vec<String> = lists
        .as_ref()
        .map(|l| l.services.keys().cloned().collect())
        .unwrap_or_default();
    let mut r = axum::Json(json!({
        "node": {"id": s.node.id().as_str(), "role": s.node.role().map(Role::short_name),
                 "version": env!("CARGO_PKG_VERSION"), "now": Utc::now()},
        "cluster": s.node.cluster(),
        "board": board,
        "offline": offline,
        "decisions": s.web.recent(),
        "proposals": proposals,
        "outages": outages,
        "usage": usage,
        "members": members,
        "services": services,
        "sla": events_store(&s).is_some(),
        "problems": problems,
    }))
    .into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// `GET /v1/stream`: server-sent events, one `decision` event per decision this node
/// learns, as the feed shows it.
async fn stream(State(s): State<AppState>) -> Response {
    let rx = s.web.live.subscribe();
    let stop = s.web.stop.clone();
    let events = futures::stream::unfold((rx, stop), |(mut rx, mut stop)| async move {
        loop {
            if *stop.borrow() {
                return None;
            }
            tokio::select! {
                r = rx.recv() => match r {
                    Ok(v) => {
                        let ev = Event::default().event("decision").data(v.to_string());
                        return Some((Ok::<_, Infallible>(ev), (rx, stop)));
                    }
                    // A reader too slow for the feed is told to reload everything.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let ev = Event::default().event("lagged").data("{}");
                        return Some((Ok(ev), (rx, stop)));
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                },
                c = stop.changed() => if c.is_err() { return None; },
            }
        }
    });
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

#[derive(serde::Deserialize)]
struct SlaQuery {
    month: Option<String>,
}

/// `GET /v1/sla?month=YYYY-MM` (default: this month).
async fn sla_json(
    State(s): State<AppState>,
    Query(q): Query<BTreeMap<String, String>>,
) -> Response {
    if let Some(k) = q.keys().find(|k| k.as_str() != "month") {
        return crate::http::error(
            StatusCode::BAD_REQUEST,
            format!("unknown query parameter {k:?}: only month=YYYY-MM"),
        );
    }
    let q = SlaQuery {
        month: q.get("month").cloned(),
    };
    let Some(store) = events_store(&s) else {
        return crate::http::not_for_role(&s.node, "/v1/sla");
    };
    let now = Utc::now();
    let month = match q.month.as_deref() {
        None | Some("") => ibp_core::sla::Month::of(now),
        Some(m) => match ibp_core::sla::Month::parse(m) {
            Ok(m) => m,
            Err(e) => return crate::http::error(StatusCode::BAD_REQUEST, format!("month: {e}")),
        },
    };
    let Some(lists) = s.web.lists.get() else {
        return crate::http::error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the member and service lists are not loaded yet (System.ConfigUrls); retry later",
        );
    };
    match sla::report(store, &lists, month, now).await {
        Ok(r) => axum::Json(r).into_response(),
        Err(e) => crate::http::error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}
