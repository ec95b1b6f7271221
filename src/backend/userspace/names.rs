//! Every name userspace mode puts in the kernel: its steering chains (nat
//! table, both families) and the jumps to them. kube-proxy's legacy
//! userspace mode used the same chain names.

/// The nat chain for traffic arriving from pods and other hosts
/// (PREROUTING): `REDIRECT` to the listener.
pub const PORTALS_CONTAINER: &str = "KUBE-PORTALS-CONTAINER";
/// The nat chain for the node's own traffic (OUTPUT): `DNAT` to the
/// listener on the node's address.
pub const PORTALS_HOST: &str = "KUBE-PORTALS-HOST";

/// One jump from a built-in nat chain to one of ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Jump {
    pub from: &'static str,
    pub to: &'static str,
    pub comment: &'static str,
}

/// The chains, in declaration order.
pub const CHAINS: [&str; 2] = [PORTALS_CONTAINER, PORTALS_HOST];

/// The jumps from the built-in chains.
pub const JUMPS: [Jump; 2] = [
    Jump {
        from: "PREROUTING",
        to: PORTALS_CONTAINER,
        comment: "kproxy userspace portals",
    },
    Jump {
        from: "OUTPUT",
        to: PORTALS_HOST,
        comment: "kproxy userspace portals",
    },
];
