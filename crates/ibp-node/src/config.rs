//! Node configuration: the Go node config files as they are (`System`, `Nats`, `Mysql`,
//! `Checks`, `MonitorApi`, …; keys matched case-insensitively like Go), plus this
//! project's own section `IbpNode`. Every error names the field and the reason; secrets
//! never appear in `Debug` output or logs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ibp_core::CoreConfig;
use ibp_wire::{NodeId, Role};
use serde::Deserialize;
use serde_json::Value;

use crate::connection::ConnectOptions;

mod effective;
mod geodns;
mod go_json;
mod security;
pub use effective::{Effective, Setting};
pub use geodns::{GeoDnsConfig, GeoDnsFile};
pub use security::{DEFAULT_MAX_BODY, DEFAULT_MAX_CONNECTIONS, SecurityConfig, SecuritySection};

/// A configuration problem: which field, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config {field}: {reason}")]
pub struct ConfigError {
    /// The field, as a path (`Nats.NodeID`, `IbpNode.collator.usage_timeout`).
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

fn cerr(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    let field: String = field.into();
    ConfigError {
        field,
        reason: reason.into(),
    }
}

/// Case-insensitive object lookup, as Go's JSON decoder matches keys.
fn get<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    let obj = v.as_object()?;
    obj.get(key)
        .or_else(|| {
            obj.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(key))
                .map(|(_, v)| v)
        })
        .filter(|v| !v.is_null())
}

fn get_str(v: &Value, section: &str, key: &str) -> Result<Option<String>, ConfigError> {
    match get(v, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(cerr(
            format!("{section}.{key}"),
            format!("expected a string, got {other}"),
        )),
    }
}

fn get_u64(v: &Value, section: &str, key: &str) -> Result<Option<u64>, ConfigError> {
    match get(v, key) {
        None => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or_else(|| {
            cerr(
                format!("{section}.{key}"),
                format!("expected a non-negative integer, got {n}"),
            )
        }),
        Some(Value::String(s)) => s.trim().parse().map(Some).map_err(|_| {
            cerr(
                format!("{section}.{key}"),
                format!("expected a non-negative integer, got {s:?}"),
            )
        }),
        Some(other) => Err(cerr(
            format!("{section}.{key}"),
            format!("expected a number, got {other}"),
        )),
    }
}

/// A check from the Go `Checks` list.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckDef {
    /// Check name (`ping`, `ssl`, `wss`, `ethrpc`).
    pub name: String,
    /// Whether it is enabled.
    pub enabled: bool,
    /// `site`, `domain` or `endpoint`.
    pub check_type: ibp_wire::CheckType,
    /// Timeout in seconds.
    pub timeout: u64,
    /// Minimum interval between runs, seconds.
    pub minimum_interval: u64,
    /// Check-specific options, untouched.
    pub extra_options: Value,
}

impl CheckDef {
    /// The check as the checker takes it.
    pub fn spec(&self) -> ibp_checks::CheckSpec {
        ibp_checks::CheckSpec {
            name: self.name.clone(),
            enabled: self.enabled,
            check_type: self.check_type,
            minimum_interval: self.minimum_interval,
            timeout: self.timeout,
            options: self.extra_options.clone(),
        }
    }
}

/// This project's own section, `IbpNode`, in the same file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IbpSection {
    /// `monitor`, `dns` or `collator`.
    pub role: Option<String>,
    /// HTTP API listen address (`127.0.0.1:6101`).
    pub http: Option<String>,
    /// Database URL (`sqlite://PATH` or `mysql://…`); overrides the `Mysql` section.
    pub db: Option<String>,
    /// Overrides `Nats.NodeID`.
    pub node_id: Option<String>,
    /// Public address announced in joins.
    pub public_address: Option<String>,
    /// Extra NATS options (TLS, NKey, credentials, timeouts); merged over `Nats`.
    pub nats: Option<NatsExtra>,
    /// Consensus rules and caps.
    pub consensus: Option<CoreConfig>,
    /// Collator settings.
    pub collator: Option<CollatorSection>,
    /// DNS settings.
    pub dns: Option<DnsSection>,
    /// Monitor settings.
    pub monitor: Option<MonitorSection>,
    /// Signed messages, the trust list, the mode, HTTP write lock (`docs/security.md`).
    pub security: Option<SecuritySection>,
    /// Built-in checks (monitors).
    pub checks: Option<ChecksSection>,
    /// Log format: `pretty` or `json`.
    pub log_format: Option<String>,
    /// How long a clean shutdown may take to write what the node accepted (`60s`).
    pub shutdown_grace: Option<String>,
    /// Fetching the member and service lists.
    pub lists: Option<ListsSection>,
    /// For fault tests only.
    pub testing: Option<TestingSection>,
}

/// Settings for fault tests; never for production.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TestingSection {
    /// Runs the node's clock this far from the host's (`+10m`, `-10m`): a stepped clock
    /// without touching the host's.
    pub clock_offset: Option<String>,
}

/// Limits of the member/service list fetches.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ListsSection {
    /// Largest accepted document, bytes (8 MiB; the real lists are ~100 KB).
    pub max_bytes: u64,
    /// Time limit of one fetch, connection to last byte (`30s`).
    pub timeout: String,
}

