//! The kernel's IPVS table over generic netlink, behind [`Ipvs`].
//!
//! ```text
//!  backend ──▶ dyn Ipvs ──┬─▶ NetlinkIpvs: family "IPVS" (resolved once), one request per change
//!                         └─▶ FakeIpvs: the same table in memory, for unit tests
//! ```
//!
//! The vocabulary is `ipvsadm`'s: a [`VirtualServer`] (`-A -t|-u|--sctp-service
//! addr:port` or `-f mark`, with scheduler, persistence and netmask) has
//! [`RealServer`]s (`-a -r addr:port -w weight -m`). Messages carry the
//! attributes of `linux/ip_vs.h` (`IPVS_CMD_*`, `IPVS_SVC_ATTR_*`,
//! `IPVS_DEST_ATTR_*`) laid out as ipvsadm's libipvs sends them: addresses as
//! 16-byte `nf_inet_addr`, ports in network byte order, flags as
//! `{flags, mask}`. The encoders are pure (`encode_*`) and pinned by byte
//! tests; only [`NetlinkIpvs`] opens a socket, in the network namespace of
//! the thread that calls [`NetlinkIpvs::open`].

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Mutex;

use super::netlink::{AttrTable, Attrs, F_DUMP, NetlinkError, Socket};

// Generic netlink controller (linux/genetlink.h).
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;

// linux/ip_vs.h
const IPVS_GENL_NAME: &str = "IPVS";
const IPVS_GENL_VERSION: u8 = 1;
const IPVS_CMD_NEW_SERVICE: u8 = 1;
const IPVS_CMD_SET_SERVICE: u8 = 2;
const IPVS_CMD_DEL_SERVICE: u8 = 3;
const IPVS_CMD_GET_SERVICE: u8 = 4;
const IPVS_CMD_NEW_DEST: u8 = 5;
const IPVS_CMD_SET_DEST: u8 = 6;
const IPVS_CMD_DEL_DEST: u8 = 7;
const IPVS_CMD_GET_DEST: u8 = 8;
const IPVS_CMD_SET_CONFIG: u8 = 12;
const IPVS_CMD_GET_CONFIG: u8 = 13;

const IPVS_CMD_ATTR_SERVICE: u16 = 1;
const IPVS_CMD_ATTR_DEST: u16 = 2;
const IPVS_CMD_ATTR_TIMEOUT_TCP: u16 = 4;
const IPVS_CMD_ATTR_TIMEOUT_TCP_FIN: u16 = 5;
const IPVS_CMD_ATTR_TIMEOUT_UDP: u16 = 6;

const IPVS_SVC_ATTR_AF: u16 = 1;
const IPVS_SVC_ATTR_PROTOCOL: u16 = 2;
const IPVS_SVC_ATTR_ADDR: u16 = 3;
const IPVS_SVC_ATTR_PORT: u16 = 4;
const IPVS_SVC_ATTR_FWMARK: u16 = 5;
const IPVS_SVC_ATTR_SCHED_NAME: u16 = 6;
const IPVS_SVC_ATTR_FLAGS: u16 = 7;
const IPVS_SVC_ATTR_TIMEOUT: u16 = 8;
const IPVS_SVC_ATTR_NETMASK: u16 = 9;

const IPVS_DEST_ATTR_ADDR: u16 = 1;
const IPVS_DEST_ATTR_PORT: u16 = 2;
const IPVS_DEST_ATTR_FWD_METHOD: u16 = 3;
const IPVS_DEST_ATTR_WEIGHT: u16 = 4;
const IPVS_DEST_ATTR_U_THRESH: u16 = 5;
const IPVS_DEST_ATTR_L_THRESH: u16 = 6;
const IPVS_DEST_ATTR_ACTIVE_CONNS: u16 = 7;
const IPVS_DEST_ATTR_INACT_CONNS: u16 = 8;
const IPVS_DEST_ATTR_PERSIST_CONNS: u16 = 9;
const IPVS_DEST_ATTR_ADDR_FAMILY: u16 = 11;

