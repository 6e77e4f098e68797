//! The collator's durable decisions: `consensus.finalize` captured by a JetStream stream and
//! read with a durable pull consumer, each message acknowledged only after its decision is
//! committed. A collator that was down records what it missed when it comes back.
//!
//! This speaks the JetStream JSON API directly instead of through async-nats's `jetstream`
//! module, for one reason seen in the field: operators capture the whole bus with a stream
//! on `>`. Such a stream also captures every JetStream API request and answers it with a
//! publish acknowledgement, which races the real answer to the requester's inbox (the
//! library takes the first reply and fails to parse it). Here every API answer is told
//! apart by its `type`, acknowledgements of such a stream are ignored and counted, and a
//! stream that already captures `consensus.finalize` is consumed instead of a second,
//! overlapping one being refused.
//!
//! The consumer is supervised: errors are logged, reported in `/healthz` and retried with
//! backoff; it never ends before shutdown. A message delivered `max_deliver` times that
//! still cannot be recorded is set aside (dead-letter table and the
//! [`DEAD_LETTER_SUBJECT`]) and terminated, so one poison message cannot stall the stream.

use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{FutureExt, StreamExt};
use ibp_core::Decision;
use ibp_wire::{FinalizeMessage, subjects};
use serde_json::{Value, json};

use crate::cluster::Node;
use crate::health::Part;
use crate::roles::{CollatorService, WriteOutcome};

/// The stream this project creates when none captures `consensus.finalize` yet.
pub const FINALIZE_STREAM: &str = "IBP_FINALIZE";

/// Where finalizes go that could not be recorded after every delivery attempt.
pub const DEAD_LETTER_SUBJECT: &str = "ibp.ext.deadletter.consensus.finalize";

/// Settings of the durable consumer.
#[derive(Debug, Clone)]
pub struct DurableOptions {
    /// Durable consumer name (unique per collator).
    pub durable: String,
    /// Deliveries of one message before it is set aside.
    pub max_deliver: u32,
    /// How long the server waits for an acknowledgement before redelivering.
    pub ack_wait: Duration,
    /// Retention of the stream this project creates.
    pub max_age: Duration,
    /// Enforce mode: the stream keeps the votes too, and every message is checked for
    /// signature and trust (aged by the time the server stored it).
    pub signed: bool,
}

impl DurableOptions {
    /// The consumer's name: enforce mode has its own (it takes votes as well, which an
    /// existing finalize-only consumer cannot be changed to).
    pub fn consumer_name(&self) -> String {
        if self.signed {
            format!("{}-signed", self.durable)
        } else {
            self.durable.clone()
        }
    }

    /// Defaults for the collator `node_id`.
    pub fn for_node(node_id: &str) -> DurableOptions {
        DurableOptions {
            durable: format!("ibp-collator-{node_id}"),
            max_deliver: 10,
            ack_wait: Duration::from_secs(60),
            max_age: Duration::from_secs(7 * 24 * 3600),
            signed: false,
        }
    }
}

/// A JetStream API failure.
#[derive(Debug, thiserror::Error)]
pub enum JsError {
    /// Nobody answers the API: JetStream is not enabled on the server (or account).
    #[error("JetStream is not enabled on the server (no responders on {0})")]
    NotEnabled(String),
    /// No answer in time.
    #[error("no JetStream answer on {0} within {1:?}")]
    Timeout(String, Duration),
    /// The API answered with an error.
    #[error("JetStream {subject}: {description} (code {code}, err_code {err_code})")]
    Api {
        /// The API subject.
        subject: String,
        /// HTTP-like code.
        code: i64,
        /// JetStream error code.
        err_code: i64,
        /// Description.
        description: String,
    },
    /// Publishing or subscribing failed.
    #[error("{0}")]
    Bus(String),
}

impl JsError {
    fn err_code(&self) -> Option<i64> {
        match self {
            JsError::Api { err_code, .. } => Some(*err_code),
            _ => None,
        }
    }
}

