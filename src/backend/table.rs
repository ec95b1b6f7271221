//! A readable table of the service map: for each service port, its VIPs,
//! the endpoints selected for each traffic policy, and what the policy plan
//! does with internal and external traffic. Pure.

use std::fmt::Write;

use crate::model::{
    DesiredState, Endpoint, IpFamily, PlanContext, PortPlan, Refusal, Route, ServicePortState, SessionAffinity,
};

/// Renders the desired state as a table, one block per service port;
/// `context` gives the plan's view of the node per family.
pub fn render_table(desired: &DesiredState, context: &dyn Fn(IpFamily) -> PlanContext) -> String {
    let mut out = String::new();
    let zone = desired.node.zone.as_deref().unwrap_or("-");
    let addrs: Vec<String> = desired.node.addresses.iter().map(ToString::to_string).collect();
    let _ = writeln!(
        out,
        "# node {} (zone {zone}, addresses {})",
        if desired.node.name.is_empty() {
            "-"
        } else {
            &desired.node.name
        },
        if addrs.is_empty() {
            "-".to_string()
        } else {
            addrs.join(",")
        }
    );
    let _ = writeln!(out, "# {} service ports", desired.ports.len());
    let contexts = IpFamily::ALL.map(context);
    for state in desired.ports.values() {
        render_port(&mut out, state, &contexts);
    }
    out
}

fn render_port(out: &mut String, s: &ServicePortState, contexts: &[PlanContext; 2]) {
    let p = &s.port;
    let _ = writeln!(out);
    let _ = writeln!(out, "{} {}/{}", p.name, p.port, p.name.protocol.as_lower());
    for family in IpFamily::ALL {
        let vips = p.vips(family);
        if vips.is_empty() {
            continue;
        }
        let shown: Vec<String> = vips.iter().map(|v| format!("{v:?}")).collect();
        let _ = writeln!(out, "  {family} vips:      {}", shown.join(" "));
    }
    if p.node_port != 0 {
        let _ = writeln!(out, "  node port:      {}", p.node_port);
    }
    if !p.load_balancer_source_ranges.is_empty() {
        let r: Vec<String> = p.load_balancer_source_ranges.iter().map(ToString::to_string).collect();
        let _ = writeln!(out, "  source ranges:  {}", r.join(","));
    }
    let _ = writeln!(
        out,
        "  policy:         external={} internal={}{}",
        p.external_policy,
        p.internal_policy,
        match p.session_affinity {
            SessionAffinity::None => String::new(),
            SessionAffinity::ClientIp { timeout_seconds } => format!(" affinity=ClientIP({timeout_seconds}s)"),
        }
    );
    if p.health_check_node_port != 0 {
        let _ = writeln!(out, "  health check:   {}", p.health_check_node_port);
    }
    for ctx in contexts {
        let family = ctx.family;
        if !p.has_family(family) {
            continue;
        }
        let f = s.family(family);
        let plan = PortPlan::new(s, ctx);
        let _ = writeln!(out, "  {family} endpoints: {}", list(&f.endpoints, true));
        if p.uses_cluster_endpoints() {
            let _ = writeln!(out, "    cluster:      {}", list(plan.cluster, false));
        }
        if p.uses_local_endpoints() {
            let _ = writeln!(out, "    local:        {}", list(plan.local, false));
        }
        let _ = writeln!(out, "    internal:     {}", route(plan.internal));
        if plan.is_external() {
            let _ = writeln!(out, "    external:     {}", route(plan.external));
        }
        if let Some(fw) = &plan.firewall {
            let mut admitted: Vec<String> = fw.source_ranges.iter().map(ToString::to_string).collect();
            admitted.extend(fw.node_allowance.iter().map(ToString::to_string));
            let _ = writeln!(out, "    firewall:     LB traffic admitted from {}", admitted.join(","));
        }
    }
}

/// What a route does, for people.
fn route(r: Route) -> String {
    match (r, r.refusal()) {
        (Route::Cluster, _) => "forward to cluster endpoints".to_string(),
        (Route::Local, _) => "forward to local endpoints".to_string(),
        (_, Some(Refusal::Drop)) => format!("drop ({})", Refusal::Drop.reason()),
        (_, Some(Refusal::Reject)) => format!("reject ({})", Refusal::Reject.reason()),
        (_, None) => String::new(),
    }
}

fn list(eps: &[Endpoint], with_state: bool) -> String {
    if eps.is_empty() {
        return "(none)".to_string();
    }
    eps.iter()
        .map(|e| {
            let mut s = e.to_string();
            if with_state {
                let mut flags = Vec::new();
                if !e.ready {
                    flags.push("not-ready");
                }
                if e.terminating {
                    flags.push(if e.serving {
                        "terminating"
                    } else {
                        "terminating,not-serving"
                    });
                }
                if e.is_local {
                    flags.push("local");
                }
                if !flags.is_empty() {
                    let _ = write!(s, "({})", flags.join(","));
                }
            }
            s
        })
        .collect::<Vec<_>>()
        .join(" ")
}
