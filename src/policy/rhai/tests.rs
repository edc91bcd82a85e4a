//! Unit tests of the scripted policy: conversions both ways, limits, diagnostics.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::{Duration, Instant};

use super::*;
use crate::policy::{HwAddr, Phase, Uuid};
use crate::wire::arch::Arch;

/// A policy made of `scripts` (name, text) and `plugins` (name, text) in a temporary dir.
fn policy_with(
    scripts: &[(&str, &str)],
    plugins: &[(&str, &str)],
    limits: Limits,
) -> (tempfile::TempDir, Result<RhaiPolicy, CompileReport>) {
    let dir = tempfile::tempdir().unwrap();
    let (s, p) = (dir.path().join("scripts"), dir.path().join("plugins"));
    std::fs::create_dir(&s).unwrap();
    std::fs::create_dir(&p).unwrap();
    for (name, text) in scripts {
        std::fs::write(s.join(name), text).unwrap();
    }
    for (name, text) in plugins {
        std::fs::write(p.join(name), text).unwrap();
    }
    let cfg = RhaiConfig {
        scripts_dir: s,
        plugins_dir: p,
        limits,
        fallback: Fallback::Ignore,
    };
    (dir, RhaiPolicy::load(cfg))
}

fn policy(script: &str) -> (tempfile::TempDir, RhaiPolicy) {
    let (dir, p) = policy_with(&[("boot.rhai", script)], &[], Limits::default());
    (dir, p.unwrap_or_else(|e| panic!("does not compile:\n{e}")))
}

fn compile_error(scripts: &[(&str, &str)], plugins: &[(&str, &str)]) -> (String, CompileReport) {
    let (dir, p) = policy_with(scripts, plugins, Limits::default());
    let report = p.expect_err("should not compile");
    // Replace the temp dir by a stable prefix so messages can be compared.
    let text = report
        .to_string()
        .replace(&format!("{}/", dir.path().display()), "");
    (text, report)
}

fn mac() -> HwAddr {
    "52:54:00:12:34:56".parse().unwrap()
}

fn pxe_req(arch: Option<u16>) -> BootRequest {
    let mut r = BootRequest::new_v4(mac(), Phase::Discover);
    r.vendor_class = Some("PXEClient:Arch:00000:UNDI:002001".into());
    r.arches = arch.into_iter().map(Arch::from).collect();
    r
}

fn boot_decision(p: &RhaiPolicy, req: &BootRequest) -> BootDecision {
    match p.boot(req) {
        Ok(Decision::Boot(d)) => d,
        other => panic!("expected a boot decision, got {other:?}"),
    }
}

fn filename(p: &RhaiPolicy, req: &BootRequest) -> String {
    boot_decision(p, req).filename.unwrap_or_default()
}

fn bad_return(script: &str) -> (String, String) {
    let (_dir, p) = policy(script);
    match p.boot(&pxe_req(Some(7))) {
        Err(PolicyError::BadReturn { location, message }) => (location, message),
        other => panic!("expected BadReturn, got {other:?}"),
    }
}

fn runtime_error(p: &RhaiPolicy) -> (String, String) {
    match p.boot(&pxe_req(Some(7))) {
        Err(PolicyError::Runtime { location, message }) => (location, message),
        other => panic!("expected a runtime error, got {other:?}"),
    }
}

// ---------------------------------------------------------------- request → script

