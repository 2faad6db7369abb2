//! The packet pipeline: what happens to one frame, free of I/O and clocks.
//!
//! Stages, in order: vnet header check, Ethernet classify, then ARP (answered in place) or IPv4
//! input checks (version, header length, total length, checksum), port security (a pod sends
//! only from its own MAC and IP), TTL, FIB lookup to an adjacency, MTU, rewrite (MACs, TTL minus
//! one with an incremental checksum). IPv6 ([`ipv6`]) goes through the same stages, with
//! neighbour discovery ([`ndp`]) in ARP's place. The result is a [`Next`]: transmit on a port, or
//! drop with a [`DropReason`] (possibly sending an ICMP error back, rate-limited). Time comes in
//! as an argument; [`Tracer`] lets `vswitchctl trace` watch every stage without slowing the fast
//! path.

mod drop;
mod icmp_limit;
mod ipv6;
mod ndp;
pub(crate) mod rate_limit;

use std::fmt;
use std::net::IpAddr;

pub use drop::DropReason;
pub use icmp_limit::IcmpLimiter;
pub use rate_limit::{PortRateLimit, RateLimitConfig, TokenBucket};

use crate::state::{FibViews, ForwardingState, NextHop, PortId, PortInfo, PortRole};
use crate::wire::arp::{self, ArpPacket, Operation};
use crate::wire::ethernet::{self, EthernetFrame};
use crate::wire::icmp::{self, IcmpError};
use crate::wire::ipv4::{self, Ipv4Error, Ipv4Packet};
use crate::wire::vnet::{self, VnetHeader};
use crate::wire::{EtherType, MacAddr};

/// The fate of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Send the first `len` bytes of the buffer (vnet header included) out of `port`.
    Tx {
        port: PortId,
        len: usize,
    },
    Drop(DropReason),
    /// The frame is dropped for `reason`, and the buffer now holds an ICMP error of `len` bytes
    /// to send out of `port`.
    Respond {
        reason: DropReason,
        port: PortId,
        len: usize,
    },
    /// Ready for `port` but for the destination MAC: hand it to the control plane, which
    /// resolves `next_hop` (ARP or neighbour discovery) and sends it.
    Resolve {
        port: PortId,
        next_hop: IpAddr,
        len: usize,
    },
    /// An ARP reply or neighbour advertisement on the uplink: the control plane learns from it.
    ToControl {
        len: usize,
    },
}

/// Watches the pipeline stage by stage.
pub trait Tracer {
    fn step(&mut self, stage: &'static str, detail: fmt::Arguments<'_>);
}

/// The fast path's tracer: does nothing, and compiles to nothing.
#[derive(Debug, Default)]
pub struct NoTrace;

impl Tracer for NoTrace {
    #[inline(always)]
    fn step(&mut self, _: &'static str, _: fmt::Arguments<'_>) {}
}

/// Records every stage, for `vswitchctl trace`.
#[derive(Debug, Default)]
pub struct Trace {
    pub steps: Vec<(String, String)>,
}

impl Tracer for Trace {
    fn step(&mut self, stage: &'static str, detail: fmt::Arguments<'_>) {
        self.steps.push((stage.to_string(), detail.to_string()));
    }
}

/// Per-worker pipeline state: the ICMP error budget, and how many errors it held back.
#[derive(Debug)]
pub struct Pipeline {
    icmp: IcmpLimiter,
    icmp_suppressed: u64,
}

/// Largest frame a port reads: a 64 KB GSO frame plus Ethernet and the vnet header.
pub const MAX_FRAME: usize = 65535 + ethernet::HEADER_LEN + vnet::LEN;

const ETH: usize = ethernet::HEADER_LEN;
const L2: usize = vnet::LEN + ETH;

impl Pipeline {
    pub fn new(icmp: IcmpLimiter) -> Pipeline {
        Pipeline { icmp, icmp_suppressed: 0 }
    }

