//! userspace mode's relay metrics (`kproxy_userspace_*`, kproxy's own:
//! kube-proxy has no equivalent), read from the backend's [`RelayBoard`]
//! at scrape time.
//!
//! ```text
//!   UserspaceBackend ──track──▶ RelayBoard ◀──totals()── RelayCollector ──▶ /metrics
//! ```

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use crate::backend::userspace::RelayBoard;

/// Encodes the relays' totals.
#[derive(Debug)]
pub struct RelayCollector {
    board: RelayBoard,
}

// === impl RelayCollector ===

impl RelayCollector {
    pub fn new(board: RelayBoard) -> Self {
        Self { board }
    }
}

impl Collector for RelayCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let t = self.board.totals();
        let s = t.stats;
        // Counters: prometheus-client adds `_total`.
        for (name, help, value) in [
            (
                "kproxy_userspace_connections_accepted",
                "TCP connections accepted by the relay",
                s.accepted,
            ),
            (
                "kproxy_userspace_connections_refused_at_limit",
                "TCP connections reset and UDP sessions refused because their service port was at its concurrency bound",
                s.refused_at_limit,
            ),
            (
                "kproxy_userspace_connect_failures",
                "Connect attempts to an endpoint that failed or timed out (the relay then tries the next)",
                s.failed_connects,
            ),
            (
                "kproxy_userspace_connections_unreachable",
                "TCP connections reset because every endpoint tried failed",
                s.unreachable,
            ),
            (
                "kproxy_userspace_no_endpoints",
                "TCP connections reset and UDP datagrams dropped because the service port had no endpoints",
                s.no_endpoints,
            ),
            (
                "kproxy_userspace_connections_idle_closed",
                "TCP connections closed by the idle timeout",
                s.idle_closed,
            ),
            (
                "kproxy_userspace_bytes_to_endpoints",
                "Payload bytes relayed from clients to endpoints (TCP and UDP)",
                s.bytes_to_endpoints,
            ),
            (
                "kproxy_userspace_bytes_to_clients",
                "Payload bytes relayed from endpoints to clients (TCP and UDP)",
                s.bytes_to_clients,
            ),
            (
                "kproxy_userspace_udp_sessions",
                "UDP sessions opened by the relay",
                s.udp_sessions,
            ),
            (
                "kproxy_userspace_udp_datagrams_dropped",
                "UDP datagrams the relay could not forward",
                s.datagrams_dropped,
            ),
        ] {
            let c = ConstCounter::new(value);
            c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)?;
        }
        for (name, help, value) in [
            (
                "kproxy_userspace_connections_active",
                "TCP connections being connected or relayed now",
                s.active,
            ),
            (
                "kproxy_userspace_udp_sessions_active",
                "UDP sessions open now",
                s.udp_sessions_active,
            ),
            (
                "kproxy_userspace_relays",
                "Relays (listening sockets) open, or closed with connections still running",
                t.relays as u64,
            ),
            (
                "kproxy_userspace_sctp_ports_not_relayed",
                "SCTP service ports in the desired state, which userspace mode does not relay",
                t.sctp_not_relayed as u64,
            ),
        ] {
            let g = ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX));
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        Ok(())
    }
}
