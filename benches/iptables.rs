//! iptables mode benchmarks: every figure a ratio measured in this run.
//!
//! - `render/N`: criterion timing of rendering N services × 10 endpoints
//!   (pure; compare sizes with each other).
//! - The sync report (root only, in throwaway network namespaces): for each
//!   iptables variant and size, kproxy's full sync and one-endpoint-change
//!   sync, each divided by the raw `iptables-restore` of the same rules in
//!   the same run:
//!   - full sync ÷ the fastest load of the same ruleset on that variant
//!     (a restore into an empty namespace, allowed to flush the table);
//!   - one-endpoint sync ÷ a raw restore of the same delta input;
//!   - one-endpoint sync at N ÷ the same at the smallest N (should stay ~1).
//!
//! `cargo bench --bench iptables` runs everything (sizes from
//! `KPROXY_BENCH_SIZES`, default `1000,10000`); under `cargo test` it runs
//! once at a tiny size as a smoke test.
#![allow(clippy::disallowed_types)] // the bench runs `ip netns` directly
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::process::Command;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use kproxy::backend::iptables::{IptablesBackend, Settings, Variant, render};
use kproxy::backend::{Backend, SyncKind};
use kproxy::config::NodePortAddresses;
use kproxy::model::builders::{mk_service, mk_slice};
use kproxy::model::{IpFamily, Model, SelectionOptions};
use kproxy::sys::Sys;

const ENDPOINTS: usize = 10;

fn settings() -> Settings {
    Settings {
        masquerade_mark: 0x4000,
        masquerade_all: false,
        cluster_cidrs: vec!["10.128.0.0/9".parse().unwrap()],
        nodeport_addresses: NodePortAddresses::All,
        localhost_nodeports: true,
        conntrack_liberal: false,
    }
}

/// A model with `n` ClusterIP services of `ENDPOINTS` endpoints each.
fn cluster(n: usize) -> Model {
    let mut m = Model::new("node-a", SelectionOptions::default());
    for i in 0..n {
        let name = format!("svc-{i}");
        let vip = format!("10.{}.{}.{}", 96 + i / 65536, (i / 256) % 256, i % 256);
        m.apply_service(
            &mk_service("bench", &name)
                .cluster_ip(&vip)
                .port("http", 80, "TCP")
                .build(),
        );
        m.apply_slice(&slice(&name, i, 0));
    }
    m
}

/// The slice of service `i`, with endpoint addresses shifted by `gen`.
fn slice(name: &str, i: usize, generation: usize) -> k8s_openapi::api::discovery::v1::EndpointSlice {
    let eps: Vec<String> = (0..ENDPOINTS)
        .map(|e| {
            let k = i * ENDPOINTS + e + generation;
            format!("10.{}.{}.{}", 128 + k / 65536, (k / 256) % 256, k % 256)
        })
        .collect();
    let refs: Vec<&str> = eps.iter().map(String::as_str).collect();
    mk_slice("bench", &format!("{name}-1"), name)
        .port("http", 8080, "TCP")
        .endpoints(&refs)
        .build()
}

fn bench_render(c: &mut Criterion, sizes: &[usize]) {
    let mut group = c.benchmark_group("render");
    group.sample_size(10);
    for &n in sizes {
        let desired = cluster(n).desired();
        let opts = settings().render_opts(IpFamily::V4, &desired.node, &[], true);
        group.bench_with_input(BenchmarkId::from_parameter(n), &desired, |b, d| {
            b.iter(|| black_box(render::render_full(d, &opts)))
        });
    }
    group.finish();
}

