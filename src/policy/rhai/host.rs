//! What scripts get from the host besides the request: the per-host store (`store.get/set/del`)
//! and read-only data files next to the scripts (`read_data("hosts.csv")`).
//!
//! `store` is not a variable in the script's scope (hooks are functions, and Rhai functions
//! cannot see outer variables): the engine resolves the name `store` itself, everywhere, unless
//! the script declared its own variable called `store`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use rhai::{Array, Dynamic, Engine, EvalAltResult, Map, Position};
use serde_json::Value;

use crate::store::HostStore;

/// The store scripts use, shared by every generation; swapped by [`super::RhaiPolicy::set_store`].
pub(crate) type StoreSlot = Arc<RwLock<Arc<dyn HostStore>>>;

/// The `store` object scripts call methods on.
#[derive(Clone)]
pub(crate) struct ScriptStore(StoreSlot);

impl ScriptStore {
    fn current(&self) -> Arc<dyn HostStore> {
        self.0.read().expect("store slot poisoned").clone()
    }
}

fn err(msg: String) -> Box<EvalAltResult> {
    Box::new(EvalAltResult::ErrorRuntime(msg.into(), Position::NONE))
}

/// A script value as JSON, for the store. Refuses what JSON cannot hold faithfully.
pub(crate) fn to_json(v: &Dynamic, key: &str) -> Result<Value, String> {
    if v.is_unit() {
        return Err(format!("cannot store () under `{key}`; to remove the key use store.del(key)"));
    }
    if let Ok(b) = v.as_bool() {
        return Ok(Value::Bool(b));
    }
    if let Ok(n) = v.as_int() {
        return Ok(Value::from(n));
    }
    if let Ok(f) = v.as_float() {
        return serde_json::Number::from_f64(f)
            .map(Value::Number)
            .ok_or_else(|| format!("cannot store {f} under `{key}`: not a finite number"));
    }
    if v.is_string() || v.is_char() {
        return Ok(Value::String(v.to_string()));
    }
    if v.is_array() {
        let a = v.read_lock::<Array>().expect("checked array");
        return a.iter().map(|x| to_json(x, key)).collect::<Result<Vec<_>, _>>().map(Value::Array);
    }
    if v.is_map() {
        let m = v.read_lock::<Map>().expect("checked map");
        let mut out = serde_json::Map::new();
        for (k, x) in m.iter() {
            out.insert(k.to_string(), to_json(x, key)?);
        }
        return Ok(Value::Object(out));
    }
    Err(format!(
        "cannot store a value of type {} under `{key}`; store strings, numbers, booleans, arrays \
         or maps (a blob could be stored as a hex string)",
        v.type_name()
    ))
}

/// JSON (from the store or a data file) as a script value.
pub(crate) fn from_json(v: &Value) -> Dynamic {
    match v {
        Value::Null => Dynamic::UNIT,
        Value::Bool(b) => (*b).into(),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Dynamic::from_int(i),
            None => Dynamic::from_float(n.as_f64().unwrap_or(0.0)),
        },
        Value::String(s) => s.clone().into(),
        Value::Array(a) => a.iter().map(from_json).collect::<Array>().into(),
        Value::Object(o) => o
            .iter()
            .map(|(k, v)| (k.as_str().into(), from_json(v)))
            .collect::<Map>()
            .into(),
    }
}

fn toml_to_json(v: toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => {
            Value::Object(t.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect())
        }
    }
}

