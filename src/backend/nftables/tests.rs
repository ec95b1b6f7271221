//! nftables backend against the sys fakes: what goes to `nft -f -`.

use std::sync::{Arc, Mutex};

use super::*;
use crate::backend::test_fixtures::{model_with, slice};
use crate::config::NodePortAddresses;
use crate::model::builders::{mk_node, mk_service};
use crate::model::{Model, SelectionOptions};
use crate::sys::{CommandOutput, FakeCall, FakeRunner};

fn settings() -> Settings {
    Settings {
        masquerade_mark: 0x4000,
        masquerade_all: false,
        cluster_cidrs: vec!["10.244.0.0/16".parse().expect("cidr")],
        nodeport_addresses: NodePortAddresses::All,
        localhost_nodeports: false,
        conntrack_liberal: false,
    }
}

/// A fake kernel: answers `uname -r` and the chain/set listing from canned
/// text, fails transactions while `fail` is set.
#[derive(Clone)]
struct FakeKernel {
    release: Arc<Mutex<String>>,
    listing: Arc<Mutex<String>>,
    fail: Arc<Mutex<bool>>,
    runner: FakeRunner,
}

impl FakeKernel {
    fn new() -> Self {
        let release = Arc::new(Mutex::new("6.18.44-fc\n".to_string()));
        let listing = Arc::new(Mutex::new(String::new()));
        let fail = Arc::new(Mutex::new(false));
        let (r, l, f) = (release.clone(), listing.clone(), fail.clone());
        let runner = FakeRunner::with_responder(move |call: &FakeCall| {
            let ok = |stdout: String| CommandOutput {
                status: 0,
                stdout,
                stderr: String::new(),
            };
            match (call.program.as_str(), call.args.first().map(String::as_str)) {
                ("uname", _) => ok(r.lock().expect("lock").clone()),
                ("nft", Some("-t")) => ok(l.lock().expect("lock").clone()),
                ("nft", _) if *f.lock().expect("lock") => CommandOutput {
                    status: 1,
                    stdout: String::new(),
                    stderr: "/dev/stdin:2:1-5: Error: Could not process rule: No such file or directory\n".into(),
                },
                _ => ok(String::new()),
            }
        });
        Self {
            release,
            listing,
            fail,
            runner,
        }
    }

    fn backend(&self) -> NftablesBackend {
        NftablesBackend::new(Sys::fake(self.runner.clone()), settings(), None)
    }

    fn set_fail(&self, fail: bool) {
        *self.fail.lock().expect("lock") = fail;
    }

    /// The stdin of every `nft -f -` transaction (not listings) so far.
    fn transactions(&self) -> Vec<String> {
        self.runner
            .calls()
            .into_iter()
            .filter(|c| c.program == NFT && c.args == ["-f", "-"])
            .map(|c| c.stdin)
            .collect()
    }

    fn listings(&self) -> usize {
        self.runner
            .calls()
            .iter()
            .filter(|c| c.program == NFT && c.args.first().map(String::as_str) == Some("-t"))
            .count()
    }
}

/// Syncs the model's pending changes with `kind` and acknowledges them.
fn sync(b: &mut NftablesBackend, m: &mut Model, kind: SyncKind) -> Result<SyncStats, BackendError> {
    let (desired, changes) = (m.desired(), m.changes());
    let stats = b.sync(&desired, &changes, kind)?;
    m.ack(&changes);
    Ok(stats)
}

fn web_chains() -> names::PortChains {
    names::PortChains::new(&ServicePortName::new(
        crate::model::ServiceName::new("default", "web"),
        "http",
        crate::model::Protocol::Tcp,
    ))
}

fn lines_with<'a>(text: &'a str, needle: &str) -> Vec<&'a str> {
    text.lines().filter(|l| l.contains(needle)).collect()
}