/// `IP_VS_SVC_F_PERSISTENT`: ClientIP affinity.
pub const FLAG_PERSISTENT: u32 = 0x1;
/// `IP_VS_SVC_F_SCHED2`: for `mh` (and `sh`), hash the source port too;
/// kube-proxy sets it with `mh`.
pub const FLAG_SCHED_PORT: u32 = 0x10;
/// `IP_VS_SVC_F_HASHED`: set by the kernel on every listed service; never
/// ours to set or compare.
const FLAG_HASHED: u32 = 0x2;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// Transport protocol of an address-based virtual server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

/// What identifies a virtual server in the kernel's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ServiceKey {
    /// `-t|-u|--sctp-service addr:port`.
    Addr {
        protocol: Protocol,
        addr: IpAddr,
        port: u16,
    },
    /// `-f mark` in one address family.
    Fwmark { ipv6: bool, mark: u32 },
}

/// A virtual server: what `ipvsadm -A` sets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VirtualServer {
    pub key: ServiceKey,
    /// Scheduler name (`rr`, `wrr`, `lc`, `sh`, `mh`, ...), at most 15 bytes.
    pub scheduler: String,
    /// `IP_VS_SVC_F_*` flags, e.g. [`FLAG_PERSISTENT`].
    pub flags: u32,
    /// Persistence timeout in seconds (meaningful with [`FLAG_PERSISTENT`]).
    pub timeout: u32,
    /// Persistence netmask: a mask for IPv4 (`0xffffffff`), a prefix length
    /// for IPv6 (128).
    pub netmask: u32,
}

/// How IPVS forwards to a real server (`IP_VS_CONN_F_FWD_MASK` values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Forward {
    /// `-m`: NAT (what kube-proxy uses).
    Masq,
    Local,
    /// `-i`: IP-in-IP tunnel.
    Tunnel,
    /// `-g`: direct routing.
    Route,
}

/// A real server of a virtual server: what `ipvsadm -a` sets.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RealServer {
    pub addr: IpAddr,
    pub port: u16,
    pub weight: u32,
    pub forward: Forward,
    /// Upper connection threshold (0 = none).
    pub upper_threshold: u32,
    /// Lower connection threshold (0 = none).
    pub lower_threshold: u32,
}

/// A listed real server with the kernel's connection counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RealServerStatus {
    pub server: RealServer,
    pub active_conns: u32,
    pub inactive_conns: u32,
    pub persistent_conns: u32,
}

/// IPVS connection timeouts in seconds (`ipvsadm --set tcp tcpfin udp`);
/// 0 in a set request leaves that value unchanged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp: u32,
    pub tcp_fin: u32,
    pub udp: u32,
}

/// Why an IPVS operation failed, naming the object.
#[derive(Debug, thiserror::Error)]
pub enum IpvsError {
    /// The kernel has no IPVS (module not loaded or not built).
    #[error("the kernel has no IPVS (generic netlink family \"IPVS\" not found): {0}")]
    Unavailable(#[source] NetlinkError),
    /// The kernel refused or failed one operation on one object.
    #[error("{op} {object}: {source}")]
    Op {
        op: &'static str,
        object: String,
        #[source]
        source: NetlinkError,
    },
    /// A reply from the kernel lacked an attribute or held an unknown value.
    #[error("unexpected IPVS reply to {op}: {what}")]
    Reply { op: &'static str, what: String },
}

impl IpvsError {
    /// The kernel's errno for an [`IpvsError::Op`] (e.g. `EEXIST`, `ENOENT`).
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Op { source, .. } => source.errno(),
            _ => None,
        }
    }
}

/// The kernel's IPVS table. Implementations: [`NetlinkIpvs`], [`FakeIpvs`].
pub trait Ipvs: Send + Sync {
    /// Every virtual server, kproxy's and anyone else's.
    fn services(&self) -> Result<Vec<VirtualServer>, IpvsError>;
    fn add_service(&self, svc: &VirtualServer) -> Result<(), IpvsError>;
    /// Changes scheduler, flags, timeout and netmask of an existing one.
    fn update_service(&self, svc: &VirtualServer) -> Result<(), IpvsError>;
    /// Deletes a virtual server with all its real servers.
    fn delete_service(&self, key: &ServiceKey) -> Result<(), IpvsError>;
    fn destinations(&self, key: &ServiceKey) -> Result<Vec<RealServerStatus>, IpvsError>;
    fn add_destination(&self, key: &ServiceKey, dest: &RealServer) -> Result<(), IpvsError>;
    /// Changes weight, forwarding and thresholds of an existing real server.
    fn update_destination(&self, key: &ServiceKey, dest: &RealServer) -> Result<(), IpvsError>;
    fn delete_destination(&self, key: &ServiceKey, addr: IpAddr, port: u16) -> Result<(), IpvsError>;
    fn timeouts(&self) -> Result<Timeouts, IpvsError>;
    fn set_timeouts(&self, t: &Timeouts) -> Result<(), IpvsError>;
}

