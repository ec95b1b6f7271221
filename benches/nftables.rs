//! nftables mode benchmarks: every figure measured in this run, most as a
//! ratio to the raw `nft -f` of the same text.
//!
//! - `nft_render/N`: criterion timing of rendering N services × 10 endpoints
//!   (pure).
//! - The sync report (root only, in throwaway network namespaces
//!   `kpbench-<pid>-…`), for each size N:
//!   - full: kproxy's first full sync into an empty namespace ÷ a raw
//!     `nft -f` of the same transaction into another empty namespace;
//!   - resync: a periodic full sync of the loaded table (listing our chain
//!     and set names + the whole transaction);
//!   - 1-ep: one endpoint of one service changes (median of several), end
//!     to end through the backend ÷ a raw `nft -f` of the same delta against
//!     the same loaded table, and ÷ the same at the smallest N;
//!   - probes of the transport on the loaded table: `nft -f` of a one-element
//!     add+delete, of a one-chain add+delete, and of a listing of chain names;
//!   - the same full load and one-endpoint change through
//!     `kproxy::backend::iptables` (iptables-nft, and iptables-legacy when
//!     installed), side by side.
//!
//! `cargo bench --bench nftables` runs everything (sizes from
//! `KPROXY_BENCH_SIZES`, default `1000,10000`; `KPROXY_BENCH_RENDER_ONLY=1`
//! skips the sync report); under `cargo test` it runs once at a tiny size as
//! a smoke test.
#![allow(clippy::disallowed_types)] // the bench runs `ip netns` and `nft` directly
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use kproxy::backend::iptables::{self, IptablesBackend, Variant};
use kproxy::backend::nftables::{NftablesBackend, Settings, render};
use kproxy::backend::{Backend, SyncKind};
use kproxy::config::NodePortAddresses;
use kproxy::model::builders::{mk_service, mk_slice};
use kproxy::model::{IpFamily, Model, SelectionOptions};
use kproxy::sys::Sys;

const ENDPOINTS: usize = 10;
/// One-endpoint changes measured per size (the median is reported).
const CHANGES: usize = 7;

fn settings() -> Settings {
    Settings {
        masquerade_mark: 0x4000,
        masquerade_all: false,
        cluster_cidrs: vec!["10.128.0.0/9".parse().unwrap()],
        nodeport_addresses: NodePortAddresses::All,
        localhost_nodeports: false,
        conntrack_liberal: false,
    }
}

