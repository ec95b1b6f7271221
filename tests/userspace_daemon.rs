//! The real `kproxy` binary in userspace mode, end to end: it runs in a node
//! network namespace against the fake API server (on 127.0.0.1 inside that
//! namespace), relays a pod's and an outside client's connections to the
//! service's pods, follows an endpoint change, and `--cleanup` removes its
//! steering chains. Root only (skips otherwise; fails under CI=true).

#![allow(clippy::disallowed_types)] // tests run the binary and tools directly

#[path = "support/api_server.rs"]
mod api_server;
#[path = "support/netns.rs"]
mod netns;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use api_server::TestApiServer;
use kproxy::model::builders::{mk_node, mk_service, mk_slice};
use netns::{Proto, Topology};

const T: Duration = Duration::from_secs(2);

fn slice(eps: &[&str]) -> k8s_openapi::api::discovery::v1::EndpointSlice {
    eps.iter()
        .fold(
            mk_slice("default", "web-1", "web").port("http", 8080, "TCP"),
            |b, ip| b.endpoint_on(ip, "node-a"),
        )
        .build()
}

/// The status code of GET `path` from `addr` inside `ns`.
fn http_status(ns: &netns::Netns, addr: &str, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let addr: SocketAddr = addr.parse().ok()?;
    let path = path.to_string();
    ns.run_in(move || {
        let mut s = std::net::TcpStream::connect_timeout(&addr, T).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
        let mut buf = String::new();
        s.read_to_string(&mut buf).ok()?;
        buf.split_whitespace().nth(1)?.parse().ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_relays_service_traffic_and_cleans_up() {
    if !netns::require_root_tools(&["ip", "iptables-restore", "iptables-save", "ip6tables-save"]) {
        return;
    }
    let topo = Topology::builder().pods(2).build();
    topo.start_servers(8080, 5353);
    let node = topo.node();
    let listener = node
        .tcp_listener("127.0.0.1:0".parse().expect("addr"))
        .expect("listen in node ns");
    let api = TestApiServer::start_on_std(listener).await.expect("api server");
    let dir = std::env::temp_dir().join(format!("kproxy-userspace-daemon-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let kubeconfig = dir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).expect("kubeconfig");

    api.apply_node(mk_node("node-a").internal_ip("198.18.1.1").build());
    api.apply_service(
        mk_service("default", "web")
            .cluster_ip("198.19.0.10")
            .type_("NodePort")
            .node_port("http", 80, "TCP", 30100)
            .target_port(8080)
            .build(),
    );
    api.apply_slice(slice(&["198.18.1.10"]));

    let log = std::fs::File::create(dir.join("kproxy.log")).expect("log file");
    let mut cmd = node.command(env!("CARGO_BIN_EXE_kproxy"));
    cmd.args([
        "--proxy-mode",
        "userspace",
        "--kubeconfig",
        &kubeconfig.to_string_lossy(),
        "--hostname-override",
        "node-a",
        "--cluster-cidr",
        "198.18.1.0/24",
        "--metrics-bind-address",
        "127.0.0.1:10249",
        "--healthz-bind-address",
        "127.0.0.1:10256",
        "--min-sync-period",
        "0s",
        "-v",
        "4",
    ])
    .stdout(Stdio::null())
    .stderr(log);
    let pid = node.spawn(cmd).expect("start kproxy");
    let show_log = || std::fs::read_to_string(dir.join("kproxy.log")).unwrap_or_default();

    let vip: SocketAddr = "198.19.0.10:80".parse().expect("vip");
    let reply = topo.pod(1).wait_reply(Proto::Tcp, vip, Duration::from_secs(20));
    assert_eq!(
        reply.as_ref().map(|r| r.pod.as_str()),
        Ok("pod0"),
        "pod → ClusterIP through the relay\n{}",
        show_log()
    );
    let node_port: SocketAddr = "198.18.2.1:30100".parse().expect("node port");
    let reply = topo.client().tcp_request(node_port, T);
    assert_eq!(reply.as_ref().map(|r| r.pod.as_str()), Ok("pod0"), "client → NodePort");
    let listing = node.exec_ok(&["iptables-save", "-t", "nat"]);
    assert!(listing.contains("-A KUBE-PORTALS-CONTAINER"), "{listing}");
    // Health and metrics work in this mode too.
    assert_eq!(
        http_status(node, "127.0.0.1:10256", "/healthz"),
        Some(200),
        "{}",
        show_log()
    );
    assert_eq!(
        http_status(node, "127.0.0.1:10249", "/metrics"),
        Some(200),
        "{}",
        show_log()
    );

    // The endpoint moves to pod1: new connections follow.
    api.apply_slice(slice(&["198.18.1.11"]));
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if topo.pod(0).tcp_request(vip, T).is_ok_and(|r| r.pod == "pod1") {
            break;
        }
        assert!(Instant::now() < deadline, "endpoint change not applied\n{}", show_log());
        std::thread::sleep(Duration::from_millis(200));
    }

    node.terminate(pid, Duration::from_secs(5));
    for round in ["cleanup", "cleanup again"] {
        let out = node
            .exec(&[env!("CARGO_BIN_EXE_kproxy"), "--cleanup"])
            .expect("run cleanup");
        assert!(
            out.status.success(),
            "{round}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let left = node.exec_ok(&["iptables-save"]);
        assert!(!left.contains("KUBE-PORTALS"), "{round}:\n{left}");
    }
    if std::env::var_os("KPROXY_KEEP_LOG").is_some() {
        eprintln!("{}", show_log());
    }
    let _ = std::fs::remove_dir_all(&dir);
}
