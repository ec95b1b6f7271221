//! nftables mode benchmarks: every figure measured in this run, most as a
//! ratio to the raw `nft -f` of the same text.
//!
//! The cluster is N ClusterIP services × 10 ready endpoints from
//! `kproxy::model::synth`, set up in benches/support (shared with the
//! iptables bench).
//!
//! - `nft_render/N`: criterion timing of rendering it (pure).
//! - The sync report (root only, in throwaway network namespaces from
//!   tests/support/netns.rs), for each size N:
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
#![allow(clippy::unwrap_used)]

mod support;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use kproxy::backend::iptables::{self, IptablesBackend, Variant};
use kproxy::backend::nftables::{NftablesBackend, render};
use kproxy::backend::{Backend, SyncKind};
use kproxy::model::{IpFamily, Model};
use kproxy::sys::Sys;
use support::netns::Netns;
use support::{Cluster, ENDPOINTS, median, ms, nftables_settings as settings};

/// One-endpoint changes measured per size (the median is reported).
const CHANGES: usize = 7;

/// iptables mode as compared here: without localhost NodePorts, which
/// nftables mode does not have either.
fn ipt_settings() -> iptables::Settings {
    iptables::Settings {
        localhost_nodeports: false,
        ..support::iptables_settings()
    }
}

fn bench_render(c: &mut Criterion, sizes: &[usize]) {
    let mut group = c.benchmark_group("nft_render");
    group.sample_size(10);
    for &n in sizes {
        let desired = Cluster::new(n).model().desired();
        let opts = settings().render_opts(IpFamily::V4, &desired.node, &[], false);
        group.bench_with_input(BenchmarkId::from_parameter(n), &desired, |b, d| {
            b.iter(|| black_box(render::render_full(d, &opts)))
        });
    }
    group.finish();
}

/// Times `nft -f -` of `input` in `ns`.
fn nft(ns: &Netns, input: &str) -> Duration {
    support::time_load(ns, "nft", &["-f", "-"], input)
}

/// Changes one endpoint of `CHANGES` services in turn, timing each sync
/// through `backend` and returning the times and the kernel inputs.
fn one_endpoint_changes<B: Backend>(
    cluster: &mut Cluster,
    model: &mut Model,
    n: usize,
    backend: &mut B,
    input: impl Fn(&B) -> String,
) -> (Vec<Duration>, Vec<String>) {
    let (mut times, mut inputs) = (Vec::new(), Vec::new());
    for k in 0..CHANGES {
        let i = (n / 2 + k * 7919) % n;
        // A different service each time, one endpoint replaced.
        model.apply_slice(&cluster.change(i));
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
    let mut cluster = Cluster::new(n);
    let mut model = cluster.model();
    let ns = support::namespace(&format!("nft-{n}"));
    let mut backend = NftablesBackend::new(Sys::in_netns(ns.name()), settings(), None);
    let (desired, changes) = (model.desired(), model.changes());
    let start = Instant::now();
    backend.sync(&desired, &changes, SyncKind::Full).unwrap();
    let full = start.elapsed();
    model.ack(&changes);
    let full_text = backend.last_transaction().unwrap_or_default().to_string();

    // The same transaction, raw, into an empty namespace.
    let raw = support::namespace(&format!("nft-{n}-raw"));
    let raw_full = nft(&raw, &full_text);

    // A periodic full sync of the loaded table.
    let (desired, changes) = (model.desired(), model.changes());
    let start = Instant::now();
    backend.sync(&desired, &changes, SyncKind::Full).unwrap();
    let resync = start.elapsed();
    nft(&raw, backend.last_transaction().unwrap_or_default());

    let (times, deltas) = one_endpoint_changes(&mut cluster, &mut model, n, &mut backend, |b| {
        b.last_transaction().unwrap_or_default().to_string()
    });
    // The same deltas, raw, in the same order against the same table.
    let raw_times: Vec<Duration> = deltas.iter().map(|d| nft(&raw, d)).collect();
    let lines = deltas.last().map_or(0, |d| d.lines().count());

    let probe_element = nft(
        &raw,
        "add element ip kproxy cluster-ips { 10.0.0.1 }\ndelete element ip kproxy cluster-ips { 10.0.0.1 }\n",
    );
    let probe_chain = nft(
        &raw,
        "add chain ip kproxy bench-probe\ndelete chain ip kproxy bench-probe\n",
    );
    let probe_list = support::time_load(&raw, "nft", &["-t", "-f", "-"], "list chains\nlist sets\n");
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
    let mut cluster = Cluster::new(n);
    let mut model = cluster.model();
    let ns = support::namespace(&format!("ipt-{n}"));
    let mut backend = IptablesBackend::new(Sys::in_netns(ns.name()), ipt_settings(), Some(variant));
    let (desired, changes) = (model.desired(), model.changes());
    let start = Instant::now();
    backend.sync(&desired, &changes, SyncKind::Full).unwrap();
    let full = start.elapsed();
    model.ack(&changes);
    let (times, _) = one_endpoint_changes(&mut cluster, &mut model, n, &mut backend, |_| String::new());
    IptRow {
        variant,
        n,
        full,
        partial: median(times),
    }
}

fn sync_report(sizes: &[usize]) {
    if !support::can_load(&["nft"]) {
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
        if !support::has_tool(&tool) {
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

fn main() {
    let sizes = support::sizes();
    let mut c = Criterion::default().configure_from_args();
    bench_render(&mut c, &sizes);
    c.final_summary();
    if std::env::var_os("KPROXY_BENCH_RENDER_ONLY").is_none() {
        sync_report(&sizes);
    }
}
