//! `kproxy render`: what would be programmed, without root or changes.

use std::io::Write;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::{Node, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::ListParams;
use kube::{Api, Client};
use tracing::warn;

use crate::backend;
use crate::config::{Config, RenderArgs, RenderFormat};
use crate::model::{DesiredState, Model, SelectionOptions};
use crate::watch::{Manifests, PROXY_LABEL_SELECTOR};

/// Runs `kproxy render` and writes the result to `out`.
pub async fn run(args: &RenderArgs, cfg: &Config, out: &mut dyn Write) -> anyhow::Result<()> {
    let node_ips = parse_node_ips(args.node_ip.as_deref())?;
    let objects = match &args.manifests {
        Some(path) => Manifests::load(path)?,
        None => fetch(cfg, args).await?,
    };
    for (file, kind) in &objects.skipped {
        warn!(file = %file, kind = %kind, "Skipping an object kproxy does not use");
    }
    let node_name = args
        .node_name
        .clone()
        .or_else(|| cfg.hostname_override.clone())
        .or_else(|| match objects.nodes.as_slice() {
            [only] => only.metadata.name.clone(),
            _ => None,
        })
        .unwrap_or_default();
    let desired = build_desired(&objects, &node_name, &node_ips);
    let settings = backend::Settings::from_config(cfg);
    let context = |family| backend::plan_context(&settings, cfg.mode, family, &desired.node);
    let text = match (args.format, backend::renderer(cfg)) {
        (RenderFormat::Rules, Some(b)) => b.render(&desired),
        (RenderFormat::Rules, None) => format!(
            "# proxy mode {} has no rule renderer yet; this is the service map it would program\n{}",
            cfg.mode,
            backend::table::render_table(&desired, &context)
        ),
        (RenderFormat::Table, _) => backend::table::render_table(&desired, &context),
    };
    out.write_all(text.as_bytes())?;
    Ok(())
}

/// Feeds objects into a fresh model, as the watchers would, and returns the
/// desired state.
pub fn build_desired(objects: &Manifests, node_name: &str, node_ips: &[IpAddr]) -> DesiredState {
    let mut model = Model::new(node_name, SelectionOptions::default());
    let node = objects
        .nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(node_name));
    model.set_node(node);
    model.set_node_addresses_fallback(node_ips);
    // The same label filter the watch asks the API server for.
    let services: Vec<_> = objects
        .services
        .iter()
        .filter(|s| crate::watch::is_proxied(&s.metadata))
        .cloned()
        .collect();
    let slices: Vec<_> = objects
        .slices
        .iter()
        .filter(|s| crate::watch::is_proxied(&s.metadata))
        .cloned()
        .collect();
    model.reset_services(&services);
    model.reset_slices(&slices);
    for p in model.take_problems() {
        warn!(subject = %p.subject, "{}", p.message);
    }
    model.desired()
}

fn parse_node_ips(text: Option<&str>) -> anyhow::Result<Vec<IpAddr>> {
    let Some(text) = text else { return Ok(Vec::new()) };
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse()
                .map_err(|_| anyhow::anyhow!("invalid --node-ip {s:?}: not an IP address"))
        })
        .collect()
}

/// Lists the objects once from a live API server.
async fn fetch(cfg: &Config, args: &RenderArgs) -> anyhow::Result<Manifests> {
    if cfg.kubeconfig.is_none() && cfg.master.is_none() {
        anyhow::bail!("render needs --manifests DIR, or --kubeconfig/--master to read a cluster");
    }
    let client: Client = super::kube_client(cfg).await?;
    let lp = ListParams::default().labels(PROXY_LABEL_SELECTOR);
    let services = Api::<Service>::all(client.clone()).list(&lp).await?.items;
    let slices = Api::<EndpointSlice>::all(client.clone()).list(&lp).await?.items;
    let mut nodes = Vec::new();
    if let Some(name) = args.node_name.as_ref().or(cfg.hostname_override.as_ref())
        && let Some(node) = Api::<Node>::all(client).get_opt(name).await?
    {
        nodes.push(node);
    }
    Ok(Manifests {
        services,
        slices,
        nodes,
        skipped: Vec::new(),
    })
}
