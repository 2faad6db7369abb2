//! Neighbour resolution on the uplink, driven: packets the workers could not send for want of a
//! neighbour's MAC, ARP replies and neighbour advertisements they heard, and the neighbour timers
//! go to the registry with the time; what it hands back is published and sent.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::publisher::Publisher;
use super::uplink::UplinkSender;
use crate::datapath::{SlowPacket, SlowReason};
use crate::wire::arp::{ArpPacket, Operation};
use crate::wire::icmpv6::NeighborAdvert;
use crate::wire::ipv6::Ipv6Packet;
use crate::wire::{vnet, EtherType, EthernetFrame, MacAddr};

#[derive(Debug)]
pub struct SlowPath {
    publisher: Arc<Publisher>,
    uplink: Arc<UplinkSender>,
    /// The neighbour table's clock starts here.
    started: Instant,
}

impl SlowPath {
    pub fn new(publisher: Arc<Publisher>, uplink: Arc<UplinkSender>) -> SlowPath {
        SlowPath { publisher, uplink, started: Instant::now() }
    }

    fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// A packet from a worker's slow path.
    pub fn on_packet(&self, packet: SlowPacket) {
        let now = self.now();
        let work = match packet.reason {
            SlowReason::Resolve { next_hop, .. } => self.publisher.registry().on_unresolved(next_hop, packet.data, now),
            SlowReason::Learn { .. } => {
                let Some((ip, mac)) = learned_neighbor(&packet.data) else { return };
                self.publisher.update(|registry, _| registry.on_neighbor_reply(ip, mac, now))
            }
        };
        self.uplink.run(work);
    }

    /// Takes the neighbours the replaced instance had resolved (an upgrade).
    pub fn adopt_neighbors(&self, neighbors: &[(IpAddr, MacAddr)]) {
        self.publisher.update(|registry, _| registry.adopt_neighbors(neighbors, self.now()))
    }

    /// Neighbour timers: retries, failures, re-confirmation.
    pub fn on_tick(&self) {
        let work = self.publisher.update(|registry, _| registry.on_neighbor_tick(self.now()));
        self.uplink.run(work);
    }
}

/// What an ARP reply or announcement, or a neighbour advertisement, heard on the uplink says:
/// where an address is now. Only neighbours already in the table are updated with it.
fn learned_neighbor(data: &[u8]) -> Option<(IpAddr, MacAddr)> {
    let eth = EthernetFrame::new_checked(data.get(vnet::LEN..)?).ok()?;
    match eth.ethertype() {
        EtherType::Arp => {
            let arp = ArpPacket::new_checked(eth.payload()).ok()?;
            // A reply, or an announcement (a gratuitous request).
            let announcement = arp.sender_ip() == arp.target_ip();
            (arp.operation() == Operation::Reply || announcement).then(|| (arp.sender_ip().into(), arp.sender_mac()))
        }
        EtherType::Ipv6 => {
            let ip = Ipv6Packet::new_checked(eth.payload()).ok()?;
            let upper = ip.upper_layer().ok()?;
            let na = NeighborAdvert::new_checked(ip.packet().get(upper.offset..)?).ok()?;
            // Without a target link-layer option (allowed in a solicited reply), the sender's MAC.
            Some((na.target().into(), na.target_mac().unwrap_or(eth.src())))
        }
        _ => None,
    }
}
