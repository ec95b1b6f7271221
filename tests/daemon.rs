//! The whole daemon, end to end, in every kernel mode: the real `kproxy`
//! binary runs in a node network namespace against the fake API server
//! (listening on 127.0.0.1 inside that namespace), configured by a
//! KubeProxyConfiguration file; it programs the mode's rules there, follows
//! a change, serves `/metrics` (accepted by `promtool check metrics`),
//! `/healthz`, `/livez` and a health-check node port, reports failing syncs,
//! and `--cleanup` removes everything it installed.
//!
//! One body ([`end_to_end`]) runs every mode; [`Mode::spec`] is the one
//! place that says what the mode's rules look like. Adding a mode is one
//! line in the `modes!` list at the bottom and one arm there.
#![allow(clippy::disallowed_types)] // tests run the binary and tools directly

#[path = "support/api_server.rs"]
mod api_server;
#[path = "support/netns.rs"]
mod netns;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use api_server::TestApiServer;
use kproxy::model::builders::{mk_node, mk_service, mk_slice};
use netns::{Netns, Proto, Topology};

const METRICS: &str = "127.0.0.1:10249";
const HEALTHZ: &str = "127.0.0.1:10256";
const HC_PORT: u16 = 32100;

/// GET `path` from `addr` inside `ns`: (status, body).
fn get(ns: &Netns, addr: &str, path: &str) -> Option<(u16, String)> {
    let addr: SocketAddr = addr.parse().ok()?;
    let path = path.to_string();
    ns.run_in(move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).ok()?;
        let code = buf.split_whitespace().nth(1)?.parse().ok()?;
        let body = buf
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Some((code, body))
    })
}

/// Polls `f` every 100 ms until it returns Some, for at most `limit`.
fn wait<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The value of a sample line in a Prometheus exposition.
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Wrappers in `dir` around `tools` that fail while `dir/FAIL` exists
/// (put `dir` first on kproxy's PATH); returns that flag's path.
fn failing_wrappers(dir: &Path, tools: &[&str]) -> PathBuf {
    let fail = dir.join("FAIL");
    for tool in tools {
        let real = netns::find_tool(tool).unwrap_or_else(|| PathBuf::from(format!("/usr/sbin/{tool}")));
        let script = format!(
            "#!/bin/sh\nif [ -e {fail} ]; then echo 'forced failure for a test' >&2; exit 1; fi\nexec {real} \"$@\"\n",
            fail = fail.display(),
            real = real.display()
        );
        let path = dir.join(tool);
        std::fs::write(&path, script).expect("write wrapper");
        let _ = std::process::Command::new("chmod").arg("+x").arg(&path).status();
    }
    fail
}

/// A kernel mode under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Iptables,
    Nftables,
}

/// What a mode's rules look like from the outside.
struct ModeSpec {
    /// Tools the test needs besides `ip` and `promtool`.
    tools: &'static [&'static str],
    /// The tools kproxy applies rules with (wrapped to fail on demand).
    apply_tools: &'static [&'static str],
    /// Commands listing the node's rules.
    listings: &'static [&'static [&'static str]],
    /// In the listings once the first sync is done: every one of these.
    programmed: &'static [&'static str],
    /// In the listings after `--cleanup`: none of these.
    ours: &'static [&'static str],
    /// A sample only this mode exports, present after the first sync.
    own_metric: &'static str,
    /// The counter of failed applies.
    failures_metric: &'static str,
}

// === impl Mode ===

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Iptables => "iptables",
            Mode::Nftables => "nftables",
        }
    }

    fn spec(self) -> ModeSpec {
        match self {
            Mode::Iptables => ModeSpec {
                tools: &[
                    "iptables-restore",
                    "iptables-nft-restore",
                    "iptables-save",
                    "ip6tables-save",
                ],
                // No legacy rules in a fresh namespace: kproxy picks iptables-nft.
                apply_tools: &["iptables-nft-restore", "ip6tables-nft-restore"],
                listings: &[&["iptables-save"], &["ip6tables-save"]],
                programmed: &["-A KUBE-SERVICES", "\"default/web:http cluster IP\""],
                ours: &["KUBE-"],
                own_metric: "kubeproxy_sync_proxy_rules_iptables_total{",
                failures_metric: "kubeproxy_sync_proxy_rules_iptables_restore_failures_total",
            },
            Mode::Nftables => ModeSpec {
                tools: &["nft"],
                apply_tools: &["nft"],
                listings: &[&["nft", "list", "ruleset"]],
                programmed: &["table ip kproxy", "table ip6 kproxy", "-default/web/tcp/http"],
                ours: &["table ip kproxy", "table ip6 kproxy", "kube-proxy"],
                own_metric: "kubeproxy_sync_proxy_rules_nftables_sync_failures_total{",
                failures_metric: "kubeproxy_sync_proxy_rules_nftables_sync_failures_total",
            },
        }
    }
}

