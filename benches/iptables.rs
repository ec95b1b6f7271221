//! iptables mode benchmarks: every figure a ratio measured in this run.
//!
//! The cluster is N ClusterIP services × 10 ready endpoints from
//! `kproxy::model::synth`, set up in benches/support (shared with the
//! nftables bench).
//!
//! - `render/N`: criterion timing of rendering it (pure; compare sizes with
//!   each other).
//! - The sync report (root only, in throwaway network namespaces from
//!   tests/support/netns.rs): for each
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
#![allow(clippy::unwrap_used)]

mod support;

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use kproxy::backend::iptables::{IptablesBackend, Variant, render};
use kproxy::backend::{Backend, SyncKind};
use kproxy::model::IpFamily;
use kproxy::sys::Sys;
use support::{Cluster, ENDPOINTS, iptables_settings as settings};

fn bench_render(c: &mut Criterion, sizes: &[usize]) {
    let mut group = c.benchmark_group("render");
    group.sample_size(10);
    for &n in sizes {
        let desired = Cluster::new(n).model().desired();
        let opts = settings().render_opts(IpFamily::V4, &desired.node, &[], true);
        group.bench_with_input(BenchmarkId::from_parameter(n), &desired, |b, d| {
            b.iter(|| black_box(render::render_full(d, &opts)))
        });
    }
    group.finish();
}

/// Times a raw restore of `input` in `ns`.
fn restore(ns: &support::netns::Netns, tool: &str, noflush: bool, input: &str) -> Duration {
    let args: &[&str] = if noflush {
        &["-w", "5", "--noflush"]
    } else {
        &["-w", "5"]
    };
    support::time_load(ns, tool, args, input)
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
    let mut cluster = Cluster::new(n);
    let mut model = cluster.model();
    // kproxy: full sync into an empty namespace.
    let ns = support::namespace(&format!("ipt-{n}"));
    let mut backend = IptablesBackend::new(Sys::in_netns(ns.name()), settings(), Some(variant));
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
    let raw_ns = support::namespace(&format!("ipt-{n}-raw"));
    let raw_full = restore(&raw_ns, &tool, false, &text);

    // One endpoint of one service changes; the best of a few such syncs
    // (each a different service) is reported.
    let mut partial = Duration::MAX;
    let mut delta = String::new();
    for round in 0..3 {
        let i = n / 2 + round;
        model.apply_slice(&cluster.change(i));
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
    let raw_partial = restore(&raw_ns, &tool, true, &delta);
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
    if !support::can_load(&[]) {
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
        if !support::has_tool(&tool) {
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

fn main() {
    let sizes = support::sizes();
    let mut c = Criterion::default().configure_from_args();
    let render_sizes: Vec<usize> = if support::bench_mode() {
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
