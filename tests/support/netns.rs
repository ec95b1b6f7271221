//! Network-namespace test topology for kproxy datapath tests.
//!
//! Include from a test crate with
//! `#[path = "support/netns.rs"] mod netns;`.
//!
//! Safety rules this module follows (and that users must keep):
//! - every namespace, link, address, route and rule is created inside
//!   namespaces made here; nothing is ever configured in the root namespace
//!   (veth pairs are created from inside a namespace with the peer placed
//!   directly into another one);
//! - only 198.18.0.0/15 and fd00::/8 carry packets (service VIPs come from
//!   198.19.0.0/16 and fd00:96::/64);
//! - every connect/read has a timeout and every loop is bounded;
//! - namespaces are deleted on Drop (also while unwinding from a panic), and
//!   only processes started/registered here are killed, by PID.
//!
//! Topology built by [`Topology::builder`]:
//!
//! ```text
//!  pod0 eth0 198.18.1.10 ─┐
//!  pod1 eth0 198.18.1.11 ─┤ node: br0 198.18.1.1/24   eth1 198.18.2.1 ─┐
//!  ...                    ┘ (veth<i> ports, hairpin)                    │
//!                                        client: br0 198.18.2.2/24 ────┤
//!                          (optional) node2: eth1 198.18.2.3 ──────────┘
//! ```
//!
//! The node routes `198.19.0.0/16` and `fd00:96::/64` to `vip0`, with
//! source 198.18.1.1 / fd00:1::1. Locally generated traffic to a VIP thus
//! finds a route, passes nat OUTPUT where kproxy's DNAT rewrites it to a
//! pod, and is re-routed out of br0. What happens to a VIP packet that no
//! rule rewrote depends on the builder:
//!
//! - by default `vip0` is a sink device (veth with its peer down, NOARP):
//!   the packet is silently dropped (`ConnError::Timeout`), from the node
//!   and from the client/pods alike. See [`vip_routes`].
//! - with [`TopologyBuilder::unhandled_responder`], `vip0` leads to a
//!   `nowhere` namespace holding the VIP ranges, where every TCP/UDP port
//!   answers with the label [`UNHANDLED`]. Untouched traffic is then an
//!   answer, distinct from a DROP (timeout) and a REJECT (refused). See
//!   [`nowhere_routes`].
//!
//! ```text
//!  node: vip0 198.18.254.1/30 ── eth0 198.18.254.2 nowhere
//!        (fd00:254::1/64)          (fd00:254::2; local 198.19.0.0/16,
//!                                   fd00:96::/64; all ports → "unhandled")
//! ```

#![allow(dead_code)]
// Test harness: it runs `ip`, servers and tools directly, outside sys::CommandRunner.
#![allow(clippy::disallowed_types)]

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard, Once, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------
// Address plan
// ---------------------------------------------------------------------------

/// Pod network (node bridge `br0`).
pub const POD_CIDR4: &str = "198.18.1.0/24";
/// "External" network between node(s) and the outside client.
pub const EXT_CIDR4: &str = "198.18.2.0/24";
/// Service VIP range (ClusterIPs, external IPs, LB IPs for tests).
pub const VIP_CIDR4: &str = "198.19.0.0/16";
pub const POD_CIDR6: &str = "fd00:1::/64";
pub const EXT_CIDR6: &str = "fd00:2::/64";
pub const VIP_CIDR6: &str = "fd00:96::/64";

/// Default timeout for external commands (`ip`, `iptables`, ...).
pub const CMD_TIMEOUT: Duration = Duration::from_secs(60);
/// Poll interval of server threads (bounds how long Drop waits for them).
const SERVER_POLL_MS: i32 = 50;
/// Label of every answer from the unhandled responder (the `nowhere`
/// namespace, and the harness's NodePort listeners on the node): traffic no
/// rule handled.
pub const UNHANDLED: &str = "unhandled";
/// Port of the `nowhere` reply servers (every TCP/UDP port is redirected there).
pub const NOWHERE_PORT: u16 = 9999;
/// Payload the UDP clients send.
const UDP_PING: &[u8] = b"kproxy-netns-ping\n";

/// IPv4 service VIP number `n`: 198.19.(n>>8).(n&0xff).
pub fn vip4(n: u16) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, (n >> 8) as u8, (n & 0xff) as u8)
}

/// IPv6 service VIP number `n`: fd00:96::n.
pub fn vip6(n: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, n)
}

// ---------------------------------------------------------------------------
// Tools / privileges
// ---------------------------------------------------------------------------

const EXTRA_PATH: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// PATH used for every child process: the caller's PATH plus the sbin
/// directories (CI environments sometimes lack them).
fn tool_path_env() -> String {
    let cur = std::env::var("PATH").unwrap_or_default();
    let mut parts: Vec<String> = cur.split(':').filter(|p| !p.is_empty()).map(String::from).collect();
    for extra in EXTRA_PATH {
        if !parts.iter().any(|p| p == extra) {
            parts.push((*extra).to_string());
        }
    }
    parts.join(":")
}

/// Resolve `tool` like a shell would (using [`tool_path_env`]).
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    let is_exec = |p: &Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if tool.contains('/') {
        let p = PathBuf::from(tool);
        return is_exec(&p).then_some(p);
    }
    tool_path_env()
        .split(':')
        .map(|dir| Path::new(dir).join(tool))
        .find(|p| is_exec(p))
}

/// A `Command` for `program` with the augmented PATH.
fn base_cmd(program: &str) -> Command {
    let mut c = Command::new(find_tool(program).unwrap_or_else(|| PathBuf::from(program)));
    c.env("PATH", tool_path_env());
    c
}

fn is_ci() -> bool {
    std::env::var("CI")
        .map(|v| v.eq_ignore_ascii_case("true") || v == "1")
        .unwrap_or(false)
}

/// Can this process create namespaces and build a topology? Cached.
fn netns_probe() -> Result<(), String> {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            let out = run_with_timeout(base_cmd("ip").args(["netns", "list"]), None, Duration::from_secs(10))
                .map_err(|e| format!("`ip netns list` failed to run: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "`ip netns list` failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            ensure_br_netfilter()?;
            let probe = Netns::new("probe").map_err(|e| format!("cannot create a netns: {e}"))?;
            probe
                .read_sysctl("net.bridge.bridge-nf-call-iptables")
                .map_err(|e| format!("br_netfilter sysctls are not available inside a netns: {e}"))?;
            drop(probe);
            Ok(())
        })
        .clone()
}