/// The node's rules, as the mode's listings show them.
fn rules(node: &Netns, spec: &ModeSpec) -> String {
    spec.listings.iter().map(|cmd| node.exec_ok(cmd)).collect()
}

/// A KubeProxyConfiguration for `mode` (its sync periods in the mode's own
/// section, as kube-proxy reads them).
fn config_file(mode: Mode, kubeconfig: &Path) -> String {
    format!(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: {mode}
hostnameOverride: node-a
clientConnection:
  kubeconfig: {kubeconfig}
clusterCIDR: 198.18.1.0/24
metricsBindAddress: {METRICS}
healthzBindAddress: {HEALTHZ}
{mode}:
  syncPeriod: 2s
  minSyncPeriod: 0s
",
        mode = mode.name(),
        kubeconfig = kubeconfig.display(),
    )
}

/// Feeds `text` to `promtool check metrics`; its complaints, if any.
fn promtool_check(text: &str) -> Result<(), String> {
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    promtool
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("feed promtool");
    let out = promtool.wait_with_output().expect("promtool output");
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

fn web_slice(node_of_pod0: &str) -> k8s_openapi::api::discovery::v1::EndpointSlice {
    mk_slice("default", "web-1", "web")
        .port("http", 8080, "TCP")
        .endpoint_on("198.18.1.10", node_of_pod0)
        .build()
}

/// The daemon in `mode`, from first sync to `--cleanup`.
async fn end_to_end(mode: Mode) {
    let spec = mode.spec();
    let mut tools = vec!["ip", "promtool"];
    tools.extend(spec.tools);
    if !netns::require_root_tools(&tools) {
        return;
    }
    let topo = Topology::builder().pods(2).build();
    topo.start_servers(8080, 5353);
    let node = topo.node();
    let listener = node
        .tcp_listener("127.0.0.1:0".parse().expect("addr"))
        .expect("listen in node ns");
    let api = TestApiServer::start_on_std(listener).await.expect("api server");
    let dir = std::env::temp_dir().join(format!("kproxy-daemon-{}-{}", std::process::id(), mode.name()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let kubeconfig = dir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).expect("kubeconfig");
    let config = dir.join("config.yaml");
    std::fs::write(&config, config_file(mode, &kubeconfig)).expect("config file");
    let fail = failing_wrappers(&dir, spec.apply_tools);

    api.apply_node(mk_node("node-a").internal_ip("198.18.1.1").build());
    api.apply_service(
        mk_service("default", "web")
            .cluster_ip("198.19.0.10")
            .type_("LoadBalancer")
            .node_port("http", 80, "TCP", 30100)
            .external_traffic_policy_local()
            .health_check_node_port(i32::from(HC_PORT))
            .build(),
    );
    api.apply_slice(web_slice("node-a"));

    // Everything but the log level comes from the configuration file.
    let log = std::fs::File::create(dir.join("kproxy.log")).expect("log file");
    let mut cmd = node.command(env!("CARGO_BIN_EXE_kproxy"));
    cmd.args(["--config", &config.to_string_lossy(), "-v", "4"])
        .env(
            "PATH",
            format!("{}:{}", dir.display(), std::env::var("PATH").unwrap_or_default()),
        )
        .stdout(Stdio::null())
        .stderr(log);
    let pid = node.spawn(cmd).expect("start kproxy");
    let show_log = || std::fs::read_to_string(dir.join("kproxy.log")).unwrap_or_default();

    // First sync: a pod reaches the VIP, through the mode's own rules.
    let vip: SocketAddr = "198.19.0.10:80".parse().expect("vip");
    let reply = topo.pod(1).wait_reply(Proto::Tcp, vip, Duration::from_secs(20));
    assert!(reply.is_ok(), "{mode:?}: VIP not programmed: {reply:?}\n{}", show_log());
    let programmed = rules(node, &spec);
    for want in spec.programmed {
        assert!(programmed.contains(want), "{mode:?}: no {want:?} in\n{programmed}");
    }
    assert!(!programmed.contains("198.18.1.11"), "{mode:?}: pod1 is no endpoint yet");

    // /metrics: promtool accepts it, and a change moves the sync histogram.
    let count_line = "kubeproxy_sync_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"}";
    let (code, text) = wait(Duration::from_secs(10), "metrics", || get(node, METRICS, "/metrics"));
    assert_eq!(code, 200);
    if let Err(complaints) = promtool_check(&text) {
        panic!("{mode:?}: promtool check metrics: {complaints}\n{text}");
    }
    let before = sample(&text, count_line).expect("sync histogram present");
    api.apply_slice(
        mk_slice("default", "web-1", "web")
            .port("http", 8080, "TCP")
            .endpoint_on("198.18.1.10", "node-a")
            .endpoint_on("198.18.1.11", "node-b")
            .build(),
    );
    wait(Duration::from_secs(10), "the sync count to grow", || {
        let (_, text) = get(node, METRICS, "/metrics")?;
        (sample(&text, count_line)? > before).then_some(())
    });
    wait(Duration::from_secs(10), "the second endpoint to be programmed", || {
        rules(node, &spec).contains("198.18.1.11").then_some(())
    });

    // /healthz and /livez are 200; a health-check node port reports the local endpoint.
    assert_eq!(get(node, HEALTHZ, "/healthz").map(|r| r.0), Some(200));
    assert_eq!(get(node, HEALTHZ, "/livez").map(|r| r.0), Some(200));
    let addr = format!("198.18.1.1:{HC_PORT}");
    let (code, body) = wait(Duration::from_secs(10), "health check port", || get(node, &addr, "/"));
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"localEndpoints\": 1"), "{body}");

    // The local endpoint moves away: the health-check port says 503.
    api.apply_slice(web_slice("node-b"));
    wait(Duration::from_secs(10), "health check 503", || {
        (get(node, &addr, "/")?.0 == 503).then_some(())
    });

    // Syncs get stuck (every apply fails) while a change is pending: /healthz
    // → 503 (after twice the file's 2 s sync period), counted in the mode's
    // failure metric.
    std::fs::write(&fail, "").expect("fail flag");
    api.apply_slice(web_slice("node-a"));
    wait(Duration::from_secs(15), "/healthz 503 while syncs fail", || {
        (get(node, HEALTHZ, "/healthz")?.0 == 503).then_some(())
    });
    std::fs::remove_file(&fail).expect("clear fail flag");
    wait(Duration::from_secs(40), "/healthz 200 after recovery", || {
        (get(node, HEALTHZ, "/healthz")?.0 == 200).then_some(())
    });
    let (_, text) = get(node, METRICS, "/metrics").expect("metrics");
    assert!(
        sample(&text, spec.failures_metric).unwrap_or(0.0) >= 1.0,
        "{mode:?}: failures counted:\n{text}"
    );
    assert!(
        text.contains(spec.own_metric),
        "{mode:?}: kube-proxy's names kept:\n{text}"
    );

    // Stop, then --cleanup removes every rule kproxy installed, idempotently.
    node.terminate(pid, Duration::from_secs(5));
    for round in ["cleanup", "cleanup again"] {
        let out = node
            .exec(&[env!("CARGO_BIN_EXE_kproxy"), "--cleanup"])
            .expect("run cleanup");
        assert!(
            out.status.success(),
            "{mode:?}: {round}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let left = rules(node, &spec);
        for ours in spec.ours {
            assert!(!left.contains(ours), "{mode:?}: {ours:?} after {round}:\n{left}");
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// One test per mode, each running [`end_to_end`].
macro_rules! modes {
    ($($name:ident => $mode:ident),* $(,)?) => {
        mod daemon_programs_rules_serves_metrics_and_health_and_cleans_up {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::end_to_end(super::Mode::$mode).await;
                }
            )*
        }
    };
}

modes! {
    iptables => Iptables,
    nftables => Nftables,
}
