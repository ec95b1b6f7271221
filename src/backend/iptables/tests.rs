//! iptables backend against the sys fakes: what goes to iptables-restore.

use std::sync::{Arc, Mutex};

use super::*;
use crate::backend::test_fixtures::{model_with, slice};
use crate::model::builders::mk_service;
use crate::model::synth::{self, Mix, SynthParams};
use crate::model::{Model, SelectionOptions};
use crate::sys::{CommandOutput, FakeCall, FakeRunner};

fn settings() -> Settings {
    Settings {
        masquerade_mark: 0x4000,
        masquerade_all: false,
        cluster_cidrs: vec!["10.244.0.0/16".parse().expect("cidr")],
        nodeport_addresses: NodePortAddresses::All,
        localhost_nodeports: true,
        conntrack_liberal: false,
    }
}

/// A fake kernel: answers `-S` listings and `iptables-save` from canned
/// text, fails restores while `fail` is set.
#[derive(Clone, Default)]
struct FakeKernel {
    save: Arc<Mutex<String>>,
    listing: Arc<Mutex<String>>,
    fail: Arc<Mutex<bool>>,
}

impl FakeKernel {
    fn runner(&self) -> FakeRunner {
        let me = self.clone();
        FakeRunner::with_responder(move |call: &FakeCall| {
            let ok = |stdout: String| CommandOutput {
                status: 0,
                stdout,
                stderr: String::new(),
            };
            if call.program.ends_with("-restore") {
                if *me.fail.lock().expect("lock") {
                    return CommandOutput {
                        status: 1,
                        stdout: String::new(),
                        stderr: "iptables-restore: line 3 failed\n".into(),
                    };
                }
                return ok(String::new());
            }
            if call.program.ends_with("-save") {
                return ok(me.save.lock().expect("lock").clone());
            }
            if call.args.iter().any(|a| a == "-S") {
                return ok(me.listing.lock().expect("lock").clone());
            }
            ok(String::new())
        })
    }
}

fn restores(runner: &FakeRunner) -> Vec<String> {
    runner
        .calls()
        .into_iter()
        .filter(|c| c.program == "iptables-restore")
        .map(|c| c.stdin)
        .collect()
}

fn sync(b: &mut IptablesBackend, m: &mut Model, kind: SyncKind) -> Result<SyncStats, BackendError> {
    let (desired, changes) = (m.desired(), m.changes());
    let r = b.sync(&desired, &changes, kind);
    if r.is_ok() {
        m.ack(&changes);
    }
    r
}

#[test]
fn full_sync_is_one_restore_per_family_with_noflush() {
    let kernel = FakeKernel::default();
    let runner = kernel.runner();
    let mut b = IptablesBackend::new(Sys::fake(runner.clone()), settings(), Some(Variant::Plain));
    let mut m = model_with(3);
    sync(&mut b, &mut m, SyncKind::Full).expect("sync");
    let calls = runner.calls();
    let restore_calls: Vec<&FakeCall> = calls.iter().filter(|c| c.program.ends_with("-restore")).collect();
    assert_eq!(restore_calls.len(), 2, "one per family: {restore_calls:?}");
    for c in &restore_calls {
        assert!(c.args.contains(&"--noflush".to_string()));
    }
    let v4 = &restores(&runner)[0];
    assert!(v4.contains("-A KUBE-SERVICES -m comment --comment \"default/web:http cluster IP\""));
    // No jumps were listed, so all are inserted.
    assert!(v4.contains("-I PREROUTING 1 -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES"));
    assert!(v4.contains("-I FORWARD 1 -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD"));
}

#[test]
fn existing_jumps_are_not_inserted_twice() {
    let kernel = FakeKernel::default();
    *kernel.listing.lock().expect("lock") = JUMPS
        .iter()
        .chain(FIREWALL_JUMPS.iter())
        .map(|j| format!("-A {} {}\n", j.from, j.rule()))
        .collect();
    let runner = kernel.runner();
    let mut b = IptablesBackend::new(Sys::fake(runner.clone()), settings(), Some(Variant::Plain));
    let mut m = model_with(1);
    sync(&mut b, &mut m, SyncKind::Full).expect("sync");
    let v4 = &restores(&runner)[0];
    assert!(!v4.contains("-I "), "{v4}");
}

