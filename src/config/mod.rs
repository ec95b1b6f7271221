//! Configuration: kube-proxy's flags and KubeProxyConfiguration file, merged
//! (flags win) and validated into one [`Config`].
//!
//! ```text
//!  argv ──clap──▶ ProxyFlags ─┐
//!                             ├─▶ Config::build() ──▶ Config (validated) or ConfigError (exit 2)
//!  --config FILE ──serde────▶ KubeProxyConfiguration
//! ```
//!
//! Nothing here opens a socket, calls the API server or touches the kernel.

pub mod duration;
pub mod file;
pub mod flags;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;

pub use duration::{DurationError, format_duration, parse_duration};
pub use file::{FileError, KubeProxyConfiguration};
pub use flags::{Cli, Command, LogFormat, ProxyFlags, RenderArgs, RenderFormat};

/// The datapath kproxy programs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ProxyMode {
    #[default]
    Iptables,
    Nftables,
    Ipvs,
    Userspace,
}

/// Which node addresses accept NodePort traffic.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NodePortAddresses {
    /// Every local address (kube-proxy's iptables default).
    #[default]
    All,
    /// The node's primary IPs (kube-proxy's `primary`).
    Primary,
    /// Addresses within these CIDRs.
    Cidrs(Vec<IpNet>),
}

/// The validated configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub mode: ProxyMode,
    pub kubeconfig: Option<PathBuf>,
    pub master: Option<String>,
    /// `--hostname-override` / `hostnameOverride`, if set.
    pub hostname_override: Option<String>,
    pub cluster_cidrs: Vec<IpNet>,
    pub nodeport_addresses: NodePortAddresses,
    pub masquerade_all: bool,
    /// The fwmark bit used to mark packets for masquerading (default 14 = 0x4000).
    pub masquerade_bit: u8,
    /// Whether NodePorts answer on 127.0.0.1 (iptables mode, IPv4 only).
    pub localhost_nodeports: bool,
    pub sync_period: Duration,
    pub min_sync_period: Duration,
    pub metrics_bind_address: SocketAddr,
    pub healthz_bind_address: SocketAddr,
    pub cleanup: bool,
    pub verbosity: u8,
    pub log_format: LogFormat,
    /// `conntrack.tcpBeLiberal`: when set, kube-proxy skips the INVALID drop.
    pub conntrack_tcp_be_liberal: bool,
    /// The ipvs mode's settings (`--ipvs-*`, the file's `ipvs` section).
    pub ipvs: IpvsConfig,
    /// `--udp-timeout` / `udpIdleTimeout`: how long userspace mode keeps an
    /// idle UDP session.
    pub udp_idle_timeout: Duration,
    /// `--feature-gates` / `featureGates`, as given (unknown gates are kept
    /// and ignored).
    pub feature_gates: std::collections::BTreeMap<String, bool>,
}

/// KEP-6032's alpha gate: nftables mode serves localhost NodePorts through a
/// userspace TCP forwarder when `--nodeport-addresses` names a loopback address.
pub const GATE_LOCALHOST_NODEPORTS: &str = "KubeProxyNFTablesLocalhostNodePorts";
/// The ipvs mode's settings.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IpvsConfig {
    /// The scheduler (`rr` when unset).
    pub scheduler: String,
    /// Virtual servers on these addresses are never touched.
    pub exclude_cidrs: Vec<IpNet>,
    /// `strictARP`: arp_ignore=1, arp_announce=2.
    pub strict_arp: bool,
    /// IPVS connection timeouts; zero leaves the kernel's value.
    pub tcp_timeout: Duration,
    pub tcp_fin_timeout: Duration,
    pub udp_timeout: Duration,
}

/// The schedulers kube-proxy accepts for `ipvs.scheduler`.
pub const IPVS_SCHEDULERS: &[&str] = &["rr", "wrr", "lc", "wlc", "lblc", "lblcr", "sh", "dh", "sed", "nq", "mh"];

