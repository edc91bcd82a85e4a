//! The scripted policy: boot decisions made by hot-reloaded Rhai scripts.
//!
//! # The script set
//! Every `*.rhai` file directly in the scripts directory (sorted by name; hidden files are
//! skipped) forms one policy: functions defined in one file are callable from the others,
//! and a function (hook or helper) may be defined in one file only. `import "name"` loads
//! `<plugins_dir>/name.rhai` and nothing else (no `..`, absolute paths or symlinks out); every `*.rhai` in the plugins
//! directory must compile too.
//!
//! # Hooks
//! - `fn boot(req)` → [`Policy::boot`]: `()` ignores the client, a map answers it.
//! - `fn tftp(req)` / `fn http(req)` → [`Policy::file`], chosen by `req.protocol`.
//! - `fn booted(ack)` → [`Policy::booted`]; its return value is ignored.
//!
//! A hook that is not defined is not called: `boot` then ignores every client, `file` serves
//! the file as is, `booted` does nothing. Which file defines which hook is found once per
//! compile ([`CheckReport`]).
//!
//! # What scripts see
//! `req` in `boot(req)` (reading any other field is an error listing these):
//!
//! | field | value |
//! |---|---|
//! | `mac` | `"52:54:00:12:34:56"` (lower-case, colons) |
//! | `uuid` | `"7e57c0de-0077-4000-8000-525400770010"`, `""` if absent or all zeros |
//! | `arch` / `arches` | first architecture code (`-1` if none) / all codes, e.g. `[7]` |
//! | `arch_name` | IANA slug of `arch` (`x64-uefi`, `x86-bios`, …), `""` if none |
//! | `firmware` | `bios` (also when option 93 is absent), `uefi`, `uboot`, `openfirmware`, `other` |
//! | `http`, `ipxe`, `pxe` | UEFI HTTP boot client; iPXE; option 60 starts with `PXEClient` |
//! | `vendor_class`, `hostname`, `interface` | strings, `""` if absent |
//! | `user_class` / `user_classes` | first user class (`""` if none) / all of them |
//! | `relay`, `client_ip`, `server` | addresses as strings (`server`: pixie's own address on the receiving interface), `""` if none |
//! | `circuit_id`, `remote_id` | option 82 sub-options 1/2, lossy UTF-8, `""` if none |
//! | `family`, `phase` | `v4`/`v6`; `discover`, `request`, `proxy-4011`, `solicit`, … |
//! | `req.option(n)` | raw bytes of option `n` as a blob, `()` if absent |
//!
//! `boot` returns `()` or a map with `filename`, `next_server` (IP string), `server_name`,
//! `options` (`#{ "60": "PXEClient" }`: string key 1..=254 → string, blob, integer, or array of
//! IPv4 strings), `address` (IP string), `lease_time` (seconds).
//!
//! `req` in `tftp(req)` / `http(req)`: `path`, `client` (IP), `local` (IP or `""`), `mac` (`""`
//! when unknown), `protocol`, `options` (map of the client's TFTP options). Return `()` (or
//! `true`) to serve the file, a string or blob to serve that content, `#{ path: "x" }` to serve
//! another file, `false` to refuse. `ack` in `booted(ack)`: `mac`, `client`, `fields` (map).
//!
//! Helpers: `now()` (map: `year month day hour minute second weekday` (`"mon"`…`"sun"`)
//! `weekday_num` (1 = Monday) `timestamp date time tz`, in the server's local time zone (`TZ`)
//! unless [`RhaiPolicy::set_clock`] fixed it; the time used is logged with the decision);
//! `store.get(key)` / `store.get(key, default)` / `store.set(key, value)` / `store.del(key)` /
//! `store.keys()` (the per-host store, [`RhaiPolicy::set_store`]; `store` is a reserved name);
//! `read_data("hosts.csv")` (a `.csv` (array of maps), `.toml`, `.json` or text file in the
//! scripts directory, re-read when it changes);
//! `log_info`, `log_warn`, `log_error`, `print`, `debug` (to `tracing`, target
//! `pixie::script`); `import "name" as name;` from the plugins directory. `eval` is disabled.
//!
//! Top-level statements of the scripts (imports, constants) run once when the policy is
//! loaded, to check them, and again before each hook call, so that hooks see the imported
//! modules; keep them to imports and constants. Plugins are compiled and run once per
//! generation and cached.
//!
//! # Errors and the fallback
//! A hook that throws, exceeds a [`Limits`] bound, runs past the deadline or returns a value the
//! contract does not allow makes the call return `Err(PolicyError)` with `file:line:column`.
//! The policy does **not** apply the fallback itself: the caller (the protocol server) logs the
//! error together with the client's MAC and then answers with [`RhaiPolicy::fallback`]
//! ([`Fallback::decision`]), so the error is never silently swallowed.
//!
//! # Reloading
//! [`RhaiPolicy::reload`] compiles the whole set off the hot path and swaps it in atomically
//! ([`arc_swap`]); a call already running finishes on the generation it started with. A
//! failed compile keeps the last good generation and is kept in [`RhaiPolicy::last_error`].
//! [`spawn_watcher`] reloads when files in either directory change.