#[test]
fn every_boot_request_field_is_visible() {
    let script = r#"
fn boot(req) {
    let parts = [req.mac, req.uuid, req.arch, req.arches, req.arch_name, req.firmware,
                 req.http, req.ipxe, req.pxe, req.vendor_class, req.user_class,
                 req.user_classes, req.hostname, req.relay, req.circuit_id, req.remote_id,
                 req.interface, req.family, req.phase, req.client_ip];
    let out = "";
    for p in parts { out += `${p}|`; }
    #{ filename: out }
}"#;
    let (_dir, p) = policy(script);

    let mut r = BootRequest::new_v4(mac(), Phase::Proxy4011);
    r.uuid = Some(
        "7e57c0de-0077-4000-8000-525400770010"
            .parse::<Uuid>()
            .unwrap(),
    );
    r.arches = vec![Arch::X64Uefi, Arch::X86Bios];
    r.vendor_class = Some("PXEClient:Arch:00007:UNDI:003016".into());
    r.user_class = vec!["iPXE".into(), "extra".into()];
    r.hostname = Some("node1".into());
    r.ipxe = true;
    r.relay = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)));
    r.circuit_id = Some(b"eth0/1".to_vec());
    r.remote_id = Some(vec![0xff, b'r']);
    r.interface = Some("br0".into());
    r.client_ip = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 50)));
    assert_eq!(
        filename(&p, &r),
        "52:54:00:12:34:56|7e57c0de-0077-4000-8000-525400770010|7|[7, 0]|x64-uefi|uefi|\
         false|true|true|PXEClient:Arch:00007:UNDI:003016|iPXE|[\"iPXE\", \"extra\"]|node1|\
         10.0.0.1|eth0/1|\u{fffd}r|br0|v4|proxy-4011|10.0.0.50|"
    );

    // The empty request: every "absent" value as documented.
    let r = BootRequest::new_v4(mac(), Phase::Discover);
    assert_eq!(
        filename(&p, &r),
        "52:54:00:12:34:56||-1|[]||bios|false|false|false|||[]||||||v4|discover||"
    );

    // An unregistered architecture keeps its number in the slug (registered slugs are shared
    // strings; this one is made per read).
    let mut r = BootRequest::new_v4(mac(), Phase::Discover);
    r.arches = vec![Arch::Unknown(4242)];
    assert!(filename(&p, &r).contains("|4242|[4242]|unknown-4242|"), "{}", filename(&p, &r));
}

#[test]
fn fields_can_be_read_by_name_and_option_returns_raw_bytes() {
    let script = r#"
fn boot(req) {
    let o = req.option(97);
    let missing = req.option(250);
    #{ filename: `${req["arch_name"]} ${type_of(o)} ${o.len()} ${o[0]} ${missing == ()}` }
}"#;
    let (_dir, p) = policy(script);
    let mut r = pxe_req(Some(11));
    r.options.insert(97, vec![0, 1, 2, 3]);
    assert_eq!(filename(&p, &r), "arm64-uefi blob 4 0 true");
}

#[test]
fn unknown_field_names_it_and_lists_the_known_ones() {
    let (_dir, p) = policy("fn boot(req) {\n    if req.hostnam == \"x\" { return (); }\n}");
    let (location, message) = runtime_error(&p);
    assert!(location.ends_with("boot.rhai:2:11"), "{location}");
    assert!(
        message.contains("`hostnam` is not a field of the boot request"),
        "{message}"
    );
    assert!(message.contains("did you mean `hostname`?"), "{message}");
    assert!(
        message.contains("known fields: mac, uuid, arch"),
        "{message}"
    );
}

