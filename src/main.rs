//! The `pixie` command line: parses arguments, calls into the library, and turns errors into
//! messages and exit codes (0 ok, 1 failure, 2 bad usage or configuration).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use pixie::config::{Config, DhcpMode, Overrides};
use pixie::policy::rhai::{self as prhai, Fallback, Limits, RhaiConfig, RhaiPolicy};
use pixie::policy::{BootDecision, BootRequest, Decision, HwAddr, OptionValue, Phase, Policy, Uuid};
use pixie::server::Server;
use pixie::wire::arch::Arch;
use tokio_util::sync::CancellationToken;

mod workbench_cli;

#[derive(Parser, Debug)]
#[command(name = "pixie", version, about = "A network-boot (PXE) server whose boot decisions are Rhai scripts")]
struct Cli {
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve proxyDHCP and TFTP, asking the policy scripts about every client.
    Serve(ServeArgs),
    /// Compile the policy and report every error as file:line:column.
    Check(PolicyDirs),
    /// Run the policy on a synthetic request and print the decision.
    Simulate(SimulateArgs),
    /// List the leases of full DHCP mode (from <state_dir>/pixie.db and leases.journal).
    Leases(LeasesArgs),
    /// Run every client request of a packet capture through the policy.
    Replay(workbench_cli::ReplayArgs),
    /// Run the policy tests in DIR/cases.toml against the policy in DIR.
    Test(workbench_cli::TestArgs),
    /// Show and edit the per-host store scripts use (store.get/set/del).
    Store(workbench_cli::StoreArgs),
}

#[derive(Args, Debug)]
pub(crate) struct PolicyDirs {
    /// Folder of *.rhai scripts forming the policy [default: from the config, else scripts/].
    #[arg(long)]
    scripts: Option<PathBuf>,
    /// Folder of modules the scripts may import [default: from the config, else plugins/].
    #[arg(long)]
    plugins: Option<PathBuf>,
    /// Configuration file [default: ./pixie.toml when present].
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Configuration file [default: ./pixie.toml when present, else built-in defaults].
    #[arg(long)]
    config: Option<PathBuf>,
    /// Serve this interface (repeatable). Implies the standard ports 67, 4011 and 69 unless the
    /// port options say otherwise. Without it, the shipped defaults listen on loopback only.
    #[arg(long = "interface", value_name = "IF")]
    interfaces: Vec<String>,
    /// Folder of *.rhai policy scripts.
    #[arg(long)]
    scripts: Option<PathBuf>,
    /// Folder of modules the scripts may import.
    #[arg(long)]
    plugins: Option<PathBuf>,
    /// Folder served over TFTP (read-only).
    #[arg(long)]
    tftp_root: Option<PathBuf>,
    /// DHCPv4 mode.
    #[arg(long, value_parser = ["proxy", "full", "off"])]
    dhcp_mode: Option<String>,
    /// DHCP port.
    #[arg(long)]
    dhcp_port: Option<u16>,
    /// PXE boot server port.
    #[arg(long)]
    pxe_port: Option<u16>,
    /// TFTP port.
    #[arg(long)]
    tftp_port: Option<u16>,
    /// Address to bind.
    #[arg(long)]
    listen: Option<IpAddr>,
    /// Folder for state that survives restarts (pixie.db, leases.journal).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Full DHCP mode without a config file: hand out START-END; the subnet comes from the
    /// address of --interface (or of --listen) that contains START.
    #[arg(long, value_name = "START-END")]
    pool: Option<String>,
}

