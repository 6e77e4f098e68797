//! The HTTP API every role serves: health, cluster, proposals, results, metrics, and the
//! role-specific inputs (observations, DNS hits, usage collection). Writes are locked
//! ([`guard`]); the server enforces connection, header, time and body limits ([`serve`]).

pub mod guard;
mod serve;

pub use guard::WriteLock;
pub use serve::{HEADER_TIMEOUT, SHUTDOWN_GRACE};

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use chrono::{DateTime, NaiveDate, Utc};
use ibp_core::CheckKey;
use ibp_wire::Role;
use serde_json::{Value, json};

use crate::cluster::Node;
use crate::connection::StateKind;
use crate::roles::{CollatorService, DnsService, Hit, MonitorService, results_snapshot};
pub use ibp_core::input::MAX_BATCH;
use ibp_core::input::{
    field_str, field_str_max, kind, known_fields, objects, parse_day, parse_observations,
};

/// What the handlers need.
#[derive(Clone)]
pub struct AppState {
    /// The node.
    pub node: Node,
    /// Monitor services (monitor role).
    pub monitor: Option<MonitorService>,
    /// DNS services (DNS role).
    pub dns: Option<DnsService>,
    /// Collator services (collator role).
    pub collator: Option<CollatorService>,
    /// Built-in checks (monitors that run them).
    pub checks: Option<crate::roles::ChecksService>,
    /// GeoDNS answers (DNS role): the PowerDNS remote backend at `/dns`.
    pub geodns: Option<crate::roles::GeoDnsService>,
    /// Who may write.
    pub writes: WriteLock,
    /// Largest request body, bytes.
    pub max_body: usize,
    /// Most connections at once.
    pub max_connections: usize,
    /// The status page.
    pub web: crate::web::Web,
}

/// Longest a request/response handler may take (event streams excepted): a locked table
/// must not hold HTTP clients, and their connections, for minutes.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

async fn time_limit(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if req.uri().path().starts_with("/v1/stream") {
        return next.run(req).await;
    }
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(r) => r,
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "no answer within {} s: the node's database is locked or overloaded (see /healthz)",
                REQUEST_TIMEOUT.as_secs()
            ),
        ),
    }
}

/// The router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(livez))
        .route("/v1/dead-letters", get(dead_letters))
        .route("/v1/checks", get(checks))
        .route("/v1/cluster", get(cluster))
        .route("/v1/proposals", get(proposals))
        .route("/v1/official", get(official))
        .route("/v1/local", get(local))
        .route("/v1/events", get(events))
        .route("/v1/usage", get(usage_totals))
        .route("/results", any(results))
        .route("/dns", any(dns_backend))
        .route("/process", any(process))
        .route("/v1/geodns", get(geodns_status))
        .route("/metrics", get(metrics))
        .route("/v1/observations", post(observations))
        .route("/v1/usage/hits", post(hits))
        .route("/v1/usage/collect", post(collect))
        .merge(crate::web::routes())
        .fallback(not_found)
        .layer(axum::middleware::from_fn(json_errors))
        .layer(axum::extract::DefaultBodyLimit::max(state.max_body))
        .layer(axum::middleware::from_fn_with_state(
            state.max_body,
            body_limit,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.writes.clone(),
            guard::write_lock,
        ))
        .layer(axum::middleware::from_fn(time_limit))
        .with_state(state)
}

/// A declared body over the limit gets a JSON 413 before anything is read (a chunked
/// one is cut off by `DefaultBodyLimit` when it gets there).
async fn body_limit(
    State(max): State<usize>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > max as u64 => error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body has {n} bytes; at most {max} are accepted"),
        ),
        _ => next.run(req).await,
    }
}

/// An unknown path: the API's one error shape, naming the path.
async fn not_found(uri: axum::http::Uri) -> Response {
    error(
        StatusCode::NOT_FOUND,
        format!("no such path: {} (see docs/http-api.md)", uri.path()),
    )
}

/// Errors the framework answers itself (a body cut off at the limit, a wrong method, a
/// body that is not what the route takes) in plain text get the API's JSON shape too.
/// `/dns` keeps PowerDNS's shapes.
async fn json_errors(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let dns = req.uri().path() == "/dns";
    let r = next.run(req).await;
    let is_json = r
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if dns || is_json || !(r.status().is_client_error() || r.status().is_server_error()) {
        return r;
    }
    let status = r.status();
    let text = match axum::body::to_bytes(r.into_body(), 64 * 1024).await {
        Ok(b) if !b.is_empty() => String::from_utf8_lossy(&b).trim().to_string(),
        _ => status
            .canonical_reason()
            .unwrap_or("request refused")
            .to_string(),
    };
    error(status, text)
}

