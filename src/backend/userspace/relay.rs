//! One relay: a listening socket for one service port (TCP or UDP) and the
//! target set its new connections go to.
//!
//! ```text
//!   Relay::bind (sync, on the sync thread)          set_targets (any time)
//!        │ opens the socket, spawns on the Handle          │
//!        ▼                                                 ▼
//!   tcp::serve ─accept─▶ connection task ──pick──▶ Shared { Targets (Balancer), limit, stats }
//!   udp::serve ─recv───▶ session per client ─pick─┘
//! ```
//!
//! Binding is synchronous, so a port that cannot be opened is reported to
//! the caller at once; everything after runs on the tokio runtime whose
//! [`Handle`] was given. Dropping the [`Relay`] closes the listening socket:
//! established TCP connections finish on their own, UDP sessions end (they
//! answer through the listening socket).

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use tokio::runtime::Handle;
use tokio::sync::{Semaphore, watch};

use super::balancer::Balancer;
use super::stats::RelayStats;
use super::{tcp, udp};
use crate::model::Protocol;

/// kube-proxy's legacy `endpointDialTimeout`: the connect timeout of the
/// first, second, … endpoint tried (the last one repeats).
pub const CONNECT_TIMEOUTS: [Duration; 4] = [
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_secs(1),
    Duration::from_secs(2),
];

/// Where new connections of one service port go.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TargetSet {
    /// The endpoints of the traffic class this listener serves, already
    /// selected by policy (ready, local, terminating fallback, …).
    pub endpoints: Vec<SocketAddr>,
    /// ClientIP affinity timeout; None without affinity.
    pub affinity: Option<Duration>,
    /// What a client gets when `endpoints` is empty.
    pub no_endpoints: NoEndpoints,
}

/// What the relay does with a client when there is no endpoint.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NoEndpoints {
    /// TCP: reset the accepted connection at once (the closest a relay can
    /// come to the REJECT of the kernel modes). UDP: drop the datagram.
    #[default]
    Reset,
    /// TCP: hold the connection without an answer for the connect budget
    /// (the sum of the connect timeouts), then reset it, like a DROP seen
    /// from a client that gives up. UDP: drop the datagram.
    Drop,
}

/// How TCP payload is moved between the two sockets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CopyMode {
    /// `splice(2)` through a pipe per direction: the payload stays in the
    /// kernel; each connection holds four more descriptors (two pipes).
    #[default]
    Splice,
    /// `tokio::io::copy_bidirectional` through userspace buffers.
    Buffered,
}

/// The clock affinity is measured with; tests inject their own.
pub trait Clock: Send + Sync + fmt::Debug {
    fn now(&self) -> Instant;
}

/// The real monotonic clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

/// How every relay behaves; the same for all service ports.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Connect timeout per attempt (attempt i uses entry i, the last
    /// repeats). A connection makes at least this many attempts (endpoints
    /// are tried again when there are fewer) and tries every endpoint once.
    pub connect_timeouts: Vec<Duration>,
    /// Pause before the second attempt, doubled for each further one
    /// (capped at 16 times).
    pub retry_backoff: Duration,
    /// A TCP connection with no payload either way for this long is closed.
    pub tcp_idle_timeout: Option<Duration>,
    /// A UDP session with no datagram either way for this long ends
    /// (kube-proxy's `--udp-timeout`).
    pub udp_idle_timeout: Duration,
    /// Concurrent TCP connections (or UDP sessions) per relay; more are
    /// reset (or dropped) and counted.
    pub max_connections: usize,
    pub copy: CopyMode,
    /// Listen backlog (capped by `net.core.somaxconn`).
    pub backlog: i32,
    pub clock: Arc<dyn Clock>,
}

/// Why a relay could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The listening socket could not be opened (address in use, not local, …).
    #[error("cannot listen on {protocol} {addr}: {source}")]
    Bind {
        protocol: Protocol,
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },
    /// The protocol is not relayed (SCTP).
    #[error("{0} is not relayed in userspace mode")]
    Unsupported(Protocol),
    /// The settings cannot work.
    #[error("invalid relay settings: {0}")]
    Settings(&'static str),
}

/// A listening socket relaying to a swappable target set. Dropping it
/// closes the socket.
#[derive(Debug)]
pub struct Relay {
    shared: Arc<Shared>,
    protocol: Protocol,
    local: SocketAddr,
    task: tokio::task::AbortHandle,
    /// Dropped with the relay: tells its UDP sessions to end.
    _closed: watch::Sender<()>,
}

/// What the tasks of one relay share.
#[derive(Debug)]
pub(super) struct Shared {
    pub(super) settings: Settings,
    pub(super) stats: Arc<RelayStats>,
    pub(super) limit: Arc<Semaphore>,
    pub(super) sessions: udp::Sessions,
    targets: Mutex<Targets>,
}

#[derive(Debug)]
struct Targets {
    balancer: Balancer,
    no_endpoints: NoEndpoints,
}

// === impl Settings ===

impl Default for Settings {
    fn default() -> Self {
        Self {
            connect_timeouts: CONNECT_TIMEOUTS.to_vec(),
            retry_backoff: Duration::from_millis(10),
            // As conntrack's default for established TCP flows.
            tcp_idle_timeout: Some(Duration::from_secs(24 * 3600)),
            udp_idle_timeout: Duration::from_millis(250),
            max_connections: 16_384,
            copy: CopyMode::default(),
            backlog: 4096,
            clock: Arc::new(SystemClock),
        }
    }
}