/// Make sure the br_netfilter module is loaded (loading it adds no rules).
fn ensure_br_netfilter() -> Result<(), String> {
    let p = Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables");
    if p.exists() {
        return Ok(());
    }
    let res = run_with_timeout(base_cmd("modprobe").arg("br_netfilter"), None, Duration::from_secs(30));
    if p.exists() {
        return Ok(());
    }
    Err(match res {
        Ok(o) => format!(
            "br_netfilter unavailable (modprobe br_netfilter: {})",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => format!("br_netfilter unavailable (modprobe: {e})"),
    })
}

/// True when we are root, every tool (and `ip`) is on PATH, `ip netns` works
/// and br_netfilter is available. Otherwise: with `CI=true` panic loudly,
/// else print `SKIP: <reason>` to stderr and return false.
pub fn require_root_tools(tools: &[&str]) -> bool {
    let mut missing: Vec<String> = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("not running as root".to_string());
    }
    let mut all: Vec<&str> = vec!["ip"];
    all.extend(tools.iter().copied().filter(|t| *t != "ip"));
    for t in &all {
        if find_tool(t).is_none() {
            missing.push(format!("tool `{t}` not found on PATH"));
        }
    }
    if missing.is_empty()
        && let Err(e) = netns_probe()
    {
        missing.push(e);
    }
    if missing.is_empty() {
        return true;
    }
    let reason = missing.join("; ");
    if is_ci() {
        panic!(
            "\n\n=== netns datapath test cannot run in CI (CI=true): {reason} ===\n\
             (needs root, iproute2 with `ip netns`, br_netfilter and: {all:?})\n\n"
        );
    }
    eprintln!("SKIP: {reason}");
    false
}

// ---------------------------------------------------------------------------
// Process helpers
// ---------------------------------------------------------------------------

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn read_pipe_in_thread<R: Read + Send + 'static>(pipe: Option<R>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        let _ = tx.send(buf);
    });
    rx
}

/// Run `cmd` to completion with captured output, killing it after `timeout`.
pub fn run_with_timeout(cmd: &mut Command, input: Option<&[u8]>, timeout: Duration) -> io::Result<Output> {
    cmd.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    if let Some(data) = input {
        let stdin = child.stdin.take();
        let data = data.to_vec();
        thread::spawn(move || {
            if let Some(mut s) = stdin {
                let _ = s.write_all(&data);
            }
        });
    }
    let out_rx = read_pipe_in_thread(child.stdout.take());
    let err_rx = read_pipe_in_thread(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let mut nap = Duration::from_millis(1);
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("command timed out after {timeout:?}: {cmd:?}"),
            ));
        }
        thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(20));
    };
    // A grandchild could keep the pipes open; do not wait forever for EOF.
    let grace = Duration::from_secs(5);
    let stdout = out_rx.recv_timeout(grace).unwrap_or_default();
    let stderr = err_rx.recv_timeout(grace).unwrap_or_default();
    Ok(Output { status, stdout, stderr })
}

fn check_output(what: &str, out: Output) -> io::Result<String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(io::Error::other(format!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        )))
    }
}

/// Run `ip ARGS` in the *root* namespace. Only used for namespace
/// management (`netns add/del/list`), never for links/addresses/routes.
fn ip_root_netns(args: &[&str]) -> io::Result<String> {
    let out = run_with_timeout(base_cmd("ip").arg("netns").args(args), None, CMD_TIMEOUT)?;
    check_output(&format!("ip netns {}", args.join(" ")), out)
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Delete namespaces left behind by earlier test processes that died
/// without running Drop (name prefix `kp<pid>-` with a dead pid). Once per
/// process.
fn cleanup_stale_namespaces() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let Ok(list) = ip_root_netns(&["list"]) else {
            return;
        };
        let me = std::process::id();
        for line in list.lines() {
            let Some(name) = line.split_whitespace().next() else {
                continue;
            };
            let Some(rest) = name.strip_prefix("kp") else {
                continue;
            };
            let Some((pid, _)) = rest.split_once('-') else {
                continue;
            };
            let Ok(pid) = pid.parse::<u32>() else {
                continue;
            };
            if pid != me && !pid_alive(pid) {
                eprintln!("netns: deleting stale namespace {name} (pid {pid} is gone)");
                // Processes our earlier run started inside it (e.g. a
                // kproxy under test) would otherwise keep running.
                if let Ok(pids) = ip_root_netns(&["pids", name]) {
                    for p in pids.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
                        // SAFETY: kill(2) on a process living in our stale netns.
                        unsafe { libc::kill(p, libc::SIGKILL) };
                    }
                }
                let _ = ip_root_netns(&["del", name]);
            }
        }
    });
}

// ---------------------------------------------------------------------------
// Connection results
// ---------------------------------------------------------------------------

/// Which transport a request uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

/// A parsed server answer: `"<podname> <peer_ip>:<peer_port>\n"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// Label of the namespace whose server answered (e.g. `pod0`, `node`).
    pub pod: String,
    /// The client address as seen by the server (after any SNAT).
    pub seen_src: SocketAddr,
    /// The client socket's own local address.
    pub local: SocketAddr,
}

impl Reply {
    /// True when the server saw our own address (no SNAT on the path).
    pub fn src_preserved(&self) -> bool {
        self.seen_src == self.local
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnError {
    /// RST, ICMP (port/host/net) unreachable.
    Refused,
    /// No answer within the timeout (dropped).
    Timeout,
    /// Anything else (reset after connect, garbage reply, ...).
    Other(String),
}

impl fmt::Display for ConnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnError::Refused => write!(f, "refused"),
            ConnError::Timeout => write!(f, "timeout"),
            ConnError::Other(s) => write!(f, "error: {s}"),
        }
    }
}

impl std::error::Error for ConnError {}

fn classify(e: &io::Error) -> ConnError {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED | libc::EHOSTUNREACH | libc::ENETUNREACH) => {
            return ConnError::Refused;
        }
        Some(libc::ETIMEDOUT | libc::EAGAIN | libc::EINPROGRESS) => return ConnError::Timeout,
        _ => {}
    }
    match e.kind() {
        io::ErrorKind::ConnectionRefused => ConnError::Refused,
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ConnError::Timeout,
        _ => ConnError::Other(e.to_string()),
    }
}

/// Key used by the tally helpers for failures.
pub fn tally_key(r: &Result<Reply, ConnError>) -> String {
    match r {
        Ok(rep) => rep.pod.clone(),
        Err(ConnError::Refused) => "!refused".to_string(),
        Err(ConnError::Timeout) => "!timeout".to_string(),
        Err(ConnError::Other(_)) => "!error".to_string(),
    }
}

/// `::ffff:a.b.c.d` → `a.b.c.d`.
fn canonical(sa: SocketAddr) -> SocketAddr {
    match sa {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => sa,
        },
        SocketAddr::V4(_) => sa,
    }
}

/// `a.b.c.d` → `::ffff:a.b.c.d` (for dual-stack sockets).
fn mapped(sa: SocketAddr) -> SocketAddr {
    match sa {
        SocketAddr::V4(v4) => SocketAddr::V6(SocketAddrV6::new(v4.ip().to_ipv6_mapped(), v4.port(), 0, 0)),
        SocketAddr::V6(_) => sa,
    }
}