// === impl Protocol ===

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u16 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Sctp => 132,
        }
    }

    fn from_number(n: u16) -> Option<Self> {
        match n {
            6 => Some(Self::Tcp),
            17 => Some(Self::Udp),
            132 => Some(Self::Sctp),
            _ => None,
        }
    }

    /// ipvsadm's service option letter (`-t`, `-u`, `--sctp-service`).
    pub fn ipvsadm_flag(self) -> &'static str {
        match self {
            Self::Tcp => "-t",
            Self::Udp => "-u",
            Self::Sctp => "--sctp-service",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        })
    }
}

// === impl ServiceKey ===

impl ServiceKey {
    pub fn is_ipv6(&self) -> bool {
        match self {
            Self::Addr { addr, .. } => addr.is_ipv6(),
            Self::Fwmark { ipv6, .. } => *ipv6,
        }
    }
}

/// `ip:port` with brackets around IPv6, as ipvsadm prints it.
pub fn fmt_addr_port(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Addr { protocol, addr, port } => write!(f, "{protocol} {}", fmt_addr_port(*addr, *port)),
            Self::Fwmark { ipv6, mark } => write!(f, "FWM {mark}{}", if *ipv6 { " IPv6" } else { "" }),
        }
    }
}

// === impl VirtualServer ===

impl VirtualServer {
    /// A non-persistent virtual server with kube-proxy's netmask for its family.
    pub fn new(key: ServiceKey, scheduler: impl Into<String>) -> Self {
        Self {
            netmask: if key.is_ipv6() { 128 } else { u32::MAX },
            key,
            scheduler: scheduler.into(),
            flags: 0,
            timeout: 0,
        }
    }

    /// With ClientIP persistence for `timeout` seconds.
    pub fn persistent(mut self, timeout: u32) -> Self {
        self.flags |= FLAG_PERSISTENT;
        self.timeout = timeout;
        self
    }

    pub fn is_persistent(&self) -> bool {
        self.flags & FLAG_PERSISTENT != 0
    }
}

// === impl Forward ===

impl Forward {
    fn code(self) -> u32 {
        match self {
            Self::Masq => 0,
            Self::Local => 1,
            Self::Tunnel => 2,
            Self::Route => 3,
        }
    }

    fn from_code(c: u32) -> Option<Self> {
        match c & 0x7 {
            0 => Some(Self::Masq),
            1 => Some(Self::Local),
            2 => Some(Self::Tunnel),
            3 => Some(Self::Route),
            _ => None,
        }
    }
}

// === impl RealServer ===

impl RealServer {
    /// A masquerading real server with no thresholds.
    pub fn masq(addr: IpAddr, port: u16, weight: u32) -> Self {
        Self {
            addr,
            port,
            weight,
            forward: Forward::Masq,
            upper_threshold: 0,
            lower_threshold: 0,
        }
    }
}

// === Encoders (pure) ===

fn family(ipv6: bool) -> u16 {
    if ipv6 { AF_INET6 } else { AF_INET }
}

/// An address as the kernel's 16-byte `union nf_inet_addr`.
fn inet_addr(addr: IpAddr) -> [u8; 16] {
    let mut b = [0u8; 16];
    match addr {
        IpAddr::V4(a) => b[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => b.copy_from_slice(&a.octets()),
    }
    b
}

fn parse_inet_addr(af: u16, b: &[u8]) -> Option<IpAddr> {
    match af {
        AF_INET => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(b.get(..4)?).ok()?))),
        AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(b.get(..16)?).ok()?))),
        _ => None,
    }
}

