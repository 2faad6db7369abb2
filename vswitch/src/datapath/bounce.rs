//! `forwarding = "tap_bounce"`: the benchmark ceiling. The workers read and write exactly as
//! vswitchd does (the same multi-queue TAPs, vnet header, offloads, batches and io_uring writes)
//! but decide nothing: a frame from one pod goes out of the other pod's port with only its MACs
//! rewritten. What vswitchd forwards slower than this is the pipeline's cost; what this forwards
//! slower than the kernel is the TAP design's.

use serde::{Deserialize, Serialize};

use crate::pipeline::{DropReason, Next};
use crate::state::{ForwardingState, PortId, PortRole};
use crate::wire::{ethernet, vnet, MacAddr};

/// What a worker does with each frame (the top-level `forwarding` key of vswitchd.toml).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Forwarding {
    /// The pipeline: checks, the FIB, ARP and neighbour discovery, ICMP errors.
    #[default]
    Pipeline,
    /// Each frame from a pod out of the other pod's port, MACs rewritten, nothing else (ARP still
    /// takes the pipeline so the pods resolve the gateway). For two pods on a benchmark only.
    TapBounce,
}

/// Where frames from one pod port bounce to: the other pod's port and MAC.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    port: PortId,
    mac: MacAddr,
    gateway_mac: MacAddr,
}

impl Peer {
    /// The first pod port other than `in_port` (looked up once per batch); none for a frame from
    /// anything but a pod.
    pub fn of(state: &ForwardingState, in_port: PortId) -> Option<Peer> {
        if !matches!(state.port(in_port)?.role, PortRole::Pod { .. }) {
            return None;
        }
        state.ports.iter().flatten().find_map(|p| match p.role {
            PortRole::Pod { mac, .. } if p.id != in_port => {
                Some(Peer { port: p.id, mac, gateway_mac: state.gateway_mac })
            }
            _ => None,
        })
    }

    /// The frame's fate: `None` for ARP (the pipeline answers it), else out of the peer's port as
    /// the gateway would send it.
    #[inline]
    pub fn bounce(&self, buf: &mut [u8], len: usize) -> Option<Next> {
        let Some(frame) = buf.get_mut(vnet::LEN..len).filter(|f| f.len() >= ethernet::HEADER_LEN) else {
            return Some(Next::Drop(DropReason::FrameTooShort));
        };
        if frame[ethernet::field::ETHERTYPE] == [0x08, 0x06] {
            return None;
        }
        frame[ethernet::field::DST].copy_from_slice(&self.mac.0);
        frame[ethernet::field::SRC].copy_from_slice(&self.gateway_mac.0);
        Some(Next::Tx { port: self.port, len })
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::state::ForwardingStateBuilder;
    use crate::wire::captured::{ARP_REQUEST, ICMP_ECHO_REQUEST};

    fn state() -> ForwardingState {
        let gw: MacAddr = "02:00:a9:fe:01:01".parse().unwrap();
        ForwardingStateBuilder::new(Ipv4Addr::new(169, 254, 1, 1), gw)
            .pod(Ipv4Addr::new(10, 0, 0, 1), "02:00:00:00:00:11".parse().unwrap(), 1500)
            .pod(Ipv4Addr::new(10, 0, 0, 2), "02:00:00:00:00:22".parse().unwrap(), 1500)
            .build()
            .0
    }

    fn framed(frame: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; vnet::LEN];
        buf.extend_from_slice(frame);
        buf
    }

    #[test]
    fn a_frame_goes_to_the_other_pod_with_only_its_macs_rewritten() {
        let state = state();
        for (from, to, mac) in [(0, 1, [0x02, 0, 0, 0, 0, 0x22]), (1, 0, [0x02, 0, 0, 0, 0, 0x11])] {
            let peer = Peer::of(&state, from).expect("a peer");
            let mut buf = framed(&ICMP_ECHO_REQUEST);
            let before = buf.clone();
            let len = buf.len();
            assert!(matches!(peer.bounce(&mut buf, len), Some(Next::Tx { port, len: l }) if port == to && l == len));
            assert_eq!(buf[vnet::LEN..vnet::LEN + 6], mac);
            assert_eq!(buf[vnet::LEN + 6..vnet::LEN + 12], [0x02, 0, 0xa9, 0xfe, 1, 1]);
            assert_eq!(buf[vnet::LEN + 12..], before[vnet::LEN + 12..], "nothing past the MACs changes");
        }
    }

    #[test]
    fn arp_takes_the_pipeline_and_runts_are_dropped() {
        let state = state();
        let peer = Peer::of(&state, 0).unwrap();
        let mut arp = framed(&ARP_REQUEST);
        let len = arp.len();
        assert!(peer.bounce(&mut arp, len).is_none());
        let mut runt = framed(&ICMP_ECHO_REQUEST[..10]);
        let len = runt.len();
        assert!(matches!(peer.bounce(&mut runt, len), Some(Next::Drop(DropReason::FrameTooShort))));
        assert!(Peer::of(&state, 7).is_none(), "no such port");
    }
}