    /// ICMP errors the rate limit held back since the last call. The packets themselves are
    /// dropped under their own reason (`ttl_expired`, `fragmentation_needed`); this is the
    /// `icmp_rate_limited` count of errors not sent.
    pub fn take_icmp_suppressed(&mut self) -> u64 {
        std::mem::take(&mut self.icmp_suppressed)
    }

    /// Decides the fate of `buf[..len]` (vnet header, then the frame) that arrived on `in_port`,
    /// rewriting the buffer in place for whatever is sent. Everything it depends on is an
    /// argument (state, FIB view, time), which is what keeps it testable and fuzzable.
    #[allow(clippy::too_many_arguments)]
    pub fn process<T: Tracer>(
        &mut self,
        state: &ForwardingState,
        fibs: &FibViews<'_>,
        in_port: PortId,
        buf: &mut [u8],
        len: usize,
        now_ns: u64,
        trace: &mut T,
    ) -> Next {
        let Some(port) = state.port(in_port) else {
            return Next::Drop(DropReason::PortDown);
        };
        if len > buf.len() {
            // A port that reported more than it could store (it should have refused the frame).
            return Next::Drop(DropReason::FrameTooLong);
        }
        if len < vnet::LEN {
            return Next::Drop(DropReason::BadVnetHeader);
        }
        let vnet = match VnetHeader::parse(&buf[..vnet::LEN], len - vnet::LEN) {
            Ok(v) => v,
            Err(e) => {
                trace.step("vnet", format_args!("{e}"));
                return Next::Drop(DropReason::BadVnetHeader);
            }
        };
        trace.step("vnet", format_args!("{vnet}"));
        let frame = &mut buf[vnet::LEN..len];
        let Ok(eth) = EthernetFrame::new_checked(&*frame) else {
            return Next::Drop(DropReason::FrameTooShort);
        };
        let (src_mac, dst_mac, ethertype) = (eth.src(), eth.dst(), eth.ethertype());
        trace.step("ethernet", format_args!("{src_mac} > {dst_mac} {ethertype:?} on {} ({})", port.name, in_port));
        if let PortRole::Pod { mac, .. } = port.role {
            if src_mac != mac {
                return Next::Drop(DropReason::SpoofedSourceMac);
            }
        }
        match ethertype {
            EtherType::Arp => self.arp(state, fibs, port, buf, len, trace),
            EtherType::Ipv4 => self.ipv4(state, fibs, port, &vnet, buf, len, now_ns, trace),
            EtherType::Ipv6 => self.ipv6(state, fibs, port, &vnet, buf, len, now_ns, trace),
            EtherType::Vlan => Next::Drop(DropReason::VlanTagged),
            _ => Next::Drop(DropReason::UnsupportedEtherType),
        }
    }