/// The generic netlink header for an IPVS command, then `attrs`.
fn genl_payload(cmd: u8, version: u8, attrs: &Attrs) -> Vec<u8> {
    let mut p = vec![cmd, version, 0, 0];
    p.extend_from_slice(attrs.as_bytes());
    p
}

/// The identifying attributes of a service (`IPVS_SVC_ATTR_AF` and either
/// fwmark or protocol/addr/port).
fn put_service_key(a: &mut Attrs, key: &ServiceKey) {
    a.put_u16(IPVS_SVC_ATTR_AF, family(key.is_ipv6()));
    match key {
        ServiceKey::Addr { protocol, addr, port } => {
            a.put_u16(IPVS_SVC_ATTR_PROTOCOL, protocol.number());
            a.put(IPVS_SVC_ATTR_ADDR, &inet_addr(*addr));
            a.put_be16(IPVS_SVC_ATTR_PORT, *port);
        }
        ServiceKey::Fwmark { mark, .. } => {
            a.put_u32(IPVS_SVC_ATTR_FWMARK, *mark);
        }
    }
}

/// `IPVS_CMD_ATTR_SERVICE` with the key only (for dest commands, delete, dump).
fn service_key_attrs(key: &ServiceKey) -> Attrs {
    let mut a = Attrs::new();
    a.nest(IPVS_CMD_ATTR_SERVICE, |s| put_service_key(s, key));
    a
}

/// `IPVS_CMD_ATTR_SERVICE` with every attribute (add/edit), as libipvs
/// fills it: flags as `{flags, mask = ~0}`.
fn service_attrs(svc: &VirtualServer) -> Attrs {
    let mut a = Attrs::new();
    a.nest(IPVS_CMD_ATTR_SERVICE, |s| {
        put_service_key(s, &svc.key);
        s.put_str(IPVS_SVC_ATTR_SCHED_NAME, &svc.scheduler);
        let mut flags = [0u8; 8];
        flags[..4].copy_from_slice(&svc.flags.to_ne_bytes());
        flags[4..].copy_from_slice(&u32::MAX.to_ne_bytes());
        s.put(IPVS_SVC_ATTR_FLAGS, &flags);
        s.put_u32(IPVS_SVC_ATTR_TIMEOUT, svc.timeout);
        s.put_u32(IPVS_SVC_ATTR_NETMASK, svc.netmask);
    });
    a
}

/// Service key + `IPVS_CMD_ATTR_DEST` (full with `dest`, else address only).
fn dest_attrs(key: &ServiceKey, addr: IpAddr, port: u16, dest: Option<&RealServer>) -> Attrs {
    let mut a = service_key_attrs(key);
    a.nest(IPVS_CMD_ATTR_DEST, |d| {
        d.put_u16(IPVS_DEST_ATTR_ADDR_FAMILY, family(addr.is_ipv6()));
        d.put(IPVS_DEST_ATTR_ADDR, &inet_addr(addr));
        d.put_be16(IPVS_DEST_ATTR_PORT, port);
        if let Some(r) = dest {
            d.put_u32(IPVS_DEST_ATTR_FWD_METHOD, r.forward.code());
            d.put_u32(IPVS_DEST_ATTR_WEIGHT, r.weight);
            d.put_u32(IPVS_DEST_ATTR_U_THRESH, r.upper_threshold);
            d.put_u32(IPVS_DEST_ATTR_L_THRESH, r.lower_threshold);
        }
    });
    a
}

/// The genl payload (genl header + attributes) of an add-service request.
pub fn encode_add_service(svc: &VirtualServer) -> Vec<u8> {
    genl_payload(IPVS_CMD_NEW_SERVICE, IPVS_GENL_VERSION, &service_attrs(svc))
}

/// The genl payload of an add-destination request.
pub fn encode_add_destination(key: &ServiceKey, dest: &RealServer) -> Vec<u8> {
    genl_payload(
        IPVS_CMD_NEW_DEST,
        IPVS_GENL_VERSION,
        &dest_attrs(key, dest.addr, dest.port, Some(dest)),
    )
}

