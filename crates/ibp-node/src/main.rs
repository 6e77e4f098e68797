//! `ibp-node`: the daemon an operator runs in the monitor, DNS or collator role, plus
//! one-shot collectors and the demo.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use ibp_node::app::App;
use ibp_node::cluster::{Node, NodeOptions};
use ibp_node::collectors;
use ibp_node::config::{FileConfig, NodeConfig, Overrides};
use ibp_wire::{DowntimeRequest, NodeId, Role, UsageRequest, WireTime};

#[derive(Parser)]
#[command(
    name = "ibp-node",
    version,
    about = "IBP GeoDNS node: monitor, DNS or collator role over NATS, wire-compatible with the Go nodes"
)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum LogFormat {
    Pretty,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node until SIGINT/SIGTERM.
    Run(RunArgs),
    /// Ask every DNS node for usage and print the result as JSON.
    Usage(UsageArgs),
    /// Ask every monitor for downtime events and print the result as JSON.
    Downtime(DowntimeArgs),
    /// Validate a config file and print what the node would run with.
    CheckConfig(CheckArgs),
    /// Run the matching checks of a monitor config once, now, and explain each verdict.
    /// Exit status: 0 all up, 2 some down, 1 could not run.
    Check(CheckCmdArgs),
    /// Run a demo cluster (3 monitors, 2 DNS nodes, 1 collator) on a private nats-server.
    Demo(ibp_node::demo::DemoArgs),
    /// The monthly SLA report (downtime and availability per member and service) from a
    /// collator's database, as a table, JSON or CSV.
    Sla(SlaArgs),
    /// Benchmark on this machine (own nats-server and nodes, loopback): decision latency,
    /// burst drain, messages/s, fan-out, memory, CPU; prints JSON.
    Bench(BenchArgs),
    /// Create a node key (an NKey user seed, mode 0600) and print its public key last.
    Keygen(KeygenArgs),
    /// Print a nats-server `authorization` block with one user per role and exactly the
    /// subjects each role needs (see docs/security.md).
    NatsPermissions,
}

#[derive(Args)]
struct SlaArgs {
    /// Database: sqlite://PATH or mysql://user:pass@host:port/db (default: from --config).
    #[arg(long)]
    db: Option<String>,
    /// The month, YYYY-MM.
    #[arg(long)]
    month: String,
    /// A node config: its System.ConfigUrls give the lists, its Mysql section the database.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Member list (URL or path), instead of the config's MembersConfig.
    #[arg(long)]
    members: Option<String>,
    /// Service list (URL or path), instead of the config's ServicesConfig.
    #[arg(long)]
    services: Option<String>,
    /// Print JSON (the shape of GET /v1/sla).
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// Print CSV: one line per member, service and family.
    #[arg(long)]
    csv: bool,
}

async fn sla(a: SlaArgs) -> Result<()> {
    let file = match &a.config {
        Some(p) => Some(FileConfig::load(p)?),
        None => None,
    };
    let from_file = |k: &str| file.as_ref().and_then(|f| f.config_urls.get(k).cloned());
    let lists = ibp_node::commands::sla::ListSources {
        members: a
            .members
            .or_else(|| from_file("MembersConfig"))
            .context("--members (or --config with System.ConfigUrls.MembersConfig) is required")?,
        services: a.services.or_else(|| from_file("ServicesConfig")).context(
            "--services (or --config with System.ConfigUrls.ServicesConfig) is required",
        )?,
    };
    let db =
        a.db.or_else(|| {
            file.as_ref()
                .and_then(|f| f.ibp.db.clone().or_else(|| f.mysql_url.clone()))
        })
        .context("--db (or --config with a Mysql section) is required")?;
    let report = ibp_node::commands::sla::report(&db, &a.month, &lists, chrono::Utc::now())
        .await
        .map_err(|e| anyhow!(e))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else if a.csv {
        print!("{}", ibp_core::sla::to_csv(&report));
    } else {
        print!("{}", ibp_node::commands::sla::table(&report));
    }
    Ok(())
}

#[derive(Args)]
struct BenchArgs {
    /// Smaller sizes (about a minute): what CI runs.
    #[arg(long)]
    quick: bool,
    /// The nats-server binary (default: NATS_SERVER_BIN, else the PATH).
    #[arg(long)]
    nats_server: Option<PathBuf>,
}

#[derive(Args)]
struct KeygenArgs {
    /// Where to write the seed; an existing file is never overwritten.
    #[arg(long)]
    out: PathBuf,
}