    fn arp<T: Tracer>(
        &mut self,
        state: &ForwardingState,
        fibs: &FibViews<'_>,
        port: &PortInfo,
        buf: &mut [u8],
        len: usize,
        trace: &mut T,
    ) -> Next {
        let Ok(mut arp) = ArpPacket::new_checked(&mut buf[L2..len]) else {
            return Next::Drop(DropReason::ArpMalformed);
        };
        let (op, sender_mac, sender_ip, target_ip) =
            (arp.operation(), arp.sender_mac(), arp.sender_ip(), arp.target_ip());
        trace.step("arp", format_args!("{op:?} who-has {target_ip} tell {sender_ip} ({sender_mac})"));
        let answer = match port.role {
            PortRole::Uplink { .. } if op == Operation::Reply => return Next::ToControl { len },
            // On the VPC subnet the switch speaks for its pods, and only for them.
            PortRole::Uplink { .. } if is_local_pod(state, fibs, IpAddr::V4(target_ip)) => true,
            // Another host announces an address (a gratuitous ARP: sender and target the same):
            // the control plane moves a neighbour it knows to the new MAC at once, e.g. a sticky
            // pod re-created on another node, instead of sending to the old one until the entry
            // is re-confirmed.
            PortRole::Uplink { .. } if sender_ip == target_ip && !sender_ip.is_unspecified() => {
                return Next::ToControl { len }
            }
            PortRole::Uplink { .. } => false,
            PortRole::Pod { ip, mac, .. } => {
                // A probe (sender 0.0.0.0, RFC 5227) is allowed; anything else must be the pod itself.
                if sender_mac != mac || (Some(sender_ip) != ip && !sender_ip.is_unspecified()) {
                    return Next::Drop(DropReason::ArpSpoofed);
                }
                if op == Operation::Reply {
                    return Next::Drop(DropReason::ArpReplyFromPod);
                }
                if Some(target_ip) == ip {
                    return Next::Drop(DropReason::ArpOwnAddress);
                }
                true // proxy-ARP: the gateway answers for everything else
            }
            PortRole::Host { .. } => {
                op == Operation::Request
                    && (target_ip == state.gateway_ip || is_local_pod(state, fibs, IpAddr::V4(target_ip)))
            }
        };
        if !answer {
            return Next::Drop(DropReason::ArpNotOurs);
        }
        let own_mac = state.own_mac(port);
        arp.make_reply(own_mac);
        let mut eth = EthernetFrame::new_checked(&mut buf[vnet::LEN..len]).expect("checked above");
        eth.set_dst(sender_mac);
        eth.set_src(own_mac);
        VnetHeader::default().write(&mut buf[..vnet::LEN]);
        trace.step("arp", format_args!("reply {target_ip} is-at {own_mac}"));
        Next::Tx { port: port.id, len: L2 + arp::PACKET_LEN }
    }

    #[allow(clippy::too_many_arguments)]
    fn ipv4<T: Tracer>(
        &mut self,
        state: &ForwardingState,
        fibs: &FibViews<'_>,
        port: &PortInfo,
        vnet: &VnetHeader,
        buf: &mut [u8],
        len: usize,
        now_ns: u64,
        trace: &mut T,
    ) -> Next {
        let dst_mac = MacAddr(buf[vnet::LEN..vnet::LEN + 6].try_into().expect("6 bytes"));
        if dst_mac != state.own_mac(port) {
            return Next::Drop(DropReason::NotOurMac);
        }
        let ip = match Ipv4Packet::new_checked(&buf[L2..len]) {
            Ok(ip) => ip,
            Err(e) => {
                trace.step("ipv4", format_args!("{e}"));
                return Next::Drop(match e {
                    Ipv4Error::Truncated => DropReason::Ipv4Truncated,
                    Ipv4Error::BadVersion => DropReason::Ipv4BadVersion,
                    Ipv4Error::BadHeaderLength => DropReason::Ipv4BadHeaderLength,
                    Ipv4Error::BadTotalLength => DropReason::Ipv4BadTotalLength,
                    Ipv4Error::BadChecksum => DropReason::Ipv4BadChecksum,
                });
            }
        };
        let (src, dst, ttl) = (ip.src(), ip.dst(), ip.ttl());
        trace.step("ipv4", format_args!("{src} > {dst} ttl {ttl} proto {} len {}", ip.protocol(), ip.total_len()));
        if let PortRole::Pod { ip: pod_ip, .. } = port.role {
            if Some(src) != pod_ip {
                return Next::Drop(DropReason::SpoofedSourceIp);
            }
        }
        if ttl <= 1 {
            return self.icmp_error(
                state,
                port,
                buf,
                len,
                IcmpError::TimeExceeded,
                DropReason::TtlExpired,
                now_ns,
                trace,
            );
        }
        let Some(adjacency_index) = fibs.v4.lookup(dst) else {
            trace.step("fib", format_args!("{dst}: no route"));
            return Next::Drop(DropReason::NoRoute);
        };
        let Some(adj) = state.adjacency(adjacency_index).copied() else {
            return Next::Drop(DropReason::NoRoute);
        };
        trace.step(
            "fib",
            format_args!(
                "{dst} -> adjacency {adjacency_index}: port {} from {} to {:?} mtu {}",
                adj.port, adj.src_mac, adj.next_hop, adj.mtu
            ),
        );
        if adj.port == port.id {
            return Next::Drop(DropReason::Hairpin);
        }
        let ip_size =
            if vnet.is_gso() { gso_segment_ip_len(&ip, vnet.gso_type, vnet.gso_size) } else { ip.total_len() };
        if ip_size > adj.mtu as usize {
            trace.step("mtu", format_args!("{ip_size} bytes > mtu {}", adj.mtu));
            if ip.dont_fragment() {
                let error = IcmpError::FragmentationNeeded { mtu: adj.mtu };
                return self.icmp_error(state, port, buf, len, error, DropReason::FragmentationNeeded, now_ns, trace);
            }
            return Next::Drop(DropReason::FragmentationUnsupported);
        }
        let dst_mac = next_hop_mac(state, adj.next_hop, IpAddr::V4(dst));
        let mut ip = Ipv4Packet::new_unchecked(&mut buf[L2..len]);
        ip.decrement_ttl();
        let mut eth = EthernetFrame::new_checked(&mut buf[vnet::LEN..len]).expect("checked above");
        eth.set_src(adj.src_mac);
        match dst_mac {
            Ok(mac) => {
                eth.set_dst(mac);
                trace.step("rewrite", format_args!("ttl {} -> {}, {} > {mac}", ttl, ttl - 1, adj.src_mac));
                Next::Tx { port: adj.port, len }
            }
            Err(next_hop) => {
                trace.step("neighbor", format_args!("{next_hop} unresolved: to the control plane to resolve"));
                Next::Resolve { port: adj.port, next_hop, len }
            }
        }
    }