/// A configuration error: printed as one line, exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read or parsed.
    #[error(transparent)]
    File(#[from] FileError),
    /// A value is malformed or out of range; `origin` names the flag or field.
    #[error("invalid {origin} {value:?}: {reason}")]
    Value {
        origin: String,
        value: String,
        reason: String,
    },
}

pub const DEFAULT_METRICS_BIND: &str = "127.0.0.1:10249";
pub const DEFAULT_HEALTHZ_BIND: &str = "0.0.0.0:10256";
pub const DEFAULT_SYNC_PERIOD: Duration = Duration::from_secs(30);
pub const DEFAULT_MIN_SYNC_PERIOD: Duration = Duration::from_secs(1);
pub const DEFAULT_MASQUERADE_BIT: u8 = 14;
/// kube-proxy's `--udp-timeout` default (userspace mode).
pub const DEFAULT_UDP_IDLE_TIMEOUT: Duration = Duration::from_millis(250);

// === impl ProxyMode ===

impl ProxyMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Iptables => "iptables",
            Self::Nftables => "nftables",
            Self::Ipvs => "ipvs",
            Self::Userspace => "userspace",
        }
    }
}

impl FromStr for ProxyMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "" | "iptables" => Ok(Self::Iptables),
            "nftables" => Ok(Self::Nftables),
            "ipvs" => Ok(Self::Ipvs),
            "userspace" => Ok(Self::Userspace),
            _ => Err("must be one of iptables, nftables, ipvs, userspace".to_string()),
        }
    }
}

impl fmt::Display for ProxyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl Config ===

impl Default for Config {
    fn default() -> Self {
        // Unwrap-free defaults: these literals are constants.
        Self {
            mode: ProxyMode::Iptables,
            kubeconfig: None,
            master: None,
            hostname_override: None,
            cluster_cidrs: Vec::new(),
            nodeport_addresses: NodePortAddresses::All,
            masquerade_all: false,
            masquerade_bit: DEFAULT_MASQUERADE_BIT,
            localhost_nodeports: true,
            sync_period: DEFAULT_SYNC_PERIOD,
            min_sync_period: DEFAULT_MIN_SYNC_PERIOD,
            metrics_bind_address: SocketAddr::from(([127, 0, 0, 1], 10249)),
            healthz_bind_address: SocketAddr::from(([0, 0, 0, 0], 10256)),
            cleanup: false,
            verbosity: 0,
            log_format: LogFormat::Text,
            conntrack_tcp_be_liberal: false,
            ipvs: IpvsConfig::default(),
            udp_idle_timeout: DEFAULT_UDP_IDLE_TIMEOUT,
            feature_gates: std::collections::BTreeMap::new(),
        }
    }
}

impl Config {
    /// Merges flags over the config file named by `--config` (if any) over
    /// the defaults, and validates the result.
    pub fn from_flags(flags: &ProxyFlags) -> Result<Self, ConfigError> {
        let file = match &flags.config {
            Some(path) => Some(KubeProxyConfiguration::load(path)?),
            None => None,
        };
        Self::build(flags, file.as_ref())
    }