#[test]
fn full_sync_is_one_transaction_with_both_tables_and_every_service() {
    let k = FakeKernel::new();
    let mut b = k.backend();
    let mut m = model_with(3);
    let stats = sync(&mut b, &mut m, SyncKind::Full).expect("sync");
    let tx = k.transactions();
    assert_eq!(tx.len(), 1, "one transaction");
    let tx = &tx[0];
    for family in ["ip", "ip6"] {
        assert!(tx.contains(&format!("add table {family} kproxy")), "{family} table");
        assert!(tx.contains(&format!("flush table {family} kproxy\n")), "{family} flush");
        assert!(tx.contains(&format!(
            "add chain {family} kproxy nat-output {{ type nat hook output priority -100 ; }}"
        )));
    }
    let web = web_chains();
    assert!(tx.contains(&format!("add chain ip kproxy {}\n", web.service)));
    assert!(
        tx.contains("\t10.96.0.10 . tcp . 80 : goto service-"),
        "web's cluster IP in service-ips"
    );
    assert!(
        tx.contains("numgen random mod 2 0 meta l4proto tcp dnat to 10.244.0.1:8080"),
        "two-endpoint cascade"
    );
    assert!(!tx.contains("chain ip kproxy endpoint-"), "no chain per endpoint");
    assert!(tx.contains("\t10.244.0.2 . 10.244.0.2"), "hairpin entry");
    assert!(!tx.contains("vmap {"), "no anonymous vmap per service");
    assert_eq!(stats.ports_total, 4);
    assert_eq!(stats.bytes_written, tx.len());
    assert_eq!(k.listings(), 1, "stale objects found by listing names once");
    sync(&mut b, &mut m, SyncKind::Full).expect("periodic full");
    assert_eq!(k.listings(), 1, "memory is whole: no second listing");
    assert_eq!(k.transactions().len(), 2);
}

#[test]
fn a_periodic_full_sync_deletes_what_memory_says_is_stale() {
    let k = FakeKernel::new();
    let mut b = k.backend();
    let mut m = model_with(1);
    sync(&mut b, &mut m, SyncKind::Full).expect("full");
    m.delete_service(&crate::model::ServiceName::new("default", "svc-00000"));
    // The change is not synced partially: the next sync is a periodic full one.
    sync(&mut b, &mut m, SyncKind::Full).expect("periodic full");
    let tx = k.transactions().pop().expect("tx");
    let stale: Vec<&str> = lines_with(&tx, "delete chain ip kproxy service-");
    assert_eq!(stale.len(), 1, "{tx}");
    assert!(stale[0].contains("default/svc-00000/"), "{tx}");
    assert_eq!(k.listings(), 1);
}

#[test]
fn one_endpoint_change_sends_a_transaction_independent_of_the_number_of_services() {
    let mut transactions = Vec::new();
    for n in [10, 1000] {
        let k = FakeKernel::new();
        let mut b = k.backend();
        let mut m = model_with(n);
        sync(&mut b, &mut m, SyncKind::Full).expect("full");
        m.apply_slice(&slice("web", &["10.244.0.1", "10.244.0.3"]));
        let stats = sync(&mut b, &mut m, SyncKind::Partial).expect("partial");
        assert_eq!(stats.ports_written, 1);
        let tx = k.transactions().pop().expect("partial transaction");
        assert_eq!(k.listings(), 1, "a partial sync reads nothing back:\n{tx}");
        transactions.push(tx);
    }
    assert_eq!(
        transactions[0], transactions[1],
        "same transaction at 10 and 1000 services"
    );
    let tx = &transactions[0];
    let web = web_chains().service;
    let expected = [
        format!("flush chain ip kproxy {web}"),
        format!("add rule ip kproxy {web} numgen random mod 2 0 meta l4proto tcp dnat to 10.244.0.1:8080"),
        format!("add rule ip kproxy {web} meta l4proto tcp dnat to 10.244.0.3:8080"),
        "delete element ip kproxy hairpin { 10.244.0.2 . 10.244.0.2 }".to_string(),
        "add element ip kproxy hairpin { 10.244.0.3 . 10.244.0.3 }".to_string(),
    ];
    for e in &expected {
        assert!(tx.contains(e.as_str()), "missing {e:?} in\n{tx}");
    }
    assert!(!tx.contains("service-ips"), "the dispatch is untouched:\n{tx}");
    assert!(
        !tx.contains("table") && !tx.contains("services"),
        "nothing shared:\n{tx}"
    );
    assert_eq!(tx.lines().count(), 6, "small:\n{tx}");
}