mod compile;
mod convert;
mod diag;
mod engine;
mod host;
mod resolver;
mod watch;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use rhai::Dynamic;

pub use diag::{CheckReport, CompileReport, Diagnostic};
pub use watch::spawn_watcher;

use compile::{Compiled, Hook};
use convert::{ScriptBootRequest, ScriptBooted, ScriptFileRequest};

use crate::policy::{
    BootDecision, BootRequest, BootedEvent, Decision, FileDecision, FileRequest, Policy,
    PolicyError,
};
use crate::store::{HostStore, MemoryStore};

/// The time a hook's `now()` returned (local time zone, or the fixed `--at` time).
pub type UsedTime = chrono::DateTime<chrono::FixedOffset>;

/// Bounds on one hook call. Every call gets the full budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Rhai operations per call (roughly: expressions evaluated). 0 = unlimited.
    pub max_operations: u64,
    /// Nesting of function calls (recursion depth). Each level costs native stack: keep it
    /// modest, hooks run on ordinary 2 MiB threads.
    pub max_call_depth: usize,
    /// Nesting of expressions at parse time (top level and inside functions).
    pub max_expr_depth: usize,
    /// Bytes in one string. 0 = unlimited.
    pub max_string_size: usize,
    /// Elements in one array (also bytes in one blob). 0 = unlimited.
    pub max_array_size: usize,
    /// Entries in one map. 0 = unlimited.
    pub max_map_size: usize,
    /// Wall-clock time per call, checked between operations.
    pub deadline: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_operations: 1_000_000,
            max_call_depth: 32,
            max_expr_depth: 64,
            max_string_size: 1 << 20,
            max_array_size: 64 * 1024,
            max_map_size: 4096,
            deadline: Duration::from_millis(100),
        }
    }
}

/// What a request whose hook failed gets. Applied by the caller, see the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Fallback {
    /// Stay silent (the client retries or tries its next boot device).
    #[default]
    Ignore,
    /// Answer with this fixed decision (e.g. a rescue image).
    Boot(BootDecision),
}

impl Fallback {
    /// The decision to answer with.
    pub fn decision(&self) -> Decision {
        match self {
            Fallback::Ignore => Decision::Ignore,
            Fallback::Boot(d) => Decision::Boot(d.clone()),
        }
    }
}

/// Where the scripts are and how they run.
#[derive(Debug, Clone)]
pub struct RhaiConfig {
    /// Directory of the policy's `*.rhai` scripts (watched).
    pub scripts_dir: PathBuf,
    /// Directory of the modules scripts may `import` (watched; may be missing if unused).
    pub plugins_dir: PathBuf,
    /// Bounds on each hook call.
    pub limits: Limits,
    /// What the caller answers when a hook fails.
    pub fallback: Fallback,
}

/// Compiles the scripts and plugins and reports every problem at once (for `pixie check`).
///
/// On success lists each script file with the hooks it defines.
pub fn check(scripts_dir: &Path, plugins_dir: &Path) -> Result<CheckReport, CompileReport> {
    let c = compile::compile(scripts_dir, plugins_dir, &Limits::default(), &new_env(), 0)?;
    Ok(CheckReport { files: c.files })
}

/// A fixed-clock-less environment with an in-memory store.
fn new_env() -> engine::Env {
    let store: Arc<dyn HostStore> = Arc::new(MemoryStore::new());
    engine::Env {
        clock: Arc::new(RwLock::new(None)),
        store: Arc::new(RwLock::new(store)),
    }
}

/// `*.rhai` files directly in `dir`, sorted by name, hidden files skipped.
pub(crate) fn rhai_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || !name.ends_with(".rhai") {
            continue;
        }
        if entry.path().is_file() {
            out.push(dir.join(&*name));
        }
    }
    out.sort();
    Ok(out)
}

/// The scripted policy. Cheap to call from many threads at once; see the module docs.
pub struct RhaiPolicy {
    cfg: RhaiConfig,
    /// The current generation. Each call loads it once and keeps its `Arc` until it returns.
    current: ArcSwap<Compiled>,
    /// The error of the last reload, cleared by a good one. std Mutex: never held across awaits.
    last_error: Mutex<Option<CompileReport>>,
    /// Fixed "now" for `simulate --at` and the per-host store, shared by all generations.
    env: engine::Env,
    /// Serialises reloads (watcher and manual) so generations are numbered in order.
    reloading: Mutex<()>,
}

impl fmt::Debug for RhaiPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RhaiPolicy")
            .field("scripts_dir", &self.cfg.scripts_dir)
            .field("plugins_dir", &self.cfg.plugins_dir)
            .field("generation", &self.generation())
            .field("fallback", &self.cfg.fallback)
            .finish()
    }
}