/// A throwaway network namespace, deleted on drop.
struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Ns {
        let name = format!("kpbench-{}-{tag}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .map(|s| s.success());
        assert!(matches!(ok, Ok(true)), "cannot create netns {name}");
        Ns(name)
    }

    /// Times a raw restore of `input` in this namespace.
    fn restore(&self, tool: &str, noflush: bool, input: &str) -> Duration {
        use std::io::Write;
        let mut args = vec!["netns", "exec", &self.0, tool, "-w", "5"];
        if noflush {
            args.push("--noflush");
        }
        let start = Instant::now();
        let mut child = Command::new("ip")
            .args(&args)
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let status = child.wait().unwrap();
        let took = start.elapsed();
        assert!(status.success(), "{tool} failed");
        took
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn full_text_with_jumps(desired: &kproxy::model::DesiredState, opts: &render::RenderOpts) -> String {
    let large = render::is_large(desired, opts.family);
    let ports: Vec<render::PortRules> = desired
        .ports_of(opts.family)
        .map(|s| render::render_port(s, opts, large))
        .collect();
    let stat = render::render_static(opts);
    let jumps: Vec<render::Jump> = render::JUMPS
        .iter()
        .chain(render::FIREWALL_JUMPS.iter())
        .copied()
        .collect();
    let mut text = String::new();
    render::write_tables(&mut text, &stat, &ports, &[], &jumps, true);
    text
}

struct Row {
    variant: Variant,
    n: usize,
    full: Duration,
    raw_full: Duration,
    partial: Duration,
    raw_partial: Duration,
}

fn measure(variant: Variant, n: usize) -> Row {
    let tool = variant.tool(IpFamily::V4, "iptables-restore");
    let mut model = cluster(n);
    // kproxy: full sync into an empty namespace.
    let ns = Ns::new(&format!("{n}-ours"));
    let mut backend = IptablesBackend::new(Sys::in_netns(&ns.0), settings(), Some(variant));
    let (desired, changes) = (model.desired(), model.changes());
    let start = Instant::now();
    backend.sync(&desired, &changes, SyncKind::Full).unwrap();
    let full = start.elapsed();
    model.ack(&changes);

    // The same rules as one input (jumps from the built-in chains included,
    // since they make the kernel validate every reachable chain on each
    // commit), loaded the fastest way: empty namespace, table flushed.
    let opts = settings().render_opts(IpFamily::V4, &desired.node, &[], true);
    let text = full_text_with_jumps(&desired, &opts);
    let raw_ns = Ns::new(&format!("{n}-raw"));
    let raw_full = raw_ns.restore(&tool, false, &text);

    // One endpoint of one service changes; the best of a few such syncs
    // (each a different service) is reported.
    let mut partial = Duration::MAX;
    let mut delta = String::new();
    for round in 0..3 {
        let i = n / 2 + round;
        model.apply_slice(&slice(&format!("svc-{i}"), i, 1));
        let (desired, changes) = (model.desired(), model.changes());
        let start = Instant::now();
        backend.sync(&desired, &changes, SyncKind::Partial).unwrap();
        let took = start.elapsed();
        model.ack(&changes);
        if std::env::var_os("KPROXY_BENCH_VERBOSE").is_some() {
            eprintln!("{variant:?} {n}: one-endpoint sync {round}: {took:?}");
        }
        if round == 0 {
            delta = backend.last_input(IpFamily::V4).unwrap_or_default().to_string();
        }
        partial = partial.min(took);
    }
    // The same delta, raw, against the same starting rules.
    let raw_partial = raw_ns.restore(&tool, true, &delta);
    Row {
        variant,
        n,
        full,
        raw_full,
        partial,
        raw_partial,
    }
}

fn sync_report(sizes: &[usize]) {
    let root = unsafe_free_is_root();
    if !root || Command::new("ip").arg("-V").output().is_err() {
        println!("sync report skipped: needs root and iproute2 (render benchmarks ran)");
        return;
    }
    let mut rows = Vec::new();
    let wanted = std::env::var("KPROXY_BENCH_VARIANTS").unwrap_or_else(|_| "legacy,nft".into());
    for variant in [Variant::Legacy, Variant::Nft] {
        if !wanted.contains(&format!("{variant:?}").to_lowercase()) {
            continue;
        }
        let tool = variant.tool(IpFamily::V4, "iptables-restore");
        if Command::new(&tool).arg("--version").output().is_err() {
            println!("{tool} not installed; skipping {variant:?}");
            continue;
        }
        for &n in sizes {
            rows.push(measure(variant, n));
        }
    }
    println!();
    println!("iptables mode, {ENDPOINTS} endpoints per service; ratios to the raw kernel load measured in this run");
    println!(
        "{:<8} {:>7} | {:>9} {:>9} {:>7} | {:>9} {:>9} {:>7} | {:>13}",
        "variant", "svcs", "full", "raw", "ratio", "1-ep", "raw", "ratio", "1-ep vs min N"
    );
    for r in &rows {
        let base = rows
            .iter()
            .filter(|b| b.variant == r.variant)
            .min_by_key(|b| b.n)
            .map(|b| b.partial)
            .unwrap_or(r.partial);
        println!(
            "{:<8} {:>7} | {:>8.3}s {:>8.3}s {:>6.2}x | {:>7.1}ms {:>7.1}ms {:>6.2}x | {:>12.2}x",
            format!("{:?}", r.variant).to_lowercase(),
            r.n,
            r.full.as_secs_f64(),
            r.raw_full.as_secs_f64(),
            r.full.as_secs_f64() / r.raw_full.as_secs_f64(),
            r.partial.as_secs_f64() * 1e3,
            r.raw_partial.as_secs_f64() * 1e3,
            r.partial.as_secs_f64() / r.raw_partial.as_secs_f64(),
            r.partial.as_secs_f64() / base.as_secs_f64(),
        );
    }
}

fn unsafe_free_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn main() {
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let sizes: Vec<usize> = if bench_mode {
        std::env::var("KPROXY_BENCH_SIZES")
            .unwrap_or_else(|_| "1000,10000".into())
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect()
    } else {
        vec![20]
    };
    let mut c = Criterion::default().configure_from_args();
    let render_sizes: Vec<usize> = if bench_mode {
        let mut s = sizes.clone();
        if !s.contains(&30000) {
            s.push(30000);
        }
        s
    } else {
        sizes.clone()
    };
    bench_render(&mut c, &render_sizes);
    c.final_summary();
    sync_report(&sizes);
}
