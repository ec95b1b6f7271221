//! kproxy: a drop-in replacement for Kubernetes' kube-proxy.
//!
//! Data flows one way:
//!
//! ```text
//!  config ──▶ watch ──▶ model ──▶ sync ──▶ backend/{iptables,nftables,ipvs,userspace}
//!  (flags,    (kube-rs   (pure     (runner,   (render desired state, diff, apply
//!   file)      watchers)  state)    driver)    through sys)
//!                                     └──▶ metrics / health (on the side)
//! ```
//!
//! Only [`sys`] spawns processes or touches the kernel; the [`model`] is pure.

pub mod backend;
pub mod cmd;
pub mod config;
pub mod conntrack;
pub mod health;
pub mod metrics;
pub mod model;
pub mod sync;
pub mod sys;
pub mod watch;
