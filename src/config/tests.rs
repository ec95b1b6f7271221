use std::time::Duration;

use clap::Parser;

use super::*;

fn flags(args: &[&str]) -> ProxyFlags {
    let mut argv = vec!["kproxy"];
    argv.extend_from_slice(args);
    Cli::try_parse_from(argv).expect("flags parse").flags
}

fn file(yaml: &str) -> KubeProxyConfiguration {
    KubeProxyConfiguration::parse(yaml, "test.yaml").expect("file parses")
}

#[test]
fn defaults_match_kube_proxy() {
    let cfg = Config::build(&flags(&[]), None).expect("valid");
    assert_eq!(cfg.mode, ProxyMode::Iptables);
    assert_eq!(cfg.sync_period, Duration::from_secs(30));
    assert_eq!(cfg.min_sync_period, Duration::from_secs(1));
    assert_eq!(cfg.metrics_bind_address.to_string(), "127.0.0.1:10249");
    assert_eq!(cfg.healthz_bind_address.to_string(), "0.0.0.0:10256");
    assert_eq!(cfg.masquerade_mark(), 0x4000);
    assert!(!cfg.masquerade_all);
    assert_eq!(cfg.nodeport_addresses, NodePortAddresses::All);
}

#[test]
fn flags_are_parsed() {
    let cfg = Config::build(
        &flags(&[
            "--proxy-mode=nftables",
            "--cluster-cidr=10.244.0.0/16,fd00:10::/56",
            "--nodeport-addresses=192.168.0.0/16",
            "--masquerade-all",
            "--sync-period=1m",
            "--min-sync-period=0s",
            "--hostname-override=Node-A",
            "--metrics-bind-address=0.0.0.0:9999",
            "-v=4",
        ]),
        None,
    )
    .expect("valid");
    assert_eq!(cfg.mode, ProxyMode::Nftables);
    assert_eq!(cfg.cluster_cidrs.len(), 2);
    assert!(matches!(cfg.nodeport_addresses, NodePortAddresses::Cidrs(ref n) if n.len() == 1));
    assert!(cfg.masquerade_all);
    assert_eq!(cfg.sync_period, Duration::from_secs(60));
    assert_eq!(cfg.min_sync_period, Duration::ZERO);
    assert_eq!(cfg.hostname_override.as_deref(), Some("node-a"));
    assert_eq!(cfg.metrics_bind_address.port(), 9999);
    assert_eq!(cfg.verbosity, 4);
}

const KUBEADM_CONFIG: &str = r#"
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
bindAddress: 0.0.0.0
bindAddressHardFail: false
clientConnection:
  acceptContentTypes: ""
  burst: 0
  contentType: ""
  kubeconfig: /var/lib/kube-proxy/kubeconfig.conf
  qps: 0
clusterCIDR: 10.244.0.0/16
configSyncPeriod: 0s
conntrack:
  maxPerCore: null
  min: null
  tcpBeLiberal: false
  tcpCloseWaitTimeout: null
  tcpEstablishedTimeout: null
  udpStreamTimeout: 0s
  udpTimeout: 0s
detectLocal:
  bridgeInterface: ""
  interfaceNamePrefix: ""
detectLocalMode: ""
enableProfiling: false
healthzBindAddress: ""
hostnameOverride: ""
iptables:
  localhostNodePorts: null
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
ipvs:
  excludeCIDRs: null
  minSyncPeriod: 0s
  scheduler: ""
  strictARP: false
  syncPeriod: 0s
  tcpFinTimeout: 0s
  tcpTimeout: 0s
  udpTimeout: 0s
logging:
  flushFrequency: 0
  options:
    json:
      infoBufferSize: "0"
  verbosity: 0
metricsBindAddress: ""
mode: ""
nftables:
  masqueradeAll: false
  masqueradeBit: null
  minSyncPeriod: 0s
  syncPeriod: 0s
nodePortAddresses: null
oomScoreAdj: null
portRange: ""
showHiddenMetricsForVersion: ""
winkernel:
  enableDSR: false
  forwardHealthCheckVip: false
  networkName: ""
  rootHnsEndpointName: ""
  sourceVip: ""
"#;