fn parse_reply(data: &[u8], local: SocketAddr) -> Result<Reply, ConnError> {
    let text = String::from_utf8_lossy(data);
    let line = text.lines().next().unwrap_or("").trim();
    let mut it = line.split_whitespace();
    match (it.next(), it.next().and_then(|s| s.parse::<SocketAddr>().ok())) {
        (Some(pod), Some(seen_src)) => Ok(Reply {
            pod: pod.to_string(),
            seen_src,
            local: canonical(local),
        }),
        _ => Err(ConnError::Other(format!("unparsable reply {text:?}"))),
    }
}

fn nonzero(d: Duration) -> Duration {
    d.max(Duration::from_millis(1))
}

fn wait_readable(fd: RawFd, timeout_ms: i32) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: `p` is a valid pollfd for the duration of the call.
    unsafe { libc::poll(&mut p, 1, timeout_ms) > 0 }
}

/// TCP request from the calling thread's namespace (socket is created here).
fn tcp_request_here(addr: SocketAddr, timeout: Duration) -> Result<Reply, ConnError> {
    let deadline = Instant::now() + nonzero(timeout);
    let mut s = TcpStream::connect_timeout(&addr, nonzero(timeout)).map_err(|e| classify(&e))?;
    let local = s.local_addr().map_err(|e| ConnError::Other(e.to_string()))?;
    let mut buf = Vec::with_capacity(128);
    let mut chunk = [0u8; 512];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ConnError::Timeout);
        }
        s.set_read_timeout(Some(left))
            .map_err(|e| ConnError::Other(e.to_string()))?;
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.contains(&b'\n') || buf.len() > 4096 {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                return Err(match classify(&e) {
                    ConnError::Refused => ConnError::Other(format!("after connect: {e}")),
                    other => other,
                });
            }
        }
    }
    if buf.is_empty() {
        return Err(ConnError::Other("connection closed without a reply".into()));
    }
    parse_reply(&buf, local)
}

/// UDP request over a fresh connected socket from the calling thread's
/// namespace.
fn udp_request_here(addr: SocketAddr, timeout: Duration) -> Result<Reply, ConnError> {
    let bind: SocketAddr = match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let s = UdpSocket::bind(bind).map_err(|e| ConnError::Other(e.to_string()))?;
    udp_exchange(&s, addr, timeout)
}

/// `connect(AF_UNSPEC)`: forget the peer and the auto-selected source
/// address of a UDP socket.
fn udp_disconnect(s: &UdpSocket) {
    // SAFETY: a zeroed sockaddr with family AF_UNSPEC is a valid argument.
    unsafe {
        let mut sa: libc::sockaddr = std::mem::zeroed();
        sa.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
        libc::connect(
            s.as_raw_fd(),
            &sa,
            std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
        );
    }
}

/// Connect `s` to `addr`, drain stale datagrams, send a ping and wait for
/// one reply.
fn udp_exchange(s: &UdpSocket, addr: SocketAddr, timeout: Duration) -> Result<Reply, ConnError> {
    let other = |e: io::Error| ConnError::Other(e.to_string());
    // Dissolve any previous association first: a connected UDP socket keeps
    // the source address chosen by its first connect() (a v6 source would
    // break a later connect to a v4-mapped address) until it is
    // disconnected with AF_UNSPEC. The port survives because UdpFlow binds
    // it explicitly (SOCK_BINDPORT_LOCK).
    udp_disconnect(s);
    s.connect(addr).map_err(|e| classify(&e))?;
    // Drop late replies / pending errors from an earlier exchange.
    s.set_nonblocking(true).map_err(other)?;
    let mut buf = [0u8; 2048];
    for _ in 0..1024 {
        match s.recv(&mut buf) {
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(_) => continue, // consumed a pending socket error
        }
    }
    s.set_nonblocking(false).map_err(other)?;
    let local = s.local_addr().map_err(other)?;
    let deadline = Instant::now() + nonzero(timeout);
    s.send(UDP_PING).map_err(|e| classify(&e))?;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ConnError::Timeout);
        }
        s.set_read_timeout(Some(left)).map_err(other)?;
        match s.recv(&mut buf) {
            Ok(n) => return parse_reply(&buf[..n], local),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(classify(&e)),
        }
    }
}

fn request_here(proto: Proto, addr: SocketAddr, timeout: Duration) -> Result<Reply, ConnError> {
    match proto {
        Proto::Tcp => tcp_request_here(addr, timeout),
        Proto::Udp => udp_request_here(addr, timeout),
    }
}

/// A persistent UDP socket with a fixed source port (same 5-tuple on every
/// `send_recv` to the same address — for conntrack affinity tests). The
/// socket lives in the namespace that created it. Dual-stack: it talks to
/// both IPv4 and IPv6 addresses.
#[derive(Debug)]
pub struct UdpFlow {
    sock: UdpSocket,
    local_port: u16,
    dual_stack: bool,
}

impl UdpFlow {
    pub fn local_port(&self) -> u16 {
        self.local_port
    }

    /// Send one datagram to `addr` and wait for the reply.
    pub fn send_recv(&self, addr: SocketAddr, timeout: Duration) -> Result<Reply, ConnError> {
        let target = if self.dual_stack { mapped(addr) } else { addr };
        udp_exchange(&self.sock, target, timeout)
    }
}

// ---------------------------------------------------------------------------
// Servers
// ---------------------------------------------------------------------------

