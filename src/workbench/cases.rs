//! Policy tests written next to a policy: `cases.toml` (`pixie test DIR`).
//!
//! ```toml
//! [policy]                      # optional; relative to the folder of cases.toml
//! scripts = "scripts"           # default
//! plugins = "plugins"           # default
//!
//! [defaults]                    # optional: request fields every case inherits
//! server = "10.0.0.1"
//!
//! [[case]]
//! name = "x64 UEFI chain-loads iPXE"       # required, unique
//! mac = "52:54:00:00:00:01"
//! arch = "x64-uefi"                        # name or code, or a list: ["x64-uefi", 0]
//! expect = { filename = "ipxe.efi" }
//!
//! [[case]]
//! name = "a laptop that is not network booting is ignored"
//! mac = "52:54:00:00:00:02"
//! vendor_class = ""                        # "" = no option 60
//! expect = { silent = true }
//! ```
//!
//! Request fields (each may also be given in `[defaults]`): `mac`, `arch`, `uuid`,
//! `user_class` (string or list), `vendor_class` (default `PXEClient:Arch:NNNNN:UNDI:003000`
//! from `arch`, `HTTPClient:…` for HTTP arches, `""` for none), `ipxe` (default: user class
//! `iPXE`), `phase` (default `discover`), `relay`, `circuit_id`, `remote_id`, `hostname`,
//! `interface`, `server`, `client_ip`, and `at`, the time `now()` returns (RFC 3339, or a
//! local time `2026-11-25T22:30:00`; default: the real time).
//!
//! A case calls `fn boot(req)` unless it says `tftp = "path"` / `http = "path"` (the file
//! hooks, with `req.mac` = `mac`) or `booted = { field = "value", … }` (the `booted` hook).
//! `store = { key = value }` fills the per-host store before the case runs; every case starts
//! with an empty in-memory store. `steps = [ {…}, {…} ]` runs several requests in order on one
//! store (each step inherits the case's request fields), e.g. boot, report booted, boot again.
//!
//! `expect` (only the keys given are checked; `exact = true` also fails on any other key the
//! decision sets):
//! - boot: `silent = true`, or `filename`, `next_server`, `server_name`, `address`,
//!   `lease_time`, `options = { "3" = ["10.0.0.254"], "60" = "HTTPClient", "13" = 42,
//!   "43" = { hex = "0601ff" } }` (compared as wire bytes);
//! - tftp/http: `serve = true`, `refuse = true`, `path = "other"`, `content = "exact"`,
//!   `contains = ["#!ipxe", "menu"]`;
//! - any: `error = "text"` (the policy must fail with a message containing it),
//!   `store = { key = value }` and `store_absent = ["key"]` (the store after the case).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, FixedOffset, Local, NaiveDateTime, TimeZone};
use serde::Deserialize;

use crate::policy::rhai::RhaiPolicy;
use crate::policy::{
    BootDecision, BootRequest, BootedEvent, Decision, FileDecision, FileRequest, HwAddr,
    OptionValue, Phase, Policy, PolicyError, Uuid,
};
use crate::store::{HostStore, MemoryStore};
use crate::wire::arch::Arch;

/// The file `pixie test DIR` reads.
pub const CASES_FILE: &str = "cases.toml";

/// `cases.toml` as written on disk.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CasesFile {
    /// `[policy]`: where the policy under test is.
    #[serde(default)]
    pub policy: PolicyPaths,
    /// `[defaults]`: request fields every case inherits.
    #[serde(default)]
    pub defaults: Case,
    /// `[[case]]`.
    #[serde(default, rename = "case")]
    pub cases: Vec<Case>,
}

/// `[policy]` in `cases.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyPaths {
    /// Scripts folder, relative to the folder of `cases.toml` (default `scripts`).
    pub scripts: Option<PathBuf>,
    /// Plugins folder, relative to the folder of `cases.toml` (default `plugins`).
    pub plugins: Option<PathBuf>,
}

/// One architecture: a name (`x64-uefi`) or an IANA code (7).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ArchSpec {
    /// A code.
    Code(u16),
    /// A name.
    Name(String),
}

/// One value or a list of them.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    /// One.
    One(T),
    /// A list.
    Many(Vec<T>),
}

