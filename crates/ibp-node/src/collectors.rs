//! Fan-out requests (protocol §6) and the answers to them.
//!
//! * [`request_all_dns_usage`] / [`request_all_monitors_downtime`] ask every active node
//!   of a role and return a [`FanoutReport`] the moment every expected node has answered
//!   (or at the timeout, with the missing nodes named).
//! * [`serve_usage`] / [`serve_downtime`] answer those requests from a store.
//! * Replies larger than the server's `max_payload` are split into parts when the
//!   requester said, with the [`ext::HDR_ACCEPT_PARTS`] header, that it understands them;
//!   a Go requester instead gets one reply whose `error` says it was too large.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::{HeaderMap, Message};
use chrono::NaiveDate;
use futures::StreamExt;
use futures::future::BoxFuture;
use ibp_wire::subjects::{self, ReplyKind};
use ibp_wire::{
    DowntimeEvent, DowntimeRequest, DowntimeResponse, Role, UsageRecord, UsageRequest,
    UsageResponse, WireDecode, ext,
};
use serde::Serialize;

use crate::cluster::Node;
use crate::connection::{BusError, Concurrency, SubscriptionHandle};

/// Answers usage requests (a DNS node's usage table).
pub trait UsageSource: Send + Sync + 'static {
    /// Usage rows for a validated request (`from` ≤ `to`). With `per_node`, rows counted
    /// under different node IDs (this node's earlier IDs) stay apart and carry their ID.
    fn usage(
        &self,
        req: UsageRequest,
        from: NaiveDate,
        to: NaiveDate,
        per_node: bool,
    ) -> BoxFuture<'static, Result<Vec<UsageRecord>, String>>;
}

/// Answers downtime requests (a monitor's outage events).
pub trait DowntimeSource: Send + Sync + 'static {
    /// Events overlapping the window, for one member or (empty name) all, each already
    /// encoded as a wire `DowntimeEvent` (a large answer is built page by page and held
    /// once).
    fn downtime(&self, req: DowntimeRequest) -> BoxFuture<'static, Result<Vec<Vec<u8>>, String>>;
}

/// Receives usage pushed on `dns.usage.usageData` (collator).
pub trait UsagePushSink: Send + Sync + 'static {
    /// One pushed response, records stamped with the sender's node ID.
    fn pushed(&self, resp: UsageResponse) -> BoxFuture<'static, ()>;
}

/// Why a fan-out could not even start.
#[derive(Debug, thiserror::Error)]
pub enum FanoutError {
    /// The request is invalid; nothing was sent.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// No active node of the role to ask.
    #[error("no active {0} node to ask")]
    NoNodes(Role),
    /// The node has no role enabled (it does not know the cluster).
    #[error("enable a role on this node first: the fan-out needs the cluster view")]
    NotEnabled,
    /// Publishing or subscribing failed.
    #[error(transparent)]
    Bus(#[from] BusError),
}

impl FanoutError {
    /// A short kind name, for logs and HTTP answers.
    pub fn kind(&self) -> &'static str {
        match self {
            FanoutError::InvalidRequest(_) => "invalid_request",
            FanoutError::NoNodes(_) => "no_nodes",
            FanoutError::NotEnabled => "not_enabled",
            FanoutError::Bus(_) => "bus",
        }
    }
}

/// The result of a fan-out. Partial results are results.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FanoutReport<T> {
    /// Every record, per node, in arrival order (not merged).
    pub records: Vec<T>,
    /// Nodes that answered completely, sorted.
    pub answered: Vec<String>,
    /// Nodes that were expected but did not answer (completely), sorted.
    pub missing: Vec<String>,
    /// Errors reported by nodes in their answers.
    pub errors: BTreeMap<String, String>,
    /// Nodes whose multi-part answer was incomplete at the end: what was missing.
    pub incomplete: BTreeMap<String, String>,
    /// Number of nodes asked.
    pub expected: usize,
    /// Time to the result (`elapsedMs` in JSON).
    #[serde(with = "duration_ms", rename = "elapsedMs")]
    pub elapsed: Duration,
    /// Payload bytes received.
    pub bytes: usize,
    /// Whether every expected node answered completely and without an error.
    pub complete: bool,
}