struct Server {
    proto: Proto,
    port: u16,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Server {
    fn stop_and_join(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Decrements the live-server counter when the server thread exits.
struct LiveGuard(Arc<AtomicUsize>);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn reply_line(label: &str, peer: SocketAddr) -> String {
    format!("{label} {}\n", canonical(peer))
}

fn tcp_server_loop(listener: TcpListener, label: String, stop: Arc<AtomicBool>) {
    let fd = listener.as_raw_fd();
    while !stop.load(Ordering::SeqCst) {
        if !wait_readable(fd, SERVER_POLL_MS) {
            continue;
        }
        match listener.accept() {
            Ok((mut s, peer)) => {
                let _ = s.set_nonblocking(false);
                let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
                let _ = s.write_all(reply_line(&label, peer).as_bytes());
                let _ = s.shutdown(std::net::Shutdown::Write);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

fn udp_server_loop(sock: UdpSocket, label: String, stop: Arc<AtomicBool>) {
    let fd = sock.as_raw_fd();
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::SeqCst) {
        if !wait_readable(fd, SERVER_POLL_MS) {
            continue;
        }
        match sock.recv_from(&mut buf) {
            Ok((_, peer)) => {
                let _ = sock.send_to(reply_line(&label, peer).as_bytes(), peer);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => thread::sleep(Duration::from_millis(10)),
        }
    }
}

// ---------------------------------------------------------------------------
// Netns
// ---------------------------------------------------------------------------

static NS_COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A network namespace created by this module; deleted on Drop.
pub struct Netns {
    name: String,
    label: String,
    servers: Mutex<Vec<Server>>,
    children: Mutex<Vec<Child>>,
    pids: Mutex<Vec<u32>>,
    live_servers: Arc<AtomicUsize>,
}

impl fmt::Debug for Netns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Netns")
            .field("name", &self.name)
            .field("label", &self.label)
            .finish()
    }
}

impl Netns {
    /// Create a namespace named `kp<pid>-<counter>-<label>` with `lo` up.
    /// `label` is what this namespace's servers report as their name.
    pub fn new(label: &str) -> io::Result<Netns> {
        cleanup_stale_namespaces();
        let n = NS_COUNTER.fetch_add(1, Ordering::SeqCst);
        let name = format!("kp{}-{}-{}", std::process::id(), n, label);
        ip_root_netns(&["add", &name])?;
        let ns = Netns {
            name,
            label: label.to_string(),
            servers: Mutex::new(Vec::new()),
            children: Mutex::new(Vec::new()),
            pids: Mutex::new(Vec::new()),
            live_servers: Arc::new(AtomicUsize::new(0)),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        // No ICMP rate limiting: many "refused" probes in a row must all
        // get their ICMP error.
        ns.try_sysctl("net.ipv4.icmp_ratelimit", "0")?;
        let _ = ns.try_sysctl("net.ipv6.icmp.ratelimit", "0");
        Ok(ns)
    }

    /// The namespace's name (as in `ip netns list`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Short label (`node`, `pod0`, `client`, ...), used in server replies.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// `/var/run/netns/<name>`.
    pub fn path(&self) -> PathBuf {
        Path::new("/var/run/netns").join(&self.name)
    }

    /// `ip -n NAME ARGS...`; Err (with stderr) on failure.
    pub fn ip(&self, args: &[&str]) -> io::Result<String> {
        let out = run_with_timeout(base_cmd("ip").args(["-n", &self.name]).args(args), None, CMD_TIMEOUT)?;
        check_output(&format!("[{}] ip {}", self.name, args.join(" ")), out)
    }

    /// [`ip`](Self::ip) with a whitespace-separated argument string.
    pub fn ipc(&self, args: &str) -> io::Result<String> {
        self.ip(&args.split_whitespace().collect::<Vec<_>>())
    }

    /// A `Command` running `ip netns exec NAME program` (add args, stdio...).
    pub fn command(&self, program: &str) -> Command {
        let mut c = base_cmd("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Run `args` inside the namespace (`ip netns exec NAME args...`) with
    /// the default command timeout.
    pub fn exec(&self, args: &[&str]) -> io::Result<Output> {
        self.exec_timeout(args, CMD_TIMEOUT)
    }

    pub fn exec_timeout(&self, args: &[&str], timeout: Duration) -> io::Result<Output> {
        let (prog, rest) = args
            .split_first()
            .ok_or_else(|| io::Error::other("exec: empty command"))?;
        run_with_timeout(self.command(prog).args(rest), None, timeout)
    }

    /// Like [`exec`](Self::exec) with `input` on stdin (e.g. for
    /// `iptables-restore`, `nft -f -`).
    pub fn exec_with_input(&self, args: &[&str], input: &[u8]) -> io::Result<Output> {
        let (prog, rest) = args
            .split_first()
            .ok_or_else(|| io::Error::other("exec: empty command"))?;
        run_with_timeout(self.command(prog).args(rest), Some(input), CMD_TIMEOUT)
    }

    /// Run `args` inside the namespace; panic with stderr on failure.
    /// Returns stdout.
    pub fn exec_ok(&self, args: &[&str]) -> String {
        match self
            .exec(args)
            .and_then(|o| check_output(&format!("[{}] {}", self.name, args.join(" ")), o))
        {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        }
    }

    /// Like [`exec_ok`](Self::exec_ok) with stdin input.
    pub fn exec_input_ok(&self, args: &[&str], input: &[u8]) -> String {
        match self
            .exec_with_input(args, input)
            .and_then(|o| check_output(&format!("[{}] {}", self.name, args.join(" ")), o))
        {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        }
    }

    /// Set a sysctl (`net.ipv4.ip_forward` style key) inside the namespace;
    /// panics on failure.
    pub fn sysctl(&self, key: &str, value: &str) {
        if let Err(e) = self.try_sysctl(key, value) {
            panic!("[{}] sysctl {key}={value}: {e}", self.name);
        }
    }

    fn sysctl_path(key: &str) -> PathBuf {
        Path::new("/proc/sys").join(key.replace('.', "/"))
    }

    pub fn try_sysctl(&self, key: &str, value: &str) -> io::Result<()> {
        let path = Self::sysctl_path(key);
        let value = value.to_string();
        self.run_in(move || std::fs::write(&path, value.as_bytes()))
            .map_err(|e| io::Error::new(e.kind(), format!("sysctl {key}: {e}")))
    }

    pub fn read_sysctl(&self, key: &str) -> io::Result<String> {
        let path = Self::sysctl_path(key);
        self.run_in(move || std::fs::read_to_string(&path))
            .map(|s| s.trim().to_string())
            .map_err(|e| io::Error::new(e.kind(), format!("sysctl {key}: {e}")))
    }

    /// Run `f` on a fresh thread that has `setns()`ed into this namespace.
    /// Sockets created inside `f` belong to this namespace for their whole
    /// life, whichever thread uses them later.
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = self.path();
        let name = self.name.clone();
        thread::scope(|s| {
            let h = s.spawn(move || {
                let file = File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
                // SAFETY: valid fd; setns only changes this thread's netns.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                if rc != 0 {
                    panic!("setns({name}): {}", io::Error::last_os_error());
                }
                drop(file);
                f()
            });
            match h.join() {
                Ok(v) => v,
                Err(p) => std::panic::resume_unwind(p),
            }
        })
    }

    /// A TCP listener bound to `addr` inside this namespace (e.g. a fake
    /// API server on 127.0.0.1 that a kproxy running in the node namespace
    /// can reach). Convert with `tokio::net::TcpListener::from_std` after
    /// `set_nonblocking(true)` if needed.
    pub fn tcp_listener(&self, addr: SocketAddr) -> io::Result<TcpListener> {
        self.run_in(move || TcpListener::bind(addr))
    }

    // -- processes ----------------------------------------------------------

    /// Spawn `cmd` (usually from [`command`](Self::command)) and register
    /// it: it is killed (by PID) when the namespace drops. Returns the PID.
    pub fn spawn(&self, mut cmd: Command) -> io::Result<u32> {
        let child = cmd.spawn()?;
        let pid = child.id();
        lock(&self.children).push(child);
        Ok(pid)
    }

    /// Register a process started elsewhere; it is SIGKILLed on Drop.
    pub fn register_pid(&self, pid: u32) {
        lock(&self.pids).push(pid);
    }

    /// SIGTERM a registered process, wait up to `grace`, then SIGKILL.
    /// Returns its exit status when it was spawned via [`spawn`](Self::spawn).
    pub fn terminate(&self, pid: u32, grace: Duration) -> Option<ExitStatus> {
        let child = {
            let mut ch = lock(&self.children);
            ch.iter().position(|c| c.id() == pid).map(|i| ch.swap_remove(i))
        };
        if let Some(mut c) = child {
            // SAFETY: plain kill(2) on a child we own and have not reaped.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + grace;
            loop {
                if let Ok(Some(st)) = c.try_wait() {
                    return Some(st);
                }
                if Instant::now() >= deadline {
                    let _ = c.kill();
                    return wait_bounded(&mut c, Duration::from_secs(10));
                }
                thread::sleep(Duration::from_millis(10));
            }
        }
        let mut pids = lock(&self.pids);
        if let Some(i) = pids.iter().position(|p| *p == pid) {
            pids.swap_remove(i);
            // SAFETY: kill(2) on a PID registered with us.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + grace;
            while pid_alive(pid) && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(10));
            }
            // SAFETY: as above.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        None
    }

    /// SIGKILL a registered process now.
    pub fn kill(&self, pid: u32) -> Option<ExitStatus> {
        self.terminate(pid, Duration::ZERO)
    }

    // -- servers ------------------------------------------------------------

    /// Start a TCP server on `[::]:port` (dual-stack; port 0 = ephemeral) in
    /// a thread. Each connection gets `"<label> <peer_ip>:<peer_port>\n"` and
    /// is closed. Stops when the namespace drops. Returns the bound port.
    pub fn serve_tcp(&self, port: u16) -> io::Result<u16> {
        self.serve_tcp_as(port, &self.label)
    }

    /// [`serve_tcp`](Self::serve_tcp), answering with `label` instead of
    /// the namespace's label (e.g. [`UNHANDLED`]).
    pub fn serve_tcp_as(&self, port: u16, label: &str) -> io::Result<u16> {
        let listener = self.run_in(|| {
            TcpListener::bind((Ipv6Addr::UNSPECIFIED, port))
                .or_else(|_| TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))
        })?;
        listener.set_nonblocking(true)?;
        let bound = listener.local_addr()?.port();
        let label = label.to_string();
        self.spawn_server(Proto::Tcp, bound, move |stop| tcp_server_loop(listener, label, stop))?;
        Ok(bound)
    }

    /// Start a UDP echo-ish server on `[::]:port`: every datagram gets the
    /// reply line. Returns the bound port.
    pub fn serve_udp(&self, port: u16) -> io::Result<u16> {
        self.serve_udp_as(port, &self.label)
    }

    /// [`serve_udp`](Self::serve_udp), answering with `label`.
    pub fn serve_udp_as(&self, port: u16, label: &str) -> io::Result<u16> {
        let sock = self.run_in(|| {
            UdpSocket::bind((Ipv6Addr::UNSPECIFIED, port)).or_else(|_| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)))
        })?;
        sock.set_nonblocking(true)?;
        let bound = sock.local_addr()?.port();
        let label = label.to_string();
        self.spawn_server(Proto::Udp, bound, move |stop| udp_server_loop(sock, label, stop))?;
        Ok(bound)
    }

    fn spawn_server(
        &self,
        proto: Proto,
        port: u16,
        body: impl FnOnce(Arc<AtomicBool>) + Send + 'static,
    ) -> io::Result<()> {
        let stop = Arc::new(AtomicBool::new(false));
        let live = self.live_servers.clone();
        live.fetch_add(1, Ordering::SeqCst);
        let guard = LiveGuard(live);
        let stop2 = stop.clone();
        let handle = thread::Builder::new()
            .name(format!("srv-{}-{port}", self.label))
            .spawn(move || {
                let _guard = guard;
                body(stop2)
            })?;
        lock(&self.servers).push(Server {
            proto,
            port,
            stop,
            handle: Some(handle),
        });
        Ok(())
    }

    /// Stop (and join) the server on `proto`/`port`. Returns whether one ran.
    pub fn stop_server(&self, proto: Proto, port: u16) -> bool {
        let found = {
            let mut sv = lock(&self.servers);
            sv.iter()
                .position(|s| s.proto == proto && s.port == port)
                .map(|i| sv.swap_remove(i))
        };
        match found {
            Some(mut s) => {
                s.stop_and_join();
                true
            }
            None => false,
        }
    }

    /// Stop and join every server of this namespace.
    pub fn stop_servers(&self) {
        let servers: Vec<Server> = std::mem::take(&mut *lock(&self.servers));
        for s in &servers {
            s.stop.store(true, Ordering::SeqCst);
        }
        for mut s in servers {
            s.stop_and_join();
        }
    }

    /// Counter of this namespace's server threads still running.
    pub fn live_server_counter(&self) -> Arc<AtomicUsize> {
        self.live_servers.clone()
    }

    // -- clients ------------------------------------------------------------

    /// Connect to `addr` over TCP from this namespace and read the reply line.
    pub fn tcp_request(&self, addr: SocketAddr, timeout: Duration) -> Result<Reply, ConnError> {
        self.run_in(move || tcp_request_here(addr, timeout))
    }

    /// Send one UDP datagram to `addr` from a fresh (random-port) connected
    /// socket and wait for the reply. ICMP unreachable → `Refused`.
    pub fn udp_request(&self, addr: SocketAddr, timeout: Duration) -> Result<Reply, ConnError> {
        self.run_in(move || udp_request_here(addr, timeout))
    }

    pub fn request(&self, proto: Proto, addr: SocketAddr, timeout: Duration) -> Result<Reply, ConnError> {
        self.run_in(move || request_here(proto, addr, timeout))
    }

    /// A persistent dual-stack UDP socket bound to `local_port` (0 =
    /// ephemeral, fixed afterwards) in this namespace.
    pub fn udp_flow(&self, local_port: u16) -> io::Result<UdpFlow> {
        let (sock, dual_stack) = self.run_in(|| -> io::Result<(UdpSocket, bool)> {
            let bind = |port: u16| match UdpSocket::bind((Ipv6Addr::UNSPECIFIED, port)) {
                Ok(s) => Ok((s, true)),
                Err(_) => UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).map(|s| (s, false)),
            };
            if local_port != 0 {
                return bind(local_port);
            }
            // An ephemeral port is not locked by bind(0) and would be lost
            // on disconnect: pick one, then bind it explicitly.
            let mut last = io::Error::other("no free UDP port");
            for _ in 0..16 {
                let port = bind(0)?.0.local_addr()?.port();
                match bind(port) {
                    Ok(r) => return Ok(r),
                    Err(e) => last = e,
                }
            }
            Err(last)
        })?;
        let local_port = sock.local_addr()?.port();
        Ok(UdpFlow {
            sock,
            local_port,
            dual_stack,
        })
    }

    /// Make `n` requests (each a new connection / new source port, each
    /// bounded by `timeout`) and count who answered. Failures are counted
    /// under `!refused`, `!timeout`, `!error`.
    pub fn tally(&self, proto: Proto, addr: SocketAddr, n: usize, timeout: Duration) -> BTreeMap<String, usize> {
        self.run_in(move || {
            let mut m = BTreeMap::new();
            for _ in 0..n {
                *m.entry(tally_key(&request_here(proto, addr, timeout))).or_insert(0) += 1;
            }
            m
        })
    }

    pub fn tally_tcp(&self, addr: SocketAddr, n: usize, timeout: Duration) -> BTreeMap<String, usize> {
        self.tally(Proto::Tcp, addr, n, timeout)
    }

    pub fn tally_udp(&self, addr: SocketAddr, n: usize, timeout: Duration) -> BTreeMap<String, usize> {
        self.tally(Proto::Udp, addr, n, timeout)
    }

    /// Retry requests (each bounded by `min(per_try, remaining)`, 50ms apart)
    /// until `pred` accepts a result or `total` elapses; returns the last
    /// result. For waiting until kproxy has programmed a rule.
    pub fn wait_for(
        &self,
        proto: Proto,
        addr: SocketAddr,
        total: Duration,
        per_try: Duration,
        mut pred: impl FnMut(&Result<Reply, ConnError>) -> bool + Send,
    ) -> Result<Reply, ConnError> {
        self.run_in(move || {
            let deadline = Instant::now() + total;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let r = request_here(proto, addr, per_try.min(left));
                if pred(&r) || Instant::now() + Duration::from_millis(50) >= deadline {
                    return r;
                }
                thread::sleep(Duration::from_millis(50));
            }
        })
    }

