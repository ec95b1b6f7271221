//! Userspace relay copy benchmark: a bounded bulk transfer over 127.0.0.1,
//! client → relay → sink, with `splice(2)` and with
//! `tokio::io::copy_bidirectional`, beside the same transfer straight to the
//! sink. Prints throughput and the process's CPU time per GiB (client and
//! sink included: compare with the direct line), best of the repetitions,
//! each figure also as a ratio to direct.
//!
//! `cargo bench --bench relay` moves `KPROXY_BENCH_RELAY_MIB` MiB (default
//! 2048) per run, over 1 and 4 parallel streams, 3 runs each; under
//! `cargo test` it moves 8 MiB once as a smoke test.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use kproxy::backend::userspace::{CopyMode, Relay, Settings, TargetSet};
use kproxy::model::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const LOCALHOST: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
const CHUNK: usize = 1 << 16;

/// One measured configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    Direct,
    Relay(CopyMode),
}

#[derive(Clone, Copy, Debug)]
struct Run {
    elapsed: Duration,
    cpu: Duration,
}

/// A sink that reads each connection to its end and answers with the byte
/// count.
async fn sink() -> SocketAddr {
    let listener = TcpListener::bind(LOCALHOST).await.expect("bind sink");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; CHUNK];
                let mut total: u64 = 0;
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(n) => total += n as u64,
                        Err(_) => return,
                    }
                }
                let _ = s.write_all(&total.to_be_bytes()).await;
            });
        }
    });
    addr
}

/// Sends `bytes` to `to`, half-closes, and waits for the sink's count.
async fn transfer(to: SocketAddr, bytes: u64) {
    let mut s = TcpStream::connect(to).await.expect("connect");
    let buf = vec![0x5a_u8; CHUNK];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        s.write_all(&buf[..n]).await.expect("write");
        left -= n as u64;
    }
    s.shutdown().await.expect("shutdown");
    let mut count = [0u8; 8];
    s.read_exact(&mut count).await.expect("count");
    assert_eq!(u64::from_be_bytes(count), bytes, "every byte arrived");
}

fn process_cpu() -> Duration {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).expect("getrusage");
    let tv = |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
    tv(usage.user_time()) + tv(usage.system_time())
}

async fn measure(path: Path, sink: SocketAddr, streams: usize, bytes_each: u64) -> Run {
    let relay = match path {
        Path::Direct => None,
        Path::Relay(copy) => {
            let targets = TargetSet {
                endpoints: vec![sink],
                ..TargetSet::default()
            };
            let settings = Settings {
                copy,
                ..Settings::default()
            };
            Some(
                Relay::bind(
                    Protocol::Tcp,
                    LOCALHOST,
                    targets,
                    settings,
                    &tokio::runtime::Handle::current(),
                )
                .expect("relay"),
            )
        }
    };
    let to = relay.as_ref().map_or(sink, Relay::local_addr);
    let (cpu0, t0) = (process_cpu(), Instant::now());
    let all = (0..streams).map(|_| tokio::spawn(transfer(to, bytes_each)));
    for t in futures::future::join_all(all).await {
        t.expect("transfer");
    }
    Run {
        elapsed: t0.elapsed(),
        cpu: process_cpu() - cpu0,
    }
}

fn main() {
    let bench_mode = std::env::args().any(|a| a == "--bench");
    let mib: u64 = if bench_mode {
        std::env::var("KPROXY_BENCH_RELAY_MIB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2048)
    } else {
        8
    };
    let (reps, stream_counts): (usize, &[usize]) = if bench_mode { (3, &[1, 4]) } else { (1, &[1]) };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let sink = sink().await;
        println!("relay copy benchmark: {mib} MiB per run over 127.0.0.1, best of {reps}");
        println!("| streams | path | MiB/s | × direct | CPU s/GiB | × direct |");
        println!("|---|---|---|---|---|---|");
        for &streams in stream_counts {
            let bytes_each = mib * (1 << 20) / streams as u64;
            let mut direct: Option<Run> = None;
            for path in [
                Path::Direct,
                Path::Relay(CopyMode::Splice),
                Path::Relay(CopyMode::Buffered),
            ] {
                let mut best: Option<Run> = None;
                for _ in 0..reps {
                    let r = measure(path, sink, streams, bytes_each).await;
                    if best.is_none_or(|b| r.elapsed < b.elapsed) {
                        best = Some(r);
                    }
                }
                let Some(best) = best else { continue };
                let direct_run = *direct.get_or_insert(best);
                let gib = mib as f64 / 1024.0;
                let rate = mib as f64 / best.elapsed.as_secs_f64();
                let cpu = best.cpu.as_secs_f64() / gib;
                let rate_ratio = rate / (mib as f64 / direct_run.elapsed.as_secs_f64());
                let cpu_ratio = cpu / (direct_run.cpu.as_secs_f64() / gib);
                let name = match path {
                    Path::Direct => "direct".to_string(),
                    Path::Relay(CopyMode::Splice) => "relay, splice".to_string(),
                    Path::Relay(CopyMode::Buffered) => "relay, copy_bidirectional".to_string(),
                };
                println!("| {streams} | {name} | {rate:.0} | {rate_ratio:.2} | {cpu:.2} | {cpu_ratio:.2} |");
            }
        }
    });
}
