//! Conversions both ways: requests into script objects, hook results into decisions.
//!
//! Requests are registered custom types with one getter per field, so `req.mac` reads like a
//! map but `req.nmae` fails with the list of known fields instead of quietly yielding `()`.
//! Hook results are checked strictly: every wrong key, type or value is a
//! [`PolicyError::BadReturn`] that says where the hook is and what to write instead.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use rhai::{Array, Blob, Dynamic, Engine, EvalAltResult, ImmutableString, Map, Position};

use super::diag::nearest;
use crate::policy::{
    BootDecision, BootRequest, BootedEvent, Decision, FileDecision, FileRequest, OptionValue,
    PolicyError,
};

/// Names of the fields of `req` in `fn boot(req)`, in the order the docs list them.
pub(crate) const BOOT_FIELDS: &[&str] = &[
    "mac",
    "uuid",
    "arch",
    "arches",
    "arch_name",
    "firmware",
    "http",
    "ipxe",
    "pxe",
    "vendor_class",
    "user_class",
    "user_classes",
    "hostname",
    "relay",
    "circuit_id",
    "remote_id",
    "interface",
    "family",
    "phase",
    "client_ip",
    "server",
];

/// Names of the fields of `req` in `fn tftp(req)` / `fn http(req)`.
pub(crate) const FILE_FIELDS: &[&str] = &["path", "client", "local", "mac", "protocol", "options"];

/// Names of the fields of `ack` in `fn booted(ack)`.
pub(crate) const ACK_FIELDS: &[&str] = &["mac", "client", "fields"];

/// The boot request as scripts see it (`fn boot(req)`). Cheap to clone inside scripts.
#[derive(Debug, Clone)]
pub(crate) struct ScriptBootRequest(pub(crate) Arc<BootRequest>);

/// The file request as scripts see it (`fn tftp(req)` / `fn http(req)`).
#[derive(Debug, Clone)]
pub(crate) struct ScriptFileRequest(pub(crate) Arc<FileRequest>);

/// The booted event as scripts see it (`fn booted(ack)`).
#[derive(Debug, Clone)]
pub(crate) struct ScriptBooted(pub(crate) Arc<BootedEvent>);

fn opt_str(s: &Option<String>) -> Dynamic {
    s.clone().unwrap_or_default().into()
}

fn lossy(b: &Option<Vec<u8>>) -> Dynamic {
    b.as_deref()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .unwrap_or_default()
        .into()
}

fn ip_or_empty(ip: Option<IpAddr>) -> Dynamic {
    ip.map(|ip| ip.to_string()).unwrap_or_default().into()
}

/// A script string for a `'static` slug (architecture, firmware, phase, family), made once per
/// process: scripts read `req.arch_name` and friends several times per call, and each read
/// would otherwise allocate the same string again.
fn slug(s: &'static str) -> Dynamic {
    use std::collections::HashMap;
    use std::sync::{OnceLock, RwLock};
    static SLUGS: OnceLock<RwLock<HashMap<&'static str, ImmutableString>>> = OnceLock::new();
    let slugs = SLUGS.get_or_init(RwLock::default);
    if let Some(v) = slugs.read().unwrap_or_else(|e| e.into_inner()).get(s) {
        return v.clone().into();
    }
    let v = ImmutableString::from(s);
    slugs.write().unwrap_or_else(|e| e.into_inner()).insert(s, v.clone());
    v.into()
}