fn ipt_settings() -> iptables::Settings {
    iptables::Settings {
        masquerade_mark: 0x4000,
        masquerade_all: false,
        cluster_cidrs: vec!["10.128.0.0/9".parse().unwrap()],
        nodeport_addresses: NodePortAddresses::All,
        localhost_nodeports: false,
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

/// The slice of service `i`, with endpoint addresses shifted by `generation`.
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
    let mut group = c.benchmark_group("nft_render");
    group.sample_size(10);
    for &n in sizes {
        let desired = cluster(n).desired();
        let opts = settings().render_opts(IpFamily::V4, &desired.node, &[], false);
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

    /// Times `tool args…` in this namespace with `input` on stdin.
    fn time(&self, tool: &str, args: &[&str], input: &str) -> Duration {
        let mut full = vec!["netns", "exec", &self.0, tool];
        full.extend_from_slice(args);
        let start = Instant::now();
        let mut child = Command::new("ip")
            .args(&full)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let took = start.elapsed();
        assert!(
            out.status.success(),
            "{tool} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        took
    }

    fn nft(&self, input: &str) -> Duration {
        self.time("nft", &["-f", "-"], input)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Changes one endpoint of `CHANGES` services in turn, timing each sync
/// through `backend` and returning the times and the kernel inputs.
fn one_endpoint_changes<B: Backend>(
    model: &mut Model,
    n: usize,
    backend: &mut B,
    input: impl Fn(&B) -> String,
) -> (Vec<Duration>, Vec<String>) {
    let (mut times, mut inputs) = (Vec::new(), Vec::new());
    for k in 0..CHANGES {
        let i = (n / 2 + k * 7919) % n;
        // A different service each time, one endpoint replaced (the window shifts by one).
        model.apply_slice(&slice(&format!("svc-{i}"), i, 1));
        let (desired, changes) = (model.desired(), model.changes());
        let start = Instant::now();
        backend.sync(&desired, &changes, SyncKind::Partial).unwrap();
        times.push(start.elapsed());
        model.ack(&changes);
        inputs.push(input(backend));
    }
    (times, inputs)
}

struct NftRow {
    n: usize,
    full: Duration,
    raw_full: Duration,
    resync: Duration,
    partial: Duration,
    raw_partial: Duration,
    partial_lines: usize,
    probe_element: Duration,
    probe_chain: Duration,
    probe_list: Duration,
}

fn measure_nft(n: usize) -> NftRow {
    let mut model = cluster(n);
    let ns = Ns::new(&format!("nft-{n}"));
    let mut backend = NftablesBackend::new(Sys::in_netns(&ns.0), settings(), None);
    let (desired, changes) = (model.desired(), model.changes());
    let start = Instant::now();
    backend.sync(&desired, &changes, SyncKind::Full).unwrap();
    let full = start.elapsed();
    model.ack(&changes);
    let full_text = backend.last_transaction().unwrap_or_default().to_string();

    // The same transaction, raw, into an empty namespace.
    let raw = Ns::new(&format!("nft-{n}-raw"));
    let raw_full = raw.nft(&full_text);

    // A periodic full sync of the loaded table.
    let (desired, changes) = (model.desired(), model.changes());
    let start = Instant::now();
    backend.sync(&desired, &changes, SyncKind::Full).unwrap();
    let resync = start.elapsed();
    raw.nft(backend.last_transaction().unwrap_or_default());

    let (times, deltas) = one_endpoint_changes(&mut model, n, &mut backend, |b| {
        b.last_transaction().unwrap_or_default().to_string()
    });
    // The same deltas, raw, in the same order against the same table.
    let raw_times: Vec<Duration> = deltas.iter().map(|d| raw.nft(d)).collect();
    let lines = deltas.last().map_or(0, |d| d.lines().count());

    let probe_element =
        raw.nft("add element ip kproxy cluster-ips { 10.0.0.1 }\ndelete element ip kproxy cluster-ips { 10.0.0.1 }\n");
    let probe_chain = raw.nft("add chain ip kproxy bench-probe\ndelete chain ip kproxy bench-probe\n");
    let probe_list = raw.time("nft", &["-t", "-f", "-"], "list chains\nlist sets\n");
    NftRow {
        n,
        full,
        raw_full,
        resync,
        partial: median(times),
        raw_partial: median(raw_times),
        partial_lines: lines,
        probe_element,
        probe_chain,
        probe_list,
    }
}

struct IptRow {
    variant: Variant,
    n: usize,
    full: Duration,
    partial: Duration,
}

fn measure_ipt(variant: Variant, n: usize) -> IptRow {
    let mut model = cluster(n);
    let ns = Ns::new(&format!("ipt-{n}"));
    let mut backend = IptablesBackend::new(Sys::in_netns(&ns.0), ipt_settings(), Some(variant));
    let (desired, changes) = (model.desired(), model.changes());
    let start = Instant::now();
    backend.sync(&desired, &changes, SyncKind::Full).unwrap();
    let full = start.elapsed();
    model.ack(&changes);
    let (times, _) = one_endpoint_changes(&mut model, n, &mut backend, |_| String::new());
    IptRow {
        variant,
        n,
        full,
        partial: median(times),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn sync_report(sizes: &[usize]) {
    if !is_root() || Command::new("nft").arg("--version").output().is_err() {
        println!("sync report skipped: needs root, iproute2 and nft (render benchmarks ran)");
        return;
    }
    let rows: Vec<NftRow> = sizes.iter().map(|&n| measure_nft(n)).collect();
    println!();
    println!(
        "nftables mode, {ENDPOINTS} endpoints per service, ClusterIP services; times end to end through the backend, \
         ratios to a raw `nft -f` of the same text measured in this run"
    );
    println!(
        "{:>7} | {:>9} {:>9} {:>6} | {:>9} | {:>8} {:>8} {:>6} {:>6} {:>9} | {:>8} {:>8} {:>8}",
        "svcs", "full", "raw", "ratio", "resync", "1-ep", "raw", "ratio", "lines", "vs min N", "elem", "chain", "list"
    );
    let base = rows.first().map(|r| r.partial).unwrap_or_default();
    for r in &rows {
        println!(
            "{:>7} | {:>8.3}s {:>8.3}s {:>5.2}x | {:>8.3}s | {:>6.1}ms {:>6.1}ms {:>5.2}x {:>6} {:>8.2}x | {:>6.1}ms {:>6.1}ms {:>6.1}ms",
            r.n,
            r.full.as_secs_f64(),
            r.raw_full.as_secs_f64(),
            r.full.as_secs_f64() / r.raw_full.as_secs_f64(),
            r.resync.as_secs_f64(),
            ms(r.partial),
            ms(r.raw_partial),
            r.partial.as_secs_f64() / r.raw_partial.as_secs_f64(),
            r.partial_lines,
            r.partial.as_secs_f64() / base.as_secs_f64(),
            ms(r.probe_element),
            ms(r.probe_chain),
            ms(r.probe_list),
        );
    }
    let mut ipt = Vec::new();
    for variant in [Variant::Nft, Variant::Legacy] {
        let tool = variant.tool(IpFamily::V4, "iptables-restore");
        if Command::new(&tool).arg("--version").output().is_err() {
            println!("{tool} not installed; skipping {variant:?}");
            continue;
        }
        for &n in sizes {
            ipt.push(measure_ipt(variant, n));
        }
    }
    println!();
    println!("side by side (same services, same run): full load and median one-endpoint change");
    println!("{:<14} {:>7} | {:>9} | {:>9}", "mode", "svcs", "full", "1-ep");
    for r in &rows {
        println!(
            "{:<14} {:>7} | {:>8.3}s | {:>7.1}ms",
            "nftables",
            r.n,
            r.full.as_secs_f64(),
            ms(r.partial)
        );
    }
    for r in &ipt {
        println!(
            "{:<14} {:>7} | {:>8.3}s | {:>7.1}ms",
            format!("iptables-{}", format!("{:?}", r.variant).to_lowercase()),
            r.n,
            r.full.as_secs_f64(),
            ms(r.partial)
        );
    }
}

fn is_root() -> bool {
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
    bench_render(&mut c, &sizes);
    c.final_summary();
    if std::env::var_os("KPROXY_BENCH_RENDER_ONLY").is_none() {
        sync_report(&sizes);
    }
}
