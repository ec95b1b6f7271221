//! The ipvs mode. This kernel has no IPVS, so the mode itself is not
//! implemented yet (it will be tested in a small VM with a Debian kernel);
//! what exists is the cleanup of kube-proxy's IPVS leftovers, so
//! `--cleanup` and a start in another mode leave nothing of it behind.

use tracing::info;

use super::{Backend, BackendError, SyncKind, SyncStats};
use crate::config::ProxyMode;
use crate::model::{ChangeSet, DesiredState};
use crate::sys::Sys;

/// The dummy interface kube-proxy's IPVS mode binds service addresses to.
pub const DUMMY_INTERFACE: &str = "kube-ipvs0";

/// Prefix of kube-proxy's IPVS-mode ipsets.
pub const IPSET_PREFIX: &str = "KUBE-";

/// IPVS leftovers cleaner; `sync` is not available yet.
pub struct IpvsBackend {
    sys: Sys,
}

// === impl IpvsBackend ===

impl IpvsBackend {
    pub fn new(sys: Sys) -> Self {
        Self { sys }
    }

    /// Runs a tool if it is installed; a missing tool means nothing to clean.
    fn run_if_present(&self, program: &str, args: &[&str]) -> Option<crate::sys::CommandOutput> {
        self.sys.runner.run(program, args, None).ok()
    }
}

impl Backend for IpvsBackend {
    fn mode(&self) -> ProxyMode {
        ProxyMode::Ipvs
    }

    fn sync(&mut self, _: &DesiredState, _: &ChangeSet, _: SyncKind) -> Result<SyncStats, BackendError> {
        Err(BackendError::Unavailable(ProxyMode::Ipvs, "not implemented yet".into()))
    }

    fn render(&self, desired: &DesiredState) -> String {
        super::table::render_table(desired, &super::bare_plan_context)
    }

    fn cleanup(&mut self) -> Result<(), BackendError> {
        let mut removed = Vec::new();
        // The dummy interface, if kube-proxy left one.
        if self
            .run_if_present("ip", &["link", "show", DUMMY_INTERFACE])
            .is_some_and(|o| o.status == 0)
            && self
                .run_if_present("ip", &["link", "delete", DUMMY_INTERFACE])
                .is_some_and(|o| o.status == 0)
        {
            removed.push(DUMMY_INTERFACE.to_string());
        }
        // Virtual servers: only when the kernel has IPVS and ipvsadm exists.
        if std::path::Path::new("/proc/net/ip_vs").exists()
            && self
                .run_if_present("ipvsadm", &["--clear"])
                .is_some_and(|o| o.status == 0)
        {
            removed.push("ipvs virtual servers".into());
        }
        // kube-proxy's ipsets (KUBE-CLUSTER-IP, KUBE-LOOP-BACK, ...).
        if let Some(out) = self.run_if_present("ipset", &["list", "-n"]).filter(|o| o.status == 0) {
            for set in out
                .stdout
                .lines()
                .map(str::trim)
                .filter(|s| s.starts_with(IPSET_PREFIX))
            {
                if self
                    .run_if_present("ipset", &["destroy", set])
                    .is_some_and(|o| o.status == 0)
                {
                    removed.push(format!("ipset {set}"));
                }
            }
        }
        if !removed.is_empty() {
            info!(removed = removed.join(", "), "Removed IPVS-mode leftovers");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::{CommandOutput, FakeRunner};

    #[test]
    fn cleanup_removes_the_dummy_interface_and_kube_ipsets_only() {
        let runner = FakeRunner::with_responder(|call| {
            let out = |stdout: &str| CommandOutput {
                status: 0,
                stdout: stdout.into(),
                stderr: String::new(),
            };
            match (call.program.as_str(), call.args.first().map(String::as_str)) {
                ("ipset", Some("list")) => out("KUBE-CLUSTER-IP\ncali40all-ipam-pools\nKUBE-LOOP-BACK\n"),
                _ => out(""),
            }
        });
        let mut b = IpvsBackend::new(Sys::fake(runner.clone()));
        b.cleanup().expect("cleanup");
        let calls: Vec<String> = runner
            .calls()
            .iter()
            .map(|c| format!("{} {}", c.program, c.args.join(" ")))
            .collect();
        assert!(calls.contains(&"ip link delete kube-ipvs0".to_string()), "{calls:?}");
        assert!(calls.contains(&"ipset destroy KUBE-CLUSTER-IP".to_string()));
        assert!(calls.contains(&"ipset destroy KUBE-LOOP-BACK".to_string()));
        assert!(!calls.iter().any(|c| c.contains("cali40")), "other sets untouched");
    }
}