    /// [`wait_for`](Self::wait_for) until any successful reply.
    pub fn wait_reply(&self, proto: Proto, addr: SocketAddr, total: Duration) -> Result<Reply, ConnError> {
        self.wait_for(proto, addr, total, Duration::from_secs(1), |r| r.is_ok())
    }
}

fn wait_bounded(c: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        match c.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
            _ => return None,
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        self.stop_servers();
        let children: Vec<Child> = std::mem::take(&mut *lock(&self.children));
        for mut c in children {
            let _ = c.kill();
            let _ = wait_bounded(&mut c, Duration::from_secs(10));
        }
        for pid in std::mem::take(&mut *lock(&self.pids)) {
            // SAFETY: kill(2) on a PID registered with this namespace.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        if let Ok(out) = run_with_timeout(
            base_cmd("ip").args(["netns", "pids", &self.name]),
            None,
            Duration::from_secs(10),
        ) {
            let pids = String::from_utf8_lossy(&out.stdout);
            if !pids.trim().is_empty() {
                eprintln!(
                    "netns: warning: unregistered processes still in {}: {}",
                    self.name,
                    pids.split_whitespace().collect::<Vec<_>>().join(" ")
                );
            }
        }
        if let Err(e) = ip_root_netns(&["del", &self.name]) {
            eprintln!("netns: failed to delete {}: {e}", self.name);
        }
    }
}