fn timeout_attrs(t: &Timeouts) -> Attrs {
    let mut a = Attrs::new();
    a.put_u32(IPVS_CMD_ATTR_TIMEOUT_TCP, t.tcp)
        .put_u32(IPVS_CMD_ATTR_TIMEOUT_TCP_FIN, t.tcp_fin)
        .put_u32(IPVS_CMD_ATTR_TIMEOUT_UDP, t.udp);
    a
}

// === Decoders (pure) ===

/// A service from one `IPVS_CMD_NEW_SERVICE` reply (genl header included).
fn decode_service(payload: &[u8]) -> Result<VirtualServer, String> {
    let top = AttrTable::parse(payload.get(4..).unwrap_or_default()).map_err(|e| e.to_string())?;
    let s = top
        .nested(IPVS_CMD_ATTR_SERVICE)
        .map_err(|e| e.to_string())?
        .ok_or("no service attribute")?;
    let af = s.u16(IPVS_SVC_ATTR_AF).ok_or("no address family")?;
    let key = match s.u32(IPVS_SVC_ATTR_FWMARK).filter(|m| *m != 0) {
        Some(mark) => ServiceKey::Fwmark {
            ipv6: af == AF_INET6,
            mark,
        },
        None => {
            let proto = s.u16(IPVS_SVC_ATTR_PROTOCOL).ok_or("no protocol")?;
            ServiceKey::Addr {
                protocol: Protocol::from_number(proto).ok_or_else(|| format!("unknown protocol {proto}"))?,
                addr: s
                    .get(IPVS_SVC_ATTR_ADDR)
                    .and_then(|b| parse_inet_addr(af, b))
                    .ok_or("no address")?,
                port: s.be16(IPVS_SVC_ATTR_PORT).ok_or("no port")?,
            }
        }
    };
    let flags = s.u32(IPVS_SVC_ATTR_FLAGS).unwrap_or(0) & !FLAG_HASHED;
    Ok(VirtualServer {
        key,
        scheduler: s.str(IPVS_SVC_ATTR_SCHED_NAME).unwrap_or_default().to_string(),
        flags,
        timeout: s.u32(IPVS_SVC_ATTR_TIMEOUT).unwrap_or(0),
        netmask: s.u32(IPVS_SVC_ATTR_NETMASK).unwrap_or(0),
    })
}

/// A real server from one `IPVS_CMD_NEW_DEST` reply.
fn decode_destination(payload: &[u8], svc_ipv6: bool) -> Result<RealServerStatus, String> {
    let top = AttrTable::parse(payload.get(4..).unwrap_or_default()).map_err(|e| e.to_string())?;
    let d = top
        .nested(IPVS_CMD_ATTR_DEST)
        .map_err(|e| e.to_string())?
        .ok_or("no destination attribute")?;
    let af = d.u16(IPVS_DEST_ATTR_ADDR_FAMILY).unwrap_or(family(svc_ipv6));
    let fwd = d.u32(IPVS_DEST_ATTR_FWD_METHOD).unwrap_or(0);
    Ok(RealServerStatus {
        server: RealServer {
            addr: d
                .get(IPVS_DEST_ATTR_ADDR)
                .and_then(|b| parse_inet_addr(af, b))
                .ok_or("no address")?,
            port: d.be16(IPVS_DEST_ATTR_PORT).ok_or("no port")?,
            weight: d.u32(IPVS_DEST_ATTR_WEIGHT).unwrap_or(0),
            forward: Forward::from_code(fwd).ok_or_else(|| format!("unknown forwarding method {fwd}"))?,
            upper_threshold: d.u32(IPVS_DEST_ATTR_U_THRESH).unwrap_or(0),
            lower_threshold: d.u32(IPVS_DEST_ATTR_L_THRESH).unwrap_or(0),
        },
        active_conns: d.u32(IPVS_DEST_ATTR_ACTIVE_CONNS).unwrap_or(0),
        inactive_conns: d.u32(IPVS_DEST_ATTR_INACT_CONNS).unwrap_or(0),
        persistent_conns: d.u32(IPVS_DEST_ATTR_PERSIST_CONNS).unwrap_or(0),
    })
}

// === NetlinkIpvs ===

