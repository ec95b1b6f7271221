//! UDP: a session per (client address, local address) with an idle timeout,
//! as kube-proxy's userspace proxier kept one per client.
//!
//! ```text
//!  client ──▶ listening socket ──recv (+ dst address)──▶ session? ─no─▶ pick, connect a socket to the endpoint
//!                   ▲                                        │
//!                   └── send_from(dst) ◀── session task ◀────┘ endpoint replies
//! ```
//!
//! Replies leave through the listening socket, from the local address the
//! client's datagram arrived at (`IP_PKTINFO`), so the client (and
//! conntrack's reverse NAT after a REDIRECT) sees the address it sent to.
//! A session ends after `udp_idle_timeout` without a datagram either way, on
//! an error from the endpoint (ICMP unreachable), when its endpoint leaves
//! the target set, or when the relay closes.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{Notify, OwnedSemaphorePermit, watch};
use tracing::debug;

use super::idle::Activity;
use super::relay::Shared;
use super::stats::Gauge;
use crate::sys::socket::{recv_with_dst, send_from};

/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;

/// A client as the listening socket sees it: its address, and the local
/// address it sent to.
type Key = (SocketAddr, Option<IpAddr>);

/// The open sessions of one relay.
#[derive(Debug, Default)]
pub(super) struct Sessions {
    map: Mutex<HashMap<Key, Arc<Session>>>,
    next_id: AtomicU64,
}

#[derive(Debug)]
struct Session {
    id: u64,
    endpoint: SocketAddr,
    upstream: UdpSocket,
    activity: Activity,
    stop: Notify,
}

// === impl Sessions ===

impl Sessions {
    fn lock(&self) -> MutexGuard<'_, HashMap<Key, Arc<Session>>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends the sessions whose endpoint is not in `endpoints`.
    pub(super) fn stop_all_but(&self, endpoints: &[std::net::SocketAddr]) {
        self.lock().retain(|_, s| {
            let keep = endpoints.contains(&s.endpoint);
            if !keep {
                s.stop.notify_one();
            }
            keep
        });
    }

    fn remove(&self, key: &Key, id: u64) {
        let mut map = self.lock();
        if map.get(key).is_some_and(|s| s.id == id) {
            map.remove(key);
        }
    }
}

/// Receives until the task is aborted (the relay dropped).
pub(super) async fn serve(socket: Arc<UdpSocket>, shared: Arc<Shared>, closed: watch::Receiver<()>) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let received = socket
            .async_io(Interest::READABLE, || recv_with_dst(socket.as_fd(), &mut buf))
            .await;
        let d = match received {
            Ok(d) => d,
            Err(e) => {
                debug!(error = %e, "UDP receive failed");
                continue;
            }
        };
        let key = (d.from, d.to);
        let existing = shared.sessions.lock().get(&key).cloned();
        let Some(session) = existing.or_else(|| open(&socket, &shared, key, &closed)) else {
            continue;
        };
        // Straight to the socket: tokio's try_send refuses before the reactor
        // has seen the new socket writable, and waiting would stall every client.
        match socket2::SockRef::from(&session.upstream).send(&buf[..d.len]) {
            Ok(n) => {
                session.activity.touch();
                shared.stats.to_endpoints(n);
            }
            Err(_) => shared.stats.datagram_dropped(),
        }
    }
}

/// Opens a session for a new client; None (datagram dropped, counted)
/// without endpoint, at the limit, or when the socket cannot be opened.
fn open(socket: &Arc<UdpSocket>, shared: &Arc<Shared>, key: Key, closed: &watch::Receiver<()>) -> Option<Arc<Session>> {
    let endpoint = match shared.pick(key.0.ip(), &[]) {
        Ok(Some(endpoint)) => endpoint,
        Ok(None) | Err(_) => {
            shared.stats.no_endpoints();
            return None;
        }
    };
    let Ok(permit) = shared.limit.clone().try_acquire_owned() else {
        shared.stats.refused_at_limit();
        return None;
    };
    let upstream = match connect(endpoint) {
        Ok(upstream) => upstream,
        Err(e) => {
            debug!(%endpoint, error = %e, "UDP connect failed");
            shared.stats.failed_connect();
            return None;
        }
    };
    let session = Arc::new(Session {
        id: shared.sessions.next_id.fetch_add(1, Ordering::Relaxed),
        endpoint,
        upstream,
        activity: Activity::new(),
        stop: Notify::new(),
    });
    shared.sessions.lock().insert(key, session.clone());
    tokio::spawn(run_session(
        socket.clone(),
        shared.clone(),
        key,
        session.clone(),
        closed.clone(),
        permit,
    ));
    Some(session)
}

/// A socket of the endpoint's family, connected to it: replies from any
/// other address are not taken, and ICMP errors end the session.
fn connect(endpoint: SocketAddr) -> std::io::Result<UdpSocket> {
    let any: SocketAddr = match endpoint {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = std::net::UdpSocket::bind(any)?;
    socket.connect(endpoint)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(socket)
}

/// Forwards the endpoint's replies to the client until the session ends.
async fn run_session(
    socket: Arc<UdpSocket>,
    shared: Arc<Shared>,
    key: Key,
    session: Arc<Session>,
    mut closed: watch::Receiver<()>,
    _permit: OwnedSemaphorePermit,
) {
    let _active = shared.stats.open(Gauge::UdpSessions);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let limit = shared.settings.udp_idle_timeout;
    loop {
        let n = tokio::select! {
            r = session.upstream.recv(&mut buf) => match r {
                Ok(n) => n,
                Err(e) => {
                    debug!(endpoint = %session.endpoint, error = %e, "UDP session ended by the endpoint");
                    break;
                }
            },
            () = session.activity.idle(limit) => break,
            () = session.stop.notified() => break,
            _ = closed.changed() => break,
        };
        session.activity.touch();
        let sent = socket
            .async_io(Interest::WRITABLE, || {
                send_from(socket.as_fd(), &buf[..n], key.0, key.1)
            })
            .await;
        match sent {
            Ok(n) => shared.stats.to_clients(n),
            Err(_) => shared.stats.datagram_dropped(),
        }
    }
    shared.sessions.remove(&key, session.id);
}
