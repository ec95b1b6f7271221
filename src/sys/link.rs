//! Network interfaces and their addresses over rtnetlink, behind [`Links`]:
//! what the ipvs mode needs for `kube-ipvs0`, the dummy interface that holds
//! every service address so the node accepts packets for it.
//!
//! ```text
//!  backend ──▶ dyn Links ──┬─▶ RtnlLinks: RTM_{NEW,DEL,GET}LINK, RTM_{NEW,DEL,GET}ADDR
//!                          └─▶ FakeLinks: interfaces and addresses in memory
//! ```
//!
//! As kube-proxy does, the dummy interface is created and left down: the
//! kernel still adds a local route for every address on it, and a down
//! interface never answers ARP for them. Addresses are host addresses
//! (/32, /128); IPv6 ones are added without duplicate address detection.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;

use super::netlink::{AttrTable, Attrs, F_CREATE, F_DUMP, F_EXCL, NetlinkError, Socket};

const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_F_NODAD: u8 = 0x02;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
/// `struct ifinfomsg`: family, pad, type, index, flags, change.
const IFINFOMSG_LEN: usize = 16;
/// `struct ifaddrmsg`: family, prefixlen, flags, scope, index.
const IFADDRMSG_LEN: usize = 8;

/// Why a link or address operation failed, naming the object.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// No interface of that name.
    #[error("no interface {0}")]
    NoSuchLink(String),
    /// The kernel refused or failed the operation.
    #[error("{op} {object}: {source}")]
    Op {
        op: &'static str,
        object: String,
        #[source]
        source: NetlinkError,
    },
}

/// Interfaces and addresses of one network namespace. Implementations:
/// [`RtnlLinks`], [`FakeLinks`].
pub trait Links: Send + Sync {
    /// Creates dummy interface `name` (down) unless it exists; true when created.
    fn ensure_dummy(&self, name: &str) -> Result<bool, LinkError>;
    /// Deletes interface `name`; false when there was none.
    fn delete_link(&self, name: &str) -> Result<bool, LinkError>;
    /// The addresses on interface `name`.
    fn addresses(&self, name: &str) -> Result<Vec<IpAddr>, LinkError>;
    /// Adds a host address (/32 or /128); an address already there is fine.
    fn add_address(&self, name: &str, addr: IpAddr) -> Result<(), LinkError>;
    /// Removes an address; an address not there is fine.
    fn delete_address(&self, name: &str, addr: IpAddr) -> Result<(), LinkError>;
}

// === Encoders (pure) ===

fn ifinfomsg(index: i32) -> Vec<u8> {
    let mut h = vec![0u8; IFINFOMSG_LEN];
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h
}

/// `ip link add NAME type dummy` (no IFF_UP: the link stays down).
pub fn encode_new_dummy(name: &str) -> Vec<u8> {
    let mut a = Attrs::new();
    a.put_str(IFLA_IFNAME, name).nest(IFLA_LINKINFO, |li| {
        li.put_str(IFLA_INFO_KIND, "dummy");
    });
    let mut p = ifinfomsg(0);
    p.extend_from_slice(a.as_bytes());
    p
}

fn encode_link_by_name(name: &str) -> Vec<u8> {
    let mut a = Attrs::new();
    a.put_str(IFLA_IFNAME, name);
    let mut p = ifinfomsg(0);
    p.extend_from_slice(a.as_bytes());
    p
}

/// `ip addr add ADDR/32|/128 dev <index>` (IPv6 with `nodad`).
pub fn encode_addr(index: u32, addr: IpAddr) -> Vec<u8> {
    let (family, prefix, flags, bytes) = match addr {
        IpAddr::V4(a) => (AF_INET, 32, 0, a.octets().to_vec()),
        IpAddr::V6(a) => (AF_INET6, 128, IFA_F_NODAD, a.octets().to_vec()),
    };
    let mut p = vec![family, prefix, flags, 0];
    p.extend_from_slice(&index.to_ne_bytes());
    let mut a = Attrs::new();
    a.put(IFA_LOCAL, &bytes).put(IFA_ADDRESS, &bytes);
    p.extend_from_slice(a.as_bytes());
    p
}

/// The address of one `RTM_NEWADDR` dump entry, if it is on `index`.
fn decode_addr(payload: &[u8], index: u32) -> Option<IpAddr> {
    let hdr = payload.get(..IFADDRMSG_LEN)?;
    if u32::from_ne_bytes(hdr[4..8].try_into().ok()?) != index {
        return None;
    }
    let attrs = AttrTable::parse(&payload[IFADDRMSG_LEN..]).ok()?;
    let raw = attrs.get(IFA_LOCAL).or_else(|| attrs.get(IFA_ADDRESS))?;
    match hdr[0] {
        AF_INET => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(raw.get(..4)?).ok()?))),
        AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(raw.get(..16)?).ok()?))),
        _ => None,
    }
}