impl RhaiPolicy {
    /// Compiles the policy for the first time; unlike [`RhaiPolicy::reload`] there is no
    /// previous policy to keep, so any problem is an error. The first generation is 1.
    ///
    /// Scripts start with an in-memory store; see [`RhaiPolicy::set_store`].
    pub fn load(cfg: RhaiConfig) -> Result<RhaiPolicy, CompileReport> {
        let env = new_env();
        let compiled =
            compile::compile(&cfg.scripts_dir, &cfg.plugins_dir, &cfg.limits, &env, 1)?;
        Ok(RhaiPolicy {
            cfg,
            current: ArcSwap::from_pointee(compiled),
            last_error: Mutex::new(None),
            env,
            reloading: Mutex::new(()),
        })
    }

    /// Connects `store.get/set/del` in scripts (every generation, from the next call on) to
    /// `store`, e.g. a [`crate::store::SqliteStore`].
    pub fn set_store(&self, store: Arc<dyn HostStore>) {
        *self.env.store.write().expect("store slot poisoned") = store;
    }

    /// The store scripts currently use.
    pub fn store(&self) -> Arc<dyn HostStore> {
        self.env.store.read().expect("store slot poisoned").clone()
    }

    /// [`Policy::boot`], also reporting the time the script's `now()` returned (`None` if the
    /// script did not call it).
    pub fn boot_traced(&self, req: &BootRequest) -> (Result<Decision, PolicyError>, Option<UsedTime>) {
        self.boot_shared(Arc::new(req.clone()))
    }

    fn boot_shared(&self, req: Arc<BootRequest>) -> (Result<Decision, PolicyError>, Option<UsedTime>) {
        let c = self.current.load_full();
        let Some(h) = c.hook(Hook::Boot) else {
            return (Ok(Decision::Ignore), None);
        };
        let (v, used) = engine::tracking_now(|| c.call(h, Dynamic::from(ScriptBootRequest(req))));
        let fixed = self.env.clock.read().expect("clock lock poisoned").is_some();
        if let Some(t) = used {
            let how = if fixed { "fixed by --at" } else { "local time" };
            tracing::info!(target: "pixie::policy", now = %t.to_rfc3339(), "the policy read now() ({how})");
        }
        let d = v.and_then(|v| convert::to_decision(v, &|key| c.key_location(h, key)));
        (d, used)
    }

    /// Recompiles the scripts and swaps the result in. On error the last good policy stays
    /// active and the report is kept for [`RhaiPolicy::last_error`].
    pub fn reload(&self) -> Result<u64, CompileReport> {
        let _one_at_a_time = self.reloading.lock().expect("reload lock poisoned");
        let next = self.generation() + 1;
        let result = compile::compile(
            &self.cfg.scripts_dir,
            &self.cfg.plugins_dir,
            &self.cfg.limits,
            &self.env,
            next,
        );
        let mut last = self.last_error.lock().expect("last_error lock poisoned");
        match result {
            Ok(c) => {
                self.current.store(Arc::new(c));
                *last = None;
                Ok(next)
            }
            Err(report) => {
                *last = Some(report.clone());
                Err(report)
            }
        }
    }

    /// The number of the active generation (1 after `load`, +1 per good reload).
    pub fn generation(&self) -> u64 {
        self.current.load().generation
    }

    /// Why the last reload failed; `None` once a reload succeeds.
    pub fn last_error(&self) -> Option<CompileReport> {
        self.last_error
            .lock()
            .expect("last_error lock poisoned")
            .clone()
    }

    /// Fixes what `now()` returns in scripts (`simulate --at`); `None` = real local time.
    pub fn set_clock(&self, at: Option<chrono::DateTime<chrono::FixedOffset>>) {
        *self.env.clock.write().expect("clock lock poisoned") = at;
    }

    /// What the caller should answer when a hook fails (see the module docs).
    pub fn fallback(&self) -> &Fallback {
        &self.cfg.fallback
    }

    /// The configuration this policy was loaded with.
    pub fn config(&self) -> &RhaiConfig {
        &self.cfg
    }

    /// Script files of the active generation with the hooks each defines.
    pub fn hooks(&self) -> CheckReport {
        CheckReport {
            files: self.current.load().files.clone(),
        }
    }
}

impl Policy for RhaiPolicy {
    fn boot(&self, req: &BootRequest) -> Result<Decision, PolicyError> {
        self.boot_traced(req).0
    }

    fn boot_owned(&self, req: BootRequest) -> Result<Decision, PolicyError> {
        self.boot_shared(Arc::new(req)).0
    }

    fn file(&self, req: &FileRequest) -> Result<FileDecision, PolicyError> {
        let hook = match req.protocol {
            "tftp" => Hook::Tftp,
            "http" => Hook::Http,
            _ => return Ok(FileDecision::Serve),
        };
        let c = self.current.load_full();
        let Some(h) = c.hook(hook) else {
            return Ok(FileDecision::Serve);
        };
        let v = c.call(h, Dynamic::from(ScriptFileRequest(Arc::new(req.clone()))))?;
        convert::to_file_decision(v, hook.name(), &h.location())
    }

    fn booted(&self, ev: &BootedEvent) -> Result<(), PolicyError> {
        let c = self.current.load_full();
        if let Some(h) = c.hook(Hook::Booted) {
            // The return value of `booted` carries no meaning.
            let _ = c.call(h, Dynamic::from(ScriptBooted(Arc::new(ev.clone()))))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
