//! Prometheus metrics with kube-proxy's names, types, labels and buckets, so
//! existing dashboards, alerts and clusterloader2 queries work unchanged.
//!
//! ```text
//!  driver / watch / health ──(Metrics handle: observe_*)──▶ Registry ──▶ GET /metrics
//! ```
//!
//! There are no statics: a [`Metrics`] handle is created once and passed to
//! whoever observes. Two kube-proxy gauges end in `_total`
//! (`…_no_local_endpoints_total`, `…_iptables_total`); they keep their names
//! for compatibility and are declared `untyped` in the exposition, since
//! Prometheus' linter reserves that suffix for counters (queries and
//! dashboards see the same names and values).

pub mod process;
pub mod userspace;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::backend::userspace::RelayBoard;
use crate::backend::{SyncKind, SyncStats};
use crate::config::ProxyMode;
use crate::model::{IpFamily, Protocol};

/// `ip_family` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FamilyLabel {
    pub ip_family: String,
}

/// `ip_family` + `table` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabel {
    pub ip_family: String,
    pub table: String,
}

/// `traffic_policy` (+ `ip_family`) labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabel {
    pub ip_family: String,
    pub traffic_policy: String,
}

/// `code` label (HTTP status).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CodeLabel {
    pub code: String,
}

/// `kind` label (API object kind).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

type GaugeF = Gauge<f64, AtomicU64>;

/// `ip_family` + `protocol` labels.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FamilyProtocolLabel {
    pub ip_family: String,
    pub protocol: String,
}

/// Packets refused on localhost NodePorts, as (family, protocol, packets),
/// read when `/metrics` is scraped: where they are counted (nft named
/// counters) is the wiring's business, not this module's.
pub type RejectedPacketsSource = Arc<dyn Fn() -> Vec<(IpFamily, Protocol, u64)> + Send + Sync>;

/// Encodes the rejected-packet counters at scrape time.
struct RejectedPacketsCollector {
    source: RejectedPacketsSource,
}

/// The metric handles.
struct Inner {
    sync_duration: Family<FamilyLabel, Histogram>,
    sync_full_duration: Family<FamilyLabel, Histogram>,
    sync_partial_duration: Family<FamilyLabel, Histogram>,
    programming_latency: Family<FamilyLabel, Histogram>,
    last_timestamp: Family<FamilyLabel, GaugeF>,
    last_queued_timestamp: Family<FamilyLabel, GaugeF>,
    endpoint_changes_pending: Gauge,
    endpoint_changes_total: Counter,
    service_changes_pending: Gauge,
    service_changes_total: Counter,
    no_local_endpoints: Family<PolicyLabel, Gauge>,
    iptables_restore_failures: Family<FamilyLabel, Counter>,
    iptables_partial_restore_failures: Family<FamilyLabel, Counter>,
    iptables_total: Family<TableLabel, Gauge>,
    iptables_last: Family<TableLabel, Gauge>,
    nftables_sync_failures: Family<FamilyLabel, Counter>,
    localhost_listeners: Family<FamilyLabel, Gauge>,
    localhost_listener_failures: Family<FamilyLabel, Counter>,
    healthz: Family<CodeLabel, Counter>,
    livez: Family<CodeLabel, Counter>,
    conntrack_duration: Family<FamilyLabel, Histogram>,
    conntrack_deleted: Family<FamilyLabel, Counter>,
    object_errors: Family<KindLabel, Counter>,
    watch_errors: Family<KindLabel, Counter>,
}

/// A cheap, cloneable handle to kproxy's metrics.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    inner: Arc<Inner>,
    mode: ProxyMode,
    relay_board: RelayBoard,
}

// === impl RejectedPacketsCollector ===

impl std::fmt::Debug for RejectedPacketsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RejectedPacketsCollector")
    }
}