#[derive(Args, Debug)]
struct SimulateArgs {
    #[command(flatten)]
    dirs: PolicyDirs,
    /// Client MAC address (required unless --from-capture).
    #[arg(long, required_unless_present = "from_capture")]
    mac: Option<HwAddr>,
    #[command(flatten)]
    capture: workbench_cli::FromCapture,
    /// Client architecture: an IANA code (7) or name (x64-uefi); repeat for a list.
    #[arg(long)]
    arch: Vec<String>,
    /// Machine UUID (8-4-4-4-12).
    #[arg(long)]
    uuid: Option<Uuid>,
    /// User class (option 77), e.g. iPXE.
    #[arg(long)]
    user_class: Option<String>,
    /// Vendor class (option 60) [default: PXEClient:Arch:NNNNN:UNDI:003000 from --arch].
    #[arg(long)]
    vendor_class: Option<String>,
    /// Exchange phase: discover, request, proxy-4011, …
    #[arg(long, default_value = "discover")]
    phase: String,
    /// Relay agent address (giaddr).
    #[arg(long)]
    relay: Option<IpAddr>,
    /// Host name (option 12).
    #[arg(long)]
    hostname: Option<String>,
    /// Evaluate as if it were this time (RFC 3339, e.g. 2026-11-25T22:30:00+01:00).
    #[arg(long)]
    at: Option<String>,
    /// Print the decision as JSON.
    #[arg(long)]
    json: bool,
}

/// An error for the user: the message, and the exit code.
pub(crate) struct Failure(pub(crate) String, pub(crate) u8);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string(), 1)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Command::Serve(a) => serve(a),
        Command::Check(a) => check(a),
        Command::Simulate(a) => simulate(a),
        Command::Leases(a) => leases(a),
        Command::Replay(a) => workbench_cli::replay(a),
        Command::Test(a) => workbench_cli::test(a),
        Command::Store(a) => workbench_cli::store(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(msg, code)) => {
            eprintln!("pixie: {msg}");
            ExitCode::from(code)
        }
    }
}

