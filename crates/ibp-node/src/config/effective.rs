//! The effective configuration as `check-config` shows it: every setting the node runs
//! with, its value (secrets redacted) and where it came from — a flag, a field of the file,
//! or the default.

use std::time::Duration;

use ibp_core::format_duration;
use serde::Serialize;
use serde_json::{Value, json};

use super::{FileConfig, NodeConfig};

/// One setting as the node will run with it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Setting {
    /// Dotted name (`nats.servers`, `consensus.proposal_timeout`).
    pub key: String,
    /// The value; secrets are shown as `"<set>"`, URLs without passwords.
    pub value: Value,
    /// `--flag`, the file field (`Nats.Url`, `IbpNode.dns.listen`), or `default`.
    pub source: String,
}

/// Every setting of a resolved config, in a stable order.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Effective {
    /// The settings.
    pub settings: Vec<Setting>,
}

fn secs(d: Duration) -> Value {
    Value::String(format_duration(d))
}

fn secret(v: Option<&String>) -> Value {
    v.map_or(Value::Null, |_| Value::String("<set>".into()))
}

fn path(p: Option<&std::path::PathBuf>) -> Value {
    p.map_or(Value::Null, |p| Value::String(p.display().to_string()))
}

struct Builder<'a> {
    file: &'a FileConfig,
    cfg: &'a NodeConfig,
    out: Vec<Setting>,
}

impl Builder<'_> {
    fn put(&mut self, key: &str, value: Value, source: impl Into<String>) {
        self.out.push(Setting {
            key: key.to_string(),
            value,
            source: source.into(),
        });
    }

    /// A setting a flag can give: its source was noted while resolving.
    fn flagged(&mut self, key: &'static str, value: Value) {
        let source = self
            .cfg
            .sources
            .get(key)
            .cloned()
            .unwrap_or_else(|| "default".into());
        self.put(key, value, source);
    }

    /// A setting of the `IbpNode` section: from the file when the file names it.
    fn ibp(&mut self, key: &str, field: &str, value: Value) {
        let mut at = &self.file.ibp_raw;
        let mut found = true;
        for part in field.split('.') {
            match at.get(part) {
                Some(v) if !v.is_null() => at = v,
                _ => {
                    found = false;
                    break;
                }
            }
        }
        let source = if found {
            format!("IbpNode.{field}")
        } else {
            "default".into()
        };
        self.put(key, value, source);
    }

    /// A setting of a Go section: from the file when it was there.
    fn go(&mut self, key: &str, field: &str, present: bool, value: Value) {
        self.put(
            key,
            value,
            if present {
                field.to_string()
            } else {
                "default".into()
            },
        );
    }
}

