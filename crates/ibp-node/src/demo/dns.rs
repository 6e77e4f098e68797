//! The demo's DNS client: real UDP queries to a DNS node's built-in listener, to show the
//! answers following the cluster's decisions.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};

/// The A answers `server` gives for `name` (asked from 127.0.0.1, a client of unknown
/// position: the first healthy member in key order).
pub async fn ask(server: SocketAddr, name: &str) -> Result<Vec<String>, String> {
    let mut m = Message::query();
    let qname = Name::from_ascii(format!("{}.", name.trim_end_matches('.')))
        .map_err(|e| format!("{name}: {e}"))?;
    m.add_query(Query::query(qname, RecordType::A));
    let q = m.to_vec().map_err(|e| e.to_string())?;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    sock.send_to(&q, server).await.map_err(|e| e.to_string())?;
    let mut buf = [0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf))
        .await
        .map_err(|_| format!("no DNS answer from {server} within 2 s"))?
        .map_err(|e| e.to_string())?;
    let reply = Message::from_vec(&buf[..n]).map_err(|e| e.to_string())?;
    Ok(reply
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect())
}

/// Asks until the answer differs from `before` (within `within`); the new answer and how
/// long it took.
pub async fn changed(
    server: SocketAddr,
    name: &str,
    before: &[String],
    within: Duration,
) -> Result<(Vec<String>, Duration), String> {
    let started = Instant::now();
    loop {
        let now = ask(server, name).await?;
        if now != before {
            return Ok((now, started.elapsed()));
        }
        if started.elapsed() > within {
            return Err(format!(
                "{name}: the answer stayed {before:?} for {within:?} after the decision"
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// How an answer reads in the demo's output.
pub fn show(ips: &[String]) -> String {
    if ips.is_empty() {
        "no address (no healthy member)".into()
    } else {
        ips.join(", ")
    }
}
