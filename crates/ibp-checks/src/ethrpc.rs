//! The `ethrpc` check (checks.md §2.4): Ethereum JSON-RPC over HTTP(S) at the member's IP —
//! chain ID, block number, net version, syncing — and the network match. Optionally the
//! head is followed over time (see [`crate::head`]).

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use serde_json::{Map, Value};

use crate::head::HeadTracker;
use crate::items::Item;
use crate::spec::connect_timeout;
use crate::tls::Trust;
use crate::verdict::Verdict;

/// Runs the check against `ip`.
pub async fn check(
    item: &Item,
    ip: IpAddr,
    trust: &Trust,
    heads: Option<&HeadTracker>,
    unit_key: &str,
) -> Verdict {
    let started = Instant::now();
    run(item, ip, trust, heads, unit_key)
        .await
        .timed(started.elapsed())
}

async fn run(
    item: &Item,
    ip: IpAddr,
    trust: &Trust,
    heads: Option<&HeadTracker>,
    unit_key: &str,
) -> Verdict {
    let timeout = connect_timeout(&item.options, 10);
    let t = match crate::target::parse_check_target(&item.endpoint, "https") {
        Ok(t) => t,
        Err(e) => return Verdict::fail(format!("Invalid HTTP RPC target: {e}")),
    };
    let crate::target::Dial { port, url, .. } = t.dial("https", "http");
    // The hostname is never resolved: it maps to the member's IP for this client only.
    let client = match reqwest::Client::builder()
        .use_preconfigured_tls((*trust.config()).clone())
        .resolve(&t.host, SocketAddr::new(ip, port))
        .connect_timeout(timeout)
        .timeout(timeout)
        .no_proxy()
        .pool_max_idle_per_host(1)
        .build()
    {
        Ok(c) => c,
        Err(e) => return Verdict::fail(format!("request failed: {e}")),
    };
    let mut results = Vec::with_capacity(4);
    for method in [
        "eth_chainId",
        "eth_blockNumber",
        "net_version",
        "eth_syncing",
    ] {
        match call(&client, &url, method).await {
            Ok(v) => results.push(v),
            Err(e) => return Verdict::fail(format!("{method} failed: {e}")),
        }
    }
    let (chain_id, block, net_version, syncing) =
        (&results[0], &results[1], &results[2], &results[3]);
    match syncing {
        Value::Bool(false) | Value::Null => {}
        Value::String(s) if s == "false" || s.is_empty() => {}
        Value::Bool(true) | Value::Object(_) => return Verdict::fail("Node is syncing"),
        Value::String(s) if s == "true" => return Verdict::fail("Node is syncing"),
        other => {
            return Verdict::fail(format!(
                "Invalid eth_syncing response: unexpected payload {other}"
            ));
        }
    }
    let text = |v: &Value| {
        v.as_str()
            .filter(|s| !s.trim().is_empty())
            .map(String::from)
    };
    let Some(chain_id) = text(chain_id) else {
        return Verdict::fail("Invalid eth_chainId response");
    };
    let Some(block) = text(block) else {
        return Verdict::fail("Invalid eth_blockNumber response");
    };
    let Some(net_version) = text(net_version) else {
        return Verdict::fail("Invalid net_version response");
    };
    let expected = item.network_name.trim();
    let cid = chain_id.trim();
    let dec = parse_chain_id(cid);
    let matches = !expected.is_empty()
        && (net_version.trim().eq_ignore_ascii_case(expected)
            || cid.eq_ignore_ascii_case(expected)
            || dec.is_some_and(|d| d.to_string() == expected));
    if !matches {
        return Verdict::fail(format!(
            "Wrong network: expected {expected}, got net_version={net_version} chainId={chain_id} (decimal={})",
            dec.unwrap_or(0)
        ));
    }
    let mut data = Map::new();
    data.insert("chainId".into(), Value::from(chain_id.clone()));
    data.insert("chainIdDec".into(), Value::from(dec.unwrap_or(0)));
    data.insert("blockNumber".into(), Value::from(block.clone()));
    data.insert("netVersion".into(), Value::from(net_version.clone()));
    data.insert("syncing".into(), Value::Bool(false));
    data.insert("network".into(), Value::from(expected.to_string()));
    if let Some(heads) = heads {
        let Some(number) = parse_chain_id(&block).filter(|n| *n >= 0) else {
            return Verdict::fail("Head check failed: eth_blockNumber is not a number");
        };
        let hv = heads.observe(unit_key, expected, number as u64, Instant::now());
        data.insert("blockLag".into(), Value::from(hv.lag));
        if let Some(text) = hv.failure() {
            return Verdict::fail_with(text, data);
        }
    }
    Verdict::pass(data)
}

/// `0x` hex (any case) or decimal, signed 64-bit.
pub fn parse_chain_id(s: &str) -> Option<i64> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => i64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

async fn call(client: &reqwest::Client, url: &str, method: &str) -> Result<Value, String> {
    let body = format!(r#"{{"jsonrpc":"2.0","method":"{method}","params":[],"id":1}}"#);
    let resp = client
        .post(url)
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| format!("request failed: {}", error_chain(&e)))?;
    let status = resp.status();
    let text = resp
        .text()
        .await
        .map_err(|e| format!("request failed: {}", error_chain(&e)))?;
    if status.as_u16() != 200 {
        return Err(format!("HTTP error {}: {}", status.as_u16(), text));
    }
    let v: Value =
        serde_json::from_str(&text).map_err(|e| format!("failed to unmarshal response: {e}"))?;
    if let Some(id) = v.get("id")
        && !id.is_null()
        && !id.is_i64()
        && !id.is_u64()
    {
        return Err(format!(
            "failed to unmarshal response: {}",
            crate::wss::unmarshal_text(id, "int")
        ));
    }
    if let Some(e) = v.get("error").filter(|e| !e.is_null()) {
        let code = e.get("code").and_then(Value::as_i64).unwrap_or(0);
        let msg = e.get("message").and_then(Value::as_str).unwrap_or("");
        return Err(format!("RPC error {code}: {msg}"));
    }
    Ok(v.get("result").cloned().unwrap_or(Value::Null))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_parse_in_both_forms() {
        assert_eq!(parse_chain_id("0x190f1b41"), Some(420_420_417));
        assert_eq!(parse_chain_id("0X1"), Some(1));
        assert_eq!(parse_chain_id("420420417"), Some(420_420_417));
        assert_eq!(parse_chain_id("paseo"), None);
    }
}
