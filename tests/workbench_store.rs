//! The per-host store: many threads at once, persistence across reopen (also through the
//! scripts), WAL beside another connection, and the `pixie store` CLI.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use pixie::policy::rhai::{Fallback, Limits, RhaiConfig, RhaiPolicy};
use pixie::policy::{BootRequest, BootedEvent, Decision, Phase, Policy};
use pixie::store::{HostStore, MemoryStore, SqliteStore};
use serde_json::json;

fn hammer(store: Arc<dyn HostStore>) {
    const THREADS: usize = 8;
    const KEYS: usize = 50;
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let s = store.clone();
            std::thread::spawn(move || {
                for i in 0..KEYS {
                    let key = format!("52:54:00:00:{t:02x}:{i:02x}");
                    s.set(&key, &json!({ "thread": t, "i": i })).unwrap();
                    // Everyone also updates one shared key, and reads it back as a whole value.
                    s.set("shared", &json!({ "by": t, "i": i })).unwrap();
                    assert_eq!(s.get(&key).unwrap(), Some(json!({ "thread": t, "i": i })));
                    let v = s.get("shared").unwrap().unwrap();
                    assert!(v["by"].is_u64() && v["i"].is_u64(), "torn value {v}");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(store.list().unwrap().len(), THREADS * KEYS + 1);
}

#[test]
fn many_threads_set_and_get_at_once() {
    hammer(Arc::new(MemoryStore::new()));
    let dir = tempfile::tempdir().unwrap();
    hammer(Arc::new(SqliteStore::open(dir.path()).unwrap()));
}

#[test]
fn two_connections_to_one_database_see_each_others_writes() {
    // pixie serve and `pixie store` (or the lease store) open the same file.
    let dir = tempfile::tempdir().unwrap();
    let a = Arc::new(SqliteStore::open(dir.path()).unwrap());
    let b = Arc::new(SqliteStore::open(dir.path()).unwrap());
    let writers: Vec<_> = [a.clone(), b.clone()]
        .into_iter()
        .enumerate()
        .map(|(n, s)| {
            std::thread::spawn(move || {
                for i in 0..100 {
                    s.set(&format!("{n}-{i}"), &json!(i)).unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    assert_eq!(a.list().unwrap().len(), 200);
    assert_eq!(b.get("0-99").unwrap(), Some(json!(99)));
}

fn policy(dir: &Path, script: &str) -> RhaiPolicy {
    std::fs::create_dir_all(dir.join("scripts")).unwrap();
    std::fs::write(dir.join("scripts/boot.rhai"), script).unwrap();
    RhaiPolicy::load(RhaiConfig {
        scripts_dir: dir.join("scripts"),
        plugins_dir: dir.join("plugins"),
        limits: Limits::default(),
        fallback: Fallback::Ignore,
    })
    .unwrap()
}

fn req(mac: &str) -> BootRequest {
    BootRequest::new_v4(mac.parse().unwrap(), Phase::Discover)
}

fn filename(p: &RhaiPolicy, mac: &str) -> String {
    match p.boot(&req(mac)).unwrap() {
        Decision::Boot(b) => b.filename.unwrap(),
        Decision::Ignore => "(ignore)".into(),
    }
}

const INSTALL_ONCE: &str = r#"
fn boot(req) {
    let s = store.get(req.mac, #{ boots: 0 });
    s.boots += 1;
    store.set(req.mac, s);
    if store.get(`${req.mac}/installed`, false) { #{ filename: `local ${s.boots}` } }
    else { #{ filename: `install ${s.boots}` } }
}
fn booted(ack) {
    store.set(`${ack.mac}/installed`, true);
}
"#;

#[test]
fn scripts_state_survives_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let mac = "52:54:00:00:00:01";
    {
        let p = policy(tmp.path(), INSTALL_ONCE);
        p.set_store(Arc::new(SqliteStore::open(&state).unwrap()));
        assert_eq!(filename(&p, mac), "install 1");
        p.booted(&BootedEvent { mac: Some(mac.parse().unwrap()), client: None, fields: Default::default() })
            .unwrap();
        assert_eq!(filename(&p, mac), "local 2");
        // A reload keeps the store.
        p.reload().unwrap();
        assert_eq!(filename(&p, mac), "local 3");
    }
    // "Restart": a new policy and a new connection to the same file.
    let p = policy(tmp.path(), INSTALL_ONCE);
    p.set_store(Arc::new(SqliteStore::open(&state).unwrap()));
    assert_eq!(filename(&p, mac), "local 4");
    assert_eq!(filename(&p, "52:54:00:00:00:02"), "install 1");
    // Without a persistent store, scripts start from nothing.
    let fresh = policy(tmp.path(), INSTALL_ONCE);
    assert_eq!(filename(&fresh, mac), "install 1");
}

#[test]
fn concurrent_hook_calls_share_one_store() {
    let tmp = tempfile::tempdir().unwrap();
    let p = Arc::new(policy(
        tmp.path(),
        "fn boot(req) { store.set(req.mac, req.hostname); #{ filename: store.get(req.mac) } }",
    ));
    p.set_store(Arc::new(SqliteStore::open(&tmp.path().join("state")).unwrap()));
    let hs: Vec<_> = (0..8)
        .map(|t| {
            let p = p.clone();
            std::thread::spawn(move || {
                for i in 0..20 {
                    let mut r = req(&format!("52:54:00:00:00:{t:02x}"));
                    r.hostname = Some(format!("h{t}-{i}"));
                    match p.boot(&r).unwrap() {
                        Decision::Boot(b) => assert_eq!(b.filename.unwrap(), format!("h{t}-{i}")),
                        other => panic!("{other:?}"),
                    }
                }
            })
        })
        .collect();
    for h in hs {
        h.join().unwrap();
    }
    assert_eq!(p.store().list().unwrap().len(), 8);
}

#[test]
fn bad_store_use_in_a_script_names_the_line_and_the_fix() {
    let tmp = tempfile::tempdir().unwrap();
    let p = policy(tmp.path(), "fn boot(req) {\n  store.set(req.mac, ());\n}");
    let e = p.boot(&req("52:54:00:00:00:01")).unwrap_err().to_string();
    assert!(e.contains("boot.rhai:2:") && e.contains("store.del"), "{e}");
    let p = policy(tmp.path(), "fn boot(req) {\n  store.set(\"\", 1);\n}");
    let e = p.boot(&req("52:54:00:00:00:01")).unwrap_err().to_string();
    assert!(e.contains("boot.rhai:2:") && e.contains("must not be empty"), "{e}");
}

fn cli(state: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pixie"))
        .arg("store")
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_store_cli_sets_gets_lists_and_deletes() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    let (code, out, _) = cli(&state, &["list"]);
    assert_eq!(code, 0);
    assert!(out.contains("the store is empty"), "{out}");
    assert_eq!(cli(&state, &["set", "52:54:00:00:00:01", r#"{"state":"installed"}"#]).0, 0);
    assert_eq!(cli(&state, &["set", "note", r#""hello""#]).0, 0);
    let (code, out, _) = cli(&state, &["get", "52:54:00:00:00:01"]);
    assert_eq!((code, out.trim()), (0, r#"{"state":"installed"}"#));
    let (_, out, _) = cli(&state, &["list"]);
    assert!(out.contains("52:54:00:00:00:01") && out.contains("note") && out.contains("\"hello\""), "{out}");
    let (_, out, _) = cli(&state, &["--json", "list"]);
    let first: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(first["value"], json!({"state": "installed"}));
    // What the CLI wrote is what scripts read.
    let s = SqliteStore::open(&state).unwrap();
    assert_eq!(s.get("note").unwrap(), Some(json!("hello")));
    drop(s);
    assert_eq!(cli(&state, &["del", "note"]).0, 0);
    let (code, _, err) = cli(&state, &["get", "note"]);
    assert_eq!(code, 1);
    assert!(err.contains("no key \"note\""), "{err}");
    let (code, _, err) = cli(&state, &["set", "k", "installed"]);
    assert_eq!(code, 2);
    assert!(err.contains("not JSON") && err.contains("'\"installed\"'"), "{err}");
    let (code, _, err) = cli(&state, &["set", "k", "null"]);
    assert_eq!(code, 2);
    assert!(err.contains("store.del"), "{err}");
    assert!(state.join("pixie.db").is_file());
}
