//! UDP sockets that know which interface and local address each datagram used.
//!
//! DHCP and TFTP servers on multi-homed hosts must answer *through the interface the request came
//! in on* and *from the address it was sent to*; the default route is wrong for both. Linux tells
//! us both per datagram with `IP_PKTINFO` / `IPV6_RECVPKTINFO`, and lets us choose them per send
//! with the same control message. [`PktSocket`] wraps a tokio `UdpSocket` with that.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Where a datagram arrived: the local address it was sent to and the interface index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PktInfo {
    /// Destination address of the datagram (may be a broadcast address).
    pub dst: IpAddr,
    /// The local address the kernel would use as source on that interface (`ipi_spec_dst`).
    pub local: IpAddr,
    /// Interface index (0 when unknown).
    pub ifindex: u32,
}

/// Options for [`bind_udp`].
#[derive(Debug, Clone, Default)]
pub struct BindOptions {
    /// `SO_BINDTODEVICE`: only this interface.
    pub device: Option<String>,
    /// `SO_BROADCAST`.
    pub broadcast: bool,
    /// `SO_REUSEADDR`.
    pub reuse_addr: bool,
    /// `SO_RCVBUF` request in bytes (the kernel may cap it).
    pub recv_buffer: Option<usize>,
    /// `SO_SNDBUF` request in bytes.
    pub send_buffer: Option<usize>,
}

/// A UDP socket with per-datagram packet info. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct PktSocket {
    sock: UdpSocket,
    v6: bool,
}

/// Binds a UDP socket with packet info enabled. Must be called inside a tokio runtime.
pub fn bind_udp(addr: SocketAddr, opts: &BindOptions) -> io::Result<PktSocket> {
    let domain = if addr.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if opts.reuse_addr {
        s.set_reuse_address(true)?;
    }
    if opts.broadcast {
        s.set_broadcast(true)?;
    }
    if let Some(dev) = &opts.device {
        s.bind_device(Some(dev.as_bytes())).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot bind to interface {dev}: {e}"))
        })?;
    }
    if let Some(n) = opts.recv_buffer {
        let _ = s.set_recv_buffer_size(n);
    }
    if let Some(n) = opts.send_buffer {
        let _ = s.set_send_buffer_size(n);
    }
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    enable_pktinfo(&s, addr.is_ipv6())?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())
        .map_err(|e| io::Error::new(e.kind(), format!("cannot bind UDP {addr}: {e}")))?;
    let std_sock: std::net::UdpSocket = s.into();
    Ok(PktSocket { sock: UdpSocket::from_std(std_sock)?, v6: addr.is_ipv6() })
}

fn enable_pktinfo(s: &Socket, v6: bool) -> io::Result<()> {
    let one: libc::c_int = 1;
    let (level, name) =
        if v6 { (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO) } else { (libc::IPPROTO_IP, libc::IP_PKTINFO) };
    // SAFETY: valid fd, pointer to a c_int of the stated length.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            &one as *const libc::c_int as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

// Room for one in{6}_pktinfo control message and one SO_RXQ_OVFL count, aligned.
const CMSG_SPACE: usize = 128;

#[repr(C, align(8))]
struct CmsgBuf([u8; CMSG_SPACE]);

impl PktSocket {
    /// The bound address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    /// The underlying tokio socket (for plain `send_to` where the source does not matter).
    pub fn inner(&self) -> &UdpSocket {
        &self.sock
    }

    /// Receives one datagram with its packet info.
    pub async fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, PktInfo)> {
        loop {
            self.sock.readable().await?;
            match self.sock.try_io(Interest::READABLE, || self.recvmsg(buf)) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return r,
            }
        }
    }

    /// Non-blocking receive (for draining a burst after one wake-up).
    pub fn try_recv(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, PktInfo)> {
        self.sock.try_io(Interest::READABLE, || self.recvmsg(buf))
    }

    /// Sends `buf` to `to`, leaving through interface `ifindex` (0 = routing decides) with source
    /// address `src` (`None` = the kernel chooses).
    pub async fn send(&self, buf: &[u8], to: SocketAddr, src: Option<IpAddr>, ifindex: u32) -> io::Result<usize> {
        loop {
            self.sock.writable().await?;
            match self.sock.try_io(Interest::WRITABLE, || self.sendmsg(buf, to, src, ifindex)) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return r,
            }
        }
    }

    fn recvmsg(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, PktInfo)> {
        recvmsg_fd(self.sock.as_raw_fd(), self.v6, buf).map(|(n, from, info, _)| (n, from, info))
    }

    fn sendmsg(&self, buf: &[u8], to: SocketAddr, src: Option<IpAddr>, ifindex: u32) -> io::Result<usize> {
        sendmsg_fd(self.sock.as_raw_fd(), self.v6, buf, to, src, ifindex)
    }

    /// Turns this socket into one that worker threads drive themselves, outside the tokio
    /// runtime: [`SyncPktSocket::wait_readable`] sleeps, [`SyncPktSocket::recv`] never does.
    /// Must be called inside the tokio runtime that registered the socket.
    pub fn into_sync(self) -> io::Result<SyncPktSocket> {
        let sock = self.sock.into_std()?;
        sock.set_nonblocking(true)?;
        let one: libc::c_int = 1;
        // SO_RXQ_OVFL: each datagram carries the socket's count of datagrams the kernel dropped
        // because the receive buffer was full, so overload is counted, not silent.
        // SAFETY: valid fd, pointer to a c_int of the stated length.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RXQ_OVFL,
                &one as *const libc::c_int as *const libc::c_void,
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        let drops_reported = rc == 0;
        Ok(SyncPktSocket { local: sock.local_addr()?, sock, v6: self.v6, drops_reported, drops_seen: std::sync::atomic::AtomicU32::new(0) })
    }
}