#[test]
fn one_endpoint_change_rewrites_only_that_services_chains() {
    let kernel = FakeKernel::default();
    let runner = kernel.runner();
    let mut b = IptablesBackend::new(Sys::fake(runner.clone()), settings(), Some(Variant::Plain));
    let mut m = model_with(50);
    sync(&mut b, &mut m, SyncKind::Full).expect("full");
    runner.clear();

    m.apply_slice(&slice("web", &["10.244.0.1", "10.244.0.3"]));
    sync(&mut b, &mut m, SyncKind::Partial).expect("partial");
    let inputs = restores(&runner);
    assert_eq!(inputs.len(), 1, "only IPv4 changed: {inputs:?}");
    let input = &inputs[0];
    let svc = names::PortChains::new(&crate::model::ServicePortName::new(
        crate::model::ServiceName::new("default", "web"),
        "http",
        crate::model::Protocol::Tcp,
    ))
    .svc;
    assert!(!input.contains("KUBE-SERVICES"), "shared chains untouched:\n{input}");
    assert!(!input.contains("*filter"), "{input}");
    assert!(input.contains(&format!(":{svc} - [0:0]")), "{input}");
    assert!(input.contains("--to-destination 10.244.0.3:8080"), "{input}");
    assert!(
        !input.contains("--to-destination 10.244.0.1:8080"),
        "unchanged endpoint chain not rewritten:\n{input}"
    );
    // The removed endpoint's chain is deleted, after the rewrite.
    assert_eq!(input.matches("-X KUBE-SEP-").count(), 1, "{input}");
    assert!(input.find("-X KUBE-SEP-") > input.find(&format!("-A {svc}")));
    // Size does not depend on the number of services.
    assert!(input.lines().count() < 15, "{input}");
}

#[test]
fn new_and_deleted_services_edit_shared_chains_rule_by_rule() {
    let kernel = FakeKernel::default();
    let runner = kernel.runner();
    let mut b = IptablesBackend::new(Sys::fake(runner.clone()), settings(), Some(Variant::Plain));
    let mut m = model_with(5);
    sync(&mut b, &mut m, SyncKind::Full).expect("full");
    runner.clear();
    m.apply_service(
        &mk_service("default", "new")
            .cluster_ip("10.96.9.9")
            .port("http", 80, "TCP")
            .build(),
    );
    m.delete_service(&crate::model::ServiceName::new("default", "svc-00000"));
    sync(&mut b, &mut m, SyncKind::Partial).expect("partial");
    let inputs = restores(&runner);
    let all = inputs.join("");
    // The new service has no endpoints: a REJECT in filter KUBE-SERVICES.
    assert!(
        all.contains("-A KUBE-SERVICES -m comment --comment \"default/new:http has no endpoints\""),
        "{all}"
    );
    // The deleted one: its KUBE-SERVICES rule is deleted by spec and its chains removed.
    assert!(
        all.contains("-D KUBE-SERVICES -m comment --comment \"default/svc-00000:http cluster IP\""),
        "{all}"
    );
    assert!(all.contains("-X KUBE-SVC-"), "{all}");
    assert!(!all.contains("svc-00001"), "other services untouched:\n{all}");
}

