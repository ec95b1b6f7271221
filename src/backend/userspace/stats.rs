//! Counters of one relay (one listening socket), as plain atomics the
//! metrics module can read with [`RelayStats::snapshot`]. Counters only
//! grow; `active` and `udp_sessions_active` are gauges.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters of one relay.
#[derive(Debug, Default)]
pub struct RelayStats {
    accepted: AtomicU64,
    active: AtomicU64,
    refused_at_limit: AtomicU64,
    failed_connects: AtomicU64,
    unreachable: AtomicU64,
    no_endpoints: AtomicU64,
    idle_closed: AtomicU64,
    bytes_to_endpoints: AtomicU64,
    bytes_to_clients: AtomicU64,
    udp_sessions: AtomicU64,
    udp_sessions_active: AtomicU64,
    datagrams_dropped: AtomicU64,
}

/// A copy of [`RelayStats`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// TCP connections accepted (including those then refused or reset).
    pub accepted: u64,
    /// TCP connections being connected or relayed now.
    pub active: u64,
    /// Connections (TCP) or new UDP sessions refused because the port was
    /// at its concurrency bound.
    pub refused_at_limit: u64,
    /// Connect attempts to an endpoint that failed or timed out (one
    /// connection may count several, one per endpoint tried).
    pub failed_connects: u64,
    /// TCP connections reset because every endpoint tried failed.
    pub unreachable: u64,
    /// Connections reset, or datagrams dropped, because the target set had
    /// no endpoints.
    pub no_endpoints: u64,
    /// TCP connections closed by the idle timeout.
    pub idle_closed: u64,
    /// Payload bytes relayed from clients to endpoints (TCP and UDP).
    pub bytes_to_endpoints: u64,
    /// Payload bytes relayed from endpoints to clients (TCP and UDP).
    pub bytes_to_clients: u64,
    /// UDP sessions opened.
    pub udp_sessions: u64,
    /// UDP sessions open now.
    pub udp_sessions_active: u64,
    /// Datagrams that could not be forwarded (socket buffer full, send error).
    pub datagrams_dropped: u64,
}

/// Which gauge an [`ActiveGuard`] holds up.
#[derive(Clone, Copy, Debug)]
pub(super) enum Gauge {
    Connections,
    UdpSessions,
}

/// Increments a gauge for as long as it lives.
#[derive(Debug)]
pub(super) struct ActiveGuard {
    stats: Arc<RelayStats>,
    gauge: Gauge,
}

// === impl RelayStats ===

impl RelayStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            accepted: get(&self.accepted),
            active: get(&self.active),
            refused_at_limit: get(&self.refused_at_limit),
            failed_connects: get(&self.failed_connects),
            unreachable: get(&self.unreachable),
            no_endpoints: get(&self.no_endpoints),
            idle_closed: get(&self.idle_closed),
            bytes_to_endpoints: get(&self.bytes_to_endpoints),
            bytes_to_clients: get(&self.bytes_to_clients),
            udp_sessions: get(&self.udp_sessions),
            udp_sessions_active: get(&self.udp_sessions_active),
            datagrams_dropped: get(&self.datagrams_dropped),
        }
    }

    pub(super) fn accepted(&self) {
        inc(&self.accepted, 1);
    }
    pub(super) fn refused_at_limit(&self) {
        inc(&self.refused_at_limit, 1);
    }
    pub(super) fn failed_connect(&self) {
        inc(&self.failed_connects, 1);
    }
    pub(super) fn unreachable(&self) {
        inc(&self.unreachable, 1);
    }
    pub(super) fn no_endpoints(&self) {
        inc(&self.no_endpoints, 1);
    }
    pub(super) fn idle_closed(&self) {
        inc(&self.idle_closed, 1);
    }
    pub(super) fn to_endpoints(&self, n: usize) {
        inc(&self.bytes_to_endpoints, n as u64);
    }
    pub(super) fn to_clients(&self, n: usize) {
        inc(&self.bytes_to_clients, n as u64);
    }
    pub(super) fn datagram_dropped(&self) {
        inc(&self.datagrams_dropped, 1);
    }

    /// Counts a connection (or UDP session) as open until the guard drops.
    pub(super) fn open(self: &Arc<Self>, gauge: Gauge) -> ActiveGuard {
        match gauge {
            Gauge::Connections => inc(&self.active, 1),
            Gauge::UdpSessions => {
                inc(&self.udp_sessions, 1);
                inc(&self.udp_sessions_active, 1);
            }
        }
        ActiveGuard {
            stats: self.clone(),
            gauge,
        }
    }
}

fn inc(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

// === impl ActiveGuard ===

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        let gauge = match self.gauge {
            Gauge::Connections => &self.stats.active,
            Gauge::UdpSessions => &self.stats.udp_sessions_active,
        };
        gauge.fetch_sub(1, Ordering::Relaxed);
    }
}