#[test]
fn new_and_deleted_services_add_and_remove_their_objects_in_order() {
    let k = FakeKernel::new();
    let mut b = k.backend();
    let mut m = model_with(2);
    sync(&mut b, &mut m, SyncKind::Full).expect("full");
    m.apply_service(
        &mk_service("default", "np")
            .type_("NodePort")
            .cluster_ip("10.96.5.5")
            .node_port("http", 80, "TCP", 30080)
            .build(),
    );
    m.apply_slice(&slice("np", &["10.244.5.5"]));
    sync(&mut b, &mut m, SyncKind::Partial).expect("add");
    let add = k.transactions().pop().expect("tx");
    assert!(add.contains("add element ip kproxy cluster-ips { 10.96.5.5 }"), "{add}");
    assert!(
        add.contains("add element ip kproxy service-nodeports { tcp . 30080 : goto external-"),
        "{add}"
    );
    assert!(
        add.contains("add element ip kproxy service-ips { 10.96.5.5 . tcp . 80 : goto service-"),
        "{add}"
    );
    let first_rule = add.find("add rule").expect("rules");
    assert!(
        add.rfind("add chain").expect("chains") < first_rule,
        "chains before rules"
    );
    assert!(
        add.find("add element").expect("elements") > first_rule,
        "elements after rules"
    );

    m.delete_service(&crate::model::ServiceName::new("default", "np"));
    sync(&mut b, &mut m, SyncKind::Partial).expect("delete");
    let del = k.transactions().pop().expect("tx");
    let deletes: Vec<&str> = del.lines().collect();
    assert!(deletes[0].starts_with("delete element"), "references go first:\n{del}");
    let chains: Vec<&str> = lines_with(&del, "delete chain");
    assert_eq!(chains.len(), 2, "external and service chains:\n{del}");
    assert!(
        chains[0].contains("external-") && chains[1].contains("service-"),
        "referrer first"
    );
    assert!(del.contains("delete element ip kproxy hairpin { 10.244.5.5 . 10.244.5.5 }"));
    assert!(del.contains("delete element ip kproxy cluster-ips { 10.96.5.5 }"));
    assert!(!del.contains("add "), "{del}");
}

#[test]
fn a_cluster_ip_shared_by_two_ports_stays_until_both_are_gone() {
    let k = FakeKernel::new();
    let mut b = k.backend();
    let mut m = Model::new("node-a", SelectionOptions::default());
    let two_ports = mk_service("default", "dns")
        .cluster_ip("10.96.0.53")
        .port("dns", 53, "UDP")
        .port("dns-tcp", 53, "TCP")
        .build();
    m.apply_service(&two_ports);
    sync(&mut b, &mut m, SyncKind::Full).expect("full");
    let one_port = mk_service("default", "dns")
        .cluster_ip("10.96.0.53")
        .port("dns", 53, "UDP")
        .build();
    m.apply_service(&one_port);
    sync(&mut b, &mut m, SyncKind::Partial).expect("one port left");
    let tx = k.transactions().pop().expect("tx");
    assert!(!tx.contains("cluster-ips"), "still used by the UDP port:\n{tx}");
    assert!(tx.contains("delete element ip kproxy no-endpoint-services { 10.96.0.53 . tcp . 53 }"));
    m.delete_service(&crate::model::ServiceName::new("default", "dns"));
    sync(&mut b, &mut m, SyncKind::Partial).expect("gone");
    let tx = k.transactions().pop().expect("tx");
    assert!(
        tx.contains("delete element ip kproxy cluster-ips { 10.96.0.53 }"),
        "{tx}"
    );
}

#[test]
fn endpoints_going_to_zero_swap_the_dispatch_for_a_reject() {
    let k = FakeKernel::new();
    let mut b = k.backend();
    let mut m = model_with(0);
    sync(&mut b, &mut m, SyncKind::Full).expect("full");
    m.apply_slice(&slice("web", &[]));
    sync(&mut b, &mut m, SyncKind::Partial).expect("partial");
    let tx = k.transactions().pop().expect("tx");
    let del = tx.find("delete element ip kproxy service-ips { 10.96.0.10 . tcp . 80 }");
    let add = tx.find("add element ip kproxy no-endpoint-services { 10.96.0.10 . tcp . 80 comment \"default/web:http\" : goto reject-chain }");
    assert!(del.is_some() && add.is_some(), "{tx}");
    assert!(del < tx.find("delete chain"), "element gone before its chain:\n{tx}");
}