impl prometheus_client::collector::Collector for RejectedPacketsCollector {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        let counts = (self.source)();
        let mut family = encoder.encode_descriptor(
            "kubeproxy_nftables_localhost_nodeport_rejected_packets",
            "Number of packets rejected on localhost NodePorts (UDP and SCTP are not forwarded)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (ip_family, protocol, packets) in counts {
            let labels = FamilyProtocolLabel {
                ip_family: ip_family.as_str().to_string(),
                protocol: protocol.as_api().to_string(),
            };
            ConstCounter::new(packets).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// kube-proxy's sync buckets: 1 ms doubling, 15 buckets.
fn sync_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// kube-proxy's network-programming buckets: 0.25 s … 300 s.
fn programming_buckets() -> Histogram {
    let mut b = vec![0.25, 0.5];
    b.extend((1..=59).map(f64::from));
    b.extend((0..12).map(|i| 60.0 + 5.0 * f64::from(i)));
    b.extend((0..7).map(|i| 120.0 + 30.0 * f64::from(i)));
    Histogram::new(b)
}

fn fam(f: IpFamily) -> FamilyLabel {
    FamilyLabel {
        ip_family: f.as_str().to_string(),
    }
}

// === impl Metrics ===

impl Metrics {
    /// Creates and registers every metric.
    pub fn new(mode: ProxyMode) -> Self {
        Self::build(mode, None)
    }

    /// As [`Metrics::new`], plus
    /// `kubeproxy_nftables_localhost_nodeport_rejected_packets_total{ip_family,protocol}`
    /// read from `source` at each scrape (KEP-6032, nftables mode).
    pub fn with_localhost_nodeport_rejections(mode: ProxyMode, source: RejectedPacketsSource) -> Self {
        Self::build(mode, Some(source))
    }

    fn build(mode: ProxyMode, rejected: Option<RejectedPacketsSource>) -> Self {
        let mut r = Registry::default();
        let sync_duration = Family::new_with_constructor(sync_buckets as fn() -> Histogram);
        let sync_full_duration = Family::new_with_constructor(sync_buckets as fn() -> Histogram);
        let sync_partial_duration = Family::new_with_constructor(sync_buckets as fn() -> Histogram);
        let programming_latency = Family::new_with_constructor(programming_buckets as fn() -> Histogram);
        let conntrack_duration = Family::new_with_constructor(sync_buckets as fn() -> Histogram);
        let inner = Inner {
            sync_duration,
            sync_full_duration,
            sync_partial_duration,
            programming_latency,
            last_timestamp: Family::default(),
            last_queued_timestamp: Family::default(),
            endpoint_changes_pending: Gauge::default(),
            endpoint_changes_total: Counter::default(),
            service_changes_pending: Gauge::default(),
            service_changes_total: Counter::default(),
            no_local_endpoints: Family::default(),
            iptables_restore_failures: Family::default(),
            iptables_partial_restore_failures: Family::default(),
            iptables_total: Family::default(),
            iptables_last: Family::default(),
            nftables_sync_failures: Family::default(),
            localhost_listeners: Family::default(),
            localhost_listener_failures: Family::default(),
            healthz: Family::default(),
            livez: Family::default(),
            conntrack_duration,
            conntrack_deleted: Family::default(),
            object_errors: Family::default(),
            watch_errors: Family::default(),
        };
        let i = &inner;
        r.register(
            "kubeproxy_sync_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds",
            i.sync_duration.clone(),
        );
        r.register(
            "kubeproxy_sync_full_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for full resyncs",
            i.sync_full_duration.clone(),
        );
        r.register(
            "kubeproxy_sync_partial_proxy_rules_duration_seconds",
            "SyncProxyRules latency in seconds for partial resyncs",
            i.sync_partial_duration.clone(),
        );
        r.register(
            "kubeproxy_network_programming_duration_seconds",
            "In Cluster Network Programming Latency in seconds",
            i.programming_latency.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced",
            i.last_timestamp.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds",
            "The last time a sync of proxy rules was queued",
            i.last_queued_timestamp.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_endpoint_changes_pending",
            "Pending proxy rules Endpoint changes",
            i.endpoint_changes_pending.clone(),
        );
        // prometheus-client appends `_total` to counters.
        r.register(
            "kubeproxy_sync_proxy_rules_endpoint_changes",
            "Cumulative proxy rules Endpoint changes",
            i.endpoint_changes_total.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_service_changes_pending",
            "Pending proxy rules Service changes",
            i.service_changes_pending.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_service_changes",
            "Cumulative proxy rules Service changes",
            i.service_changes_total.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total",
            "Number of services with a Local traffic policy and no endpoints",
            i.no_local_endpoints.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_iptables_restore_failures",
            "Cumulative proxy iptables restore failures",
            i.iptables_restore_failures.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures",
            "Cumulative proxy iptables partial restore failures",
            i.iptables_partial_restore_failures.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_iptables_total",
            "Total number of iptables rules owned by kube-proxy",
            i.iptables_total.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_iptables_last",
            "Number of iptables rules written by kube-proxy in last sync",
            i.iptables_last.clone(),
        );
        r.register(
            "kubeproxy_sync_proxy_rules_nftables_sync_failures",
            "Cumulative proxy nftables sync failures",
            i.nftables_sync_failures.clone(),
        );
        r.register(
            "kubeproxy_proxy_healthz",
            "Cumulative proxy healthz HTTP status",
            i.healthz.clone(),
        );
        r.register(
            "kubeproxy_proxy_livez",
            "Cumulative proxy livez HTTP status",
            i.livez.clone(),
        );
        r.register(
            "kubeproxy_conntrack_reconciler_sync_duration_seconds",
            "ReconcileConntrackFlowsLatency latency in seconds",
            i.conntrack_duration.clone(),
        );
        r.register(
            "kubeproxy_conntrack_reconciler_deleted_entries",
            "Cumulative conntrack flows deleted by conntrack reconciler",
            i.conntrack_deleted.clone(),
        );
        r.register(
            "kproxy_object_errors",
            "API objects (or parts of them) skipped because they are malformed",
            i.object_errors.clone(),
        );
        r.register(
            "kproxy_watch_errors",
            "Watch stream errors, retried with backoff",
            i.watch_errors.clone(),
        );
        r.register_collector(Box::new(process::ProcessCollector::new()));
        if let Some(source) = rejected {
            r.register(
                "kubeproxy_nftables_localhost_nodeport_listeners",
                "Number of localhost NodePort listeners open",
                i.localhost_listeners.clone(),
            );
            r.register(
                "kubeproxy_nftables_localhost_nodeport_listener_creation_failures",
                "Localhost NodePort listeners that could not be opened (retried at the next sync)",
                i.localhost_listener_failures.clone(),
            );
            r.register_collector(Box::new(RejectedPacketsCollector { source }));
        }
        let relay_board = RelayBoard::default();
        if mode == ProxyMode::Userspace {
            r.register_collector(Box::new(userspace::RelayCollector::new(relay_board.clone())));
        }
        Self {
            registry: Arc::new(r),
            inner: Arc::new(inner),
            mode,
            relay_board,
        }
    }

    /// The board userspace mode's backend reports its relays to; its
    /// totals are exported as `kproxy_userspace_*` in userspace mode.
    pub fn relay_board(&self) -> RelayBoard {
        self.relay_board.clone()
    }

    /// The Prometheus text exposition (format 0.0.4), what kube-proxy serves.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        to_prometheus_text(&out)
    }

    /// A sync succeeded; `elapsed` is its whole duration.
    pub fn sync_done(&self, kind: SyncKind, stats: &SyncStats, elapsed: Duration, now_unix: f64) {
        let i = &self.inner;
        let per_family: Vec<(IpFamily, Duration)> = if stats.families.is_empty() {
            vec![(IpFamily::V4, elapsed)]
        } else {
            stats.families.iter().map(|f| (f.family, f.elapsed)).collect()
        };
        for (family, took) in per_family {
            let l = fam(family);
            let secs = took.as_secs_f64();
            i.sync_duration.get_or_create(&l).observe(secs);
            match kind {
                SyncKind::Full => i.sync_full_duration.get_or_create(&l).observe(secs),
                SyncKind::Partial => i.sync_partial_duration.get_or_create(&l).observe(secs),
            }
            i.last_timestamp.get_or_create(&l).set(now_unix);
        }
        for f in &stats.families {
            let ip_family = f.family.as_str().to_string();
            for (policy, n) in [("internal", f.no_local_internal), ("external", f.no_local_external)] {
                i.no_local_endpoints
                    .get_or_create(&PolicyLabel {
                        ip_family: ip_family.clone(),
                        traffic_policy: policy.to_string(),
                    })
                    .set(gauge_value(n));
            }
            if let Some(n) = f.localhost_listeners {
                i.localhost_listeners.get_or_create(&fam(f.family)).set(gauge_value(n));
            }
            if f.localhost_bind_failures > 0 {
                i.localhost_listener_failures
                    .get_or_create(&fam(f.family))
                    .inc_by(f.localhost_bind_failures as u64);
            }
            if self.mode == ProxyMode::Iptables {
                for (table, n) in &f.rules_total {
                    let l = TableLabel {
                        ip_family: ip_family.clone(),
                        table: table.to_string(),
                    };
                    i.iptables_total.get_or_create(&l).set(gauge_value(*n));
                }
                for (table, n) in &f.rules_last {
                    let l = TableLabel {
                        ip_family: ip_family.clone(),
                        table: table.to_string(),
                    };
                    i.iptables_last.get_or_create(&l).set(gauge_value(*n));
                }
            }
        }
    }

    /// A sync failed.
    pub fn sync_failed(&self, kind: SyncKind, family: IpFamily) {
        let l = fam(family);
        let i = &self.inner;
        match self.mode {
            ProxyMode::Iptables => {
                i.iptables_restore_failures.get_or_create(&l).inc();
                if kind == SyncKind::Partial {
                    i.iptables_partial_restore_failures.get_or_create(&l).inc();
                }
            }
            ProxyMode::Nftables => {
                i.nftables_sync_failures.get_or_create(&l).inc();
            }
            // kube-proxy's ipvs mode counts its failed iptables-restore here;
            // kproxy counts every failed ipvs-mode sync (netlink included).
            ProxyMode::Ipvs => {
                i.iptables_restore_failures.get_or_create(&l).inc();
            }
            ProxyMode::Userspace => {}
        }
    }

    /// Changes are waiting for a sync (as of `now_unix`).
    pub fn queued(&self, now_unix: f64) {
        for f in IpFamily::ALL {
            self.inner.last_queued_timestamp.get_or_create(&fam(f)).set(now_unix);
        }
    }

    /// Pending changes now (services, endpoints).
    pub fn pending(&self, services: usize, endpoints: usize) {
        self.inner.service_changes_pending.set(gauge_value(services));
        self.inner.endpoint_changes_pending.set(gauge_value(endpoints));
    }

    /// Changes that reached the kernel.
    pub fn changes_synced(&self, services: usize, endpoints: usize) {
        self.inner.service_changes_total.inc_by(services as u64);
        self.inner.endpoint_changes_total.inc_by(endpoints as u64);
    }

    /// Time from an EndpointSlice change's trigger to its programming.
    pub fn network_programming(&self, family: IpFamily, seconds: f64) {
        self.inner
            .programming_latency
            .get_or_create(&fam(family))
            .observe(seconds);
    }

    pub fn healthz(&self, code: u16) {
        self.inner
            .healthz
            .get_or_create(&CodeLabel { code: code.to_string() })
            .inc();
    }

    pub fn livez(&self, code: u16) {
        self.inner
            .livez
            .get_or_create(&CodeLabel { code: code.to_string() })
            .inc();
    }

    /// A conntrack cleanup run.
    pub fn conntrack(&self, family: IpFamily, took: Duration, deleted: usize) {
        let l = fam(family);
        self.inner
            .conntrack_duration
            .get_or_create(&l)
            .observe(took.as_secs_f64());
        self.inner.conntrack_deleted.get_or_create(&l).inc_by(deleted as u64);
    }

    pub fn object_error(&self, kind: &str) {
        self.inner
            .object_errors
            .get_or_create(&KindLabel { kind: kind.to_string() })
            .inc();
    }

    pub fn watch_error(&self, kind: &str) {
        self.inner
            .watch_errors
            .get_or_create(&KindLabel { kind: kind.to_string() })
            .inc();
    }
}

impl crate::sync::SyncObserver for Metrics {
    fn pending(&self, services: usize, endpoints: usize) {
        Metrics::pending(self, services, endpoints);
    }
    fn sync_done(&self, kind: SyncKind, stats: &SyncStats, elapsed: Duration, now_unix: f64) {
        Metrics::sync_done(self, kind, stats, elapsed, now_unix);
    }
    fn sync_failed(&self, kind: SyncKind, family: IpFamily) {
        Metrics::sync_failed(self, kind, family);
    }
    fn changes_synced(&self, services: usize, endpoints: usize) {
        Metrics::changes_synced(self, services, endpoints);
    }
    fn network_programming(&self, family: IpFamily, seconds: f64) {
        Metrics::network_programming(self, family, seconds);
    }
    fn conntrack(&self, family: IpFamily, took: Duration, deleted: usize) {
        Metrics::conntrack(self, family, took, deleted);
    }
}

impl crate::watch::WatchObserver for Metrics {
    fn object_problem(&self, kind: &'static str) {
        self.object_error(kind);
    }
    fn watch_error(&self, kind: &'static str) {
        Metrics::watch_error(self, kind);
    }
}

/// Converts prometheus-client's OpenMetrics text to the Prometheus text
/// format: counter families are named with their `_total` suffix (as their
/// samples are), gauges named `…_total` become `untyped`, and the `# EOF` /
/// `# UNIT` lines go.
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let lines: Vec<&str> = openmetrics.lines().collect();
    let counters: std::collections::HashSet<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in lines {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{prefix}{name}_total {tail}"))
        });
        let retyped = line
            .strip_prefix("# TYPE ")
            .and_then(|rest| rest.strip_suffix(" gauge"))
            .filter(|name| name.ends_with("_total"))
            .map(|name| format!("# TYPE {name} untyped"));
        match renamed.or(retyped) {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn localhost_nodeport_rejections_are_read_at_scrape_time() {
        let packets = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let source: RejectedPacketsSource = {
            let packets = packets.clone();
            Arc::new(move || {
                let n = packets.load(std::sync::atomic::Ordering::Relaxed);
                vec![(IpFamily::V4, Protocol::Udp, n), (IpFamily::V6, Protocol::Sctp, 0)]
            })
        };
        let m = Metrics::with_localhost_nodeport_rejections(ProxyMode::Nftables, source);
        let line = "kubeproxy_nftables_localhost_nodeport_rejected_packets_total{ip_family=\"IPv4\",protocol=\"UDP\"}";
        assert!(m.encode().contains(&format!("{line} 0")), "{}", m.encode());
        packets.store(7, std::sync::atomic::Ordering::Relaxed);
        let text = m.encode();
        assert!(text.contains(&format!("{line} 7")), "{text}");
        assert!(
            text.contains("# TYPE kubeproxy_nftables_localhost_nodeport_rejected_packets_total counter"),
            "{text}"
        );
        assert!(
            !Metrics::new(ProxyMode::Nftables)
                .encode()
                .contains("localhost_nodeport")
        );
    }

    #[test]
    fn exposition_has_kube_proxy_names_and_buckets() {
        let m = Metrics::new(ProxyMode::Iptables);
        let stats = SyncStats {
            families: vec![crate::backend::FamilyStats {
                family: IpFamily::V4,
                elapsed: Duration::from_millis(3),
                rules_total: vec![("nat", 10)],
                rules_last: vec![("nat", 4)],
                no_local_internal: 1,
                no_local_external: 0,
                ..Default::default()
            }],
            ..SyncStats::default()
        };
        m.sync_done(SyncKind::Full, &stats, Duration::from_millis(3), 1.0);
        m.sync_failed(SyncKind::Partial, IpFamily::V4);
        m.changes_synced(1, 2);
        let text = m.encode();
        for want in [
            "kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"0.001\",ip_family=\"IPv4\"}",
            "kubeproxy_sync_proxy_rules_duration_seconds_bucket{le=\"8.192\",ip_family=\"IPv4\"}",
            "kubeproxy_sync_full_proxy_rules_duration_seconds_count{ip_family=\"IPv4\"} 1",
            "kubeproxy_sync_proxy_rules_iptables_total{ip_family=\"IPv4\",table=\"nat\"} 10",
            "kubeproxy_sync_proxy_rules_iptables_last{ip_family=\"IPv4\",table=\"nat\"} 4",
            "kubeproxy_sync_proxy_rules_no_local_endpoints_total{ip_family=\"IPv4\",traffic_policy=\"internal\"} 1",
            "kubeproxy_sync_proxy_rules_iptables_restore_failures_total{ip_family=\"IPv4\"} 1",
            "kubeproxy_sync_proxy_rules_iptables_partial_restore_failures_total{ip_family=\"IPv4\"} 1",
            "kubeproxy_sync_proxy_rules_endpoint_changes_total 2",
            "process_start_time_seconds",
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
        // 15 buckets plus +Inf.
        let buckets = text
            .lines()
            .filter(|l| l.starts_with("kubeproxy_sync_proxy_rules_duration_seconds_bucket"))
            .count();
        assert_eq!(buckets, 16);
    }

    #[test]
    fn userspace_mode_exports_the_relay_board() {
        let m = Metrics::new(ProxyMode::Userspace);
        m.relay_board().set_sctp_not_relayed(2);
        let text = m.encode();
        for want in [
            "# TYPE kproxy_userspace_connections_accepted_total counter",
            "kproxy_userspace_connections_accepted_total 0",
            "kproxy_userspace_connections_refused_at_limit_total 0",
            "kproxy_userspace_bytes_to_endpoints_total 0",
            "# TYPE kproxy_userspace_connections_active gauge",
            "kproxy_userspace_sctp_ports_not_relayed 2",
        ] {
            assert!(text.contains(want), "missing {want} in\n{text}");
        }
        let other = Metrics::new(ProxyMode::Iptables).encode();
        assert!(!other.contains("kproxy_userspace_"), "only userspace mode exports them");
    }
}
