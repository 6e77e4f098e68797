//! What a DNS node needs to answer queries: the Go DNS config's `DnsApi` poll settings,
//! `Maxmind`, `GeoDNSOverrides` and `System.ConfigUrls.StaticDNSConfig`, plus this
//! project's `IbpNode.dns.listen` (the built-in DNS listener) and `IbpNode.dns.monitors`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::{ConfigError, cerr, get, get_str};

/// The Go sections, as read from the file.
#[derive(Debug, Clone, Default)]
pub struct GeoDnsFile {
    /// `DnsApi.MonitorAddress`.
    pub monitor_address: Option<String>,
    /// `DnsApi.MonitorPort`.
    pub monitor_port: Option<String>,
    /// `DnsApi.RefreshIntervalSeconds`.
    pub refresh_seconds: Option<i64>,
    /// `Maxmind.MaxmindDBPath`.
    pub maxmind_dir: Option<PathBuf>,
    /// `GeoDNSOverrides`.
    pub overrides: Option<Value>,
}

/// Reads the Go sections from the file's root object.
pub fn parse_file(root: &Value) -> Result<GeoDnsFile, ConfigError> {
    let mut g = GeoDnsFile::default();
    if let Some(api) = get(root, "DnsApi") {
        g.monitor_address =
            get_str(api, "DnsApi", "MonitorAddress")?.filter(|s| !s.trim().is_empty());
        g.monitor_port = get_str(api, "DnsApi", "MonitorPort")?.filter(|s| !s.trim().is_empty());
        g.refresh_seconds = match get(api, "RefreshIntervalSeconds") {
            None => None,
            Some(Value::Number(n)) => n.as_i64(),
            Some(other) => {
                return Err(cerr(
                    "DnsApi.RefreshIntervalSeconds",
                    format!("expected a number, got {other}"),
                ));
            }
        };
    }
    if let Some(m) = get(root, "Maxmind") {
        g.maxmind_dir = get_str(m, "Maxmind", "MaxmindDBPath")?
            .filter(|s| !s.trim().is_empty())
            .map(PathBuf::from);
    }
    if let Some(o) = get(root, "GeoDNSOverrides") {
        if !o.is_object() {
            return Err(cerr(
                "GeoDNSOverrides",
                "expected an object of domain → country → override",
            ));
        }
        let mut probe = ibp_geodns::overrides::Overrides::default();
        probe.set_file(o).map_err(|e| cerr("GeoDNSOverrides", e))?;
        g.overrides = Some(o.clone());
    }
    Ok(g)
}

/// The resolved settings.
#[derive(Debug, Clone)]
pub struct GeoDnsConfig {
    /// `System.ConfigUrls.StaticDNSConfig` (URL or path); none: no static records.
    pub static_url: Option<String>,
    /// The MaxMind directory; none: client locations are unknown.
    pub maxmind_dir: Option<PathBuf>,
    /// Monitors' `/results` URLs polled for bootstrap and repair.
    pub monitors: Vec<String>,
    /// Their poll period.
    pub refresh: Duration,
    /// `GeoDNSOverrides`.
    pub overrides: Option<Value>,
    /// The built-in DNS listener (UDP and TCP), if any.
    pub listen: Option<SocketAddr>,
    /// Skip members whose `Service.Active` is 0 (W10; the Go node does not).
    pub skip_inactive: bool,
    /// Longest an ACME challenge fetch may take (the Go node: up to ~18 s, W11).
    pub acme_timeout: Duration,
}

/// Resolves the DNS-answering settings.
pub fn resolve(
    file: &GeoDnsFile,
    static_url: Option<&String>,
    listen: Option<&str>,
    listen_field: &str,
    monitors: &[String],
    skip_inactive: bool,
) -> Result<GeoDnsConfig, ConfigError> {
    let listen = match listen {
        None => None,
        Some(l) => Some(
            l.parse::<SocketAddr>()
                .map_err(|e| cerr(listen_field, format!("{l:?}: {e} (expected host:port)")))?,
        ),
    };
    let mut urls = Vec::new();
    for (i, u) in monitors.iter().enumerate() {
        let parsed = url::Url::parse(u)
            .map_err(|e| cerr(format!("IbpNode.dns.monitors[{i}]"), format!("{u:?}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(cerr(
                format!("IbpNode.dns.monitors[{i}]"),
                "expected an http(s) URL",
            ));
        }
        urls.push(u.clone());
    }
    if urls.is_empty() {
        // W14: a half-set address (the Go install script writes both as "") is not polled.
        if let (Some(a), Some(p)) = (&file.monitor_address, &file.monitor_port) {
            p.trim()
                .parse::<u16>()
                .map_err(|_| cerr("DnsApi.MonitorPort", format!("{p:?} is not a port number")))?;
            let host = if a.contains(':') && !a.starts_with('[') {
                format!("[{a}]")
            } else {
                a.trim().to_string()
            };
            urls.push(format!("http://{host}:{}/results", p.trim()));
        }
    }
    let refresh = match file.refresh_seconds {
        Some(s) if s > 0 => Duration::from_secs(s as u64),
        _ => Duration::from_secs(30),
    };
    Ok(GeoDnsConfig {
        static_url: static_url.cloned(),
        maxmind_dir: file.maxmind_dir.clone(),
        monitors: urls,
        refresh,
        overrides: file.overrides.clone(),
        listen,
        skip_inactive,
        acme_timeout: Duration::from_millis(1500),
    })
}