impl<T: Clone> OneOrMany<T> {
    fn to_vec(&self) -> Vec<T> {
        match self {
            OneOrMany::One(t) => vec![t.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// A time: a string, or a TOML date-time written without quotes.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum TimeSpec {
    /// `"2026-11-25T22:30:00+01:00"`.
    Text(String),
    /// `2026-11-25T22:30:00+01:00`.
    Toml(toml::value::Datetime),
}

/// One `[[case]]` (also `[defaults]` and each of a case's `steps`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// What the case checks, printed with its result.
    pub name: Option<String>,
    /// Client MAC.
    pub mac: Option<String>,
    /// Architectures (option 93), first one first.
    pub arch: Option<OneOrMany<ArchSpec>>,
    /// Machine UUID.
    pub uuid: Option<String>,
    /// User classes (option 77).
    pub user_class: Option<OneOrMany<String>>,
    /// Option 60; `""` for none.
    pub vendor_class: Option<String>,
    /// Whether iPXE is running.
    pub ipxe: Option<bool>,
    /// `discover`, `request`, `proxy-4011`, …
    pub phase: Option<String>,
    /// Relay agent address (giaddr).
    pub relay: Option<String>,
    /// Option 82 circuit id.
    pub circuit_id: Option<String>,
    /// Option 82 remote id.
    pub remote_id: Option<String>,
    /// Option 12.
    pub hostname: Option<String>,
    /// Receiving interface.
    pub interface: Option<String>,
    /// pixie's own address (`req.server`).
    pub server: Option<String>,
    /// The client's address (ciaddr; the source of file requests).
    pub client_ip: Option<String>,
    /// What `now()` returns.
    pub at: Option<TimeSpec>,
    /// Run `fn tftp(req)` for this path instead of `boot`.
    pub tftp: Option<String>,
    /// Run `fn http(req)` for this path instead of `boot`.
    pub http: Option<String>,
    /// Run `fn booted(ack)` with these fields instead of `boot`.
    pub booted: Option<BTreeMap<String, toml::Value>>,
    /// Store entries to set before running.
    pub store: Option<BTreeMap<String, toml::Value>>,
    /// What must happen.
    pub expect: Option<Expect>,
    /// Requests to run in order on one store.
    pub steps: Option<Vec<Case>>,
}

macro_rules! inherit {
    ($to:ident, $from:ident: $($f:ident),*) => {
        $( if $to.$f.is_none() { $to.$f = $from.$f.clone(); } )*
    };
}

impl Case {
    /// This case with the request fields it does not set taken from `base`.
    fn inheriting(&self, base: &Case) -> Case {
        let mut c = self.clone();
        inherit!(c, base: mac, arch, uuid, user_class, vendor_class, ipxe, phase, relay,
            circuit_id, remote_id, hostname, interface, server, client_ip, at);
        // The action is inherited too, unless the step names its own.
        if c.tftp.is_none() && c.http.is_none() && c.booted.is_none() {
            inherit!(c, base: tftp, http, booted);
        }
        c
    }
}

/// `expect` of a case or step.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The policy stays silent (`boot` returned `()`).
    pub silent: Option<bool>,
    /// Boot file name.
    pub filename: Option<String>,
    /// Next server.
    pub next_server: Option<String>,
    /// BOOTP sname.
    pub server_name: Option<String>,
    /// Options, by number; compared as wire bytes.
    pub options: Option<BTreeMap<String, toml::Value>>,
    /// Full DHCP address.
    pub address: Option<String>,
    /// Full DHCP lease time.
    pub lease_time: Option<u32>,
    /// Fail on decision keys not listed here.
    pub exact: Option<bool>,
    /// File hooks: serve the file as is.
    pub serve: Option<bool>,
    /// File hooks: refuse.
    pub refuse: Option<bool>,
    /// File hooks: serve this other path.
    pub path: Option<String>,
    /// File hooks: generated content, exactly.
    pub content: Option<String>,
    /// File hooks: generated content containing each of these.
    pub contains: Option<Vec<String>>,
    /// The policy fails with a message containing this.
    pub error: Option<String>,
    /// Store entries after the case.
    pub store: Option<BTreeMap<String, toml::Value>>,
    /// Store keys absent after the case.
    pub store_absent: Option<Vec<String>>,
}

/// Why `cases.toml` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CasesError {
    /// Missing or unreadable.
    #[error("cannot read {path}: {source}; write one (see \"Policy tests\" in the README)")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// TOML syntax, an unknown key or a wrong type (toml's message names the line and key).
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// toml's message.
        message: String,
    },
    /// The cases do not make sense together.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// A loaded `cases.toml`: where the policy is, and its cases with defaults applied.