/// The value of one field of a boot request, `None` if there is no such field.
pub(crate) fn boot_field(r: &BootRequest, name: &str) -> Option<Dynamic> {
    Some(match name {
        "mac" => r.mac.to_string().into(),
        "uuid" => r
            .uuid
            .filter(|u| !u.is_nil())
            .map(|u| u.to_string())
            .unwrap_or_default()
            .into(),
        "arch" => Dynamic::from_int(r.arch().map_or(-1, |a| i64::from(a.code()))),
        "arches" => r
            .arches
            .iter()
            .map(|a| Dynamic::from_int(i64::from(a.code())))
            .collect::<Array>()
            .into(),
        "arch_name" => match r.arch() {
            None => slug(""),
            Some(a) => a.static_name().map_or_else(|| a.name().into(), slug),
        },
        "firmware" => slug(r.firmware().as_str()),
        "http" => r.http().into(),
        "ipxe" => r.ipxe.into(),
        "pxe" => r.pxe_client().into(),
        "vendor_class" => opt_str(&r.vendor_class),
        "user_class" => r.user_class.first().cloned().unwrap_or_default().into(),
        "user_classes" => r
            .user_class
            .iter()
            .map(|s| Dynamic::from(s.clone()))
            .collect::<Array>()
            .into(),
        "hostname" => opt_str(&r.hostname),
        "relay" => ip_or_empty(r.relay),
        "circuit_id" => lossy(&r.circuit_id),
        "remote_id" => lossy(&r.remote_id),
        "interface" => opt_str(&r.interface),
        "family" => slug(r.family.as_str()),
        "phase" => slug(r.phase.as_str()),
        "client_ip" => ip_or_empty(r.client_ip),
        "server" => ip_or_empty(r.server),
        _ => return None,
    })
}

/// The value of one field of a file request, `None` if there is no such field.
pub(crate) fn file_field(r: &FileRequest, name: &str) -> Option<Dynamic> {
    Some(match name {
        "path" => r.path.clone().into(),
        "client" => r.client.ip().to_string().into(),
        "local" => ip_or_empty(r.local.map(|a| a.ip())),
        "mac" => r
            .mac
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_default()
            .into(),
        "protocol" => r.protocol.into(),
        "options" => string_map(&r.options).into(),
        _ => return None,
    })
}

/// The value of one field of a booted event, `None` if there is no such field.
pub(crate) fn ack_field(r: &BootedEvent, name: &str) -> Option<Dynamic> {
    Some(match name {
        "mac" => r
            .mac
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_default()
            .into(),
        "client" => ip_or_empty(r.client),
        "fields" => string_map(&r.fields).into(),
        _ => return None,
    })
}

fn string_map(m: &BTreeMap<String, String>) -> Map {
    m.iter()
        .map(|(k, v)| (k.as_str().into(), Dynamic::from(v.clone())))
        .collect()
}

/// The error for `obj.name` when `name` is not a field.
fn no_such_field(what: &str, name: &str, known: &[&str]) -> Box<EvalAltResult> {
    let hint = nearest(name, known)
        .map(|n| format!("did you mean `{n}`? "))
        .unwrap_or_default();
    Box::new(EvalAltResult::ErrorPropertyNotFound(
        format!(
            "`{name}` is not a field of the {what}; {hint}known fields: {}",
            known.join(", ")
        ),
        Position::NONE,
    ))
}

/// Registers script type `T` as `type_name`: a getter per name in `fields` (`req.mac`) and the
/// indexer (`req["mac"]`), both answered by `field`; an unknown name in the indexer is an error
/// that lists the fields of the `what`.
fn register_record<T: Clone + Send + Sync + 'static>(
    engine: &mut Engine,
    type_name: &str,
    what: &'static str,
    fields: &'static [&'static str],
    field: fn(&T, &str) -> Option<Dynamic>,
) {
    engine.register_type_with_name::<T>(type_name);
    for &name in fields {
        engine.register_get(name, move |r: &mut T| field(r, name).unwrap_or(Dynamic::UNIT));
    }
    engine.register_indexer_get(move |r: &mut T, name: &str| {
        field(r, name).ok_or_else(|| no_such_field(what, name, fields))
    });
}

/// Registers the request types, their getters and `req.option(n)` with the engine.
pub(crate) fn register(engine: &mut Engine) {
    register_record(engine, "BootRequest", "boot request", BOOT_FIELDS, |r: &ScriptBootRequest, n| {
        boot_field(&r.0, n)
    });
    engine.register_fn(
        "option",
        |r: &mut ScriptBootRequest, code: i64| -> Dynamic {
            u16::try_from(code)
                .ok()
                .and_then(|c| r.0.options.get(&c))
                .map_or(Dynamic::UNIT, |b| Dynamic::from_blob(Blob::from(b.clone())))
        },
    );
    engine.register_fn("to_string", |r: &mut ScriptBootRequest| boot_summary(&r.0));
    engine.register_fn("to_debug", |r: &mut ScriptBootRequest| boot_summary(&r.0));

    register_record(engine, "FileRequest", "file request", FILE_FIELDS, |r: &ScriptFileRequest, n| {
        file_field(&r.0, n)
    });
    engine.register_fn("to_string", |r: &mut ScriptFileRequest| {
        format!("{} {} from {}", r.0.protocol, r.0.path, r.0.client)
    });

    register_record(engine, "Booted", "booted event", ACK_FIELDS, |r: &ScriptBooted, n| ack_field(&r.0, n));
}

