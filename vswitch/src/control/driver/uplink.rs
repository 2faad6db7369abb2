//! What the control plane sends on the VPC subnet itself: ARP requests and neighbour
//! solicitations for the uplink's neighbours, packets that waited for one, and announcements of
//! pods just attached (a gratuitous ARP, an unsolicited neighbour advertisement), from the uplink
//! or, without one, from the node's own NIC.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::RawFd;
use std::sync::Arc;

use super::workers::Counters;
use crate::control::registry::UplinkWork;
use crate::pipeline::DropReason;
use crate::port::packet::PacketSocket;
use crate::port::PortQueue;
use crate::state::PortId;
use crate::wire::arp::{self, Operation};
use crate::wire::ethernet::{self, EthernetFrame};
use crate::wire::icmpv6;
use crate::wire::ipv6;
use crate::wire::udp_gso::{self, UdpGso};
use crate::wire::{vnet, EtherType, MacAddr};

/// The uplink NIC as the control plane uses it: to send ARP and packets that waited for it.
#[derive(Debug)]
pub struct Uplink {
    pub name: String,
    pub port: PortId,
    pub mac: MacAddr,
    /// The source of neighbour solicitations: the NIC's configured IPv6 address, or its MAC's
    /// link-local address.
    pub ndp_source: Ipv6Addr,
    pub sender: PacketSocket,
}

/// Without an uplink, the node's own NIC (`host_port.announce_on`), used only to announce pods.
#[derive(Debug)]
pub struct Announcer {
    pub name: String,
    pub ifindex: u32,
    pub mac: MacAddr,
    pub sender: PacketSocket,
}

#[derive(Debug)]
pub struct UplinkSender {
    uplink: Option<Uplink>,
    announcer: Option<Announcer>,
    counters: Arc<Counters>,
    /// `force_udp_segmentation`: cut UDP GSO frames even if the uplink takes them whole.
    always_segment: bool,
}

impl UplinkSender {
    pub fn new(
        uplink: Option<Uplink>,
        announcer: Option<Announcer>,
        counters: Arc<Counters>,
        always_segment: bool,
    ) -> UplinkSender {
        UplinkSender { uplink, announcer, counters, always_segment }
    }

    /// The uplink's sending socket, for an upgrade to take over.
    pub fn sender_fd(&self) -> Option<RawFd> {
        self.uplink.as_ref().and_then(|u| u.sender.raw_fd())
    }

    /// Does what the neighbour machinery asked for (outside the registry's lock).
    pub fn run(&self, work: UplinkWork) {
        for ip in work.ask {
            match ip {
                IpAddr::V4(ip) => self.send_arp_probe(ip),
                IpAddr::V6(ip) => self.send_neighbor_solicit(ip),
            }
        }
        for (mut data, mac) in work.send {
            data[vnet::LEN..vnet::LEN + 6].copy_from_slice(&mac.0);
            self.send(&data);
        }
        let control = self.counters.control();
        control.dropped_many(DropReason::NeighborUnresolved, work.unresolved_drops);
        control.dropped_many(DropReason::NeighborQueueFull, work.queue_full_drops);
    }

    /// Sends a frame (vnet header first) out of the uplink. Frames that waited for a neighbour
    /// come this way: a UDP GSO one is cut into datagrams here, as a worker would, if the uplink
    /// cannot take it whole.
    fn send(&self, frame: &[u8]) {
        let Some(uplink) = &self.uplink else { return };
        let control = self.counters.control();
        let send = |frame: &[u8]| match uplink.sender.send(frame) {
            Ok(()) => control.tx(uplink.port, frame.len()),
            Err(_) => control.dropped(DropReason::TxError),
        };
        let cut = self.always_segment || !uplink.sender.takes_udp_gso();
        if !(cut && udp_gso::is_udp_gso(frame)) {
            return send(frame);
        }
        let Ok(gso) = UdpGso::parse(frame) else {
            return control.dropped(DropReason::UdpGsoMalformed);
        };
        control.segmented(uplink.port);
        let mut datagram = vec![0u8; gso.max_segment_len()];
        for index in 0..gso.segments() {
            let len = gso.write_segment(frame, index, &mut datagram);
            send(&datagram[..len]);
        }
    }