#[derive(Debug)]
pub struct Suite {
    /// The `cases.toml` file.
    pub file: PathBuf,
    /// The policy's scripts folder.
    pub scripts: PathBuf,
    /// The policy's plugins folder.
    pub plugins: PathBuf,
    /// The cases, with `[defaults]` applied.
    pub cases: Vec<Case>,
}

/// Reads `DIR/cases.toml`.
pub fn load(dir: &Path) -> Result<Suite, CasesError> {
    let file = dir.join(CASES_FILE);
    let text = std::fs::read_to_string(&file)
        .map_err(|source| CasesError::Read { path: file.clone(), source })?;
    let parsed: CasesFile = toml::from_str(&text)
        .map_err(|e| CasesError::Parse { path: file.clone(), message: e.to_string() })?;
    let invalid = |message: String| CasesError::Invalid { path: file.clone(), message };
    let d = &parsed.defaults;
    if d.name.is_some() || d.expect.is_some() || d.steps.is_some() || d.store.is_some() {
        return Err(invalid(
            "[defaults] holds request fields only; put name, expect, steps and store in each [[case]]"
                .into(),
        ));
    }
    if parsed.cases.is_empty() {
        return Err(invalid("no [[case]] here; add at least one".into()));
    }
    let mut names = std::collections::HashSet::new();
    let mut cases = Vec::new();
    for (i, c) in parsed.cases.iter().enumerate() {
        let name = c
            .name
            .clone()
            .ok_or_else(|| invalid(format!("case #{} has no name; add name = \"what it checks\"", i + 1)))?;
        if !names.insert(name.clone()) {
            return Err(invalid(format!("two cases are named {name:?}; names must be unique")));
        }
        match (&c.steps, &c.expect) {
            (Some(_), Some(_)) => {
                return Err(invalid(format!(
                    "case {name:?} has both steps and expect; put an expect in each step"
                )))
            }
            (Some(s), None) if s.is_empty() => {
                return Err(invalid(format!("case {name:?} has an empty steps list")))
            }
            (Some(s), None) => {
                if let Some(n) = s.iter().position(|st| st.expect.is_none()) {
                    return Err(invalid(format!("case {name:?}, step {}: no expect", n + 1)));
                }
                if s.iter().any(|st| st.steps.is_some() || st.name.is_some()) {
                    return Err(invalid(format!(
                        "case {name:?}: steps cannot have names or steps of their own"
                    )));
                }
            }
            (None, None) => {
                return Err(invalid(format!(
                    "case {name:?} has no expect; e.g. expect = {{ filename = \"ipxe.efi\" }} or \
                     expect = {{ silent = true }}"
                )))
            }
            (None, Some(_)) => {}
        }
        let actions = [c.tftp.is_some(), c.http.is_some(), c.booted.is_some()];
        if actions.iter().filter(|a| **a).count() > 1 {
            return Err(invalid(format!(
                "case {name:?}: tftp, http and booted are alternatives; give one"
            )));
        }
        cases.push(c.inheriting(d));
    }
    let rel = |p: &Option<PathBuf>, default: &str| {
        let p = p.clone().unwrap_or_else(|| default.into());
        normalize(&if p.is_absolute() { p } else { dir.join(p) })
    };
    Ok(Suite {
        scripts: rel(&parsed.policy.scripts, "scripts"),
        plugins: rel(&parsed.policy.plugins, "plugins"),
        file,
        cases,
    })
}

/// `a/b/../c` → `a/c`, without touching the file system (for readable paths in messages).
fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir if matches!(out.components().next_back(), Some(Component::Normal(_))) => {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

/// The result of one case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// Its name.
    pub name: String,
    /// What did not match (empty: passed), readable lines.
    pub failures: Vec<String>,
}