/// A non-blocking [`PktSocket`] driven by worker threads: they sleep in
/// [`SyncPktSocket::wait_readable`] (or on a timer) and take what has arrived with
/// [`SyncPktSocket::recv`].
#[derive(Debug)]
pub struct SyncPktSocket {
    sock: std::net::UdpSocket,
    local: SocketAddr,
    v6: bool,
    drops_reported: bool,
    drops_seen: std::sync::atomic::AtomicU32,
}

impl SyncPktSocket {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The socket's file descriptor (for ioctls such as [`set_arp_entry`]).
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.sock.as_raw_fd()
    }

    /// Sleeps until a datagram is waiting (`true`) or `timeout` passed (`false`).
    pub fn wait_readable(&self, timeout: std::time::Duration) -> io::Result<bool> {
        wait_fd(self.sock.as_raw_fd(), libc::POLLIN, timeout)
    }

    /// Takes one waiting datagram (`WouldBlock` when there is none). Also returns how many
    /// datagrams the kernel dropped for a full receive buffer since the previous call on any
    /// thread (0 when the kernel does not report it).
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, PktInfo, u32)> {
        let (n, from, info, drops) = recvmsg_fd(self.sock.as_raw_fd(), self.v6, buf)?;
        let new = match drops {
            Some(total) if self.drops_reported => {
                let prev = self.drops_seen.fetch_max(total, std::sync::atomic::Ordering::Relaxed);
                total.saturating_sub(prev)
            }
            _ => 0,
        };
        Ok((n, from, info, new))
    }

    /// Sends like [`PktSocket::send`], blocking.
    pub fn send(&self, buf: &[u8], to: SocketAddr, src: Option<IpAddr>, ifindex: u32) -> io::Result<usize> {
        let mut waited = false;
        loop {
            match sendmsg_fd(self.sock.as_raw_fd(), self.v6, buf, to, src, ifindex) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // Non-blocking: a full send buffer is waited out once, briefly.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && !waited => {
                    waited = true;
                    wait_fd(self.sock.as_raw_fd(), libc::POLLOUT, std::time::Duration::from_millis(100))?;
                }
                r => return r,
            }
        }
    }
}

/// `poll(2)` on one descriptor: `true` when `events` are ready within `timeout`.
fn wait_fd(fd: std::os::fd::RawFd, events: libc::c_short, timeout: std::time::Duration) -> io::Result<bool> {
    // ppoll: to the microsecond (poll's milliseconds would cut a 1.7 ms wait to 1 ms).
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: timeout.subsec_nanos().into(),
    };
    let mut p = libc::pollfd { fd, events, revents: 0 };
    // SAFETY: one valid pollfd and a valid timespec; no signal mask.
    match unsafe { libc::ppoll(&mut p, 1, &ts, std::ptr::null()) } {
        n if n < 0 => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted { Ok(false) } else { Err(e) }
        }
        0 => Ok(false),
        _ => Ok(true),
    }
}

