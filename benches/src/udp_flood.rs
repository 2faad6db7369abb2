//! A 64-byte UDP generator able to saturate a pod's path: prebuilt Ethernet frames sent with
//! `sendmmsg` on an AF_PACKET socket that bypasses the qdisc, from inside the sending pod's
//! namespace. iperf3's UDP sender goes through the whole socket stack per datagram and tops out
//! far below what the paths forward; this is the same approach as netsniff-ng's trafgen.
//!
//! The frames are what the pod's own stack would send: its MAC and IP, the next hop's MAC as
//! the kernel resolved it (`ip route get` + the neighbour table), valid IPv4 and UDP checksums,
//! and `flows` different source ports so multi-queue ports spread them across queues.
//!
//! Over IPv6 the header is 20 bytes longer than IPv4's and a 64-byte frame cannot hold it with
//! UDP: the frames are then [`FRAME_LEN_V6`], 62 bytes (66 on the wire with the FCS), the
//! smallest IPv6/UDP frame there is (an empty payload).

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;
use std::time::{Duration, Instant};

use etherparse::PacketBuilder;
use serde_json::Value;
use vswitch::wire::MacAddr;

/// Ethernet frame length without the FCS: the 64-byte frame on the wire (IPv4).
pub const FRAME_LEN: usize = 60;
const UDP_PAYLOAD: usize = FRAME_LEN - 14 - 20 - 8;
/// The IPv6 flood's frame without the FCS: Ethernet, IPv6 and UDP headers and no payload, the
/// smallest IPv6/UDP frame (66 bytes on the wire).
pub const FRAME_LEN_V6: usize = 14 + 40 + 8;
/// Frames per `sendmmsg` call.
pub const BURST: usize = 64;

/// Where the flood goes, resolved from the namespace's routing and neighbour tables.
#[derive(Debug, Clone)]
pub struct Target {
    pub dev: String,
    pub ifindex: i32,
    pub src_mac: MacAddr,
    pub dst_mac: MacAddr,
    pub src_ip: IpAddr,
    pub dst_ip: IpAddr,
    pub dst_port: u16,
}

/// The frame length (without the FCS) of a flood to `dst_ip`'s family.
pub fn frame_len(dst_ip: IpAddr) -> usize {
    if dst_ip.is_ipv6() {
        FRAME_LEN_V6
    } else {
        FRAME_LEN
    }
}

fn ip_json(args: &[&str]) -> io::Result<Value> {
    let out = Command::new("ip").arg("-j").args(args).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    serde_json::from_slice(&out.stdout).map_err(io::Error::other)
}

fn parse_mac(text: &str) -> io::Result<MacAddr> {
    text.parse().map_err(|e| io::Error::other(format!("MAC {text:?}: {e}")))
}

/// Makes namespace `netns` (the flood's receiver) drop the flood at its first netfilter hook
/// (raw PREROUTING), after its device counted it: otherwise its stack routes an ICMP
/// port-unreachable for every datagram before the rate limit says no, and that cost swamps what
/// is being measured. `ipv6` picks ip6tables (the IPv6 flood).
pub fn drop_at_receiver(netns: &str, dst_port: u16, ipv6: bool) -> io::Result<()> {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            netns,
            if ipv6 { "ip6tables" } else { "iptables" },
            "-t",
            "raw",
            "-A",
            "PREROUTING",
            "-p",
            "udp",
            "--dport",
            &dst_port.to_string(),
            "-j",
            "DROP",
        ])
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "cannot install the drop rule in {netns}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