    /// Replaces the buffer with an ICMP error about the packet in it, addressed back to where it
    /// came from (out of the arrival port, to the sender's MAC), if RFC 1812 allows an error about
    /// that packet (see [`no_error_about`]) and the rate limit allows one now. Otherwise the
    /// packet is only dropped, for `reason`.
    #[allow(clippy::too_many_arguments)]
    fn icmp_error<T: Tracer>(
        &mut self,
        state: &ForwardingState,
        port: &PortInfo,
        buf: &mut [u8],
        len: usize,
        error: IcmpError,
        reason: DropReason,
        now_ns: u64,
        trace: &mut T,
    ) -> Next {
        let ip = Ipv4Packet::new_unchecked(&buf[L2..len]);
        let sender_mac = MacAddr(buf[vnet::LEN + 6..vnet::LEN + 12].try_into().expect("6 bytes"));
        if let Some(why) = no_error_about(&ip, sender_mac) {
            trace.step("icmp", format_args!("{error:?} not sent: {why}"));
            return Next::Drop(reason);
        }
        // Toward pods and the node the error comes from the gateway; out of the uplink from the
        // NIC's own addresses, or not at all (a link-local source would not get through the VPC).
        let Some(own_ip) = state.own_ip(port) else {
            trace.step("icmp", format_args!("{error:?} not sent: {} has no IPv4 address", port.name));
            return Next::Drop(reason);
        };
        let own_mac = state.own_mac(port);
        if !self.icmp.allow(now_ns) {
            trace.step("icmp", format_args!("{error:?} rate-limited: not sent"));
            self.icmp_suppressed += 1;
            return Next::Drop(reason);
        }
        let to = ip.src();
        let mut quoted = [0u8; 60 + 8];
        let quoted_len = icmp::quoted_len(&buf[L2..len], ip.header_len());
        quoted[..quoted_len].copy_from_slice(&buf[L2..L2 + quoted_len]);
        let ip_len = icmp::emit_error(&mut buf[L2..], own_ip, to, error, &quoted[..quoted_len]);
        let mut eth = EthernetFrame::new_checked(&mut buf[vnet::LEN..]).expect("buffer holds a frame");
        eth.set_dst(sender_mac);
        eth.set_src(own_mac);
        VnetHeader::default().write(&mut buf[..vnet::LEN]);
        trace.step("icmp", format_args!("{error:?} to {to}"));
        Next::Respond { reason, port: port.id, len: L2 + ip_len }
    }
}

