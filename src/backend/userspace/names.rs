//! Every name userspace mode puts in the kernel: its steering chains (both
//! families) and the jumps to them, as data. The nat chains have the names
//! kube-proxy's legacy userspace mode used.

/// The nat chain for traffic arriving from pods and other hosts
/// (PREROUTING): `REDIRECT` to the listener.
pub const PORTALS_CONTAINER: &str = "KUBE-PORTALS-CONTAINER";
/// The nat chain for the node's own traffic (OUTPUT): `DNAT` to the
/// listener on the node's address.
pub const PORTALS_HOST: &str = "KUBE-PORTALS-HOST";
/// The filter chain (INPUT, FORWARD) dropping load-balancer traffic from
/// sources outside `loadBalancerSourceRanges` (what was not redirected).
pub const PORTALS_FIREWALL: &str = "KUBE-PORTALS-FIREWALL";

/// The tables we write, in the order of the restore input.
pub const TABLES: [Table; 2] = [Table::Filter, Table::Nat];

/// A netfilter table we have chains in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    Filter,
    Nat,
}

/// One jump from a built-in chain to one of ours.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Jump {
    pub table: Table,
    pub from: &'static str,
    pub to: &'static str,
}

/// The comment on our jumps.
pub const JUMP_COMMENT: &str = "kproxy userspace portals";

/// The jumps from the built-in chains.
pub const JUMPS: [Jump; 4] = [
    Jump {
        table: Table::Filter,
        from: "INPUT",
        to: PORTALS_FIREWALL,
    },
    Jump {
        table: Table::Filter,
        from: "FORWARD",
        to: PORTALS_FIREWALL,
    },
    Jump {
        table: Table::Nat,
        from: "PREROUTING",
        to: PORTALS_CONTAINER,
    },
    Jump {
        table: Table::Nat,
        from: "OUTPUT",
        to: PORTALS_HOST,
    },
];

// === impl Table ===

impl Table {
    pub fn as_str(self) -> &'static str {
        match self {
            Table::Filter => "filter",
            Table::Nat => "nat",
        }
    }

    /// Our chains in this table.
    pub fn chains(self) -> &'static [&'static str] {
        match self {
            Table::Filter => &[PORTALS_FIREWALL],
            Table::Nat => &[PORTALS_CONTAINER, PORTALS_HOST],
        }
    }

    /// The table a chain of ours lives in.
    pub fn of(chain: &str) -> Option<Table> {
        TABLES.into_iter().find(|t| t.chains().contains(&chain))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_jump_targets_a_chain_of_its_table() {
        for j in JUMPS {
            assert_eq!(Table::of(j.to), Some(j.table), "{j:?}");
        }
        assert_eq!(Table::of("KUBE-SERVICES"), None);
    }
}