impl CaseResult {
    /// Whether it passed.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Runs every case of `suite` on `policy`.
///
/// Each case gets a fresh in-memory store, unless `persistent` is given: then every case runs
/// on that store (its `store` entries are written into it).
pub fn run(
    suite: &Suite,
    policy: &RhaiPolicy,
    persistent: Option<Arc<dyn HostStore>>,
) -> Vec<CaseResult> {
    suite
        .cases
        .iter()
        .map(|case| {
            let store: Arc<dyn HostStore> =
                persistent.clone().unwrap_or_else(|| Arc::new(MemoryStore::new()));
            policy.set_store(store.clone());
            let name = case.name.clone().unwrap_or_default();
            let mut failures = Vec::new();
            let steps: Vec<Case> = match &case.steps {
                Some(s) => s.iter().map(|st| st.inheriting(case)).collect(),
                None => vec![case.clone()],
            };
            if case.steps.is_some() {
                // The case's own store entries are set once, before the first step.
                if let Err(e) = seed(store.as_ref(), case.store.as_ref()) {
                    failures.push(e);
                }
            }
            for (i, step) in steps.iter().enumerate() {
                let prefix = if steps.len() > 1 { format!("step {}: ", i + 1) } else { String::new() };
                let got = run_step(step, policy, store.as_ref());
                failures.extend(got.into_iter().map(|f| format!("{prefix}{f}")));
            }
            policy.set_clock(None);
            CaseResult { name, failures }
        })
        .collect()
}

fn seed(store: &dyn HostStore, entries: Option<&BTreeMap<String, toml::Value>>) -> Result<(), String> {
    for (k, v) in entries.into_iter().flatten() {
        store.set(k, &toml_json(v)).map_err(|e| format!("store: cannot set `{k}`: {e}"))?;
    }
    Ok(())
}

/// Runs one step; the failures.
fn run_step(c: &Case, policy: &RhaiPolicy, store: &dyn HostStore) -> Vec<String> {
    let mut fails = Vec::new();
    if c.steps.is_none() {
        if let Err(e) = seed(store, c.store.as_ref()) {
            return vec![e];
        }
    }
    let expect = c.expect.clone().unwrap_or_default();
    let at = match c.at.as_ref().map(parse_time).transpose() {
        Ok(at) => at,
        Err(e) => return vec![e],
    };
    policy.set_clock(at);
    if let Some(path) = c.tftp.as_ref().map(|p| ("tftp", p)).or(c.http.as_ref().map(|p| ("http", p))) {
        match file_request(c, path.0, path.1) {
            Ok(req) => check_file(&expect, policy.file(&req), &mut fails),
            Err(e) => return vec![e],
        }
    } else if let Some(fields) = &c.booted {
        match booted_event(c, fields) {
            Ok(ev) => check_error_only(&expect, policy.booted(&ev), &mut fails),
            Err(e) => return vec![e],
        }
    } else {
        match boot_request(c) {
            Ok(req) => {
                let (result, now) = policy.boot_traced(&req);
                let before = fails.len();
                check_boot(&expect, result, &mut fails);
                if fails.len() > before {
                    if let Some(t) = now {
                        fails.push(format!("(the policy read now() = {})", t.to_rfc3339()));
                    }
                }
            }
            Err(e) => return vec![e],
        }
    }
    check_store(&expect, store, &mut fails);
    fails
}

/// Parses a case's `at`: RFC 3339, or a local date-time.
pub fn parse_time(t: &TimeSpec) -> Result<DateTime<FixedOffset>, String> {
    let s = match t {
        TimeSpec::Text(s) => s.clone(),
        TimeSpec::Toml(d) => d.to_string(),
    };
    if let Ok(t) = DateTime::parse_from_rfc3339(&s) {
        return Ok(t);
    }
    for f in ["%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M"] {
        if let Ok(n) = NaiveDateTime::parse_from_str(&s, f) {
            return Local
                .from_local_datetime(&n)
                .earliest()
                .map(|t| t.fixed_offset())
                .ok_or_else(|| format!("at: {s} does not exist in the local time zone"));
        }
    }
    Err(format!(
        "at: {s:?} is not a time; write 2026-11-25T22:30:00+01:00 or a local 2026-11-25T22:30:00"
    ))
}

fn parse<T: std::str::FromStr>(what: &str, s: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    s.parse::<T>().map_err(|e| format!("{what}: {e}"))
}

fn ip(what: &str, s: &str) -> Result<IpAddr, String> {
    s.parse().map_err(|_| format!("{what}: {s:?} is not an IP address"))
}

fn mac_of(c: &Case) -> Result<HwAddr, String> {
    let m = c.mac.as_deref().ok_or("mac is missing; give it in the case or in [defaults]")?;
    parse("mac", m)
}

/// The boot request a case describes.
pub fn boot_request(c: &Case) -> Result<BootRequest, String> {
    let phase_name = c.phase.as_deref().unwrap_or("discover");
    let phase = Phase::from_name(phase_name).ok_or_else(|| {
        format!("phase: {phase_name:?} is not a phase (discover, request, inform, proxy-4011, solicit, request6)")
    })?;
    let mut req = BootRequest::new_v4(mac_of(c)?, phase);
    for a in c.arch.as_ref().map(OneOrMany::to_vec).unwrap_or_default() {
        req.arches.push(match a {
            ArchSpec::Code(n) => Arch::from(n),
            ArchSpec::Name(s) => Arch::from_name(&s)
                .ok_or_else(|| format!("arch: {s:?} is not an architecture name or code (e.g. x64-uefi or 7)"))?,
        });
    }
    if !req.arches.is_empty() {
        let list: Vec<u8> = req.arches.iter().flat_map(|a| a.code().to_be_bytes()).collect();
        req.options.insert(93, list);
    }
    if let Some(u) = &c.uuid {
        let u: Uuid = parse("uuid", u)?;
        let mut wire = vec![0u8];
        wire.extend(crate::wire::dhcpv4::guid_to_canonical(u.0));
        req.options.insert(97, wire);
        req.uuid = Some(u).filter(|u| !u.is_nil());
    }
    req.vendor_class = match &c.vendor_class {
        Some(v) if v.is_empty() => None,
        Some(v) => Some(v.clone()),
        None => Some(match req.arch() {
            None => "PXEClient".to_string(),
            Some(a) if a.is_http() => format!("HTTPClient:Arch:{:05}:UNDI:003000", a.code()),
            Some(a) => format!("PXEClient:Arch:{:05}:UNDI:003000", a.code()),
        }),
    };
    if let Some(v) = &req.vendor_class {
        req.options.insert(60, v.as_bytes().to_vec());
    }
    req.user_class = c.user_class.as_ref().map(OneOrMany::to_vec).unwrap_or_default();
    if let Some(first) = req.user_class.first() {
        req.options.insert(77, first.as_bytes().to_vec());
    }
    req.ipxe = c.ipxe.unwrap_or_else(|| req.user_class.iter().any(|u| u == "iPXE"));
    req.hostname = c.hostname.clone();
    if let Some(h) = &req.hostname {
        req.options.insert(12, h.as_bytes().to_vec());
    }
    req.relay = c.relay.as_deref().map(|s| ip("relay", s)).transpose()?;
    req.circuit_id = c.circuit_id.as_ref().map(|s| s.as_bytes().to_vec());
    req.remote_id = c.remote_id.as_ref().map(|s| s.as_bytes().to_vec());
    req.interface = c.interface.clone();
    req.server = c.server.as_deref().map(|s| ip("server", s)).transpose()?;
    req.client_ip = c.client_ip.as_deref().map(|s| ip("client_ip", s)).transpose()?;
    Ok(req)
}

/// A documentation address standing in for the client when the case gives none.
const DEFAULT_CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 100));

