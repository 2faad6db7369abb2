//! ARP, answered in place: proxy-ARP toward pods (the gateway answers for everything but the
//! pod's own address), the switch's pods on the uplink, the gateway and pods toward the node.

use std::net::IpAddr;

use super::{is_local_pod, DropReason, Next, Pipeline, Tracer, L2};
use crate::state::{FibViews, ForwardingState, PortInfo, PortRole};
use crate::wire::arp::{self, ArpPacket, Operation};
use crate::wire::ethernet::EthernetFrame;
use crate::wire::vnet::{self, VnetHeader};

impl Pipeline {
    pub(super) fn arp<T: Tracer>(
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
}
