//! The demo's stand-in for a member's RPC node: a WebSocket JSON-RPC server on loopback
//! that answers the Substrate calls the `wss` check makes. The demo turns its peer count
//! down and up, and the monitors' real checks see the node become unhealthy and recover.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

/// A running fake node. Dropping it stops accepting connections.
pub struct FakeNode {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    peers: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the fake node says about its chain.
#[derive(Clone)]
struct Chain {
    name: String,
    state_root: String,
    peers: Arc<AtomicU64>,
    head: Arc<AtomicU64>,
}

impl FakeNode {
    /// Starts a node of chain `name` whose genesis state root is `state_root`, with `peers`.
    pub async fn start(name: &str, state_root: &str, peers: u64) -> Result<FakeNode, String> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("fake RPC node: cannot listen on loopback: {e}"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("fake RPC node: {e}"))?;
        let chain = Chain {
            name: name.to_string(),
            state_root: if state_root.is_empty() {
                "0x00".into()
            } else {
                state_root.to_string()
            },
            peers: Arc::new(AtomicU64::new(peers)),
            head: Arc::new(AtomicU64::new(1_000)),
        };
        let peers = chain.peers.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(serve(tcp, chain.clone()));
            }
        });
        Ok(FakeNode { addr, peers, task })
    }

    /// Sets the peer count `system_health` reports.
    pub fn set_peers(&self, n: u64) {
        self.peers.store(n, Ordering::SeqCst);
    }
}

async fn serve(tcp: tokio::net::TcpStream, chain: Chain) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
        return;
    };
    while let Some(Ok(msg)) = ws.next().await {
        let Message::Text(text) = msg else { continue };
        let Ok(req) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        let reply = json!({"jsonrpc": "2.0", "id": req["id"], "result": answer(&chain, &req)});
        if ws.send(Message::text(reply.to_string())).await.is_err() {
            return;
        }
    }
}

fn answer(chain: &Chain, req: &Value) -> Value {
    let genesis = "0x91b171bb158e2d3848fa23a9f1c25182fb8e20313b2c1eb49219da7a70ce90c3";
    let params = &req["params"];
    match req["method"].as_str().unwrap_or_default() {
        "chain_getBlockHash" if params.get(0).is_some_and(|p| p == 0) => json!(genesis),
        "chain_getBlockHash" => {
            let head = chain.head.fetch_add(1, Ordering::SeqCst);
            json!(format!("0x{head:064x}"))
        }
        "chain_getHeader" if params.get(0).is_some() => {
            json!({"number": "0x0", "stateRoot": chain.state_root, "parentHash": "0x00"})
        }
        "chain_getHeader" => {
            json!({"number": format!("0x{:x}", chain.head.load(Ordering::SeqCst)), "parentHash": "0x00"})
        }
        "system_chain" => json!(chain.name),
        "system_health" => json!({
            "peers": chain.peers.load(Ordering::SeqCst),
            "isSyncing": false,
            "shouldHavePeers": true
        }),
        _ => Value::Null,
    }
}