mod duration_ms {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64() * 1000.0)
    }
}

/// The two fan-outs differ only in their types and subjects.
trait Kind: Send + 'static {
    type Req: Serialize + Send + Sync;
    type Resp: WireDecode + Serialize + Send;
    type Item: Serialize + Clone + Send;
    const ROLE: Role;
    const SUBJECT: &'static str;
    const REPLY: ReplyKind;
    const NAME: &'static str;
    /// The JSON key of the item list in the response.
    const ITEMS_KEY: &'static str;
    fn split(resp: Self::Resp) -> (String, Vec<Self::Item>, String);
    #[cfg(test)]
    fn build(node_id: &str, items: Vec<Self::Item>, error: String) -> Self::Resp;
    /// Attributes an item to the node that answered. `others` are the other active nodes
    /// of the role.
    fn stamp(_item: &mut Self::Item, _node_id: &str, _others: &BTreeSet<String>) {}
}

struct Usage;
struct Downtime;

impl Kind for Usage {
    type Req = UsageRequest;
    type Resp = UsageResponse;
    type Item = UsageRecord;
    const ROLE: Role = Role::Dns;
    const SUBJECT: &'static str = subjects::USAGE_GET;
    const REPLY: ReplyKind = ReplyKind::Usage;
    const NAME: &'static str = "usage";
    const ITEMS_KEY: &'static str = "usageRecords";
    fn split(r: UsageResponse) -> (String, Vec<UsageRecord>, String) {
        (r.node_id, r.usage_records, r.error)
    }
    #[cfg(test)]
    fn build(node_id: &str, items: Vec<UsageRecord>, error: String) -> UsageResponse {
        UsageResponse {
            node_id: node_id.to_string(),
            usage_records: items,
            error,
        }
    }
    /// A record keeps the ID it was counted under when it names one (a DNS node whose ID
    /// changed answers its old rows under the old ID), unless that is another live DNS
    /// node's ID: no node may write rows in another's name. Go DNS nodes leave it empty.
    fn stamp(item: &mut UsageRecord, node_id: &str, others: &BTreeSet<String>) {
        if item.node_id.is_empty() || others.contains(&item.node_id) {
            item.node_id = node_id.to_string();
        }
    }
}

impl Kind for Downtime {
    type Req = DowntimeRequest;
    type Resp = DowntimeResponse;
    type Item = DowntimeEvent;
    const ROLE: Role = Role::Monitor;
    const SUBJECT: &'static str = subjects::DOWNTIME_GET;
    const REPLY: ReplyKind = ReplyKind::Downtime;
    const NAME: &'static str = "downtime";
    const ITEMS_KEY: &'static str = "events";
    fn split(r: DowntimeResponse) -> (String, Vec<DowntimeEvent>, String) {
        (r.node_id, r.events, r.error)
    }
    #[cfg(test)]
    fn build(node_id: &str, items: Vec<DowntimeEvent>, error: String) -> DowntimeResponse {
        DowntimeResponse {
            node_id: node_id.to_string(),
            events: items,
            error,
        }
    }
}

/// Asks every active DNS node for usage. Validates the request first (both dates
/// `YYYY-MM-DD`, start ≤ end). Every record is stamped with its responder's node ID.
pub async fn request_all_dns_usage(
    node: &Node,
    req: &UsageRequest,
    timeout: Duration,
) -> Result<FanoutReport<UsageRecord>, FanoutError> {
    req.date_range().map_err(FanoutError::InvalidRequest)?;
    fan_out::<Usage>(node, req, timeout).await
}

