//! The relay on 127.0.0.1 with real sockets: small servers that answer
//! with their name stand in for endpoints. Every wait is bounded.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;

use super::*;
use crate::model::Protocol;

const WAIT: Duration = Duration::from_secs(10);
const LOCALHOST: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

/// A clock the test moves by hand.
#[derive(Debug)]
struct ManualClock(Mutex<Instant>);

impl ManualClock {
    fn new() -> Arc<Self> {
        Arc::new(Self(Mutex::new(Instant::now())))
    }

    fn advance(&self, d: Duration) {
        *self.0.lock().expect("clock") += d;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        *self.0.lock().expect("clock")
    }
}

/// A TCP endpoint: sends `name\n` on accept, then echoes until end of
/// stream, then closes.
struct NamedServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl NamedServer {
    async fn start(name: &'static str) -> Self {
        let listener = TcpListener::bind(LOCALHOST).await.expect("bind server");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let _ = s.write_all(format!("{name}\n").as_bytes()).await;
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        Self { addr, task }
    }
}

impl Drop for NamedServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An address nothing listens on: connects to it are refused.
fn refusing_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind(LOCALHOST).expect("bind");
    l.local_addr().expect("addr")
}

fn targets(endpoints: &[SocketAddr]) -> TargetSet {
    TargetSet {
        endpoints: endpoints.to_vec(),
        ..TargetSet::default()
    }
}

fn relay(protocol: Protocol, t: TargetSet, settings: Settings) -> Relay {
    Relay::bind(protocol, LOCALHOST, t, settings, &Handle::current()).expect("bind relay")
}

fn settings(copy: CopyMode) -> Settings {
    Settings {
        copy,
        ..Settings::default()
    }
}

/// A connection through the relay that has read the endpoint's name.
struct Conn {
    name: String,
    stream: BufReader<TcpStream>,
}

async fn connect(addr: SocketAddr) -> io::Result<Conn> {
    let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr)).await??;
    let mut stream = BufReader::new(stream);
    let mut name = String::new();
    tokio::time::timeout(WAIT, stream.read_line(&mut name)).await??;
    if name.is_empty() {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(Conn {
        name: name.trim().to_string(),
        stream,
    })
}

async fn name_via(addr: SocketAddr) -> String {
    connect(addr).await.expect("connection through the relay").name
}

impl Conn {
    async fn echo(&mut self, msg: &str) -> String {
        self.stream
            .write_all(format!("{msg}\n").as_bytes())
            .await
            .expect("write");
        let mut line = String::new();
        tokio::time::timeout(WAIT, self.stream.read_line(&mut line))
            .await
            .expect("echo in time")
            .expect("echo");
        line.trim().to_string()
    }
}

/// What a client sees from the relay when it reads: data, end of stream, or
/// an error kind (a reset).
async fn read_outcome(stream: &mut TcpStream) -> Result<usize, io::ErrorKind> {
    let mut buf = [0u8; 64];
    match tokio::time::timeout(WAIT, stream.read(&mut buf)).await {
        Ok(r) => r.map_err(|e| e.kind()),
        Err(_) => Err(io::ErrorKind::TimedOut),
    }
}

/// Polls `cond` every 10 ms for at most [`WAIT`].
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const BOTH: [CopyMode; 2] = [CopyMode::Splice, CopyMode::Buffered];

#[tokio::test]
async fn tcp_connections_go_round_robin() {
    let (a, b, c) = (
        NamedServer::start("a").await,
        NamedServer::start("b").await,
        NamedServer::start("c").await,
    );
    for copy in BOTH {
        let r = relay(Protocol::Tcp, targets(&[a.addr, b.addr, c.addr]), settings(copy));
        let mut names = Vec::new();
        for _ in 0..6 {
            names.push(name_via(r.local_addr()).await);
        }
        assert_eq!(names, ["a", "b", "c", "a", "b", "c"], "{copy:?}");
    }
}

