//! The `ping` check (checks.md §2.1): ICMP echo to the member's IP. An unprivileged ICMP
//! socket is used where the kernel allows it (`net.ipv4.ping_group_range`), a raw one
//! otherwise; when neither is permitted the check fails with a text saying so. Invalid
//! options (which panic the Go library) are refused when the config is loaded.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use surge_ping::{Client, Config, ICMP, PingIdentifier, PingSequence, SurgeError};

use crate::items::Item;
use crate::spec::PingOptions;
use crate::verdict::Verdict;

/// What one run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct PingStats {
    /// Echo requests sent.
    pub sent: u32,
    /// Round-trip times of the replies.
    pub rtts: Vec<Duration>,
}

/// Runs the check against `ip`.
pub async fn check(item: &Item, ip: IpAddr) -> Verdict {
    let o = PingOptions::from(&item.options);
    let started = Instant::now();
    match probe(ip, &o).await {
        Ok(stats) => evaluate(&stats, &o).timed(started.elapsed()),
        Err(e) => Verdict::fail(e).timed(started.elapsed()),
    }
}

/// Sends the echo requests and collects the replies.
pub async fn probe(ip: IpAddr, o: &PingOptions) -> Result<PingStats, String> {
    if o.size < 24 {
        return Err(format!(
            "size {} is less than minimum required size 24",
            o.size
        ));
    }
    let count = o.count.max(1);
    let config = Config::builder()
        .kind(if ip.is_ipv6() { ICMP::V6 } else { ICMP::V4 })
        .sock_type_hint(socket2::Type::DGRAM)
        .ttl(o.ttl)
        .build();
    let client = Client::new(&config).map_err(|e| {
        if e.kind() == std::io::ErrorKind::PermissionDenied {
            format!(
                "ping error init: ICMP is not permitted for this process (allow unprivileged ICMP with net.ipv{}.ping_group_range, or grant CAP_NET_RAW): {e}",
                if ip.is_ipv6() { 6 } else { 4 }
            )
        } else {
            format!("ping error init: {e}")
        }
    })?;
    let ident = PingIdentifier(rand_u16());
    let mut payload = Vec::with_capacity(o.size);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    payload.extend_from_slice(&nanos.to_be_bytes());
    payload.extend((0..16).map(|i| (nanos >> (i % 8)) as u8 ^ 0x5a));
    payload.resize(o.size, 0x01);
    let timeout = o.timeout.max(Duration::from_millis(1));
    let cap = timeout * count;
    let mut tasks = Vec::with_capacity(count as usize);
    for seq in 0..count {
        let mut pinger = client.pinger(ip, ident).await;
        pinger.timeout(timeout);
        let payload = payload.clone();
        let delay = o.interval * seq;
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            pinger.ping(PingSequence(seq as u16), &payload).await
        }));
    }
    let results = tokio::time::timeout(
        cap + Duration::from_millis(50),
        futures::future::join_all(tasks),
    )
    .await
    .unwrap_or_default();
    let mut rtts = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(Ok((_, rtt))) => rtts.push(rtt),
            Ok(Err(SurgeError::Timeout { .. })) => {}
            // A failure of the first send is the check's error (network unreachable…);
            // later send failures only count as losses.
            Ok(Err(e)) if i == 0 => return Err(format!("ping error: {e}")),
            _ => {}
        }
    }
    Ok(PingStats { sent: count, rtts })
}

fn rand_u16() -> u16 {
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    (n ^ (n >> 16) ^ std::process::id()) as u16
}

/// The verdict on `stats` (checks.md §2.1, step 4): passes when a reply came, the loss is
/// within `MaxPacketLoss` and the average RTT (whole ms) within `MaxLatency`.
pub fn evaluate(stats: &PingStats, o: &PingOptions) -> Verdict {
    let received = stats.rtts.len() as u32;
    let sent = stats.sent.max(1);
    let loss = f64::from(sent.saturating_sub(received)) / f64::from(sent) * 100.0;
    let ms: Vec<f64> = stats
        .rtts
        .iter()
        .map(|d| d.as_secs_f64() * 1000.0)
        .collect();
    let (min, max, avg, sd) = if ms.is_empty() {
        (0.0, 0.0, 0.0, 0.0)
    } else {
        let avg = ms.iter().sum::<f64>() / ms.len() as f64;
        let var = ms.iter().map(|x| (x - avg).powi(2)).sum::<f64>() / ms.len() as f64;
        (
            ms.iter().cloned().fold(f64::MAX, f64::min),
            ms.iter().cloned().fold(0.0, f64::max),
            avg,
            var.sqrt(),
        )
    };
    let avg_ms = avg.trunc() as i64;
    let mut data = Map::new();
    data.insert("PacketLoss".into(), Value::from(loss));
    data.insert("MinRtt".into(), Value::from(min.trunc() as i64));
    data.insert("AvgRtt".into(), Value::from(avg_ms));
    data.insert("MaxRtt".into(), Value::from(max.trunc() as i64));
    data.insert("StdDevRtt".into(), Value::from(sd.trunc() as i64));
    if received > 0 && loss <= o.max_loss && avg_ms <= o.max_latency_ms {
        Verdict::pass(data)
    } else {
        Verdict::fail_with(
            format!("PingCheck: avgRtt={avg_ms}ms, loss={loss:.0}%"),
            data,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> PingOptions {
        PingOptions::from(&serde_json::json!({}))
    }

    #[test]
    fn loss_and_latency_decide_with_the_go_texts() {
        let ms = Duration::from_millis;
        let ok = evaluate(
            &PingStats {
                sent: 3,
                rtts: vec![ms(1), ms(2), ms(3)],
            },
            &opts(),
        );
        assert!(ok.status);
        assert_eq!(ok.data["AvgRtt"], 2);
        let lost = evaluate(
            &PingStats {
                sent: 3,
                rtts: vec![],
            },
            &opts(),
        );
        assert_eq!(lost.error_text, "PingCheck: avgRtt=0ms, loss=100%");
        let one_lost = evaluate(
            &PingStats {
                sent: 3,
                rtts: vec![ms(1), ms(1)],
            },
            &opts(),
        );
        assert_eq!(one_lost.error_text, "PingCheck: avgRtt=1ms, loss=33%");
        let slow = evaluate(
            &PingStats {
                sent: 2,
                rtts: vec![ms(900), ms(901)],
            },
            &opts(),
        );
        assert_eq!(slow.error_text, "PingCheck: avgRtt=900ms, loss=0%");
        let strict = PingOptions {
            max_latency_ms: -1,
            ..opts()
        };
        assert_eq!(
            evaluate(
                &PingStats {
                    sent: 1,
                    rtts: vec![ms(0)]
                },
                &strict
            )
            .error_text,
            "PingCheck: avgRtt=0ms, loss=0%"
        );
    }
}
