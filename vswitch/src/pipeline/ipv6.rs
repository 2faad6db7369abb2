//! IPv6 through the same stages as IPv4: input checks (version, payload length, a bounded walk
//! over the extension headers, Routing Header type 0, fragments that hide or overwrite the
//! header chain; the frame cut at the payload length), port security (a pod sends only from its
//! own /128 or its MAC's link-local address, and no atomic fragments), neighbour discovery
//! ([`super::ndp`]), hop limit, FIB lookup, MTU (IPv6 routers never fragment: Packet Too Big for
//! anything larger, GSO frames judged by their segments), rewrite (MACs and the hop limit; IPv6
//! has no header checksum).

use std::net::{IpAddr, Ipv6Addr};

use super::{route, to_next_hop, trim_to_ip, DropReason, Next, Pipeline, Tracer, L2};
use crate::state::{FibViews, ForwardingState, PortInfo, PortRole};
use crate::wire::ethernet::EthernetFrame;
use crate::wire::fragment;
use crate::wire::icmpv6::{self, Icmpv6Error};
use crate::wire::ipv6::{self as wire, ChainError, Ipv6Packet, UpperLayer};
use crate::wire::vnet::{self, VnetHeader};
use crate::wire::{MacAddr, WireError};

/// What the checks found out about a packet, for the stages after them.
#[derive(Clone, Copy)]
pub(super) struct Checked {
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    pub upper: UpperLayer,
    /// The fixed header and the payload, without what followed them in the frame.
    pub total_len: usize,
}

impl Pipeline {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn ipv6<T: Tracer>(
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
        let checked = match check(&buf[L2..len]) {
            Ok(checked) => checked,
            Err(reason) => {
                trace.step("ipv6", format_args!("{}", reason.help()));
                return Next::Drop(reason);
            }
        };
        let Checked { src, dst, upper, total_len } = checked;
        let hop_limit = buf[L2 + 7];
        trace.step(
            "ipv6",
            format_args!(
                "{src} > {dst} hop limit {hop_limit} proto {} ({} extension headers)",
                upper.protocol, upper.extensions
            ),
        );
        let len = match trim_to_ip(vnet, len, total_len, trace) {
            Ok(len) => len,
            Err(reason) => return Next::Drop(reason),
        };
        let ndp = is_ndp(&buf[L2..len], &upper);
        if let PortRole::Pod { ipv6, mac, .. } = port.role {
            // The unspecified source is what a pod uses before its addresses pass duplicate
            // address detection: for the detection itself (checked there) and for multicast
            // listener reports (RFC 3810 §5.2.13), which are never switched anyway.
            let unspecified_ok = src.is_unspecified() && (dst.is_multicast() || ndp);
            let own = Some(src) == ipv6 || src == mac.link_local() || unspecified_ok;
            if !own {
                trace.step("security", format_args!("{src} is not {}'s", port.name));
                return Next::Drop(DropReason::SpoofedSourceIp);
            }
            // No stack has sent one since RFC 8200; from elsewhere one is passed on, as a legacy
            // host may send them and the pod processes them in isolation (RFC 6946).
            if upper.fragment.is_some_and(|f| !f.is_fragmenting()) {
                return Next::Drop(DropReason::Ipv6AtomicFragment);
            }
        }
        if ndp {
            return self.ndp(state, fibs, port, &checked, buf, len, trace);
        }
        if dst.is_multicast() || src.is_multicast() {
            return Next::Drop(DropReason::Ipv6Multicast);
        }
        let dst_mac = MacAddr(buf[vnet::LEN..vnet::LEN + 6].try_into().expect("6 bytes"));
        if dst_mac != state.own_mac(port) {
            return Next::Drop(DropReason::NotOurMac);
        }
        // fe80::/10 is valid on one link only: never routed.
        if src.is_unicast_link_local() || dst.is_unicast_link_local() {
            return Next::Drop(DropReason::Ipv6LinkLocal);
        }
        if hop_limit <= 1 {
            let error = Icmpv6Error::TimeExceeded;
            return self.icmpv6_error(state, port, &checked, buf, len, error, DropReason::TtlExpired, now_ns, trace);
        }
        let adj = match route(state, fibs.v6.lookup(dst), IpAddr::V6(dst), port, trace) {
            Ok(adj) => adj,
            Err(dropped) => return dropped,
        };
        let packet = &buf[L2..len];
        let ip_size = if vnet.is_gso() {
            gso_segment_ip_len(packet, &upper, vnet.gso_type, vnet.gso_size)
        } else {
            wire::HEADER_LEN + u16::from_be_bytes([packet[4], packet[5]]) as usize
        };
        if ip_size > adj.mtu as usize {
            trace.step("mtu", format_args!("{ip_size} bytes > mtu {}", adj.mtu));
            let error = Icmpv6Error::PacketTooBig { mtu: adj.mtu as u32 };
            return self.icmpv6_error(state, port, &checked, buf, len, error, DropReason::PacketTooBig, now_ns, trace);
        }
        Ipv6Packet::new_checked(&mut buf[L2..len]).expect("checked above").set_hop_limit(hop_limit - 1);
        let rewritten = format_args!("hop limit {} -> {}", hop_limit, hop_limit - 1);
        to_next_hop(state, &adj, IpAddr::V6(dst), buf, len, trace, rewritten)
    }