#[tokio::test]
async fn payload_is_relayed_both_ways_and_counted() {
    let a = NamedServer::start("a").await;
    for copy in BOTH {
        let r = relay(Protocol::Tcp, targets(&[a.addr]), settings(copy));
        let mut conn = connect(r.local_addr()).await.expect("connect");
        assert_eq!(conn.echo("hello").await, "hello", "{copy:?}");
        drop(conn);
        eventually("connection closed", || r.stats().snapshot().active == 0).await;
        let s = r.stats().snapshot();
        assert_eq!(
            (s.accepted, s.bytes_to_endpoints, s.bytes_to_clients),
            (1, 6, 8),
            "{copy:?}"
        );
    }
}

#[tokio::test]
async fn client_ip_affinity_holds_until_its_timeout() {
    let (a, b) = (NamedServer::start("a").await, NamedServer::start("b").await);
    let clock = ManualClock::new();
    let t = TargetSet {
        affinity: Some(Duration::from_secs(10)),
        ..targets(&[a.addr, b.addr])
    };
    let s = Settings {
        clock: clock.clone(),
        ..Settings::default()
    };
    let r = relay(Protocol::Tcp, t, s);
    for _ in 0..3 {
        assert_eq!(name_via(r.local_addr()).await, "a");
    }
    clock.advance(Duration::from_secs(9));
    assert_eq!(name_via(r.local_addr()).await, "a", "renewed by each connection");
    clock.advance(Duration::from_secs(10));
    assert_eq!(name_via(r.local_addr()).await, "b", "expired: round robin again");
    assert_eq!(name_via(r.local_addr()).await, "b", "sticks to the new endpoint");
}

#[tokio::test]
async fn a_refused_connect_fails_over_to_the_next_endpoint() {
    let a = NamedServer::start("a").await;
    let r = relay(Protocol::Tcp, targets(&[refusing_addr(), a.addr]), Settings::default());
    assert_eq!(name_via(r.local_addr()).await, "a");
    let s = r.stats().snapshot();
    assert_eq!((s.failed_connects, s.unreachable), (1, 0));
}

#[tokio::test]
async fn every_endpoint_refusing_resets_the_client() {
    let r = relay(
        Protocol::Tcp,
        targets(&[refusing_addr(), refusing_addr()]),
        Settings::default(),
    );
    let mut client = TcpStream::connect(r.local_addr()).await.expect("connect");
    assert_eq!(read_outcome(&mut client).await, Err(io::ErrorKind::ConnectionReset));
    let s = r.stats().snapshot();
    // Four attempts (kube-proxy's schedule), the two endpoints twice each.
    assert_eq!((s.failed_connects, s.unreachable), (4, 1));
}

#[tokio::test]
async fn no_endpoints_resets_at_once() {
    let r = relay(Protocol::Tcp, targets(&[]), Settings::default());
    let mut client = TcpStream::connect(r.local_addr()).await.expect("connect");
    assert_eq!(read_outcome(&mut client).await, Err(io::ErrorKind::ConnectionReset));
    assert_eq!(r.stats().snapshot().no_endpoints, 1);
}

#[tokio::test]
async fn half_close_keeps_the_other_direction_open() {
    // The endpoint answers only after the client's end of stream.
    let listener = TcpListener::bind(LOCALHOST).await.expect("bind");
    let endpoint = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut got = Vec::new();
            if s.read_to_end(&mut got).await.is_ok() {
                got.reverse();
                let _ = s.write_all(&got).await;
            }
        }
    });
    for copy in BOTH {
        let r = relay(Protocol::Tcp, targets(&[endpoint]), settings(copy));
        let mut client = TcpStream::connect(r.local_addr()).await.expect("connect");
        client.write_all(b"half-close").await.expect("write");
        client.shutdown().await.expect("shutdown write");
        let mut answer = String::new();
        tokio::time::timeout(WAIT, client.read_to_string(&mut answer))
            .await
            .expect("answer in time")
            .expect("answer");
        assert_eq!(answer, "esolc-flah", "{copy:?}");
    }
    server.abort();
}