#[test]
fn failed_restore_reports_context_and_forces_a_full_sync() {
    let kernel = FakeKernel::default();
    let runner = kernel.runner();
    let mut b = IptablesBackend::new(Sys::fake(runner.clone()), settings(), Some(Variant::Plain));
    let mut m = model_with(2);
    sync(&mut b, &mut m, SyncKind::Full).expect("full");
    *kernel.fail.lock().expect("lock") = true;
    m.apply_slice(&slice("web", &["10.244.0.9"]));
    let err = sync(&mut b, &mut m, SyncKind::Partial).expect_err("restore fails");
    match err {
        BackendError::Apply {
            family,
            context,
            source,
            ..
        } => {
            assert_eq!(family, Some(IpFamily::V4), "the family is named");
            assert!(source.stderr.contains("line 3 failed"));
            assert!(context.expect("context").contains(">     3"));
        }
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(m.pending(), 1, "change kept");
    *kernel.fail.lock().expect("lock") = false;
    runner.clear();
    // Even a Partial request becomes Full after a failure.
    sync(&mut b, &mut m, SyncKind::Partial).expect("retry");
    let input = &restores(&runner)[0];
    assert!(input.contains(":KUBE-SERVICES - [0:0]"), "full rewrite:\n{input}");
    assert!(input.contains("10.244.0.9:8080"));
}

#[test]
fn leftover_chains_from_an_earlier_run_are_deleted() {
    let kernel = FakeKernel::default();
    *kernel.save.lock().expect("lock") =
        "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-OLDOLDOLDOLDOLD1 - [0:0]\n:CNI-FOO - [0:0]\nCOMMIT\n".into();
    let runner = kernel.runner();
    let mut b = IptablesBackend::new(Sys::fake(runner.clone()), settings(), Some(Variant::Plain));
    let mut m = model_with(1);
    sync(&mut b, &mut m, SyncKind::Full).expect("full");
    let input = &restores(&runner)[0];
    assert!(input.contains("-X KUBE-SVC-OLDOLDOLDOLDOLD1"), "{input}");
    assert!(!input.contains("CNI-FOO"), "never touch other chains");
}

#[test]
fn variant_follows_whichever_holds_rules() {
    for (legacy_rules, want) in [(5, Variant::Legacy), (0, Variant::Nft)] {
        let runner = FakeRunner::with_responder(move |call| CommandOutput {
            status: 0,
            stdout: match call.program.as_str() {
                "iptables-legacy-save" => "-A KUBE-SERVICES -j X\n".repeat(legacy_rules),
                "iptables-nft-save" => "-A INPUT -j ACCEPT\n".into(),
                _ => String::new(),
            },
            stderr: String::new(),
        });
        let mut b = IptablesBackend::new(Sys::fake(runner), settings(), None);
        assert_eq!(b.variant(), want);
    }
}

#[test]
fn cleanup_removes_our_chains_and_jumps_only() {
    let kernel = FakeKernel::default();
    *kernel.save.lock().expect("lock") = "*filter\n:INPUT ACCEPT [0:0]\n:KUBE-FORWARD - [0:0]\n:OTHER - [0:0]\n\
         -A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n-A INPUT -j OTHER\nCOMMIT\n\
         *nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SEP-ABC - [0:0]\n-A PREROUTING -j KUBE-SERVICES\nCOMMIT\n"
        .into();
    let runner = kernel.runner();
    let mut b = IptablesBackend::new(Sys::fake(runner.clone()), settings(), Some(Variant::Plain));
    b.cleanup().expect("cleanup");
    let input = restores(&runner).join("");
    assert!(input.contains("-D FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD"));
    assert!(input.contains("-D PREROUTING -j KUBE-SERVICES"));
    assert!(input.contains("-X KUBE-SEP-ABC"));
    assert!(!input.contains("OTHER"), "{input}");
}

#[test]
fn large_clusters_drop_endpoint_comments() {
    let mut m = Model::new("node-a", SelectionOptions::default());
    let big = synth::generate(&SynthParams {
        mix: Mix::ClusterIpOnly,
        ..SynthParams::new(1, 1001)
    });
    m.reset_services(&big.services);
    m.reset_slices(&big.slices);
    let b = IptablesBackend::new(Sys::fake(FakeRunner::new()), settings(), Some(Variant::Plain));
    let text = b.render(&m.desired());
    assert!(
        !text.contains("scale/svc-00000:http ->"),
        "no per-endpoint comments above 1000 endpoints"
    );
    assert!(
        text.contains("\"scale/svc-00000:http cluster IP\""),
        "service comments stay"
    );
}

#[test]
fn large_full_syncs_on_nft_are_batched_with_shared_chains_last() {
    let kernel = FakeKernel::default();
    let runner = kernel.runner();
    let mut b = IptablesBackend::new(Sys::fake(runner.clone()), settings(), Some(Variant::Nft));
    let mut m = model_with(NFT_BATCH_CHAINS); // two chains per service
    sync(&mut b, &mut m, SyncKind::Full).expect("sync");
    let inputs: Vec<String> = runner
        .calls()
        .into_iter()
        .filter(|c| c.program == "iptables-nft-restore")
        .map(|c| c.stdin)
        .collect();
    assert!(inputs.len() >= 3, "batches + final: {}", inputs.len());
    let first = &inputs[0];
    assert!(
        first.starts_with("*nat\n:KUBE-MARK-MASQ - [0:0]\n"),
        "{}",
        &first[..200]
    );
    assert!(first.contains("-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000"));
    assert!(!first.contains("KUBE-SERVICES"), "dispatch only in the last input");
    let last = inputs.last().expect("final input");
    assert!(last.contains(":KUBE-SERVICES - [0:0]"));
    assert!(
        !last.contains(":KUBE-SVC-"),
        "service chains were written by the batches"
    );
    for input in &inputs[..inputs.len() - 1] {
        assert!(input.matches(":KUBE-").count() <= NFT_BATCH_CHAINS + 1);
    }
}
