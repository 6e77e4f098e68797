//! The `wss` check (checks.md §2.3): JSON-RPC over a WebSocket to a Substrate node at the
//! member's IP — latest block hash, genesis hash (archive), `system_chain`, optionally the
//! genesis state root, `system_health` (peers, syncing). Requests and texts are the Go
//! monitor's; replies are taken in order, as Go does (a reply is not matched by id).
//! Optionally the head is followed over time (see [`crate::head`]).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{Map, Value};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::head::HeadTracker;
use crate::items::Item;
use crate::net::{self, Stream};
use crate::spec::{connect_timeout, opt_i64};
use crate::tls::Trust;
use crate::verdict::Verdict;

type Ws = WebSocketStream<Box<dyn Stream>>;

/// Runs the check against `ip`; `heads` follows the head when stuck-head detection is on.
pub async fn check(
    item: &Item,
    ip: IpAddr,
    trust: &Trust,
    heads: Option<&HeadTracker>,
    unit_key: &str,
) -> Verdict {
    let started = Instant::now();
    let v = run(item, ip, trust, heads, unit_key).await;
    v.timed(started.elapsed())
}

async fn run(
    item: &Item,
    ip: IpAddr,
    trust: &Trust,
    heads: Option<&HeadTracker>,
    unit_key: &str,
) -> Verdict {
    let connect = connect_timeout(&item.options, 10);
    let read = match opt_i64(&item.options, "ReadTimeout", 15) {
        n if n <= 0 => Duration::from_secs(10),
        n => Duration::from_secs(n as u64),
    };
    let min_peers = opt_i64(&item.options, "MinimumPeers", 5);
    let t = match crate::target::parse_check_target(&item.endpoint, "wss") {
        Ok(t) => t,
        Err(e) => return Verdict::fail(format!("Invalid WebSocket target: {e}")),
    };
    let crate::target::Dial { secure, port, url } = t.dial("wss", "ws");
    let dialled = tokio::time::timeout(connect, async {
        let tcp = net::dial(ip, port, connect).await?;
        let local = tcp.local_addr().ok();
        let stream: Box<dyn Stream> = if secure {
            Box::new(net::tls(tcp, &t.host, trust).await?)
        } else {
            Box::new(tcp)
        };
        let request = url
            .as_str()
            .into_client_request()
            .map_err(|e| format!("websocket: {e}"))?;
        let (ws, _) = tokio_tungstenite::client_async(request, stream)
            .await
            .map_err(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(_)
                | tokio_tungstenite::tungstenite::Error::Protocol(_) => {
                    "websocket: bad handshake".to_string()
                }
                other => format!("websocket: {other}"),
            })?;
        Ok::<(Ws, Option<SocketAddr>), String>((ws, local))
    })
    .await;
    let (mut ws, local) = match dialled {
        Ok(Ok(w)) => w,
        Ok(Err(e)) => return Verdict::fail(format!("Failed to connect on IP={ip} => {e}")),
        Err(_) => {
            return Verdict::fail(format!(
                "Failed to connect on IP={ip} => dial tcp {}: i/o timeout",
                SocketAddr::new(ip, port)
            ));
        }
    };
    let remote = SocketAddr::new(ip, port);
    let mut rpc = Rpc {
        ws: &mut ws,
        read,
        local,
        remote,
    };
    let v = exchange(&mut rpc, item, min_peers, heads, unit_key).await;
    // Closed without a close frame, as the Go check does.
    drop(ws);
    v
}