/// `recvmsg` with packet info (and the `SO_RXQ_OVFL` drop count when enabled).
fn recvmsg_fd(fd: std::os::fd::RawFd, v6: bool, buf: &mut [u8]) -> io::Result<(usize, SocketAddr, PktInfo, Option<u32>)> {
    // SAFETY: all pointers reference live locals sized as told to the kernel; the kernel
    // writes at most msg_namelen / msg_controllen bytes.
    unsafe {
        let mut name: libc::sockaddr_storage = zeroed();
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr() as *mut libc::c_void, iov_len: buf.len() };
        let mut cbuf = CmsgBuf([0; CMSG_SPACE]);
        let mut msg: libc::msghdr = zeroed();
        msg.msg_name = &mut name as *mut _ as *mut libc::c_void;
        msg.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.0.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = CMSG_SPACE as _;
        let n = libc::recvmsg(fd, &mut msg, libc::MSG_TRUNC);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        if msg.msg_flags & libc::MSG_TRUNC != 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("datagram of {n} bytes truncated to the {}-byte buffer", buf.len()),
            ));
        }
        let from = sockaddr_to_std(&name)?;
        let mut info = PktInfo {
            dst: if v6 { IpAddr::V6(Ipv6Addr::UNSPECIFIED) } else { IpAddr::V4(Ipv4Addr::UNSPECIFIED) },
            local: if v6 { IpAddr::V6(Ipv6Addr::UNSPECIFIED) } else { IpAddr::V4(Ipv4Addr::UNSPECIFIED) },
            ifindex: 0,
        };
        let mut drops = None;
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let h = &*c;
            if h.cmsg_level == libc::IPPROTO_IP && h.cmsg_type == libc::IP_PKTINFO {
                let p = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::in_pktinfo);
                info.dst = IpAddr::V4(Ipv4Addr::from(u32::from_be(p.ipi_addr.s_addr)));
                info.local = IpAddr::V4(Ipv4Addr::from(u32::from_be(p.ipi_spec_dst.s_addr)));
                info.ifindex = p.ipi_ifindex as u32;
            } else if h.cmsg_level == libc::IPPROTO_IPV6 && h.cmsg_type == libc::IPV6_PKTINFO {
                let p = std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const libc::in6_pktinfo);
                let a = Ipv6Addr::from(p.ipi6_addr.s6_addr);
                info.dst = IpAddr::V6(a);
                info.local = IpAddr::V6(a);
                info.ifindex = p.ipi6_ifindex;
            } else if h.cmsg_level == libc::SOL_SOCKET && h.cmsg_type == libc::SO_RXQ_OVFL {
                drops = Some(std::ptr::read_unaligned(libc::CMSG_DATA(c) as *const u32));
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
        Ok((n, from, info, drops))
    }
}

/// `sendmsg` from `src` out of interface `ifindex` (see [`PktSocket::send`]).
fn sendmsg_fd(fd: std::os::fd::RawFd, v6: bool, buf: &[u8], to: SocketAddr, src: Option<IpAddr>, ifindex: u32) -> io::Result<usize> {
    // SAFETY: as in recvmsg; the control buffer is sized for one pktinfo message.
    unsafe {
        let (mut name, namelen) = std_to_sockaddr(to);
        let mut iov = libc::iovec { iov_base: buf.as_ptr() as *mut libc::c_void, iov_len: buf.len() };
        let mut cbuf = CmsgBuf([0; CMSG_SPACE]);
        let mut msg: libc::msghdr = zeroed();
        msg.msg_name = &mut name as *mut _ as *mut libc::c_void;
        msg.msg_namelen = namelen;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        let want_info = ifindex != 0 || src.is_some_and(|s| !s.is_unspecified());
        if want_info {
            msg.msg_control = cbuf.0.as_mut_ptr() as *mut libc::c_void;
            if v6 {
                let len = size_of::<libc::in6_pktinfo>() as u32;
                msg.msg_controllen = libc::CMSG_SPACE(len) as _;
                let c = libc::CMSG_FIRSTHDR(&msg);
                (*c).cmsg_level = libc::IPPROTO_IPV6;
                (*c).cmsg_type = libc::IPV6_PKTINFO;
                (*c).cmsg_len = libc::CMSG_LEN(len) as _;
                let mut p: libc::in6_pktinfo = zeroed();
                if let Some(IpAddr::V6(a)) = src {
                    p.ipi6_addr.s6_addr = a.octets();
                }
                p.ipi6_ifindex = ifindex;
                std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut libc::in6_pktinfo, p);
            } else {
                let len = size_of::<libc::in_pktinfo>() as u32;
                msg.msg_controllen = libc::CMSG_SPACE(len) as _;
                let c = libc::CMSG_FIRSTHDR(&msg);
                (*c).cmsg_level = libc::IPPROTO_IP;
                (*c).cmsg_type = libc::IP_PKTINFO;
                (*c).cmsg_len = libc::CMSG_LEN(len) as _;
                let mut p: libc::in_pktinfo = zeroed();
                if let Some(IpAddr::V4(a)) = src {
                    p.ipi_spec_dst.s_addr = u32::from(a).to_be();
                }
                p.ipi_ifindex = ifindex as libc::c_int;
                std::ptr::write_unaligned(libc::CMSG_DATA(c) as *mut libc::in_pktinfo, p);
            }
        }
        let n = libc::sendmsg(fd, &msg, 0);
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }
}