impl Default for ListsSection {
    fn default() -> Self {
        ListsSection {
            max_bytes: 8 << 20,
            timeout: "30s".into(),
        }
    }
}

/// Built-in check settings (`IbpNode.checks`); the checks themselves are the Go `Checks`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ChecksSection {
    /// Run the enabled `Checks` (default true; false: observations only come over HTTP).
    pub enabled: Option<bool>,
    /// Checks running at once (default `CheckWorkers.numWorkers`, else 64).
    pub max_in_flight: Option<usize>,
    /// Checks running at once against one member IP (8).
    pub max_per_host: Option<usize>,
    /// Re-checks of a changed result before it is reported (0: off).
    pub confirm_count: Option<u32>,
    /// Spacing of those re-checks (`2s`).
    pub confirm_spacing: Option<String>,
    /// A wss/ethrpc head unchanged this long fails (off unless set, e.g. `2m`).
    pub stall_after: Option<String>,
    /// A head this many blocks behind the chain's best fails (off unless set).
    pub max_lag_blocks: Option<u64>,
    /// An extra trusted CA file (PEM) for TLS checks.
    pub ca_file: Option<PathBuf>,
    /// Longest wait for a peer monitor before the first round (`3s`).
    pub warm_up: Option<String>,
}

/// Extra NATS options beyond the Go `Nats` section.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NatsExtra {
    /// Token.
    pub token: Option<String>,
    /// NKey seed.
    pub nkey_seed: Option<String>,
    /// Credentials file.
    pub credentials_file: Option<PathBuf>,
    /// CA certificate.
    pub tls_ca_file: Option<PathBuf>,
    /// Client certificate.
    pub tls_cert_file: Option<PathBuf>,
    /// Client key.
    pub tls_key_file: Option<PathBuf>,
    /// Require TLS.
    pub tls_required: Option<bool>,
    /// Reconnect delay (`2s`).
    pub reconnect_delay: Option<String>,
    /// Connect timeout (`10s`).
    pub connect_timeout: Option<String>,
    /// Ping interval (`200s`).
    pub ping_interval: Option<String>,
    /// Max outstanding pings (5).
    pub max_pings_outstanding: Option<u32>,
    /// Subscription buffer (1,048,576).
    pub subscription_capacity: Option<usize>,
    /// Try `Nats.Url`'s servers in the order given, the first being this node's home, instead
    /// of shuffling them (false).
    pub retain_servers_order: Option<bool>,
}

/// Collator settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CollatorSection {
    /// Capture `consensus.finalize` in a JetStream stream and consume it durably.
    pub jetstream: bool,
    /// Fan-out timeout of the hourly usage collection (`20s`).
    pub usage_timeout: String,
    /// Days backfilled at start-up (2).
    pub backfill_days: u32,
    /// Run the hourly collection (true).
    pub hourly: bool,
}

impl Default for CollatorSection {
    fn default() -> Self {
        CollatorSection {
            jetstream: false,
            usage_timeout: "20s".into(),
            backfill_days: 2,
            hourly: true,
        }
    }
}

/// DNS settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct DnsSection {
    /// Flush period of the hit counters (`5m`).
    pub flush_interval: String,
    /// Distinct pending usage keys that trigger a flush at once (100,000).
    pub flush_at_keys: usize,
    /// Most distinct pending usage keys held in memory (200,000); see `HitLimits`.
    pub max_pending_keys: usize,
    /// The built-in DNS listener, UDP and TCP (`127.0.0.1:5353`); none by default.
    pub listen: Option<String>,
    /// Monitors' `/results` URLs to bootstrap and repair health from (default: from
    /// `DnsApi.MonitorAddress` and `MonitorPort`).
    pub monitors: Vec<String>,
    /// Leave members whose `Service.Active` is 0 out of answers (true; the Go node
    /// answers with them).
    pub skip_inactive: bool,
}

impl Default for DnsSection {
    fn default() -> Self {
        DnsSection {
            flush_interval: "5m".into(),
            flush_at_keys: 100_000,
            max_pending_keys: 200_000,
            listen: None,
            monitors: Vec::new(),
            skip_inactive: true,
        }
    }
}

/// Monitor settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MonitorSection {
    /// How often differing local results are proposed again (`30s`).
    pub reconcile_interval: String,
    /// How often the monitor catches up from the other monitors' official results, beside
    /// at start and after reconnects (`60s`; `0s`: only then).
    pub sync_interval: String,
}

impl Default for MonitorSection {
    fn default() -> Self {
        MonitorSection {
            reconcile_interval: "30s".into(),
            sync_interval: "60s".into(),
        }
    }
}