/// The kernel's IPVS table over generic netlink.
#[derive(Debug)]
pub struct NetlinkIpvs {
    family: u16,
    sock: Mutex<Socket>,
}

impl NetlinkIpvs {
    /// Opens a generic netlink socket in the calling thread's network
    /// namespace and resolves the `IPVS` family (the kernel autoloads
    /// `ip_vs` when it can).
    pub fn open() -> Result<Self, IpvsError> {
        let mut sock = Socket::open(libc::NETLINK_GENERIC).map_err(|e| IpvsError::Unavailable(e.into()))?;
        let mut attrs = Attrs::new();
        attrs.put_str(CTRL_ATTR_FAMILY_NAME, IPVS_GENL_NAME);
        let replies = sock
            .request(GENL_ID_CTRL, 0, &genl_payload(CTRL_CMD_GETFAMILY, 1, &attrs))
            .map_err(IpvsError::Unavailable)?;
        let family = replies
            .iter()
            .find_map(|r| AttrTable::parse(r.payload.get(4..)?).ok()?.u16(CTRL_ATTR_FAMILY_ID))
            .ok_or_else(|| IpvsError::Reply {
                op: "resolve the IPVS family",
                what: "no family id".into(),
            })?;
        Ok(Self {
            family,
            sock: Mutex::new(sock),
        })
    }

    fn request(&self, cmd: u8, dump: bool, attrs: &Attrs) -> Result<Vec<super::netlink::Reply>, NetlinkError> {
        let mut sock = self.sock.lock().unwrap_or_else(|e| e.into_inner());
        sock.request(
            self.family,
            if dump { F_DUMP } else { 0 },
            &genl_payload(cmd, IPVS_GENL_VERSION, attrs),
        )
    }

    fn exec(&self, op: &'static str, object: impl fmt::Display, cmd: u8, attrs: &Attrs) -> Result<(), IpvsError> {
        self.request(cmd, false, attrs)
            .map(drop)
            .map_err(|source| IpvsError::Op {
                op,
                object: object.to_string(),
                source,
            })
    }
}

impl Ipvs for NetlinkIpvs {
    fn services(&self) -> Result<Vec<VirtualServer>, IpvsError> {
        const OP: &str = "list virtual servers";
        let replies = self
            .request(IPVS_CMD_GET_SERVICE, true, &Attrs::new())
            .map_err(|source| IpvsError::Op {
                op: OP,
                object: "(all)".into(),
                source,
            })?;
        replies
            .iter()
            .map(|r| decode_service(&r.payload).map_err(|what| IpvsError::Reply { op: OP, what }))
            .collect()
    }

    fn add_service(&self, svc: &VirtualServer) -> Result<(), IpvsError> {
        self.exec("add virtual server", svc.key, IPVS_CMD_NEW_SERVICE, &service_attrs(svc))
    }

    fn update_service(&self, svc: &VirtualServer) -> Result<(), IpvsError> {
        self.exec(
            "edit virtual server",
            svc.key,
            IPVS_CMD_SET_SERVICE,
            &service_attrs(svc),
        )
    }

    fn delete_service(&self, key: &ServiceKey) -> Result<(), IpvsError> {
        self.exec(
            "delete virtual server",
            key,
            IPVS_CMD_DEL_SERVICE,
            &service_key_attrs(key),
        )
    }

    fn destinations(&self, key: &ServiceKey) -> Result<Vec<RealServerStatus>, IpvsError> {
        const OP: &str = "list real servers of";
        let replies = self
            .request(IPVS_CMD_GET_DEST, true, &service_key_attrs(key))
            .map_err(|source| IpvsError::Op {
                op: OP,
                object: key.to_string(),
                source,
            })?;
        replies
            .iter()
            .map(|r| decode_destination(&r.payload, key.is_ipv6()).map_err(|what| IpvsError::Reply { op: OP, what }))
            .collect()
    }

    fn add_destination(&self, key: &ServiceKey, dest: &RealServer) -> Result<(), IpvsError> {
        self.exec(
            "add real server",
            DestName(key, dest.addr, dest.port),
            IPVS_CMD_NEW_DEST,
            &dest_attrs(key, dest.addr, dest.port, Some(dest)),
        )
    }

