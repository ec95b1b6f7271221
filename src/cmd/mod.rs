//! Commands: wiring only. The one place that names every module.
//!
//! - [`run`]: the node proxy (kube-proxy's job).
//! - [`render`]: print what would be programmed, from manifests or a cluster.
//! - [`cleanup`]: `--cleanup`, remove every rule and exit.

pub mod cleanup;
pub mod render;
pub mod run;

use crate::config::Config;

/// The node name: `--hostname-override` (or the config file's), else the
/// host name, as kube-proxy resolves it.
pub fn node_name(cfg: &Config) -> anyhow::Result<String> {
    cfg.hostname_override
        .clone()
        .or_else(crate::sys::hostname)
        .ok_or_else(|| anyhow::anyhow!("cannot determine the node name: set --hostname-override"))
}

/// Builds a kube client from `--kubeconfig`/`--master`, or in-cluster/
/// default kubeconfig inference when neither is given.
pub async fn kube_client(cfg: &Config) -> anyhow::Result<kube::Client> {
    let mut kcfg = match &cfg.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| anyhow::anyhow!("cannot read kubeconfig {}: {e}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| anyhow::anyhow!("invalid kubeconfig {}: {e}", path.display()))?
        }
        None => match &cfg.master {
            Some(master) => kube::Config::new(
                master
                    .parse()
                    .map_err(|e| anyhow::anyhow!("invalid --master {master:?}: {e}"))?,
            ),
            None => kube::Config::infer()
                .await
                .map_err(|e| anyhow::anyhow!("no --kubeconfig given and none could be inferred: {e}"))?,
        },
    };
    if let Some(master) = &cfg.master {
        kcfg.cluster_url = master
            .parse()
            .map_err(|e| anyhow::anyhow!("invalid --master {master:?}: {e}"))?;
    }
    kube::Client::try_from(kcfg).map_err(|e| anyhow::anyhow!("cannot build API client: {e}"))
}