/// The parsed file (Go sections and ours), before flags.
#[derive(Clone, Default)]
pub struct FileConfig {
    /// `System.WorkDir`.
    pub work_dir: Option<PathBuf>,
    /// `System.LogLevel`.
    pub log_level: Option<String>,
    /// `System.ConfigUrls`.
    pub config_urls: BTreeMap<String, String>,
    /// The DNS node's Go sections (`DnsApi` poll settings, `Maxmind`, `GeoDNSOverrides`).
    pub geodns: GeoDnsFile,
    /// `System.ConfigReloadTime` (seconds).
    pub config_reload: Option<Duration>,
    /// `System.MinimumOfflineTime` (seconds).
    pub minimum_offline: Option<Duration>,
    /// `Nats.NodeID`.
    pub nats_node_id: Option<String>,
    /// `Nats.Url`.
    pub nats_url: Option<String>,
    /// `Nats.User`.
    pub nats_user: Option<String>,
    /// `Nats.Pass`.
    pub nats_pass: Option<String>,
    /// `Mysql` as a URL, when the section names a host.
    pub mysql_url: Option<String>,
    /// The API section of each role (`MonitorApi`, `DnsApi`, `CollatorApi`): the section's
    /// name and its address as `host:port` (IPv6 in brackets).
    pub role_api: BTreeMap<Role, (&'static str, String)>,
    /// `Checks`.
    pub checks: Vec<CheckDef>,
    /// Sections only one Go program reads, by the role they point to (`Checks` → monitor,
    /// `GeoDNSOverrides` → DNS, `CollatorApi`/`Matrix` → collator; `Maxmind` → DNS only
    /// when nothing else points anywhere, since Go monitor files carry it too).
    pub role_hints: Vec<(Role, &'static str)>,
    /// `CheckWorkers.numWorkers`.
    pub check_workers: Option<i64>,
    /// `IbpNode`.
    pub ibp: IbpSection,
    /// `IbpNode` as written, to tell a value given in the file from a default.
    pub ibp_raw: Value,
}

impl std::fmt::Debug for FileConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileConfig")
            .field("work_dir", &self.work_dir)
            .field("nats_node_id", &self.nats_node_id)
            .field("nats_url", &self.nats_url)
            .field("nats_user", &self.nats_user)
            .field("nats_pass", &self.nats_pass.as_ref().map(|_| "***"))
            .field(
                "mysql_url",
                &self.mysql_url.as_deref().map(ibp_storage::redact_url),
            )
            .field("role_api", &self.role_api)
            .field("checks", &self.checks.len())
            .finish_non_exhaustive()
    }
}

