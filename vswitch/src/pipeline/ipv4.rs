//! IPv4: input checks (version, header length, total length, checksum; the frame cut at the
//! total length; fragments that hide or overwrite the transport header, RFC 1858), port
//! security, TTL, FIB lookup, MTU (fragmentation-needed with DF; the switch never fragments),
//! rewrite (MACs, TTL minus one with an incremental checksum), and the ICMP errors RFC 1812
//! allows.

use std::net::IpAddr;

use super::{route, to_next_hop, trim_to_ip, DropReason, Next, Pipeline, Tracer, L2};
use crate::state::{FibViews, ForwardingState, PortInfo, PortRole};
use crate::wire::ethernet::EthernetFrame;
use crate::wire::fragment;
use crate::wire::icmp::{self, IcmpError};
use crate::wire::ipv4::{self, Ipv4Error, Ipv4Packet};
use crate::wire::vnet::{self, VnetHeader};
use crate::wire::MacAddr;

impl Pipeline {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn ipv4<T: Tracer>(
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
        let len = match trim_to_ip(vnet, len, ip.total_len(), trace) {
            Ok(len) => len,
            Err(reason) => return Next::Drop(reason),
        };
        if let Some(reason) = fragment_check(&ip) {
            trace.step("ipv4", format_args!("fragment at {}: {}", ip.fragment_offset(), reason.help()));
            return Next::Drop(reason);
        }
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
        let adj = match route(state, fibs.v4.lookup(dst), IpAddr::V4(dst), port, trace) {
            Ok(adj) => adj,
            Err(dropped) => return dropped,
        };
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
        Ipv4Packet::new_unchecked(&mut buf[L2..len]).decrement_ttl();
        to_next_hop(state, &adj, IpAddr::V4(dst), buf, len, trace, format_args!("ttl {} -> {}", ttl, ttl - 1))
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

/// What a fragment alone shows to be an attack (RFC 1858 §3.2): a first fragment too short to
/// hold its transport header, or a later one whose data would overwrite it at reassembly.
fn fragment_check(ip: &Ipv4Packet<&[u8]>) -> Option<DropReason> {
    if ip.is_first_fragment() && ip.payload().len() < fragment::header_floor(ip.protocol()) {
        Some(DropReason::FirstFragmentIncomplete)
    } else if fragment::overlaps_headers(ip.fragment_offset(), ip.protocol()) {
        Some(DropReason::FragmentOverlapsHeaders)
    } else {
        None
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