impl Target {
    /// Resolves the route to `dst_ip` in the current namespace. The next hop must already be in
    /// the neighbour table (ping it first).
    pub fn resolve(dst_ip: IpAddr, dst_port: u16) -> io::Result<Target> {
        let route = ip_json(&["route", "get", &dst_ip.to_string()])?;
        let route = &route[0];
        let dev = route["dev"].as_str().ok_or_else(|| io::Error::other("route without a device"))?.to_string();
        let src_ip: IpAddr = route["prefsrc"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| io::Error::other("route without a source"))?;
        let next_hop = route["gateway"].as_str().unwrap_or(&dst_ip.to_string()).to_string();
        let neighbours = ip_json(&["neigh", "show", "dev", &dev])?;
        let dst_mac = neighbours
            .as_array()
            .and_then(|n| n.iter().find(|e| e["dst"] == next_hop.as_str()))
            .and_then(|e| e["lladdr"].as_str())
            .ok_or_else(|| {
                io::Error::other(format!("{next_hop} is not in the neighbour table of {dev}: ping it first"))
            })?;
        let link = ip_json(&["link", "show", "dev", &dev])?;
        let src_mac = link[0]["address"].as_str().ok_or_else(|| io::Error::other("device without a MAC"))?;
        let ifindex = link[0]["ifindex"].as_i64().ok_or_else(|| io::Error::other("device without an index"))? as i32;
        Ok(Target {
            dev,
            ifindex,
            src_mac: parse_mac(src_mac)?,
            dst_mac: parse_mac(dst_mac)?,
            src_ip,
            dst_ip,
            dst_port,
        })
    }

    /// One frame per flow, flows differing by UDP source port: [`FRAME_LEN`] bytes over IPv4,
    /// [`FRAME_LEN_V6`] over IPv6 (source and destination must be of one family).
    pub fn frames(&self, flows: u16) -> Vec<Vec<u8>> {
        (0..flows.max(1))
            .map(|flow| {
                let mut frame = Vec::with_capacity(frame_len(self.dst_ip));
                let ethernet = PacketBuilder::ethernet2(self.src_mac.0, self.dst_mac.0);
                match (self.src_ip, self.dst_ip) {
                    (IpAddr::V4(src), IpAddr::V4(dst)) => ethernet
                        .ipv4(src.octets(), dst.octets(), 64)
                        .udp(10_000 + flow, self.dst_port)
                        .write(&mut frame, &[0x5a; UDP_PAYLOAD]),
                    (IpAddr::V6(src), IpAddr::V6(dst)) => ethernet
                        .ipv6(src.octets(), dst.octets(), 64)
                        .udp(10_000 + flow, self.dst_port)
                        .write(&mut frame, &[]),
                    (src, dst) => panic!("a flood from {src} to {dst}: families differ"),
                }
                .expect("a minimal frame always fits");
                assert_eq!(frame.len(), frame_len(self.dst_ip));
                frame
            })
            .collect()
    }
}

/// What a flood sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sent {
    pub packets: u64,
    /// Sends the kernel refused for lack of room (the device queue full), retried.
    pub refused: u64,
    pub seconds: f64,
}

/// An AF_PACKET socket on one device that sends bursts of prebuilt frames with `sendmmsg`,
/// bypassing the qdisc (as trafgen does). The socket belongs to the namespace it was opened in.
#[derive(Debug)]
pub struct RawSender {
    socket: OwnedFd,
}