fn file_request(c: &Case, protocol: &'static str, path: &str) -> Result<FileRequest, String> {
    let client = c.client_ip.as_deref().map(|s| ip("client_ip", s)).transpose()?.unwrap_or(DEFAULT_CLIENT);
    let server = c.server.as_deref().map(|s| ip("server", s)).transpose()?;
    let port = if protocol == "tftp" { 69 } else { 80 };
    Ok(FileRequest {
        protocol,
        path: path.to_string(),
        client: SocketAddr::new(client, 49152),
        local: server.map(|s| SocketAddr::new(s, port)),
        mac: c.mac.as_deref().filter(|m| !m.is_empty()).map(|m| parse("mac", m)).transpose()?,
        options: BTreeMap::new(),
    })
}

fn booted_event(c: &Case, fields: &BTreeMap<String, toml::Value>) -> Result<BootedEvent, String> {
    Ok(BootedEvent {
        mac: Some(mac_of(c)?),
        client: c.client_ip.as_deref().map(|s| ip("client_ip", s)).transpose()?,
        fields: fields
            .iter()
            .map(|(k, v)| (k.clone(), match v {
                toml::Value::String(s) => s.clone(),
                other => other.to_string(),
            }))
            .collect(),
    })
}

/// A TOML value as JSON (store values).
pub fn toml_json(v: &toml::Value) -> serde_json::Value {
    match v {
        toml::Value::String(s) => s.clone().into(),
        toml::Value::Integer(i) => (*i).into(),
        toml::Value::Float(f) => serde_json::Number::from_f64(*f).map_or(serde_json::Value::Null, Into::into),
        toml::Value::Boolean(b) => (*b).into(),
        toml::Value::Datetime(d) => d.to_string().into(),
        toml::Value::Array(a) => a.iter().map(toml_json).collect::<Vec<_>>().into(),
        toml::Value::Table(t) => {
            t.iter().map(|(k, v)| (k.clone(), toml_json(v))).collect::<serde_json::Map<_, _>>().into()
        }
    }
}