pub(crate) fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, axum::Json(json!({ "error": msg.into() }))).into_response()
}

pub(crate) fn not_for_role(node: &Node, what: &str) -> Response {
    let role = node.role().map(|r| r.short_name()).unwrap_or("none");
    error(
        StatusCode::NOT_FOUND,
        format!("{what} is not served by a {role} node"),
    )
}

/// Readiness: 200 when the node can do its job, 503 naming every part that cannot (NATS,
/// storage, the durable consumer, the timers, a node with the same ID).
async fn healthz(State(s): State<AppState>) -> Response {
    let connected = matches!(
        s.node.connection().state().state,
        StateKind::Connected | StateKind::Reconnected
    ) && s.node.connection().is_connected();
    let mut problems = s.node.health().problems();
    if !connected {
        problems.insert(
            0,
            crate::health::Problem {
                part: crate::health::Part::Nats.name(),
                detail: "disconnected from NATS; reconnecting".into(),
                since: Utc::now(),
                until: None,
            },
        );
    }
    let status = if problems.is_empty() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(json!({
            "status": if problems.is_empty() { "ok" } else { "degraded" },
            "nodeId": s.node.id().as_str(),
            "role": s.node.role().map(|r| r.short_name()),
            "nats": if connected { "connected" } else { "disconnected" },
            "server": s.node.connection().state().server,
            "version": env!("CARGO_PKG_VERSION"),
            "problems": problems,
            // Not failures of this node, but what an operator must look at.
            "warnings": s.node.security().clock_warnings(s.node.now()),
        })),
    )
        .into_response()
}

/// Liveness: 200 while the process serves HTTP at all (for restarts by a supervisor; use
/// `/healthz` to take a node out of rotation).
async fn livez() -> Response {
    axum::Json(json!({"status": "alive"})).into_response()
}

#[derive(serde::Deserialize)]
struct LimitQuery {
    limit: Option<u32>,
}

/// Every check unit with its last result, latency, next run and error.
async fn checks(State(s): State<AppState>) -> Response {
    match &s.checks {
        Some(c) => {
            let units = c.view();
            let down = units
                .iter()
                .filter(|u| u.last.as_ref().is_some_and(|l| !l.status))
                .count();
            axum::Json(json!({ "units": units.len(), "down": down, "checks": units })).into_response()
        }
        None if s.monitor.is_some() => axum::Json(json!({
            "units": 0, "down": 0, "checks": [],
            "note": "built-in checks are off: no enabled Checks in the config, or IbpNode.checks.enabled is false"
        }))
        .into_response(),
        None => not_for_role(&s.node, "/v1/checks"),
    }
}