impl RawSender {
    pub fn open(ifindex: i32) -> io::Result<RawSender> {
        // SAFETY: plain socket(2); the result is checked before it is owned.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor nobody else owns.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        let one: libc::c_int = 1;
        // SAFETY: the option value is a c_int that outlives the call.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&one as *const libc::c_int).cast(),
                size_of::<libc::c_int>() as u32,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_ifindex = ifindex;
        // SAFETY: address is a sockaddr_ll of the size passed.
        let rc = unsafe {
            libc::bind(fd, (&address as *const libc::sockaddr_ll).cast(), size_of::<libc::sockaddr_ll>() as u32)
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(RawSender { socket })
    }

    /// Sends up to [`BURST`] frames of `frames` in one call; returns how many the kernel took
    /// (0 when the device queue was full).
    pub fn send_burst<F: AsRef<[u8]>>(&self, frames: &[F]) -> io::Result<usize> {
        let count = frames.len().min(BURST);
        let mut iovecs: [libc::iovec; BURST] = [libc::iovec { iov_base: std::ptr::null_mut(), iov_len: 0 }; BURST];
        // SAFETY: mmsghdr is plain data; zeroed is a valid value.
        let mut messages: [libc::mmsghdr; BURST] = unsafe { std::mem::zeroed() };
        for i in 0..count {
            let frame = frames[i].as_ref();
            iovecs[i] = libc::iovec { iov_base: frame.as_ptr() as *mut _, iov_len: frame.len() };
            messages[i].msg_hdr.msg_iov = &mut iovecs[i];
            messages[i].msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: the first `count` messages point at iovecs of frames that outlive the call.
        let n = unsafe { libc::sendmmsg(self.socket.as_raw_fd(), messages.as_mut_ptr(), count as u32, 0) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::ENOBUFS) | Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(0),
            _ => Err(e),
        }
    }
}

/// Sends `frames` round-robin out of the target device for `duration`.
pub fn flood(target: &Target, frames: &[Vec<u8>], duration: Duration) -> io::Result<Sent> {
    let sender = RawSender::open(target.ifindex)?;
    // One burst's worth of frames, cycling through the flows.
    let burst: Vec<&[u8]> = (0..BURST).map(|i| frames[i % frames.len()].as_slice()).collect();
    let (mut packets, mut refused) = (0u64, 0u64);
    let start = Instant::now();
    while start.elapsed() < duration {
        match sender.send_burst(&burst)? {
            0 => refused += 1,
            n => packets += n as u64,
        }
    }
    Ok(Sent { packets, refused, seconds: start.elapsed().as_secs_f64() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};
    use std::net::Ipv4Addr;

    #[test]
    fn frames_are_valid_64_byte_udp_with_distinct_flows() {
        let target = Target {
            dev: "eth0".into(),
            ifindex: 2,
            src_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            dst_mac: MacAddr([2, 0, 0, 0, 0, 2]),
            src_ip: Ipv4Addr::new(10, 0, 0, 1).into(),
            dst_ip: Ipv4Addr::new(10, 0, 0, 2).into(),
            dst_port: 9,
        };
        let frames = target.frames(4);
        assert_eq!(frames.len(), 4);
        let mut ports = Vec::new();
        for frame in &frames {
            assert_eq!(frame.len(), FRAME_LEN);
            let packet = SlicedPacket::from_ethernet(frame).expect("parses");
            let Some(NetSlice::Ipv4(ip)) = packet.net else { panic!("not IPv4") };
            assert_eq!(ip.header().destination_addr(), target.dst_ip);
            let header = ip.header().to_header();
            assert_eq!(header.header_checksum, header.calc_header_checksum());
            let Some(TransportSlice::Udp(udp)) = packet.transport else { panic!("not UDP") };
            assert_eq!(udp.destination_port(), 9);
            assert_eq!(udp.checksum(), udp.to_header().calc_checksum_ipv4(&header, udp.payload()).unwrap());
            ports.push(udp.source_port());
        }
        ports.dedup();
        assert_eq!(ports.len(), 4, "one source port per flow");
    }

    #[test]
    fn ipv6_frames_are_the_smallest_valid_ipv6_udp_with_distinct_flows() {
        let target = Target {
            dev: "eth0".into(),
            ifindex: 2,
            src_mac: MacAddr([2, 0, 0, 0, 0, 1]),
            dst_mac: MacAddr([2, 0, 0, 0, 0, 2]),
            src_ip: "fd00:77::2".parse().unwrap(),
            dst_ip: "fd00:77::3".parse().unwrap(),
            dst_port: 9,
        };
        let frames = target.frames(4);
        let mut ports = Vec::new();
        for frame in &frames {
            assert_eq!(frame.len(), FRAME_LEN_V6);
            let packet = SlicedPacket::from_ethernet(frame).expect("parses");
            let Some(NetSlice::Ipv6(ip)) = packet.net else { panic!("not IPv6") };
            let header = ip.header().to_header();
            assert_eq!(IpAddr::from(header.destination), target.dst_ip);
            assert_eq!(header.payload_length, 8);
            let Some(TransportSlice::Udp(udp)) = packet.transport else { panic!("not UDP") };
            assert_eq!(udp.destination_port(), 9);
            assert_eq!(udp.checksum(), udp.to_header().calc_checksum_ipv6(&header, udp.payload()).unwrap());
            ports.push(udp.source_port());
        }
        ports.dedup();
        assert_eq!(ports.len(), 4, "one source port per flow");
    }
}
