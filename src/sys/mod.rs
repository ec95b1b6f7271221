//! The kernel edge. The only module that spawns processes or reads host
//! state; each capability sits behind a trait with an in-memory fake so
//! backends can be tested without root.
//!
//! - [`process`]: run a tool (iptables-restore, nft, conntrack) with input.
//! - [`hostname`]: the host name, for the default node name.

pub mod process;

pub use process::{CommandOutput, CommandRunner, FakeRunner, RealRunner, RunError};

/// The host's name, lower-cased, as kube-proxy uses it for the node name
/// when `--hostname-override` is not set.
pub fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_lowercase())
        .filter(|h| !h.is_empty())
}