impl FileConfig {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| cerr(path.display().to_string(), format!("cannot read: {e}")))?;
        FileConfig::parse(&text).map_err(|e| ConfigError {
            field: format!("{}: {}", path.display(), e.field),
            reason: e.reason,
        })
    }

    /// Parses config text. Unknown sections are ignored, as the Go nodes do.
    pub fn parse(text: &str) -> Result<FileConfig, ConfigError> {
        let root =
            go_json::parse(text).map_err(|e| cerr("(file)", format!("not valid JSON: {e}")))?;
        if !root.is_object() {
            return Err(cerr("(file)", "expected a JSON object at the top level"));
        }
        let mut c = FileConfig::default();
        if let Some(sys) = get(&root, "System") {
            c.work_dir = get_str(sys, "System", "WorkDir")?
                .filter(|s| !s.is_empty())
                .map(PathBuf::from);
            c.log_level = get_str(sys, "System", "LogLevel")?;
            if let Some(urls) = get(sys, "ConfigUrls") {
                let obj = urls
                    .as_object()
                    .ok_or_else(|| cerr("System.ConfigUrls", "expected an object of name → URL"))?;
                for (k, v) in obj {
                    match v {
                        Value::String(s) => {
                            c.config_urls.insert(k.clone(), s.clone());
                        }
                        Value::Null => {}
                        other => {
                            return Err(cerr(
                                format!("System.ConfigUrls.{k}"),
                                format!("expected a URL string, got {other}"),
                            ));
                        }
                    }
                }
            }
            c.config_reload = get_u64(sys, "System", "ConfigReloadTime")?.map(Duration::from_secs);
            c.minimum_offline =
                get_u64(sys, "System", "MinimumOfflineTime")?.map(Duration::from_secs);
        }
        if let Some(n) = get(&root, "Nats") {
            c.nats_node_id = get_str(n, "Nats", "NodeID")?;
            c.nats_url = get_str(n, "Nats", "Url")?.filter(|s| !s.is_empty());
            c.nats_user = get_str(n, "Nats", "User")?.filter(|s| !s.is_empty());
            c.nats_pass = get_str(n, "Nats", "Pass")?.filter(|s| !s.is_empty());
        }
        if let Some(m) = get(&root, "Mysql") {
            let host = get_str(m, "Mysql", "Host")?.unwrap_or_default();
            if !host.is_empty() {
                let port = get_str(m, "Mysql", "Port")?
                    .filter(|p| !p.is_empty())
                    .unwrap_or_else(|| "3306".into());
                if port.parse::<u16>().is_err() {
                    return Err(cerr("Mysql.Port", format!("{port:?} is not a port number")));
                }
                let user = get_str(m, "Mysql", "User")?.unwrap_or_default();
                let pass = get_str(m, "Mysql", "Pass")?.unwrap_or_default();
                let db = get_str(m, "Mysql", "DB")?.unwrap_or_default();
                if db.is_empty() {
                    return Err(cerr(
                        "Mysql.DB",
                        "a database name is required when Mysql.Host is set",
                    ));
                }
                let auth = match (user.is_empty(), pass.is_empty()) {
                    (true, _) => String::new(),
                    (false, true) => format!("{}@", pct(&user)),
                    (false, false) => format!("{}:{}@", pct(&user), pct(&pass)),
                };
                c.mysql_url = Some(format!("mysql://{auth}{host}:{port}/{db}"));
            }
        }
        for (role, section) in [
            (Role::Monitor, "MonitorApi"),
            (Role::Dns, "DnsApi"),
            (Role::Collator, "CollatorApi"),
        ] {
            if let Some(api) = get(&root, section) {
                let addr =
                    get_str(api, section, "ListenAddress")?.unwrap_or_else(|| "0.0.0.0".into());
                if let Some(port) = get_str(api, section, "ListenPort")? {
                    port.parse::<u16>().map_err(|_| {
                        cerr(
                            format!("{section}.ListenPort"),
                            format!("{port:?} is not a port number"),
                        )
                    })?;
                    c.role_api
                        .insert(role, (section, format!("{}:{port}", listen_host(&addr))));
                }
            }
        }
        c.geodns = geodns::parse_file(&root)?;
        for (role, section) in [
            (Role::Monitor, "Checks"),
            (Role::Dns, "GeoDNSOverrides"),
            (Role::Collator, "CollatorApi"),
            (Role::Collator, "Matrix"),
        ] {
            if get(&root, section).is_some() {
                c.role_hints.push((role, section));
            }
        }
        if c.role_hints.is_empty() && get(&root, "Maxmind").is_some() {
            c.role_hints.push((Role::Dns, "Maxmind"));
        }
        if let Some(w) = get(&root, "CheckWorkers") {
            c.check_workers = match get(w, "numWorkers") {
                None => None,
                Some(Value::Number(n)) => n.as_i64(),
                Some(other) => {
                    return Err(cerr(
                        "CheckWorkers.numWorkers",
                        format!("expected a number, got {other}"),
                    ));
                }
            };
        }
        if let Some(checks) = get(&root, "Checks") {
            let arr = checks
                .as_array()
                .ok_or_else(|| cerr("Checks", "expected an array"))?;
            for (i, ch) in arr.iter().enumerate() {
                let sec = format!("Checks[{i}]");
                let name = get_str(ch, &sec, "Name")?
                    .ok_or_else(|| cerr(format!("{sec}.Name"), "missing"))?;
                let ty = get_str(ch, &sec, "CheckType")?.unwrap_or_default();
                let check_type = ibp_wire::CheckType::parse(&ty).ok_or_else(|| {
                    cerr(
                        format!("{sec}.CheckType"),
                        format!("{ty:?} is not site, domain or endpoint"),
                    )
                })?;
                c.checks.push(CheckDef {
                    name,
                    // Only exactly 1 is scheduled, as in the Go monitor.
                    enabled: get_u64(ch, &sec, "Enabled")?.unwrap_or(0) == 1,
                    check_type,
                    timeout: get_u64(ch, &sec, "Timeout")?.unwrap_or(30),
                    minimum_interval: get_u64(ch, &sec, "MinimumInterval")?.unwrap_or(60),
                    extra_options: get(ch, "ExtraOptions").cloned().unwrap_or(Value::Null),
                });
            }
        }
        if let Some(ibp) = get(&root, "IbpNode") {
            c.ibp =
                serde_json::from_value(ibp.clone()).map_err(|e| cerr("IbpNode", e.to_string()))?;
            c.ibp_raw = ibp.clone();
        }
        Ok(c)
    }

    /// The check named `name` of type `ty` (the reference lookup).
    pub fn check(&self, name: &str, ty: ibp_wire::CheckType) -> Option<&CheckDef> {
        self.checks
            .iter()
            .find(|c| c.name == name && c.check_type == ty)
    }
}

fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Command-line overrides (flags win over the file).
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--role`.
    pub role: Option<String>,
    /// `--node-id`.
    pub node_id: Option<String>,
    /// `--nats-url`.
    pub nats_url: Option<String>,
    /// `--http`.
    pub http: Option<String>,
    /// `--db`.
    pub db: Option<String>,
    /// `--work-dir`.
    pub work_dir: Option<PathBuf>,
    /// `--dns-listen`.
    pub dns_listen: Option<String>,
}

/// The resolved configuration a node runs with.
#[derive(Clone)]
pub struct NodeConfig {
    /// Role.
    pub role: Role,
    /// Where the role came from (a flag, `IbpNode.role`, the Go sections, the default).
    pub role_source: String,
    /// Node ID.
    pub node_id: NodeId,
    /// NATS options.
    pub nats: ConnectOptions,
    /// HTTP listen address.
    pub http: std::net::SocketAddr,
    /// Database URL.
    pub db: String,
    /// Working directory.
    pub work_dir: PathBuf,
    /// Public address announced in joins.
    pub public_address: String,
    /// Consensus rules.
    pub core: CoreConfig,
    /// Where members and services come from (`MembersConfig`, `ServicesConfig`, …).
    pub config_urls: BTreeMap<String, String>,
    /// Reload period of those.
    pub config_reload: Duration,
    /// `System.MinimumOfflineTime`.
    pub minimum_offline: Duration,
    /// Checks.
    pub checks: Vec<CheckDef>,
    /// Collator settings.
    pub collator: CollatorSection,
    /// Hourly usage fan-out timeout.
    pub usage_timeout: Duration,
    /// DNS hit flush period.
    pub flush_interval: Duration,
    /// Monitor reconcile period.
    pub reconcile_interval: Duration,
    /// Monitor catch-up period (zero: at start and after reconnects only).
    pub sync_interval: Duration,
    /// Built-in checks: whether they run, and their settings.
    pub run_checks: bool,
    /// Settings of the checker.
    pub checker: ibp_checks::CheckerSettings,
    /// Signing, verification, the HTTP write lock.
    pub security: SecurityConfig,
    /// What a DNS node answers from and where.
    pub geodns: GeoDnsConfig,
    /// Log level from the file (`RUST_LOG` wins).
    pub log_level: Option<String>,
    /// Log format from the file (the flag wins).
    pub log_format: Option<String>,
    /// How long a clean shutdown may take to write what the node accepted.
    pub shutdown_grace: Duration,
    /// DNS hit counter limits.
    pub hit_limits: crate::roles::HitLimits,
    /// Largest member/service list accepted, bytes.
    pub lists_max_bytes: u64,
    /// Time limit of one list fetch.
    pub lists_timeout: Duration,
    /// Where the node ID came from (`--node-id`, `Nats.NodeID`, or the kept file).
    pub node_id_source: String,
    /// Where a derived node ID is kept (none when the ID is configured).
    pub node_id_file: Option<PathBuf>,
    /// The node's clock offset from the host's (`IbpNode.testing.clock_offset`; tests).
    pub clock_offset: chrono::TimeDelta,
    /// Where the settings a flag can give came from (`role`, `node_id`, `nats.servers`,
    /// `http`, `db`, `work_dir`, `dns.listen`): `--flag`, a file field, or `default`.
    pub sources: BTreeMap<&'static str, String>,
}

impl std::fmt::Debug for NodeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeConfig")
            .field("role", &self.role)
            .field("role_source", &self.role_source)
            .field("node_id", &self.node_id)
            .field(
                "nats",
                &crate::connection::redact_servers(&self.nats.servers),
            )
            .field("http", &self.http)
            .field("db", &ibp_storage::redact_url(&self.db))
            .field("work_dir", &self.work_dir)
            .finish_non_exhaustive()
    }
}

fn duration(field: &str, s: &str) -> Result<Duration, ConfigError> {
    ibp_core::parse_duration(s).map_err(|e| cerr(field, e))
}

impl NodeConfig {
    /// Resolves file + flags + defaults, validating everything.
    pub fn resolve(file: &FileConfig, o: &Overrides) -> Result<NodeConfig, ConfigError> {
        let ibp = &file.ibp;
        let (role, role_source) = match (&o.role, &ibp.role) {
            (Some(r), _) => (parse_role(r, "--role")?, "--role".to_string()),
            (None, Some(r)) => (parse_role(r, "IbpNode.role")?, "IbpNode.role".to_string()),
            (None, None) => infer_role(&file.role_hints)?,
        };
        let mut sources: BTreeMap<&'static str, String> = BTreeMap::new();
        sources.insert("role", role_source.clone());
        let (work_dir_source, work_dir) = match (&o.work_dir, &file.work_dir) {
            (Some(w), _) => ("--work-dir", w.clone()),
            (None, Some(w)) => ("System.WorkDir", w.clone()),
            (None, None) => ("default", PathBuf::from("ibp-data")),
        };
        sources.insert("work_dir", work_dir_source.into());
        let mut node_id_file = None;
        let (id_field, id) = if let Some(id) = &o.node_id {
            ("--node-id".to_string(), id.clone())
        } else if let Some(id) = &ibp.node_id {
            ("IbpNode.node_id".to_string(), id.clone())
        } else if let Some(id) = file.nats_node_id.as_ref().filter(|i| !i.trim().is_empty()) {
            ("Nats.NodeID".to_string(), id.clone())
        } else {
            let (path, id) = derived_node_id(role, &work_dir);
            node_id_file = Some(path.clone());
            (path.display().to_string(), id)
        };
        let node_id = NodeId::new(id).map_err(|e| cerr(&id_field, e.to_string()))?;
        sources.insert(
            "node_id",
            match &node_id_file {
                Some(p) => format!("derived, kept in {}", p.display()),
                None => id_field.clone(),
            },
        );
        if role == Role::Dns && node_id.as_str().chars().count() > MAX_STORED_ID {
            return Err(cerr(
                &id_field,
                format!(
                    "{:?} has {} characters; a DNS node's ID keys its rows in requests.node_id (VARCHAR({MAX_STORED_ID})), where a longer one would be cut and collide with another node's: use at most {MAX_STORED_ID}",
                    node_id.as_str(),
                    node_id.as_str().chars().count()
                ),
            ));
        }
        let mut nats = ConnectOptions {
            servers: o
                .nats_url
                .clone()
                .or_else(|| file.nats_url.clone())
                .unwrap_or_else(|| "nats://127.0.0.1:4222".into()),
            user: file.nats_user.clone(),
            password: file.nats_pass.clone(),
            ..ConnectOptions::default()
        };
        if nats.user.is_some() != nats.password.is_some() {
            return Err(cerr("Nats.User/Nats.Pass", "give both or neither"));
        }
        if let Some(x) = &ibp.nats {
            nats.token = x.token.clone();
            nats.nkey_seed = x.nkey_seed.clone();
            nats.credentials_file = x.credentials_file.clone();
            nats.tls_ca_file = x.tls_ca_file.clone();
            nats.tls_cert_file = x.tls_cert_file.clone();
            nats.tls_key_file = x.tls_key_file.clone();
            nats.tls_required = x.tls_required.unwrap_or(false);
            nats.retain_servers_order = x.retain_servers_order.unwrap_or(false);
            if let Some(d) = &x.reconnect_delay {
                nats.reconnect_delay = duration("IbpNode.nats.reconnect_delay", d)?;
            }
            if let Some(d) = &x.connect_timeout {
                nats.connect_timeout = duration("IbpNode.nats.connect_timeout", d)?;
            }
            if let Some(d) = &x.ping_interval {
                nats.ping_interval = duration("IbpNode.nats.ping_interval", d)?;
            }
            if let Some(n) = x.max_pings_outstanding {
                nats.max_pings_outstanding = n;
            }
            if let Some(n) = x.subscription_capacity {
                if n == 0 {
                    return Err(cerr(
                        "IbpNode.nats.subscription_capacity",
                        "must be positive",
                    ));
                }
                nats.subscription_capacity = n;
            }
            if x.tls_cert_file.is_some() != x.tls_key_file.is_some() {
                return Err(cerr(
                    "IbpNode.nats.tls_cert_file/tls_key_file",
                    "give both or neither",
                ));
            }
        }
        let url_field = if o.nats_url.is_some() {
            "--nats-url"
        } else {
            "Nats.Url"
        };
        sources.insert(
            "nats.servers",
            if o.nats_url.is_none() && file.nats_url.is_none() {
                "default".into()
            } else {
                url_field.into()
            },
        );
        for url in nats
            .servers
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let shown = crate::connection::redact_servers(url);
            check_nats_url(url).map_err(|e| cerr(url_field, format!("{shown:?}: {e}")))?;
            url.parse::<async_nats::ServerAddr>()
                .map_err(|e| cerr(url_field, format!("{shown:?}: {e}")))?;
        }
        let default_port = match role {
            Role::Monitor => 6101,
            Role::Dns => 6100,
            Role::Collator => 9000,
        };
        let (http_field, http_text) = if let Some(h) = &o.http {
            ("--http".to_string(), h.clone())
        } else if let Some(h) = &ibp.http {
            ("IbpNode.http".to_string(), h.clone())
        } else if let Some((section, h)) = file.role_api.get(&role) {
            (format!("{section}.ListenAddress/ListenPort"), h.clone())
        } else {
            sources.insert("http", "default".into());
            ("--http".to_string(), format!("127.0.0.1:{default_port}"))
        };
        sources.entry("http").or_insert_with(|| http_field.clone());
        let http = http_text.parse::<std::net::SocketAddr>().map_err(|_| {
            cerr(
                http_field,
                format!("{http_text:?} is not an address like 127.0.0.1:6101"),
            )
        })?;
        let (db_field, db) = if let Some(d) = &o.db {
            ("--db", d.clone())
        } else if let Some(d) = &ibp.db {
            ("IbpNode.db", d.clone())
        } else if let Some(d) = &file.mysql_url {
            ("Mysql", d.clone())
        } else {
            sources.insert("db", "default".into());
            (
                "--db",
                format!(
                    "sqlite://{}",
                    work_dir
                        .join(format!("ibp-node-{}.db", role.short_name()))
                        .display()
                ),
            )
        };
        sources.entry("db").or_insert_with(|| db_field.into());
        if !(db.starts_with("sqlite:")
            || db.starts_with("mysql://")
            || db.starts_with("mariadb://"))
        {
            return Err(cerr(
                db_field,
                format!(
                    "{:?} is neither sqlite://PATH nor mysql://user:pass@host:port/db",
                    ibp_storage::redact_url(&db)
                ),
            ));
        }
        let core = ibp.consensus.clone().unwrap_or_default();
        core.validate()
            .map_err(|e| cerr(format!("IbpNode.consensus.{}", e.field), e.reason))?;
        let collator = ibp.collator.clone().unwrap_or_default();
        let usage_timeout = duration("IbpNode.collator.usage_timeout", &collator.usage_timeout)?;
        let dns = ibp.dns.clone().unwrap_or_default();
        let flush_interval = duration("IbpNode.dns.flush_interval", &dns.flush_interval)?;
        if flush_interval.is_zero() {
            return Err(cerr("IbpNode.dns.flush_interval", "must be positive"));
        }
        let monitor = ibp.monitor.clone().unwrap_or_default();
        let reconcile_interval = duration(
            "IbpNode.monitor.reconcile_interval",
            &monitor.reconcile_interval,
        )?;
        let sync_interval = duration("IbpNode.monitor.sync_interval", &monitor.sync_interval)?;
        if reconcile_interval.is_zero() {
            return Err(cerr(
                "IbpNode.monitor.reconcile_interval",
                "must be positive",
            ));
        }
        let cs = ibp.checks.clone().unwrap_or_default();
        let mut checker =
            ibp_checks::CheckerSettings::default().with_go_workers(file.check_workers);
        if let Some(n) = cs.max_in_flight {
            if n == 0 {
                return Err(cerr("IbpNode.checks.max_in_flight", "must be positive"));
            }
            checker.max_in_flight = n;
        }
        if let Some(n) = cs.max_per_host {
            if n == 0 {
                return Err(cerr("IbpNode.checks.max_per_host", "must be positive"));
            }
            checker.max_per_host = n;
        }
        if let Some(n) = cs.confirm_count {
            checker.confirm_count = n;
        }
        if let Some(d) = &cs.confirm_spacing {
            checker.confirm_spacing = duration("IbpNode.checks.confirm_spacing", d)?;
        }
        if let Some(d) = &cs.stall_after {
            checker.stall_after = Some(duration("IbpNode.checks.stall_after", d)?);
        }
        checker.max_lag_blocks = cs.max_lag_blocks;
        checker.ca_file = cs.ca_file.clone();
        if let Some(d) = &cs.warm_up {
            checker.warm_up = duration("IbpNode.checks.warm_up", d)?;
        }
        for (i, c) in file.checks.iter().enumerate() {
            ibp_checks::spec::validate(&c.spec()).map_err(|e| {
                let (field, reason) = e.split_once(": ").unwrap_or((&e, ""));
                cerr(format!("Checks[{i}].{field}"), reason)
            })?;
        }
        let run_checks = cs.enabled.unwrap_or(true) && file.checks.iter().any(|c| c.enabled);
        let (listen, listen_field) = match (&o.dns_listen, &dns.listen) {
            (Some(l), _) => (Some(l.as_str()), "--dns-listen"),
            (None, Some(l)) => (Some(l.as_str()), "IbpNode.dns.listen"),
            (None, None) => (None, ""),
        };
        sources.insert(
            "dns.listen",
            if listen_field.is_empty() {
                "default".into()
            } else {
                listen_field.into()
            },
        );
        let geodns = geodns::resolve(
            &file.geodns,
            file.config_urls.get("StaticDNSConfig"),
            listen,
            listen_field,
            &dns.monitors,
            dns.skip_inactive,
        )?;
        let mut security =
            SecurityConfig::resolve(ibp.security.as_ref(), nats.nkey_seed.as_deref())?;
        if let Some(id) = &security.identity {
            let trusted = security.trust.get(id.public_key()).cloned();
            match trusted {
                Some(t) if t.node_id == node_id.as_str() && t.role == role => {}
                Some(t) => security.warnings.push(format!(
                    "this node's key {} is trusted as {} ({}), not as {} ({}): the others will reject what it signs",
                    id.public_key(), t.node_id, t.role, node_id, role
                )),
                None if security.mode.checks() || !security.trust.is_empty() => {
                    security.warnings.push(format!(
                        "this node's key {} is not in the trust list: nodes in enforce mode drop what it signs",
                        id.public_key()
                    ))
                }
                None => {}
            }
        }
        let shutdown_grace = duration(
            "IbpNode.shutdown_grace",
            ibp.shutdown_grace.as_deref().unwrap_or("60s"),
        )?;
        if dns.flush_at_keys == 0 || dns.max_pending_keys < dns.flush_at_keys {
            return Err(cerr(
                "IbpNode.dns.max_pending_keys",
                "must be at least flush_at_keys, which must be positive",
            ));
        }
        let clock_offset = match ibp.testing.as_ref().and_then(|t| t.clock_offset.as_deref()) {
            None => chrono::TimeDelta::zero(),
            Some(text) => {
                let t = text.trim();
                let (sign, rest) = match t.strip_prefix('-') {
                    Some(r) => (-1, r),
                    None => (1, t.strip_prefix('+').unwrap_or(t)),
                };
                let d = duration("IbpNode.testing.clock_offset", rest)?;
                chrono::TimeDelta::from_std(d)
                    .map(|d| d * sign)
                    .map_err(|e| cerr("IbpNode.testing.clock_offset", e.to_string()))?
            }
        };
        let lists = ibp.lists.clone().unwrap_or_default();
        let lists_timeout = duration("IbpNode.lists.timeout", &lists.timeout)?;
        if lists.max_bytes == 0 || lists_timeout.is_zero() {
            return Err(cerr(
                "IbpNode.lists",
                "max_bytes and timeout must be positive",
            ));
        }
        if let Some(f) = &ibp.log_format
            && f != "pretty"
            && f != "json"
        {
            return Err(cerr(
                "IbpNode.log_format",
                format!("{f:?}: expected pretty or json"),
            ));
        }
        Ok(NodeConfig {
            role,
            role_source,
            node_id,
            nats,
            http,
            db,
            work_dir,
            public_address: ibp.public_address.clone().unwrap_or_default(),
            core,
            config_urls: file.config_urls.clone(),
            config_reload: file
                .config_reload
                .unwrap_or(Duration::from_secs(3600))
                .max(Duration::from_secs(1)),
            minimum_offline: file.minimum_offline.unwrap_or(Duration::from_secs(30)),
            checks: file.checks.clone(),
            collator,
            usage_timeout,
            flush_interval,
            reconcile_interval,
            sync_interval,
            log_level: file.log_level.clone(),
            log_format: ibp.log_format.clone(),
            shutdown_grace,
            hit_limits: crate::roles::HitLimits {
                flush_at: dns.flush_at_keys,
                max_keys: dns.max_pending_keys,
            },
            lists_max_bytes: lists.max_bytes,
            lists_timeout,
            node_id_source: id_field,
            node_id_file,
            clock_offset,
            sources,
            run_checks,
            checker,
            security,
            geodns,
        })
    }
}

/// Width of the `node_id` column of `requests`: a DNS node's ID must fit it whole.
pub const MAX_STORED_ID: usize = 32;

/// A Go `ListenAddress` as the host part of `host:port`, accepting what Go's `net.Listen`
/// does: empty (all interfaces), `localhost`, IPv4 and IPv6 literals (bracketed here).
fn listen_host(addr: &str) -> String {
    let a = addr.trim();
    match a {
        "" => "0.0.0.0".into(),
        "localhost" => "127.0.0.1".into(),
        a if a.contains(':') && !a.starts_with('[') => format!("[{a}]"),
        a => a.into(),
    }
}

/// A NATS server URL as the clients take it: `nats`, `tls`, `ws` or `wss` with a host (a
/// bare `host:port` is `nats://host:port`).
fn check_nats_url(url: &str) -> Result<(), String> {
    if url.chars().any(char::is_whitespace) {
        return Err("a URL has no spaces".into());
    }
    let full = if url.contains("://") {
        url.to_string()
    } else if url.contains('/') {
        return Err("expected nats://host:port (or host:port)".into());
    } else {
        format!("nats://{url}")
    };
    let u = url::Url::parse(&full).map_err(|e| e.to_string())?;
    if !matches!(u.path(), "" | "/") {
        return Err(format!("a server URL has no path ({:?})", u.path()));
    }
    if !matches!(u.scheme(), "nats" | "tls" | "ws" | "wss") {
        return Err(format!(
            "scheme {:?} is not nats, tls, ws or wss",
            u.scheme()
        ));
    }
    if u.host_str().is_none_or(str::is_empty) {
        return Err("no host".into());
    }
    Ok(())
}

