//! TCP: accept, pick an endpoint, connect (trying the next endpoint on
//! failure), then relay both ways until both sides are done.
//!
//! ```text
//!  accept ─▶ at limit? ──yes──▶ RST, refused_at_limit++
//!              │no
//!              ▼
//!          pick ─▶ no endpoints ─▶ RST (Reset) | hold, then RST (Drop)
//!              │
//!          connect (timeout i) ─fail─▶ backoff, pick another ─▶ … schedule and endpoints used up ─▶ RST
//!              │ok
//!          client ⇄ endpoint: EOF one way → shutdown(write) the other way; error → RST both;
//!                             idle timeout → close
//! ```

use std::io;
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::os::fd::AsFd;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use nix::libc;
use socket2::SockRef;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::OwnedSemaphorePermit;
use tracing::{debug, warn};

use super::idle::Activity;
use super::relay::{CopyMode, NoEndpoints, Shared};
use super::stats::Gauge;
use crate::sys::socket::Pipe;

/// Bytes moved per splice call.
const SPLICE_CHUNK: usize = 1 << 16;

/// Why no endpoint connection was made.
#[derive(Debug)]
enum Unreachable {
    NoEndpoints(NoEndpoints),
    AllFailed { attempts: usize },
}

/// How a relayed connection ended, when not cleanly.
#[derive(Debug)]
enum Ended {
    Io(io::Error),
    Idle,
}

/// Accepts until the task is aborted (the relay dropped).
pub(super) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (client, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                accept_failed(&e).await;
                continue;
            }
        };
        shared.stats.accepted();
        let Ok(permit) = shared.limit.clone().try_acquire_owned() else {
            shared.stats.refused_at_limit();
            reset(&client);
            continue;
        };
        tokio::spawn(connection(shared.clone(), client, peer, permit));
    }
}

/// Out of descriptors (or memory): pause so the loop does not spin while
/// connections close; other errors concern one connection only.
async fn accept_failed(e: &io::Error) {
    let exhausted = matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    );
    if exhausted {
        warn!(error = %e, "Accept failed, pausing");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    } else {
        debug!(error = %e, "Accept failed");
    }
}