/// Asks every active monitor for downtime events overlapping the window.
pub async fn request_all_monitors_downtime(
    node: &Node,
    req: &DowntimeRequest,
    timeout: Duration,
) -> Result<FanoutReport<DowntimeEvent>, FanoutError> {
    if req.start_time.is_zero() || req.end_time.is_zero() {
        return Err(FanoutError::InvalidRequest(
            "startTime and endTime are both required".into(),
        ));
    }
    if req.start_time.instant() > req.end_time.instant() {
        return Err(FanoutError::InvalidRequest(format!(
            "startTime {} is after endTime {}",
            req.start_time, req.end_time
        )));
    }
    fan_out::<Downtime>(node, req, timeout).await
}

#[derive(Default)]
struct Assembly<T> {
    parts: BTreeMap<u32, Vec<T>>,
    count: u32,
    answer_id: String,
}

/// Longest date range a DNS node answers in one usage request.
const MAX_USAGE_DAYS: i64 = 366;

/// Most parts one answer may announce (a 100 GB reply at 1 MB per part).
const MAX_PARTS: u32 = 100_000;

async fn fan_out<K: Kind>(
    node: &Node,
    req: &K::Req,
    timeout: Duration,
) -> Result<FanoutReport<K::Item>, FanoutError> {
    if node.role().is_none() {
        return Err(FanoutError::NotEnabled);
    }
    let expected: BTreeSet<String> = node
        .active_ids(K::ROLE)
        .into_iter()
        .filter(|id| id != node.id().as_str())
        .collect();
    if expected.is_empty() {
        return Err(FanoutError::NoNodes(K::ROLE));
    }
    let started = Instant::now();
    let conn = node.connection();
    let nanos = node
        .now()
        .timestamp_nanos_opt()
        .map(i128::from)
        .unwrap_or_default();
    let inbox = subjects::reply_inbox(node.id().as_str(), K::REPLY, nanos);
    let mut sub = conn
        .client()
        .subscribe(inbox.clone())
        .await
        .map_err(|e| BusError::new("subscribe", &inbox, e))?;
    let payload = ibp_wire::encode(req).map_err(|e| FanoutError::InvalidRequest(e.to_string()))?;
    let mut headers = HeaderMap::new();
    headers.insert(ext::HDR_ACCEPT_PARTS, "1");
    headers.insert(ext::HDR_USAGE_PER_NODE, "1");
    conn.publish_request(K::SUBJECT, &inbox, headers, payload.into())
        .await?;

    let mut assembling: BTreeMap<String, Assembly<K::Item>> = BTreeMap::new();
    let mut done: BTreeSet<String> = BTreeSet::new();
    let mut errors = BTreeMap::new();
    let mut bytes = 0usize;
    let deadline = tokio::time::Instant::now() + timeout;
    while !expected.iter().all(|id| done.contains(id)) {
        let msg = match tokio::time::timeout_at(deadline, sub.next()).await {
            Ok(Some(m)) => m,
            Ok(None) | Err(_) => break,
        };
        conn.metrics().received(&inbox);
        bytes += msg.payload.len();
        let resp = match ibp_wire::decode::<K::Resp>(&msg.payload) {
            Ok(r) => r,
            Err(e) => {
                conn.metrics().decode_failed(&inbox);
                tracing::warn!(kind = K::NAME, error = %e, "undecodable fan-out reply dropped");
                continue;
            }
        };
        let (mut from, mut items, error) = K::split(resp);
        if from.is_empty() {
            from = header(&msg, ext::HDR_NODE).unwrap_or_default();
        }
        if from.is_empty() {
            // Not an answer: e.g. the acknowledgement of a JetStream stream that captures
            // the request subject.
            node.metrics().ignore("fanout_reply_without_node");
            continue;
        }
        if done.contains(&from) {
            continue;
        }
        // Only nodes of the role are listened to: anything else on the inbox could grow
        // this fan-out's memory until the timeout.
        if !expected.contains(&from) && !node.active_ids(K::ROLE).contains(&from) {
            tracing::warn!(kind = K::NAME, from = %from, "reply from a node that is not an active {} ignored", K::ROLE.short_name());
            continue;
        }
        let (index, count) = match header(&msg, ext::HDR_PART) {
            None => (1, 1),
            Some(v) => match ext::parse_part(&v).filter(|(_, n)| *n <= MAX_PARTS) {
                Some(p) => p,
                None => {
                    conn.metrics().decode_failed(&inbox);
                    tracing::warn!(kind = K::NAME, from = %from, header = %v, "reply part with a bad Ibp-Part header dropped");
                    continue;
                }
            },
        };
        let answer_id = header(&msg, ext::HDR_REPLY_ID).unwrap_or_default();
        let a = assembling.entry(from.clone()).or_insert_with(|| Assembly {
            parts: BTreeMap::new(),
            count,
            answer_id: answer_id.clone(),
        });
        // A node that answered twice: keep the parts of its first answer only.
        if a.answer_id != answer_id || a.count != count {
            continue;
        }
        node.heard(&from);
        if !error.is_empty() {
            errors.insert(from.clone(), error);
        }
        let others: BTreeSet<String> = node
            .active_ids(K::ROLE)
            .into_iter()
            .filter(|id| *id != from)
            .collect();
        for it in &mut items {
            K::stamp(it, &from, &others);
        }
        a.parts.entry(index).or_insert(items);
        if a.parts.len() as u32 >= a.count {
            done.insert(from);
        }
    }
    drop(sub);
    let elapsed = started.elapsed();
    conn.metrics().fanout(K::NAME, elapsed);

    let mut records = Vec::new();
    let mut incomplete = BTreeMap::new();
    for (id, a) in assembling {
        let complete = a.parts.len() as u32 >= a.count;
        if !complete {
            incomplete.insert(
                id.clone(),
                format!("received {} of {} parts", a.parts.len(), a.count),
            );
        }
        for (_, items) in a.parts {
            records.extend(items);
        }
    }
    let answered: Vec<String> = done.iter().cloned().collect();
    let missing: Vec<String> = expected
        .iter()
        .filter(|id| !done.contains(*id))
        .cloned()
        .collect();
    let complete = missing.is_empty() && errors.is_empty();
    if !complete {
        tracing::warn!(kind = K::NAME, missing = ?missing, errors = errors.len(), answered = answered.len(), "fan-out finished with missing or failed nodes");
    }
    Ok(FanoutReport {
        records,
        answered,
        missing,
        errors,
        incomplete,
        expected: expected.len(),
        elapsed,
        bytes,
        complete,
    })
}

