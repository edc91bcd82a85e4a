//! Policy evaluation cost per request (criterion): the shipped `scripts/boot.rhai` (with
//! `plugins/arch.rhai`) on typical DHCP requests: `cargo bench --bench policy`.
//! `PIXIE_BENCH_POLICY=DIR` measures the policy in DIR/scripts and DIR/plugins instead (e.g.
//! `examples/per-arch`, the policy `bench/dhcp.sh` runs).

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{criterion_group, criterion_main, Criterion};
use pixie::policy::rhai::{Fallback, Limits, RhaiConfig, RhaiPolicy};
use pixie::policy::{BootRequest, HwAddr, Phase, Policy};
use pixie::wire::arch::Arch;

/// The requests measured: BIOS PXE, x64 UEFI PXE, iPXE asking for its script, and a client
/// that is not network-boot firmware (the policy stays silent).
fn cases() -> Vec<(&'static str, BootRequest)> {
    let mut cases = Vec::new();
    for (name, arch, ipxe) in [("x86-bios", 0u16, false), ("x64-uefi", 7, false), ("ipxe", 7, true), ("not-pxe", 0, false)] {
        let mut r = BootRequest::new_v4(HwAddr(vec![0x52, 0x54, 0, 0x12, 0x34, 0x56]), Phase::Discover);
        if name != "not-pxe" {
            r.arches = vec![Arch::from(arch)];
            r.vendor_class = Some(format!("PXEClient:Arch:{arch:05}:UNDI:002001"));
        }
        r.ipxe = ipxe;
        r.server = Some("10.0.0.1".parse().unwrap());
        cases.push((name, r));
    }
    cases
}

fn policy(c: &mut Criterion) {
    let chosen = std::env::var_os("PIXIE_BENCH_POLICY").map(PathBuf::from);
    let label = chosen.as_ref().map_or_else(|| "shipped".to_string(), |p| p.display().to_string());
    let root = chosen.unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    let policy = RhaiPolicy::load(RhaiConfig {
        scripts_dir: root.join("scripts"),
        plugins_dir: root.join("plugins"),
        limits: Limits::default(),
        fallback: Fallback::Ignore,
    })
    .unwrap_or_else(|e| panic!("the policy in {} does not compile: {e}", root.display()));
    let mut group = c.benchmark_group(format!("policy {label}"));
    for (name, req) in cases() {
        // The decision must come out the same every time; a failing call would be measured
        // as an error path instead.
        policy.boot(&req).unwrap_or_else(|e| panic!("{name}: {e}"));
        group.bench_function(name, |b| b.iter(|| policy.boot(black_box(&req)).unwrap()));
    }
    group.finish();
}

criterion_group!(benches, policy);
criterion_main!(benches);