fn boot_summary(r: &BootRequest) -> String {
    let arch = r
        .arch()
        .map(|a| a.name())
        .unwrap_or_else(|| "no-arch".into());
    format!(
        "{} {} {} {}",
        r.family.as_str(),
        r.phase.as_str(),
        r.mac,
        arch
    )
}

/// A friendly name for a value's type in messages.
fn kind(v: &Dynamic) -> String {
    if v.is_unit() {
        "()".into()
    } else if v.is_string() {
        format!("a string ({v:?})")
    } else if v.is_int() {
        format!("an integer ({v})")
    } else if v.is_bool() {
        format!("a boolean ({v})")
    } else if v.is_map() {
        "a map".into()
    } else if v.is_array() {
        "an array".into()
    } else if v.is_blob() {
        "a blob".into()
    } else {
        format!("a value of type {}", v.type_name())
    }
}

/// The keys a `boot` hook may return.
pub(crate) const BOOT_KEYS: &[&str] = &[
    "filename",
    "next_server",
    "server_name",
    "options",
    "address",
    "lease_time",
];

/// Converts the value returned by `fn boot(req)` into a decision.
///
/// `locate` turns the offending key of the returned map (`None`: the value as a whole) into
/// `file:line:column` for the error: where that key is written, else where the hook is.
pub(crate) fn to_decision(
    value: Dynamic,
    locate: &dyn Fn(Option<&str>) -> String,
) -> Result<Decision, PolicyError> {
    let bad = |key: Option<&str>, message: String| PolicyError::BadReturn {
        location: locate(key),
        message,
    };
    if value.is_unit() {
        return Ok(Decision::Ignore);
    }
    let Some(map) = value.clone().try_cast::<Map>() else {
        return Err(bad(None, format!(
            "`boot` returned {}; return () to ignore the client or a map such as \
             #{{ filename: \"ipxe.efi\" }} to answer it",
            kind(&value)
        )));
    };
    let mut d = BootDecision::default();
    for (key, v) in map {
        let key = key.as_str();
        let at = |m: String| bad(Some(key), m);
        match key {
            "filename" => d.filename = Some(string_of(key, v).map_err(at)?),
            "server_name" => d.server_name = Some(string_of(key, v).map_err(at)?),
            "next_server" => d.next_server = Some(ip_of(key, v).map_err(at)?),
            "address" => d.address = Some(ip_of(key, v).map_err(at)?),
            "lease_time" => {
                let n = v.as_int().map_err(|_| {
                    at(format!(
                        "`lease_time` must be an integer (seconds), not {}",
                        kind(&v)
                    ))
                })?;
                d.lease_time = Some(u32::try_from(n).map_err(|_| {
                    at(format!(
                        "`lease_time` must be 0..=4294967295 seconds, not {n}"
                    ))
                })?);
            }
            "options" => {
                d.options = options_of(v).map_err(|(code, m)| match code {
                    Some(c) => bad(Some(&format!("\"{c}\"")), m),
                    None => at(m),
                })?
            }
            other => {
                let hint = nearest(other, BOOT_KEYS)
                    .map(|n| format!("did you mean `{n}`? "))
                    .unwrap_or_default();
                return Err(at(format!(
                    "`boot` returned a map with unknown key `{other}`; {hint}valid keys: {}",
                    BOOT_KEYS.join(", ")
                )));
            }
        }
    }
    Ok(Decision::Boot(d))
}

fn string_of(key: &str, v: Dynamic) -> Result<String, String> {
    if v.is_string() {
        Ok(v.to_string())
    } else {
        Err(format!("`{key}` must be a string, not {}", kind(&v)))
    }
}

fn ip_of(key: &str, v: Dynamic) -> Result<IpAddr, String> {
    let s = string_of(key, v)?;
    s.parse()
        .map_err(|_| format!("`{key}` must be an IP address such as \"192.0.2.10\", not {s:?}"))
}

