//! What benches/iptables.rs and benches/nftables.rs share: the cluster they
//! time, the sizes they run, the backend settings, and the throwaway
//! namespaces their kernel loads run in.
//!
//! ```text
//!  Cluster::new(n) ── model::synth (ClusterIP only) ──▶ model() ──▶ backend.sync (timed)
//!        └── change(i): one endpoint of service i replaced ──▶ partial sync (timed)
//!  netns::Netns (tests/support/netns.rs) ── time_load: a raw iptables-restore / nft -f of the same text
//! ```
//!
//! Include with `mod support;`. The cluster carries no packets: VIPs come
//! from 10.96.0.0 and endpoints from 10.128.0.0/9 (the cluster CIDR of the
//! settings), loaded only into namespaces made by [`netns`], which deletes
//! them on drop.
#![allow(dead_code)] // each bench uses a part
#![allow(clippy::unwrap_used)]

#[path = "../../tests/support/netns.rs"]
pub mod netns;

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::Stdio;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kproxy::backend::{iptables, nftables};
use kproxy::config::NodePortAddresses;
use kproxy::model::synth::{self, Mix, SynthCluster, SynthParams};
use kproxy::model::{Model, SelectionOptions};
use netns::Netns;

/// Endpoints per service.
pub const ENDPOINTS: usize = 10;
/// The cluster CIDR of the settings; every endpoint is inside it.
const CLUSTER_CIDR: &str = "10.128.0.0/9";
/// Longest a raw kernel load may take before the bench gives up.
const LOAD_TIMEOUT: Duration = Duration::from_secs(900);

/// `cargo bench` passes `--bench`; `cargo test --all-targets` does not.
pub fn bench_mode() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// The sizes (numbers of services) to run: `KPROXY_BENCH_SIZES` (default
/// `1000,10000`) under `cargo bench`, 20 as a smoke test under `cargo test`.
pub fn sizes() -> Vec<usize> {
    if !bench_mode() {
        return vec![20];
    }
    std::env::var("KPROXY_BENCH_SIZES")
        .unwrap_or_else(|_| "1000,10000".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

/// Whether the sync report can run: root, `ip netns`, br_netfilter and
/// `tools` (see [`netns::require_root_tools`]: a loud failure under
/// `CI=true`, a printed `SKIP:` otherwise).
pub fn can_load(tools: &[&str]) -> bool {
    netns::require_root_tools(tools)
}

/// Whether `tool` is installed.
pub fn has_tool(tool: &str) -> bool {
    netns::find_tool(tool).is_some()
}

/// iptables mode settings (kube-proxy's defaults, cluster CIDR 10.128.0.0/9).
pub fn iptables_settings() -> iptables::Settings {
    iptables::Settings {
        masquerade_mark: 0x4000,
        masquerade_all: false,
        cluster_cidrs: vec![CLUSTER_CIDR.parse().unwrap()],
        nodeport_addresses: NodePortAddresses::All,
        localhost_nodeports: true,
        conntrack_liberal: false,
    }
}

/// nftables mode settings, the same as [`iptables_settings`] (nftables
/// mode has no localhost NodePorts).
pub fn nftables_settings() -> nftables::Settings {
    nftables::Settings {
        localhost_nodeports: false,
        ..iptables_settings()
    }
}

/// `n` ClusterIP services × [`ENDPOINTS`] ready endpoints from
/// [`synth::generate`], every endpoint address distinct.
pub struct Cluster {
    pub params: SynthParams,
    pub objects: SynthCluster,
    /// Spare endpoints handed out by [`Cluster::change`] so far.
    changes: u32,
}

impl Cluster {
    pub fn new(n: usize) -> Cluster {
        let params = SynthParams {
            mix: Mix::ClusterIpOnly,
            namespace: "bench".to_string(),
            vip_base: Ipv4Addr::new(10, 96, 0, 0),
            endpoint_base: Ipv4Addr::new(10, 128, 0, 0),
            // Distinct up to 400k services; spares follow, still in the /9.
            endpoint_pool: 1 << 22,
            ..SynthParams::new(n, ENDPOINTS)
        };
        let objects = synth::generate(&params);
        Cluster {
            params,
            objects,
            changes: 0,
        }
    }

    /// A model of our node holding the whole cluster, nothing synced yet.
    pub fn model(&self) -> Model {
        let mut m = Model::new(&self.params.node_name, SelectionOptions::default());
        m.set_node(self.objects.node.as_ref());
        m.reset_services(&self.objects.services);
        m.reset_slices(&self.objects.slices);
        m
    }

    /// Service `i`'s slice with its first endpoint replaced by an address
    /// used nowhere yet (a new one every call): one endpoint removed, one
    /// added.
    pub fn change(&mut self, i: usize) -> EndpointSlice {
        let ip = self.params.spare_endpoint(self.changes);
        self.changes += 1;
        synth::replace_endpoint(&self.objects, &self.params, i, ip).unwrap()
    }
}

/// A throwaway namespace for kernel loads (deleted on drop).
pub fn namespace(label: &str) -> Netns {
    Netns::new(label).unwrap()
}

/// Runs `program args…` in `ns` with `input` on stdin and returns its wall
/// time, from spawn to exit as a blocking wait sees it (no polling, so a
/// few-millisecond load is timed as precisely as a long one); panics with
/// its stderr unless it succeeds within [`LOAD_TIMEOUT`] (then it is
/// killed, by PID).
pub fn time_load(ns: &Netns, program: &str, args: &[&str], input: &str) -> Duration {
    let mut cmd = ns.command(program);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let input = input.as_bytes().to_vec();
    let start = Instant::now();
    let mut child = cmd.spawn().unwrap();
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(&input);
        }
        let out = child.wait_with_output();
        let _ = tx.send((Instant::now(), out));
    });
    let Ok((end, out)) = rx.recv_timeout(LOAD_TIMEOUT) else {
        // SAFETY: kill(2) on the child started above (`ip netns exec` execs the tool).
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        panic!("{program} {args:?} did not finish within {LOAD_TIMEOUT:?}");
    };
    let out = out.unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    end - start
}

/// The median of `v` (not empty).
pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// `d` in milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