#[test]
fn a_failed_transaction_changes_nothing_and_the_next_sync_is_full() {
    let k = FakeKernel::new();
    let mut b = k.backend();
    let mut m = model_with(2);
    sync(&mut b, &mut m, SyncKind::Full).expect("full");
    m.apply_slice(&slice("web", &["10.244.0.9"]));
    k.set_fail(true);
    let err = sync(&mut b, &mut m, SyncKind::Partial).expect_err("refused");
    match err {
        BackendError::Apply { context: Some(c), .. } => assert!(c.contains(">     2 "), "{c}"),
        e => panic!("unexpected {e:?}"),
    }
    k.set_fail(false);
    // The runner asks for a partial sync; the backend knows nothing any more.
    sync(&mut b, &mut m, SyncKind::Partial).expect("recovered");
    let tx = k.transactions().pop().expect("tx");
    assert!(tx.contains("flush table ip kproxy"), "a full sync");
    assert!(
        !tx.contains("delete table"),
        "not from scratch: the partial failed, not a full"
    );
    assert_eq!(k.listings(), 2);
}

#[test]
fn a_failed_full_sync_is_retried_from_scratch_once() {
    let k = FakeKernel::new();
    let mut b = k.backend();
    let mut m = model_with(1);
    k.set_fail(true);
    sync(&mut b, &mut m, SyncKind::Full).expect_err("refused");
    k.set_fail(false);
    sync(&mut b, &mut m, SyncKind::Full).expect("scratch");
    let tx = k.transactions().pop().expect("tx");
    assert!(tx.starts_with("add table ip kproxy\ndelete table ip kproxy\n"), "{tx}");
    assert!(tx.contains("add table ip6 kproxy\ndelete table ip6 kproxy\n"));
    sync(&mut b, &mut m, SyncKind::Full).expect("normal");
    let tx = k.transactions().pop().expect("tx");
    assert!(!tx.contains("delete table"), "back to flushing");
}

#[test]
fn full_sync_deletes_what_the_kernel_holds_and_nobody_wants() {
    let k = FakeKernel::new();
    *k.listing.lock().expect("lock") = "table ip kproxy {\n\tchain nat-output {\n\t\ttype nat hook output priority -100; policy accept;\n\t}\n\tchain service-AAAAAAAA-default/gone/tcp/http {\n\t}\n\tchain endpoint-BBBBBBBB-default/gone/tcp/http__10.1.1.1/80 {\n\t}\n}\ntable ip other {\n\tchain service-x/y {\n\t}\n}\ntable ip kproxy {\n\tset affinity-CCCCCCCC-default/gone/tcp/http__10.1.1.1/80 {\n\t\ttype ipv4_addr\n\t}\n\tset cluster-ips {\n\t}\n}\n".into();
    let mut b = k.backend();
    let mut m = model_with(1);
    sync(&mut b, &mut m, SyncKind::Full).expect("full");
    let tx = k.transactions().pop().expect("tx");
    let pos = |line: &str| {
        tx.lines()
            .position(|l| l == line)
            .unwrap_or_else(|| panic!("missing {line:?} in\n{tx}"))
    };
    let set = pos("delete set ip kproxy affinity-CCCCCCCC-default/gone/tcp/http__10.1.1.1/80");
    let endpoint = pos("delete chain ip kproxy endpoint-BBBBBBBB-default/gone/tcp/http__10.1.1.1/80");
    let service = pos("delete chain ip kproxy service-AAAAAAAA-default/gone/tcp/http");
    let ip6_start = tx
        .lines()
        .position(|l| l.starts_with("add table ip6"))
        .expect("ip6 part");
    // The last commands of the IPv4 part, once nothing refers to them.
    assert_eq!(set, ip6_start - 1, "sets after the chains using them:\n{tx}");
    let mut chains = [endpoint, service];
    chains.sort();
    assert_eq!(chains, [ip6_start - 3, ip6_start - 2], "{tx}");
    assert!(!tx.contains("service-x/y"), "another table is never touched");
    assert!(
        !tx.contains("delete chain ip kproxy nat-output\nadd rule"),
        "base chains are re-created"
    );
}

