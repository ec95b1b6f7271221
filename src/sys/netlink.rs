//! A minimal netlink transport shared by the IPVS (generic netlink) and
//! link/address (rtnetlink) clients.
//!
//! ```text
//!  Attrs (builder) ──▶ Socket::request(type, flags, header+attrs) ──▶ kernel
//!                          │ one request, then every reply with its sequence
//!                          ▼ number until the ACK / NLMSG_DONE / an error
//!  Vec<Reply> ◀── parse_attrs / AttrTable (parser)
//! ```
//!
//! Messages follow `linux/netlink.h`: a 16-byte `nlmsghdr`, a fixed family
//! header (the caller's bytes), then 4-byte aligned TLV attributes
//! (`nlattr`: u16 length including the 4-byte header, u16 type). The
//! encoders are pure functions over byte vectors so they can be unit-tested
//! without a socket; only [`Socket`] talks to the kernel.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `NLM_F_REQUEST`.
pub const F_REQUEST: u16 = 0x1;
/// `NLM_F_ACK`.
pub const F_ACK: u16 = 0x4;
/// `NLM_F_DUMP` (`ROOT | MATCH`).
pub const F_DUMP: u16 = 0x300;
/// `NLM_F_EXCL`.
pub const F_EXCL: u16 = 0x200;
/// `NLM_F_CREATE`.
pub const F_CREATE: u16 = 0x400;
/// `NLA_F_NESTED`: set on nested attributes (kernels accept it either way).
pub const NLA_F_NESTED: u16 = 0x8000;
/// Attribute type bits (without the NESTED / NET_BYTEORDER flags).
const NLA_TYPE_MASK: u16 = 0x3fff;

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;
/// Receive buffer: larger than any single dump datagram the kernel sends.
const RECV_BUF: usize = 64 * 1024;
/// A kernel that does not answer within this time is reported as an error
/// instead of hanging the sync loop.
const RECV_TIMEOUT_SECS: libc::time_t = 10;

/// Rounds up to the 4-byte netlink alignment.
pub fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// Why a netlink exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// The socket could not be opened, or sending/receiving failed.
    #[error("netlink i/o: {0}")]
    Io(#[from] io::Error),
    /// The kernel refused the request with this errno.
    #[error("{}", io::Error::from_raw_os_error(*.0))]
    Kernel(i32),
    /// A reply did not parse as netlink.
    #[error("malformed netlink reply: {0}")]
    Malformed(&'static str),
}

impl NetlinkError {
    /// The kernel's errno, when the kernel refused the request.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Kernel(e) => Some(*e),
            Self::Io(e) => e.raw_os_error(),
            Self::Malformed(_) => None,
        }
    }
}

// === Attribute builder ===

/// Builds a sequence of netlink attributes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attrs {
    buf: Vec<u8>,
}