fn q(s: &str) -> String {
    format!("{s:?}")
}

/// `key: expected X\n       got      Y`, aligned.
fn diff(key: &str, expected: &str, got: &str) -> String {
    let pad = " ".repeat(key.len() + 2);
    format!("{key}: expected {expected}\n{pad}got      {got}")
}

/// Checks that an expected failure happened; returns the value when the call succeeded and
/// no failure was expected.
fn expected_error<T>(e: &Expect, r: Result<T, PolicyError>, fails: &mut Vec<String>) -> Option<T> {
    match (r, &e.error) {
        (Ok(v), None) => Some(v),
        (Err(err), None) => {
            fails.push(format!("the policy failed: {err}"));
            None
        }
        (Ok(_), Some(want)) => {
            fails.push(diff("error", &format!("a failure containing {}", q(want)), "no failure")); 
            None
        }
        (Err(err), Some(want)) => {
            if !err.to_string().contains(want.as_str()) {
                fails.push(diff("error", &format!("a failure containing {}", q(want)), &q(&err.to_string())));
            }
            None
        }
    }
}

fn check_error_only(e: &Expect, r: Result<(), PolicyError>, fails: &mut Vec<String>) {
    let _ = expected_error(e, r, fails);
}

fn opt_str(v: &Option<impl ToString>) -> String {
    v.as_ref().map(|s| q(&s.to_string())).unwrap_or_else(|| "(not set)".into())
}

fn check_boot(e: &Expect, r: Result<Decision, PolicyError>, fails: &mut Vec<String>) {
    let Some(d) = expected_error(e, r, fails) else { return };
    let wants_answer = e.filename.is_some()
        || e.next_server.is_some()
        || e.server_name.is_some()
        || e.options.is_some()
        || e.address.is_some()
        || e.lease_time.is_some();
    let b = match (&d, e.silent) {
        (Decision::Ignore, Some(true)) => return,
        (Decision::Boot(b), Some(true)) => {
            fails.push(diff("decision", "silence (the policy ignores this client)", &format!("boot {}", super::decision_summary(&Decision::Boot(b.clone())))));
            return;
        }
        (Decision::Ignore, _) if wants_answer || e.silent == Some(false) => {
            fails.push(diff("decision", "an answer", "silence (boot returned ())"));
            return;
        }
        (Decision::Ignore, _) => return,
        (Decision::Boot(b), _) => b,
    };
    check_boot_keys(e, b, fails);
}

fn check_boot_keys(e: &Expect, b: &BootDecision, fails: &mut Vec<String>) {
    let mut cmp = |key: &str, want: &Option<String>, got: String| {
        if let Some(w) = want {
            if q(w) != got {
                fails.push(diff(key, &q(w), &got));
            }
        }
    };
    cmp("filename", &e.filename, opt_str(&b.filename));
    cmp("next_server", &e.next_server, opt_str(&b.next_server));
    cmp("server_name", &e.server_name, opt_str(&b.server_name));
    cmp("address", &e.address, opt_str(&b.address));
    if let Some(w) = e.lease_time {
        if b.lease_time != Some(w) {
            fails.push(diff("lease_time", &w.to_string(), &b.lease_time.map_or("(not set)".into(), |l| l.to_string())));
        }
    }
    for (code, want) in e.options.iter().flatten() {
        let what = format!("option {code}");
        let Some(c) = code.trim().parse::<u16>().ok().filter(|c| (1..=254).contains(c)) else {
            fails.push(format!("{what}: not an option number 1..=254 in expect.options"));
            continue;
        };
        let want_bytes = match expected_option(c, want) {
            Ok(b) => b,
            Err(m) => {
                fails.push(format!("{what}: {m}"));
                continue;
            }
        };
        match b.options.get(&c) {
            None => fails.push(diff(&what, &want.to_string(), "(not set)")),
            Some(got) if got.to_bytes(c) != want_bytes => {
                fails.push(diff(&what, &want.to_string(), &super::option_json(c, got).to_string()))
            }
            Some(_) => {}
        }
    }
    if e.exact == Some(true) {
        let listed = |set: bool, key: &str, given: bool| (set && !given).then(|| key.to_string());
        let extra: Vec<String> = [
            listed(b.filename.is_some(), "filename", e.filename.is_some()),
            listed(b.next_server.is_some(), "next_server", e.next_server.is_some()),
            listed(b.server_name.is_some(), "server_name", e.server_name.is_some()),
            listed(b.address.is_some(), "address", e.address.is_some()),
            listed(b.lease_time.is_some(), "lease_time", e.lease_time.is_some()),
        ]
        .into_iter()
        .flatten()
        .chain(b.options.keys().filter(|c| {
            !e.options.iter().flatten().any(|(k, _)| k.trim().parse::<u16>().ok() == Some(**c))
        }).map(|c| format!("option {c}")))
        .collect();
        if !extra.is_empty() {
            fails.push(format!("exact: the decision also sets {}", extra.join(", ")));
        }
    }
}