    /// Replaces the buffer with an ICMPv6 error about the packet in it, back out of the arrival
    /// port to the sender's MAC, if RFC 4443 §2.4 allows an error about that packet and the rate
    /// limit allows one now; otherwise the packet is only dropped, for `reason`. Toward pods and
    /// the node the error comes from the gateway's link-local address (the link they are on); out
    /// of the uplink from the NIC's configured address, or not at all.
    #[allow(clippy::too_many_arguments)]
    fn icmpv6_error<T: Tracer>(
        &mut self,
        state: &ForwardingState,
        port: &PortInfo,
        checked: &Checked,
        buf: &mut [u8],
        len: usize,
        error: Icmpv6Error,
        reason: DropReason,
        now_ns: u64,
        trace: &mut T,
    ) -> Next {
        let sender_mac = MacAddr(buf[vnet::LEN + 6..vnet::LEN + 12].try_into().expect("6 bytes"));
        if let Some(why) = no_error_about(&buf[L2..len], checked, sender_mac) {
            trace.step("icmpv6", format_args!("{error:?} not sent: {why}"));
            return Next::Drop(reason);
        }
        let Some(own_ip) = state.own_ip6(port) else {
            trace.step("icmpv6", format_args!("{error:?} not sent: {} has no IPv6 address", port.name));
            return Next::Drop(reason);
        };
        if !self.icmp.allow(now_ns) {
            trace.step("icmpv6", format_args!("{error:?} rate-limited: not sent"));
            self.icmp_suppressed += 1;
            return Next::Drop(reason);
        }
        let packet_len = wire::HEADER_LEN + u16::from_be_bytes([buf[L2 + 4], buf[L2 + 5]]) as usize;
        let mut quoted = [0u8; wire::MIN_MTU];
        let quoted_len = icmpv6::quoted_len(&buf[L2..L2 + packet_len]);
        quoted[..quoted_len].copy_from_slice(&buf[L2..L2 + quoted_len]);
        let ip_len = icmpv6::emit_error(&mut buf[L2..], own_ip, checked.src, error, &quoted[..quoted_len]);
        let own_mac = state.own_mac(port);
        let mut eth = EthernetFrame::new_checked(&mut buf[vnet::LEN..]).expect("buffer holds a frame");
        eth.set_dst(sender_mac);
        eth.set_src(own_mac);
        VnetHeader::default().write(&mut buf[..vnet::LEN]);
        trace.step("icmpv6", format_args!("{error:?} to {}", checked.src));
        Next::Respond { reason, port: port.id, len: L2 + ip_len }
    }
}

/// The input checks: the fixed header; the extension headers walked to the upper layer, a first
/// fragment holding them all (RFC 7112); no Routing Header type 0 left to process (RFC 5095); no
/// later fragment overwriting the headers of the first (RFC 5722).
pub(super) fn check(packet: &[u8]) -> Result<Checked, DropReason> {
    let ip = Ipv6Packet::new_checked(packet).map_err(|e| match e {
        WireError::Truncated { .. } => DropReason::Ipv6Truncated,
        WireError::Malformed(_) => DropReason::Ipv6BadVersion,
    })?;
    let upper = ip.upper_layer().map_err(|e| match e {
        ChainError::IncompleteFirstFragment { .. } => DropReason::FirstFragmentIncomplete,
        ChainError::Truncated { .. } | ChainError::Malformed(_) => DropReason::Ipv6BadExtensionHeaders,
    })?;
    if upper.routing.is_some_and(|r| r.is_active_type_0()) {
        return Err(DropReason::Ipv6RoutingHeader0);
    }
    // A later fragment's `protocol` is the first header of the fragmentable part.
    if upper.fragment.is_some_and(|f| fragment::overlaps_headers(f.offset.into(), upper.protocol)) {
        return Err(DropReason::FragmentOverlapsHeaders);
    }
    Ok(Checked { src: ip.src(), dst: ip.dst(), upper, total_len: ip.total_len() })
}

/// Neighbour discovery (router and neighbour solicitations and advertisements, redirects): the
/// switch answers or judges these itself; they are never forwarded.
fn is_ndp(packet: &[u8], upper: &UpperLayer) -> bool {
    upper.protocol == wire::PROTO_ICMPV6
        && !upper.fragment.is_some_and(|f| f.is_later())
        && packet
            .get(upper.offset)
            .is_some_and(|&kind| (icmpv6::TYPE_ROUTER_SOLICIT..=icmpv6::TYPE_REDIRECT).contains(&kind))
}

/// Why RFC 4443 §2.4 (e) forbids an ICMPv6 error about this packet, if it does: it is itself an
/// ICMPv6 error, a fragment other than the first, or it comes from an address that cannot be
/// answered (unspecified, multicast, or a multicast MAC).
fn no_error_about(packet: &[u8], checked: &Checked, sender_mac: MacAddr) -> Option<&'static str> {
    let upper = &checked.upper;
    if upper.fragment.is_some_and(|f| f.is_later()) {
        Some("not the first fragment")
    } else if upper.protocol == wire::PROTO_ICMPV6
        && packet.get(upper.offset).is_none_or(|&kind| icmpv6::is_error(kind))
    {
        Some("about an ICMPv6 error")
    } else if checked.src.is_unspecified() || checked.src.is_multicast() || sender_mac.is_multicast() {
        Some("from an unspecified or multicast source")
    } else {
        None
    }
}

/// The IPv6 length of each segment a GSO frame leaves as: its IPv6 header, extension headers
/// and transport header plus `gso_size` bytes of payload (as for IPv4, measured in the packet).
fn gso_segment_ip_len(packet: &[u8], upper: &UpperLayer, gso_type: u8, gso_size: u16) -> usize {
    let transport = match (gso_type & !vnet::GSO_ECN, upper.protocol) {
        (vnet::GSO_TCPV6, wire::PROTO_TCP) => {
            packet.get(upper.offset + 12).map_or(20, |offset| (offset >> 4) as usize * 4)
        }
        (vnet::GSO_UDP_L4, _) => 8,
        _ => 0,
    };
    upper.offset + transport + gso_size as usize
}