/// Registers the `store` object and its methods.
pub(crate) fn register_store(engine: &mut Engine, slot: StoreSlot) {
    engine.register_type_with_name::<ScriptStore>("Store");
    engine.register_fn("to_string", |_: &mut ScriptStore| "store".to_string());
    engine.register_fn(
        "get",
        |s: &mut ScriptStore, key: &str| -> Result<Dynamic, Box<EvalAltResult>> {
            let v = s.current().get(key).map_err(|e| err(format!("store.get: {e}")))?;
            Ok(v.as_ref().map_or(Dynamic::UNIT, from_json))
        },
    );
    engine.register_fn(
        "get",
        |s: &mut ScriptStore, key: &str, default: Dynamic| -> Result<Dynamic, Box<EvalAltResult>> {
            let v = s.current().get(key).map_err(|e| err(format!("store.get: {e}")))?;
            Ok(v.as_ref().map_or(default, from_json))
        },
    );
    engine.register_fn(
        "set",
        |s: &mut ScriptStore, key: &str, value: Dynamic| -> Result<(), Box<EvalAltResult>> {
            let v = to_json(&value, key).map_err(|m| err(format!("store.set: {m}")))?;
            // A durable commit: let the server hand this thread's work to another meanwhile.
            crate::handoff::about_to_block();
            s.current().set(key, &v).map_err(|e| err(format!("store.set: {e}")))
        },
    );
    engine.register_fn("del", |s: &mut ScriptStore, key: &str| -> Result<bool, Box<EvalAltResult>> {
        crate::handoff::about_to_block();
        s.current().del(key).map_err(|e| err(format!("store.del: {e}")))
    });
    engine.register_fn("keys", |s: &mut ScriptStore| -> Result<Array, Box<EvalAltResult>> {
        crate::handoff::about_to_block();
        let list = s.current().list().map_err(|e| err(format!("store.keys: {e}")))?;
        Ok(list.into_iter().map(|e| Dynamic::from(e.key)).collect())
    });

    let handle = ScriptStore(slot);
    #[allow(deprecated)] // "volatile", not deprecated: the only way to reach into functions.
    engine.on_var(move |name, _index, ctx| {
        if name == "store" && !ctx.scope().contains("store") {
            Ok(Some(Dynamic::from(handle.clone())))
        } else {
            Ok(None)
        }
    });
}

/// A data file read once and kept until it changes on disk.
struct Cached {
    modified: Option<SystemTime>,
    len: u64,
    value: Dynamic,
}

/// Largest data file `read_data` accepts.
const MAX_DATA_FILE: u64 = 4 << 20;

/// Registers `read_data(name)`: a file in the scripts directory as a script value.
pub(crate) fn register_data(engine: &mut Engine, dir: &Path) {
    let dir = dir.to_path_buf();
    let cache: Arc<Mutex<HashMap<PathBuf, Cached>>> = Arc::default();
    engine.register_fn("read_data", move |name: &str| -> Result<Dynamic, Box<EvalAltResult>> {
        read_data(&dir, name, &cache).map_err(err)
    });
}

fn read_data(
    dir: &Path,
    name: &str,
    cache: &Mutex<HashMap<PathBuf, Cached>>,
) -> Result<Dynamic, String> {
    const HOW: &str = "data files are plain names looked up in the scripts directory, e.g. \
                       read_data(\"hosts.csv\") reads scripts/hosts.csv";
    if name.is_empty() || name.contains("..") || name.starts_with('/') || name.contains(['\\', '\0'])
    {
        return Err(format!("read_data(\"{}\") refused; {HOW}", name.escape_debug()));
    }
    let display = dir.join(name);
    let root = dir.canonicalize().map_err(|e| format!("read_data: {}: {e}", dir.display()))?;
    let canon = display
        .canonicalize()
        .map_err(|e| format!("read_data(\"{name}\"): cannot open {}: {e}; {HOW}", display.display()))?;
    if !canon.starts_with(&root) {
        return Err(format!(
            "read_data(\"{name}\") refused: {} resolves outside the scripts directory",
            display.display()
        ));
    }
    let meta = std::fs::metadata(&canon).map_err(|e| format!("read_data: {}: {e}", display.display()))?;
    if meta.len() > MAX_DATA_FILE {
        return Err(format!(
            "read_data: {} is {} bytes, more than the {MAX_DATA_FILE} allowed",
            display.display(),
            meta.len()
        ));
    }
    let modified = meta.modified().ok();
    if let Some(c) = cache.lock().expect("data cache poisoned").get(&canon) {
        if c.modified == modified && c.len == meta.len() {
            return Ok(c.value.clone());
        }
    }
    crate::handoff::about_to_block();
    let text = std::fs::read_to_string(&canon).map_err(|e| format!("read_data: {}: {e}", display.display()))?;
    let ext = canon.extension().and_then(|e| e.to_str()).unwrap_or("");
    let value = match ext {
        "csv" => parse_csv(&text).map_err(|e| format!("{}: {e}", display.display()))?,
        "toml" => {
            let v: toml::Value =
                toml::from_str(&text).map_err(|e| format!("{}: {e}", display.display()))?;
            from_json(&toml_to_json(v))
        }
        "json" => {
            let v: Value =
                serde_json::from_str(&text).map_err(|e| format!("{}: {e}", display.display()))?;
            from_json(&v)
        }
        _ => text.into(),
    };
    cache.lock().expect("data cache poisoned").insert(
        canon,
        Cached { modified, len: meta.len(), value: value.clone() },
    );
    Ok(value)
}