#[tokio::test]
async fn idle_connections_are_closed() {
    let a = NamedServer::start("a").await;
    for copy in BOTH {
        let s = Settings {
            tcp_idle_timeout: Some(Duration::from_millis(200)),
            ..settings(copy)
        };
        let r = relay(Protocol::Tcp, targets(&[a.addr]), s);
        let mut conn = connect(r.local_addr()).await.expect("connect");
        // Nothing moves after the name: the relay closes the connection.
        let mut rest = Vec::new();
        let closed = tokio::time::timeout(WAIT, conn.stream.read_to_end(&mut rest)).await;
        assert!(closed.is_ok(), "closed by the idle timeout ({copy:?})");
        assert_eq!(r.stats().snapshot().idle_closed, 1, "{copy:?}");
    }
}

#[tokio::test]
async fn connections_beyond_the_limit_are_reset_and_counted() {
    let a = NamedServer::start("a").await;
    let s = Settings {
        max_connections: 2,
        ..Settings::default()
    };
    let r = relay(Protocol::Tcp, targets(&[a.addr]), s);
    let mut first = connect(r.local_addr()).await.expect("first");
    let mut second = connect(r.local_addr()).await.expect("second");
    let mut third = TcpStream::connect(r.local_addr()).await.expect("third");
    assert_eq!(read_outcome(&mut third).await, Err(io::ErrorKind::ConnectionReset));
    assert_eq!(r.stats().snapshot().refused_at_limit, 1);
    assert_eq!(first.echo("still").await, "still");
    assert_eq!(second.echo("here").await, "here");
    drop(first);
    eventually("a slot frees up", || r.stats().snapshot().active == 1).await;
    let mut fourth = connect(r.local_addr()).await.expect("fourth, after one closed");
    assert_eq!(fourth.echo("in").await, "in");
}

#[tokio::test]
async fn new_targets_apply_to_new_connections_while_established_ones_go_on() {
    let (a, b) = (NamedServer::start("a").await, NamedServer::start("b").await);
    let r = relay(Protocol::Tcp, targets(&[a.addr]), Settings::default());
    let mut old = connect(r.local_addr()).await.expect("old");
    assert_eq!(old.name, "a");
    r.set_targets(targets(&[b.addr]));
    assert_eq!(r.targets(), targets(&[b.addr]));
    assert_eq!(name_via(r.local_addr()).await, "b");
    assert_eq!(old.echo("still a").await, "still a");
    r.set_targets(targets(&[]));
    let mut client = TcpStream::connect(r.local_addr()).await.expect("connect");
    assert_eq!(read_outcome(&mut client).await, Err(io::ErrorKind::ConnectionReset));
}

#[tokio::test]
async fn dropping_the_relay_closes_the_listener_but_not_established_connections() {
    let a = NamedServer::start("a").await;
    let r = relay(Protocol::Tcp, targets(&[a.addr]), Settings::default());
    let addr = r.local_addr();
    let mut conn = connect(addr).await.expect("connect");
    drop(r);
    let mut refused = false;
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "listener closed");
    assert_eq!(conn.echo("alive").await, "alive");
}

#[tokio::test]
async fn sctp_and_unusable_ports_are_errors_not_panics() {
    let err = Relay::bind(
        Protocol::Sctp,
        LOCALHOST,
        TargetSet::default(),
        Settings::default(),
        &Handle::current(),
    );
    assert!(matches!(err, Err(RelayError::Unsupported(Protocol::Sctp))));
    let taken = relay(Protocol::Tcp, TargetSet::default(), Settings::default());
    let again = Relay::bind(
        Protocol::Tcp,
        taken.local_addr(),
        TargetSet::default(),
        Settings::default(),
        &Handle::current(),
    );
    assert!(matches!(again, Err(RelayError::Bind { .. })), "{again:?}");
}

// --- UDP ---