    /// Broadcasts `who-has target tell 0.0.0.0`: a probe (RFC 5227), which hosts answer without
    /// learning anything.
    fn send_arp_probe(&self, target: Ipv4Addr) {
        let Some(uplink) = &self.uplink else { return };
        self.send(&arp_frame(uplink.mac, Operation::Request, Ipv4Addr::UNSPECIFIED, target));
    }

    /// Asks the uplink's VPC subnet for `target`'s MAC (a multicast neighbour solicitation).
    fn send_neighbor_solicit(&self, target: Ipv6Addr) {
        let Some(uplink) = &self.uplink else { return };
        let mut frame = [0u8; vnet::LEN + ethernet::HEADER_LEN + icmpv6::NS_PACKET_LEN];
        let mut eth = EthernetFrame::new_checked(&mut frame[vnet::LEN..]).expect("sized");
        eth.set_dst(ipv6::multicast_mac(ipv6::solicited_node(target)));
        eth.set_src(uplink.mac);
        eth.set_ethertype(EtherType::Ipv6);
        icmpv6::emit_neighbor_solicit(eth.payload_mut(), uplink.ndp_source, target, uplink.mac);
        self.send(&frame);
    }

    /// Announces `ip` (a pod just attached here), so hosts that knew the address elsewhere
    /// update at once: a gratuitous ARP or an unsolicited neighbour advertisement, from the
    /// uplink, or from the node's NIC in host-routed mode.
    pub fn announce(&self, ip: IpAddr) {
        let (mac, sender, name) = match (&self.uplink, &self.announcer) {
            (Some(uplink), _) => (uplink.mac, &uplink.sender, uplink.name.as_str()),
            (None, Some(announcer)) => (announcer.mac, &announcer.sender, announcer.name.as_str()),
            (None, None) => return,
        };
        let sent = match ip {
            IpAddr::V4(ip) => sender.send(&gratuitous_arp(mac, ip)),
            IpAddr::V6(ip) => {
                let mut frame = [0u8; vnet::LEN + ethernet::HEADER_LEN + icmpv6::NA_PACKET_LEN];
                let mut eth = EthernetFrame::new_checked(&mut frame[vnet::LEN..]).expect("sized");
                eth.set_dst(ipv6::multicast_mac(ipv6::ALL_NODES));
                eth.set_src(mac);
                eth.set_ethertype(EtherType::Ipv6);
                icmpv6::emit_unsolicited_neighbor_advert(eth.payload_mut(), ip, mac, false);
                sender.send(&frame)
            }
        };
        if let Err(e) = sent {
            tracing::warn!(interface = %name, %ip, error = %e, "could not announce the pod");
        }
    }
}

/// A gratuitous ARP (a broadcast request for its own address) announcing `ip` at `mac`, behind
/// the zero vnet header every sender here takes.
pub(crate) fn gratuitous_arp(mac: MacAddr, ip: Ipv4Addr) -> [u8; vnet::LEN + ethernet::HEADER_LEN + arp::PACKET_LEN] {
    arp_frame(mac, Operation::Request, ip, ip)
}

/// A broadcast ARP packet from `mac` (with the packet socket's virtio-net header in front).
fn arp_frame(
    mac: MacAddr,
    op: Operation,
    sender_ip: Ipv4Addr,
    target_ip: Ipv4Addr,
) -> [u8; vnet::LEN + ethernet::HEADER_LEN + arp::PACKET_LEN] {
    let mut frame = [0u8; vnet::LEN + ethernet::HEADER_LEN + arp::PACKET_LEN];
    let mut eth = EthernetFrame::new_checked(&mut frame[vnet::LEN..]).expect("sized");
    eth.set_dst(MacAddr::BROADCAST);
    eth.set_src(mac);
    eth.set_ethertype(EtherType::Arp);
    arp::emit(eth.payload_mut(), op, (mac, sender_ip), (MacAddr::ZERO, target_ip));
    frame
}