async fn connection(shared: Arc<Shared>, mut client: TcpStream, peer: SocketAddr, _permit: OwnedSemaphorePermit) {
    let _active = shared.stats.open(Gauge::Connections);
    let mut upstream = match connect(&shared, peer.ip()).await {
        Ok(upstream) => upstream,
        Err(Unreachable::NoEndpoints(policy)) => {
            shared.stats.no_endpoints();
            if policy == NoEndpoints::Drop {
                tokio::time::sleep(shared.settings.connect_budget()).await;
            }
            reset(&client);
            return;
        }
        Err(Unreachable::AllFailed { attempts }) => {
            shared.stats.unreachable();
            debug!(client = %peer, attempts, "No endpoint accepted the connection");
            reset(&client);
            return;
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    match relay(&shared, &mut client, &mut upstream).await {
        Ok(()) => {}
        Err(Ended::Idle) => shared.stats.idle_closed(),
        Err(Ended::Io(e)) => {
            debug!(client = %peer, error = %e, "Relay ended with an error");
            // Pass the failure on as the kernel would: a reset both ways.
            reset(&client);
            reset(&upstream);
        }
    }
}

/// Connects to an endpoint. After a failure the next attempt goes to an
/// endpoint not tried yet, with the next (longer) timeout of the schedule
/// and a short backoff. As kube-proxy's legacy `tryConnect`, the whole
/// schedule is used even with fewer endpoints (they are tried again); with
/// more endpoints, each is tried once. Gives up when both are exhausted.
async fn connect(shared: &Shared, client: IpAddr) -> Result<TcpStream, Unreachable> {
    let schedule = shared.settings.connect_timeouts.len();
    let mut tried: Vec<SocketAddr> = Vec::new();
    for attempt in 0.. {
        let endpoint = match shared.pick(client, &tried) {
            Err(policy) => return Err(Unreachable::NoEndpoints(policy)),
            Ok(Some(endpoint)) => endpoint,
            Ok(None) if attempt < schedule => {
                // Every endpoint failed once: another round.
                tried.clear();
                match shared.pick(client, &tried) {
                    Ok(Some(endpoint)) => endpoint,
                    Ok(None) | Err(_) => return Err(Unreachable::AllFailed { attempts: attempt }),
                }
            }
            Ok(None) => return Err(Unreachable::AllFailed { attempts: attempt }),
        };
        tokio::time::sleep(shared.settings.backoff(attempt)).await;
        let timeout = shared.settings.connect_timeout(attempt);
        match tokio::time::timeout(timeout, TcpStream::connect(endpoint)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => debug!(%endpoint, error = %e, "Connect failed"),
            Err(_) => debug!(%endpoint, ?timeout, "Connect timed out"),
        }
        shared.stats.failed_connect();
        tried.push(endpoint);
    }
    Err(Unreachable::AllFailed { attempts: usize::MAX })
}

/// Relays until both directions reached end of stream, one failed, or the
/// connection idled out.
async fn relay(shared: &Shared, client: &mut TcpStream, upstream: &mut TcpStream) -> Result<(), Ended> {
    let activity = Activity::new();
    let copy = async {
        match shared.settings.copy {
            CopyMode::Splice => splice_both(shared, client, upstream, &activity).await,
            CopyMode::Buffered => buffered_both(shared, client, upstream, &activity).await,
        }
    };
    match shared.settings.tcp_idle_timeout {
        Some(limit) => tokio::select! {
            r = copy => r.map_err(Ended::Io),
            () = activity.idle(limit) => Err(Ended::Idle),
        },
        None => copy.await.map_err(Ended::Io),
    }
}

async fn splice_both(shared: &Shared, client: &TcpStream, upstream: &TcpStream, activity: &Activity) -> io::Result<()> {
    let (up, down) = (Pipe::new()?, Pipe::new()?);
    let stats = &shared.stats;
    tokio::try_join!(
        splice_one_way(client, upstream, &up, activity, |n| stats.to_endpoints(n)),
        splice_one_way(upstream, client, &down, activity, |n| stats.to_clients(n)),
    )?;
    Ok(())
}

/// Moves `from` → pipe → `to` until end of stream, then shuts down the
/// write side of `to`. The pipe is drained after each fill, so an empty
/// splice from the socket always means the socket had nothing to read.
async fn splice_one_way(
    from: &TcpStream,
    to: &TcpStream,
    pipe: &Pipe,
    activity: &Activity,
    count: impl Fn(usize),
) -> io::Result<()> {
    loop {
        from.readable().await?;
        let n = match from.try_io(Interest::READABLE, || pipe.fill_from(from.as_fd(), SPLICE_CHUNK)) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        let mut left = n;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || pipe.drain_to(to.as_fd(), left)) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        activity.touch();
        count(n);
    }
    shutdown_write(to)
}

async fn buffered_both(
    shared: &Shared,
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    activity: &Activity,
) -> io::Result<()> {
    let stats = &shared.stats;
    let mut client = Tracked {
        io: client,
        activity,
        count: |n| stats.to_endpoints(n),
    };
    let mut upstream = Tracked {
        io: upstream,
        activity,
        count: |n| stats.to_clients(n),
    };
    tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
    Ok(())
}

fn shutdown_write(s: &TcpStream) -> io::Result<()> {
    match SockRef::from(s).shutdown(Shutdown::Write) {
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
        r => r,
    }
}

/// Closes with a reset (SO_LINGER 0) instead of a FIN.
fn reset(s: &TcpStream) {
    let _ = s.set_zero_linger();
}

/// A stream that records activity and counts the bytes read from it.
struct Tracked<'a, F> {
    io: &'a mut TcpStream,
    activity: &'a Activity,
    count: F,
}

impl<F: Fn(usize) + Unpin> AsyncRead for Tracked<'_, F> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let polled = Pin::new(&mut *this.io).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            this.activity.touch();
            (this.count)(n);
        }
        polled
    }
}

impl<F: Fn(usize) + Unpin> AsyncWrite for Tracked<'_, F> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_shutdown(cx)
    }
}