/// A UDP endpoint answering each datagram with `name:payload`.
async fn udp_server(name: &'static str) -> (SocketAddr, JoinHandle<()>) {
    let sock = UdpSocket::bind(LOCALHOST).await.expect("bind udp");
    let addr = sock.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let reply = format!("{name}:{}", String::from_utf8_lossy(&buf[..n]));
            let _ = sock.send_to(reply.as_bytes(), from).await;
        }
    });
    (addr, task)
}

/// Sends `msg` to `to` and returns the reply and the address it came from.
async fn udp_ask(client: &UdpSocket, to: SocketAddr, msg: &str) -> (String, SocketAddr) {
    client.send_to(msg.as_bytes(), to).await.expect("send");
    let mut buf = [0u8; 1500];
    let (n, from) = tokio::time::timeout(WAIT, client.recv_from(&mut buf))
        .await
        .expect("reply in time")
        .expect("reply");
    (String::from_utf8_lossy(&buf[..n]).into_owned(), from)
}

#[tokio::test]
async fn udp_sessions_stick_per_client_and_replies_come_from_the_service_address() {
    let (a, ta) = udp_server("a").await;
    let (b, tb) = udp_server("b").await;
    let s = Settings {
        udp_idle_timeout: Duration::from_secs(60),
        ..Settings::default()
    };
    let r = relay(Protocol::Udp, targets(&[a, b]), s);
    let service = r.local_addr();
    let one = UdpSocket::bind(LOCALHOST).await.expect("client one");
    let two = UdpSocket::bind(LOCALHOST).await.expect("client two");
    for i in 0..3 {
        assert_eq!(
            udp_ask(&one, service, &format!("x{i}")).await,
            (format!("a:x{i}"), service)
        );
    }
    assert_eq!(udp_ask(&two, service, "y").await, ("b:y".to_string(), service));
    let st = r.stats().snapshot();
    assert_eq!((st.udp_sessions, st.udp_sessions_active), (2, 2));
    assert_eq!((st.bytes_to_endpoints, st.bytes_to_clients), (7, 15));
    // An endpoint leaving ends its sessions: client one moves on.
    r.set_targets(targets(&[b]));
    assert_eq!(udp_ask(&one, service, "z").await, ("b:z".to_string(), service));
    ta.abort();
    tb.abort();
}

#[tokio::test]
async fn udp_sessions_end_after_the_idle_timeout() {
    let (a, ta) = udp_server("a").await;
    let (b, tb) = udp_server("b").await;
    let s = Settings {
        udp_idle_timeout: Duration::from_millis(100),
        ..Settings::default()
    };
    let r = relay(Protocol::Udp, targets(&[a, b]), s);
    let client = UdpSocket::bind(LOCALHOST).await.expect("client");
    assert_eq!(udp_ask(&client, r.local_addr(), "1").await.0, "a:1");
    eventually("session idled out", || r.stats().snapshot().udp_sessions_active == 0).await;
    // A new session, to the next endpoint.
    assert_eq!(udp_ask(&client, r.local_addr(), "2").await.0, "b:2");
    assert_eq!(r.stats().snapshot().udp_sessions, 2);
    ta.abort();
    tb.abort();
}

#[tokio::test]
async fn udp_without_endpoints_or_beyond_the_limit_is_dropped_and_counted() {
    let (a, ta) = udp_server("a").await;
    let s = Settings {
        max_connections: 1,
        udp_idle_timeout: Duration::from_secs(60),
        ..Settings::default()
    };
    let r = relay(Protocol::Udp, targets(&[a]), s);
    let one = UdpSocket::bind(LOCALHOST).await.expect("one");
    let two = UdpSocket::bind(LOCALHOST).await.expect("two");
    assert_eq!(udp_ask(&one, r.local_addr(), "1").await.0, "a:1");
    two.send_to(b"2", r.local_addr()).await.expect("send");
    eventually("refused at the limit", || r.stats().snapshot().refused_at_limit == 1).await;
    r.set_targets(targets(&[]));
    two.send_to(b"3", r.local_addr()).await.expect("send");
    eventually("dropped without endpoints", || r.stats().snapshot().no_endpoints == 1).await;
    ta.abort();
}