fn expected_option(code: u16, v: &toml::Value) -> Result<Vec<u8>, String> {
    Ok(match v {
        toml::Value::String(s) => s.as_bytes().to_vec(),
        toml::Value::Integer(n) => {
            let n = u32::try_from(*n).map_err(|_| format!("{n} is out of range 0..=4294967295"))?;
            OptionValue::Int(u64::from(n)).to_bytes(code)
        }
        toml::Value::Array(a) => {
            let mut ips = Vec::new();
            for x in a {
                let ip = x.as_str().and_then(|s| s.parse::<Ipv4Addr>().ok()).ok_or_else(|| {
                    format!("an array must hold IPv4 address strings, found {x}")
                })?;
                ips.push(ip);
            }
            OptionValue::Ips(ips).to_bytes(code)
        }
        toml::Value::Table(t) => {
            let h = t.get("hex").and_then(|h| h.as_str()).ok_or("a table must be { hex = \"0601ff\" }")?;
            let h: String = h.chars().filter(|c| !c.is_whitespace() && *c != ':').collect();
            if h.len() % 2 != 0 {
                return Err(format!("hex {h:?} has an odd number of digits"));
            }
            (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&h[i..i + 2], 16).map_err(|_| format!("{h:?} is not hex")))
                .collect::<Result<_, _>>()?
        }
        other => return Err(format!("{other} cannot be an option value (string, integer, array of IPv4 strings, {{ hex = \"…\" }})")),
    })
}

fn check_file(e: &Expect, r: Result<FileDecision, PolicyError>, fails: &mut Vec<String>) {
    let Some(d) = expected_error(e, r, fails) else { return };
    let got = super::file_summary(&d);
    if e.serve == Some(true) && d != FileDecision::Serve {
        fails.push(diff("file", "serve the file as is", &got));
    }
    if e.refuse == Some(true) && d != FileDecision::Refuse {
        fails.push(diff("file", "refuse", &got));
    }
    if let Some(p) = &e.path {
        if d != FileDecision::Remap(p.clone()) {
            fails.push(diff("file", &format!("serve {p}"), &got));
        }
    }
    let content = match &d {
        FileDecision::Content(c) => Some(String::from_utf8_lossy(c).into_owned()),
        _ => None,
    };
    if let Some(want) = &e.content {
        match &content {
            Some(c) if c == want => {}
            Some(c) => fails.push(content_diff(want, c)),
            None => fails.push(diff("content", &q(want), &got)),
        }
    }
    let missing: Vec<&String> = e
        .contains
        .iter()
        .flatten()
        .filter(|w| !content.as_deref().is_some_and(|c| c.contains(w.as_str())))
        .collect();
    if !missing.is_empty() {
        let want: Vec<String> = missing.iter().map(|w| q(w)).collect();
        match &content {
            Some(c) => fails.push(format!(
                "content: expected to contain {}\n         got:\n{}",
                want.join("\n                     and "),
                indent(c)
            )),
            None => fails.push(diff("content", &format!("generated content containing {}", want.join(" and ")), &got)),
        }
    }
}

fn indent(s: &str) -> String {
    s.lines().map(|l| format!("           | {l}")).collect::<Vec<_>>().join("\n")
}

