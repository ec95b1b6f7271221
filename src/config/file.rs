//! The KubeProxyConfiguration file (`kubeproxy.config.k8s.io/v1alpha1`),
//! with kube-proxy's field names, decoded strictly: an unknown or misspelt
//! field is an error, as it is for kube-proxy.
//!
//! Every field is optional here; defaults are applied in [`super::Config`].
//! Fields kproxy accepts for compatibility but does not act on (e.g.
//! `oomScoreAdj`, `winkernel`) are parsed and ignored.

use std::collections::BTreeMap;

use serde::Deserialize;

pub const API_VERSION: &str = "kubeproxy.config.k8s.io/v1alpha1";
pub const KIND: &str = "KubeProxyConfiguration";

/// A parsed KubeProxyConfiguration.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubeProxyConfiguration {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    pub feature_gates: Option<BTreeMap<String, bool>>,
    pub bind_address: Option<String>,
    pub bind_address_hard_fail: Option<bool>,
    pub healthz_bind_address: Option<String>,
    pub metrics_bind_address: Option<String>,
    pub enable_profiling: Option<bool>,
    pub show_hidden_metrics_for_version: Option<String>,
    pub client_connection: Option<ClientConnection>,
    pub hostname_override: Option<String>,
    pub mode: Option<String>,
    pub iptables: Option<ModeSection>,
    pub ipvs: Option<IpvsSection>,
    pub nftables: Option<ModeSection>,
    pub winkernel: Option<serde_norway::Value>,
    pub detect_local_mode: Option<String>,
    pub detect_local: Option<DetectLocal>,
    #[serde(rename = "clusterCIDR")]
    pub cluster_cidr: Option<String>,
    pub node_port_addresses: Option<Vec<String>>,
    pub oom_score_adj: Option<i32>,
    pub conntrack: Option<Conntrack>,
    pub config_sync_period: Option<String>,
    pub port_range: Option<String>,
    pub logging: Option<serde_norway::Value>,
    pub sync_period: Option<String>,
    pub min_sync_period: Option<String>,
    pub ip_family_policy: Option<String>,
    /// Userspace mode's UDP session idle timeout (v1alpha1 until 1.25).
    pub udp_idle_timeout: Option<String>,
}

/// `clientConnection`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientConnection {
    pub kubeconfig: Option<String>,
    pub accept_content_types: Option<String>,
    pub content_type: Option<String>,
    pub qps: Option<f64>,
    pub burst: Option<i64>,
}

/// `iptables` and `nftables`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModeSection {
    pub masquerade_all: Option<bool>,
    pub masquerade_bit: Option<i32>,
    pub localhost_node_ports: Option<bool>,
    pub sync_period: Option<String>,
    pub min_sync_period: Option<String>,
}

/// `ipvs`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IpvsSection {
    pub sync_period: Option<String>,
    pub min_sync_period: Option<String>,
    pub scheduler: Option<String>,
    #[serde(rename = "excludeCIDRs")]
    pub exclude_cidrs: Option<Vec<String>>,
    #[serde(rename = "strictARP")]
    pub strict_arp: Option<bool>,
    pub tcp_timeout: Option<String>,
    pub tcp_fin_timeout: Option<String>,
    pub udp_timeout: Option<String>,
}

/// `detectLocal`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DetectLocal {
    pub bridge_interface: Option<String>,
    pub interface_name_prefix: Option<String>,
}

/// `conntrack`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Conntrack {
    pub max_per_core: Option<i64>,
    pub min: Option<i64>,
    pub tcp_established_timeout: Option<String>,
    pub tcp_close_wait_timeout: Option<String>,
    pub tcp_be_liberal: Option<bool>,
    pub udp_timeout: Option<String>,
    pub udp_stream_timeout: Option<String>,
}

/// Why a configuration file was refused.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The YAML is malformed or has an unknown field.
    #[error("invalid config file {path}: {message}")]
    Parse { path: String, message: String },
    /// apiVersion or kind is not KubeProxyConfiguration v1alpha1.
    #[error("config file {path}: unsupported {field} {value:?} (want {want:?})")]
    Type {
        path: String,
        field: &'static str,
        value: String,
        want: &'static str,
    },
}

// === impl KubeProxyConfiguration ===

impl KubeProxyConfiguration {
    /// Parses YAML text; `path` is used only in messages.
    pub fn parse(text: &str, path: &str) -> Result<Self, FileError> {
        let cfg: Self = serde_norway::from_str(text).map_err(|e| FileError::Parse {
            path: path.to_string(),
            message: e.to_string(),
        })?;
        if let Some(v) = cfg.api_version.as_deref().filter(|v| *v != API_VERSION) {
            return Err(FileError::Type {
                path: path.to_string(),
                field: "apiVersion",
                value: v.to_string(),
                want: API_VERSION,
            });
        }
        if let Some(k) = cfg.kind.as_deref().filter(|k| *k != KIND) {
            return Err(FileError::Type {
                path: path.to_string(),
                field: "kind",
                value: k.to_string(),
                want: KIND,
            });
        }
        Ok(cfg)
    }

    /// Reads and parses a file.
    pub fn load(path: &std::path::Path) -> Result<Self, FileError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::parse(&text, &shown)
    }
}