// ---------------------------------------------------------------------------
// Topology
// ---------------------------------------------------------------------------

/// Builder for [`Topology`]. Defaults: 2 pods, IPv4 only, one node.
#[derive(Clone, Debug)]
pub struct TopologyBuilder {
    pods: usize,
    ipv6: bool,
    second_node: bool,
    unhandled_responder: bool,
}

impl Default for TopologyBuilder {
    fn default() -> Self {
        TopologyBuilder {
            pods: 2,
            ipv6: false,
            second_node: false,
            unhandled_responder: false,
        }
    }
}

impl TopologyBuilder {
    /// Number of pods on the node (max 200).
    pub fn pods(mut self, n: usize) -> Self {
        self.pods = n;
        self
    }

    /// Also configure IPv6 (fd00:1::/64 pods, fd00:2::/64 external).
    pub fn ipv6(mut self, on: bool) -> Self {
        self.ipv6 = on;
        self
    }

    /// Add `node2` (198.18.2.3 / fd00:2::3) on the client's segment, with
    /// routes to the pod network via node (198.18.2.1) and to the VIP range
    /// via its eth1. It has no pods of its own.
    pub fn second_node(mut self, on: bool) -> Self {
        self.second_node = on;
        self
    }

    /// Route the node's VIP ranges to the `nowhere` namespace instead of
    /// the silent sink: every TCP connection and UDP datagram that reaches
    /// it (any VIP, any port) is answered with the label [`UNHANDLED`].
    /// Traffic no rule on the node handled then *answers*, so it cannot be
    /// mistaken for a DROP (no answer) or a REJECT (refused). Needs `nft`
    /// (the redirect lives in the `nowhere` namespace only). See
    /// [`nowhere_routes`].
    pub fn unhandled_responder(mut self, on: bool) -> Self {
        self.unhandled_responder = on;
        self
    }

    /// Build; panics with the failing step on error.
    pub fn build(self) -> Topology {
        match self.try_build() {
            Ok(t) => t,
            Err(e) => panic!("building netns topology: {e}"),
        }
    }