/// Line-by-line diff of generated content: the first differing line, with both texts.
fn content_diff(want: &str, got: &str) -> String {
    let (w, g): (Vec<&str>, Vec<&str>) = (want.lines().collect(), got.lines().collect());
    let first = (0..w.len().max(g.len())).find(|i| w.get(*i) != g.get(*i)).unwrap_or(0);
    let mut s = format!("content: differs from line {}\n", first + 1);
    let _ = writeln!(s, "         expected line: {}", w.get(first).map_or("(end)".into(), |l| q(l)));
    let _ = write!(s, "         got line:      {}", g.get(first).map_or("(end)".into(), |l| q(l)));
    s
}

fn check_store(e: &Expect, store: &dyn HostStore, fails: &mut Vec<String>) {
    for (k, want) in e.store.iter().flatten() {
        let want = toml_json(want);
        match store.get(k) {
            Ok(Some(v)) if v == want => {}
            Ok(Some(v)) => fails.push(diff(&format!("store[{k:?}]"), &want.to_string(), &v.to_string())),
            Ok(None) => fails.push(diff(&format!("store[{k:?}]"), &want.to_string(), "(not set)")),
            Err(err) => fails.push(format!("store[{k:?}]: {err}")),
        }
    }
    for k in e.store_absent.iter().flatten() {
        if let Ok(Some(v)) = store.get(k) {
            fails.push(diff(&format!("store[{k:?}]"), "(not set)", &v.to_string()));
        }
    }
}

/// The results as text: one line per case, the failures indented under it, and a summary.
pub fn report(results: &[CaseResult]) -> String {
    let mut out = String::new();
    for r in results {
        if r.passed() {
            let _ = writeln!(out, "  ok    {}", r.name);
        } else {
            let _ = writeln!(out, "  FAIL  {}", r.name);
            for f in &r.failures {
                for line in f.lines() {
                    let _ = writeln!(out, "          {line}");
                }
            }
        }
    }
    let failed = results.iter().filter(|r| !r.passed()).count();
    let _ = writeln!(
        out,
        "{} case(s): {} passed, {failed} failed",
        results.len(),
        results.len() - failed
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(toml_text: &str) -> Case {
        let f: CasesFile = toml::from_str(toml_text).unwrap();
        f.cases[0].inheriting(&f.defaults)
    }

    #[test]
    fn a_request_gets_its_options_and_derived_fields() {
        let c = case(
            "[defaults]\nserver = \"10.0.0.1\"\n[[case]]\nname = \"x\"\nmac = \"52:54:00:00:00:01\"\n\
             arch = [\"x64-uefi-http\", 0]\nuser_class = \"iPXE\"\nuuid = \"7e57c0de-0077-4000-8000-525400770010\"\n\
             expect = { silent = true }\n",
        );
        let r = boot_request(&c).unwrap();
        assert_eq!(r.arches.len(), 2);
        assert_eq!(r.vendor_class.as_deref(), Some("HTTPClient:Arch:00016:UNDI:003000"));
        assert!(r.ipxe && r.http());
        assert_eq!(r.server, Some("10.0.0.1".parse().unwrap()));
        assert_eq!(r.options[&93], vec![0, 16, 0, 0]);
        assert_eq!(r.options[&97][1..5], [0xde, 0xc0, 0x57, 0x7e], "wire form is mixed-endian");
    }

    #[test]
    fn times_parse_as_rfc3339_or_local() {
        let t = parse_time(&TimeSpec::Text("2026-11-25T22:30:00+01:00".into())).unwrap();
        assert_eq!(t.to_rfc3339(), "2026-11-25T22:30:00+01:00");
        let t = parse_time(&TimeSpec::Text("2026-11-25 22:30".into())).unwrap();
        assert_eq!(t.format("%H:%M").to_string(), "22:30");
        assert!(parse_time(&TimeSpec::Text("tomorrow".into())).is_err());
    }

    #[test]
    fn option_expectations_compare_wire_bytes() {
        assert_eq!(expected_option(3, &toml::Value::Array(vec!["10.0.0.1".into()])).unwrap(), vec![10, 0, 0, 1]);
        assert_eq!(expected_option(51, &toml::Value::Integer(3600)).unwrap(), vec![0, 0, 0x0e, 0x10]);
        let t: toml::Value = toml::from_str::<toml::Table>("x = { hex = \"06 01 0b ff\" }").unwrap()["x"].clone();
        assert_eq!(expected_option(43, &t).unwrap(), vec![6, 1, 11, 0xff]);
    }
}
