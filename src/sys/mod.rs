//! The kernel edge. The only module that spawns processes or reads host
//! state; each capability sits behind a trait with an in-memory fake so
//! backends can be tested without root.
//!
//! - [`process`]: run a tool (iptables-restore, nft, conntrack) with input.
//! - [`sysctl`]: kernel parameters (`route_localnet`, conntrack liberal mode).
//! - [`ipvs`]: the kernel's IPVS table over generic netlink.
//! - [`link`]: interfaces and addresses over rtnetlink (`kube-ipvs0`).
//! - [`netlink`]: the netlink transport under those two.
//! - [`hostname`]: the host name, for the default node name.
//! - [`rlimit`]: the open-file limit, raised for the userspace relay.
//! - [`socket`]: UDP packet info and `splice(2)`, for the userspace relay.

pub mod ipvs;
pub mod link;
pub mod netlink;
pub mod process;
pub mod rlimit;
pub mod socket;
pub mod sysctl;

pub use ipvs::{FakeIpvs, Ipvs, IpvsError, NetlinkIpvs};
pub use link::{FakeLinks, LinkError, Links, RtnlLinks};
pub use process::{CommandOutput, CommandRunner, FakeCall, FakeRunner, NetnsRunner, RealRunner, RunError};
pub use rlimit::{NofileLimit, raise_nofile_limit};
pub use sysctl::{FakeSysctl, ProcSysctl, RunnerSysctl, Sysctl};

/// The host's name, lower-cased, as kube-proxy uses it for the node name
/// when `--hostname-override` is not set.
pub fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_lowercase())
        .filter(|h| !h.is_empty())
}

use std::sync::Arc;

/// The kernel edge a backend is given: a command runner and sysctl access.
#[derive(Clone)]
pub struct Sys {
    pub runner: Arc<dyn CommandRunner>,
    pub sysctl: Arc<dyn Sysctl>,
}

// === impl Sys ===

impl Sys {
    /// The host itself (or the namespace this process runs in).
    pub fn real() -> Self {
        Self {
            runner: Arc::new(RealRunner),
            sysctl: Arc::new(ProcSysctl),
        }
    }

    /// Everything through `ip netns exec NAME`.
    pub fn in_netns(name: &str) -> Self {
        let runner: Arc<dyn CommandRunner> = Arc::new(NetnsRunner::new(name));
        Self {
            sysctl: Arc::new(RunnerSysctl::new(runner.clone())),
            runner,
        }
    }

    /// Fakes, for unit tests.
    pub fn fake(runner: FakeRunner) -> Self {
        Self {
            runner: Arc::new(runner),
            sysctl: Arc::new(FakeSysctl::default()),
        }
    }
}

impl std::fmt::Debug for Sys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sys")
    }
}

/// The addresses of this host's (or namespace's) interfaces, from
/// `ip -o addr show`; empty when `ip` cannot be run.
pub fn interface_addresses(runner: &dyn CommandRunner) -> Vec<std::net::IpAddr> {
    let Ok(out) = runner.run("ip", &["-o", "addr", "show"], None) else {
        return Vec::new();
    };
    out.stdout
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            words.find(|w| *w == "inet" || *w == "inet6")?;
            words.next()?.split('/').next()?.parse().ok()
        })
        .collect()
}