fn parse_role(text: &str, field: &str) -> Result<Role, ConfigError> {
    text.parse()
        .map_err(|e: ibp_wire::UnknownRole| cerr(field, e.to_string()))
}

/// The role a Go config file belongs to, from the sections only one Go program reads; a
/// file without any is a monitor's (the default), one pointing at two roles is refused.
fn infer_role(hints: &[(Role, &'static str)]) -> Result<(Role, String), ConfigError> {
    let mut roles: Vec<Role> = hints.iter().map(|(r, _)| *r).collect();
    roles.dedup();
    let sections = |r: Role| {
        hints
            .iter()
            .filter(|(x, _)| *x == r)
            .map(|(_, s)| *s)
            .collect::<Vec<_>>()
            .join(", ")
    };
    match roles.as_slice() {
        [] => Ok((
            Role::Monitor,
            "the default (no section names a role)".into(),
        )),
        [r] => Ok((*r, format!("the Go config's {}", sections(*r)))),
        _ => Err(cerr(
            "--role",
            format!(
                "the config file's sections belong to several programs ({}): say which this node is with --role or IbpNode.role",
                roles
                    .iter()
                    .map(|r| format!("{} ← {}", r.short_name(), sections(*r)))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        )),
    }
}

/// The ID a node without a configured one uses: `<role>-<host>-<6 hex>`, the hex derived
/// from the host and the work directory, and kept in `<work_dir>/node-id.<role>` from the
/// first start on. So it is the same at every start (a DNS node counted under a new ID at
/// every start would be counted twice), `check-config` shows the one `run` will use, and
/// two nodes on one host (each with its own work directory) differ. At most 31 characters:
/// it fits `requests.node_id`. Nothing is written here: see [`keep_node_id`].
pub fn derived_node_id(role: Role, work_dir: &Path) -> (PathBuf, String) {
    let path = work_dir.join(format!("node-id.{}", role.short_name()));
    if let Ok(text) = std::fs::read_to_string(&path) {
        let id = text.trim().to_string();
        if !id.is_empty() {
            return (path, id);
        }
    }
    let raw_host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .unwrap_or_default();
    let host: String = raw_host
        .trim()
        .split('.')
        .next()
        .unwrap_or("")
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(14)
        .collect();
    let host = host.trim_matches('-');
    let host = if host.is_empty() { "node" } else { host };
    let dir = std::path::absolute(work_dir).unwrap_or_else(|_| work_dir.to_path_buf());
    let digest = {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(raw_host.trim().as_bytes());
        h.update([0]);
        h.update(dir.to_string_lossy().as_bytes());
        h.update([0]);
        h.update(role.short_name().as_bytes());
        h.finalize()
    };
    let suffix: String = digest.iter().take(3).map(|b| format!("{b:02x}")).collect();
    (path, format!("{}-{host}-{suffix}", role.short_name()))
}

/// Keeps a derived node ID in the work directory (at `run`), so it survives a move of the
/// directory or a rename of the host.
pub fn keep_node_id(cfg: &NodeConfig) -> Result<(), ConfigError> {
    let Some(path) = cfg.node_id_file.as_ref() else {
        return Ok(());
    };
    if path.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(&cfg.work_dir)
        .and_then(|()| std::fs::write(path, format!("{}\n", cfg.node_id)))
        .map_err(|e| {
            cerr(
                path.display().to_string(),
                format!(
                    "cannot keep the node ID {} here: {e} (set Nats.NodeID or --node-id, or make the work directory writable)",
                    cfg.node_id
                ),
            )
        })?;
    tracing::info!(node_id = %cfg.node_id, file = %path.display(), "no node ID configured: this one is kept for later starts");
    Ok(())
}