    fn update_destination(&self, key: &ServiceKey, dest: &RealServer) -> Result<(), IpvsError> {
        self.exec(
            "edit real server",
            DestName(key, dest.addr, dest.port),
            IPVS_CMD_SET_DEST,
            &dest_attrs(key, dest.addr, dest.port, Some(dest)),
        )
    }

    fn delete_destination(&self, key: &ServiceKey, addr: IpAddr, port: u16) -> Result<(), IpvsError> {
        self.exec(
            "delete real server",
            DestName(key, addr, port),
            IPVS_CMD_DEL_DEST,
            &dest_attrs(key, addr, port, None),
        )
    }

    fn timeouts(&self) -> Result<Timeouts, IpvsError> {
        const OP: &str = "get IPVS timeouts";
        let replies = self
            .request(IPVS_CMD_GET_CONFIG, false, &Attrs::new())
            .map_err(|source| IpvsError::Op {
                op: OP,
                object: String::new(),
                source,
            })?;
        let reply = replies.first().ok_or_else(|| IpvsError::Reply {
            op: OP,
            what: "no reply".into(),
        })?;
        let t = AttrTable::parse(reply.payload.get(4..).unwrap_or_default()).map_err(|e| IpvsError::Reply {
            op: OP,
            what: e.to_string(),
        })?;
        Ok(Timeouts {
            tcp: t.u32(IPVS_CMD_ATTR_TIMEOUT_TCP).unwrap_or(0),
            tcp_fin: t.u32(IPVS_CMD_ATTR_TIMEOUT_TCP_FIN).unwrap_or(0),
            udp: t.u32(IPVS_CMD_ATTR_TIMEOUT_UDP).unwrap_or(0),
        })
    }

    fn set_timeouts(&self, t: &Timeouts) -> Result<(), IpvsError> {
        self.exec(
            "set IPVS timeouts",
            format_args!("tcp {} tcpfin {} udp {}", t.tcp, t.tcp_fin, t.udp),
            IPVS_CMD_SET_CONFIG,
            &timeout_attrs(t),
        )
    }
}

/// `TCP 10.0.0.1:80 -> 10.1.0.5:8080`, for error messages.
struct DestName<'a>(&'a ServiceKey, IpAddr, u16);

impl fmt::Display for DestName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {}", self.0, fmt_addr_port(self.1, self.2))
    }
}

// === FakeIpvs ===

/// An in-memory IPVS table with the kernel's add/edit/delete semantics
/// (`EEXIST` on a duplicate add, `ENOENT`/`ESRCH` on a missing object), for
/// backend unit tests. Counts mutating calls so tests can assert that a
/// sync touched only what changed.
#[derive(Debug, Default)]
pub struct FakeIpvs {
    state: Mutex<FakeState>,
}

/// A fake virtual server and its real servers by address and port.
type FakeEntry = (VirtualServer, BTreeMap<(IpAddr, u16), RealServerStatus>);

#[derive(Debug, Default)]
struct FakeState {
    services: BTreeMap<ServiceKey, FakeEntry>,
    timeouts: Timeouts,
    ops: Vec<String>,
}