fn header(msg: &Message, name: &str) -> Option<String> {
    msg.headers
        .as_ref()?
        .get(name)
        .map(|v| v.as_str().to_string())
}

/// Merges records of all nodes by (day, domain, member, country, ASN, network, family),
/// summing hits, for callers that want totals. Records with an unparseable date are
/// skipped. The result has empty node IDs and RFC 3339 midnight dates, sorted by key.
pub fn aggregate_usage(records: &[UsageRecord]) -> Vec<UsageRecord> {
    type Key = (NaiveDate, String, String, String, String, String, bool);
    let mut sums: BTreeMap<Key, UsageRecord> = BTreeMap::new();
    for r in records {
        let Ok(day) = r.day() else { continue };
        let key = (
            day,
            r.domain.clone(),
            r.member_name.clone(),
            r.country_code.clone(),
            r.asn.clone(),
            r.network_name.clone(),
            r.is_ipv6,
        );
        sums.entry(key)
            .and_modify(|s| s.hits = s.hits.saturating_add(r.hits))
            .or_insert_with(|| UsageRecord {
                node_id: String::new(),
                date: UsageRecord::format_day(day),
                ..r.clone()
            });
    }
    sums.into_values().collect()
}

// ----- answering -------------------------------------------------------------------------

/// Encodes items one by one, each freed as soon as it is encoded.
fn encode_all<T: Serialize>(items: Vec<T>) -> Result<Vec<Vec<u8>>, String> {
    items
        .into_iter()
        .map(|i| ibp_wire::encode(&i).map_err(|e| e.to_string()))
        .collect()
}