async fn exchange(
    rpc: &mut Rpc<'_>,
    item: &Item,
    min_peers: i64,
    heads: Option<&HeadTracker>,
    unit_key: &str,
) -> Verdict {
    // 1. The latest block hash.
    let r = rpc
        .call(
            r#"{"jsonrpc":"2.0","method":"chain_getBlockHash","params":[],"id":1}"#,
            "chain_getBlockHash()",
        )
        .await;
    match r.and_then(|v| as_string(&v, "chain_getBlockHash()")) {
        Ok(h) if !h.is_empty() => {}
        Ok(_) => return Verdict::fail("chain_getBlockHash() returned an empty result"),
        Err(Call::Send) => return Verdict::fail("Failed to send JSON RPC"),
        Err(Call::Failed(e)) => return Verdict::fail(e),
    }
    // 2. The genesis hash: an archive node answers it (so does a pruned one: checks.md §5).
    let r = rpc
        .call(
            r#"{"jsonrpc":"2.0","method":"chain_getBlockHash","params":[0],"id":2}"#,
            "chain_getBlockHash(0)",
        )
        .await;
    match r.and_then(|v| as_string(&v, "chain_getBlockHash(0)")) {
        Ok(h) if !h.is_empty() => {}
        Ok(_) => {
            return Verdict::fail(
                "Full archive check failed: invalid chain_getBlockHash(0) response",
            );
        }
        Err(Call::Send) => {
            return Verdict::fail(
                "Full archive check failed: failed to send chain_getBlockHash(0)",
            );
        }
        Err(Call::Failed(e)) => return Verdict::fail(format!("Full archive check failed: {e}")),
    }
    // 3. The chain's name.
    let r = rpc
        .call(
            r#"{"jsonrpc":"2.0","method":"system_chain","params":null,"id":3}"#,
            "system_chain",
        )
        .await;
    match r.and_then(|v| as_string(&v, "system_chain")) {
        Ok(chain) if chain.eq_ignore_ascii_case(&item.network_name) => {}
        Ok(_) => return Verdict::fail("Wrong network"),
        Err(Call::Send) => {
            return Verdict::fail("Network check failed: failed to send system_chain");
        }
        Err(Call::Failed(e)) => return Verdict::fail(format!("Network check failed: {e}")),
    }
    // 4–5. The genesis state root, when the service names one.
    if !item.state_root_hash.is_empty()
        && let Err(e) = genesis_state_root(rpc, &item.state_root_hash).await
    {
        return Verdict::fail(format!("Network check failed: {e}"));
    }
    // 6. Peers and syncing.
    let r = rpc
        .call(
            r#"{"jsonrpc":"2.0","method":"system_health","params":null,"id":6}"#,
            "system_health",
        )
        .await;
    let health = match r {
        Ok(v) => v,
        Err(Call::Send) => return Verdict::fail("Peer check failed: failed to send system_health"),
        Err(Call::Failed(e)) => return Verdict::fail(format!("Peer check failed: {e}")),
    };
    let Value::Object(h) = &health else {
        return Verdict::fail(format!(
            "Peer check failed: system_health: invalid result: {}",
            unmarshal_text(&health, "object")
        ));
    };
    let peers = match h.get("peers") {
        Some(Value::Number(n)) => n.as_i64().or_else(|| n.as_f64().map(|f| f.trunc() as i64)),
        Some(Value::String(s)) => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    let Some(peers) = peers else {
        return Verdict::fail("Peer check failed: invalid peers field");
    };
    let syncing = match h.get("isSyncing") {
        Some(Value::Bool(b)) => *b,
        _ => return Verdict::fail("Peer check failed: invalid isSyncing field"),
    };
    if syncing || peers < min_peers {
        return Verdict::fail("Syncing or not enough peers");
    }
    let mut data = Map::new();
    data.insert("Syncing".into(), Value::Bool(false));
    data.insert("Peers".into(), Value::Bool(true));
    data.insert("PeerCount".into(), Value::from(peers));
    data.insert("Network".into(), Value::Bool(true));
    data.insert("Archive".into(), Value::Bool(true));
    // 7. The head over time (only when stuck-head detection is on: not a Go request).
    if let Some(heads) = heads {
        let r = rpc
            .call(
                r#"{"jsonrpc":"2.0","method":"chain_getHeader","params":[],"id":7}"#,
                "chain_getHeader()",
            )
            .await;
        let number = match r {
            Ok(Value::Object(hd)) => hd
                .get("number")
                .and_then(Value::as_str)
                .and_then(|n| u64::from_str_radix(n.trim_start_matches("0x"), 16).ok()),
            _ => None,
        };
        let Some(number) = number else {
            return Verdict::fail("Head check failed: chain_getHeader() gave no block number");
        };
        let hv = heads.observe(unit_key, &item.network_name, number, Instant::now());
        data.insert("BlockNumber".into(), Value::from(number));
        data.insert("BlockLag".into(), Value::from(hv.lag));
        if let Some(text) = hv.failure() {
            return Verdict::fail_with(text, data);
        }
    }
    Verdict::pass(data)
}

async fn genesis_state_root(rpc: &mut Rpc<'_>, want: &str) -> Result<(), String> {
    let g = rpc
        .call(
            r#"{"jsonrpc":"2.0","method":"chain_getBlockHash","params":[0],"id":4}"#,
            "chain_getBlockHash(0)",
        )
        .await
        .and_then(|v| as_string(&v, "chain_getBlockHash(0)"))
        .map_err(|e| match e {
            Call::Send => "failed to send the genesis block hash request".to_string(),
            Call::Failed(e) => format!("failed to read genesis block hash response: {e}"),
        })?;
    if g.is_empty() {
        return Err("invalid genesis block hash response".into());
    }
    let req = format!(
        r#"{{"jsonrpc":"2.0","method":"chain_getHeader","params":[{}],"id":5}}"#,
        Value::String(g)
    );
    let header = rpc
        .call(&req, "chain_getHeader(genesis)")
        .await
        .map_err(|e| match e {
            Call::Send => "failed to send the genesis header request".to_string(),
            Call::Failed(e) => format!("failed to read genesis header response: {e}"),
        })?;
    let Value::Object(h) = &header else {
        return Err(format!(
            "failed to read genesis header response: chain_getHeader(genesis): invalid result: {}",
            unmarshal_text(&header, "object")
        ));
    };
    match h.get("stateRoot").and_then(Value::as_str) {
        None => Err("state root not found in genesis header".into()),
        Some(got) if got.eq_ignore_ascii_case(want) => Ok(()),
        Some(got) => Err(format!(
            "genesis state root mismatch: expected {want}, got {got}"
        )),
    }
}

enum Call {
    /// The request could not be written.
    Send,
    /// Reading, decoding or the RPC failed; the text is prefixed with the request.
    Failed(String),
}

struct Rpc<'a> {
    ws: &'a mut Ws,
    read: Duration,
    local: Option<SocketAddr>,
    remote: SocketAddr,
}

