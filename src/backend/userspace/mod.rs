//! The userspace mode's layer-4 relay: kproxy accepts the connections (and
//! datagrams) of each service port itself and relays them to an endpoint,
//! as kube-proxy's legacy userspace proxier did.
//!
//! ```text
//!            Backend::sync (blocking thread)
//!                    │ Relay::bind / set_targets / drop
//!                    ▼
//!   relay ── one listening socket per service port and address, target set swappable at any time
//!     ├── tcp ── accept → balancer pick → connect (failover) → splice / copy both ways
//!     ├── udp ── session per client → balancer pick → connected socket → replies from the client's address
//!     ├── balancer ── round robin + ClientIP affinity (pure, time injected)
//!     ├── idle ── last-activity tracking for idle timeouts
//!     └── stats ── counters per relay, read by metrics
//! ```
//!
//! The relay opens its own connection to the endpoint, so the endpoint sees
//! the node's address as the source, never the client's (even with
//! `externalTrafficPolicy: Local`). See README.md for the design and the
//! copy benchmark.
//!
//! Not here yet: the `Backend` implementation (listeners from the change
//! set, steering rules), which needs the per-port policy plan.

pub mod balancer;
mod idle;
pub mod relay;
pub mod stats;
mod tcp;
mod udp;

#[cfg(test)]
mod tests;

pub use balancer::Balancer;
pub use relay::{CONNECT_TIMEOUTS, Clock, CopyMode, NoEndpoints, Relay, RelayError, Settings, SystemClock, TargetSet};
pub use stats::{RelayStats, StatsSnapshot};