fn keygen(a: KeygenArgs) -> anyhow::Result<()> {
    let id = ibp_node::commands::keygen::keygen(&a.out).map_err(|e| anyhow!(e))?;
    println!("seed written to {} (keep it private)", a.out.display());
    println!(
        "trust entry: {{\"public_key\": \"{}\", \"node_id\": \"<this node's ID>\", \"role\": \"<IBPMonitor|IBPDns|IBPCollator>\"}}",
        id.public_key()
    );
    println!("{}", id.public_key());
    Ok(())
}

#[derive(Args)]
struct RunArgs {
    /// Config file: a Go node config (Nats, Mysql, System, …) plus an optional IbpNode section.
    #[arg(long, short)]
    config: Option<PathBuf>,
    #[command(flatten)]
    flags: NodeFlags,
}

/// The flags that override the config file, shared by `run` and `check-config`.
#[derive(Args)]
struct NodeFlags {
    /// Role: monitor, dns or collator (default: IbpNode.role, else monitor).
    #[arg(long)]
    role: Option<String>,
    /// Node ID (default: Nats.NodeID). No spaces, dots, '*' or '>'.
    #[arg(long)]
    node_id: Option<String>,
    /// NATS server URLs, comma-separated (default: Nats.Url, else nats://127.0.0.1:4222).
    #[arg(long)]
    nats_url: Option<String>,
    /// HTTP API listen address (default: IbpNode.http, else the role's Go API section, else 127.0.0.1:<6101|6100|9000>).
    #[arg(long)]
    http: Option<String>,
    /// Database: sqlite://PATH (default, under WorkDir) or mysql://user:pass@host:port/db.
    #[arg(long)]
    db: Option<String>,
    /// Working directory (default: System.WorkDir, else ./ibp-data).
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// DNS role: answer DNS queries on this address, UDP and TCP (e.g. 127.0.0.1:5353), as
    /// well as the PowerDNS remote backend on the HTTP API (default: IbpNode.dns.listen).
    #[arg(long)]
    dns_listen: Option<String>,
}

impl NodeFlags {
    fn overrides(self) -> Overrides {
        Overrides {
            role: self.role,
            node_id: self.node_id,
            nats_url: self.nats_url,
            http: self.http,
            db: self.db,
            work_dir: self.work_dir,
            dns_listen: self.dns_listen,
        }
    }
}

#[derive(Args)]
struct CheckCmdArgs {
    /// A monitor config (Go `Checks`, `System.ConfigUrls`, optional `IbpNode.checks`).
    #[arg(long, short)]
    config: PathBuf,
    /// Only this member (Details.Name).
    #[arg(long)]
    member: Option<String>,
    /// Only this service (its key in the service list).
    #[arg(long)]
    service: Option<String>,
    /// Only this check (ping, ssl, wss, ethrpc); runs even when disabled in the config.
    #[arg(long = "type")]
    check: Option<String>,
    /// Print JSON instead of lines.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct CheckArgs {
    /// Config file.
    #[arg(long, short)]
    config: PathBuf,
    #[command(flatten)]
    flags: NodeFlags,
    /// Print JSON: `{"settings": {key: {value, source}}, "warnings": [...]}`.
    #[arg(long)]
    json: bool,
    /// Do not contact the database (by default a MySQL database is asked which schema
    /// changes the first start would make and whether the user may make them).
    #[arg(long)]
    offline: bool,
}

#[derive(Args)]
struct FanoutArgs {
    /// NATS server URLs, comma-separated.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// NATS user.
    #[arg(long, env = "IBP_NATS_USER")]
    nats_user: Option<String>,
    /// NATS password (prefer the environment variable).
    #[arg(long, env = "IBP_NATS_PASS", hide_env_values = true)]
    nats_pass: Option<String>,
    /// How long to wait for answers (e.g. 20s).
    #[arg(long, default_value = "20s")]
    timeout: String,
    /// Prefix of the ID this tool uses on the bus (default ibp-cli). A random suffix is
    /// always added: a tool never borrows a live node's ID.
    #[arg(long)]
    node_id: Option<String>,
}

#[derive(Args)]
struct UsageArgs {
    #[command(flatten)]
    bus: FanoutArgs,
    /// First day, YYYY-MM-DD (default: today, UTC).
    #[arg(long)]
    from: Option<String>,
    /// Last day, YYYY-MM-DD, inclusive (default: --from).
    #[arg(long)]
    to: Option<String>,
    /// Only this domain.
    #[arg(long)]
    domain: Option<String>,
    /// Only this member.
    #[arg(long)]
    member: Option<String>,
    /// Only this country code.
    #[arg(long)]
    country: Option<String>,
    /// Also print totals merged across nodes.
    #[arg(long)]
    aggregate: bool,
}

