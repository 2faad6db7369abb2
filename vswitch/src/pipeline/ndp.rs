//! Neighbour discovery (RFC 4861), IPv6's ARP, answered by the switch and never forwarded.
//!
//! Toward pods the switch is the router at the gateway's link-local address: it answers every
//! neighbour solicitation from a pod with the gateway MAC, except for the pod's own addresses
//! (duplicate address detection must pass), and drops what a pod must not send: router
//! advertisements and redirects (RA guard), advertisements or solicitations naming an address or
//! MAC not its own. On the uplink it speaks for its pods (and its own address) and hands every
//! advertisement to the control plane, which learns next hops from them. Toward the node it
//! answers for the gateway and the pods, so the node's /128 routes on the host port resolve.

use std::net::Ipv6Addr;

use super::ipv6::Checked;
use super::{is_local_pod, DropReason, Next, Pipeline, Tracer, L2};
use crate::state::{FibViews, ForwardingState, PortInfo, PortRole};
use crate::wire::ethernet::EthernetFrame;
use crate::wire::icmpv6::{self, Icmpv6Packet, NeighborAdvert, NeighborSolicit};
use crate::wire::ipv6;
use crate::wire::vnet::{self, VnetHeader};
use crate::wire::MacAddr;

impl Pipeline {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn ndp<T: Tracer>(
        &mut self,
        state: &ForwardingState,
        fibs: &FibViews<'_>,
        port: &PortInfo,
        checked: &Checked,
        buf: &mut [u8],
        len: usize,
        trace: &mut T,
    ) -> Next {
        let Checked { src, dst, upper, .. } = *checked;
        let packet = &buf[L2..len];
        let message = &packet[upper.offset..ipv6::HEADER_LEN + u16::from_be_bytes([packet[4], packet[5]]) as usize];
        // RFC 4861 §6.1.1/§7.1.1: hop limit 255 proves the message was not routed here; NDP in
        // a fragment is ignored (RFC 6980); the checksum covers the addresses.
        let valid = packet[7] == icmpv6::NDP_HOP_LIMIT
            && upper.fragment.is_none()
            && Icmpv6Packet::new_checked(message).is_ok_and(|m| m.code() == 0 && m.verify_checksum(src, dst));
        if !valid {
            trace.step("ndp", format_args!("malformed: hop limit {}, fragment {:?}", packet[7], upper.fragment));
            return Next::Drop(DropReason::NdpMalformed);
        }
        let kind = message[0];
        let pod = match port.role {
            PortRole::Pod { ipv6, mac, .. } => Some((ipv6, mac)),
            _ => None,
        };
        match kind {
            icmpv6::TYPE_ROUTER_ADVERT | icmpv6::TYPE_REDIRECT if pod.is_some() => {
                trace.step("ndp", format_args!("type {kind} from a pod: RA guard"));
                Next::Drop(DropReason::RaGuard)
            }
            icmpv6::TYPE_NEIGHBOR_ADVERT => {
                let Ok(na) = NeighborAdvert::new_checked(message) else {
                    return Next::Drop(DropReason::NdpMalformed);
                };
                let (target, target_mac) = (na.target(), na.target_mac());
                trace.step("ndp", format_args!("advert {target} is-at {target_mac:?}"));
                match (pod, &port.role) {
                    (Some((ipv6, mac)), _) => {
                        if !is_own(target, ipv6, mac) || target_mac.is_some_and(|m| m != mac) {
                            Next::Drop(DropReason::NdpSpoofed)
                        } else {
                            // The switch never asks a pod: it knows each pod's MAC.
                            Next::Drop(DropReason::NdpNotOurs)
                        }
                    }
                    (None, PortRole::Uplink { .. }) => Next::ToControl { len },
                    _ => Next::Drop(DropReason::NdpNotOurs),
                }
            }
            icmpv6::TYPE_NEIGHBOR_SOLICIT => {
                let Ok(ns) = NeighborSolicit::new_checked(message) else {
                    return Next::Drop(DropReason::NdpMalformed);
                };
                let target = ns.target();
                let source_mac = ns.source_mac();
                trace.step("ndp", format_args!("solicit who-has {target} tell {src} ({source_mac:?})"));
                // RFC 4861 §7.1.1: a DAD probe carries no source link-layer option.
                if target.is_multicast() || (src.is_unspecified() && source_mac.is_some()) {
                    return Next::Drop(DropReason::NdpMalformed);
                }
                let answer = match (pod, &port.role) {
                    (Some((ipv6, mac)), _) => {
                        if source_mac.is_some_and(|m| m != mac) || (src.is_unspecified() && !is_own(target, ipv6, mac))
                        {
                            return Next::Drop(DropReason::NdpSpoofed);
                        }
                        if is_own(target, ipv6, mac) {
                            return Next::Drop(DropReason::NdpOwnAddress);
                        }
                        true
                    }
                    (None, PortRole::Uplink { ipv6, .. }) => {
                        Some(target) == *ipv6 || is_local_pod(state, fibs, target.into())
                    }
                    (None, _) => target == state.gateway_ip6 || is_local_pod(state, fibs, target.into()),
                };
                if !answer {
                    return Next::Drop(DropReason::NdpNotOurs);
                }
                let solicitor_mac = MacAddr(buf[vnet::LEN + 6..vnet::LEN + 12].try_into().expect("6 bytes"));
                let own_mac = state.own_mac(port);
                let router = target == state.gateway_ip6 && !matches!(port.role, PortRole::Uplink { .. });
                let ip_len = icmpv6::emit_neighbor_advert_reply(&mut buf[L2..], src, target, own_mac, router);
                let to = if src.is_unspecified() { ipv6::multicast_mac(ipv6::ALL_NODES) } else { solicitor_mac };
                let mut eth = EthernetFrame::new_checked(&mut buf[vnet::LEN..]).expect("buffer holds a frame");
                eth.set_dst(to);
                eth.set_src(own_mac);
                VnetHeader::default().write(&mut buf[..vnet::LEN]);
                trace.step("ndp", format_args!("advert {target} is-at {own_mac} to {to}"));
                Next::Tx { port: port.id, len: L2 + ip_len }
            }
            // Router solicitations (pods are configured statically, and no router advertises
            // toward them), and router advertisements from the VPC or the node: not for the switch.
            _ => Next::Drop(DropReason::NdpNotOurs),
        }
    }
}

/// Is `target` one of the pod's own addresses (its /128 or its MAC's link-local)?
fn is_own(target: Ipv6Addr, ipv6: Option<Ipv6Addr>, mac: MacAddr) -> bool {
    Some(target) == ipv6 || target == mac.link_local()
}