impl Rpc<'_> {
    /// Sends `request` and takes the next message as its reply. Returns the `result`.
    async fn call(&mut self, request: &str, desc: &str) -> Result<Value, Call> {
        if self
            .ws
            .send(Message::Text(request.to_string().into()))
            .await
            .is_err()
        {
            return Err(Call::Send);
        }
        let deadline = tokio::time::Instant::now() + self.read;
        let text = loop {
            match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => {
                    let local = self
                        .local
                        .map(|l| l.to_string())
                        .unwrap_or_else(|| "?".into());
                    return Err(Call::Failed(format!(
                        "{desc}: read tcp {local}->{}: i/o timeout",
                        self.remote
                    )));
                }
                Ok(None) => return Err(Call::Failed(format!("{desc}: EOF"))),
                Ok(Some(Err(e))) => return Err(Call::Failed(format!("{desc}: {e}"))),
                Ok(Some(Ok(Message::Text(t)))) => break t.to_string(),
                Ok(Some(Ok(Message::Binary(b)))) => {
                    break String::from_utf8_lossy(&b).into_owned();
                }
                Ok(Some(Ok(Message::Close(_)))) => {
                    return Err(Call::Failed(format!(
                        "{desc}: websocket: close 1006 (abnormal closure): unexpected EOF"
                    )));
                }
                Ok(Some(Ok(_))) => continue,
            }
        };
        decode_reply(&text).map_err(|e| Call::Failed(format!("{desc}: {e}")))
    }
}

/// A JSON-RPC reply's `result`, with the Go decoder's rules (checks.md §2.3).
pub fn decode_reply(text: &str) -> Result<Value, String> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| format!("failed to decode response: {e}"))?;
    let Value::Object(m) = v else {
        return Err(format!(
            "failed to decode response: {}",
            unmarshal_text(&v, "object")
        ));
    };
    if let Some(id) = m.get("id")
        && !id.is_null()
        && !id.is_i64()
        && !id.is_u64()
    {
        return Err(format!(
            "failed to decode response: {}",
            unmarshal_text(id, "int")
        ));
    }
    if let Some(j) = m.get("jsonrpc")
        && !j.is_null()
        && !j.is_string()
    {
        return Err(format!(
            "failed to decode response: {}",
            unmarshal_text(j, "string")
        ));
    }
    if let Some(e) = m.get("error").filter(|e| !e.is_null()) {
        let code = e.get("code").and_then(Value::as_i64).unwrap_or(0);
        let msg = e.get("message").and_then(Value::as_str).unwrap_or("");
        return Err(format!("rpc error {code}: {msg}"));
    }
    m.get("result")
        .cloned()
        .ok_or_else(|| "missing result".to_string())
}

fn as_string(v: &Value, desc: &str) -> Result<String, Call> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        other => Err(Call::Failed(format!(
            "{desc}: invalid result: {}",
            unmarshal_text(other, "string")
        ))),
    }
}

/// Go's `json: cannot unmarshal <kind> into Go value of type <want>`.
pub fn unmarshal_text(v: &Value, want: &str) -> String {
    let kind = match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    format!("json: cannot unmarshal {kind} into Go value of type {want}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_decode_with_the_go_rules() {
        assert_eq!(
            decode_reply(r#"{"jsonrpc":"2.0","id":1,"result":"0x11"}"#),
            Ok(Value::from("0x11"))
        );
        assert_eq!(decode_reply(r#"{"id":1,"result":null}"#), Ok(Value::Null));
        assert_eq!(
            decode_reply(r#"{"id":1}"#),
            Err("missing result".to_string())
        );
        assert_eq!(
            decode_reply(r#"{"id":1,"error":{"code":-32601,"message":"Method not found"}}"#),
            Err("rpc error -32601: Method not found".to_string())
        );
        assert_eq!(
            decode_reply(r#"{"id":1,"error":{}}"#),
            Err("rpc error 0: ".to_string())
        );
        assert!(
            decode_reply(r#"{"id":"x","result":1}"#)
                .unwrap_err()
                .starts_with("failed to decode response: json: cannot unmarshal string")
        );
        assert!(
            decode_reply("not json")
                .unwrap_err()
                .starts_with("failed to decode response")
        );
    }
}
