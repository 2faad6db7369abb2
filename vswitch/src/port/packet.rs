//! The uplink: an AF_PACKET socket on a NIC dedicated to pod traffic, with PACKET_VNET_HDR so
//! GSO frames cross it whole, like the TAPs. Each worker has its own socket in one fanout group
//! (the kernel spreads flows over them by hash, as a multi-queue TAP does); the control plane has
//! a send-only socket for ARP and for packets that waited for ARP.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{setsockopt, sockopt};

use super::{byte_count, PortQueue};

/// Every protocol, in the 16 bits a packet socket's protocol field holds.
const ETH_P_ALL: u16 = libc::ETH_P_ALL as u16;
/// Receive buffer of an uplink queue. The default (212 KB) holds two or three 64 KB GSO frames:
/// a worker a moment late (it shares cores with the pods) made the socket drop whole TSO bursts,
/// and TCP across nodes collapsed into retransmissions. 16 MiB is 2 ms at 64 Gbit/s.
const UPLINK_RCVBUF: usize = 16 << 20;

#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
    /// GSO_UDP_L4 frames may be sent whole (see [`super::tap::kernel_takes_udp_gso`]).
    udp_gso: bool,
}

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Sets an integer SOL_PACKET option (nix has none of these).
fn set_packet_option(fd: RawFd, option: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `value` lives across the call and its size is passed.
    check(unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_PACKET,
            option,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
}

impl PacketSocket {
    /// A socket opened elsewhere (handed over by the vswitchd being upgraded, already bound
    /// and in its fanout group).
    pub fn from_fd(fd: OwnedFd) -> PacketSocket {
        PacketSocket { fd, udp_gso: super::tap::kernel_takes_udp_gso() }
    }

    /// A receiving and sending queue on interface `ifindex`, member of fanout group `group`.
    pub fn open_queue(ifindex: u32, group: u16) -> io::Result<PacketSocket> {
        let socket = Self::open(ifindex, ETH_P_ALL)?;
        // Frames we send must not come back to us.
        set_packet_option(socket.fd.as_raw_fd(), libc::PACKET_IGNORE_OUTGOING, 1)?;
        let fanout = group as libc::c_uint | (libc::PACKET_FANOUT_HASH << 16);
        set_packet_option(socket.fd.as_raw_fd(), libc::PACKET_FANOUT, fanout as libc::c_int)?;
        // FORCE passes net.core.rmem_max (vswitchd runs with CAP_NET_ADMIN); the plain option,
        // capped there, is the fallback.
        setsockopt(&socket.fd, sockopt::RcvBufForce, &UPLINK_RCVBUF)
            .or_else(|_| setsockopt(&socket.fd, sockopt::RcvBuf, &UPLINK_RCVBUF))?;
        Ok(socket)
    }

    /// A socket that only sends (protocol 0 receives nothing).
    pub fn open_sender(ifindex: u32) -> io::Result<PacketSocket> {
        Self::open(ifindex, 0)
    }

    fn open(ifindex: u32, protocol: u16) -> io::Result<PacketSocket> {
        // SAFETY: plain socket(2) call.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                protocol.to_be() as libc::c_int,
            )
        };
        check(raw)?;
        // SAFETY: `raw` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        set_packet_option(fd.as_raw_fd(), libc::PACKET_VNET_HDR, 1)?;
        // SAFETY: sockaddr_ll is plain data; zeroed is a valid starting value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as libc::c_ushort;
        addr.sll_protocol = protocol.to_be();
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: `addr` is a valid sockaddr_ll and its size is passed.
        check(unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        })?;
        Ok(PacketSocket { fd, udp_gso: super::tap::kernel_takes_udp_gso() })
    }
}

impl PortQueue for PacketSocket {
    #[inline]
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of its length.
        let n = byte_count(unsafe {
            libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_TRUNC)
        })?;
        if n > buf.len() {
            // MSG_TRUNC returned the frame's real length: never forward a partial frame.
            return Err(super::frame_too_long());
        }
        Ok(n)
    }

    #[inline]
    fn send(&self, buf: &[u8]) -> io::Result<()> {
        // SAFETY: `buf` is valid for reads of its length.
        byte_count(unsafe { libc::send(self.fd.as_raw_fd(), buf.as_ptr().cast(), buf.len(), 0) }).map(drop)
    }

    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.fd.as_raw_fd())
    }

    #[inline]
    fn takes_udp_gso(&self) -> bool {
        self.udp_gso
    }

    /// PACKET_STATISTICS: the kernel counts what it dropped for want of receive buffer, and
    /// resets the count on each read.
    fn take_kernel_drops(&self) -> u64 {
        let mut stats = libc::tpacket_stats { tp_packets: 0, tp_drops: 0 };
        let mut len = size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: `stats` and `len` are valid for writes and `len` holds the size of `stats`.
        let ret = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut stats as *mut libc::tpacket_stats).cast(),
                &mut len,
            )
        };
        if ret < 0 {
            0
        } else {
            u64::from(stats.tp_drops)
        }
    }
}