/// Sends already-encoded items as the answer to `msg`: one reply when it fits the server's
/// `max_payload`; otherwise parts if the requester accepts them, or an error reply. Each
/// item is moved into the reply that carries it, so a large answer is held once, not twice.
async fn answer<K: Kind>(
    node: &Node,
    reply: &str,
    accepts_parts: bool,
    encoded: Result<Vec<Vec<u8>>, String>,
    error: String,
) {
    let conn = node.connection();
    let me = node.id().as_str();
    // Headers and protocol overhead also count against max_payload.
    let limit = conn.max_payload().saturating_sub(4096).max(1024);
    let mut encoded = match encoded {
        Ok(e) => e,
        Err(e) => {
            tracing::error!(kind = K::NAME, error = %e, "cannot encode reply; answering with the error");
            let _ = conn
                .publish_bytes(
                    reply,
                    assemble::<K>(me, Vec::new(), &format!("cannot encode the reply: {e}")).into(),
                )
                .await;
            return;
        }
    };
    let records = encoded.len();
    let empty = assemble::<K>(me, Vec::new(), &error).len();
    let total: usize = encoded.iter().map(|e| e.len() + 1).sum::<usize>() + empty;
    if total <= limit {
        let whole = assemble::<K>(me, encoded, &error);
        let r = if accepts_parts {
            let mut h = HeaderMap::new();
            h.insert(ext::HDR_NODE, me);
            conn.publish_with_headers(reply, h, whole.into()).await
        } else {
            conn.publish_bytes(reply, whole.into()).await
        };
        if let Err(e) = r {
            tracing::warn!(kind = K::NAME, error = %e, "reply not sent");
        }
        return;
    }
    if !accepts_parts {
        drop(encoded);
        node.metrics().replies_too_large.inc();
        let msg = format!(
            "reply of {total} bytes ({records} records) exceeds the server's max_payload of {} bytes; narrow the request or ask with the {} header",
            conn.max_payload(),
            ext::HDR_ACCEPT_PARTS
        );
        tracing::warn!(
            kind = K::NAME,
            bytes = total,
            max_payload = conn.max_payload(),
            "reply too large for a requester without parts support; answering with an error"
        );
        let _ = conn
            .publish_bytes(reply, assemble::<K>(me, Vec::new(), &msg).into())
            .await;
        return;
    }
    // Pack records greedily into parts that each fit.
    let overhead = empty + 16;
    if let Some(big) = encoded
        .iter()
        .map(Vec::len)
        .max()
        .filter(|n| overhead + n > limit)
    {
        drop(encoded);
        node.metrics().replies_too_large.inc();
        let msg = format!(
            "a single record of {big} bytes exceeds the server's max_payload of {} bytes",
            conn.max_payload()
        );
        tracing::error!(kind = K::NAME, bytes = big, "{msg}");
        let _ = conn
            .publish_bytes(reply, assemble::<K>(me, Vec::new(), &msg).into())
            .await;
        return;
    }
    let answer_id = uuid::Uuid::new_v4().simple().to_string();
    let mut sizes: Vec<usize> = Vec::new();
    let (mut start, mut size) = (0, overhead);
    for (i, e) in encoded.iter().enumerate() {
        let n = e.len() + 1;
        if i > start && size + n > limit {
            sizes.push(i - start);
            start = i;
            size = overhead;
        }
        size += n;
    }
    sizes.push(encoded.len() - start);
    let count = sizes.len();
    // Parts are taken from the back, so each is moved out without shifting the rest.
    let mut bodies = Vec::with_capacity(count);
    for (i, n) in sizes.iter().enumerate().rev() {
        let items = encoded.split_off(encoded.len() - n);
        // The error, if any, travels with the first part only.
        let err = if i == 0 { error.as_str() } else { "" };
        bodies.push(assemble::<K>(me, items, err));
    }
    bodies.reverse();
    for (i, body) in bodies.into_iter().enumerate() {
        let mut h = HeaderMap::new();
        h.insert(ext::HDR_NODE, me);
        h.insert(ext::HDR_REPLY_ID, answer_id.as_str());
        h.insert(ext::HDR_PART, format!("{}/{count}", i + 1).as_str());
        if conn
            .publish_with_headers(reply, h, body.into())
            .await
            .is_ok()
        {
            node.metrics().reply_parts_sent.inc();
        }
    }
}