    /// Build; on error every namespace created so far is deleted.
    pub fn try_build(self) -> io::Result<Topology> {
        if self.pods > 200 {
            return Err(io::Error::other("at most 200 pods"));
        }
        let v6 = self.ipv6;
        let node = Netns::new("node")?;
        let client = Netns::new("client")?;
        let node2 = match self.second_node {
            true => Some(Netns::new("node2")?),
            false => None,
        };
        let mut pods = Vec::with_capacity(self.pods);
        for i in 0..self.pods {
            pods.push(Netns::new(&format!("pod{i}"))?);
        }
        let nowhere = match self.unhandled_responder {
            true => Some(Netns::new("nowhere")?),
            false => None,
        };

        if v6 {
            // No DAD: addresses are usable immediately. Set before any link
            // exists so `default` covers every interface created later
            // (a veth peer created "into" a namespace takes that
            // namespace's defaults).
            let all = [&node, &client]
                .into_iter()
                .chain(node2.as_ref())
                .chain(nowhere.as_ref())
                .chain(pods.iter());
            for ns in all {
                ns.try_sysctl("net.ipv6.conf.all.accept_dad", "0")?;
                ns.try_sysctl("net.ipv6.conf.default.accept_dad", "0")?;
            }
        }
        const BRIDGE: &str = "type bridge forward_delay 0 stp_state 0 mcast_snooping 0";

        // --- node: bridge for the pods ---
        node.ipc(&format!("link add br0 {BRIDGE}"))?;
        node.ipc("addr add 198.18.1.1/24 dev br0")?;
        if v6 {
            node.ipc("-6 addr add fd00:1::1/64 dev br0 nodad")?;
        }
        node.ipc("link set br0 up")?;

        // --- pods ---
        for (i, pod) in pods.iter().enumerate() {
            // Created from inside the pod; the peer goes straight into the
            // node namespace (nothing ever appears in the root namespace).
            pod.ipc(&format!(
                "link add eth0 type veth peer name veth{i} netns {}",
                node.name()
            ))?;
            node.ipc(&format!("link set veth{i} master br0"))?;
            node.ipc(&format!("link set dev veth{i} type bridge_slave hairpin on"))?;
            node.ipc(&format!("link set veth{i} up"))?;
            pod.ipc(&format!("addr add {}/24 dev eth0", pod_ip_v4(i)))?;
            if v6 {
                pod.ipc(&format!("-6 addr add {}/64 dev eth0 nodad", pod_ip_v6(i)))?;
            }
            pod.ipc("link set eth0 up")?;
            pod.ipc("route add default via 198.18.1.1 dev eth0")?;
            if v6 {
                pod.ipc("-6 route add default via fd00:1::1 dev eth0")?;
            }
        }

        // --- external segment: a bridge inside the client namespace ---
        client.ipc(&format!("link add br0 {BRIDGE}"))?;
        client.ipc("addr add 198.18.2.2/24 dev br0")?;
        if v6 {
            client.ipc("-6 addr add fd00:2::2/64 dev br0 nodad")?;
        }
        client.ipc("link set br0 up")?;

        // A node's eth1, plugged into the client's bridge.
        let uplink = |n: &Netns, port: &str, ip4: &str, ip6: &str| -> io::Result<()> {
            n.ipc(&format!(
                "link add eth1 type veth peer name {port} netns {}",
                client.name()
            ))?;
            client.ipc(&format!("link set {port} master br0"))?;
            client.ipc(&format!("link set {port} up"))?;
            n.ipc(&format!("addr add {ip4} dev eth1"))?;
            if v6 {
                n.ipc(&format!("-6 addr add {ip6} dev eth1 nodad"))?;
            }
            n.ipc("link set eth1 up")?;
            Ok(())
        };
        uplink(&node, "vn1", "198.18.2.1/24", "fd00:2::1/64")?;
        client.ipc("route add default via 198.18.2.1")?;
        if v6 {
            client.ipc("-6 route add default via fd00:2::1")?;
        }

        // --- node: forwarding, br_netfilter, VIP route ---
        let router_sysctls = |n: &Netns| -> io::Result<()> {
            n.try_sysctl("net.ipv4.ip_forward", "1")?;
            n.try_sysctl("net.bridge.bridge-nf-call-iptables", "1")?;
            n.try_sysctl("net.bridge.bridge-nf-call-ip6tables", "1")?;
            if v6 {
                n.try_sysctl("net.ipv6.conf.all.forwarding", "1")?;
            }
            Ok(())
        };
        router_sysctls(&node)?;
        match &nowhere {
            Some(nw) => nowhere_routes(&node, nw, v6)?,
            None => vip_routes(&node, "198.18.1.1", "fd00:1::1", v6)?,
        }

        if let Some(n2) = &node2 {
            uplink(n2, "vn2", "198.18.2.3/24", "fd00:2::3/64")?;
            router_sysctls(n2)?;
            n2.ipc(&format!("route add {POD_CIDR4} via 198.18.2.1"))?;
            if v6 {
                n2.ipc(&format!("-6 route add {POD_CIDR6} via fd00:2::1"))?;
            }
            vip_routes(n2, "198.18.2.3", "fd00:2::3", v6)?;
        }

        Ok(Topology {
            pods,
            client,
            node2,
            nowhere,
            node,
            ipv6: v6,
        })
    }
}

/// Route the VIP ranges to a sink device `vip0` (source = `src4`/`src6`).
///
/// Locally generated traffic to a VIP needs *some* route, otherwise
/// connect() fails with ENETUNREACH before netfilter sees a packet. With this
/// route the packet is created (source `src4`), traverses nat OUTPUT where a
/// DNAT rewrites it to an endpoint, and `ip_route_me_harder` re-routes it out
/// of br0. Forwarded traffic (client/pods -> VIP) is DNATed in PREROUTING
/// before the routing decision, so the route does not matter for it.
/// Without any DNAT the packet goes to the sink device and silently
/// vanishes: an unprogrammed VIP is a clean `Timeout`. (A `dev br0` route
/// would instead ARP for the VIP and turn into EHOSTUNREACH after ~3s; a
/// blackhole route makes connect() fail with EINVAL before nat OUTPUT.)
fn vip_routes(n: &Netns, src4: &str, src6: &str, v6: bool) -> io::Result<()> {
    // A veth whose peer stays down works like a dummy device (this kernel
    // may lack the dummy driver): NOARP means no neighbour resolution, and
    // everything sent to it is dropped without an error.
    n.ipc("link add vip0 type veth peer name vip0sink")?;
    n.ipc("link set vip0 arp off")?;
    n.ipc("link set vip0 up")?;
    n.ipc(&format!("route add {VIP_CIDR4} dev vip0 src {src4}"))?;
    if v6 {
        n.ipc(&format!("-6 route add {VIP_CIDR6} dev vip0 src {src6}"))?;
    }
    Ok(())
}

/// Address plan of the node ↔ `nowhere` link (node side `vip0`).
const NOWHERE_NODE4: &str = "198.18.254.1";
const NOWHERE_PEER4: &str = "198.18.254.2";
const NOWHERE_NODE6: &str = "fd00:254::1";
const NOWHERE_PEER6: &str = "fd00:254::2";