// === RtnlLinks ===

/// Links and addresses over a `NETLINK_ROUTE` socket, in the network
/// namespace of the thread that called [`RtnlLinks::open`].
#[derive(Debug)]
pub struct RtnlLinks {
    sock: Mutex<Socket>,
}

impl RtnlLinks {
    pub fn open() -> std::io::Result<Self> {
        Ok(Self {
            sock: Mutex::new(Socket::open(libc::NETLINK_ROUTE)?),
        })
    }

    fn request(&self, ty: u16, flags: u16, payload: &[u8]) -> Result<Vec<super::netlink::Reply>, NetlinkError> {
        self.sock
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .request(ty, flags, payload)
    }

    /// The interface index of `name`, or None.
    fn index(&self, name: &str) -> Result<Option<u32>, LinkError> {
        match self.request(RTM_GETLINK, 0, &encode_link_by_name(name)) {
            Ok(replies) => Ok(replies
                .iter()
                .find_map(|r| r.payload.get(4..8)?.try_into().ok().map(u32::from_ne_bytes))),
            Err(NetlinkError::Kernel(libc::ENODEV)) => Ok(None),
            Err(source) => Err(LinkError::Op {
                op: "look up interface",
                object: name.to_string(),
                source,
            }),
        }
    }

    fn require_index(&self, name: &str) -> Result<u32, LinkError> {
        self.index(name)?.ok_or_else(|| LinkError::NoSuchLink(name.to_string()))
    }
}

impl Links for RtnlLinks {
    fn ensure_dummy(&self, name: &str) -> Result<bool, LinkError> {
        if self.index(name)?.is_some() {
            return Ok(false);
        }
        match self.request(RTM_NEWLINK, F_CREATE | F_EXCL, &encode_new_dummy(name)) {
            Ok(_) => Ok(true),
            Err(NetlinkError::Kernel(libc::EEXIST)) => Ok(false),
            Err(source) => Err(LinkError::Op {
                op: "create dummy interface",
                object: name.to_string(),
                source,
            }),
        }
    }

    fn delete_link(&self, name: &str) -> Result<bool, LinkError> {
        let Some(index) = self.index(name)? else {
            return Ok(false);
        };
        let index = i32::try_from(index).unwrap_or_default();
        match self.request(RTM_DELLINK, 0, &ifinfomsg(index)) {
            Ok(_) => Ok(true),
            Err(NetlinkError::Kernel(libc::ENODEV)) => Ok(false),
            Err(source) => Err(LinkError::Op {
                op: "delete interface",
                object: name.to_string(),
                source,
            }),
        }
    }

    fn addresses(&self, name: &str) -> Result<Vec<IpAddr>, LinkError> {
        let index = self.require_index(name)?;
        let replies = self
            .request(RTM_GETADDR, F_DUMP, &[0u8; IFADDRMSG_LEN])
            .map_err(|source| LinkError::Op {
                op: "list addresses of",
                object: name.to_string(),
                source,
            })?;
        Ok(replies
            .iter()
            .filter(|r| r.msg_type == RTM_NEWADDR)
            .filter_map(|r| decode_addr(&r.payload, index))
            .collect())
    }

    fn add_address(&self, name: &str, addr: IpAddr) -> Result<(), LinkError> {
        let index = self.require_index(name)?;
        match self.request(RTM_NEWADDR, F_CREATE | F_EXCL, &encode_addr(index, addr)) {
            Ok(_) | Err(NetlinkError::Kernel(libc::EEXIST)) => Ok(()),
            Err(source) => Err(LinkError::Op {
                op: "add address",
                object: format!("{addr} to {name}"),
                source,
            }),
        }
    }

    fn delete_address(&self, name: &str, addr: IpAddr) -> Result<(), LinkError> {
        let index = self.require_index(name)?;
        match self.request(RTM_DELADDR, 0, &encode_addr(index, addr)) {
            Ok(_) | Err(NetlinkError::Kernel(libc::EADDRNOTAVAIL)) => Ok(()),
            Err(source) => Err(LinkError::Op {
                op: "delete address",
                object: format!("{addr} from {name}"),
                source,
            }),
        }
    }
}

