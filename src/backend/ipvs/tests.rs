//! ipvs backend against the sys fakes (`FakeIpvs`, `FakeLinks`).

use std::sync::Arc;

use super::*;
use crate::config::NodePortAddresses;
use crate::model::builders::{mk_node, mk_service, mk_slice};
use crate::model::{Model, SelectionOptions};
use crate::sys::ipvs::Protocol;
use crate::sys::ipvs::Timeouts;
use crate::sys::{CommandOutput, FakeIpvs, FakeLinks, FakeRunner, FakeSysctl, Sysctl};

fn settings() -> Settings {
    Settings {
        masquerade_mark: 0x4000,
        masquerade_all: false,
        cluster_cidrs: vec!["10.244.0.0/16".parse().expect("cidr")],
        nodeport_addresses: NodePortAddresses::Primary,
        localhost_nodeports: false,
        conntrack_liberal: false,
    }
}

struct Fakes {
    ipvs: Arc<FakeIpvs>,
    links: Arc<FakeLinks>,
    runner: FakeRunner,
    sysctl: Arc<FakeSysctl>,
    opts: IpvsOpts,
}

impl Fakes {
    fn new() -> Self {
        Self {
            ipvs: Arc::new(FakeIpvs::new()),
            links: Arc::new(FakeLinks::new()),
            runner: FakeRunner::new(),
            sysctl: Arc::new(FakeSysctl::default()),
            opts: IpvsOpts::default(),
        }
    }

