//! The `ssl` check (checks.md §2.2): a TLS handshake with the member's IP, SNI the
//! hostname, verified; fails when the leaf certificate expires within the threshold.
//! Unlike the Go check (always 443) it dials the port the RPC URL names.

use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};

use crate::items::Item;
use crate::net;
use crate::spec::{connect_timeout, opt_i64};
use crate::tls::Trust;
use crate::verdict::Verdict;

/// Runs the check against `ip`.
pub async fn check(item: &Item, ip: IpAddr, trust: &Trust) -> Verdict {
    let started = Instant::now();
    let timeout = connect_timeout(&item.options, 5);
    let threshold = opt_i64(&item.options, "MinimumDaysToExpiry", 5);
    let host = match crate::target::parse_check_target(&item.domain, "https") {
        Ok(t) => t.host,
        Err(e) => return Verdict::fail(format!("Invalid TLS target: {e}")),
    };
    let port = item.port.unwrap_or(443);
    let r = tokio::time::timeout(timeout, async {
        let tcp = net::dial(ip, port, timeout)
            .await
            .map_err(|e| format!("TCP connect error: {e}"))?;
        let tls = net::tls(tcp, &host, trust)
            .await
            .map_err(|e| format!("TLS handshake failed: {}", e.trim_start_matches("tls: ")))?;
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref().to_vec())
            .ok_or_else(|| "No certificate found".to_string())?;
        Ok::<Vec<u8>, String>(leaf)
    })
    .await;
    let leaf = match r {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => return Verdict::fail(e).timed(started.elapsed()),
        Err(_) => {
            return Verdict::fail(format!(
                "TLS handshake failed: no handshake within {}s",
                timeout.as_secs()
            ))
            .timed(started.elapsed());
        }
    };
    let not_after = match x509_parser::parse_x509_certificate(&leaf) {
        Ok((_, cert)) => cert.validity().not_after.timestamp(),
        Err(e) => return Verdict::fail(format!("TLS handshake failed: bad certificate: {e}")),
    };
    evaluate(not_after, now_unix(), port, threshold).timed(started.elapsed())
}

fn now_unix() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64()
}

/// The verdict for a leaf expiring at `not_after` (Unix seconds), checked at `now`: whole
/// days left, truncated (a certificate valid for exactly 30 more days is seen, a moment
/// later, with 29 — as Go's `time.Until` counts); under `threshold` days fails.
pub fn evaluate(not_after: i64, now: f64, port: u16, threshold: i64) -> Verdict {
    let days = ((not_after as f64 - now) / 86_400.0).floor() as i64;
    let mut data = Map::new();
    data.insert("ExpiryTimestamp".into(), Value::from(not_after));
    data.insert("DaysUntilExpiry".into(), Value::from(days));
    data.insert("Port".into(), Value::from(port.to_string()));
    if days < threshold {
        Verdict::fail_with(format!("Less than {threshold} days to expiry"), data)
    } else {
        Verdict::pass(data)
    }
}