impl FakeIpvs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Every mutating call so far, as `add-service TCP 1.2.3.4:80` etc.
    pub fn ops(&self) -> Vec<String> {
        self.lock().ops.clone()
    }

    pub fn clear_ops(&self) {
        self.lock().ops.clear();
    }

    /// Sets the connection counters of a real server (as traffic would).
    pub fn set_conns(&self, key: &ServiceKey, addr: IpAddr, port: u16, active: u32, inactive: u32) {
        if let Some(d) = self
            .lock()
            .services
            .get_mut(key)
            .and_then(|(_, dests)| dests.get_mut(&(addr, port)))
        {
            d.active_conns = active;
            d.inactive_conns = inactive;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn fake_err(op: &'static str, object: impl fmt::Display, errno: i32) -> IpvsError {
    IpvsError::Op {
        op,
        object: object.to_string(),
        source: NetlinkError::Kernel(errno),
    }
}

impl Ipvs for FakeIpvs {
    fn services(&self) -> Result<Vec<VirtualServer>, IpvsError> {
        Ok(self.lock().services.values().map(|(s, _)| s.clone()).collect())
    }

    fn add_service(&self, svc: &VirtualServer) -> Result<(), IpvsError> {
        let mut st = self.lock();
        if st.services.contains_key(&svc.key) {
            return Err(fake_err("add virtual server", svc.key, libc::EEXIST));
        }
        st.ops.push(format!("add-service {}", svc.key));
        st.services.insert(svc.key, (svc.clone(), BTreeMap::new()));
        Ok(())
    }

    fn update_service(&self, svc: &VirtualServer) -> Result<(), IpvsError> {
        let mut st = self.lock();
        let Some(entry) = st.services.get_mut(&svc.key) else {
            return Err(fake_err("edit virtual server", svc.key, libc::ESRCH));
        };
        entry.0 = svc.clone();
        st.ops.push(format!("edit-service {}", svc.key));
        Ok(())
    }

    fn delete_service(&self, key: &ServiceKey) -> Result<(), IpvsError> {
        let mut st = self.lock();
        if st.services.remove(key).is_none() {
            return Err(fake_err("delete virtual server", key, libc::ESRCH));
        }
        st.ops.push(format!("delete-service {key}"));
        Ok(())
    }

    fn destinations(&self, key: &ServiceKey) -> Result<Vec<RealServerStatus>, IpvsError> {
        let st = self.lock();
        let (_, dests) = st
            .services
            .get(key)
            .ok_or_else(|| fake_err("list real servers of", key, libc::ESRCH))?;
        Ok(dests.values().cloned().collect())
    }

    fn add_destination(&self, key: &ServiceKey, dest: &RealServer) -> Result<(), IpvsError> {
        let mut st = self.lock();
        let name = DestName(key, dest.addr, dest.port).to_string();
        let Some((_, dests)) = st.services.get_mut(key) else {
            return Err(fake_err("add real server", name, libc::ESRCH));
        };
        if dests.contains_key(&(dest.addr, dest.port)) {
            return Err(fake_err("add real server", name, libc::EEXIST));
        }
        dests.insert(
            (dest.addr, dest.port),
            RealServerStatus {
                server: dest.clone(),
                active_conns: 0,
                inactive_conns: 0,
                persistent_conns: 0,
            },
        );
        st.ops.push(format!("add-dest {name} w{}", dest.weight));
        Ok(())
    }

    fn update_destination(&self, key: &ServiceKey, dest: &RealServer) -> Result<(), IpvsError> {
        let mut st = self.lock();
        let name = DestName(key, dest.addr, dest.port).to_string();
        let Some(d) = st
            .services
            .get_mut(key)
            .and_then(|(_, dests)| dests.get_mut(&(dest.addr, dest.port)))
        else {
            return Err(fake_err("edit real server", name, libc::ENOENT));
        };
        d.server = dest.clone();
        st.ops.push(format!("edit-dest {name} w{}", dest.weight));
        Ok(())
    }

    fn delete_destination(&self, key: &ServiceKey, addr: IpAddr, port: u16) -> Result<(), IpvsError> {
        let mut st = self.lock();
        let name = DestName(key, addr, port).to_string();
        if st
            .services
            .get_mut(key)
            .and_then(|(_, dests)| dests.remove(&(addr, port)))
            .is_none()
        {
            return Err(fake_err("delete real server", name, libc::ENOENT));
        }
        st.ops.push(format!("delete-dest {name}"));
        Ok(())
    }

    fn timeouts(&self) -> Result<Timeouts, IpvsError> {
        Ok(self.lock().timeouts)
    }

    fn set_timeouts(&self, t: &Timeouts) -> Result<(), IpvsError> {
        let mut st = self.lock();
        // As the kernel: 0 leaves a value unchanged.
        let cur = st.timeouts;
        let pick = |new: u32, old: u32| if new == 0 { old } else { new };
        st.timeouts = Timeouts {
            tcp: pick(t.tcp, cur.tcp),
            tcp_fin: pick(t.tcp_fin, cur.tcp_fin),
            udp: pick(t.udp, cur.udp),
        };
        st.ops.push(format!("set-timeouts {} {} {}", t.tcp, t.tcp_fin, t.udp));
        Ok(())
    }
}

#[cfg(test)]
mod tests;
