//! Load test of the userspace relay: 2,000 concurrent long-lived TCP
//! connections through one relay port on 127.0.0.1, held, used, closed, and
//! no descriptor left behind. Alone in its test binary so that the
//! descriptor count of the process is not disturbed by other tests.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use kproxy::backend::userspace::{CopyMode, Relay, Settings, TargetSet};
use kproxy::model::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const CONNECTIONS: usize = 2_000;
/// Connections opened at once while ramping up.
const RAMP_BATCH: usize = 200;
/// Bound on the whole test.
const TEST_BOUND: Duration = Duration::from_secs(180);
/// Bound on each wait inside it.
const WAIT: Duration = Duration::from_secs(30);
const LOCALHOST: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

fn is_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// An endpoint that echoes every byte until end of stream. Its backlog
/// takes a whole ramp batch (std's default of 128 would overflow and make
/// the relay's first connect attempts time out).
async fn echo_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.bind(LOCALHOST).expect("bind echo server");
    let listener: TcpListener = socket.listen(4096).expect("listen");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    (addr, task)
}

async fn ping(s: &mut TcpStream, i: usize) -> io::Result<()> {
    let msg = (i as u32).to_be_bytes();
    s.write_all(&msg).await?;
    let mut back = [0u8; 4];
    s.read_exact(&mut back).await?;
    if back != msg {
        return Err(io::Error::other(format!("connection {i}: echo mismatch")));
    }
    Ok(())
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn hold_and_close(copy: CopyMode) {
    let (endpoint, server) = echo_server().await;
    let before = open_fds();
    let settings = Settings {
        copy,
        ..Settings::default()
    };
    let targets = TargetSet {
        endpoints: vec![endpoint],
        ..TargetSet::default()
    };
    let relay = Relay::bind(
        Protocol::Tcp,
        LOCALHOST,
        targets,
        settings,
        &tokio::runtime::Handle::current(),
    )
    .expect("bind relay");
    let service = relay.local_addr();

    // Ramp up in batches, each connection proven with a round trip.
    let mut conns: Vec<TcpStream> = Vec::with_capacity(CONNECTIONS);
    while conns.len() < CONNECTIONS {
        let start = conns.len();
        let batch = (start..(start + RAMP_BATCH).min(CONNECTIONS)).map(|i| async move {
            let mut s = TcpStream::connect(service).await?;
            ping(&mut s, i).await?;
            Ok::<_, io::Error>(s)
        });
        for r in futures::future::join_all(batch).await {
            match r {
                Ok(s) => conns.push(s),
                Err(e) => panic!("connection through the relay: {e}; {:?}", relay.stats().snapshot()),
            }
        }
    }
    let stats = relay.stats().clone();
    assert_eq!(
        stats.snapshot().active,
        CONNECTIONS as u64,
        "{copy:?}: all held at once"
    );

    // Every one still works while all are open.
    let checks = conns.iter_mut().enumerate().map(|(i, s)| ping(s, i));
    for r in futures::future::join_all(checks).await {
        r.expect("held connection still relays");
    }

    // Close cleanly: half-close, then read the relay's end of stream.
    let closes = conns.into_iter().map(|mut s| async move {
        s.shutdown().await?;
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await?;
        Ok::<_, io::Error>(rest.len())
    });
    for r in futures::future::join_all(closes).await {
        assert_eq!(r.expect("clean close"), 0);
    }
    eventually("relay connections finished", || stats.snapshot().active == 0).await;
    let s = stats.snapshot();
    // Connect attempts may time out on a loaded machine and be retried;
    // none may give up.
    assert_eq!(
        (s.accepted, s.refused_at_limit, s.unreachable),
        (CONNECTIONS as u64, 0, 0),
        "{copy:?}: {s:?}"
    );
    println!("{copy:?}: {s:?}");
    assert_eq!(s.bytes_to_endpoints, (CONNECTIONS * 8) as u64);
    drop(relay);
    eventually("descriptors back to where they were", || open_fds() <= before).await;
    server.abort();
}

#[test]
fn two_thousand_long_lived_connections_hold_and_close_without_leaking_descriptors() {
    let limit = kproxy::sys::raise_nofile_limit().expect("raise RLIMIT_NOFILE");
    // Client, accepted, upstream and server sockets, plus two splice pipes.
    let needed = (CONNECTIONS * 8 + 256) as u64;
    if limit.after < needed {
        let reason = format!("RLIMIT_NOFILE hard limit {} < {needed}", limit.hard);
        assert!(!is_ci(), "load test cannot run in CI: {reason}");
        eprintln!("SKIP: {reason}");
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        tokio::time::timeout(TEST_BOUND, async {
            hold_and_close(CopyMode::Splice).await;
            hold_and_close(CopyMode::Buffered).await;
        })
        .await
        .expect("load test within its time bound");
    });
}