impl Effective {
    /// The effective settings of `cfg`, resolved from `file`.
    pub fn of(file: &FileConfig, cfg: &NodeConfig) -> Effective {
        let mut b = Builder {
            file,
            cfg,
            out: Vec::new(),
        };
        let n = &cfg.nats;
        b.flagged("role", json!(cfg.role.short_name()));
        b.flagged("node_id", json!(cfg.node_id.as_str()));
        b.flagged(
            "nats.servers",
            json!(crate::connection::redact_servers(&n.servers)),
        );
        b.go("nats.user", "Nats.User", n.user.is_some(), json!(n.user));
        b.go(
            "nats.password",
            "Nats.Pass",
            n.password.is_some(),
            secret(n.password.as_ref()),
        );
        b.ibp("nats.token", "nats.token", secret(n.token.as_ref()));
        b.ibp(
            "nats.nkey_seed",
            "nats.nkey_seed",
            secret(n.nkey_seed.as_ref()),
        );
        b.ibp(
            "nats.credentials_file",
            "nats.credentials_file",
            path(n.credentials_file.as_ref()),
        );
        b.ibp(
            "nats.tls_ca_file",
            "nats.tls_ca_file",
            path(n.tls_ca_file.as_ref()),
        );
        b.ibp(
            "nats.tls_cert_file",
            "nats.tls_cert_file",
            path(n.tls_cert_file.as_ref()),
        );
        b.ibp(
            "nats.tls_key_file",
            "nats.tls_key_file",
            path(n.tls_key_file.as_ref()),
        );
        b.ibp(
            "nats.tls_required",
            "nats.tls_required",
            json!(n.tls_required),
        );
        b.ibp(
            "nats.retain_servers_order",
            "nats.retain_servers_order",
            json!(n.retain_servers_order),
        );
        b.ibp(
            "nats.reconnect_delay",
            "nats.reconnect_delay",
            secs(n.reconnect_delay),
        );
        b.ibp(
            "nats.connect_timeout",
            "nats.connect_timeout",
            secs(n.connect_timeout),
        );
        b.ibp(
            "nats.ping_interval",
            "nats.ping_interval",
            secs(n.ping_interval),
        );
        b.ibp(
            "nats.max_pings_outstanding",
            "nats.max_pings_outstanding",
            json!(n.max_pings_outstanding),
        );
        b.ibp(
            "nats.subscription_capacity",
            "nats.subscription_capacity",
            json!(n.subscription_capacity),
        );
        b.flagged("http", json!(cfg.http.to_string()));
        b.flagged("db", json!(ibp_storage::redact_url(&cfg.db)));
        b.flagged("work_dir", json!(cfg.work_dir.display().to_string()));
        b.ibp(
            "public_address",
            "public_address",
            json!(cfg.public_address),
        );
        b.go(
            "log_level",
            "System.LogLevel",
            cfg.log_level.is_some(),
            json!(cfg.log_level.as_deref().unwrap_or("info")),
        );
        b.ibp(
            "log_format",
            "log_format",
            json!(cfg.log_format.as_deref().unwrap_or("pretty")),
        );
        b.ibp("shutdown_grace", "shutdown_grace", secs(cfg.shutdown_grace));
        for (k, v) in &cfg.config_urls {
            b.go(
                &format!("config_urls.{k}"),
                &format!("System.ConfigUrls.{k}"),
                true,
                json!(v),
            );
        }
        b.go(
            "config_reload",
            "System.ConfigReloadTime",
            file.config_reload.is_some(),
            secs(cfg.config_reload),
        );
        b.go(
            "minimum_offline",
            "System.MinimumOfflineTime",
            file.minimum_offline.is_some(),
            secs(cfg.minimum_offline),
        );
        b.ibp(
            "lists.max_bytes",
            "lists.max_bytes",
            json!(cfg.lists_max_bytes),
        );
        b.ibp("lists.timeout", "lists.timeout", secs(cfg.lists_timeout));
        if let Ok(Value::Object(core)) = serde_json::to_value(&cfg.core) {
            for (k, v) in core {
                b.ibp(&format!("consensus.{k}"), &format!("consensus.{k}"), v);
            }
        }
        let sec = &cfg.security;
        b.ibp("security.mode", "security.mode", json!(sec.mode.as_str()));
        b.put(
            "security.public_key",
            json!(sec.identity.as_ref().map(|i| i.public_key().to_string())),
            sec.identity_source
                .clone()
                .unwrap_or_else(|| "default".into()),
        );
        b.ibp(
            "security.trusted_keys",
            "security.trust",
            json!(sec.trust.len()),
        );
        b.ibp(
            "security.trust_file",
            "security.trust_file",
            path(sec.sources.file.as_ref()),
        );
        b.ibp("security.max_age", "security.max_age", secs(sec.max_age));
        b.ibp(
            "security.http_write_token",
            "security.http_write_token_file",
            secret(sec.http_write_token.as_ref()),
        );
        let writes = crate::http::WriteLock::for_listener(cfg.http, sec.http_write_token.clone());
        b.put(
            "security.http_writes",
            json!(match (writes.warning(), &sec.http_write_token) {
                (Some(_), _) => "refused (non-loopback listener without a token)",
                (None, Some(_)) => "need the bearer token",
                (None, None) => "open (loopback listener)",
            }),
            "derived from http and the token",
        );
        b.ibp(
            "security.http_max_body",
            "security.http_max_body",
            json!(sec.http_max_body),
        );
        b.ibp(
            "security.http_max_connections",
            "security.http_max_connections",
            json!(sec.http_max_connections),
        );
        match cfg.role {
            ibp_wire::Role::Monitor => monitor(&mut b),
            ibp_wire::Role::Dns => dns(&mut b),
            ibp_wire::Role::Collator => collator(&mut b),
        }
        Effective { settings: b.out }
    }

    /// `{"key": {"value": …, "source": …}, …}`.
    pub fn to_json(&self) -> Value {
        Value::Object(
            self.settings
                .iter()
                .map(|s| (s.key.clone(), json!({"value": s.value, "source": s.source})))
                .collect(),
        )
    }

    /// One line per setting: `key = value   (source)`, aligned.
    pub fn render(&self) -> String {
        let width = self.settings.iter().map(|s| s.key.len()).max().unwrap_or(0);
        let shown: Vec<String> = self
            .settings
            .iter()
            .map(|s| match &s.value {
                Value::String(t) => t.clone(),
                Value::Null => "(none)".into(),
                v => v.to_string(),
            })
            .collect();
        let vwidth = shown.iter().map(|v| v.len()).max().unwrap_or(0).min(48);
        let mut out = String::new();
        for (s, v) in self.settings.iter().zip(shown) {
            out.push_str(&format!(
                "{:width$} = {:vwidth$}  ({})\n",
                s.key, v, s.source
            ));
        }
        out
    }
}