#[test]
fn file_request_fields_and_every_file_decision() {
    let script = r#"
fn tftp(req) {
    switch req.path {
        "serve" => (),
        "text" => `${req.protocol} ${req.client} ${req.local} ${req.mac} ${req.options.blksize}`,
        "blob" => { let b = blob(2, 0x41); b },
        "refuse" => false,
        "remap" => #{ path: "other/file" },
        "typo" => #{ pth: "x" },
        _ => 42,
    }
}
fn http(req) { `http ${req.path}` }
"#;
    let (_dir, p) = policy(script);
    let req = |protocol: &'static str, path: &str| FileRequest {
        protocol,
        path: path.into(),
        client: SocketAddr::from(([10, 0, 0, 5], 2000)),
        local: Some(SocketAddr::from(([10, 0, 0, 1], 69))),
        mac: Some(mac()),
        options: BTreeMap::from([("blksize".to_string(), "1408".to_string())]),
    };
    assert_eq!(p.file(&req("tftp", "serve")).unwrap(), FileDecision::Serve);
    assert_eq!(
        p.file(&req("tftp", "text")).unwrap(),
        FileDecision::Content(b"tftp 10.0.0.5 10.0.0.1 52:54:00:12:34:56 1408".to_vec())
    );
    assert_eq!(
        p.file(&req("tftp", "blob")).unwrap(),
        FileDecision::Content(b"AA".to_vec())
    );
    assert_eq!(
        p.file(&req("tftp", "refuse")).unwrap(),
        FileDecision::Refuse
    );
    assert_eq!(
        p.file(&req("tftp", "remap")).unwrap(),
        FileDecision::Remap("other/file".into())
    );
    assert_eq!(
        p.file(&req("http", "x")).unwrap(),
        FileDecision::Content(b"http x".to_vec())
    );
    match p.file(&req("tftp", "typo")) {
        Err(PolicyError::BadReturn { location, message }) => {
            assert!(location.ends_with("boot.rhai:2"), "{location}");
            assert!(message.contains("did you mean `path`?"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    match p.file(&req("tftp", "other")) {
        Err(PolicyError::BadReturn { message, .. }) => {
            assert!(message.contains("returned an integer (42)"), "{message}");
            assert!(message.contains("false to refuse"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn hooks_that_are_not_defined_are_not_called() {
    let (_dir, p) = policy("fn helper(x) { x }");
    assert_eq!(p.boot(&pxe_req(Some(7))).unwrap(), Decision::Ignore);
    let req = FileRequest {
        protocol: "tftp",
        path: "a".into(),
        client: SocketAddr::from(([10, 0, 0, 5], 2000)),
        local: None,
        mac: None,
        options: BTreeMap::new(),
    };
    assert_eq!(p.file(&req).unwrap(), FileDecision::Serve);
    assert!(p.hooks().files[0].1.is_empty());
}

#[test]
fn booted_hook_sees_the_event() {
    let (_dir, p) = policy(
        "fn booted(ack) {\n  throw `${ack.mac} ${ack.client} ${ack.fields.status} ${ack.nope}`;\n}",
    );
    let ev = BootedEvent {
        mac: Some(mac()),
        client: Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5))),
        fields: BTreeMap::from([("status".to_string(), "ok".to_string())]),
    };
    // `ack.nope` is not a field: that error wins over the throw.
    let err = p.booted(&ev).unwrap_err().to_string();
    assert!(
        err.contains("`nope` is not a field of the booted event"),
        "{err}"
    );
    let (_dir, p) =
        policy("fn booted(ack) {\n  throw `${ack.mac} ${ack.client} ${ack.fields.status}`;\n}");
    let err = p.booted(&ev).unwrap_err().to_string();
    assert!(err.contains("52:54:00:12:34:56 10.0.0.5 ok"), "{err}");
    assert!(err.contains("boot.rhai:2:3"), "{err}");
}

// ---------------------------------------------------------------- script → decision

#[test]
fn every_return_key_is_converted() {
    let script = r#"
fn boot(req) {
    #{
        filename: "ipxe.efi",
        next_server: "192.0.2.10",
        server_name: "pixie",
        address: "192.0.2.50",
        lease_time: 3600,
        options: #{
            "60": "PXEClient",
            "43": blob(2, 0x06),
            "209": 7,
            " 6": ["192.0.2.1", "192.0.2.2"],
        },
    }
}"#;
    let (_dir, p) = policy(script);
    let d = boot_decision(&p, &pxe_req(Some(7)));
    assert_eq!(d.filename.as_deref(), Some("ipxe.efi"));
    assert_eq!(d.next_server, Some("192.0.2.10".parse().unwrap()));
    assert_eq!(d.server_name.as_deref(), Some("pixie"));
    assert_eq!(d.address, Some("192.0.2.50".parse().unwrap()));
    assert_eq!(d.lease_time, Some(3600));
    assert_eq!(
        d.options,
        BTreeMap::from([
            (
                6,
                OptionValue::Ips(vec![
                    Ipv4Addr::new(192, 0, 2, 1),
                    Ipv4Addr::new(192, 0, 2, 2)
                ])
            ),
            (43, OptionValue::Bytes(vec![6, 6])),
            (60, OptionValue::Text("PXEClient".into())),
            (209, OptionValue::Int(7)),
        ])
    );
    let (_dir, p) = policy("fn boot(req) { () }");
    assert_eq!(p.boot(&pxe_req(None)).unwrap(), Decision::Ignore);
}

use crate::policy::OptionValue;

#[test]
fn each_bad_return_says_what_to_fix() {
    let cases: &[(&str, &[&str])] = &[
        (
            r#""ipxe.efi""#,
            &["returned a string (\"ipxe.efi\")", "return () to ignore"],
        ),
        ("42", &["returned an integer (42)"]),
        (
            r#"#{ filenme: "x" }"#,
            &["unknown key `filenme`", "did you mean `filename`?"],
        ),
        (
            r#"#{ colour: "x" }"#,
            &["unknown key `colour`", "valid keys: filename"],
        ),
        (
            "#{ filename: 5 }",
            &["`filename` must be a string, not an integer (5)"],
        ),
        (
            r#"#{ next_server: "nope" }"#,
            &["`next_server` must be an IP address", "\"nope\""],
        ),
        (
            r#"#{ address: "10.0.0.300" }"#,
            &["`address` must be an IP address"],
        ),
        (
            "#{ lease_time: -1 }",
            &["`lease_time` must be 0..=4294967295"],
        ),
        (
            r#"#{ lease_time: "1h" }"#,
            &["`lease_time` must be an integer"],
        ),
        (r#"#{ options: "60" }"#, &["`options` must be a map"]),
        (
            r#"#{ options: #{ "0": "x" } }"#,
            &["key `0` is not an option number 1..=254"],
        ),
        (
            r#"#{ options: #{ "255": "x" } }"#,
            &["key `255` is not an option number"],
        ),
        (
            r#"#{ options: #{ "abc": "x" } }"#,
            &["key `abc` is not an option number"],
        ),
        (
            r#"#{ options: #{ "6": ["x"] } }"#,
            &["option 6: an array must hold IPv4"],
        ),
        (
            r#"#{ options: #{ "6": -5 } }"#,
            &["option 6: integer -5 is out of range"],
        ),
        (
            r#"#{ options: #{ "6": true } }"#,
            &["option 6: value must be a string, blob"],
        ),
    ];
    for (ret, expected) in cases {
        let (location, message) = bad_return(&format!("\n\nfn boot(req) {{\n  {ret}\n}}"));
        // A map's bad key is located where it is written (line 4); any other value at the
        // hook's `fn` (line 3, column 1).
        let want = if ret.starts_with("#{") { "scripts/boot.rhai:4:" } else { "scripts/boot.rhai:3:1" };
        assert!(location.contains(want), "{ret}: {location}");
        for e in *expected {
            assert!(message.contains(e), "{ret}: {message:?} lacks {e:?}");
        }
    }
}

#[test]
fn a_bad_key_is_located_where_it_is_written() {
    let (location, _) = bad_return("fn boot(req) {\n  let d = #{ filename: \"a\" };\n  d.next_server = \"nope\";\n  #{ filename: \"x\",\n     options: #{ \"6\": true } }\n}");
    assert!(location.ends_with("scripts/boot.rhai:5:18"), "{location}");
    let (location, message) = bad_return("fn boot(req) {\n  #{\n    filenme: \"x\" }\n}");
    assert!(location.ends_with("scripts/boot.rhai:3:5"), "{location}");
    assert!(message.contains("did you mean `filename`"), "{message}");
}

// ---------------------------------------------------------------- errors at request time

#[test]
fn a_throw_names_file_line_and_column() {
    let (_dir, p) = policy("fn boot(req) {\n    throw \"no such host\";\n}");
    let (location, message) = runtime_error(&p);
    assert!(location.ends_with("scripts/boot.rhai:2:5"), "{location}");
    assert!(message.contains("no such host"), "{message}");
}

#[test]
fn errors_in_plugins_and_other_scripts_name_their_file() {
    let (dir, p) = policy_with(
        &[
            (
                "10-main.rhai",
                "import \"util\" as util;\nfn boot(req) {\n  util::fail(req)\n}",
            ),
            (
                "20-more.rhai",
                "fn other(req) {\n\n  req.bogus\n}\nfn tftp(req) { other(req) }",
            ),
        ],
        &[(
            "util.rhai",
            "fn fail(req) {\n  let x = 1;\n  x.nothing()\n}",
        )],
        Limits::default(),
    );
    let p = p.unwrap();
    let (location, message) = runtime_error(&p);
    let plugin = dir.path().join("plugins/util.rhai").display().to_string();
    assert_eq!(location, format!("{plugin}:3:5"), "{message}");
    assert!(message.contains("nothing"), "{message}");

    let req = FileRequest {
        protocol: "tftp",
        path: "a".into(),
        client: SocketAddr::from(([10, 0, 0, 5], 2000)),
        local: None,
        mac: None,
        options: BTreeMap::new(),
    };
    let err = p.file(&req).unwrap_err().to_string();
    assert!(err.contains("20-more.rhai:3:6"), "{err}");
    assert!(
        err.contains("`bogus` is not a field of the file request"),
        "{err}"
    );
}

#[test]
fn an_endless_loop_stops_at_the_deadline() {
    let limits = Limits {
        max_operations: 0,
        deadline: Duration::from_millis(100),
        ..Limits::default()
    };
    let (_dir, p) = policy_with(
        &[("boot.rhai", "fn boot(req) {\n  loop {}\n}")],
        &[],
        limits,
    );
    let p = p.unwrap();
    // Run it on its own thread so that a broken deadline fails the test instead of hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let started = Instant::now();
        let result = runtime_error(&p);
        let _ = tx.send((result, started.elapsed()));
    });
    let ((location, message), took) =
        rx.recv_timeout(Duration::from_secs(5)).expect("the deadline did not stop the loop");
    assert!(
        took >= Duration::from_millis(100),
        "stopped early: {took:?}"
    );
    assert!(took < Duration::from_millis(600), "stopped late: {took:?}");
    assert!(message.contains("deadline of 100 ms"), "{message}");
    assert!(location.contains("boot.rhai:"), "{location}");
}

#[test]
fn an_endless_loop_stops_at_the_operation_limit() {
    let limits = Limits {
        max_operations: 10_000,
        deadline: Duration::from_secs(60),
        ..Limits::default()
    };
    let (_dir, p) = policy_with(
        &[("boot.rhai", "fn boot(req) {\n  loop {}\n}")],
        &[],
        limits,
    );
    let (_, message) = runtime_error(&p.unwrap());
    assert!(message.contains("operation limit"), "{message}");
}

#[test]
fn deep_recursion_is_an_error_not_a_crash() {
    let (_dir, p) = policy("fn down(n) { down(n + 1) }\nfn boot(req) { down(0) }");
    let (_, message) = runtime_error(&p);
    assert!(message.contains("max_call_depth"), "{message}");
}

#[test]
fn huge_strings_are_refused() {
    let (_dir, p) = policy("fn boot(req) {\n  let s = \"x\";\n  loop { s += s; }\n}");
    let (_, message) = runtime_error(&p);
    assert!(message.contains("too large"), "{message}");
}

#[test]
fn eval_is_refused_at_compile_time() {
    let (text, report) = compile_error(&[("boot.rhai", "fn boot(req) {\n  eval(\"1\")\n}")], &[]);
    assert!(text.contains("scripts/boot.rhai:2:3"), "{text}");
    assert!(text.contains("`eval` is disabled"), "{text}");
    assert_eq!(report.diagnostics.len(), 1);
}

#[test]
fn now_honours_the_fixed_clock() {
    let (_dir, p) = policy(
        "fn boot(req) {\n let t = now();\n #{ filename: `${t.year}-${t.month}-${t.day} ${t.hour}:${t.minute}:${t.second} ${t.weekday} ${t.weekday_num} ${t.timestamp}` }\n}",
    );
    let at = chrono::DateTime::parse_from_rfc3339("2024-03-10T22:05:09+01:00").unwrap();
    p.set_clock(Some(at));
    assert_eq!(
        filename(&p, &pxe_req(None)),
        "2024-3-10 22:5:9 sun 7 1710104709"
    );
    p.set_clock(None);
    assert!(filename(&p, &pxe_req(None)).starts_with("20"));
}

// ---------------------------------------------------------------- compile diagnostics

#[test]
fn parse_errors_in_every_file_are_reported_with_positions() {
    let (text, report) = compile_error(
        &[
            ("a.rhai", "fn boot(req) {\n    let x = 1\n    x\n}"),
            ("b.rhai", "fn tftp(req) {\n  \"unterminated\n}"),
        ],
        &[("broken.rhai", "fn f( {")],
    );
    assert_eq!(report.diagnostics.len(), 3, "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("scripts/a.rhai:3:5: "), "{text}");
    assert!(lines[0].contains("hint: insert `;`"), "{text}");
    assert!(lines[1].starts_with("scripts/b.rhai:2:3: "), "{text}");
    assert!(lines[2].starts_with("plugins/broken.rhai:1:"), "{text}");
}

#[test]
fn a_hook_in_two_files_names_both_places() {
    let (text, _) = compile_error(
        &[
            ("a.rhai", "fn boot(req) { () }"),
            ("b.rhai", "\n\nfn boot(req) { () }"),
        ],
        &[],
    );
    assert!(
        text.starts_with("scripts/b.rhai:3:1: hook `boot`"),
        "{text}"
    );
    assert!(
        text.contains("also defined at scripts/a.rhai:1:1"),
        "{text}"
    );
}

#[test]
fn a_hook_with_wrong_parameters_is_an_error() {
    let (text, _) = compile_error(&[("a.rhai", "fn boot(req, extra) { () }")], &[]);
    assert!(
        text.contains("hook `boot` takes exactly one parameter"),
        "{text}"
    );
}

#[test]
fn bad_imports_name_the_importing_file_and_line() {
    let (text, _) = compile_error(
        &[(
            "boot.rhai",
            "// policy\nimport \"../secret\" as s;\nfn boot(req) { () }",
        )],
        &[],
    );
    assert!(
        text.starts_with("scripts/boot.rhai:2:8: import \"../secret\" refused"),
        "{text}"
    );

    let (text, _) = compile_error(
        &[("boot.rhai", "import \"missing\" as m;\nfn boot(req) { () }")],
        &[],
    );
    assert!(
        text.starts_with("scripts/boot.rhai:1:8: import \"missing\": cannot open"),
        "{text}"
    );

    // A plugin that fails while it loads names the plugin's line.
    let (text, _) = compile_error(
        &[("boot.rhai", "import \"p\" as p;\nfn boot(req) { () }")],
        &[("p.rhai", "let x = 1;\nthrow \"plugin broke\";")],
    );
    assert!(text.starts_with("plugins/p.rhai:2:1: "), "{text}");
    assert!(text.contains("plugin broke"), "{text}");
}

#[test]
fn check_lists_hooks_per_file() {
    let dir = tempfile::tempdir().unwrap();
    let (s, p) = (dir.path().join("scripts"), dir.path().join("plugins"));
    std::fs::create_dir(&s).unwrap();
    std::fs::write(s.join("b.rhai"), "fn tftp(req) { () }\nfn http(req) { () }").unwrap();
    std::fs::write(
        s.join("a.rhai"),
        "fn boot(req) { () }\nfn booted(ack) { () }",
    )
    .unwrap();
    std::fs::write(s.join(".#a.rhai"), "editor lock file, not a script").unwrap();
    let report = check(&s, &p).unwrap();
    assert_eq!(
        report.files,
        vec![
            (
                s.join("a.rhai"),
                vec!["boot".to_string(), "booted".to_string()]
            ),
            (
                s.join("b.rhai"),
                vec!["tftp".to_string(), "http".to_string()]
            ),
        ]
    );
    let empty = tempfile::tempdir().unwrap();
    let err = check(empty.path(), &p).unwrap_err();
    assert!(err.to_string().contains("no *.rhai scripts here"), "{err}");
}

#[test]
fn failed_reload_keeps_the_last_good_generation() {
    let (dir, p) = policy("fn boot(req) { #{ filename: \"one\" } }");
    assert_eq!(p.generation(), 1);
    let file = dir.path().join("scripts/boot.rhai");
    std::fs::write(&file, "fn boot(req) { #{ filename: \"two\" }").unwrap();
    let err = p.reload().unwrap_err();
    assert_eq!(p.generation(), 1);
    assert_eq!(p.last_error(), Some(err));
    assert_eq!(filename(&p, &pxe_req(None)), "one");
    std::fs::write(&file, "fn boot(req) { #{ filename: \"two\" } }").unwrap();
    assert_eq!(p.reload().unwrap(), 2);
    assert_eq!(p.last_error(), None);
    assert_eq!(filename(&p, &pxe_req(None)), "two");
}

// ---------------------------------------------------------------- the shipped default policy

#[test]
fn the_default_policy_chainloads_ipxe() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let cfg = RhaiConfig {
        scripts_dir: root.join("scripts"),
        plugins_dir: root.join("plugins"),
        limits: Limits::default(),
        fallback: Fallback::default(),
    };
    let p = RhaiPolicy::load(cfg).unwrap_or_else(|e| panic!("{e}"));

    assert_eq!(filename(&p, &pxe_req(None)), "undionly.kpxe");
    assert_eq!(filename(&p, &pxe_req(Some(0))), "undionly.kpxe");
    assert_eq!(filename(&p, &pxe_req(Some(7))), "ipxe.efi");
    assert_eq!(filename(&p, &pxe_req(Some(11))), "ipxe-arm64.efi");
    assert_eq!(
        p.boot(&pxe_req(Some(2))).unwrap(),
        Decision::Ignore,
        "itanium"
    );

    let mut ipxe = pxe_req(Some(7));
    ipxe.ipxe = true;
    assert_eq!(filename(&p, &ipxe), "boot.ipxe");

    let mut http = BootRequest::new_v4(mac(), Phase::Discover);
    http.arches = vec![Arch::X64UefiHttp];
    http.vendor_class = Some("HTTPClient:Arch:00016:UNDI:003001".into());
    http.server = Some("192.0.2.10".parse().unwrap());
    let d = boot_decision(&p, &http);
    assert_eq!(d.filename.as_deref(), Some("http://192.0.2.10/ipxe.efi"));
    assert_eq!(
        d.options.get(&60),
        Some(&OptionValue::Text("HTTPClient".into()))
    );

    let mut laptop = BootRequest::new_v4(mac(), Phase::Discover);
    laptop.vendor_class = Some("MSFT 5.0".into());
    assert_eq!(p.boot(&laptop).unwrap(), Decision::Ignore);
}
