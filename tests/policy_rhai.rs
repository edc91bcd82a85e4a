//! The scripted policy from the outside: hot reload through the watcher, broken saves,
//! renames, and concurrent calls while reloading.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pixie::policy::rhai::{check, spawn_watcher, Fallback, Limits, RhaiConfig, RhaiPolicy};
use pixie::policy::{BootRequest, Decision, Phase, Policy};
use tokio_util::sync::CancellationToken;

struct Dirs {
    _tmp: tempfile::TempDir,
    scripts: PathBuf,
    plugins: PathBuf,
}

fn dirs() -> Dirs {
    let tmp = tempfile::tempdir().unwrap();
    let scripts = tmp.path().join("scripts");
    let plugins = tmp.path().join("plugins");
    std::fs::create_dir(&scripts).unwrap();
    std::fs::create_dir(&plugins).unwrap();
    Dirs {
        _tmp: tmp,
        scripts,
        plugins,
    }
}

fn config(d: &Dirs, limits: Limits) -> RhaiConfig {
    RhaiConfig {
        scripts_dir: d.scripts.clone(),
        plugins_dir: d.plugins.clone(),
        limits,
        fallback: Fallback::Ignore,
    }
}

fn script_returning(name: &str) -> String {
    format!("import \"names\" as names;\nfn boot(req) {{\n    #{{ filename: names::prefix() + \"{name}\" }}\n}}\n")
}

fn request() -> BootRequest {
    BootRequest::new_v4("52:54:00:00:00:01".parse().unwrap(), Phase::Discover)
}

fn filename(p: &RhaiPolicy) -> String {
    match p.boot(&request()) {
        Ok(Decision::Boot(d)) => d.filename.unwrap_or_default(),
        other => panic!("expected a boot decision, got {other:?}"),
    }
}

/// Polls `cond` until it holds or `within` has passed (no fixed sleeps).
async fn eventually(within: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < within,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_reloads_edits_keeps_last_good_on_error_and_follows_renames() {
    let d = dirs();
    let boot = d.scripts.join("boot.rhai");
    write(&d.plugins.join("names.rhai"), "fn prefix() { \"\" }");
    write(&boot, &script_returning("one"));
    let policy = Arc::new(RhaiPolicy::load(config(&d, Limits::default())).unwrap());
    assert_eq!(filename(&policy), "one");
    assert_eq!(policy.generation(), 1);

    let shutdown = CancellationToken::new();
    let task = spawn_watcher(policy.clone(), shutdown.clone()).unwrap();
    let second = Duration::from_secs(1);

    // An edit in place is picked up within a second.
    write(&boot, &script_returning("two"));
    eventually(second, "the edit to load", || filename(&policy) == "two").await;
    assert!(policy.generation() >= 2);
    assert_eq!(policy.last_error(), None);

    // A broken save keeps the previous decision and says where the mistake is.
    let good_generation = policy.generation();
    write(
        &boot,
        "import \"names\" as names;\nfn boot(req) {\n    #{ filename: \"three\" \n",
    );
    eventually(second, "the broken save to be reported", || {
        policy.last_error().is_some()
    })
    .await;
    assert_eq!(filename(&policy), "two");
    assert_eq!(policy.generation(), good_generation);
    let report = policy.last_error().unwrap();
    let shown = report.to_string();
    let expected_at = format!("{}:4:", boot.display());
    assert!(shown.starts_with(&expected_at), "{shown}");
    assert!(report.diagnostics[0].line == Some(4) && report.diagnostics[0].column.is_some());
    // `pixie check` says exactly the same.
    let checked = check(&d.scripts, &d.plugins).unwrap_err();
    assert_eq!(checked.to_string(), shown);

    // Fixing it reloads again and clears the error.
    write(&boot, &script_returning("three"));
    eventually(second, "the fix to load", || filename(&policy) == "three").await;
    assert_eq!(policy.last_error(), None);
    assert!(policy.generation() > good_generation);

    // Editors that write a temporary file and rename it over the script.
    let tmp = d.scripts.join("boot.rhai.tmp~");
    write(&tmp, &script_returning("four"));
    std::fs::rename(&tmp, &boot).unwrap();
    eventually(second, "the renamed file to load", || {
        filename(&policy) == "four"
    })
    .await;

    // A change to an imported plugin reloads too.
    write(&d.plugins.join("names.rhai"), "fn prefix() { \"p-\" }");
    eventually(second, "the plugin change to load", || {
        filename(&policy) == "p-four"
    })
    .await;

    // Shutdown stops the watcher promptly.
    shutdown.cancel();
    tokio::time::timeout(second, task)
        .await
        .expect("watcher stops")
        .unwrap();
}

#[test]
fn concurrent_calls_during_reloads_never_fail() {
    let d = dirs();
    write(&d.plugins.join("names.rhai"), "fn prefix() { \"\" }");
    let boot = d.scripts.join("boot.rhai");
    write(&boot, &script_returning("a"));
    let policy = Arc::new(RhaiPolicy::load(config(&d, Limits::default())).unwrap());
    let stop = Arc::new(AtomicBool::new(false));

    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (policy, stop) = (policy.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut calls = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let f = filename(&policy);
                    assert!(f == "a" || f == "b", "unexpected {f:?}");
                    calls += 1;
                }
                calls
            })
        })
        .collect();

    for i in 0..20 {
        write(&boot, &script_returning(if i % 2 == 0 { "b" } else { "a" }));
        policy.reload().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let calls: u64 = workers
        .into_iter()
        .map(|w| w.join().expect("no panic"))
        .sum();
    assert!(calls > 0);
    assert_eq!(policy.generation(), 21);
    assert_eq!(filename(&policy), "a");
}

/// Sets a flag when anything is logged: tells the test that the script is running.
struct Flag(Arc<AtomicBool>);

impl std::io::Write for Flag {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.store(true, Ordering::SeqCst);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_call_in_flight_finishes_on_the_generation_it_started_with() {
    let d = dirs();
    let boot = d.scripts.join("boot.rhai");
    let slow = "fn boot(req) {\n  log_info(\"started\");\n  let n = 0;\n  while n < 300000 { n += 1; }\n  #{ filename: \"old\" }\n}";
    write(&boot, slow);
    let limits = Limits {
        max_operations: 0,
        deadline: Duration::from_secs(30),
        ..Limits::default()
    };
    let policy = Arc::new(RhaiPolicy::load(config(&d, limits)).unwrap());
    let started = Arc::new(AtomicBool::new(false));
    let (p, s) = (policy.clone(), started.clone());
    let in_flight = std::thread::spawn(move || {
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || Flag(s.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, || filename(&p))
    });
    // The script logs once it runs, i.e. once the call holds generation 1.
    while !started.load(Ordering::SeqCst) {
        std::thread::yield_now();
    }
    write(&boot, "fn boot(req) { #{ filename: \"new\" } }");
    assert_eq!(policy.reload().unwrap(), 2);
    assert_eq!(filename(&policy), "new");
    assert_eq!(in_flight.join().unwrap(), "old");
}
