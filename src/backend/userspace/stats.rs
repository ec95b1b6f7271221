//! Counters of one relay (one listening socket), as plain atomics the
//! metrics module can read with [`RelayStats::snapshot`]. Counters only
//! grow; `active` and `udp_sessions_active` are gauges.
//!
//! ```text
//!   UserspaceBackend ──track(relay stats)──▶ RelayBoard ◀──totals()── metrics (at scrape time)
//! ```
//!
//! A [`RelayBoard`] is the handle the backend is given (it never sees the
//! metrics module): it sums every relay's counters, those of closed relays
//! included, so the totals only grow.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

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

/// The counters of every relay the backend opened, and the service ports
/// it could not relay. Cheap to clone; all clones share one board.
#[derive(Clone, Debug, Default)]
pub struct RelayBoard {
    inner: Arc<Mutex<Board>>,
}

#[derive(Debug, Default)]
struct Board {
    /// Relays still held by someone besides the board (the backend, or a
    /// connection still running after its listener closed).
    live: Vec<Arc<RelayStats>>,
    /// Counters of relays gone for good (gauges are 0 there).
    retired: StatsSnapshot,
    sctp_not_relayed: usize,
}

/// Every relay's counters added up, for the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayTotals {
    /// Counters summed over every relay ever opened; gauges over the live ones.
    pub stats: StatsSnapshot,
    /// Relays (listening sockets) open or still relaying.
    pub relays: usize,
    /// SCTP service ports in the desired state, which are not relayed.
    pub sctp_not_relayed: usize,
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

// === impl RelayBoard ===

impl RelayBoard {
    /// Counts `stats` from now on (and after its relay closes).
    pub fn track(&self, stats: Arc<RelayStats>) {
        self.lock().live.push(stats);
    }

    /// The SCTP service ports the last sync skipped.
    pub fn set_sctp_not_relayed(&self, ports: usize) {
        self.lock().sctp_not_relayed = ports;
    }

    /// The totals now; folds relays nobody holds any more into the
    /// retired counters.
    pub fn totals(&self) -> RelayTotals {
        let mut board = self.lock();
        let Board {
            live,
            retired,
            sctp_not_relayed,
        } = &mut *board;
        live.retain(|s| {
            let gone = Arc::strong_count(s) == 1;
            if gone {
                retired.add(&s.snapshot());
            }
            !gone
        });
        let mut stats = *retired;
        for s in live.iter() {
            stats.add(&s.snapshot());
        }
        RelayTotals {
            stats,
            relays: live.len(),
            sctp_not_relayed: *sctp_not_relayed,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Board> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

// === impl StatsSnapshot ===

impl StatsSnapshot {
    /// Adds `o`'s counters and gauges to these.
    fn add(&mut self, o: &StatsSnapshot) {
        self.accepted += o.accepted;
        self.active += o.active;
        self.refused_at_limit += o.refused_at_limit;
        self.failed_connects += o.failed_connects;
        self.unreachable += o.unreachable;
        self.no_endpoints += o.no_endpoints;
        self.idle_closed += o.idle_closed;
        self.bytes_to_endpoints += o.bytes_to_endpoints;
        self.bytes_to_clients += o.bytes_to_clients;
        self.udp_sessions += o.udp_sessions;
        self.udp_sessions_active += o.udp_sessions_active;
        self.datagrams_dropped += o.datagrams_dropped;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn board_totals_keep_the_counts_of_closed_relays() {
        let board = RelayBoard::default();
        let (a, b) = (Arc::new(RelayStats::default()), Arc::new(RelayStats::default()));
        board.track(a.clone());
        board.track(b.clone());
        a.accepted();
        a.to_endpoints(10);
        let guard = b.open(Gauge::Connections);
        b.accepted();
        board.set_sctp_not_relayed(1);
        let t = board.totals();
        assert_eq!(
            (t.stats.accepted, t.stats.active, t.stats.bytes_to_endpoints),
            (2, 1, 10)
        );
        assert_eq!((t.relays, t.sctp_not_relayed), (2, 1));
        drop(guard);
        drop(a);
        let t = board.totals();
        assert_eq!(
            (t.stats.accepted, t.stats.active, t.stats.bytes_to_endpoints),
            (2, 0, 10)
        );
        assert_eq!(t.relays, 1, "the closed relay no longer counts as open");
    }
}