fn sockaddr_to_std(s: &libc::sockaddr_storage) -> io::Result<SocketAddr> {
    // SAFETY: the family field tells which layout the kernel wrote.
    unsafe {
        match s.ss_family as libc::c_int {
            libc::AF_INET => {
                let a = &*(s as *const _ as *const libc::sockaddr_in);
                Ok(SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                    u16::from_be(a.sin_port),
                )))
            }
            libc::AF_INET6 => {
                let a = &*(s as *const _ as *const libc::sockaddr_in6);
                Ok(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(a.sin6_addr.s6_addr),
                    u16::from_be(a.sin6_port),
                    a.sin6_flowinfo,
                    a.sin6_scope_id,
                )))
            }
            f => Err(io::Error::new(io::ErrorKind::InvalidData, format!("unexpected address family {f}"))),
        }
    }
}

fn std_to_sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is large enough for either layout; zeroed is a valid value.
    unsafe {
        let mut s: libc::sockaddr_storage = zeroed();
        match a {
            SocketAddr::V4(v4) => {
                let p = &mut *(&mut s as *mut _ as *mut libc::sockaddr_in);
                p.sin_family = libc::AF_INET as libc::sa_family_t;
                p.sin_port = v4.port().to_be();
                p.sin_addr.s_addr = u32::from(*v4.ip()).to_be();
                (s, size_of::<libc::sockaddr_in>() as libc::socklen_t)
            }
            SocketAddr::V6(v6) => {
                let p = &mut *(&mut s as *mut _ as *mut libc::sockaddr_in6);
                p.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                p.sin6_port = v6.port().to_be();
                p.sin6_addr.s6_addr = v6.ip().octets();
                p.sin6_flowinfo = v6.flowinfo();
                p.sin6_scope_id = v6.scope_id();
                (s, size_of::<libc::sockaddr_in6>() as libc::socklen_t)
            }
        }
    }
}

/// Name of the interface with index `ifindex`, if any.
///
/// Cached for [`IFNAME_TTL`]: glibc answers `if_indextoname` by opening a socket and calling an
/// ioctl, which cost a DHCP server more than its policy call did when done per request.
pub fn ifname(ifindex: u32) -> Option<String> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};
    use std::time::Instant;
    type Names = HashMap<u32, (Option<String>, Instant)>;
    static CACHE: OnceLock<Mutex<Names>> = OnceLock::new();
    if ifindex == 0 {
        return None;
    }
    let cache = CACHE.get_or_init(Mutex::default);
    if let Some((name, at)) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&ifindex) {
        if at.elapsed() < IFNAME_TTL {
            return name.clone();
        }
    }
    let name = ifname_now(ifindex);
    let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
    if c.len() > 4096 {
        c.clear(); // interfaces come and go (taps); never grow without bound
    }
    c.insert(ifindex, (name.clone(), Instant::now()));
    name
}

/// How long [`ifname`] trusts a cached name (an interface renamed meanwhile shows its old name
/// at most this long).
pub const IFNAME_TTL: std::time::Duration = std::time::Duration::from_secs(10);