    /// Merges `flags` over `file` over the defaults and validates.
    pub fn build(flags: &ProxyFlags, file: Option<&KubeProxyConfiguration>) -> Result<Self, ConfigError> {
        let empty = KubeProxyConfiguration::default();
        let file = file.unwrap_or(&empty);
        let mut cfg = Config::default();

        let mode_text = pick(&flags.proxy_mode, "--proxy-mode", &file.mode, "config mode");
        if let Some((text, src)) = mode_text {
            cfg.mode = text.parse().map_err(|reason| value_err(src, &text, reason))?;
        }
        // The section of the file that belongs to the chosen mode.
        let (section_sync, section_min_sync) = match cfg.mode {
            ProxyMode::Iptables => mode_periods(file.iptables.as_ref()),
            ProxyMode::Nftables => mode_periods(file.nftables.as_ref()),
            ProxyMode::Ipvs => file
                .ipvs
                .as_ref()
                .map(|s| (s.sync_period.clone(), s.min_sync_period.clone()))
                .unwrap_or_default(),
            ProxyMode::Userspace => (None, None),
        };
        let mode_section = match cfg.mode {
            ProxyMode::Nftables => file.nftables.as_ref(),
            _ => file.iptables.as_ref(),
        };

        cfg.kubeconfig = flags.kubeconfig.clone().or_else(|| {
            file.client_connection
                .as_ref()
                .and_then(|c| c.kubeconfig.clone())
                .filter(|k| !k.is_empty())
                .map(PathBuf::from)
        });
        cfg.master = flags.master.clone().filter(|m| !m.is_empty());
        cfg.hostname_override = flags
            .hostname_override
            .clone()
            .or_else(|| file.hostname_override.clone())
            .map(|h| h.trim().to_lowercase())
            .filter(|h| !h.is_empty());

        if let Some((text, src)) = pick(
            &flags.cluster_cidr,
            "--cluster-cidr",
            &file.cluster_cidr,
            "config clusterCIDR",
        ) {
            cfg.cluster_cidrs = parse_cidrs(&text, src)?;
        }
        cfg.nodeport_addresses = match (&flags.nodeport_addresses, &file.node_port_addresses) {
            (Some(text), _) => parse_nodeport_addresses(
                &text.split(',').map(str::to_string).collect::<Vec<_>>(),
                "--nodeport-addresses",
            )?,
            (None, Some(list)) => parse_nodeport_addresses(list, "config nodePortAddresses")?,
            (None, None) => NodePortAddresses::All,
        };
        cfg.masquerade_all = flags
            .masquerade_all
            .or_else(|| mode_section.and_then(|s| s.masquerade_all))
            .unwrap_or(false);
        if let Some(bit) = mode_section.and_then(|s| s.masquerade_bit) {
            cfg.masquerade_bit = u8::try_from(bit)
                .ok()
                .filter(|b| *b <= 31)
                .ok_or_else(|| value_err("config masqueradeBit", &bit.to_string(), "must be within 0..=31"))?;
        }
        if let Some(v) = mode_section.and_then(|s| s.localhost_node_ports) {
            cfg.localhost_nodeports = v;
        }
        cfg.conntrack_tcp_be_liberal = file.conntrack.as_ref().and_then(|c| c.tcp_be_liberal).unwrap_or(false);

        let sync = flags
            .sync_period
            .clone()
            .map(|v| (v, "--sync-period"))
            .or(section_sync.map(|v| (v, "config syncPeriod")))
            .or(file.sync_period.clone().map(|v| (v, "config syncPeriod")));
        // In the file, a zero period means "unset" (kubeadm writes 0s), as
        // kube-proxy's defaulting treats it; on the command line it is an error.
        if let Some((text, src)) = sync {
            let d = duration(&text, src)?;
            if !d.is_zero() {
                cfg.sync_period = d;
            } else if src.starts_with("--") {
                return Err(value_err(src, &text, "must be greater than 0"));
            }
        }
        let min_sync = flags
            .min_sync_period
            .clone()
            .map(|v| (v, "--min-sync-period"))
            .or(section_min_sync.map(|v| (v, "config minSyncPeriod")))
            .or(file.min_sync_period.clone().map(|v| (v, "config minSyncPeriod")));
        if let Some((text, src)) = min_sync {
            let d = duration(&text, src)?;
            if !d.is_zero() || src.starts_with("--") {
                cfg.min_sync_period = d;
            }
            if cfg.min_sync_period > cfg.sync_period {
                return Err(value_err(src, &text, "must not be greater than the sync period"));
            }
        }

        if let Some((text, src)) = pick(
            &flags.metrics_bind_address,
            "--metrics-bind-address",
            &file.metrics_bind_address,
            "config metricsBindAddress",
        ) {
            cfg.metrics_bind_address = parse_bind(&text, 10249, src)?;
        }
        if let Some((text, src)) = pick(
            &flags.healthz_bind_address,
            "--healthz-bind-address",
            &file.healthz_bind_address,
            "config healthzBindAddress",
        ) {
            cfg.healthz_bind_address = parse_bind(&text, 10256, src)?;
        }
        cfg.ipvs = ipvs_config(flags, file.ipvs.as_ref())?;
        if let Some((text, src)) = pick(
            &flags.udp_timeout,
            "--udp-timeout",
            &file.udp_idle_timeout,
            "config udpIdleTimeout",
        ) {
            let d = duration(&text, src)?;
            if d.is_zero() {
                return Err(value_err(src, &text, "must be greater than 0"));
            }
            cfg.udp_idle_timeout = d;
        }
        cfg.feature_gates = file.feature_gates.clone().unwrap_or_default();
        if let Some(text) = &flags.feature_gates {
            cfg.feature_gates.extend(parse_feature_gates(text)?);
        }
        cfg.cleanup = flags.cleanup;
        cfg.verbosity = flags.verbosity.unwrap_or(0);
        cfg.log_format = flags.logging_format.unwrap_or_default();
        Ok(cfg)
    }

