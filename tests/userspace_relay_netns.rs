//! The userspace relay on wildcard addresses, inside a network namespace
//! made here with two local addresses per family (198.18.0.1/.2 and
//! fd00::1/::2 on its `lo`): a UDP reply must leave from the address the
//! client sent to, not from the one routing would choose, and TCP and UDP
//! are relayed over both families. Root only (skips otherwise; fails under
//! CI=true).

#![allow(clippy::disallowed_types)] // the netns harness runs `ip` directly

#[path = "support/netns.rs"]
mod netns;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use kproxy::backend::userspace::{Relay, Settings, TargetSet};
use kproxy::model::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

const WAIT: Duration = Duration::from_secs(10);

struct Family {
    any: IpAddr,
    /// Where the endpoint and the client live.
    first: IpAddr,
    /// The other local address, which the client sends to.
    second: IpAddr,
}

fn families() -> [Family; 2] {
    [
        Family {
            any: Ipv4Addr::UNSPECIFIED.into(),
            first: Ipv4Addr::new(198, 18, 0, 1).into(),
            second: Ipv4Addr::new(198, 18, 0, 2).into(),
        },
        Family {
            any: Ipv6Addr::UNSPECIFIED.into(),
            first: "fd00::1".parse::<Ipv6Addr>().expect("v6").into(),
            second: "fd00::2".parse::<Ipv6Addr>().expect("v6").into(),
        },
    ]
}

fn namespace() -> Option<netns::Netns> {
    if !netns::require_root_tools(&["ip"]) {
        return None;
    }
    let ns = netns::Netns::new("relay").expect("create namespace");
    for addr in ["198.18.0.1/32", "198.18.0.2/32"] {
        ns.ip(&["addr", "add", addr, "dev", "lo"]).expect("add v4 address");
    }
    for addr in ["fd00::1/128", "fd00::2/128"] {
        ns.ip(&["addr", "add", addr, "dev", "lo", "nodad"])
            .expect("add v6 address");
    }
    Some(ns)
}

/// Runs `f` on a runtime whose threads (and sockets) are in `ns`.
fn run_in_ns<F: std::future::Future<Output = ()>>(ns: &netns::Netns, f: impl FnOnce() -> F + Send) {
    ns.run_in(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async { tokio::time::timeout(Duration::from_secs(60), f()).await })
            .expect("test within its time bound");
    });
}

fn targets(endpoint: SocketAddr) -> TargetSet {
    TargetSet {
        endpoints: vec![endpoint],
        ..TargetSet::default()
    }
}

async fn udp_ask(client: &UdpSocket, to: SocketAddr, msg: &str) -> (String, SocketAddr) {
    client.send_to(msg.as_bytes(), to).await.expect("send");
    let mut buf = [0u8; 1500];
    let (n, from) = tokio::time::timeout(WAIT, client.recv_from(&mut buf))
        .await
        .expect("reply in time")
        .expect("reply");
    (String::from_utf8_lossy(&buf[..n]).into_owned(), from)
}

#[test]
fn udp_replies_leave_from_the_address_the_client_sent_to() {
    let Some(ns) = namespace() else { return };
    run_in_ns(&ns, || async {
        for f in families() {
            let server = UdpSocket::bind((f.first, 0)).await.expect("endpoint");
            let endpoint = server.local_addr().expect("addr");
            let echo = tokio::spawn(async move {
                let mut buf = [0u8; 1500];
                while let Ok((n, from)) = server.recv_from(&mut buf).await {
                    let _ = server.send_to(&buf[..n], from).await;
                }
            });
            let handle = tokio::runtime::Handle::current();
            let relay = Relay::bind(
                Protocol::Udp,
                (f.any, 0).into(),
                targets(endpoint),
                Settings::default(),
                &handle,
            )
            .expect("relay on the wildcard address");
            let port = relay.local_addr().port();
            let client = UdpSocket::bind((f.first, 0)).await.expect("client");
            for to in [f.second, f.first] {
                let service = SocketAddr::new(to, port);
                assert_eq!(udp_ask(&client, service, "ping").await, ("ping".to_string(), service));
            }
            assert_eq!(
                relay.stats().snapshot().udp_sessions,
                2,
                "one session per local address"
            );
            echo.abort();
        }
    });
}

#[test]
fn tcp_is_relayed_over_both_families_on_wildcard_listeners() {
    let Some(ns) = namespace() else { return };
    run_in_ns(&ns, || async {
        for f in families() {
            let listener = TcpListener::bind((f.first, 0)).await.expect("endpoint");
            let endpoint = listener.local_addr().expect("addr");
            let server = tokio::spawn(async move {
                while let Ok((mut s, _)) = listener.accept().await {
                    tokio::spawn(async move {
                        let (mut r, mut w) = s.split();
                        let _ = tokio::io::copy(&mut r, &mut w).await;
                    });
                }
            });
            let handle = tokio::runtime::Handle::current();
            let relay = Relay::bind(
                Protocol::Tcp,
                (f.any, 0).into(),
                targets(endpoint),
                Settings::default(),
                &handle,
            )
            .expect("relay on the wildcard address");
            let service = SocketAddr::new(f.second, relay.local_addr().port());
            let mut client = TcpStream::connect(service).await.expect("connect");
            client.write_all(b"over the relay").await.expect("write");
            client.shutdown().await.expect("half-close");
            let mut back = String::new();
            tokio::time::timeout(WAIT, client.read_to_string(&mut back))
                .await
                .expect("answer in time")
                .expect("answer");
            assert_eq!(back, "over the relay", "{service}");
            server.abort();
        }
    });
}
