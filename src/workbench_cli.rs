//! The workbench subcommands: `replay`, `test`, `store`, and `simulate --from-capture`.
//! Kept apart from `main.rs` so that the serve/check/simulate code stays as it is.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use clap::{Args, Subcommand};
use pixie::config::Overrides;
use pixie::policy::rhai::{RhaiConfig, RhaiPolicy};
use pixie::policy::Decision;
use pixie::store::{HostStore, SqliteStore};
use pixie::workbench::{cases, replay};

use crate::{Failure, PolicyDirs};

/// `simulate --from-capture FILE --index N`.
#[derive(Args, Debug)]
pub(crate) struct FromCapture {
    /// Take the request from this pcap/pcapng capture instead of the flags above.
    #[arg(long, value_name = "FILE")]
    pub(crate) from_capture: Option<PathBuf>,
    /// Which client request of the capture (1 = the first; `pixie replay` numbers them).
    #[arg(long, requires = "from_capture", value_name = "N")]
    pub(crate) index: Option<usize>,
    /// Use the per-host store in DIR/pixie.db instead of an empty in-memory one. Careful:
    /// the policy's store.set calls then change it.
    #[arg(long, value_name = "DIR")]
    pub(crate) state_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub(crate) struct ReplayArgs {
    /// The capture (pcap or pcapng; Ethernet, Linux cooked or raw IP).
    capture: PathBuf,
    #[command(flatten)]
    dirs: PolicyDirs,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    /// Ask the policy about every DHCPv4 request, also those proxyDHCP leaves to the
    /// network's DHCP server (DHCPREQUEST on port 67, clients without PXEClient).
    #[arg(long)]
    all: bool,
    /// Evaluate every request at this time (RFC 3339) [default: each packet's capture time].
    #[arg(long)]
    at: Option<String>,
    /// pixie's address as the policy sees it (req.server) [default: the address the request
    /// was sent to, else the boot server that answered in the capture].
    #[arg(long)]
    server: Option<IpAddr>,
    /// Use the per-host store in DIR/pixie.db instead of an empty in-memory one.
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub(crate) struct TestArgs {
    /// Folder holding cases.toml and the policy (scripts/, plugins/).
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// Run every case on the store in DIR/pixie.db instead of a fresh in-memory store each
    /// (the cases' store entries are written into it).
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub(crate) struct StoreArgs {
    /// State folder holding pixie.db [default: [server] state_dir from the config, else state/].
    #[arg(long, value_name = "DIR")]
    state_dir: Option<PathBuf>,
    /// Configuration file [default: ./pixie.toml when present].
    #[arg(long)]
    config: Option<PathBuf>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    op: Option<StoreOp>,
}

#[derive(Subcommand, Debug)]
enum StoreOp {
    /// Every key with its value (the default).
    List,
    /// One key's value.
    Get {
        /// The key, e.g. a MAC.
        key: String,
    },
    /// Set a key to a JSON value: '"installed"', '42', '{"state":"local"}'.
    Set {
        /// The key.
        key: String,
        /// The value, as JSON.
        value: String,
    },
    /// Remove a key.
    Del {
        /// The key.
        key: String,
    },
}

fn load_policy(cfg: RhaiConfig) -> Result<RhaiPolicy, Failure> {
    RhaiPolicy::load(cfg).map_err(|r| Failure(format!("the policy does not compile:\n{r}"), 1))
}

/// Connects the policy to `<dir>/pixie.db` when a state folder is given.
pub(crate) fn connect_store(policy: &RhaiPolicy, dir: Option<&Path>) -> Result<(), Failure> {
    if let Some(dir) = dir {
        let s = SqliteStore::open(dir).map_err(|e| Failure(e.to_string(), 1))?;
        policy.set_store(Arc::new(s));
    }
    Ok(())
}

/// `pixie serve`: scripts' store.get/set/del go to `<state_dir>/pixie.db`.
pub(crate) fn serve_store(policy: &RhaiPolicy, state_dir: &Path) -> Result<(), Failure> {
    let s = SqliteStore::open(state_dir).map_err(|e| {
        Failure(format!("{e} (the per-host store; set [server] state_dir or --state-dir)"), 1)
    })?;
    tracing::info!(db = %s.path().display(), generation = policy.generation(), "policy loaded; per-host store ready");
    policy.set_store(Arc::new(s));
    Ok(())
}

fn parse_at(at: Option<&str>) -> Result<Option<chrono::DateTime<chrono::FixedOffset>>, Failure> {
    at.map(|at| {
        chrono::DateTime::parse_from_rfc3339(at).map_err(|e| {
            Failure(format!("--at '{at}' is not an RFC 3339 time ({e}); e.g. 2026-11-25T22:30:00+01:00"), 2)
        })
    })
    .transpose()
}

pub(crate) fn replay(a: ReplayArgs) -> Result<(), Failure> {
    crate::init_logging("warn");
    let cfg = crate::dirs_config(&a.dirs)?;
    let at = parse_at(a.at.as_deref())?;
    let requests = replay::read_capture(&a.capture, a.server).map_err(|e| Failure(e.to_string(), 1))?;
    let policy = load_policy(crate::rhai_config(&cfg))?;
    connect_store(&policy, a.state_dir.as_deref())?;
    let rows = replay::replay(&policy, requests, &replay::Options { all: a.all, at });
    if a.json {
        for r in &rows {
            println!("{}", r.json());
        }
    } else if rows.is_empty() {
        println!("{}: no DHCP client requests (ports 67, 4011, 547)", a.capture.display());
    } else {
        print!("{}", replay::table(&rows));
    }
    Ok(())
}

pub(crate) fn simulate_from_capture(
    c: &FromCapture,
    cfg: &RhaiConfig,
    at: Option<&str>,
    json: bool,
) -> Result<(), Failure> {
    let path = c.from_capture.as_deref().expect("called with --from-capture");
    let at = parse_at(at)?;
    let requests = replay::read_capture(path, None).map_err(|e| Failure(e.to_string(), 1))?;
    let n = c.index.unwrap_or(1);
    let count = requests.len();
    let Some(request) = requests.into_iter().find(|r| r.index == n) else {
        return Err(Failure(
            format!("{} has {count} client request(s); --index {n} is not one of them (`pixie replay` lists them)", path.display()),
            2,
        ));
    };
    let replay::RequestKind::Dhcp { req, skip } = &request.kind else {
        return Err(Failure(format!("request {n} is {}: it does not parse, so there is nothing to simulate", request.phase()), 1));
    };
    let policy = load_policy(cfg.clone())?;
    connect_store(&policy, c.state_dir.as_deref())?;
    let when = at.unwrap_or(request.at);
    policy.set_clock(Some(when));
    let (decision, now) = policy.boot_traced(req);
    let decision = decision.map_err(|e| {
        Failure(format!("the policy failed: {e}\n(pixie serve would apply the fallback: {:?})", cfg.fallback), 1)
    })?;
    if json {
        let mut v = crate::decision_json(&decision);
        if let Some(o) = v.as_object_mut() {
            o.insert("request".into(), request_json(&request, req));
            if let Some(t) = now {
                o.insert("now".into(), t.to_rfc3339().into());
            }
        }
        println!("{v}");
        return Ok(());
    }
    println!(
        "request {n} of {}: {} {} {} from {} at +{:.3}s",
        path.display(),
        req.mac,
        request.arch(),
        request.phase(),
        request.src,
        request.offset
    );
    if let Some(why) = skip {
        println!("(proxyDHCP would not ask the policy about this request: {why})");
    }
    if let Some(t) = now {
        println!("now() = {}", t.to_rfc3339());
    }
    match &decision {
        Decision::Ignore => println!("ignore: pixie stays silent for {}", req.mac),
        Decision::Boot(b) => print!("{}", crate::decision_text(b)),
    }
    Ok(())
}

fn request_json(r: &replay::CapturedRequest, req: &pixie::policy::BootRequest) -> serde_json::Value {
    serde_json::json!({
        "index": r.index,
        "mac": req.mac.to_string(),
        "arch": r.arch(),
        "phase": r.phase(),
        "src": r.src.to_string(),
        "captured_at": r.at.to_rfc3339(),
    })
}

pub(crate) fn test(a: TestArgs) -> Result<(), Failure> {
    crate::init_logging("error");
    let suite = cases::load(&a.dir).map_err(|e| Failure(e.to_string(), 2))?;
    let policy = load_policy(RhaiConfig {
        scripts_dir: suite.scripts.clone(),
        plugins_dir: suite.plugins.clone(),
        limits: Default::default(),
        fallback: Default::default(),
    })?;
    let persistent: Option<Arc<dyn HostStore>> = match &a.state_dir {
        Some(d) => Some(Arc::new(SqliteStore::open(d).map_err(|e| Failure(e.to_string(), 1))?)),
        None => None,
    };
    println!("{} ({} case(s), policy {})", suite.file.display(), suite.cases.len(), suite.scripts.display());
    let results = cases::run(&suite, &policy, persistent);
    print!("{}", cases::report(&results));
    let failed = results.iter().filter(|r| !r.passed()).count();
    if failed > 0 {
        return Err(Failure(format!("{failed} case(s) failed in {}", suite.file.display()), 1));
    }
    Ok(())
}

pub(crate) fn store(a: StoreArgs) -> Result<(), Failure> {
    let dir = match a.state_dir {
        Some(d) => d,
        None => {
            let ov = Overrides::default();
            crate::load_config(a.config.as_deref(), &ov)?.state_dir
        }
    };
    let s = SqliteStore::open(&dir).map_err(|e| Failure(e.to_string(), 1))?;
    let fail = |e: pixie::store::StoreError| Failure(e.to_string(), 1);
    match a.op.unwrap_or(StoreOp::List) {
        StoreOp::List => {
            let list = s.list().map_err(fail)?;
            if a.json {
                for e in &list {
                    println!("{}", serde_json::json!({ "key": e.key, "value": e.value, "updated": e.updated }));
                }
            } else if list.is_empty() {
                println!("{}: the store is empty", s.path().display());
            } else {
                let w = list.iter().map(|e| e.key.len()).max().unwrap_or(0);
                for e in &list {
                    let when = chrono::DateTime::from_timestamp(e.updated, 0)
                        .map(|t| t.with_timezone(&chrono::Local).format("%Y-%m-%d %H:%M:%S").to_string())
                        .unwrap_or_default();
                    println!("{:<w$}  {}  {}", e.key, when, e.value);
                }
            }
        }
        StoreOp::Get { key } => match s.get(&key).map_err(fail)? {
            Some(v) => println!("{v}"),
            None => return Err(Failure(format!("no key {key:?} in {}", s.path().display()), 1)),
        },
        StoreOp::Set { key, value } => {
            let v: serde_json::Value = serde_json::from_str(&value).map_err(|e| {
                Failure(
                    format!("{value:?} is not JSON ({e}); quote strings for the shell too: '\"installed\"'"),
                    2,
                )
            })?;
            s.set(&key, &v).map_err(|e| match e {
                pixie::store::StoreError::Invalid(m) => Failure(m, 2),
                e => fail(e),
            })?;
            if !a.json {
                println!("{key} = {v}");
            }
        }
        StoreOp::Del { key } => {
            if !s.del(&key).map_err(fail)? {
                return Err(Failure(format!("no key {key:?} in {}", s.path().display()), 1));
            }
        }
    }
    Ok(())
}