#[derive(Args)]
struct DowntimeArgs {
    #[command(flatten)]
    bus: FanoutArgs,
    /// Window start, RFC 3339.
    #[arg(long)]
    from: String,
    /// Window end, RFC 3339.
    #[arg(long)]
    to: String,
    /// Only this member.
    #[arg(long)]
    member: Option<String>,
}

fn init_logs(format: Option<LogFormat>, default_level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    use std::io::IsTerminal;
    // Colour only for a person at a terminal: never into files or pipes, never with NO_COLOR.
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(std::io::stderr);
    let _ = match format {
        Some(LogFormat::Json) => builder.json().flatten_event(true).try_init(),
        _ => builder.compact().try_init(),
    };
}

/// The log filter for a Go `System.LogLevel` (the Go programs' levels: Trace, Debug, Info,
/// Warn, Error, Fatal), and a warning for a level Go does not know.
fn go_level(level: Option<&str>) -> (String, Option<String>) {
    let ours =
        "ibp_node={0},ibp_core={0},ibp_checks={0},ibp_storage={0},ibp_trust={0},ibp_geodns={0}";
    match level.map(|l| l.trim().to_ascii_lowercase()).as_deref() {
        None | Some("") | Some("info") => ("info".into(), None),
        Some("trace") => (format!("info,{}", ours.replace("{0}", "trace")), None),
        Some("debug") => (format!("info,{}", ours.replace("{0}", "debug")), None),
        Some("warn") | Some("warning") => ("warn".into(), None),
        Some("error") | Some("fatal") | Some("panic") => ("error".into(), None),
        Some(_) => (
            "info".into(),
            Some(format!(
                "System.LogLevel {:?} is not a level (Trace, Debug, Info, Warn, Error, Fatal); logging at Info",
                level.unwrap_or_default()
            )),
        ),
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn run(args: RunArgs, format: Option<LogFormat>) -> Result<()> {
    let file = match &args.config {
        Some(p) => FileConfig::load(p)?,
        None => FileConfig::default(),
    };
    let cfg = NodeConfig::resolve(&file, &args.flags.overrides())?;
    let format = format.or(match cfg.log_format.as_deref() {
        Some("json") => Some(LogFormat::Json),
        _ => None,
    });
    let (level, unknown) = go_level(cfg.log_level.as_deref());
    init_logs(format, &level);
    if let Some(w) = unknown {
        tracing::warn!("{w}");
    }
    if cfg.db.starts_with("sqlite:") {
        std::fs::create_dir_all(&cfg.work_dir)
            .with_context(|| format!("cannot create WorkDir {}", cfg.work_dir.display()))?;
    }
    ibp_node::config::keep_node_id(&cfg)?;
    let app = App::start(cfg).await?;
    wait_for_signal().await;
    tracing::info!("signal received; shutting down");
    let t = std::time::Instant::now();
    app.shutdown().await;
    tracing::info!(ms = t.elapsed().as_millis() as u64, "stopped");
    Ok(())
}

/// A short-lived node that learns the cluster, for the one-shot collectors.
async fn cli_node(bus: &FanoutArgs, target: Role) -> Result<(Node, Duration)> {
    let timeout = ibp_core::parse_duration(&bus.timeout).map_err(|e| anyhow!("--timeout: {e}"))?;
    let prefix = bus.node_id.clone().unwrap_or_else(|| "ibp-cli".to_string());
    let lower = prefix.to_ascii_lowercase();
    if lower.contains("monitor") || lower.contains("dns") {
        bail!(
            "--node-id {prefix:?}: a tool's ID must not contain \"monitor\" or \"dns\" (Go nodes would count it as one)"
        );
    }
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let id = NodeId::new(format!("{prefix}-{suffix}")).map_err(|e| anyhow!("--node-id: {e}"))?;
    let mut opts = NodeOptions::new(id, bus.nats_url.clone());
    opts.connect.user = bus.nats_user.clone();
    opts.connect.password = bus.nats_pass.clone();
    let node = Node::connect(opts).await?;
    // Its own ID, no role: the cluster answers its join (so it learns every node at once)
    // but counts it as nothing, and its leave at exit concerns only itself.
    if let Err(e) = node.enable_observer().await {
        node.shutdown(Duration::from_secs(1)).await;
        return Err(e.into());
    }
    if !node.wait_for_active(target, 1, timeout).await {
        node.shutdown(Duration::from_secs(1)).await;
        bail!(
            "no active {} node answered within {timeout:?}",
            target.short_name()
        );
    }
    // Joins keep arriving for a round trip or two; wait until the view is quiet.
    loop {
        let seen = node.handled();
        if !node
            .wait_until(|n| n.handled() != seen, Duration::from_millis(400))
            .await
        {
            break;
        }
    }
    Ok((node, timeout))
}

/// Exit code of `usage` and `downtime` when the answer is incomplete (a node missing, or
/// one that answered with an error); the JSON is printed all the same.
const EXIT_INCOMPLETE: u8 = 2;

fn exit_for(complete: bool) -> ExitCode {
    if complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_INCOMPLETE)
    }
}