/// The bytes `ibp_wire::encode(&K::build(node, items, error))` would give, from items
/// already encoded (so a large reply is encoded once, whether whole or in parts).
fn assemble<K: Kind>(node: &str, items: Vec<Vec<u8>>, error: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        96 + node.len() + error.len() + items.iter().map(|e| e.len() + 1).sum::<usize>(),
    );
    out.extend_from_slice(b"{\"nodeID\":");
    out.extend(ibp_wire::encode(node).unwrap_or_else(|_| b"\"\"".to_vec()));
    out.extend_from_slice(b",\"");
    out.extend_from_slice(K::ITEMS_KEY.as_bytes());
    out.extend_from_slice(b"\":");
    if items.is_empty() {
        out.extend_from_slice(b"null");
    } else {
        out.push(b'[');
        for (i, e) in items.into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&e);
        }
        out.push(b']');
    }
    if !error.is_empty() {
        out.extend_from_slice(b",\"error\":");
        out.extend(ibp_wire::encode(error).unwrap_or_else(|_| b"\"\"".to_vec()));
    }
    out.push(b'}');
    out
}

fn accepts_parts(msg: &Message) -> bool {
    header(msg, ext::HDR_ACCEPT_PARTS).is_some_and(|v| v.trim() == "1")
}

/// DNS: answers `dns.usage.getUsage` from `source`. Errors (undecodable request, bad
/// dates, store failure, no store) are answered in the `error` field, never with silence.
/// A request without a reply subject is answered on `dns.usage.usageData`.
pub async fn serve_usage(
    node: Node,
    source: Option<Arc<dyn UsageSource>>,
) -> Result<SubscriptionHandle, BusError> {
    let n = node.clone();
    node.connection()
        .subscribe(subjects::USAGE_GET, Concurrency::default(), move |msg| {
            let node = n.clone();
            let source = source.clone();
            async move {
                let reply = msg
                    .reply
                    .as_ref()
                    .map(|r| r.to_string())
                    .unwrap_or_else(|| subjects::USAGE_DATA.to_string());
                let parts = accepts_parts(&msg);
                let per_node =
                    header(&msg, ext::HDR_USAGE_PER_NODE).is_some_and(|v| v.trim() == "1");
                let result = match ibp_wire::decode::<UsageRequest>(&msg.payload) {
                    Err(e) => {
                        node.metrics().decode_failed(subjects::USAGE_GET);
                        Err(format!("cannot decode the usage request: {e}"))
                    }
                    Ok(req) => match (req.date_range(), &source) {
                        (Err(e), _) => Err(e),
                        // Any client on the bus can ask; a whole table at once is refused.
                        (Ok((from, to)), _) if (to - from).num_days() > MAX_USAGE_DAYS => {
                            Err(format!(
                                "at most {MAX_USAGE_DAYS} days per request (asked {from} to {to})"
                            ))
                        }
                        (Ok(_), None) => Err("this node has no usage store".to_string()),
                        (Ok((from, to)), Some(s)) => s.usage(req, from, to, per_node).await,
                    },
                };
                let me = node.id().to_string();
                let (mut items, error) = match result {
                    Ok(items) => (items, String::new()),
                    Err(e) => {
                        tracing::warn!(error = %e, "usage request answered with an error");
                        (Vec::new(), e)
                    }
                };
                // Rows keep the ID they were counted under (a requester that asked per
                // node); the rest, as Go DNS nodes leave them, are this node's.
                for it in &mut items {
                    if !per_node || it.node_id.is_empty() {
                        it.node_id = me.clone();
                    }
                }
                answer::<Usage>(&node, &reply, parts, encode_all(items), error).await;
            }
        })
        .await
}