pub(crate) fn init_logging(default: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("PIXIE_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

pub(crate) fn load_config(path: Option<&Path>, ov: &Overrides) -> Result<Config, Failure> {
    let bad = |e: pixie::config::ConfigError| Failure(e.to_string(), 2);
    match path {
        Some(p) => Config::load(p, ov).map_err(bad),
        None if Path::new("pixie.toml").is_file() => Config::load(Path::new("pixie.toml"), ov).map_err(bad),
        None => Config::try_defaults(ov).map_err(bad),
    }
}

pub(crate) fn rhai_config(cfg: &Config) -> RhaiConfig {
    RhaiConfig {
        scripts_dir: cfg.scripts.clone(),
        plugins_dir: cfg.plugins.clone(),
        limits: Limits { max_operations: cfg.max_operations, deadline: cfg.deadline, ..Limits::default() },
        fallback: match &cfg.fallback {
            Decision::Ignore => Fallback::Ignore,
            Decision::Boot(b) => Fallback::Boot(b.clone()),
        },
    }
}

fn serve(a: ServeArgs) -> Result<(), Failure> {
    init_logging("info");
    let ov = Overrides {
        interfaces: a.interfaces,
        listen: a.listen,
        scripts: a.scripts,
        plugins: a.plugins,
        tftp_root: a.tftp_root,
        state_dir: a.state_dir,
        dhcp_mode: a.dhcp_mode.map(|m| m.parse::<DhcpMode>()).transpose().map_err(|e| Failure(e, 2))?,
        dhcp_port: a.dhcp_port,
        pxe_port: a.pxe_port,
        tftp_port: a.tftp_port,
        pool: a.pool,
    };
    let cfg = load_config(a.config.as_deref(), &ov)?;
    if !cfg.tftp_root.is_dir() {
        return Err(Failure(
            format!("TFTP root {} is not a folder (create it or pass --tftp-root DIR)", cfg.tftp_root.display()),
            2,
        ));
    }
    let policy = RhaiPolicy::load(rhai_config(&cfg))
        .map_err(|r| Failure(format!("the policy does not compile:\n{r}"), 1))?;
    workbench_cli::serve_store(&policy, &cfg.state_dir)?;
    let policy = Arc::new(policy);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let shutdown = CancellationToken::new();
        let _watcher = prhai::spawn_watcher(policy.clone(), shutdown.clone())
            .map_err(|e| Failure(format!("cannot watch {} for changes: {e}", cfg.scripts.display()), 1))?;
        let server = Server::bind(cfg).map_err(|e| Failure(e.to_string(), 1))?;
        let sd = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutting down");
            sd.cancel();
        });
        server.run(policy as Arc<dyn Policy>, shutdown).await.map_err(|e| Failure(e.to_string(), 1))
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

pub(crate) fn dirs_config(d: &PolicyDirs) -> Result<Config, Failure> {
    let ov = Overrides { scripts: d.scripts.clone(), plugins: d.plugins.clone(), ..Default::default() };
    load_config(d.config.as_deref(), &ov)
}

fn check(d: PolicyDirs) -> Result<(), Failure> {
    init_logging("warn");
    let cfg = dirs_config(&d)?;
    match prhai::check(&cfg.scripts, &cfg.plugins) {
        Ok(report) => {
            for (file, hooks) in &report.files {
                let hooks = if hooks.is_empty() { "no hooks".to_string() } else { hooks.join(", ") };
                println!("{}: ok ({hooks})", file.display());
            }
            println!("policy ok: {} script(s)", report.files.len());
            Ok(())
        }
        Err(report) => {
            println!("{report}");
            Err(Failure(format!("{} error(s) in the policy", report.diagnostics.len()), 1))
        }
    }
}

fn simulate(a: SimulateArgs) -> Result<(), Failure> {
    init_logging("info");
    let cfg = dirs_config(&a.dirs)?;
    let phase = Phase::from_name(&a.phase).ok_or_else(|| {
        Failure(format!("'{}' is not a phase (discover, request, inform, proxy-4011, solicit, request6)", a.phase), 2)
    })?;
    if a.capture.from_capture.is_some() {
        return workbench_cli::simulate_from_capture(&a.capture, &rhai_config(&cfg), a.at.as_deref(), a.json);
    }
    let mut req = BootRequest::new_v4(a.mac.clone().expect("clap: required without --from-capture"), phase);
    for s in &a.arch {
        let arch = Arch::from_name(s)
            .ok_or_else(|| Failure(format!("'{s}' is not an architecture code or name (e.g. 7 or x64-uefi)"), 2))?;
        req.arches.push(arch);
    }
    req.uuid = a.uuid.filter(|u| !u.is_nil());
    req.vendor_class = a.vendor_class.or_else(|| {
        let code = req.arch().map(|x| x.code()).unwrap_or(0);
        Some(format!("PXEClient:Arch:{code:05}:UNDI:003000"))
    });
    if let Some(uc) = a.user_class {
        req.ipxe = uc == "iPXE";
        req.user_class = vec![uc];
    }
    req.relay = a.relay;
    req.hostname = a.hostname;
    let policy = RhaiPolicy::load(rhai_config(&cfg)).map_err(|r| Failure(format!("the policy does not compile:\n{r}"), 1))?;
    workbench_cli::connect_store(&policy, a.capture.state_dir.as_deref())?;
    if let Some(at) = &a.at {
        let t = chrono::DateTime::parse_from_rfc3339(at)
            .map_err(|e| Failure(format!("--at '{at}' is not an RFC 3339 time ({e}); e.g. 2026-11-25T22:30:00+01:00"), 2))?;
        policy.set_clock(Some(t));
    }
    let decision = policy.boot(&req).map_err(|e| {
        Failure(format!("the policy failed: {e}\n(pixie serve would apply the fallback: {:?})", cfg.fallback), 1)
    })?;
    if a.json {
        println!("{}", decision_json(&decision));
    } else {
        match &decision {
            Decision::Ignore => println!("ignore: pixie stays silent for {}", req.mac),
            Decision::Boot(b) => print!("{}", decision_text(b)),
        }
    }
    Ok(())
}

fn option_json(code: u16, v: &OptionValue) -> serde_json::Value {
    match v {
        OptionValue::Text(s) => serde_json::json!(s),
        OptionValue::Int(n) => serde_json::json!(n),
        OptionValue::Ips(ips) => serde_json::json!(ips.iter().map(|i| i.to_string()).collect::<Vec<_>>()),
        OptionValue::Bytes(_) => {
            let hex: String = v.to_bytes(code).iter().map(|b| format!("{b:02x}")).collect();
            serde_json::json!({ "hex": hex })
        }
    }
}

fn decision_json(d: &Decision) -> serde_json::Value {
    match d {
        Decision::Ignore => serde_json::json!({ "decision": "ignore" }),
        Decision::Boot(b) => {
            let options: serde_json::Map<String, serde_json::Value> =
                b.options.iter().map(|(c, v)| (c.to_string(), option_json(*c, v))).collect();
            serde_json::json!({
                "decision": "boot",
                "filename": b.filename,
                "next_server": b.next_server.map(|i| i.to_string()),
                "server_name": b.server_name,
                "options": options,
                "address": b.address.map(|i| i.to_string()),
                "lease_time": b.lease_time,
            })
        }
    }
}

fn decision_text(b: &BootDecision) -> String {
    let mut s = String::from("boot:\n");
    s += &format!("  filename     {}\n", b.filename.as_deref().unwrap_or("(none)"));
    s += &format!(
        "  next_server  {}\n",
        b.next_server.map(|i| i.to_string()).unwrap_or_else(|| "(the receiving interface's address)".into())
    );
    if let Some(n) = &b.server_name {
        s += &format!("  server_name  {n}\n");
    }
    for (c, v) in &b.options {
        s += &format!("  option {c:<5} {}\n", option_json(*c, v));
    }
    if let Some(a) = b.address {
        s += &format!("  address      {a}\n");
    }
    if let Some(l) = b.lease_time {
        s += &format!("  lease_time   {l}\n");
    }
    s
}

#[derive(Args, Debug)]
struct LeasesArgs {
    /// State folder holding pixie.db and leases.journal [default: from the config, else state/].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Configuration file [default: ./pixie.toml when present].
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print JSON (one array of objects) instead of a table.
    #[arg(long)]
    json: bool,
}

fn leases(a: LeasesArgs) -> Result<(), Failure> {
    use pixie::leases::{journal, unix_now};
    init_logging("warn");
    let dir = match a.state_dir {
        Some(d) => d,
        None => load_config(a.config.as_deref(), &Overrides::default())?.state_dir,
    };
    let rows = journal::read_all(&dir)?;
    let now = unix_now();
    if a.json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|l| {
                serde_json::json!({
                    "ip": l.ip.to_string(),
                    "mac": l.mac.to_string(),
                    "client_id": l.client.iter().map(|b| format!("{b:02x}")).collect::<String>(),
                    "hostname": l.hostname,
                    "state": l.state.as_str(),
                    "expires": l.expires,
                    "active": l.expires > now && l.state != pixie::leases::LeaseState::Released,
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(v));
        return Ok(());
    }
    println!("{:<15}  {:<17}  {:<8}  {:<22}  hostname", "address", "mac", "state", "expires");
    for l in &rows {
        let when = chrono::DateTime::from_timestamp(l.expires as i64, 0)
            .map(|t| t.with_timezone(&chrono::Local).format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_default();
        let left = if l.expires > now { format!("{when} (+{}s)", l.expires - now) } else { format!("{when} (past)") };
        println!(
            "{:<15}  {:<17}  {:<8}  {:<22}  {}",
            l.ip.to_string(),
            l.mac.to_string(),
            l.state.as_str(),
            left,
            l.hostname.as_deref().unwrap_or("")
        );
    }
    println!("{} lease record(s) in {}", rows.len(), dir.display());
    Ok(())
}