async fn usage(a: UsageArgs) -> Result<ExitCode> {
    init_logs(None, "warn");
    let today = chrono::Utc::now()
        .date_naive()
        .format("%Y-%m-%d")
        .to_string();
    let from = a.from.clone().unwrap_or(today);
    let req = UsageRequest {
        start_date: from.clone(),
        end_date: a.to.clone().unwrap_or(from),
        domain: a.domain.unwrap_or_default(),
        member_name: a.member.unwrap_or_default(),
        country: a.country.unwrap_or_default(),
    };
    req.date_range().map_err(|e| anyhow!("--from/--to: {e}"))?;
    let (node, timeout) = cli_node(&a.bus, Role::Dns).await?;
    let r = collectors::request_all_dns_usage(&node, &req, timeout).await;
    node.shutdown(Duration::from_secs(1)).await;
    let report = r?;
    let mut out = serde_json::to_value(&report)?;
    if a.aggregate {
        out["aggregated"] = serde_json::to_value(collectors::aggregate_usage(&report.records))?;
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(exit_for(report.complete))
}

async fn downtime(a: DowntimeArgs) -> Result<ExitCode> {
    init_logs(None, "warn");
    let start = WireTime::parse(&a.from).map_err(|e| anyhow!("--from: {e}"))?;
    let end = WireTime::parse(&a.to).map_err(|e| anyhow!("--to: {e}"))?;
    for (flag, t, text) in [("--from", &start, &a.from), ("--to", &end, &a.to)] {
        if t.is_zero() {
            bail!(
                "{flag}: {text} is Go's zero time, which the protocol reads as \"not set\"; give a real time"
            );
        }
    }
    let req = DowntimeRequest {
        start_time: start,
        end_time: end,
        member_name: a.member.unwrap_or_default(),
    };
    let (node, timeout) = cli_node(&a.bus, Role::Monitor).await?;
    let r = collectors::request_all_monitors_downtime(&node, &req, timeout).await;
    node.shutdown(Duration::from_secs(1)).await;
    let report = r?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(exit_for(report.complete))
}

async fn check_config(a: CheckArgs) -> Result<()> {
    let file = FileConfig::load(&a.config)?;
    let cfg = NodeConfig::resolve(&file, &a.flags.overrides())?;
    let effective = ibp_node::config::Effective::of(&file, &cfg);
    if a.json {
        let mut doc = serde_json::json!({
            "config": a.config.display().to_string(),
            "settings": effective.to_json(),
            "warnings": cfg.security.warnings,
        });
        if !a.offline {
            let problems = ibp_node::inspect::database(&cfg).await;
            doc["database"] = serde_json::json!({"lines": problems.lines, "fatal": problems.fatal});
            println!("{}", serde_json::to_string_pretty(&doc)?);
            if let Some(fatal) = problems.fatal {
                bail!("{fatal}");
            }
            return Ok(());
        }
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(());
    }
    println!(
        "{}: the {} node {} will run with (value, then where it came from):",
        a.config.display(),
        cfg.role.short_name(),
        cfg.node_id
    );
    print!("{}", effective.render());
    for w in &cfg.security.warnings {
        println!("security warning: {w}");
    }
    if a.offline {
        return Ok(());
    }
    let problems = ibp_node::inspect::database(&cfg).await;
    for line in &problems.lines {
        println!("{line}");
    }
    if let Some(fatal) = problems.fatal {
        bail!("{fatal}");
    }
    Ok(())
}

async fn check(a: CheckCmdArgs) -> Result<ExitCode> {
    init_logs(None, "warn");
    let file = FileConfig::load(&a.config)?;
    let cfg = NodeConfig::resolve(
        &file,
        &Overrides {
            role: Some("monitor".into()),
            ..Overrides::default()
        },
    )?;
    let sel = ibp_node::commands::check::Selection {
        member: a.member,
        service: a.service,
        check: a.check,
    };
    let lines = tokio::time::timeout(
        ibp_node::commands::check::deadline(&cfg),
        ibp_node::commands::check::run(&cfg, &sel),
    )
    .await
    .map_err(|_| anyhow!("the checks did not finish in time"))?
    .map_err(|e| anyhow!(e))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&lines)?);
    } else {
        print!("{}", ibp_node::commands::check::render(&lines));
    }
    Ok(if lines.iter().all(|l| l.status) {
        ExitCode::from(ibp_node::commands::check::ALL_UP as u8)
    } else {
        ExitCode::from(ibp_node::commands::check::SOME_DOWN as u8)
    })
}