/// Monitor: answers `monitor.stats.getDowntime` from `source`. A request without a reply
/// subject is ignored (as in Go), but counted and logged.
pub async fn serve_downtime(
    node: Node,
    source: Option<Arc<dyn DowntimeSource>>,
) -> Result<SubscriptionHandle, BusError> {
    let n = node.clone();
    node.connection()
        .subscribe(subjects::DOWNTIME_GET, Concurrency::default(), move |msg| {
            let node = n.clone();
            let source = source.clone();
            async move {
                let Some(reply) = msg.reply.as_ref().map(|r| r.to_string()) else {
                    node.metrics().decode_failed(subjects::DOWNTIME_GET);
                    tracing::warn!("downtime request without a reply subject ignored");
                    return;
                };
                let parts = accepts_parts(&msg);
                let result = match ibp_wire::decode::<DowntimeRequest>(&msg.payload) {
                    Err(e) => {
                        node.metrics().decode_failed(subjects::DOWNTIME_GET);
                        Err(format!("cannot decode the downtime request: {e}"))
                    }
                    Ok(req) if req.start_time.instant() > req.end_time.instant() => Err(format!(
                        "startTime {} is after endTime {}",
                        req.start_time, req.end_time
                    )),
                    Ok(req) => match &source {
                        None => Err("this node has no event store".to_string()),
                        Some(s) => s.downtime(req).await,
                    },
                };
                let (items, error) = match result {
                    Ok(items) => (items, String::new()),
                    Err(e) => (Vec::new(), e),
                };
                answer::<Downtime>(&node, &reply, parts, Ok(items), error).await;
            }
        })
        .await
}

/// Collator: receives usage pushed on `dns.usage.usageData`.
pub async fn receive_usage_pushes(
    node: Node,
    sink: Option<Arc<dyn UsagePushSink>>,
) -> Result<SubscriptionHandle, BusError> {
    let n = node.clone();
    node.connection()
        .subscribe_decoded::<UsageResponse, _, _>(
            subjects::USAGE_DATA,
            Concurrency::Sequential,
            move |mut resp, _msg| {
                let node = n.clone();
                let sink = sink.clone();
                async move {
                    node.heard(&resp.node_id);
                    let id = resp.node_id.clone();
                    for r in &mut resp.usage_records {
                        r.node_id = id.clone();
                    }
                    match sink {
                        Some(s) => s.pushed(resp).await,
                        None => tracing::debug!(from = %id, "usage push ignored: no usage store"),
                    }
                }
            },
        )
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check<K: Kind>(node: &str, items: Vec<K::Item>, error: &str) {
        let encoded: Vec<Vec<u8>> = items
            .iter()
            .map(|i| ibp_wire::encode(i).expect("encodes"))
            .collect();
        let want = ibp_wire::encode(&K::build(node, items, error.to_string())).expect("encodes");
        assert_eq!(
            String::from_utf8_lossy(&assemble::<K>(node, encoded, error)),
            String::from_utf8_lossy(&want)
        );
    }

    #[test]
    fn assembled_replies_equal_the_encoded_response() {
        let rec = UsageRecord {
            node_id: "d<1>".into(),
            date: "2026-11-20T00:00:00Z".into(),
            hits: 3,
            ..UsageRecord::default()
        };
        check::<Usage>("dns-1", vec![], "");
        check::<Usage>("dns-1", vec![rec.clone()], "");
        check::<Usage>("dns-&", vec![rec.clone(), rec], "bad \"date\"");
        let ev = DowntimeEvent {
            member_name: "m".into(),
            check_type: "site".into(),
            ..DowntimeEvent::default()
        };
        check::<Downtime>("monitor-1", vec![ev.clone(), ev], "");
        check::<Downtime>("monitor-1", vec![], "no store");
    }
}
