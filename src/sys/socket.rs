//! Socket calls tokio does not wrap, for the userspace relay:
//!
//! - [`recv_with_dst`] / [`send_from`]: UDP with `IP_PKTINFO` /
//!   `IPV6_PKTINFO`, so a listener bound to a wildcard address learns which
//!   local address each datagram was sent to and answers from that address
//!   (the client, and conntrack's reverse NAT, see the address it used).
//! - [`Pipe`]: a non-blocking pipe and `splice(2)` through it, to move TCP
//!   payload between two sockets without copying it into userspace.
//!
//! Every call is non-blocking; the caller waits for readiness (tokio's
//! `async_io` / `try_io`) and retries on `WouldBlock`.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::fcntl::{OFlag, SpliceFFlags, splice};
use nix::libc;
use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, sendmsg, setsockopt, sockopt,
};

/// One datagram received by [`recv_with_dst`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Datagram {
    /// Payload length in the caller's buffer.
    pub len: usize,
    /// Who sent it.
    pub from: SocketAddr,
    /// The local address it was sent to (None if the kernel did not say,
    /// i.e. [`enable_dst_info`] was not called).
    pub to: Option<IpAddr>,
}

/// Asks the kernel to report each datagram's destination address on `sock`
/// (`IP_PKTINFO` for IPv4 sockets, `IPV6_RECVPKTINFO` for IPv6 ones).
pub fn enable_dst_info(sock: &impl AsFd, ipv6: bool) -> io::Result<()> {
    if ipv6 {
        setsockopt(sock, sockopt::Ipv6RecvPacketInfo, &true)?;
    } else {
        setsockopt(sock, sockopt::Ipv4PacketInfo, &true)?;
    }
    Ok(())
}

/// Receives one datagram into `buf` with its source and destination.
pub fn recv_with_dst(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Datagram> {
    let mut iov = [IoSliceMut::new(buf)];
    // Room for one in6_pktinfo (the larger of the two) and its header.
    let mut cmsg = [0u8; 64];
    let msg = recvmsg::<SockaddrStorage>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), MsgFlags::empty())?;
    let from = msg
        .address
        .as_ref()
        .and_then(to_socket_addr)
        .ok_or_else(|| io::Error::other("datagram without a source address"))?;
    let mut to = None;
    for c in msg.cmsgs()? {
        match c {
            ControlMessageOwned::Ipv4PacketInfo(info) => {
                to = Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr))));
            }
            ControlMessageOwned::Ipv6PacketInfo(info) => {
                to = Some(IpAddr::V6(Ipv6Addr::from(info.ipi6_addr.s6_addr)));
            }
            _ => {}
        }
    }
    Ok(Datagram {
        len: msg.bytes,
        from,
        to,
    })
}

/// Sends `buf` to `to`, from the local address `from` when given (it must
/// be an address of this host, of the same family as `to`).
pub fn send_from(sock: BorrowedFd<'_>, buf: &[u8], to: SocketAddr, from: Option<IpAddr>) -> io::Result<usize> {
    let iov = [IoSlice::new(buf)];
    let dest = SockaddrStorage::from(to);
    let fd = sock.as_raw_fd();
    let sent = match (from, to) {
        (Some(IpAddr::V4(src)), SocketAddr::V4(_)) => {
            let info = libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from(src).to_be(),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            sendmsg(
                fd,
                &iov,
                &[ControlMessage::Ipv4PacketInfo(&info)],
                MsgFlags::empty(),
                Some(&dest),
            )?
        }
        (Some(IpAddr::V6(src)), SocketAddr::V6(_)) => {
            let info = libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr { s6_addr: src.octets() },
                ipi6_ifindex: 0,
            };
            sendmsg(
                fd,
                &iov,
                &[ControlMessage::Ipv6PacketInfo(&info)],
                MsgFlags::empty(),
                Some(&dest),
            )?
        }
        _ => sendmsg(fd, &iov, &[], MsgFlags::empty(), Some(&dest))?,
    };
    Ok(sent)
}

fn to_socket_addr(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    a.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
}

/// A non-blocking pipe used as the in-kernel buffer of one `splice(2)`
/// direction: socket → pipe → socket.
#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

// === impl Pipe ===

impl Pipe {
    pub fn new() -> io::Result<Self> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        Ok(Self { read, write })
    }

    /// Moves up to `max` bytes from the socket `from` into the pipe.
    /// `Ok(0)` means end of stream; `WouldBlock` means no data (the pipe
    /// must have been drained first, or it may also mean the pipe is full).
    pub fn fill_from(&self, from: BorrowedFd<'_>, max: usize) -> io::Result<usize> {
        Ok(splice(from, None, self.write.as_fd(), None, max, flags())?)
    }

    /// Moves up to `max` bytes from the pipe to the socket `to`;
    /// `WouldBlock` means the socket's send buffer is full.
    pub fn drain_to(&self, to: BorrowedFd<'_>, max: usize) -> io::Result<usize> {
        Ok(splice(self.read.as_fd(), None, to, None, max, flags())?)
    }
}

fn flags() -> SpliceFFlags {
    SpliceFFlags::SPLICE_F_NONBLOCK | SpliceFFlags::SPLICE_F_MOVE
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream, UdpSocket};
    use std::time::Duration;

    #[test]
    fn datagram_reports_its_destination_and_reply_leaves_from_it() {
        let server = UdpSocket::bind("127.0.0.1:0").expect("bind");
        enable_dst_info(&server, false).expect("pktinfo");
        let client = UdpSocket::bind("127.0.0.1:0").expect("bind client");
        client.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let server_addr = server.local_addr().expect("addr");
        client.send_to(b"ping", server_addr).expect("send");
        let mut buf = [0u8; 16];
        let d = recv_with_dst(server.as_fd(), &mut buf).expect("recv");
        assert_eq!(&buf[..d.len], b"ping");
        assert_eq!(d.from, client.local_addr().expect("client addr"));
        assert_eq!(d.to, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        send_from(server.as_fd(), b"pong", d.from, d.to).expect("send_from");
        let (n, src) = client.recv_from(&mut buf).expect("reply");
        assert_eq!((&buf[..n], src), (&b"pong"[..], server_addr));
    }

    #[test]
    fn splice_moves_a_stream_and_reports_its_end() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut writer = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (reader, _) = listener.accept().expect("accept");
        let (mut sink_client, sink) = {
            let l2 = TcpListener::bind("127.0.0.1:0").expect("bind sink");
            let c = TcpStream::connect(l2.local_addr().expect("addr")).expect("connect sink");
            let (s, _) = l2.accept().expect("accept sink");
            (s, c)
        };
        writer.write_all(b"hello splice").expect("write");
        drop(writer);
        reader.set_nonblocking(false).expect("blocking");
        let pipe = Pipe::new().expect("pipe");
        let mut moved = 0;
        for _ in 0..1000 {
            match pipe.fill_from(reader.as_fd(), 1 << 16) {
                Ok(0) => break,
                Ok(n) => {
                    let mut left = n;
                    while left > 0 {
                        left -= pipe.drain_to(sink.as_fd(), left).expect("drain");
                    }
                    moved += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => panic!("splice: {e}"),
            }
        }
        assert_eq!(moved, 12);
        drop(sink);
        let mut got = String::new();
        sink_client.read_to_string(&mut got).expect("read");
        assert_eq!(got, "hello splice");
    }
}