/// A failure as one line: each cause once (a wrapper that already quotes its cause does
/// not repeat it).
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

/// Rust ignores SIGPIPE, so printing into a closed pipe (`ibp-node usage … | head`) would
/// panic; restore the default so the tool ends quietly, as other Unix tools do.
fn quiet_on_closed_pipes() {
    #[cfg(unix)]
    {
        unsafe extern "C" {
            fn signal(sig: i32, handler: usize) -> usize;
        }
        const SIGPIPE: i32 = 13;
        const SIG_DFL: usize = 0;
        // SAFETY: resetting a signal to its default disposition at start, before any thread.
        unsafe { signal(SIGPIPE, SIG_DFL) };
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Only the one-shot tools, which print results: the daemon keeps Rust's default (a
    // peer closing a pipe must never kill a running node).
    if !matches!(cli.command, Command::Run(_)) {
        quiet_on_closed_pipes();
    }
    let json = matches!(cli.log_format, Some(LogFormat::Json));
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ibp-node: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r: Result<ExitCode> = rt.block_on(async {
        let ok = |r: Result<()>| r.map(|()| ExitCode::SUCCESS);
        match cli.command {
            Command::Run(a) => ok(run(a, cli.log_format).await),
            Command::Usage(a) => usage(a).await,
            Command::Downtime(a) => downtime(a).await,
            Command::CheckConfig(a) => ok(check_config(a).await),
            Command::Demo(a) => ok(ibp_node::demo::run(a).await.map_err(|e| anyhow!(e))),
            Command::Check(a) => check(a).await,
            Command::Keygen(a) => ok(keygen(a)),
            Command::Sla(a) => ok(sla(a).await),
            Command::Bench(a) => {
                init_logs(None, "warn");
                let report = ibp_node::bench::run(ibp_node::bench::BenchOptions {
                    quick: a.quick,
                    nats_server: a.nats_server,
                })
                .await
                .map_err(|e| anyhow!(e))?;
                println!("{}", serde_json::to_string_pretty(&report)?);
                Ok(ExitCode::SUCCESS)
            }
            Command::NatsPermissions => {
                use ibp_node::nats_permissions::{User, authorization};
                let users: Vec<User> = ibp_wire::Role::ALL
                    .into_iter()
                    .map(|role| User {
                        role,
                        user: role.short_name().to_string(),
                        password: Some(format!(
                            "$2a$11$<bcrypt hash from `nats server passwd` for {}>",
                            role.short_name()
                        )),
                    })
                    .collect();
                print!("{}", authorization(&users));
                Ok(ExitCode::SUCCESS)
            }
        }
    });
    match r {
        Ok(code) => code,
        Err(e) => {
            let line = one_line(&e);
            if json {
                // The same shape as the JSON log lines, so log shippers take it as one.
                eprintln!(
                    "{}",
                    serde_json::json!({
                        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                        "level": "ERROR",
                        "message": format!("ibp-node: {line}"),
                        "target": "ibp_node",
                    })
                );
            } else {
                eprintln!("ibp-node: {line}");
            }
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::go_level;

    #[test]
    fn go_log_levels_map_to_filters() {
        assert!(go_level(Some("Trace")).0.contains("ibp_node=trace"));
        assert!(go_level(Some("Debug")).0.contains("ibp_core=debug"));
        assert_eq!(go_level(Some("Warn")).0, "warn");
        assert_eq!(go_level(Some("Fatal")).0, "error");
        assert_eq!(go_level(None), ("info".to_string(), None));
        let (level, warning) = go_level(Some("Verbose"));
        assert_eq!(level, "info");
        assert!(warning.is_some_and(|w| w.contains("Verbose")));
    }
}