#[test]
fn old_kernels_delete_stale_chains_a_sync_later() {
    let k = FakeKernel::new();
    *k.release.lock().expect("lock") = "5.15.0-91-generic\n".into();
    let mut b = k.backend();
    let mut m = model_with(2);
    sync(&mut b, &mut m, SyncKind::Full).expect("full");
    m.delete_service(&crate::model::ServiceName::new("default", "svc-00000"));
    sync(&mut b, &mut m, SyncKind::Partial).expect("partial");
    let tx = k.transactions().pop().expect("tx");
    let stale = "default/svc-00000/tcp/http";
    assert!(lines_with(&tx, "delete chain").is_empty(), "not deleted yet:\n{tx}");
    assert_eq!(lines_with(&tx, "flush chain").len(), 1, "{tx}");
    assert!(lines_with(&tx, "flush chain")[0].contains(stale), "{tx}");
    // Too early: the next sync leaves it alone.
    m.apply_slice(&slice("svc-00001", &["10.244.1.7"]));
    sync(&mut b, &mut m, SyncKind::Partial).expect("early");
    let tx = k.transactions().pop().expect("tx");
    assert!(!tx.contains(stale), "{tx}");
    b.age_delayed(STALE_CHAIN_DELAY);
    m.apply_slice(&slice("svc-00001", &["10.244.1.8"]));
    sync(&mut b, &mut m, SyncKind::Partial).expect("later");
    let tx = k.transactions().pop().expect("tx");
    let deletes = lines_with(&tx, "delete chain");
    assert!(deletes.iter().any(|l| l.contains(stale)), "{tx}");
}

#[test]
fn affinity_sets_follow_endpoints_and_timeout_changes() {
    let k = FakeKernel::new();
    let mut b = k.backend();
    let mut m = Model::new("node-a", SelectionOptions::default());
    let sticky = |t: i32| {
        mk_service("default", "web")
            .cluster_ip("10.96.0.10")
            .port("http", 80, "TCP")
            .client_ip_affinity(Some(t))
            .build()
    };
    m.apply_service(&sticky(60));
    m.apply_slice(&slice("web", &["10.244.0.1"]));
    sync(&mut b, &mut m, SyncKind::Full).expect("full");
    let tx = k.transactions().pop().expect("tx");
    assert!(tx.contains("flags dynamic,timeout ; timeout 60s ;"), "{tx}");
    assert!(tx.contains("update @affinity-"), "{tx}");
    m.apply_service(&sticky(90));
    sync(&mut b, &mut m, SyncKind::Partial).expect("timeout");
    let tx = k.transactions().pop().expect("tx");
    assert_eq!(lines_with(&tx, "add set").len(), 1, "{tx}");
    assert!(tx.contains("timeout 90s"), "updated in place:\n{tx}");
    assert!(!tx.contains("delete set"), "affinity kept:\n{tx}");
    m.apply_slice(&slice("web", &["10.244.0.2"]));
    sync(&mut b, &mut m, SyncKind::Partial).expect("endpoint");
    let tx = k.transactions().pop().expect("tx");
    let del_set = tx.find("delete set ip kproxy affinity-").expect("stale set deleted");
    assert!(
        tx.find("flush chain").expect("rewritten chain") < del_set,
        "users first:\n{tx}"
    );
    assert!(tx.contains("ip saddr @affinity-"), "{tx}");
    assert!(tx.contains("update @affinity-"), "{tx}");
}

#[test]
fn node_address_changes_force_a_full_sync() {
    let k = FakeKernel::new();
    let mut b = NftablesBackend::new(
        Sys::fake(k.runner.clone()),
        Settings {
            nodeport_addresses: NodePortAddresses::Primary,
            ..settings()
        },
        Some(false),
    );
    let mut m = model_with(1);
    m.set_node(Some(&mk_node("node-a").internal_ip("192.168.1.10").build()));
    sync(&mut b, &mut m, SyncKind::Full).expect("full");
    let tx = k.transactions().pop().expect("tx");
    assert!(
        tx.contains("add element ip kproxy nodeport-ips { 192.168.1.10 }"),
        "{tx}"
    );
    assert!(tx.contains("ip daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports"));
    m.set_node(Some(&mk_node("node-a").internal_ip("192.168.1.11").build()));
    sync(&mut b, &mut m, SyncKind::Partial).expect("node change");
    let tx = k.transactions().pop().expect("tx");
    assert!(tx.contains("flush table ip kproxy"), "full sync");
    assert!(tx.contains("nodeport-ips { 192.168.1.11 }"));
}

#[test]
fn an_empty_partial_sync_sends_nothing() {
    let k = FakeKernel::new();
    let mut b = k.backend();
    let mut m = model_with(1);
    sync(&mut b, &mut m, SyncKind::Full).expect("full");
    let stats = sync(&mut b, &mut m, SyncKind::Partial).expect("nothing");
    assert_eq!(stats.bytes_written, 0);
    assert_eq!(k.transactions().len(), 1);
}

