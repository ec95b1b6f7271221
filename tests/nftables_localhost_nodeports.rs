//! KEP-6032 with the real `kproxy` binary in nftables mode, inside a node
//! network namespace against the fake API server: with
//! `--nodeport-addresses=localhost` and the `KubeProxyNFTablesLocalhostNodePorts`
//! gate, a node-local client reaches a TCP NodePort on `127.0.0.1` and `[::1]`
//! (relayed in userspace to the pods); a UDP NodePort on 127.0.0.1 is refused
//! and counted in `kubeproxy_nftables_localhost_nodeport_rejected_packets_total`.
//! Without the gate, the same TCP NodePort on 127.0.0.1 is refused (the test
//! that shows the forwarder is what makes it work). Root only (skips
//! otherwise; fails under CI=true).

#![allow(clippy::disallowed_types)] // tests run the binary and tools directly

#[path = "support/api_server.rs"]
mod api_server;
#[path = "support/netns.rs"]
mod netns;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use api_server::TestApiServer;
use kproxy::model::builders::{mk_node, mk_service, mk_slice};
use netns::{ConnError, Proto, Topology};

const T: Duration = Duration::from_secs(2);
const TCP_NODE_PORT: u16 = 30100;
const UDP_NODE_PORT: u16 = 30101;
const SPREAD_NODE_PORT: u16 = 30102;
const STICKY_NODE_PORT: u16 = 30103;
const REMOTE_NODE_PORT: u16 = 30104;
const BUSY_NODE_PORT: u16 = 30105;
const GATE: &str = "KubeProxyNFTablesLocalhostNodePorts=true";

/// A running kproxy and what it needs; the daemon is stopped on drop.
struct Daemon<'t> {
    topo: &'t Topology,
    pid: u32,
    dir: PathBuf,
    _api: TestApiServer,
}

impl Daemon<'_> {
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("kproxy.log")).unwrap_or_default()
    }
}