/// Route the node's VIP ranges to the `nowhere` namespace, where every TCP
/// and UDP packet is answered with [`UNHANDLED`].
///
/// The node's `vip0` is a veth to `nowhere` (198.18.254.1/30 ↔ .2,
/// fd00:254::1/64 ↔ ::2); the VIP ranges are routed via `nowhere` with the
/// node's pod-network address as source (as [`vip_routes`] does, so
/// node-originated traffic that a rule DNATs still comes from 198.18.1.1).
/// `nowhere` holds the VIP ranges as local addresses (`route add local`),
/// runs TCP and UDP reply servers on [`NOWHERE_PORT`], and redirects every
/// TCP/UDP destination port to it (an nft table inside `nowhere`; the
/// node's own rules are untouched). Replies go back through the node, so
/// pods, the node and the client get an answer for any VIP they send to,
/// in both families, unless a rule on the node handled the packet first.
fn nowhere_routes(node: &Netns, nowhere: &Netns, v6: bool) -> io::Result<()> {
    if find_tool("nft").is_none() {
        return Err(io::Error::other("the unhandled responder needs `nft` on PATH"));
    }
    node.ipc(&format!(
        "link add vip0 type veth peer name eth0 netns {}",
        nowhere.name()
    ))?;
    node.ipc(&format!("addr add {NOWHERE_NODE4}/30 dev vip0"))?;
    nowhere.ipc(&format!("addr add {NOWHERE_PEER4}/30 dev eth0"))?;
    if v6 {
        node.ipc(&format!("-6 addr add {NOWHERE_NODE6}/64 dev vip0 nodad"))?;
        nowhere.ipc(&format!("-6 addr add {NOWHERE_PEER6}/64 dev eth0 nodad"))?;
    }
    node.ipc("link set vip0 up")?;
    nowhere.ipc("link set eth0 up")?;
    nowhere.ipc(&format!("route add local {VIP_CIDR4} dev lo"))?;
    nowhere.ipc(&format!("route add default via {NOWHERE_NODE4}"))?;
    node.ipc(&format!(
        "route add {VIP_CIDR4} via {NOWHERE_PEER4} dev vip0 src 198.18.1.1"
    ))?;
    if v6 {
        nowhere.ipc(&format!("-6 route add local {VIP_CIDR6} dev lo"))?;
        nowhere.ipc(&format!("-6 route add default via {NOWHERE_NODE6}"))?;
        node.ipc(&format!(
            "-6 route add {VIP_CIDR6} via {NOWHERE_PEER6} dev vip0 src fd00:1::1"
        ))?;
    }
    let redirect = format!(
        "table inet nowhere {{ chain prerouting {{ type nat hook prerouting priority -100; policy accept; \
         meta l4proto {{ tcp, udp }} redirect to :{NOWHERE_PORT} ; }} ; }}\n"
    );
    let out = nowhere.exec_with_input(&["nft", "-f", "-"], redirect.as_bytes())?;
    check_output(&format!("[{}] nft -f - (unhandled responder)", nowhere.name()), out)?;
    nowhere.serve_tcp_as(NOWHERE_PORT, UNHANDLED)?;
    nowhere.serve_udp_as(NOWHERE_PORT, UNHANDLED)?;
    Ok(())
}

fn pod_ip_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 1, (10 + i) as u8)
}

fn pod_ip_v6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, (10 + i) as u16)
}

/// Node + pods + outside client (+ optional node2). Everything is torn down
/// on Drop (servers stopped, processes killed, namespaces deleted).
#[derive(Debug)]
pub struct Topology {
    // Field order = drop order: pods first, node last.
    pods: Vec<Netns>,
    client: Netns,
    node2: Option<Netns>,
    nowhere: Option<Netns>,
    node: Netns,
    ipv6: bool,
}

impl Topology {
    pub fn builder() -> TopologyBuilder {
        TopologyBuilder::default()
    }

    pub fn node(&self) -> &Netns {
        &self.node
    }

    /// Panics unless built with `.second_node(true)`.
    pub fn node2(&self) -> &Netns {
        match &self.node2 {
            Some(n) => n,
            None => panic!("topology was built without .second_node(true)"),
        }
    }

    pub fn has_node2(&self) -> bool {
        self.node2.is_some()
    }

    /// The namespace answering unhandled VIP traffic; panics unless built
    /// with `.unhandled_responder(true)`.
    pub fn nowhere(&self) -> &Netns {
        match &self.nowhere {
            Some(n) => n,
            None => panic!("topology was built without .unhandled_responder(true)"),
        }
    }

    pub fn has_unhandled_responder(&self) -> bool {
        self.nowhere.is_some()
    }

    pub fn client(&self) -> &Netns {
        &self.client
    }

    pub fn pod(&self, i: usize) -> &Netns {
        &self.pods[i]
    }

    pub fn pods(&self) -> &[Netns] {
        &self.pods
    }

    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    /// Every namespace of the topology (node, client, node2, nowhere, pods).
    pub fn namespaces(&self) -> Vec<&Netns> {
        [&self.node, &self.client]
            .into_iter()
            .chain(self.node2.as_ref())
            .chain(self.nowhere.as_ref())
            .chain(self.pods.iter())
            .collect()
    }

    pub fn ipv6_enabled(&self) -> bool {
        self.ipv6
    }

    fn need_v6(&self) {
        assert!(self.ipv6, "topology was built without .ipv6(true)");
    }

    /// Node's bridge (pod-network gateway) address: 198.18.1.1.
    pub fn node_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 1, 1)
    }

    /// Node's external address (eth1): 198.18.2.1.
    pub fn node_ext_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 2, 1)
    }

    /// 198.18.1.(10+i).
    pub fn pod_ip(&self, i: usize) -> Ipv4Addr {
        assert!(i < self.pods.len(), "no pod {i}");
        pod_ip_v4(i)
    }

    pub fn client_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 2, 2)
    }

    /// node2's eth1 address: 198.18.2.3.
    pub fn node2_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 2, 3)
    }

    pub fn node_ip6(&self) -> Ipv6Addr {
        self.need_v6();
        Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 1)
    }

    pub fn node_ext_ip6(&self) -> Ipv6Addr {
        self.need_v6();
        Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 1)
    }

    /// fd00:1::(10+i) (numerically; pod0 = fd00:1::a).
    pub fn pod_ip6(&self, i: usize) -> Ipv6Addr {
        self.need_v6();
        assert!(i < self.pods.len(), "no pod {i}");
        pod_ip_v6(i)
    }

    pub fn client_ip6(&self) -> Ipv6Addr {
        self.need_v6();
        Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 2)
    }

    pub fn node2_ip6(&self) -> Ipv6Addr {
        self.need_v6();
        Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, 3)
    }

    /// Start a TCP server on `port_tcp` and a UDP server on `port_udp` in
    /// every pod (dual-stack). Panics on failure.
    pub fn start_servers(&self, port_tcp: u16, port_udp: u16) {
        for p in &self.pods {
            if let Err(e) = p.serve_tcp(port_tcp) {
                panic!("[{}] serve_tcp({port_tcp}): {e}", p.name());
            }
            if let Err(e) = p.serve_udp(port_udp) {
                panic!("[{}] serve_udp({port_udp}): {e}", p.name());
            }
        }
    }

    /// Sum of live server threads over all namespaces (counters stay valid
    /// after the topology is dropped).
    pub fn live_server_counters(&self) -> Vec<Arc<AtomicUsize>> {
        self.namespaces().into_iter().map(|n| n.live_server_counter()).collect()
    }
}