    /// Whether feature gate `name` is on (every gate kproxy knows is off by default).
    pub fn gate(&self, name: &str) -> bool {
        self.feature_gates.get(name).copied().unwrap_or(false)
    }

    /// KEP-6032: nftables mode with the `KubeProxyNFTablesLocalhostNodePorts`
    /// gate on and `--nodeport-addresses` naming a loopback address
    /// (`localhost`, `127.0.0.1/32`, `::1/128`, …) forwards TCP NodePorts on
    /// 127.0.0.1 and ::1 through a userspace relay.
    pub fn localhost_nodeport_proxy(&self) -> bool {
        let loopback = match &self.nodeport_addresses {
            NodePortAddresses::Cidrs(nets) => nets.iter().any(|n| n.network().is_loopback()),
            _ => false,
        };
        self.mode == ProxyMode::Nftables && loopback && self.gate(GATE_LOCALHOST_NODEPORTS)
    }

    /// The masquerade mark as a hex string, e.g. `0x4000`.
    pub fn masquerade_mark(&self) -> u32 {
        1u32 << self.masquerade_bit
    }
}

/// `--ipvs-*` flags over the file's `ipvs` section.
fn ipvs_config(flags: &ProxyFlags, section: Option<&file::IpvsSection>) -> Result<IpvsConfig, ConfigError> {
    let empty = file::IpvsSection::default();
    let file = section.unwrap_or(&empty);
    let mut cfg = IpvsConfig::default();
    if let Some((text, src)) = pick(
        &flags.ipvs_scheduler,
        "--ipvs-scheduler",
        &file.scheduler,
        "config ipvs.scheduler",
    ) {
        if !IPVS_SCHEDULERS.contains(&text.as_str()) {
            return Err(value_err(
                src,
                &text,
                format!("must be one of {}", IPVS_SCHEDULERS.join(", ")),
            ));
        }
        cfg.scheduler = text;
    }
    let file_excludes = file.exclude_cidrs.as_ref().map(|v| v.join(","));
    if let Some((text, src)) = pick(
        &flags.ipvs_exclude_cidrs,
        "--ipvs-exclude-cidrs",
        &file_excludes,
        "config ipvs.excludeCIDRs",
    ) {
        cfg.exclude_cidrs = parse_cidrs(&text, src)?;
    }
    cfg.strict_arp = flags.ipvs_strict_arp.or(file.strict_arp).unwrap_or(false);
    let timeouts = [
        (
            &flags.ipvs_tcp_timeout,
            "--ipvs-tcp-timeout",
            &file.tcp_timeout,
            "config ipvs.tcpTimeout",
        ),
        (
            &flags.ipvs_tcpfin_timeout,
            "--ipvs-tcpfin-timeout",
            &file.tcp_fin_timeout,
            "config ipvs.tcpFinTimeout",
        ),
        (
            &flags.ipvs_udp_timeout,
            "--ipvs-udp-timeout",
            &file.udp_timeout,
            "config ipvs.udpTimeout",
        ),
    ];
    let mut parsed = [Duration::ZERO; 3];
    for (slot, (flag, flag_name, file_value, file_name)) in parsed.iter_mut().zip(timeouts) {
        if let Some((text, src)) = pick(flag, flag_name, file_value, file_name) {
            *slot = duration(&text, src)?;
        }
    }
    [cfg.tcp_timeout, cfg.tcp_fin_timeout, cfg.udp_timeout] = parsed;
    Ok(cfg)
}