/// The `options` map; an error names the offending key (as written) when there is one.
fn options_of(v: Dynamic) -> Result<BTreeMap<u16, OptionValue>, (Option<String>, String)> {
    let Some(map) = v.clone().try_cast::<Map>() else {
        return Err((None, format!(
            "`options` must be a map from option number to value, e.g. \
             #{{ \"60\": \"PXEClient\" }}, not {}",
            kind(&v)
        )));
    };
    let mut out = BTreeMap::new();
    for (key, v) in map {
        let with_key = |m: String| (Some(key.to_string()), m);
        let code = key
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|c| (1..=254).contains(c))
            .ok_or_else(|| {
                with_key(format!(
                    "`options` key `{key}` is not an option number 1..=254; write the number as \
                     a string key, e.g. #{{ \"66\": \"192.0.2.10\" }}"
                ))
            })?;
        out.insert(code, option_value(code, v).map_err(with_key)?);
    }
    Ok(out)
}

fn option_value(code: u16, v: Dynamic) -> Result<OptionValue, String> {
    if v.is_string() {
        return Ok(OptionValue::Text(v.to_string()));
    }
    if v.is_blob() {
        return Ok(OptionValue::Bytes(v.cast::<Blob>()));
    }
    if v.is_int() {
        let n = v.as_int().expect("checked int");
        return u32::try_from(n).map(|n| OptionValue::Int(u64::from(n))).map_err(|_| {
            format!("option {code}: integer {n} is out of range 0..=4294967295; use a blob for other encodings")
        });
    }
    if v.is_array() {
        let mut ips = Vec::new();
        for item in v.cast::<Array>() {
            let ip = item
                .clone()
                .into_string()
                .ok()
                .and_then(|s| s.parse::<Ipv4Addr>().ok())
                .ok_or_else(|| {
                    format!(
                        "option {code}: an array must hold IPv4 address strings such as \
                         [\"192.0.2.1\"], found {}; use a blob for raw bytes",
                        kind(&item)
                    )
                })?;
            ips.push(ip);
        }
        return Ok(OptionValue::Ips(ips));
    }
    Err(format!(
        "option {code}: value must be a string, blob, integer or array of IPv4 strings, not {}",
        kind(&v)
    ))
}

/// The keys a `tftp`/`http` hook may return in a map.
const FILE_KEYS: &[&str] = &["path"];

/// Converts the value returned by `fn tftp(req)` / `fn http(req)` into a file decision.
pub(crate) fn to_file_decision(
    value: Dynamic,
    hook: &str,
    location: &str,
) -> Result<FileDecision, PolicyError> {
    let bad = |message: String| PolicyError::BadReturn {
        location: location.to_string(),
        message,
    };
    const HOW: &str = "return () to serve the file as is, a string or blob to serve generated \
                       content, #{ path: \"other/file\" } to serve another file, or false to refuse";
    if value.is_unit() {
        return Ok(FileDecision::Serve);
    }
    if value.is_string() {
        return Ok(FileDecision::Content(value.to_string().into_bytes()));
    }
    if value.is_blob() {
        return Ok(FileDecision::Content(value.cast::<Blob>()));
    }
    if let Ok(b) = value.as_bool() {
        return Ok(if b {
            FileDecision::Serve
        } else {
            FileDecision::Refuse
        });
    }
    let Some(map) = value.clone().try_cast::<Map>() else {
        return Err(bad(format!("`{hook}` returned {}; {HOW}", kind(&value))));
    };
    let mut path = None;
    for (key, v) in map {
        match key.as_str() {
            "path" => {
                let p = string_of("path", v).map_err(bad)?;
                if p.is_empty() {
                    return Err(bad("`path` is empty; give the file to serve instead".into()));
                }
                path = Some(p);
            }
            other => {
                let hint = nearest(other, FILE_KEYS)
                    .map(|n| format!("did you mean `{n}`? "))
                    .unwrap_or_default();
                return Err(bad(format!(
                    "`{hook}` returned a map with unknown key `{other}`; {hint}the only key is `path`"
                )));
            }
        }
    }
    path.map(FileDecision::Remap)
        .ok_or_else(|| bad(format!("`{hook}` returned a map without `path`; {HOW}")))
}