impl Attrs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one attribute with `value` as its payload (padded to 4 bytes).
    pub fn put(&mut self, ty: u16, value: &[u8]) -> &mut Self {
        let len = 4 + value.len();
        // An attribute longer than u16 cannot be expressed; callers only
        // put fixed-size values, strings of at most 16 bytes and nests of them.
        let len16 = u16::try_from(len).unwrap_or(u16::MAX);
        self.buf.extend_from_slice(&len16.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.buf.resize(align(self.buf.len()), 0);
        self
    }

    pub fn put_u8(&mut self, ty: u16, v: u8) -> &mut Self {
        self.put(ty, &[v])
    }

    pub fn put_u16(&mut self, ty: u16, v: u16) -> &mut Self {
        self.put(ty, &v.to_ne_bytes())
    }

    /// A u16 in network byte order (ports).
    pub fn put_be16(&mut self, ty: u16, v: u16) -> &mut Self {
        self.put(ty, &v.to_be_bytes())
    }

    pub fn put_u32(&mut self, ty: u16, v: u32) -> &mut Self {
        self.put(ty, &v.to_ne_bytes())
    }

    /// A NUL-terminated string, as the kernel's `NLA_NUL_STRING` wants.
    pub fn put_str(&mut self, ty: u16, v: &str) -> &mut Self {
        let mut b = Vec::with_capacity(v.len() + 1);
        b.extend_from_slice(v.as_bytes());
        b.push(0);
        self.put(ty, &b)
    }

    /// A nested attribute holding what `f` puts.
    pub fn nest(&mut self, ty: u16, f: impl FnOnce(&mut Attrs)) -> &mut Self {
        let mut inner = Attrs::new();
        f(&mut inner);
        self.put(ty | NLA_F_NESTED, &inner.buf)
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

/// A complete netlink message: header, then `payload` (family header and
/// attributes), with the given sequence number and port id 0 (the kernel
/// fills in ours).
pub fn encode_message(msg_type: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + payload.len();
    let mut b = Vec::with_capacity(align(len));
    b.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_ne_bytes());
    b.extend_from_slice(&msg_type.to_ne_bytes());
    b.extend_from_slice(&flags.to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    b.extend_from_slice(payload);
    b.resize(align(b.len()), 0);
    b
}

// === Attribute parser ===

/// Splits `buf` into `(type, payload)` pairs; the type has its flag bits
/// masked off.
pub fn parse_attrs(mut buf: &[u8]) -> Result<Vec<(u16, &[u8])>, NetlinkError> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([buf[0], buf[1]]));
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            return Err(NetlinkError::Malformed("attribute length out of bounds"));
        }
        out.push((ty, &buf[4..len]));
        buf = &buf[align(len).min(buf.len())..];
    }
    Ok(out)
}

/// Attributes of one level, looked up by type (the last one wins).
#[derive(Debug, Default)]
pub struct AttrTable<'a> {
    attrs: Vec<(u16, &'a [u8])>,
}

impl<'a> AttrTable<'a> {
    pub fn parse(buf: &'a [u8]) -> Result<Self, NetlinkError> {
        Ok(Self {
            attrs: parse_attrs(buf)?,
        })
    }

    pub fn get(&self, ty: u16) -> Option<&'a [u8]> {
        self.attrs.iter().rev().find(|(t, _)| *t == ty).map(|(_, v)| *v)
    }

    pub fn u8(&self, ty: u16) -> Option<u8> {
        self.get(ty).and_then(|v| v.first().copied())
    }

    pub fn u16(&self, ty: u16) -> Option<u16> {
        self.get(ty)?.get(..2)?.try_into().ok().map(u16::from_ne_bytes)
    }

    pub fn be16(&self, ty: u16) -> Option<u16> {
        self.get(ty)?.get(..2)?.try_into().ok().map(u16::from_be_bytes)
    }

    pub fn u32(&self, ty: u16) -> Option<u32> {
        self.get(ty)?.get(..4)?.try_into().ok().map(u32::from_ne_bytes)
    }

    /// A string attribute, up to its first NUL.
    pub fn str(&self, ty: u16) -> Option<&'a str> {
        let v = self.get(ty)?;
        let end = v.iter().position(|b| *b == 0).unwrap_or(v.len());
        std::str::from_utf8(&v[..end]).ok()
    }

    pub fn nested(&self, ty: u16) -> Result<Option<AttrTable<'a>>, NetlinkError> {
        self.get(ty).map(AttrTable::parse).transpose()
    }
}

/// One reply message: its type and everything after the netlink header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub msg_type: u16,
    pub payload: Vec<u8>,
}

/// What one received datagram said about the request with sequence `seq`.
#[derive(Debug, Default)]
struct Received {
    replies: Vec<Reply>,
    done: bool,
}

/// Parses one datagram: replies for `seq`, the ACK/DONE that ends the
/// exchange, or the kernel's error.
fn parse_datagram(mut buf: &[u8], seq: u32) -> Result<Received, NetlinkError> {
    let mut got = Received::default();
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let msg_type = u16::from_ne_bytes([buf[4], buf[5]]);
        let msg_seq = u32::from_ne_bytes([buf[8], buf[9], buf[10], buf[11]]);
        if len < NLMSG_HDRLEN || len > buf.len() {
            return Err(NetlinkError::Malformed("message length out of bounds"));
        }
        let payload = &buf[NLMSG_HDRLEN..len];
        buf = &buf[align(len).min(buf.len())..];
        if msg_seq != seq {
            continue; // a stale answer to an earlier, abandoned request
        }
        match msg_type {
            NLMSG_ERROR | NLMSG_DONE => {
                let code = payload
                    .get(..4)
                    .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                    .unwrap_or(0);
                if code < 0 {
                    return Err(NetlinkError::Kernel(-code));
                }
                got.done = true;
            }
            NLMSG_OVERRUN => return Err(NetlinkError::Malformed("netlink overrun")),
            _ => got.replies.push(Reply {
                msg_type,
                payload: payload.to_vec(),
            }),
        }
    }
    Ok(got)
}

