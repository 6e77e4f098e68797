//! What to check and how: the Go `Checks[]` entries (checks.md §2, options from
//! `ExtraOptions`, numbers only), plus this project's settings (`IbpNode.checks`).

use std::time::Duration;

use ibp_wire::CheckType;
use serde_json::Value;

/// One entry of the Go config's `Checks` list.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckSpec {
    /// `ping`, `ssl`, `wss`, `ethrpc`.
    pub name: String,
    /// Only enabled checks are scheduled.
    pub enabled: bool,
    /// `site`, `domain` or `endpoint`.
    pub check_type: CheckType,
    /// Period, seconds (`minimumInterval`).
    pub minimum_interval: u64,
    /// Hard limit of one run, seconds (`Timeout`; the Go monitor ignores it, here it frees
    /// the check's slot).
    pub timeout: u64,
    /// `ExtraOptions`, untouched.
    pub options: Value,
}

/// A numeric option: only JSON numbers count (a fraction is truncated for integers), as in
/// Go; anything else, or nothing, gives the default.
pub fn opt_i64(options: &Value, key: &str, default: i64) -> i64 {
    match options.get(key) {
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f.trunc() as i64))
            .unwrap_or(default),
        _ => default,
    }
}

/// A float option (`MaxPacketLoss`).
pub fn opt_f64(options: &Value, key: &str, default: f64) -> f64 {
    match options.get(key) {
        Some(Value::Number(n)) => n.as_f64().unwrap_or(default),
        _ => default,
    }
}

/// Options of the ping check.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PingOptions {
    /// Echo requests.
    pub count: u32,
    /// Between sends.
    pub interval: Duration,
    /// Per reply; the whole run is capped at `timeout × count`.
    pub timeout: Duration,
    /// ICMP payload bytes (at least 24).
    pub size: usize,
    /// TTL / hop limit.
    pub ttl: u32,
    /// Percent.
    pub max_loss: f64,
    /// Milliseconds, against the average RTT.
    pub max_latency_ms: i64,
}

impl PingOptions {
    /// From `ExtraOptions`, with the Go defaults.
    pub fn from(options: &Value) -> PingOptions {
        PingOptions {
            count: opt_i64(options, "PingCount", 3).clamp(0, 1000) as u32,
            interval: Duration::from_millis(opt_i64(options, "PingInterval", 100).max(0) as u64),
            timeout: Duration::from_millis(opt_i64(options, "PingTimeout", 1000).max(0) as u64),
            size: opt_i64(options, "PingSize", 32).clamp(0, 65_000) as usize,
            ttl: opt_i64(options, "PingTTL", 64).clamp(1, 255) as u32,
            max_loss: opt_f64(options, "MaxPacketLoss", 5.0),
            max_latency_ms: opt_i64(options, "MaxLatency", 800),
        }
    }
}

/// The connect (and whole upgrade/handshake) timeout option, seconds.
pub fn connect_timeout(options: &Value, default_secs: i64) -> Duration {
    Duration::from_secs(opt_i64(options, "ConnectTimeout", default_secs).max(1) as u64)
}

/// Problems in a check's options that would make it useless or (in Go) crash the process:
/// `Checks[i].ExtraOptions.<key>: <reason>`.
pub fn validate(spec: &CheckSpec) -> Result<(), String> {
    let o = &spec.options;
    if !o.is_null() && !o.is_object() {
        return Err("ExtraOptions: expected an object".into());
    }
    if let Some(obj) = o.as_object() {
        for (k, v) in obj {
            if !v.is_number() {
                return Err(format!(
                    "ExtraOptions.{k}: {v} is not a number (Go would silently use the default)"
                ));
            }
        }
    }
    if spec.name == "ping" {
        for (key, min) in [("PingCount", 1), ("PingInterval", 1), ("PingTimeout", 1)] {
            if o.get(key).is_some() && opt_i64(o, key, min) < min {
                return Err(format!("ExtraOptions.{key}: must be at least {min}"));
            }
        }
    }
    if spec.minimum_interval == 0 {
        return Err("minimumInterval: must be positive".into());
    }
    Ok(())
}

/// This project's check settings (`IbpNode.checks`); every field optional.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckerSettings {
    /// Checks running at once. Default: enough for ~1,600 units to finish a round well
    /// inside 300 s on 2 cores.
    pub max_in_flight: usize,
    /// Checks running at once against one member IP.
    pub max_per_host: usize,
    /// Re-checks of a result that differs from the last one reported, before it is
    /// reported (0: off). One lost packet then never starts a cluster-wide vote.
    pub confirm_count: u32,
    /// Spacing of those re-checks.
    pub confirm_spacing: Duration,
    /// A head that has not advanced for this long fails wss/ethrpc (`None`: off).
    pub stall_after: Option<Duration>,
    /// A head this many blocks behind the best this monitor sees for the chain fails
    /// (`None`: off).
    pub max_lag_blocks: Option<u64>,
    /// An extra CA (PEM) trusted beside the system roots and `SSL_CERT_FILE`/`SSL_CERT_DIR`.
    pub ca_file: Option<std::path::PathBuf>,
    /// Wait for a peer monitor before the first round, at most this long (the Go monitor
    /// waits 3 s).
    pub warm_up: Duration,
}

impl Default for CheckerSettings {
    fn default() -> Self {
        CheckerSettings {
            max_in_flight: 64,
            max_per_host: 8,
            confirm_count: 0,
            confirm_spacing: Duration::from_secs(2),
            stall_after: None,
            max_lag_blocks: None,
            ca_file: None,
            warm_up: Duration::from_secs(3),
        }
    }
}

impl CheckerSettings {
    /// Maps the Go `CheckWorkers` (`numWorkers`, `separationInterval` ms) onto these: the
    /// workers become the in-flight limit. The separation interval, a pacing ceiling in Go
    /// (one claim per interval fleet-wide), is not needed: items are spread evenly over
    /// their own interval.
    pub fn with_go_workers(mut self, num_workers: Option<i64>) -> CheckerSettings {
        if let Some(n) = num_workers.filter(|n| *n > 0) {
            self.max_in_flight = n as usize;
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn options_are_numbers_or_defaults() {
        let o = json!({"PingCount": 15, "PingInterval": 100.9, "PingTimeout": "1600", "MaxPacketLoss": 25});
        let p = PingOptions::from(&o);
        assert_eq!(p.count, 15);
        assert_eq!(p.interval, Duration::from_millis(100));
        assert_eq!(
            p.timeout,
            Duration::from_millis(1000),
            "a string is the default"
        );
        assert_eq!(p.max_loss, 25.0);
        let spec = CheckSpec {
            name: "ping".into(),
            enabled: true,
            check_type: CheckType::Site,
            minimum_interval: 60,
            timeout: 30,
            options: json!({"PingCount": 0}),
        };
        assert!(validate(&spec).unwrap_err().contains("PingCount"));
        let spec = CheckSpec {
            options: json!({"ConnectTimeout": "10"}),
            ..spec
        };
        assert!(validate(&spec).unwrap_err().contains("ConnectTimeout"));
    }
}