impl Drop for Daemon<'_> {
    fn drop(&mut self) {
        self.topo.node().terminate(self.pid, Duration::from_secs(5));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A dual-stack TCP NodePort service `web` (pod0 in both families), a UDP
/// NodePort service `dns` (pod1), `spread` and `sticky` (both pods; sticky
/// with ClientIP affinity), `remote` (externalTrafficPolicy Local, its only
/// endpoint on another node), then kproxy in nftables mode with `extra` flags.
async fn start<'t>(topo: &'t Topology, label: &str, extra: &[&str]) -> Daemon<'t> {
    let node = topo.node();
    let listener = node
        .tcp_listener("127.0.0.1:0".parse().expect("addr"))
        .expect("listen in node ns");
    let api = TestApiServer::start_on_std(listener).await.expect("api server");
    let dir = std::env::temp_dir().join(format!("kproxy-kep6032-{label}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let kubeconfig = dir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).expect("kubeconfig");

    api.apply_node(mk_node("node-a").internal_ip("198.18.1.1").build());
    api.apply_service(
        mk_service("default", "web")
            .cluster_ips(&["198.19.0.10", "fd00:96::10"])
            .type_("NodePort")
            .node_port("http", 80, "TCP", i32::from(TCP_NODE_PORT))
            .target_port(8080)
            .build(),
    );
    api.apply_slice(
        mk_slice("default", "web-v4", "web")
            .port("http", 8080, "TCP")
            .endpoint_on(&topo.pod_ip(0).to_string(), "node-a")
            .build(),
    );
    api.apply_slice(
        mk_slice("default", "web-v6", "web")
            .ipv6()
            .port("http", 8080, "TCP")
            .endpoint_on(&topo.pod_ip6(0).to_string(), "node-a")
            .build(),
    );
    api.apply_service(
        mk_service("default", "dns")
            .cluster_ip("198.19.0.11")
            .type_("NodePort")
            .node_port("dns", 53, "UDP", i32::from(UDP_NODE_PORT))
            .target_port(5353)
            .build(),
    );
    api.apply_slice(
        mk_slice("default", "dns-1", "dns")
            .port("dns", 5353, "UDP")
            .endpoint_on(&topo.pod_ip(1).to_string(), "node-a")
            .build(),
    );

    for (name, ip, node_port, affinity, local) in [
        ("spread", "198.19.0.12", SPREAD_NODE_PORT, false, false),
        ("sticky", "198.19.0.13", STICKY_NODE_PORT, true, false),
        ("remote", "198.19.0.14", REMOTE_NODE_PORT, false, true),
        ("busy", "198.19.0.15", BUSY_NODE_PORT, false, false),
    ] {
        let mut svc = mk_service("default", name)
            .cluster_ip(ip)
            .type_("NodePort")
            .node_port("http", 80, "TCP", i32::from(node_port))
            .target_port(8080);
        if affinity {
            svc = svc.client_ip_affinity(Some(600));
        }
        if local {
            svc = svc.external_traffic_policy_local();
        }
        api.apply_service(svc.build());
        let pods: &[(usize, &str)] = if local {
            &[(1, "node-b")]
        } else {
            &[(0, "node-a"), (1, "node-a")]
        };
        let slice = pods.iter().fold(
            mk_slice("default", &format!("{name}-1"), name).port("http", 8080, "TCP"),
            |b, (i, node)| b.endpoint_on(&topo.pod_ip(*i).to_string(), node),
        );
        api.apply_slice(slice.build());
    }

    let log = std::fs::File::create(dir.join("kproxy.log")).expect("log file");
    let mut cmd = node.command(env!("CARGO_BIN_EXE_kproxy"));
    cmd.args([
        "--proxy-mode",
        "nftables",
        "--kubeconfig",
        &kubeconfig.to_string_lossy(),
        "--hostname-override",
        "node-a",
        "--cluster-cidr",
        "198.18.1.0/24,fd00:1::/64",
        "--nodeport-addresses",
        "localhost",
        "--metrics-bind-address",
        "127.0.0.1:10249",
        "--healthz-bind-address",
        "127.0.0.1:10256",
        "--min-sync-period",
        "0s",
        "--sync-period",
        "2s",
        "-v",
        "4",
    ])
    .args(extra)
    .stdout(Stdio::null())
    .stderr(log);
    let pid = node.spawn(cmd).expect("start kproxy");
    Daemon {
        topo,
        pid,
        dir,
        _api: api,
    }
}

/// Waits until kproxy's table holds the TCP NodePort (the first sync is done).
fn wait_synced(daemon: &Daemon<'_>) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = daemon
            .topo
            .node()
            .exec(&["nft", "list", "map", "ip", "kproxy", "service-nodeports"]);
        if out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&TCP_NODE_PORT.to_string())) {
            return;
        }
        assert!(Instant::now() < deadline, "no sync\n{}", daemon.log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// GET /metrics from inside the node namespace.
fn metrics(daemon: &Daemon<'_>) -> String {
    use std::io::{Read, Write};
    let addr: SocketAddr = "127.0.0.1:10249".parse().expect("addr");
    daemon.topo.node().run_in(move || {
        let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, T) else {
            return String::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
        let _ = write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let mut buf = String::new();
        let _ = s.read_to_string(&mut buf);
        buf
    })
}

/// Feeds the body of a `/metrics` answer to `promtool check metrics`.
fn promtool_check(answer: &str) -> Result<(), String> {
    use std::io::Write;
    let body = answer.split_once("\r\n\r\n").map_or(answer, |(_, b)| b);
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    if let Some(mut stdin) = promtool.stdin.take() {
        stdin.write_all(body.as_bytes()).map_err(|e| e.to_string())?;
    }
    let out = promtool.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// The value of the sample that starts with `prefix`.
fn sample(text: &str, prefix: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(prefix))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn localhost_nodeports_are_relayed_with_the_gate_and_udp_is_refused_and_counted() {
    if !netns::require_root_tools(&["ip", "nft", "promtool"]) {
        return;
    }
    let topo = Topology::builder().pods(2).ipv6(true).build();
    topo.start_servers(8080, 5353);
    // Another process holds one NodePort on 127.0.0.1.
    let squatter = topo
        .node()
        .tcp_listener(SocketAddr::from(([127, 0, 0, 1], BUSY_NODE_PORT)))
        .expect("hold the busy port");
    let daemon = start(&topo, "on", &["--feature-gates", GATE]).await;
    let node = topo.node();

    for addr in ["127.0.0.1:30100", "[::1]:30100"] {
        let addr: SocketAddr = addr.parse().expect("addr");
        let reply = node.wait_reply(Proto::Tcp, addr, Duration::from_secs(20));
        assert_eq!(
            reply.as_ref().map(|r| r.pod.as_str()),
            Ok("pod0"),
            "node → {addr} through the localhost forwarder\n{}",
            daemon.log()
        );
    }
    // Round robin over both pods, unless ClientIP affinity pins the client
    // (every client is 127.0.0.1) to one of them.
    let tally = |port: u16| node.tally_tcp(SocketAddr::from(([127, 0, 0, 1], port)), 6, T);
    let spread = tally(SPREAD_NODE_PORT);
    assert_eq!(
        spread.keys().collect::<Vec<_>>(),
        ["pod0", "pod1"],
        "no affinity: {spread:?}"
    );
    let sticky = tally(STICKY_NODE_PORT);
    assert!(
        sticky.len() == 1 && sticky.keys().all(|k| k.starts_with("pod")),
        "affinity: {sticky:?}"
    );
    // externalTrafficPolicy Local without a local endpoint: no listener.
    let remote = SocketAddr::from(([127, 0, 0, 1], REMOTE_NODE_PORT));
    assert_eq!(
        node.tcp_request(remote, T).map(|r| r.pod),
        Err(ConnError::Refused),
        "Local, none here"
    );
    // The node's other addresses take no NodePorts (only localhost is listed).
    let on_node_ip: SocketAddr = "198.18.2.1:30100".parse().expect("addr");
    assert!(topo.client().tcp_request(on_node_ip, T).is_err(), "client → node IP");

    // UDP on localhost: refused, and counted.
    let metric = "kubeproxy_nftables_localhost_nodeport_rejected_packets_total{ip_family=\"IPv4\",protocol=\"UDP\"}";
    let before = sample(&metrics(&daemon), metric);
    assert_eq!(
        before,
        Some(0),
        "counter exposed at 0 before any packet\n{}",
        metrics(&daemon)
    );
    let udp: SocketAddr = "127.0.0.1:30101".parse().expect("addr");
    for _ in 0..3 {
        assert_eq!(
            node.udp_request(udp, T).map(|r| r.pod),
            Err(ConnError::Refused),
            "UDP localhost NodePort"
        );
    }
    let after = sample(&metrics(&daemon), metric).unwrap_or(0);
    assert!(
        after >= 3,
        "3 rejected datagrams counted, got {after}\n{}",
        metrics(&daemon)
    );
    // Listeners per family (web, spread, sticky; web also on ::1), and the
    // busy port counted as a failure, then opened once it is free.
    let text = metrics(&daemon);
    let listeners = "kubeproxy_nftables_localhost_nodeport_listeners";
    assert_eq!(
        sample(&text, &format!("{listeners}{{ip_family=\"IPv4\"}}")),
        Some(3),
        "{text}"
    );
    assert_eq!(
        sample(&text, &format!("{listeners}{{ip_family=\"IPv6\"}}")),
        Some(1),
        "{text}"
    );
    let failures = "kubeproxy_nftables_localhost_nodeport_listener_creation_failures_total{ip_family=\"IPv4\"}";
    assert!(sample(&text, failures).is_some_and(|n| n >= 1), "{text}");
    assert_eq!(promtool_check(&text), Ok(()), "promtool check metrics");
    drop(squatter);
    let busy = SocketAddr::from(([127, 0, 0, 1], BUSY_NODE_PORT));
    let reply = node.wait_reply(Proto::Tcp, busy, Duration::from_secs(20));
    assert!(
        reply.is_ok(),
        "busy port opened at a later sync: {reply:?}\n{}",
        daemon.log()
    );
    // The same UDP service still works on its ClusterIP from a pod.
    let vip: SocketAddr = "198.19.0.11:53".parse().expect("vip");
    assert_eq!(
        topo.pod(0).udp_request(vip, T).map(|r| r.pod),
        Ok("pod1".to_string()),
        "UDP ClusterIP unaffected"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn localhost_nodeports_are_refused_without_the_gate() {
    if !netns::require_root_tools(&["ip", "nft"]) {
        return;
    }
    let topo = Topology::builder().pods(2).ipv6(true).build();
    topo.start_servers(8080, 5353);
    let daemon = start(&topo, "off", &[]).await;
    wait_synced(&daemon);
    for addr in ["127.0.0.1:30100", "[::1]:30100"] {
        let addr: SocketAddr = addr.parse().expect("addr");
        assert_eq!(
            topo.node().tcp_request(addr, T).map(|r| r.pod),
            Err(ConnError::Refused),
            "{addr} without the gate\n{}",
            daemon.log()
        );
    }
    let text = metrics(&daemon);
    assert!(
        !text.contains("kubeproxy_nftables_localhost_nodeport_rejected_packets"),
        "no KEP-6032 metric without the gate"
    );
}