fn ifname_now(ifindex: u32) -> Option<String> {
    let mut buf = [0u8; libc::IF_NAMESIZE];
    // SAFETY: buf is IF_NAMESIZE bytes as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr() as *mut libc::c_char) };
    if p.is_null() {
        return None;
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// Every IPv4 address of every interface: `(interface name, address, prefix length)`, from
/// `getifaddrs(3)`.
pub fn ipv4_addrs() -> io::Result<Vec<(String, Ipv4Addr, u8)>> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list we free below with freeifaddrs; every pointer
    // read is checked for null and points into that list while it lives.
    unsafe {
        if libc::getifaddrs(&mut head) != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut p = head;
        while !p.is_null() {
            let ifa = &*p;
            p = ifa.ifa_next;
            if ifa.ifa_addr.is_null() || (*ifa.ifa_addr).sa_family as libc::c_int != libc::AF_INET {
                continue;
            }
            let addr = &*(ifa.ifa_addr as *const libc::sockaddr_in);
            let ip = Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
            let prefix = if ifa.ifa_netmask.is_null() {
                32
            } else {
                let m = &*(ifa.ifa_netmask as *const libc::sockaddr_in);
                u32::from_be(m.sin_addr.s_addr).count_ones() as u8
            };
            let name = std::ffi::CStr::from_ptr(ifa.ifa_name).to_string_lossy().into_owned();
            out.push((name, ip, prefix));
        }
        libc::freeifaddrs(head);
    }
    Ok(out)
}

/// Sets a neighbour (ARP) entry `ip → mac` on interface `ifname` (`SIOCSARP`), so that a reply
/// can be unicast to a client that has no address yet and cannot answer ARP (RFC 2131 §4.1).
/// Needs `CAP_NET_ADMIN`. The entry is an ordinary (not permanent) one: it ages out.
pub fn set_arp_entry(fd: std::os::fd::RawFd, ifname: &str, ip: Ipv4Addr, mac: &[u8]) -> io::Result<()> {
    const ATF_COM: libc::c_int = 0x02;
    if mac.len() != 6 || ifname.len() >= libc::IF_NAMESIZE {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not an Ethernet address or interface name"));
    }
    // SAFETY: arpreq is plain data; zeroed is valid. The sockaddr fields are written through
    // their sockaddr_in view, which fits in a sockaddr. The ioctl reads the struct only.
    unsafe {
        let mut req: libc::arpreq = zeroed();
        let pa = &mut req.arp_pa as *mut libc::sockaddr as *mut libc::sockaddr_in;
        (*pa).sin_family = libc::AF_INET as libc::sa_family_t;
        (*pa).sin_addr.s_addr = u32::from(ip).to_be();
        req.arp_ha.sa_family = libc::ARPHRD_ETHER;
        for (i, b) in mac.iter().enumerate() {
            req.arp_ha.sa_data[i] = *b as libc::c_char;
        }
        req.arp_flags = ATF_COM;
        for (i, b) in ifname.bytes().enumerate() {
            req.arp_dev[i] = b as libc::c_char;
        }
        if libc::ioctl(fd, libc::SIOCSARP as _, &req as *const libc::arpreq) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn loopback_pktinfo_round_trip() {
        let a = bind_udp("127.0.0.1:0".parse().unwrap(), &BindOptions::default()).unwrap();
        let b = bind_udp("127.0.0.1:0".parse().unwrap(), &BindOptions::default()).unwrap();
        let to = a.local_addr().unwrap();
        b.send(b"hello", to, Some("127.0.0.1".parse().unwrap()), 0).await.unwrap();
        let mut buf = [0u8; 64];
        let (n, from, info) = a.recv(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(from, b.local_addr().unwrap());
        assert_eq!(info.dst, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert_ne!(info.ifindex, 0);
        assert_eq!(ifname(info.ifindex).as_deref(), Some("lo"));
    }

    #[tokio::test]
    async fn oversized_datagram_is_an_error_not_a_short_read() {
        let a = bind_udp("127.0.0.1:0".parse().unwrap(), &BindOptions::default()).unwrap();
        let b = bind_udp("127.0.0.1:0".parse().unwrap(), &BindOptions::default()).unwrap();
        b.send(&[7u8; 100], a.local_addr().unwrap(), None, 0).await.unwrap();
        let mut buf = [0u8; 10];
        let e = a.recv(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn ipv6_loopback() {
        let Ok(a) = bind_udp("[::1]:0".parse().unwrap(), &BindOptions::default()) else {
            eprintln!("SKIPPED: no IPv6 loopback");
            return;
        };
        let b = bind_udp("[::1]:0".parse().unwrap(), &BindOptions::default()).unwrap();
        b.send(b"v6", a.local_addr().unwrap(), None, 0).await.unwrap();
        let mut buf = [0u8; 16];
        let (n, _, info) = a.recv(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"v6");
        assert_eq!(info.dst, "::1".parse::<IpAddr>().unwrap());
    }
}