async fn dead_letters(State(s): State<AppState>, Query(q): Query<LimitQuery>) -> Response {
    let store = match (&s.monitor, &s.dns, &s.collator) {
        (Some(m), _, _) => m.store().clone(),
        (_, Some(d), _) => d.store().clone(),
        (_, _, Some(c)) => c.store().clone(),
        _ => return not_for_role(&s.node, "/v1/dead-letters"),
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    // Counted first: a letter set aside in between then shows in the list, and the total
    // never claims letters the list lacks.
    let total = store.dead_letter_count().await;
    match (total, store.dead_letters(limit).await) {
        (Ok(total), Ok(items)) => {
            let total = total.max(items.len() as u64);
            axum::Json(json!({ "total": total, "deadLetters": items })).into_response()
        }
        (Err(e), _) | (_, Err(e)) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn cluster(State(s): State<AppState>) -> Response {
    axum::Json(s.node.cluster()).into_response()
}

async fn proposals(State(s): State<AppState>) -> Response {
    if s.node.role() == Some(Role::Dns) {
        return not_for_role(&s.node, "/v1/proposals");
    }
    axum::Json(json!({ "proposals": s.node.proposals() })).into_response()
}

fn result_rows(s: &AppState, official: bool) -> Vec<Value> {
    let rows: Vec<(CheckKey, Value)> = if official {
        s.node
            .official()
            .into_iter()
            .map(|(k, o)| {
                let v = json!({"status": o.status, "errorText": o.proposal.error_text, "data": o.proposal.data.to_value(),
                               "proposalId": o.proposal.id, "proposer": o.proposal.sender_node_id, "appliedAt": o.applied_at});
                (k, v)
            })
            .collect()
    } else {
        s.node
            .local()
            .into_iter()
            .map(|(k, l)| {
                let v = json!({"status": l.status, "errorText": l.error_text, "data": l.data.to_value(), "observedAt": l.observed_at});
                (k, v)
            })
            .collect()
    };
    rows.into_iter()
        .map(|(k, mut v)| {
            if let (Value::Object(m), Ok(Value::Object(key))) = (&mut v, serde_json::to_value(&k)) {
                m.extend(key);
            }
            v
        })
        .collect()
}

async fn official(State(s): State<AppState>) -> Response {
    if s.monitor.is_none() {
        return not_for_role(&s.node, "/v1/official");
    }
    axum::Json(json!({ "results": result_rows(&s, true) })).into_response()
}

async fn local(State(s): State<AppState>) -> Response {
    if s.monitor.is_none() {
        return not_for_role(&s.node, "/v1/local");
    }
    axum::Json(json!({ "results": result_rows(&s, false) })).into_response()
}

/// The snapshot Go DNS nodes poll: official results if there are any, else local ones.
/// The PowerDNS remote backend (dns.md §2): one JSON request in, `{"result": …}` out.
async fn dns_backend(State(s): State<AppState>, body: Bytes) -> Response {
    let Some(g) = &s.geodns else {
        return not_for_role(&s.node, "/dns");
    };
    let (status, out) = g.backend(&body).await;
    let mut r = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        out,
    )
        .into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// `/process?date=` (dns.md §2.1): flushes the usage counters now (every pending key,
/// whatever its date, as the Go node).
async fn process(
    State(s): State<AppState>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let Some(d) = &s.dns else {
        return not_for_role(&s.node, "/process");
    };
    let date = q
        .get("date")
        .cloned()
        .unwrap_or_else(|| Utc::now().format("%Y-%m-%d").to_string());
    d.flush().await;
    axum::Json(json!({
        "message": format!("Usage processing triggered for {date}"),
        "status": "success",
    }))
    .into_response()
}

/// What a DNS node answers from: zones, health freshness, overrides, counters.
async fn geodns_status(State(s): State<AppState>) -> Response {
    match &s.geodns {
        Some(g) => axum::Json(g.status()).into_response(),
        None => not_for_role(&s.node, "/v1/geodns"),
    }
}

async fn results(State(s): State<AppState>) -> Response {
    if s.monitor.is_none() {
        return not_for_role(&s.node, "/results");
    }
    let official: Vec<_> = s
        .node
        .official()
        .into_iter()
        .map(|(k, o)| {
            (
                k,
                o.status,
                o.proposal.error_text.clone(),
                o.proposal.data.clone(),
                o.applied_at,
            )
        })
        .collect();
    let (source, rows) = if !official.is_empty() {
        ("official", official)
    } else {
        let local: Vec<_> = s
            .node
            .local()
            .into_iter()
            .map(|(k, l)| (k, l.status, l.error_text, l.data, l.observed_at))
            .collect();
        if local.is_empty() {
            ("official", Vec::new())
        } else {
            ("local", local)
        }
    };
    let mut resp = axum::Json(results_snapshot(&rows)).into_response();
    resp.headers_mut()
        .insert("X-IBP-Results-Source", HeaderValue::from_static(source));
    resp
}

async fn metrics(State(s): State<AppState>) -> Response {
    s.node.refresh_metrics();
    let mut resp = s.node.metrics().encode().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}

async fn observations(State(s): State<AppState>, body: Bytes) -> Response {
    let Some(monitor) = &s.monitor else {
        return not_for_role(&s.node, "POST /v1/observations");
    };
    let parsed = parse_observations(&body);
    let batch = match parsed {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match monitor.observe(&s.node, batch).await {
        Ok(results) => {
            let rs: Vec<Value> = results
                .iter()
                .enumerate()
                .map(|(i, r)| match r.proposal_id() {
                    Some(id) => json!({"index": i, "result": r.as_str(), "proposalId": id}),
                    None => json!({"index": i, "result": r.as_str()}),
                })
                .collect();
            (StatusCode::ACCEPTED, axum::Json(json!({ "results": rs }))).into_response()
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

async fn hits(State(s): State<AppState>, body: Bytes) -> Response {
    let Some(dns) = &s.dns else {
        return not_for_role(&s.node, "POST /v1/usage/hits");
    };
    let parsed = objects(&body, "hits").and_then(|items| {
        items
            .into_iter()
            .enumerate()
            .map(|(i, m)| parse_hit(&m, &format!("hits[{i}]")))
            .collect::<Result<Vec<_>, _>>()
    });
    match parsed {
        Ok(hs) => {
            // All or nothing: a batch that might not fit is refused before any of it counts.
            if !dns.has_room(hs.len()) {
                let mut r = error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "{} usage keys are waiting for the database; retry later",
                        dns.pending_keys()
                    ),
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
                return r;
            }
            let n: i64 = hs
                .iter()
                .fold(0i64, |a, h| a.saturating_add(h.hits.unwrap_or(1)));
            for h in &hs {
                if let Err(e) = dns.record_dns_hit(h) {
                    tracing::warn!(error = %e, "hit not counted");
                }
            }
            (
                StatusCode::ACCEPTED,
                axum::Json(
                    json!({ "recorded": hs.len(), "hits": n, "pending": dns.pending_hits() }),
                ),
            )
                .into_response()
        }
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

const HIT_FIELDS: [&str; 9] = [
    "date",
    "domain",
    "member",
    "countryCode",
    "countryName",
    "asn",
    "network",
    "isIPv6",
    "hits",
];

/// A string field no longer than the usage column it ends up in.
/// Validates one hit object (each field named in errors).
pub fn parse_hit(m: &serde_json::Map<String, Value>, at: &str) -> Result<Hit, String> {
    known_fields(m, at, &HIT_FIELDS)?;
    let date = match m.get("date") {
        None | Some(Value::Null) => None,
        Some(Value::String(d)) => Some(parse_day(d, &format!("{at}.date"))?),
        Some(other) => {
            return Err(format!(
                "{at}.date: expected a YYYY-MM-DD string, got {}",
                kind(other)
            ));
        }
    };
    let hits = match m.get("hits") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => match n.as_i64() {
            Some(h) if (0..=i64::from(u32::MAX)).contains(&h) => Some(h),
            _ => {
                return Err(format!(
                    "{at}.hits: {n} is not an integer from 0 to {}",
                    u32::MAX
                ));
            }
        },
        Some(other) => {
            return Err(format!(
                "{at}.hits: expected an integer, got {}",
                kind(other)
            ));
        }
    };
    let is_ipv6 = match m.get("isIPv6") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(format!(
                "{at}.isIPv6: expected a boolean, got {}",
                kind(other)
            ));
        }
    };
    Ok(Hit {
        date,
        domain: field_str_max(m, at, "domain", true, 128)?,
        member: field_str_max(m, at, "member", false, 64)?,
        country_code: field_str_max(m, at, "countryCode", false, 2)?,
        country_name: field_str_max(m, at, "countryName", false, 64)?,
        asn: field_str_max(m, at, "asn", false, 32)?,
        network: field_str_max(m, at, "network", false, 96)?,
        is_ipv6,
        hits,
    })
}

fn body_day(m: &serde_json::Map<String, Value>, name: &str) -> Result<NaiveDate, String> {
    let s = field_str(m, "body", name, true)?;
    parse_day(&s, &format!("body.{name}"))
}

async fn collect(State(s): State<AppState>, body: Bytes) -> Response {
    let Some(collator) = &s.collator else {
        return not_for_role(&s.node, "POST /v1/usage/collect");
    };
    let range = objects(&body, "ranges").and_then(|items| {
        if items.len() != 1 {
            return Err(
                "body: expected one object {\"from\":\"YYYY-MM-DD\",\"to\":\"YYYY-MM-DD\"}"
                    .to_string(),
            );
        }
        let m = items.into_iter().next().unwrap_or_default();
        known_fields(&m, "body", &["from", "to"])?;
        let from = body_day(&m, "from")?;
        let to = body_day(&m, "to")?;
        if from > to {
            return Err(format!("body.from {from} is after body.to {to}"));
        }
        if (to - from).num_days() > 366 {
            return Err("body: at most 366 days at once".into());
        }
        Ok((from, to))
    });
    let (from, to) = match range {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match collator.collect(&s.node, from, to).await {
        Ok(report) => axum::Json(report).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e),
    }
}

/// A `from`/`to` pair, refused when reversed.
fn ordered<T: PartialOrd + std::fmt::Display>((from, to): (T, T)) -> Result<(T, T), String> {
    if from > to {
        Err(format!("from {from} is after to {to}"))
    } else {
        Ok((from, to))
    }
}

#[derive(serde::Deserialize)]
struct EventQuery {
    member: Option<String>,
    from: Option<String>,
    to: Option<String>,
    /// Page size (default 500, at most 5,000).
    limit: Option<u32>,
    /// The `next` cursor of the previous page.
    cursor: Option<String>,
}

/// `<start RFC 3339>~<id>`: the last outage of a page.
fn parse_cursor(c: &str) -> Result<(DateTime<Utc>, i64), String> {
    let (t, id) = c
        .rsplit_once('~')
        .ok_or_else(|| format!("cursor: {c:?} is not a cursor this node gave"))?;
    let t = DateTime::parse_from_rfc3339(t)
        .map_err(|_| format!("cursor: {c:?} is not a cursor this node gave"))?
        .with_timezone(&Utc);
    let id = id
        .parse()
        .map_err(|_| format!("cursor: {c:?} is not a cursor this node gave"))?;
    Ok((t, id))
}

fn parse_time(
    s: &Option<String>,
    name: &str,
    default: DateTime<Utc>,
) -> Result<DateTime<Utc>, String> {
    match s {
        None => Ok(default),
        Some(t) => ibp_wire::WireTime::parse(t)
            .map(|w| w.instant())
            .or_else(|_| {
                NaiveDate::parse_from_str(t, "%Y-%m-%d")
                    .map(|d| d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc())
            })
            .map_err(|_| format!("{name}: {t:?} is neither RFC 3339 nor YYYY-MM-DD")),
    }
}

async fn events(State(s): State<AppState>, Query(q): Query<EventQuery>) -> Response {
    let store = match (&s.monitor, &s.collator) {
        (Some(m), _) => m.store().clone(),
        (_, Some(c)) => c.store().clone(),
        _ => return not_for_role(&s.node, "/v1/events"),
    };
    let now = Utc::now();
    let range = parse_time(&q.from, "from", now - chrono::TimeDelta::days(7))
        .and_then(|f| Ok((f, parse_time(&q.to, "to", now)?)));
    let (from, to) = match range.and_then(ordered) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let after = match q.cursor.as_deref().map(parse_cursor).transpose() {
        Ok(a) => a,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let limit = q.limit.unwrap_or(500).clamp(1, 5_000);
    match store
        .events_overlapping_page(
            q.member.as_deref().filter(|m| !m.is_empty()),
            from,
            to,
            after,
            limit,
        )
        .await
    {
        Ok(evs) => {
            let next = (evs.len() as u32 == limit)
                .then(|| evs.last())
                .flatten()
                .map(|e| {
                    format!(
                        "{}~{}",
                        e.start_time
                            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                        e.id
                    )
                });
            axum::Json(json!({ "events": evs, "next": next })).into_response()
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn usage_totals(State(s): State<AppState>, Query(q): Query<EventQuery>) -> Response {
    let store = match (&s.dns, &s.collator) {
        (Some(d), _) => d.store().clone(),
        (_, Some(c)) => c.store().clone(),
        _ => return not_for_role(&s.node, "/v1/usage"),
    };
    let today = Utc::now().date_naive();
    let day = |v: &Option<String>, name: &str| -> Result<NaiveDate, String> {
        match v {
            None => Ok(today),
            Some(t) => parse_day(t, name),
        }
    };
    let range = day(&q.from, "from").and_then(|f| Ok((f, day(&q.to, "to")?)));
    let (from, to) = match range.and_then(ordered) {
        Ok(r) => r,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match store.usage_totals_by_node(from, to).await {
        Ok(t) => axum::Json(json!({ "from": from, "to": to, "hitsByNode": t.into_iter().collect::<std::collections::BTreeMap<_, _>>() })).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

/// Serves the API on `listener` until `stop` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AppState,
    stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let metrics = state.node.metrics().clone();
    let max = state.max_connections;
    serve::serve_router(listener, router(state), max, metrics, stop).await
}
