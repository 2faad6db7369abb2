//! UDP throughput with segmentation offload, as QUIC stacks and WireGuard send: one `send` of
//! [`WRITE_BYTES`] on a socket with `UDP_SEGMENT` = [`SEGMENT`] leaves as one 64 KB GSO packet
//! that is cut into 46 datagrams of 1400 bytes as late as the path allows (by the NIC, by the
//! receiver's stack, or by a switch that cannot carry it whole). The receiver enables `UDP_GRO`
//! so that an unsegmented packet reaches it in one piece and it is not the bottleneck.

use std::io;
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use nix::sys::socket::{setsockopt, sockopt};

/// The datagram payload the sender asks the kernel to cut its writes into.
pub const SEGMENT: usize = 1400;
/// 46 segments: the largest whole number of segments under 64 KB of IP payload.
pub const WRITE_BYTES: usize = 46 * SEGMENT;

/// The receive buffer the sink forces: a burst of 64 KB packets must not overflow it.
const RCVBUF: usize = 64 << 20;

fn unspecified(like: IpAddr) -> IpAddr {
    match like {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    }
}

/// What a sender sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sent {
    /// Payload bytes the kernel accepted.
    pub bytes: u64,
    /// Datagrams those bytes make ([`SEGMENT`] bytes each).
    pub datagrams: u64,
    /// Writes refused for lack of room (ENOBUFS, EAGAIN) or by an ICMP error of an earlier
    /// datagram (ECONNREFUSED once the sink has stopped), retried and not counted.
    pub retried: u64,
    pub seconds: f64,
}

/// Sends [`WRITE_BYTES`]-byte writes cut into [`SEGMENT`]-byte datagrams to `address` for
/// `duration`, as fast as the path takes them.
pub fn send(address: SocketAddr, duration: Duration) -> io::Result<Sent> {
    let socket = UdpSocket::bind((unspecified(address.ip()), 0))?;
    socket.connect(address)?;
    setsockopt(&socket, sockopt::UdpGsoSegment, &(SEGMENT as libc::c_int))?;
    let payload = vec![0x5au8; WRITE_BYTES];
    let (mut bytes, mut retried) = (0u64, 0u64);
    let start = Instant::now();
    while start.elapsed() < duration {
        match socket.send(&payload) {
            Ok(n) => bytes += n as u64,
            Err(e) => match e.raw_os_error() {
                Some(libc::ENOBUFS) | Some(libc::EAGAIN) | Some(libc::EINTR) | Some(libc::ECONNREFUSED) => retried += 1,
                _ => return Err(e),
            },
        }
    }
    Ok(Sent { bytes, datagrams: bytes / SEGMENT as u64, retried, seconds: start.elapsed().as_secs_f64() })
}

/// What a sink received in its window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Received {
    pub bytes: u64,
    pub datagrams: u64,
    /// From the first datagram to the end of the window.
    pub seconds: f64,
}

impl Received {
    /// Payload Gbit/s.
    pub fn gbps(&self) -> f64 {
        if self.seconds > 0.0 {
            self.bytes as f64 * 8.0 / self.seconds / 1e9
        } else {
            0.0
        }
    }
}

/// A bound receiving socket with GRO and a large forced receive buffer.
#[derive(Debug)]
pub struct Sink {
    socket: UdpSocket,
}

impl Sink {
    pub fn bind(address: SocketAddr) -> io::Result<Sink> {
        let socket = UdpSocket::bind(address)?;
        setsockopt(&socket, sockopt::UdpGroSegment, &true)?;
        setsockopt(&socket, sockopt::RcvBufForce, &RCVBUF)?;
        Ok(Sink { socket })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Counts what arrives in the `window` after the first datagram (waiting up to `first_wait`
    /// for it; nothing received if none came).
    pub fn count(&self, window: Duration, first_wait: Duration) -> io::Result<Received> {
        let mut buf = vec![0u8; 1 << 17];
        self.socket.set_read_timeout(Some(first_wait))?;
        let Some((n, segments)) = self.recv(&mut buf)? else {
            return Ok(Received { bytes: 0, datagrams: 0, seconds: 0.0 });
        };
        let start = Instant::now();
        let (mut bytes, mut datagrams) = (n as u64, segments);
        // Short timeouts so the window ends on time also when the traffic stops.
        self.socket.set_read_timeout(Some(Duration::from_millis(50)))?;
        while start.elapsed() < window {
            if let Some((n, segments)) = self.recv(&mut buf)? {
                bytes += n as u64;
                datagrams += segments;
            }
        }
        Ok(Received { bytes, datagrams, seconds: start.elapsed().as_secs_f64() })
    }

    /// One receive: payload bytes and the datagrams they hold (several when GRO coalesced them:
    /// the kernel then says their size in a UDP_GRO control message). None on a timeout.
    fn recv(&self, buf: &mut [u8]) -> io::Result<Option<(usize, u64)>> {
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        // Room for one cmsghdr with an int, aligned as cmsghdr wants.
        let mut control = [0u64; 8];
        // SAFETY: msghdr is plain data; zeroed is a valid value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of::<[u64; 8]>() as _;
        // SAFETY: msg points at an iovec over `buf` and at `control`, both live for the call.
        let n = unsafe { libc::recvmsg(self.socket.as_raw_fd(), &mut msg, 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(e),
            };
        }
        let n = n as usize;
        let mut segments = 1;
        // SAFETY: msg was filled in by recvmsg; the CMSG macros stay within msg_controllen.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_UDP && (*cmsg).cmsg_type == libc::UDP_GRO {
                    let size = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const libc::c_int);
                    if size > 0 {
                        segments = n.div_ceil(size as usize) as u64;
                    }
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        Ok(Some((n, segments)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Over loopback, no root needed: what arrives is whole 1400-byte datagrams (GRO or not),
    /// never more than was sent, and a lot of it.
    #[test]
    fn a_sink_counts_segmented_writes_and_never_more_than_was_sent() {
        let sink = Sink::bind((Ipv4Addr::LOCALHOST, 0).into()).expect("bind the sink");
        let address = sink.local_addr().unwrap();
        let sender = std::thread::spawn(move || send(address, Duration::from_millis(700)).expect("send"));
        let received = sink.count(Duration::from_millis(400), Duration::from_secs(5)).expect("count");
        let sent = sender.join().unwrap();
        assert!(sent.bytes > 0 && sent.bytes % SEGMENT as u64 == 0, "{sent:?}");
        assert_eq!(sent.datagrams, sent.bytes / SEGMENT as u64);
        assert!(received.bytes > 0, "{received:?}");
        assert!(received.bytes <= sent.bytes, "received {received:?}, sent {sent:?}");
        assert_eq!(received.bytes, received.datagrams * SEGMENT as u64, "whole datagrams: {received:?}");
        assert!((0.4..1.0).contains(&received.seconds), "{received:?}");
        assert!(received.gbps() > 0.1, "{received:?}");
    }
}