/// One JetStream API call: publishes `body` on `subject` and waits for the answer, telling
/// it apart from publish acknowledgements of a stream that captures API subjects.
async fn api(node: &Node, subject: &str, body: Value) -> Result<Value, JsError> {
    let client = node.connection().client();
    let inbox = client.new_inbox();
    let mut sub = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| JsError::Bus(e.to_string()))?;
    client
        .publish_with_reply(subject.to_string(), inbox, Bytes::from(body.to_string()))
        .await
        .map_err(|e| JsError::Bus(e.to_string()))?;
    let timeout = Duration::from_secs(5);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let msg = match tokio::time::timeout_at(deadline, sub.next()).await {
            Ok(Some(m)) => m,
            Ok(None) => return Err(JsError::Bus("subscription closed".into())),
            Err(_) => return Err(JsError::Timeout(subject.to_string(), timeout)),
        };
        if msg.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
            return Err(JsError::NotEnabled(subject.to_string()));
        }
        let Ok(v) = serde_json::from_slice::<Value>(&msg.payload) else {
            node.metrics().ignore("jetstream_api_noise");
            continue;
        };
        if !v
            .get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| t.starts_with("io.nats.jetstream.api."))
        {
            // A publish acknowledgement ({"stream":…,"seq":…}) of a stream capturing `>`.
            node.metrics().ignore("jetstream_api_noise");
            continue;
        }
        if let Some(e) = v.get("error") {
            return Err(JsError::Api {
                subject: subject.to_string(),
                code: e.get("code").and_then(Value::as_i64).unwrap_or(0),
                err_code: e.get("err_code").and_then(Value::as_i64).unwrap_or(0),
                description: e
                    .get("description")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string(),
            });
        }
        return Ok(v);
    }
}

/// The stream capturing `subject`, if any.
async fn stream_of(node: &Node, subject: &str) -> Result<Option<String>, JsError> {
    let names = api(node, "$JS.API.STREAM.NAMES", json!({ "subject": subject })).await?;
    Ok(names
        .get("streams")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(Value::as_str)
        .map(str::to_string))
}

/// Finds the stream that captures `consensus.finalize` (and, signed, `consensus.vote`),
/// creating [`FINALIZE_STREAM`] when none does, or adding the votes to it. Returns its name.
pub async fn ensure_stream(node: &Node, opts: &DurableOptions) -> Result<String, JsError> {
    let mut wanted = vec![subjects::FINALIZE];
    if opts.signed {
        wanted.push(subjects::VOTE);
    }
    if let Some(name) = stream_of(node, subjects::FINALIZE).await? {
        if name != FINALIZE_STREAM {
            tracing::warn!(
                stream = %name,
                "consensus.finalize is already captured by another stream; consuming from it (its retention decides what a restarted collator can catch up on)"
            );
        }
        if opts.signed {
            match stream_of(node, subjects::VOTE).await? {
                Some(v) if v == name => {}
                None if name == FINALIZE_STREAM => {
                    // Ours: add the votes (enforce mode needs them to check finalizes).
                    let info = api(node, &format!("$JS.API.STREAM.INFO.{name}"), json!({})).await?;
                    let mut config = info.get("config").cloned().unwrap_or_else(|| json!({}));
                    config["subjects"] = json!(wanted);
                    api(node, &format!("$JS.API.STREAM.UPDATE.{name}"), config).await?;
                    tracing::info!(stream = %name, "the stream now keeps consensus.vote as well (enforce mode)");
                }
                other => {
                    return Err(JsError::Bus(format!(
                        "enforce mode needs consensus.vote in the stream that captures consensus.finalize ({name}), but it is {}: add consensus.vote to {name}",
                        other
                            .map(|o| format!("captured by {o}"))
                            .unwrap_or_else(|| "not captured".into())
                    )));
                }
            }
        }
        return Ok(name);
    }
    let subject = format!("$JS.API.STREAM.CREATE.{FINALIZE_STREAM}");
    let r = api(
        node,
        &subject,
        json!({
            "name": FINALIZE_STREAM,
            "subjects": wanted,
            "retention": "limits",
            "max_consumers": -1,
            "max_msgs": -1,
            "max_bytes": -1,
            "max_age": nanos(opts.max_age),
            "max_msgs_per_subject": -1,
            "max_msg_size": -1,
            "discard": "old",
            "storage": "file",
            "num_replicas": 1,
            "duplicate_window": nanos(Duration::from_secs(120)),
        }),
    )
    .await;
    match r {
        Ok(_) => Ok(FINALIZE_STREAM.to_string()),
        // Created meanwhile by another collator.
        Err(e) if e.err_code() == Some(10058) => Ok(FINALIZE_STREAM.to_string()),
        Err(e) => Err(e),
    }
}