fn mode_periods(section: Option<&file::ModeSection>) -> (Option<String>, Option<String>) {
    section
        .map(|s| (s.sync_period.clone(), s.min_sync_period.clone()))
        .unwrap_or_default()
}

/// A flag value if set, else the file's, with where it came from.
fn pick(
    flag: &Option<String>,
    flag_name: &'static str,
    file: &Option<String>,
    file_name: &'static str,
) -> Option<(String, &'static str)> {
    match (flag, file) {
        (Some(v), _) => Some((v.clone(), flag_name)),
        (None, Some(v)) if !v.is_empty() => Some((v.clone(), file_name)),
        _ => None,
    }
}

fn value_err(source: &str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Value {
        origin: source.to_string(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

fn duration(text: &str, source: &str) -> Result<Duration, ConfigError> {
    parse_duration(text).map_err(|e| value_err(source, text, e.to_string()))
}

fn parse_cidrs(text: &str, source: &str) -> Result<Vec<IpNet>, ConfigError> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let net: IpNet = part
            .parse()
            .map_err(|_| value_err(source, text, format!("{part:?} is not a CIDR")))?;
        out.push(net.trunc());
    }
    Ok(out)
}

fn parse_nodeport_addresses(list: &[String], source: &str) -> Result<NodePortAddresses, ConfigError> {
    let items: Vec<&str> = list.iter().map(|s| s.trim()).filter(|s| !s.is_empty()).collect();
    if items.is_empty() {
        return Ok(NodePortAddresses::All);
    }
    if items == ["primary"] {
        return Ok(NodePortAddresses::Primary);
    }
    let joined = items.join(",");
    let mut nets = Vec::new();
    for part in items {
        // KEP-6032's keyword: the loopback CIDRs of both families.
        if part == "localhost" {
            nets.extend(LOOPBACK_CIDRS.iter().filter_map(|c| c.parse::<IpNet>().ok()));
            continue;
        }
        let net: IpNet = part.parse().map_err(|_| {
            value_err(
                source,
                &joined,
                format!("{part:?} is not a CIDR (or \"primary\" alone, or \"localhost\")"),
            )
        })?;
        nets.push(net.trunc());
    }
    Ok(NodePortAddresses::Cidrs(nets))
}

/// What `--nodeport-addresses=localhost` stands for.
const LOOPBACK_CIDRS: [&str; 2] = ["127.0.0.0/8", "::1/128"];

/// `--feature-gates`: `Name=true,Other=false`.
fn parse_feature_gates(text: &str) -> Result<Vec<(String, bool)>, ConfigError> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let parsed = part
            .split_once('=')
            .and_then(|(name, v)| Some((name.trim().to_string(), v.trim().parse::<bool>().ok()?)))
            .filter(|(name, _)| !name.is_empty());
        let Some(gate) = parsed else {
            return Err(value_err(
                "--feature-gates",
                text,
                format!("{part:?} is not Name=true|false"),
            ));
        };
        out.push(gate);
    }
    Ok(out)
}

fn parse_bind(text: &str, default_port: u16, source: &str) -> Result<SocketAddr, ConfigError> {
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, default_port));
    }
    Err(value_err(source, text, "must be IP:port or IP"))
}

#[cfg(test)]
mod tests;