    fn backend(&self) -> IpvsBackend {
        let clients = Clients {
            ipvs: self.ipvs.clone(),
            links: self.links.clone(),
        };
        let sys = Sys {
            runner: Arc::new(self.runner.clone()),
            sysctl: self.sysctl.clone(),
        };
        IpvsBackend::with_clients(sys, settings(), self.opts.clone(), clients)
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("ip")
}

fn tcp(addr: &str, port: u16) -> ServiceKey {
    ServiceKey::Addr {
        protocol: Protocol::Tcp,
        addr: ip(addr),
        port,
    }
}

/// Node `node-a` (192.168.0.10) with `web`: ClusterIP 10.96.0.10:80,
/// NodePort 30080, externalIP 203.0.113.7, LB IP 198.51.100.9; two
/// endpoints on port 8080.
fn model() -> Model {
    let mut m = Model::new("node-a", SelectionOptions::default());
    m.set_node(Some(&mk_node("node-a").internal_ip("192.168.0.10").build()));
    m.apply_service(
        &mk_service("default", "web")
            .type_("LoadBalancer")
            .cluster_ip("10.96.0.10")
            .node_port("http", 80, "TCP", 30080)
            .external_ips(&["203.0.113.7"])
            .lb_ingress("198.51.100.9")
            .build(),
    );
    m.apply_slice(&slice("web", &["10.244.1.5", "10.244.2.6"]));
    m
}

fn slice(svc: &str, eps: &[&str]) -> k8s_openapi::api::discovery::v1::EndpointSlice {
    mk_slice("default", &format!("{svc}-1"), svc)
        .port("http", 8080, "TCP")
        .endpoints(eps)
        .build()
}

fn sync(b: &mut IpvsBackend, m: &mut Model, kind: SyncKind) -> SyncStats {
    let (desired, changes) = (m.desired(), m.changes());
    let stats = b.sync(&desired, &changes, kind).expect("sync");
    m.ack(&changes);
    stats
}

#[test]
fn render_lists_every_virtual_server_as_ipvsadm_save_does() {
    let m = model();
    let text = Fakes::new().backend().render(&m.desired());
    let expected = "\
-A -t 10.96.0.10:80 -s rr
-a -t 10.96.0.10:80 -r 10.244.1.5:8080 -m -w 1
-a -t 10.96.0.10:80 -r 10.244.2.6:8080 -m -w 1
-A -t 192.168.0.10:30080 -s rr
-a -t 192.168.0.10:30080 -r 10.244.1.5:8080 -m -w 1
-a -t 192.168.0.10:30080 -r 10.244.2.6:8080 -m -w 1
-A -t 198.51.100.9:80 -s rr
-a -t 198.51.100.9:80 -r 10.244.1.5:8080 -m -w 1
-a -t 198.51.100.9:80 -r 10.244.2.6:8080 -m -w 1
-A -t 203.0.113.7:80 -s rr
-a -t 203.0.113.7:80 -r 10.244.1.5:8080 -m -w 1
-a -t 203.0.113.7:80 -r 10.244.2.6:8080 -m -w 1
";
    assert!(text.contains(expected), "{text}");
    // Service addresses on kube-ipvs0; the NodePort's node IP is not one.
    assert!(
        text.contains("# kube-ipvs0 addresses\n10.96.0.10/32\n198.51.100.9/32\n203.0.113.7/32\n#"),
        "{text}"
    );
}

#[test]
fn render_lists_kube_proxys_ipsets_and_iptables_rules() {
    let text = Fakes::new().backend().render(&model().desired());
    for line in [
        "add KUBE-CLUSTER-IP 10.96.0.10,tcp:80 -exist",
        "add KUBE-EXTERNAL-IP 203.0.113.7,tcp:80 -exist",
        "add KUBE-LOAD-BALANCER 198.51.100.9,tcp:80 -exist",
        "add KUBE-NODE-PORT-TCP 30080 -exist",
        "add KUBE-IPVS-IPS 10.96.0.10 -exist",
        "create KUBE-NODE-PORT-TCP bitmap:port range 0-65535 -exist",
        "-I PREROUTING 1 -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
        "-A KUBE-SERVICES -m comment --comment \"Kubernetes service cluster ip + port for masquerade purpose\" \
         -m set --match-set KUBE-CLUSTER-IP dst,dst ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ",
        "-A KUBE-NODE-PORT -p tcp -m comment --comment \"Kubernetes nodeport TCP port for masquerade purpose\" \
         -m set --match-set KUBE-NODE-PORT-TCP dst -j KUBE-MARK-MASQ",
        "-A KUBE-SERVICES -m comment --comment \"Kubernetes service lb portal\" \
         -m set --match-set KUBE-LOAD-BALANCER dst,dst -j KUBE-LOAD-BALANCER",
        "-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS dst -j REJECT",
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN",
        "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000",
    ] {
        assert!(text.lines().any(|l| l == line), "missing `{line}` in:\n{text}");
    }
    // No local endpoint: no hairpin member; no source ranges: no firewall rule.
    assert!(!text.contains("add KUBE-LOOP-BACK"));
    assert!(!text.contains("-A KUBE-PROXY-FIREWALL"));
}

#[test]
fn an_endpoint_change_sends_no_ipset_or_iptables_input_and_a_new_service_only_its_members() {
    let f = Fakes::new();
    let mut b = f.backend();
    let mut m = model();
    sync(&mut b, &mut m, SyncKind::Full);
    f.runner.clear();
    m.apply_slice(&slice("web", &["10.244.1.5", "10.244.3.7"]));
    sync(&mut b, &mut m, SyncKind::Partial);
    assert!(f.runner.calls().is_empty(), "{:?}", f.runner.calls());
    m.apply_service(
        &mk_service("default", "db")
            .cluster_ip("10.96.0.11")
            .port("sql", 5432, "TCP")
            .build(),
    );
    sync(&mut b, &mut m, SyncKind::Partial);
    let calls = f.runner.calls();
    assert_eq!(calls.len(), 1, "one ipset restore, no iptables-restore: {calls:?}");
    let lines: Vec<&str> = calls[0].stdin.lines().filter(|l| !l.starts_with("create")).collect();
    assert_eq!(
        lines,
        [
            "add KUBE-CLUSTER-IP 10.96.0.11,tcp:5432 -exist",
            "add KUBE-IPVS-IPS 10.96.0.11 -exist"
        ]
    );
}

#[test]
fn first_sync_creates_the_interface_addresses_and_servers() {
    let f = Fakes::new();
    let mut b = f.backend();
    let mut m = model();
    let stats = sync(&mut b, &mut m, SyncKind::Full);
    assert_eq!(
        f.links.ops()[..2],
        ["add-link kube-ipvs0".to_string(), "add-addr 10.96.0.10".to_string()]
    );
    assert_eq!(f.ipvs.services().expect("list").len(), 4);
    assert_eq!(f.ipvs.destinations(&tcp("10.96.0.10", 80)).expect("reals").len(), 2);
    assert_eq!(f.ipvs.ops().len(), 4 + 8, "4 virtual, 8 real servers");
    assert!(stats.rules_written > 3 + 4 + 8, "and the ipset and iptables input");
    let programs: Vec<String> = f.runner.calls().iter().map(|c| c.program.clone()).collect();
    assert!(programs.contains(&"ipset".to_string()), "{programs:?}");
    assert!(programs.contains(&"iptables-nft-restore".to_string()), "{programs:?}");
    assert!(programs.contains(&"ip6tables-nft-restore".to_string()), "{programs:?}");
}

#[test]
fn one_endpoint_change_touches_only_its_real_servers() {
    let f = Fakes::new();
    let mut b = f.backend();
    let mut m = model();
    sync(&mut b, &mut m, SyncKind::Full);
    f.ipvs.clear_ops();
    m.apply_slice(&slice("web", &["10.244.1.5", "10.244.3.7"]));
    sync(&mut b, &mut m, SyncKind::Partial);
    let ops = f.ipvs.ops();
    // Per virtual server: the new real server added; the old one drained
    // (weight 0) and, having no connection, deleted.
    assert_eq!(ops.len(), 12, "{ops:?}");
    assert!(
        ops.iter().all(|o| o.contains("10.244.3.7") || o.contains("10.244.2.6")),
        "{ops:?}"
    );
    assert!(ops.contains(&"add-dest TCP 10.96.0.10:80 -> 10.244.3.7:8080 w1".to_string()));
    assert!(ops.contains(&"delete-dest TCP 10.96.0.10:80 -> 10.244.2.6:8080".to_string()));
    // Nothing changed: nothing sent.
    f.ipvs.clear_ops();
    sync(&mut b, &mut m, SyncKind::Partial);
    assert!(f.ipvs.ops().is_empty());
}

#[test]
fn full_sync_repairs_drift_and_leaves_foreign_virtual_servers_alone() {
    let f = Fakes::new();
    let mut b = f.backend();
    let mut m = model();
    sync(&mut b, &mut m, SyncKind::Full);
    // Someone else's virtual server, on an address kproxy does not own.
    let foreign = VirtualServer::new(tcp("192.168.0.10", 443), "wrr");
    f.ipvs.add_service(&foreign).expect("foreign");
    // Drift: a real server removed behind kproxy's back, a stale virtual
    // server on a kube-ipvs0 address.
    let cip = tcp("10.96.0.10", 80);
    f.ipvs.delete_destination(&cip, ip("10.244.2.6"), 8080).expect("drift");
    f.links
        .add_address(DUMMY_INTERFACE, ip("10.96.0.99"))
        .expect("stale addr");
    f.ipvs
        .add_service(&VirtualServer::new(tcp("10.96.0.99", 53), "rr"))
        .expect("stale");
    f.ipvs.clear_ops();
    sync(&mut b, &mut m, SyncKind::Full);
    let ops = f.ipvs.ops();
    assert_eq!(
        ops,
        [
            "add-dest TCP 10.96.0.10:80 -> 10.244.2.6:8080 w1",
            "delete-service TCP 10.96.0.99:53",
        ],
        "repairs exactly the drift"
    );
    assert!(f.ipvs.services().expect("list").contains(&foreign), "foreign kept");
    assert!(
        !f.links
            .addresses(DUMMY_INTERFACE)
            .expect("addrs")
            .contains(&ip("10.96.0.99"))
    );
}

#[test]
fn local_external_policy_without_local_endpoints_drops_only_outside_traffic() {
    let f = Fakes::new();
    let mut m = Model::new("node-a", SelectionOptions::default());
    m.set_node(Some(&mk_node("node-a").internal_ip("192.168.0.10").build()));
    m.apply_service(
        &mk_service("default", "web")
            .type_("NodePort")
            .cluster_ip("10.96.0.10")
            .node_port("http", 80, "TCP", 30080)
            .external_traffic_policy_local()
            .client_ip_affinity(Some(600))
            .build(),
    );
    m.apply_slice(
        &mk_slice("default", "web-1", "web")
            .port("http", 8080, "TCP")
            .endpoint_on("10.244.2.6", "node-b")
            .build(),
    );
    // kube-proxy's no-local-endpoints metric: one port dropping external traffic.
    let stats = sync(&mut f.backend(), &mut m, SyncKind::Full);
    let v4 = &stats.families[0];
    assert_eq!(
        (v4.family, v4.no_local_internal, v4.no_local_external),
        (IpFamily::V4, 0, 1)
    );
    let text = f.backend().render(&m.desired());
    assert!(
        text.contains("-A -t 10.96.0.10:80 -s rr -p 600\n-a -t 10.96.0.10:80 -r 10.244.2.6:8080"),
        "{text}"
    );
    // Pods and the node keep the cluster endpoints; everyone else is dropped.
    assert!(
        text.contains("-A -t 192.168.0.10:30080 -s rr -p 600\n-a -t 192.168.0.10:30080 -r 10.244.2.6:8080"),
        "{text}"
    );
    let drop = "-A KUBE-IPVS-FILTER -m comment --comment \"default/web:http has no local endpoints\" \
                -d 192.168.0.10/32 -p tcp --dport 30080 ! -s 10.244.0.0/16 -m addrtype ! --src-type LOCAL -j DROP";
    assert!(text.lines().any(|l| l == drop), "{text}");
    assert!(
        !text.contains("-d 10.96.0.10/32"),
        "internal traffic is not dropped: {text}"
    );
}

#[test]
fn cleanup_removes_only_kube_ipvs0_servers_the_interface_and_kube_proxys_sets() {
    let f = Fakes {
        runner: FakeRunner::with_responder(|call| CommandOutput {
            status: 0,
            stdout: match (call.program.as_str(), call.args.first().map(String::as_str)) {
                ("ipset", Some("list")) => {
                    "KUBE-CLUSTER-IP\ncali40all-ipam-pools\nKUBE-6-LOOP-BACK\nKUBE-MINE\n".into()
                }
                // kube-proxy's record of its NodePorts, and the node's addresses.
                ("ipset", Some("save")) => "add KUBE-NODE-PORT-TCP 30080\n".into(),
                ("ip", _) => "2: eth0    inet 192.168.0.10/24 brd 192.168.0.255 scope global eth0\n".into(),
                _ => String::new(),
            },
            stderr: String::new(),
        }),
        ..Fakes::new()
    };
    let mut b = f.backend();
    let mut m = model();
    sync(&mut b, &mut m, SyncKind::Full);
    let foreign = VirtualServer::new(tcp("192.168.0.10", 443), "wrr");
    f.ipvs.add_service(&foreign).expect("foreign");
    b.cleanup().expect("cleanup");
    let left: Vec<ServiceKey> = f.ipvs.services().expect("list").into_iter().map(|s| s.key).collect();
    // The NodePort server goes (its port is in KUBE-NODE-PORT-TCP); the
    // foreign one on the same node address stays.
    assert_eq!(left, [tcp("192.168.0.10", 443)]);
    assert!(f.links.addresses(DUMMY_INTERFACE).is_err(), "interface gone");
    let destroyed: Vec<String> = f
        .runner
        .calls()
        .iter()
        .filter(|c| c.args.first().map(String::as_str) == Some("destroy"))
        .map(|c| c.args[1].clone())
        .collect();
    assert_eq!(destroyed, ["KUBE-CLUSTER-IP", "KUBE-6-LOOP-BACK"]);
}

#[test]
fn starting_in_another_mode_leaves_ipvs_alone() {
    let cfg = crate::config::Config::default();
    let others = crate::backend::other_modes(&cfg, Sys::fake(FakeRunner::new()));
    assert!(others.iter().all(|b| b.mode() != ProxyMode::Ipvs));
    assert!(!others.is_empty());
    // Starting in ipvs mode keeps the iptables chains it shares with the
    // iptables mode; userspace mode's own chains go.
    let cfg = crate::config::Config {
        mode: ProxyMode::Ipvs,
        ..crate::config::Config::default()
    };
    let others: Vec<ProxyMode> = crate::backend::other_modes(&cfg, Sys::fake(FakeRunner::new()))
        .iter()
        .map(|b| b.mode())
        .collect();
    assert_eq!(others, [ProxyMode::Nftables, ProxyMode::Userspace]);
}

#[test]
fn a_restarted_backend_changes_no_virtual_or_real_server() {
    let f = Fakes::new();
    let mut m = model();
    sync(&mut f.backend(), &mut m, SyncKind::Full);
    f.ipvs.clear_ops();
    let mut m2 = model();
    sync(&mut f.backend(), &mut m2, SyncKind::Full);
    assert!(f.ipvs.ops().is_empty(), "{:?}", f.ipvs.ops());
}

#[test]
fn first_sync_sets_kube_proxys_sysctls_and_the_configured_timeouts() {
    let f = Fakes {
        opts: IpvsOpts {
            strict_arp: true,
            timeouts: Timeouts {
                tcp: 900,
                tcp_fin: 120,
                udp: 300,
            },
            ..IpvsOpts::default()
        },
        ..Fakes::new()
    };
    f.sysctl.set("kernel.osrelease", "5.4.0-150-generic").expect("set");
    let mut b = f.backend();
    let mut m = model();
    sync(&mut b, &mut m, SyncKind::Full);
    for (key, value) in [
        ("net.ipv4.vs.conntrack", "1"),
        ("net.ipv4.vs.conn_reuse_mode", "0"),
        ("net.ipv4.vs.expire_nodest_conn", "1"),
        ("net.ipv4.vs.expire_quiescent_template", "1"),
        ("net.ipv4.ip_forward", "1"),
        ("net.ipv4.conf.all.arp_ignore", "1"),
        ("net.ipv4.conf.all.arp_announce", "2"),
    ] {
        assert_eq!(f.sysctl.value(key).as_deref(), Some(value), "{key}");
    }
    assert_eq!(f.ipvs.timeouts().expect("timeouts").tcp, 900);
    // On a kernel with the conn_reuse fix the sysctl is left alone.
    let g = Fakes::new();
    g.sysctl.set("kernel.osrelease", "6.1.0-57-amd64").expect("set");
    sync(&mut g.backend(), &mut model(), SyncKind::Full);
    assert_eq!(g.sysctl.value("net.ipv4.vs.conn_reuse_mode"), None);
    assert_eq!(g.sysctl.value("net.ipv4.conf.all.arp_ignore"), None, "strictARP off");
}

#[test]
fn exclude_cidrs_are_never_touched() {
    let f = Fakes {
        opts: IpvsOpts {
            exclude_cidrs: vec!["10.96.9.0/24".parse().expect("cidr")],
            ..IpvsOpts::default()
        },
        ..Fakes::new()
    };
    // A stale-looking virtual server on a kube-ipvs0 address in an excluded range.
    f.links.ensure_dummy(DUMMY_INTERFACE).expect("dummy");
    f.links.add_address(DUMMY_INTERFACE, ip("10.96.9.9")).expect("addr");
    let kept = VirtualServer::new(tcp("10.96.9.9", 80), "rr");
    f.ipvs.add_service(&kept).expect("add");
    sync(&mut f.backend(), &mut model(), SyncKind::Full);
    assert!(f.ipvs.services().expect("list").contains(&kept));
    assert!(
        f.links
            .addresses(DUMMY_INTERFACE)
            .expect("addrs")
            .contains(&ip("10.96.9.9")),
        "address kept"
    );
}

#[test]
fn kernel_versions_parse_from_release_strings() {
    assert_eq!(kernel_version("6.1.0-57-amd64"), Some((6, 1)));
    assert_eq!(kernel_version("5.10.0\n"), Some((5, 10)));
    assert_eq!(kernel_version("garbage"), None);
}

#[test]
fn a_leaving_tcp_real_server_drains_until_its_connections_are_gone_and_can_come_back() {
    let f = Fakes::new();
    let mut b = f.backend();
    let mut m = model();
    sync(&mut b, &mut m, SyncKind::Full);
    let cip = tcp("10.96.0.10", 80);
    let leaving = ip("10.244.2.6");
    f.ipvs.set_conns(&cip, leaving, 8080, 1, 3);
    f.ipvs.clear_ops();
    m.apply_slice(&slice("web", &["10.244.1.5"]));
    sync(&mut b, &mut m, SyncKind::Partial);
    let weight = |f: &Fakes| {
        f.ipvs
            .destinations(&cip)
            .expect("list")
            .into_iter()
            .find(|d| d.server.addr == leaving)
            .map(|d| d.server.weight)
    };
    assert_eq!(weight(&f), Some(0), "kept with weight 0 while it has connections");
    assert!(
        f.ipvs
            .ops()
            .contains(&"edit-dest TCP 10.96.0.10:80 -> 10.244.2.6:8080 w0".to_string())
    );
    // Nothing changes while connections remain.
    f.ipvs.clear_ops();
    sync(&mut b, &mut m, SyncKind::Partial);
    assert!(f.ipvs.ops().is_empty(), "{:?}", f.ipvs.ops());
    // It comes back: weight 1 again, nothing deleted.
    m.apply_slice(&slice("web", &["10.244.1.5", "10.244.2.6"]));
    sync(&mut b, &mut m, SyncKind::Partial);
    assert_eq!(weight(&f), Some(1));
    // It goes again and its connections end: deleted at the next sync,
    // also after a restart (the drain is read back from the kernel).
    m.apply_slice(&slice("web", &["10.244.1.5"]));
    sync(&mut b, &mut m, SyncKind::Partial);
    assert_eq!(weight(&f), Some(0));
    f.ipvs.set_conns(&cip, leaving, 8080, 0, 0);
    let mut restarted = f.backend();
    sync(
        &mut restarted,
        &mut model_with_endpoints(&["10.244.1.5"]),
        SyncKind::Full,
    );
    assert_eq!(weight(&f), None, "drained and deleted");
}

#[test]
fn a_leaving_udp_real_server_goes_at_once() {
    let f = Fakes::new();
    let mut b = f.backend();
    let mut m = Model::new("node-a", SelectionOptions::default());
    m.apply_service(
        &mk_service("default", "dns")
            .cluster_ip("10.96.0.53")
            .port("dns", 53, "UDP")
            .build(),
    );
    let dns = |eps: &[&str]| {
        mk_slice("default", "dns-1", "dns")
            .port("dns", 53, "UDP")
            .endpoints(eps)
            .build()
    };
    m.apply_slice(&dns(&["10.244.1.5", "10.244.2.6"]));
    sync(&mut b, &mut m, SyncKind::Full);
    let key = ServiceKey::Addr {
        protocol: Protocol::Udp,
        addr: ip("10.96.0.53"),
        port: 53,
    };
    f.ipvs.set_conns(&key, ip("10.244.2.6"), 53, 0, 5);
    f.ipvs.clear_ops();
    m.apply_slice(&dns(&["10.244.1.5"]));
    sync(&mut b, &mut m, SyncKind::Partial);
    assert_eq!(f.ipvs.ops(), ["delete-dest UDP 10.96.0.53:53 -> 10.244.2.6:53"]);
}

/// [`model`] with other endpoints for `web`.
fn model_with_endpoints(eps: &[&str]) -> Model {
    let mut m = model();
    m.apply_slice(&slice("web", eps));
    m
}

#[test]
fn a_restart_removes_a_node_port_deleted_meanwhile_but_not_a_foreign_server() {
    let f = Fakes {
        runner: FakeRunner::with_responder(|call| CommandOutput {
            status: 0,
            // kube-proxy's record of the NodePorts it programmed.
            stdout: if call.program == "ipset" && call.args.first().map(String::as_str) == Some("save") {
                "add KUBE-NODE-PORT-TCP 30080\n".into()
            } else {
                String::new()
            },
            stderr: String::new(),
        }),
        ..Fakes::new()
    };
    sync(&mut f.backend(), &mut model(), SyncKind::Full);
    let foreign = VirtualServer::new(tcp("192.168.0.10", 443), "wrr");
    f.ipvs.add_service(&foreign).expect("foreign");
    // Restart: every service was deleted while kproxy was down.
    let mut empty = Model::new("node-a", SelectionOptions::default());
    empty.set_node(Some(&mk_node("node-a").internal_ip("192.168.0.10").build()));
    sync(&mut f.backend(), &mut empty, SyncKind::Full);
    let left: Vec<ServiceKey> = f.ipvs.services().expect("list").into_iter().map(|s| s.key).collect();
    assert_eq!(left, [tcp("192.168.0.10", 443)]);
}