fn monitor(b: &mut Builder<'_>) {
    let cfg = b.cfg;
    let checks: Vec<Value> = cfg
        .checks
        .iter()
        .map(|c| {
            json!(format!(
                "{} ({}, {}, every {}s, timeout {}s)",
                c.name,
                c.check_type,
                if c.enabled { "enabled" } else { "disabled" },
                c.minimum_interval,
                c.timeout
            ))
        })
        .collect();
    let n = checks.len();
    b.go("monitor.checks", "Checks", n > 0, Value::Array(checks));
    b.ibp("checks.enabled", "checks.enabled", json!(cfg.run_checks));
    let c = &cfg.checker;
    b.ibp(
        "checks.max_in_flight",
        "checks.max_in_flight",
        json!(c.max_in_flight),
    );
    b.ibp(
        "checks.max_per_host",
        "checks.max_per_host",
        json!(c.max_per_host),
    );
    b.ibp(
        "checks.confirm_count",
        "checks.confirm_count",
        json!(c.confirm_count),
    );
    b.ibp(
        "checks.confirm_spacing",
        "checks.confirm_spacing",
        secs(c.confirm_spacing),
    );
    b.ibp(
        "checks.stall_after",
        "checks.stall_after",
        c.stall_after.map_or(Value::Null, secs),
    );
    b.ibp(
        "checks.max_lag_blocks",
        "checks.max_lag_blocks",
        json!(c.max_lag_blocks),
    );
    b.ibp("checks.ca_file", "checks.ca_file", path(c.ca_file.as_ref()));
    b.ibp("checks.warm_up", "checks.warm_up", secs(c.warm_up));
    b.ibp(
        "monitor.reconcile_interval",
        "monitor.reconcile_interval",
        secs(cfg.reconcile_interval),
    );
    b.ibp(
        "monitor.sync_interval",
        "monitor.sync_interval",
        secs(cfg.sync_interval),
    );
}

fn dns(b: &mut Builder<'_>) {
    let cfg = b.cfg;
    let g = &cfg.geodns;
    b.flagged("dns.listen", json!(g.listen.map(|l| l.to_string())));
    b.ibp(
        "dns.flush_interval",
        "dns.flush_interval",
        secs(cfg.flush_interval),
    );
    b.ibp(
        "dns.flush_at_keys",
        "dns.flush_at_keys",
        json!(cfg.hit_limits.flush_at),
    );
    b.ibp(
        "dns.max_pending_keys",
        "dns.max_pending_keys",
        json!(cfg.hit_limits.max_keys),
    );
    b.ibp(
        "dns.skip_inactive",
        "dns.skip_inactive",
        json!(g.skip_inactive),
    );
    let given = b
        .file
        .ibp
        .dns
        .as_ref()
        .is_some_and(|d| !d.monitors.is_empty());
    b.put(
        "dns.monitors",
        json!(g.monitors),
        if given {
            "IbpNode.dns.monitors"
        } else if g.monitors.is_empty() {
            "default"
        } else {
            "DnsApi.MonitorAddress/MonitorPort"
        },
    );
    b.go(
        "dns.monitor_refresh",
        "DnsApi.RefreshIntervalSeconds",
        b.file.geodns.refresh_seconds.is_some(),
        secs(g.refresh),
    );
    b.go(
        "dns.static_records",
        "System.ConfigUrls.StaticDNSConfig",
        g.static_url.is_some(),
        json!(g.static_url),
    );
    b.go(
        "dns.maxmind_dir",
        "Maxmind.MaxmindDBPath",
        g.maxmind_dir.is_some(),
        path(g.maxmind_dir.as_ref()),
    );
    b.go(
        "dns.overrides",
        "GeoDNSOverrides",
        g.overrides.is_some(),
        json!(
            g.overrides
                .as_ref()
                .and_then(Value::as_object)
                .map_or(0, |o| o.len())
        ),
    );
}

fn collator(b: &mut Builder<'_>) {
    let cfg = b.cfg;
    let c = &cfg.collator;
    b.ibp(
        "collator.jetstream",
        "collator.jetstream",
        json!(c.jetstream),
    );
    b.ibp(
        "collator.usage_timeout",
        "collator.usage_timeout",
        secs(cfg.usage_timeout),
    );
    b.ibp(
        "collator.backfill_days",
        "collator.backfill_days",
        json!(c.backfill_days),
    );
    b.ibp("collator.hourly", "collator.hourly", json!(c.hourly));
}