/// CSV with a header row (RFC 4180: quoted fields, `""` for a quote) into an array of maps.
/// Blank lines and lines starting with `#` are skipped; cells are trimmed.
pub(crate) fn parse_csv(text: &str) -> Result<Dynamic, String> {
    let mut rows: Vec<(usize, Vec<String>)> = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    let mut row: Vec<String> = Vec::new();
    let mut cell = String::new();
    let mut quoted = false;
    let mut row_line = 1;
    let mut at_row_start = true;
    let mut comment = false;
    while let Some(c) = chars.next() {
        if at_row_start && c == '#' && !quoted {
            comment = true;
        }
        at_row_start = false;
        if comment {
            if c == '\n' {
                comment = false;
                at_row_start = true;
                line += 1;
                row_line = line;
            }
            continue;
        }
        match c {
            '"' if quoted => {
                if chars.peek() == Some(&'"') {
                    chars.next();
                    cell.push('"');
                } else {
                    quoted = false;
                }
            }
            '"' if cell.trim().is_empty() => {
                cell.clear();
                quoted = true;
            }
            ',' if !quoted => row.push(std::mem::take(&mut cell).trim().to_string()),
            '\r' if !quoted => {}
            '\n' if !quoted => {
                row.push(std::mem::take(&mut cell).trim().to_string());
                if !(row.len() == 1 && row[0].is_empty()) {
                    rows.push((row_line, std::mem::take(&mut row)));
                }
                row.clear();
                line += 1;
                row_line = line;
                at_row_start = true;
            }
            c => {
                if c == '\n' {
                    line += 1;
                }
                cell.push(c);
            }
        }
    }
    if quoted {
        return Err(format!("line {row_line}: a quoted cell is never closed"));
    }
    if !comment && (!cell.trim().is_empty() || !row.is_empty()) {
        row.push(cell.trim().to_string());
        rows.push((row_line, row));
    }
    let mut it = rows.into_iter();
    let Some((_, header)) = it.next() else {
        return Ok(Array::new().into());
    };
    let mut out = Array::new();
    for (l, r) in it {
        if r.len() != header.len() {
            return Err(format!(
                "line {l}: {} cells, but the header has {} ({})",
                r.len(),
                header.len(),
                header.join(",")
            ));
        }
        let m: Map = header
            .iter()
            .zip(r)
            .map(|(k, v)| (k.as_str().into(), Dynamic::from(v)))
            .collect();
        out.push(m.into());
    }
    Ok(out.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_with_quotes_comments_and_blank_lines() {
        let v = parse_csv("# hosts\nmac,name\n\n52:54:00:00:00:01, \"web, 1\"\r\n52:54:00:00:00:02,\"say \"\"hi\"\"\"\n")
            .unwrap();
        let a = v.cast::<Array>();
        assert_eq!(a.len(), 2);
        let m = a[0].clone().cast::<Map>();
        assert_eq!(m["mac"].to_string(), "52:54:00:00:00:01");
        assert_eq!(m["name"].to_string(), "web, 1");
        assert_eq!(a[1].clone().cast::<Map>()["name"].to_string(), "say \"hi\"");
        let e = parse_csv("a,b\n1\n").unwrap_err();
        assert!(e.contains("line 2") && e.contains("header has 2"), "{e}");
        assert!(parse_csv("a\n\"open\n").is_err());
    }

    #[test]
    fn json_round_trip_refuses_unit_and_blobs() {
        let mut m = Map::new();
        m.insert("state".into(), "installed".into());
        m.insert("n".into(), Dynamic::from_int(3));
        m.insert("ok".into(), true.into());
        let j = to_json(&m.into(), "k").unwrap();
        assert_eq!(j, serde_json::json!({"state": "installed", "n": 3, "ok": true}));
        assert_eq!(to_json(&from_json(&j), "k").unwrap(), j);
        assert!(to_json(&Dynamic::UNIT, "k").unwrap_err().contains("store.del"));
        assert!(to_json(&Dynamic::from_blob(vec![1]), "k").unwrap_err().contains("hex"));
    }
}