#[test]
fn kubeadm_configmap_is_accepted() {
    // kubeadm writes 0s for "unset" sync periods; kube-proxy then applies its defaults.
    let f = file(KUBEADM_CONFIG);
    assert_eq!(f.cluster_cidr.as_deref(), Some("10.244.0.0/16"));
    assert_eq!(
        f.client_connection.and_then(|c| c.kubeconfig).as_deref(),
        Some("/var/lib/kube-proxy/kubeconfig.conf")
    );
}

#[test]
fn file_values_apply_and_flags_override_them() {
    let f = file(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: nftables\n\
         clusterCIDR: 10.244.0.0/16\nnftables:\n  syncPeriod: 45s\n  minSyncPeriod: 2s\n  masqueradeBit: 15\n\
         metricsBindAddress: 0.0.0.0:10249\nhostnameOverride: worker-1\n",
    );
    let cfg = Config::build(&flags(&[]), Some(&f)).expect("valid");
    assert_eq!(cfg.mode, ProxyMode::Nftables);
    assert_eq!(cfg.sync_period, Duration::from_secs(45));
    assert_eq!(cfg.min_sync_period, Duration::from_secs(2));
    assert_eq!(cfg.masquerade_mark(), 0x8000);
    assert_eq!(cfg.hostname_override.as_deref(), Some("worker-1"));

    let cfg = Config::build(&flags(&["--proxy-mode=iptables", "--sync-period=10s"]), Some(&f)).expect("valid");
    assert_eq!(cfg.mode, ProxyMode::Iptables);
    assert_eq!(cfg.sync_period, Duration::from_secs(10));
}

#[test]
fn ipvs_section_applies_and_flags_override_it() {
    let f = file(
        "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: ipvs\n\
         ipvs:\n  scheduler: sh\n  excludeCIDRs: [\"10.1.0.0/16\", \"fd00:9::/64\"]\n  strictARP: true\n\
         \x20 tcpTimeout: 900s\n  tcpFinTimeout: 2m\n  udpTimeout: 300s\n",
    );
    let cfg = Config::build(&flags(&[]), Some(&f)).expect("valid");
    assert_eq!(cfg.mode, ProxyMode::Ipvs);
    assert_eq!(cfg.ipvs.scheduler, "sh");
    assert_eq!(cfg.ipvs.exclude_cidrs.len(), 2);
    assert!(cfg.ipvs.strict_arp);
    assert_eq!(
        (cfg.ipvs.tcp_timeout, cfg.ipvs.tcp_fin_timeout, cfg.ipvs.udp_timeout),
        (
            Duration::from_secs(900),
            Duration::from_secs(120),
            Duration::from_secs(300)
        )
    );
    let cfg = Config::build(&flags(&["--ipvs-scheduler=mh", "--ipvs-strict-arp=false"]), Some(&f)).expect("valid");
    assert_eq!(cfg.ipvs.scheduler, "mh");
    assert!(!cfg.ipvs.strict_arp);
    // kubeadm's empty values mean "unset".
    let cfg = Config::build(&flags(&[]), Some(&file(KUBEADM_CONFIG))).expect("valid");
    assert_eq!(cfg.ipvs, IpvsConfig::default());
}

#[test]
fn bad_input_is_refused_with_a_named_source() {
    let cases: &[(&[&str], &str)] = &[
        (&["--proxy-mode=kernelspace"], "--proxy-mode"),
        (&["--cluster-cidr=10.0.0/8"], "--cluster-cidr"),
        (&["--sync-period=-5s"], "--sync-period"),
        (&["--min-sync-period=-1s"], "--min-sync-period"),
        (&["--sync-period=0s"], "--sync-period"),
        (&["--sync-period=1s", "--min-sync-period=5s"], "--min-sync-period"),
        (&["--metrics-bind-address=nonsense"], "--metrics-bind-address"),
        (&["--nodeport-addresses=1.2.3.4"], "--nodeport-addresses"),
        (&["--ipvs-scheduler=fastest"], "--ipvs-scheduler"),
        (&["--ipvs-exclude-cidrs=10.0.0/8"], "--ipvs-exclude-cidrs"),
        (&["--ipvs-tcp-timeout=-1s"], "--ipvs-tcp-timeout"),
    ];
    for (args, source) in cases {
        let err = Config::build(&flags(args), None).expect_err("must fail").to_string();
        assert!(err.contains(source), "{args:?}: {err}");
    }
}