impl Settings {
    fn validate(&self) -> Result<(), RelayError> {
        if self.connect_timeouts.is_empty() || self.connect_timeouts.iter().any(Duration::is_zero) {
            return Err(RelayError::Settings("connect timeouts must be non-empty and non-zero"));
        }
        if self.max_connections == 0 || self.max_connections > Semaphore::MAX_PERMITS {
            return Err(RelayError::Settings("max connections must be at least 1"));
        }
        if self.udp_idle_timeout.is_zero() || self.tcp_idle_timeout.is_some_and(|d| d.is_zero()) {
            return Err(RelayError::Settings("idle timeouts must be non-zero"));
        }
        Ok(())
    }

    /// The connect timeout of attempt `i` (0-based).
    pub(super) fn connect_timeout(&self, i: usize) -> Duration {
        let last = self.connect_timeouts.len().saturating_sub(1);
        self.connect_timeouts
            .get(i.min(last))
            .copied()
            .unwrap_or(CONNECT_TIMEOUTS[0])
    }

    /// The pause before attempt `i` (0-based; none before the first).
    pub(super) fn backoff(&self, i: usize) -> Duration {
        match i {
            0 => Duration::ZERO,
            _ => self.retry_backoff * (1u32 << (i - 1).min(4)),
        }
    }

    /// How long a connection without endpoints is held under
    /// [`NoEndpoints::Drop`].
    pub(super) fn connect_budget(&self) -> Duration {
        self.connect_timeouts.iter().sum()
    }
}

// === impl SystemClock ===

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

// === impl Relay ===

impl Relay {
    /// Opens `addr` for `protocol` (port 0 picks a free one) and starts
    /// relaying to `targets` on `handle`'s runtime.
    pub fn bind(
        protocol: Protocol,
        addr: SocketAddr,
        targets: TargetSet,
        settings: Settings,
        handle: &Handle,
    ) -> Result<Self, RelayError> {
        settings.validate()?;
        let bind_err = |source| RelayError::Bind { protocol, addr, source };
        let shared = Arc::new(Shared {
            limit: Arc::new(Semaphore::new(settings.max_connections)),
            stats: Arc::new(RelayStats::default()),
            sessions: udp::Sessions::default(),
            targets: Mutex::new(Targets {
                balancer: Balancer::new(targets.endpoints, targets.affinity),
                no_endpoints: targets.no_endpoints,
            }),
            settings,
        });
        let (closed_tx, closed_rx) = watch::channel(());
        let _runtime = handle.enter();
        let (local, task) = match protocol {
            Protocol::Tcp => {
                let socket = tcp_listener(addr, shared.settings.backlog).map_err(bind_err)?;
                let listener = tokio::net::TcpListener::from_std(socket).map_err(bind_err)?;
                let local = listener.local_addr().map_err(bind_err)?;
                (local, handle.spawn(tcp::serve(listener, shared.clone())))
            }
            Protocol::Udp => {
                let socket = udp_socket(addr).map_err(bind_err)?;
                let socket = tokio::net::UdpSocket::from_std(socket).map_err(bind_err)?;
                let local = socket.local_addr().map_err(bind_err)?;
                (
                    local,
                    handle.spawn(udp::serve(Arc::new(socket), shared.clone(), closed_rx)),
                )
            }
            Protocol::Sctp => return Err(RelayError::Unsupported(protocol)),
        };
        Ok(Self {
            shared,
            protocol,
            local,
            task: task.abort_handle(),
            _closed: closed_tx,
        })
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// The address the socket is bound to (with the port picked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    pub fn stats(&self) -> &Arc<RelayStats> {
        &self.shared.stats
    }

    /// Replaces the target set. New connections use it at once; established
    /// TCP connections go on; UDP sessions to endpoints that left end, so the
    /// client's next datagram picks a current endpoint.
    pub fn set_targets(&self, targets: TargetSet) {
        {
            let mut t = self.shared.lock_targets();
            t.balancer.update(targets.endpoints.clone(), targets.affinity);
            t.no_endpoints = targets.no_endpoints;
        }
        self.shared.sessions.stop_all_but(&targets.endpoints);
    }

    /// The target set in force.
    pub fn targets(&self) -> TargetSet {
        let t = self.shared.lock_targets();
        TargetSet {
            endpoints: t.balancer.endpoints().to_vec(),
            affinity: t.balancer.affinity(),
            no_endpoints: t.no_endpoints,
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// === impl Shared ===

impl Shared {
    /// The endpoint for a new connection from `client`, skipping those that
    /// already failed it; Err(policy) when the target set is empty.
    pub(super) fn pick(&self, client: IpAddr, tried: &[SocketAddr]) -> Result<Option<SocketAddr>, NoEndpoints> {
        let now = self.settings.clock.now();
        let mut t = self.lock_targets();
        if t.balancer.endpoints().is_empty() {
            return Err(t.no_endpoints);
        }
        Ok(t.balancer.pick(client, now, tried))
    }

    fn lock_targets(&self) -> MutexGuard<'_, Targets> {
        self.targets.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn tcp_listener(addr: SocketAddr, backlog: i32) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(socket2::Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog)?;
    Ok(socket.into())
}

fn udp_socket(addr: SocketAddr) -> io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(socket2::Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    crate::sys::socket::enable_dst_info(&socket, addr.is_ipv6())?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}
