//! The policy workbench: see what a policy does before a machine reboots.
//!
//! - [`replay`]: every client request in a packet capture, run through the policy
//!   (`pixie replay`, `pixie simulate --from-capture`).
//! - [`cases`]: policy tests written next to a policy in `cases.toml` (`pixie test`).
//!
//! Nothing here opens a socket: requests come from captures or from test cases, decisions are
//! printed or compared. Policies run with an in-memory [`crate::store::MemoryStore`] unless
//! the caller connects a persistent one.

pub mod cases;
pub mod replay;

use std::fmt::Write as _;

use crate::policy::{BootDecision, Decision, FileDecision, OptionValue, PolicyError};

/// An option value as JSON: strings and integers as such, address lists as arrays of strings,
/// raw bytes as `{"hex": "…"}`.
pub fn option_json(code: u16, v: &OptionValue) -> serde_json::Value {
    match v {
        OptionValue::Text(s) => serde_json::json!(s),
        OptionValue::Int(n) => serde_json::json!(n),
        OptionValue::Ips(ips) => {
            serde_json::json!(ips.iter().map(|i| i.to_string()).collect::<Vec<_>>())
        }
        OptionValue::Bytes(_) => serde_json::json!({ "hex": hex(&v.to_bytes(code)) }),
    }
}

/// Lower-case hex without separators.
pub fn hex(b: &[u8]) -> String {
    b.iter().fold(String::with_capacity(b.len() * 2), |mut s, x| {
        let _ = write!(s, "{x:02x}");
        s
    })
}

/// The fields of a boot decision as a JSON object (absent fields left out).
pub fn boot_json(b: &BootDecision) -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    if let Some(f) = &b.filename {
        m.insert("filename".into(), f.clone().into());
    }
    if let Some(n) = b.next_server {
        m.insert("next_server".into(), n.to_string().into());
    }
    if let Some(n) = &b.server_name {
        m.insert("server_name".into(), n.clone().into());
    }
    if !b.options.is_empty() {
        let o: serde_json::Map<String, serde_json::Value> =
            b.options.iter().map(|(c, v)| (c.to_string(), option_json(*c, v))).collect();
        m.insert("options".into(), o.into());
    }
    if let Some(a) = b.address {
        m.insert("address".into(), a.to_string().into());
    }
    if let Some(l) = b.lease_time {
        m.insert("lease_time".into(), l.into());
    }
    m
}

/// One line for a decision: the file name (and whatever else was set), or `ignore`.
pub fn decision_summary(d: &Decision) -> String {
    match d {
        Decision::Ignore => "ignore".into(),
        Decision::Boot(b) => {
            let mut s = b.filename.clone().unwrap_or_else(|| "(boot, no filename)".into());
            if let Some(n) = b.next_server {
                let _ = write!(s, " next_server={n}");
            }
            if let Some(n) = &b.server_name {
                let _ = write!(s, " server_name={n}");
            }
            if let Some(a) = b.address {
                let _ = write!(s, " address={a}");
            }
            if let Some(l) = b.lease_time {
                let _ = write!(s, " lease_time={l}");
            }
            if !b.options.is_empty() {
                let codes: Vec<String> = b.options.keys().map(|c| c.to_string()).collect();
                let _ = write!(s, " options={}", codes.join(","));
            }
            s
        }
    }
}

/// One line for a file decision.
pub fn file_summary(d: &FileDecision) -> String {
    match d {
        FileDecision::Serve => "serve the file as is".into(),
        FileDecision::Remap(p) => format!("serve {p}"),
        FileDecision::Refuse => "refuse".into(),
        FileDecision::Content(c) => format!("generated content ({} bytes)", c.len()),
    }
}

/// `error: file:line:column: message`.
pub fn error_summary(e: &PolicyError) -> String {
    format!("error: {e}")
}
