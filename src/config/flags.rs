//! Command-line flags, with kube-proxy's names. Values are kept as given
//! (strings, options) so that [`super::Config::build`] can tell a flag the
//! user set from a default, and let flags override the config file.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// kproxy: a drop-in replacement for kube-proxy.
///
/// Run with kube-proxy's flags to program this node, or use `kproxy render`
/// to see what would be programmed without touching anything.
#[derive(Debug, Parser)]
#[command(name = "kproxy", version, about, long_about = None)]
pub struct Cli {
    #[command(flatten)]
    pub flags: ProxyFlags,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands. With none, kproxy runs as the node proxy.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print what would be programmed, without root and without changing anything.
    Render(RenderArgs),
}

/// The proxy's flags, shared by the daemon and `render`.
#[derive(Clone, Debug, Default, Args)]
pub struct ProxyFlags {
    /// Path to a KubeProxyConfiguration file (kubeproxy.config.k8s.io/v1alpha1); flags override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Which proxy mode to use: iptables, nftables, ipvs or userspace [default: iptables].
    #[arg(long, value_name = "MODE")]
    pub proxy_mode: Option<String>,

    /// Path to a kubeconfig file with authorization and API server location.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,

    /// The address of the Kubernetes API server (overrides any value in kubeconfig).
    #[arg(long, value_name = "URL")]
    pub master: Option<String>,

    /// The node name to use instead of the host name.
    #[arg(long, value_name = "NAME")]
    pub hostname_override: Option<String>,

    /// The CIDR range(s) of pods in the cluster, comma-separated for dual-stack.
    /// Traffic to a service from outside these ranges is masqueraded.
    #[arg(long, value_name = "CIDRS")]
    pub cluster_cidr: Option<String>,

    /// Comma-separated CIDRs of node addresses that accept NodePort traffic, "primary", or
    /// "localhost" (127.0.0.0/8 and ::1; in nftables mode with the
    /// KubeProxyNFTablesLocalhostNodePorts gate, TCP NodePorts on 127.0.0.1 and ::1 are
    /// forwarded in userspace) [default: all local addresses].
    #[arg(long, value_name = "CIDRS")]
    pub nodeport_addresses: Option<String>,

    /// Feature gates, comma-separated Name=true|false, e.g.
    /// KubeProxyNFTablesLocalhostNodePorts=true (alpha, off by default).
    #[arg(long, value_name = "GATES")]
    pub feature_gates: Option<String>,

    /// SNAT all traffic sent via service cluster IPs.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub masquerade_all: Option<bool>,

    /// The maximum interval between full syncs of the proxy rules, e.g. 30s [default: 30s].
    // A leading '-' is a (negative) value, as kube-proxy's flag parser takes it.
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub sync_period: Option<String>,

    /// The minimum interval between rule syncs, e.g. 1s [default: 1s].
    // A leading '-' is a (negative) value, as kube-proxy's flag parser takes it.
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub min_sync_period: Option<String>,

    /// The IPVS scheduler of the ipvs mode: rr, wrr, lc, wlc, lblc, lblcr, sh, dh, sed, nq or mh
    /// [default: rr].
    #[arg(long, value_name = "NAME")]
    pub ipvs_scheduler: Option<String>,

    /// Comma-separated CIDRs whose IPVS virtual servers the ipvs mode never touches.
    #[arg(long, value_name = "CIDRS")]
    pub ipvs_exclude_cidrs: Option<String>,

    /// ipvs mode: set arp_ignore=1 and arp_announce=2, so the node answers ARP only for its
    /// own interfaces' addresses.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    pub ipvs_strict_arp: Option<bool>,

    /// ipvs mode: idle timeout of TCP connections, e.g. 900s [default: 0, the kernel's].
    #[arg(long, value_name = "DURATION")]
    pub ipvs_tcp_timeout: Option<String>,

    /// ipvs mode: timeout of TCP connections after FIN, e.g. 120s [default: 0, the kernel's].
    #[arg(long, value_name = "DURATION")]
    pub ipvs_tcpfin_timeout: Option<String>,

    /// ipvs mode: timeout of UDP flows, e.g. 300s [default: 0, the kernel's].
    #[arg(long, value_name = "DURATION")]
    pub ipvs_udp_timeout: Option<String>,

    /// How long an idle UDP session is kept in userspace mode, e.g. 250ms [default: 250ms].
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub udp_timeout: Option<String>,

    /// The address:port to serve /metrics on [default: 127.0.0.1:10249].
    #[arg(long, value_name = "ADDR")]
    pub metrics_bind_address: Option<String>,

    /// The address:port to serve /healthz and /livez on [default: 0.0.0.0:10256].
    #[arg(long, value_name = "ADDR")]
    pub healthz_bind_address: Option<String>,

    /// Remove every rule kproxy (or kube-proxy) installed, then exit.
    #[arg(long)]
    pub cleanup: bool,

    /// Log verbosity, as kube-proxy's -v (0: info, 2-4: debug, 5+: trace).
    #[arg(short = 'v', long = "v", value_name = "LEVEL")]
    pub verbosity: Option<u8>,

    /// Log format [default: text].
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub logging_format: Option<LogFormat>,
}

/// `kproxy render` arguments.
#[derive(Debug, Args)]
pub struct RenderArgs {
    #[command(flatten)]
    pub flags: ProxyFlags,

    /// Read Services, EndpointSlices and optionally a Node from the YAML files in DIR
    /// (or one file), instead of the API server.
    #[arg(long, value_name = "DIR")]
    pub manifests: Option<PathBuf>,

    /// The node name to render for (an alias of --hostname-override).
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,

    /// Node IP address(es), comma-separated, when no Node object gives them.
    #[arg(long, value_name = "IPS")]
    pub node_ip: Option<String>,

    /// What to print: the mode's rules, or a table of the service map.
    #[arg(long, value_enum, default_value_t = RenderFormat::Rules)]
    pub format: RenderFormat,
}

/// How `render` prints.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RenderFormat {
    /// The exact input kproxy would give the kernel in this mode.
    Rules,
    /// A readable table: service port, VIPs, selected endpoints per policy.
    Table,
}

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}