#[test]
fn unknown_and_mistyped_fields_are_refused() {
    let unknown = KubeProxyConfiguration::parse("kind: KubeProxyConfiguration\nmodee: iptables\n", "f.yaml");
    let err = unknown.expect_err("unknown field").to_string();
    assert!(err.contains("modee"), "{err}");
    let bad_kind = KubeProxyConfiguration::parse("kind: KubeletConfiguration\n", "f.yaml");
    assert!(bad_kind.expect_err("bad kind").to_string().contains("kind"));
    let nested = KubeProxyConfiguration::parse("iptables:\n  masqueradeAlll: true\n", "f.yaml");
    assert!(
        nested
            .expect_err("nested unknown")
            .to_string()
            .contains("masqueradeAlll")
    );
}

#[test]
fn nodeport_addresses_primary_keyword() {
    let cfg = Config::build(&flags(&["--nodeport-addresses=primary"]), None).expect("valid");
    assert_eq!(cfg.nodeport_addresses, NodePortAddresses::Primary);
}

#[test]
fn udp_timeout_comes_from_the_flag_or_the_file_and_must_be_positive() {
    let cfg = Config::build(&flags(&[]), None).expect("valid");
    assert_eq!(cfg.udp_idle_timeout, Duration::from_millis(250));
    let cfg = Config::build(&flags(&["--udp-timeout=2s"]), None).expect("valid");
    assert_eq!(cfg.udp_idle_timeout, Duration::from_secs(2));
    let yaml = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nudpIdleTimeout: 500ms\n";
    let cfg = Config::build(&flags(&[]), Some(&file(yaml))).expect("valid");
    assert_eq!(cfg.udp_idle_timeout, Duration::from_millis(500));
    let err = Config::build(&flags(&["--udp-timeout=0s"]), None).expect_err("zero refused");
    assert_eq!(err.to_string(), "invalid --udp-timeout \"0s\": must be greater than 0");
}

#[test]
fn localhost_nodeport_proxy_needs_nftables_the_gate_and_a_loopback_address() {
    let gate = "--feature-gates=KubeProxyNFTablesLocalhostNodePorts=true";
    let on = |args: &[&str]| {
        Config::build(&flags(args), None)
            .expect("valid")
            .localhost_nodeport_proxy()
    };
    assert!(on(&["--proxy-mode=nftables", "--nodeport-addresses=localhost", gate]));
    assert!(on(&[
        "--proxy-mode=nftables",
        "--nodeport-addresses=10.0.0.0/8,127.0.0.1/32",
        gate
    ]));
    assert!(
        !on(&["--proxy-mode=nftables", "--nodeport-addresses=localhost"]),
        "gate off"
    );
    assert!(!on(&["--proxy-mode=nftables", gate]), "no loopback address");
    assert!(!on(&["--proxy-mode=iptables", "--nodeport-addresses=localhost", gate]));
    let cfg = Config::build(&flags(&["--nodeport-addresses=localhost"]), None).expect("valid");
    let NodePortAddresses::Cidrs(nets) = cfg.nodeport_addresses else {
        panic!("localhost is a list of CIDRs");
    };
    let nets: Vec<String> = nets.iter().map(ToString::to_string).collect();
    assert_eq!(nets, ["127.0.0.0/8", "::1/128"]);
}

#[test]
fn localhost_nodeport_proxy_from_the_config_file() {
    let yaml = "apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nmode: nftables\n\
                featureGates:\n  KubeProxyNFTablesLocalhostNodePorts: true\nnodePortAddresses: [primary, localhost]\n";
    let err = Config::build(&flags(&[]), Some(&file(yaml))).expect_err("primary only alone");
    assert!(err.to_string().contains("primary"), "{err}");
    let yaml = yaml.replace("[primary, localhost]", "[localhost]");
    let cfg = Config::build(&flags(&[]), Some(&file(&yaml))).expect("valid");
    assert!(cfg.localhost_nodeport_proxy());
    // The flag overrides the file's gate.
    let gate_off = flags(&["--feature-gates=KubeProxyNFTablesLocalhostNodePorts=false"]);
    assert!(
        !Config::build(&gate_off, Some(&file(&yaml)))
            .expect("valid")
            .localhost_nodeport_proxy()
    );
    let err = Config::build(&flags(&["--feature-gates=Foo"]), None).expect_err("malformed gate");
    assert!(err.to_string().starts_with("invalid --feature-gates"), "{err}");
}