// === Socket ===

/// A bound netlink socket of one protocol (`NETLINK_GENERIC`,
/// `NETLINK_ROUTE`) in the network namespace of the thread that opened it.
#[derive(Debug)]
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
}

impl Socket {
    pub fn open(protocol: i32) -> io::Result<Self> {
        // SAFETY: plain socket(2) call; the fd is owned right below.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, protocol) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, valid descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: addr is a valid sockaddr_nl of the size passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let tv = libc::timeval {
            tv_sec: RECV_TIMEOUT_SECS,
            tv_usec: 0,
        };
        // SAFETY: tv is a valid timeval of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { fd, seq: 0 })
    }

    /// Sends one request and collects every reply to it: until the ACK for
    /// a plain request (`F_ACK` is added), until `NLMSG_DONE` for a dump.
    pub fn request(&mut self, msg_type: u16, flags: u16, payload: &[u8]) -> Result<Vec<Reply>, NetlinkError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let flags = if flags & F_DUMP == F_DUMP {
            flags | F_REQUEST
        } else {
            flags | F_REQUEST | F_ACK
        };
        let msg = encode_message(msg_type, flags, seq, payload);
        // SAFETY: msg is a valid buffer of the length passed.
        let sent = unsafe { libc::send(self.fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error().into());
        }
        let mut replies = Vec::new();
        let mut buf = vec![0u8; RECV_BUF];
        loop {
            // SAFETY: buf is a valid, writable buffer of the length passed.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e.into());
            }
            let got = parse_datagram(&buf[..n as usize], seq)?;
            replies.extend(got.replies);
            if got.done {
                return Ok(replies);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_to_four_bytes_and_nested() {
        let mut a = Attrs::new();
        a.put_u8(1, 7).nest(2, |n| {
            n.put_str(3, "rr");
        });
        assert_eq!(
            a.as_bytes(),
            &[
                5, 0, 1, 0, 7, 0, 0, 0, // u8 attr, padded
                12, 0, 2, 0x80, // nested, NLA_F_NESTED set
                7, 0, 3, 0, b'r', b'r', 0, 0, // "rr\0" + pad
            ][..]
        );
        let outer = AttrTable::parse(a.as_bytes()).expect("parse");
        assert_eq!(outer.u8(1), Some(7));
        let inner = outer.nested(2).expect("nested").expect("present");
        assert_eq!(inner.str(3), Some("rr"));
    }

    #[test]
    fn truncated_attribute_is_malformed_not_a_panic() {
        assert!(parse_attrs(&[8, 0, 1, 0, 1]).is_err());
        assert!(parse_attrs(&[2, 0, 1, 0]).is_err());
    }

    #[test]
    fn error_reply_carries_the_errno_and_ack_ends_the_exchange() {
        let err = encode_message(NLMSG_ERROR, 0, 9, &(-17i32).to_ne_bytes());
        assert!(matches!(parse_datagram(&err, 9), Err(NetlinkError::Kernel(17))));
        let ack = encode_message(NLMSG_ERROR, 0, 9, &0i32.to_ne_bytes());
        let mut both = encode_message(0x20, 0, 9, &[1, 2, 3, 4]);
        both.extend(ack);
        let got = parse_datagram(&both, 9).expect("parse");
        assert!(got.done);
        assert_eq!(got.replies.len(), 1);
        // Another request's answer is ignored.
        let stale = encode_message(0x20, 0, 8, &[1, 2, 3, 4]);
        assert!(parse_datagram(&stale, 9).expect("parse").replies.is_empty());
    }
}