/// Creates (or updates) the durable pull consumer on `stream`.
pub async fn ensure_consumer(
    node: &Node,
    stream: &str,
    opts: &DurableOptions,
) -> Result<(), JsError> {
    let name = opts.consumer_name();
    // Signed, the votes come too; `consensus.>` is one filter NATS 2.9 can take, and what
    // else it lets through (a stream on `>`) is acknowledged and skipped.
    let filter = if opts.signed {
        "consensus.>"
    } else {
        subjects::FINALIZE
    };
    let config = json!({
        "durable_name": name,
        "deliver_policy": "all",
        "ack_policy": "explicit",
        "ack_wait": nanos(opts.ack_wait),
        "max_deliver": opts.max_deliver,
        "filter_subject": filter,
        "replay_policy": "instant",
        "max_ack_pending": 1000,
        "max_waiting": 512,
    });
    let subject = format!("$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{name}");
    match api(
        node,
        &subject,
        json!({ "stream_name": stream, "config": config }),
    )
    .await
    {
        Ok(_) => Ok(()),
        Err(e @ JsError::Api { .. }) => {
            // An existing consumer whose settings cannot be changed in place is used as it is.
            let info = format!("$JS.API.CONSUMER.INFO.{stream}.{name}");
            match api(node, &info, json!({})).await {
                Ok(_) => {
                    tracing::warn!(error = %e, consumer = %name, "the durable consumer exists with other settings; using it as it is");
                    Ok(())
                }
                Err(_) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// What the `$JS.ACK…` reply subject of a delivered message says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// How many times this message has been delivered (1 the first time).
    pub delivered: u64,
    /// Its sequence in the stream.
    pub stream_seq: u64,
    /// When the server stored it.
    pub stored_at: DateTime<Utc>,
}

/// Parses a JetStream ack subject (both the v1 form with 9 tokens and the v2 form with the
/// domain and account hash).
pub fn parse_ack_subject(reply: &str) -> Option<Delivery> {
    let t: Vec<&str> = reply.split('.').collect();
    if t.len() < 9 || t[0] != "$JS" || t[1] != "ACK" {
        return None;
    }
    let (delivered, sseq, ts) = if t.len() == 9 {
        (t[4], t[5], t[7])
    } else if t.len() >= 11 {
        (t[6], t[7], t[9])
    } else {
        return None;
    };
    let ts: i64 = ts.parse().ok()?;
    Some(Delivery {
        delivered: delivered.parse().ok()?,
        stream_seq: sseq.parse().ok()?,
        stored_at: DateTime::from_timestamp_nanos(ts),
    })
}

/// Sets up the stream and the consumer before the node takes part: a finalize published
/// before the stream exists would never be captured. Retried for about a minute on errors a
/// retry can cure; JetStream being off on the server is reported at once.
pub async fn setup(node: &Node, opts: &DurableOptions) -> Result<String, JsError> {
    let mut delay = Duration::from_millis(250);
    let mut attempt = 1;
    loop {
        let r = async {
            let stream = ensure_stream(node, opts).await?;
            ensure_consumer(node, &stream, opts).await?;
            Ok::<String, JsError>(stream)
        }
        .await;
        match r {
            Ok(stream) => return Ok(stream),
            Err(e @ JsError::NotEnabled(_)) => return Err(e),
            Err(e) if attempt >= 12 => return Err(e),
            Err(e) => {
                tracing::warn!(error = %e, attempt, retry_in = ?delay, "JetStream not ready yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(8));
                attempt += 1;
            }
        }
    }
}

/// Runs the durable consumer until `stop` fires, recreating what it needs after any error.
/// A message being handled when `stop` fires is finished (recorded and acknowledged);
/// messages delivered but not handled yet are given back at once (NAK), not left to the
/// acknowledgement timeout.
pub async fn run(
    collator: CollatorService,
    node: Node,
    opts: DurableOptions,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut backoff = Duration::from_millis(500);
    while !*stop.borrow() {
        match consume(&collator, &node, &opts, &mut backoff, &mut stop).await {
            Ok(()) => break,
            Err(e) => {
                node.metrics().ignore("jetstream_consumer_error");
                node.health().fail(Part::JetStream, e.to_string());
                tracing::warn!(error = %e, retry_in = ?backoff, "durable decision consumer failed; retrying");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = stop.changed() => break,
        }
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
    tracing::debug!("durable decision consumer stopped");
}

/// One life of the consumer: set up, then pull until an error or `stop`.
async fn consume(
    collator: &CollatorService,
    node: &Node,
    opts: &DurableOptions,
    backoff: &mut Duration,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<(), JsError> {
    let stream = ensure_stream(node, opts).await?;
    ensure_consumer(node, &stream, opts).await?;
    tracing::info!(stream = %stream, consumer = %opts.consumer_name(), signed = opts.signed, "consuming decisions durably");
    let client = node.connection().client().clone();
    let inbox = client.new_inbox();
    let mut sub = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| JsError::Bus(e.to_string()))?;
    let next = format!(
        "$JS.API.CONSUMER.MSG.NEXT.{stream}.{}",
        opts.consumer_name()
    );
    let batch = 16u64;
    let expires = Duration::from_secs(5);
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        client
            .publish_with_reply(
                next.clone(),
                inbox.clone(),
                Bytes::from(json!({"batch": batch, "expires": nanos(expires)}).to_string()),
            )
            .await
            .map_err(|e| JsError::Bus(e.to_string()))?;
        let deadline = tokio::time::Instant::now() + expires + Duration::from_secs(5);
        let mut got = 0;
        loop {
            let msg = tokio::select! {
                m = tokio::time::timeout_at(deadline, sub.next()) => match m {
                    Ok(Some(m)) => m,
                    Ok(None) => return Err(JsError::Bus("inbox subscription closed".into())),
                    // The server answers an expired pull with a 408; without one, pull again.
                    Err(_) => break,
                },
                _ = stop.changed() => {
                    give_back(&client, &mut sub).await;
                    return Ok(());
                }
            };
            if let Some(status) = msg.status {
                match status.as_u16() {
                    404 | 408 => break,
                    409 => {
                        let why = msg.description.clone().unwrap_or_default();
                        if why.to_ascii_lowercase().contains("deleted") {
                            return Err(JsError::Bus(format!("consumer deleted: {why}")));
                        }
                        break;
                    }
                    503 => return Err(JsError::NotEnabled(next.clone())),
                    _ => continue,
                }
            }
            let Some(reply) = msg.reply.as_ref().map(|r| r.to_string()) else {
                // A publish acknowledgement of a stream on `>` that captured the pull.
                node.metrics().ignore("jetstream_api_noise");
                continue;
            };
            let Some(delivery) = parse_ack_subject(&reply) else {
                node.metrics().ignore("jetstream_api_noise");
                continue;
            };
            node.health().recover(Part::JetStream);
            *backoff = Duration::from_millis(500);
            handle(collator, node, opts, &client, &reply, delivery, &msg).await;
            got += 1;
            if got >= batch {
                break;
            }
            if *stop.borrow() {
                give_back(&client, &mut sub).await;
                return Ok(());
            }
        }
        node.health().recover(Part::JetStream);
    }
}

/// Gives the messages already delivered to this consumer, but not handled, back to the
/// server (NAK) so a restarted collator gets them at once.
async fn give_back(client: &async_nats::Client, sub: &mut async_nats::Subscriber) {
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(100), sub.next()).await {
        if let Some(reply) = msg.reply.as_ref()
            && parse_ack_subject(reply).is_some()
        {
            let _ = client
                .publish(reply.to_string(), Bytes::from_static(b"-NAK"))
                .await;
        }
    }
    let _ = client.flush().await;
}

/// Records one delivered finalize (signed: or caches one vote) and acknowledges it (or
/// not).
async fn handle(
    collator: &CollatorService,
    node: &Node,
    opts: &DurableOptions,
    client: &async_nats::Client,
    reply: &str,
    delivery: Delivery,
    msg: &async_nats::Message,
) {
    let payload = &msg.payload;
    let subject = msg.subject.as_str();
    node.metrics().received(subject);
    let ack = |what: &'static str| {
        let client = client.clone();
        let reply = reply.to_string();
        async move {
            if let Err(e) = client
                .publish(reply, Bytes::from_static(what.as_bytes()))
                .await
            {
                tracing::warn!(error = %e, "JetStream acknowledgement not sent; the message will be redelivered (and recognised)");
            }
        }
    };
    if subject == subjects::VOTE && opts.signed {
        match ibp_wire::decode::<ibp_wire::Vote>(payload) {
            Ok(v) if admit(node, msg, &v, &delivery) => node.feed_vote(v).await,
            Ok(_) => {}
            Err(_) => node.metrics().decode_failed(subject),
        }
        ack("+ACK").await;
        return;
    }
    if subject != subjects::FINALIZE {
        // A stream on `>` lets other consensus subjects through the `consensus.>` filter.
        node.metrics().ignore("jetstream_other_subject");
        ack("+ACK").await;
        return;
    }
    let f = match ibp_wire::decode::<FinalizeMessage>(payload) {
        Ok(f) if !f.proposal.id.is_empty() => f,
        Ok(_) | Err(_) => {
            node.metrics().decode_failed(subjects::FINALIZE);
            tracing::warn!(
                seq = delivery.stream_seq,
                bytes = payload.len(),
                "undecodable finalize in the stream; terminated"
            );
            ack("+TERM").await;
            return;
        }
    };
    if !admit(node, msg, &f, &delivery) {
        ack("+TERM").await;
        return;
    }
    node.heard(f.finalizer());
    // Votes of a fresh decision may still be in flight on their own subject.
    let age = (Utc::now() - delivery.stored_at)
        .to_std()
        .unwrap_or(Duration::ZERO);
    if let Some(wait) = node.vote_grace().checked_sub(age) {
        tokio::time::sleep(wait).await;
    }
    let id = f.proposal.id.clone();
    let mut d = Decision {
        finalizer: f.finalizer().to_string(),
        passed: f.passed,
        decided_at: f.decided_at,
        by_self: false,
        applied: false,
        latency: None,
        tally: None,
        votes: None,
        proposal: f.proposal,
    };
    if let Some((_, votes)) = node.take_cached(&id) {
        d.votes = Some(votes);
    }
    if d.passed
        && let Some((yes, need)) = node.backing(d.votes.as_ref().unwrap_or(&Default::default()))
        && yes < need
    {
        // Not backed by the votes this collator saw: no outage is recorded from it.
        node.metrics().ignore("finalize_unbacked");
        tracing::warn!(proposal = %id, agreeing = yes, needed = need, "durable finalize not backed by enough agreeing votes; not recorded");
        ack("+ACK").await;
        return;
    }
    let outcome = std::panic::AssertUnwindSafe(collator.record_durably(&d))
        .catch_unwind()
        .await;
    match outcome {
        Ok(WriteOutcome::Stored(_)) | Ok(WriteOutcome::SetAside) => {
            if delivery.delivered == 1 {
                node.metrics().decided(d.passed, false, None);
            }
            ack("+ACK").await;
        }
        Ok(WriteOutcome::Unsaved) | Err(_) => {
            if outcome.is_err() {
                node.metrics().handler_panics.inc();
                tracing::error!(proposal = %id, delivered = delivery.delivered, "recording a durable decision panicked");
            }
            if delivery.delivered >= u64::from(opts.max_deliver) {
                dead_letter(collator, node, client, payload, &id, delivery).await;
                ack("+TERM").await;
            }
            // Otherwise no ack: redelivered after ack_wait (the record is claimed by ID).
        }
    }
}

/// The signature check of a stored message (every mode but `off` counts; `enforce` drops).
fn admit<T: crate::security::Claims>(
    node: &Node,
    msg: &async_nats::Message,
    body: &T,
    delivery: &Delivery,
) -> bool {
    node.options().security.admit_stored(
        node.metrics(),
        msg.subject.as_str(),
        body.claim(),
        msg.headers.as_ref(),
        &msg.payload,
        delivery.stored_at,
    )
}

async fn dead_letter(
    collator: &CollatorService,
    node: &Node,
    client: &async_nats::Client,
    payload: &Bytes,
    id: &str,
    delivery: Delivery,
) {
    node.metrics().dead_lettered("finalize");
    tracing::error!(proposal = %id, delivered = delivery.delivered, seq = delivery.stream_seq, "a finalize could not be recorded after every delivery; set aside");
    let raw = String::from_utf8_lossy(payload).to_string();
    let _ = collator
        .writes()
        .store()
        .dead_letter(
            "finalize",
            &json!({"raw": raw, "streamSeq": delivery.stream_seq}),
            "not recorded after the last delivery attempt",
        )
        .await;
    let _ = client
        .publish(DEAD_LETTER_SUBJECT.to_string(), payload.clone())
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_subjects_of_both_forms_parse() {
        let v1 =
            parse_ack_subject("$JS.ACK.IBP_FINALIZE.dur.3.17.9.1764496800000000000.4").expect("v1");
        assert_eq!(v1.delivered, 3);
        assert_eq!(v1.stream_seq, 17);
        assert_eq!(v1.stored_at.timestamp(), 1_764_496_800);
        let v2 = parse_ack_subject(
            "$JS.ACK.hub.ACCHASH.IBP_FINALIZE.dur.1.18.10.1764496800000000000.0.xyz",
        )
        .expect("v2");
        assert_eq!((v2.delivered, v2.stream_seq), (1, 18));
        assert_eq!(parse_ack_subject("_INBOX.abc"), None);
        assert_eq!(parse_ack_subject("$JS.ACK.a.b.x.1.2.3.4"), None);
    }
}