/// Is `ip` the address of a pod on this switch (what the switch answers ARP and neighbour
/// solicitations for on the uplink and toward the node)?
fn is_local_pod(state: &ForwardingState, fibs: &FibViews<'_>, ip: IpAddr) -> bool {
    let adjacency = match ip {
        IpAddr::V4(v4) => fibs.v4.lookup(v4),
        IpAddr::V6(v6) => fibs.v6.lookup(v6),
    };
    adjacency.and_then(|a| state.adjacency(a)).and_then(|a| state.port(a.port)).is_some_and(|p| match p.role {
        PortRole::Pod { ip: v4, ipv6, .. } => match ip {
            IpAddr::V4(ip) => v4 == Some(ip),
            IpAddr::V6(ip) => ipv6 == Some(ip),
        },
        _ => false,
    })
}

/// The destination MAC of an adjacency's next hop for `dst`, or the neighbour to resolve first.
fn next_hop_mac(state: &ForwardingState, next_hop: NextHop, dst: IpAddr) -> Result<MacAddr, IpAddr> {
    match next_hop {
        NextHop::Mac(mac) => Ok(mac),
        NextHop::Resolve { via } => {
            let hop = via.unwrap_or(dst);
            state.neighbors.get(&hop).copied().ok_or(hop)
        }
    }
}

/// Why RFC 1812 §4.3.2.7 forbids an ICMP error about this packet, if it does: it is itself an
/// ICMP error (two routers would bounce errors forever), a fragment other than the first (the
/// first one already earns the error, and a later one has no transport header to quote), or it
/// comes from or goes to a broadcast or multicast address (one packet would draw an error from
/// every router that sees it, and the error would go to a group or to nobody).
fn no_error_about(ip: &Ipv4Packet<&[u8]>, sender_mac: MacAddr) -> Option<&'static str> {
    let (src, dst) = (ip.src(), ip.dst());
    if ip.is_later_fragment() {
        Some("not the first fragment")
    } else if ip.protocol() == ipv4::PROTO_ICMP
        && !ip.payload().first().is_some_and(|&kind| icmp::is_informational(kind))
    {
        Some("about an ICMP error")
    } else if dst.is_broadcast() || dst.is_multicast() {
        Some("to a broadcast or multicast destination")
    } else if src.is_broadcast() || src.is_multicast() || src.is_unspecified() || sender_mac.is_multicast() {
        Some("from a broadcast, multicast or unspecified source")
    } else {
        None
    }
}

/// The IP length of each segment a GSO frame leaves as: its IP and transport headers plus
/// `gso_size` bytes of payload. The headers are measured in the packet, not taken from the vnet
/// header's `hdr_len`: the kernel fills that with the skb's linear length on receive (AF_PACKET,
/// TAP), which can hold payload too, and judging by it dropped good frames as too big.
fn gso_segment_ip_len(ip: &Ipv4Packet<&[u8]>, gso_type: u8, gso_size: u16) -> usize {
    let transport = match (gso_type & !vnet::GSO_ECN, ip.protocol()) {
        // The TCP header's data offset, in 32-bit words (a truncated header counts as minimal).
        (vnet::GSO_TCPV4, ipv4::PROTO_TCP) => ip.payload().get(12).map_or(20, |offset| (offset >> 4) as usize * 4),
        (vnet::GSO_UDP_L4, _) => 8,
        // UFO: the datagram, UDP header included, is cut into gso_size-byte IP fragments.
        _ => 0,
    };
    ip.header_len() + transport + gso_size as usize
}
