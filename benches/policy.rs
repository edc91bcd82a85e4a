//! Policy evaluation cost per request: the shipped `scripts/boot.rhai` (with `plugins/arch.rhai`)
//! on typical DHCP requests. A plain timing loop (no criterion): `cargo bench --bench policy`.
//! `PIXIE_BENCH_POLICY=DIR` measures the policy in DIR/scripts and DIR/plugins instead (e.g.
//! `examples/per-arch`, the policy `bench/dhcp.sh` runs).

use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use pixie::policy::rhai::{Fallback, Limits, RhaiConfig, RhaiPolicy};
use pixie::policy::{BootRequest, HwAddr, Phase, Policy};
use pixie::wire::arch::Arch;

fn main() {
    let root = std::env::var_os("PIXIE_BENCH_POLICY")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf());
    let root = root.as_path();
    let policy = RhaiPolicy::load(RhaiConfig {
        scripts_dir: root.join("scripts"),
        plugins_dir: root.join("plugins"),
        limits: Limits::default(),
        fallback: Fallback::Ignore,
    })
    .expect("the shipped policy compiles");
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
    println!("policy: {}", root.display());
    for (name, req) in &cases {
        for _ in 0..200 {
            black_box(policy.boot(req).unwrap());
        }
        let n = 20_000u32;
        let t = Instant::now();
        for _ in 0..n {
            black_box(policy.boot(black_box(req)).unwrap());
        }
        let per = t.elapsed() / n;
        println!("policy boot.rhai {name:<9} {:>7.1} us/request ({n} calls)", per.as_secs_f64() * 1e6);
    }
}