// === FakeLinks ===

/// Interfaces and their addresses in memory, for unit tests; records
/// every change.
#[derive(Debug, Default)]
pub struct FakeLinks {
    state: Mutex<FakeState>,
}

/// Interfaces with their addresses, and the change log.
type FakeState = (BTreeMap<String, BTreeSet<IpAddr>>, Vec<String>);

impl FakeLinks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every change so far (`add-link kube-ipvs0`, `add-addr 10.0.0.1`, ...).
    pub fn ops(&self) -> Vec<String> {
        self.lock().1.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Links for FakeLinks {
    fn ensure_dummy(&self, name: &str) -> Result<bool, LinkError> {
        let mut st = self.lock();
        if st.0.contains_key(name) {
            return Ok(false);
        }
        st.0.insert(name.to_string(), BTreeSet::new());
        st.1.push(format!("add-link {name}"));
        Ok(true)
    }

    fn delete_link(&self, name: &str) -> Result<bool, LinkError> {
        let mut st = self.lock();
        let existed = st.0.remove(name).is_some();
        if existed {
            st.1.push(format!("delete-link {name}"));
        }
        Ok(existed)
    }

    fn addresses(&self, name: &str) -> Result<Vec<IpAddr>, LinkError> {
        let st = self.lock();
        let addrs = st.0.get(name).ok_or_else(|| LinkError::NoSuchLink(name.to_string()))?;
        Ok(addrs.iter().copied().collect())
    }

    fn add_address(&self, name: &str, addr: IpAddr) -> Result<(), LinkError> {
        let mut st = self.lock();
        let addrs =
            st.0.get_mut(name)
                .ok_or_else(|| LinkError::NoSuchLink(name.to_string()))?;
        if addrs.insert(addr) {
            st.1.push(format!("add-addr {addr}"));
        }
        Ok(())
    }

    fn delete_address(&self, name: &str, addr: IpAddr) -> Result<(), LinkError> {
        let mut st = self.lock();
        let addrs =
            st.0.get_mut(name)
                .ok_or_else(|| LinkError::NoSuchLink(name.to_string()))?;
        if addrs.remove(&addr) {
            st.1.push(format!("delete-addr {addr}"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_dummy_link_is_named_of_kind_dummy_and_not_up() {
        let p = encode_new_dummy("kube-ipvs0");
        assert_eq!(&p[..IFINFOMSG_LEN], &[0u8; IFINFOMSG_LEN], "no flags: stays down");
        let attrs = AttrTable::parse(&p[IFINFOMSG_LEN..]).expect("attrs");
        assert_eq!(attrs.str(IFLA_IFNAME), Some("kube-ipvs0"));
        let info = attrs.nested(IFLA_LINKINFO).expect("parse").expect("linkinfo");
        assert_eq!(info.str(IFLA_INFO_KIND), Some("dummy"));
    }

    #[test]
    fn host_addresses_are_slash_32_and_slash_128_nodad() {
        let v4 = encode_addr(7, "198.19.0.1".parse().expect("addr"));
        assert_eq!(&v4[..8], &[AF_INET, 32, 0, 0, 7, 0, 0, 0][..]);
        assert_eq!(decode_addr(&v4, 7), Some("198.19.0.1".parse().expect("addr")));
        assert_eq!(decode_addr(&v4, 8), None, "another interface's address");
        let v6 = encode_addr(7, "fd00:96::1".parse().expect("addr"));
        assert_eq!(&v6[..4], &[AF_INET6, 128, IFA_F_NODAD, 0][..]);
        assert_eq!(decode_addr(&v6, 7), Some("fd00:96::1".parse().expect("addr")));
    }

    #[test]
    fn fake_links_are_idempotent_like_the_real_client() {
        let f = FakeLinks::new();
        assert!(f.ensure_dummy("kube-ipvs0").expect("create"));
        assert!(!f.ensure_dummy("kube-ipvs0").expect("exists"));
        let a: IpAddr = "198.19.0.1".parse().expect("addr");
        f.add_address("kube-ipvs0", a).expect("add");
        f.add_address("kube-ipvs0", a).expect("add again");
        assert_eq!(f.addresses("kube-ipvs0").expect("list"), vec![a]);
        f.delete_address("kube-ipvs0", a).expect("del");
        assert!(matches!(f.addresses("nope"), Err(LinkError::NoSuchLink(_))));
        assert_eq!(
            f.ops(),
            ["add-link kube-ipvs0", "add-addr 198.19.0.1", "delete-addr 198.19.0.1"]
        );
    }
}