#[test]
fn cleanup_removes_our_tables_and_kube_proxys_in_one_idempotent_transaction() {
    let k = FakeKernel::new();
    let mut b = k.backend();
    b.cleanup().expect("cleanup");
    b.cleanup().expect("again");
    let tx = k.transactions();
    assert_eq!(tx.len(), 2);
    assert_eq!(
        tx[0],
        "add table ip kproxy\ndelete table ip kproxy\nadd table ip6 kproxy\ndelete table ip6 kproxy\n\
         add table ip kube-proxy\ndelete table ip kube-proxy\nadd table ip6 kube-proxy\ndelete table ip6 kube-proxy\n"
    );
}

#[test]
fn render_is_the_full_sync_without_kernel_knowledge() {
    let k = FakeKernel::new();
    let mut b = k.backend();
    let mut m = model_with(2);
    let desired = m.desired();
    let text = b.render(&desired);
    assert!(!text.contains("ip6 kproxy"), "no IPv6 services: no ip6 part");
    sync(&mut b, &mut m, SyncKind::Full).expect("full");
    let tx = k.transactions().pop().expect("tx");
    assert!(tx.starts_with(&text), "the full sync sends the render first");
}

#[test]
fn kernel_versions_parse() {
    assert_eq!(kernel_version("6.18.44-fc-v595\n"), Some((6, 18)));
    assert_eq!(kernel_version("5.15.0-91-generic"), Some((5, 15)));
    assert_eq!(kernel_version("6.2"), Some((6, 2)));
    assert_eq!(kernel_version("garbage"), None);
}

#[test]
fn listing_parses_only_our_tables() {
    let l = parse_listing(
        "table ip kproxy {\n\tchain a/b {\n\t}\n}\ntable ip6 kproxy {\n\tset affinity-x {\n\t}\n}\ntable inet filter {\n\tchain input {\n\t}\n}\n",
    );
    assert_eq!(l.chains.get(&IpFamily::V4).map(|c| c.len()), Some(1));
    assert!(l.sets[&IpFamily::V6].contains("affinity-x"));
    assert!(!l.chains.values().flatten().any(|c| c == "input"));
}

#[test]
fn stats_count_ports_without_local_endpoints_per_family() {
    let k = FakeKernel::new();
    let mut b = k.backend();
    let mut m = model_with(1);
    let itp = |name: &str| {
        mk_service("default", name)
            .cluster_ip("10.96.9.9")
            .port("http", 80, "TCP")
            .internal_traffic_policy_local()
            .build()
    };
    m.apply_service(&itp("itp"));
    m.apply_slice(&slice("itp", &["10.244.9.9"]));
    let stats = sync(&mut b, &mut m, SyncKind::Full).expect("full");
    let v4 = stats.families.iter().find(|f| f.family == IpFamily::V4).expect("v4");
    assert_eq!((v4.no_local_internal, v4.no_local_external), (1, 0));
    m.delete_service(&crate::model::ServiceName::new("default", "itp"));
    let stats = sync(&mut b, &mut m, SyncKind::Partial).expect("partial");
    assert_eq!(stats.families[0].no_local_internal, 0);
    assert_eq!(stats.families.len(), 2);
}

#[test]
fn old_kernels_reuse_a_flushed_chain_that_comes_back_instead_of_deleting_it() {
    let k = FakeKernel::new();
    *k.release.lock().expect("lock") = "6.1.0\n".into();
    let mut b = k.backend();
    let mut m = model_with(0);
    sync(&mut b, &mut m, SyncKind::Full).expect("full");
    let web = crate::model::ServiceName::new("default", "web");
    m.delete_service(&web);
    sync(&mut b, &mut m, SyncKind::Partial).expect("web leaves");
    b.age_delayed(STALE_CHAIN_DELAY);
    m.apply_service(
        &mk_service("default", "web")
            .cluster_ip("10.96.0.10")
            .port("http", 80, "TCP")
            .build(),
    );
    sync(&mut b, &mut m, SyncKind::Partial).expect("web is back");
    let tx = k.transactions().pop().expect("tx");
    let back = web_chains().service;
    assert!(lines_with(&tx, "delete chain").is_empty(), "{tx}");
    assert!(lines_with(&tx, "flush chain").iter().any(|l| l.contains(&back)), "{tx}");
    assert!(lines_with(&tx, "add rule").iter().any(|l| l.contains(&back)), "{tx}");
}
