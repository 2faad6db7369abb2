//! A sampled ring of recent drops, for `vswitchctl drops --follow`: which pod, why, and the
//! addresses and ports of the frame.
//!
//! While nobody watches, a dropped frame costs one relaxed load here. While someone does (the
//! control plane turns it on for a few seconds after every `drops` request), a drop is recorded
//! if the ring's lock is free at that moment; a worker never waits for it, so under a flood the
//! ring holds a sample of the drops, not all of them (the counters still count every one).

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::pipeline::DropReason;
use crate::state::PortId;
use crate::wire::ipv4::{self, Ipv4Packet};
use crate::wire::ipv6::{self, Ipv6Packet};
use crate::wire::{icmp, icmpv6, vnet, EtherType, EthernetFrame};

/// Samples kept; older ones are overwritten.
pub const CAPACITY: usize = 512;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropSample {
    pub seq: u64,
    pub unix_ms: u64,
    /// The port the frame came from.
    pub port: PortId,
    pub reason: DropReason,
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    pub protocol: Option<u8>,
    pub ports: Option<(u16, u16)>,
}

#[derive(Debug, Default)]
struct Ring {
    next_seq: u64,
    samples: VecDeque<DropSample>,
}

#[derive(Debug, Default)]
pub struct DropSampler {
    watching: AtomicBool,
    ring: Mutex<Ring>,
}

impl DropSampler {
    pub fn set_watching(&self, on: bool) {
        self.watching.store(on, Ordering::Relaxed);
    }

    pub fn watching(&self) -> bool {
        self.watching.load(Ordering::Relaxed)
    }

    /// A frame (vnet header first) from `port` was dropped for `reason`; for an ICMP error the
    /// switch answers with, `frame` is that error, which quotes the dropped packet.
    #[inline]
    pub fn sample(&self, port: PortId, reason: DropReason, frame: &[u8]) {
        if self.watching.load(Ordering::Relaxed) {
            self.record(port, reason, frame);
        }
    }

    #[cold]
    fn record(&self, port: PortId, reason: DropReason, frame: &[u8]) {
        let Ok(mut ring) = self.ring.try_lock() else { return };
        let unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let seq = ring.next_seq;
        ring.next_seq += 1;
        let (src, dst, protocol, ports) = match addresses(frame) {
            Some((src, dst, protocol, ports)) => (Some(src), Some(dst), Some(protocol), ports),
            None => (None, None, None, None),
        };
        if ring.samples.len() == CAPACITY {
            ring.samples.pop_front();
        }
        ring.samples.push_back(DropSample { seq, unix_ms, port, reason, src, dst, protocol, ports });
    }

    /// The samples after `after` (a sequence number; 0 for all kept), and the next one to ask
    /// for.
    pub fn since(&self, after: u64) -> (Vec<DropSample>, u64) {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        (ring.samples.iter().filter(|s| s.seq >= after).cloned().collect(), ring.next_seq)
    }
}

/// Source, destination, protocol and (TCP/UDP) ports.
type Addresses = (IpAddr, IpAddr, u8, Option<(u16, u16)>);

/// The addresses of an IP frame; of the quoted packet when the frame is an ICMP error (the
/// switch's answer to the dropped frame).
fn addresses(frame: &[u8]) -> Option<Addresses> {
    let eth = EthernetFrame::new_checked(frame.get(vnet::LEN..)?).ok()?;
    match eth.ethertype() {
        EtherType::Ipv4 => ipv4_addresses(eth.payload()),
        EtherType::Ipv6 => ipv6_addresses(eth.payload()),
        _ => None,
    }
}

fn ipv6_addresses(packet: &[u8]) -> Option<Addresses> {
    let ip = Ipv6Packet::new_checked(packet).ok()?;
    let upper = ip.upper_layer().ok()?;
    let l4 = ip.packet().get(upper.offset..);
    if upper.protocol == ipv6::PROTO_ICMPV6 && l4.and_then(|m| m.first()).is_some_and(|&t| icmpv6::is_error(t)) {
        // An error the switch sent: what it quotes is the dropped packet, maybe cut short (so
        // read field by field): next header at 6, addresses at 8 and 24, ports after 40.
        let quoted = l4?.get(icmpv6::HEADER_LEN..)?;
        let src = Ipv6Addr::from(<[u8; 16]>::try_from(quoted.get(8..24)?).ok()?);
        let dst = Ipv6Addr::from(<[u8; 16]>::try_from(quoted.get(24..40)?).ok()?);
        let protocol = *quoted.get(6)?;
        return Some((src.into(), dst.into(), protocol, l4_ports(protocol, quoted.get(ipv6::HEADER_LEN..))));
    }
    Some((ip.src().into(), ip.dst().into(), upper.protocol, l4_ports(upper.protocol, l4)))
}

fn ipv4_addresses(packet: &[u8]) -> Option<Addresses> {
    let ip = Ipv4Packet::new_checked(packet).ok()?;
    let payload = ip.payload();
    if ip.protocol() == ipv4::PROTO_ICMP && payload.first().is_some_and(|&t| !icmp::is_informational(t)) {
        // The quoted header: version/IHL, ..., protocol at 9, addresses at 12 and 16.
        let quoted = payload.get(icmp::HEADER_LEN..)?;
        let header_len = usize::from(quoted.first()? & 0x0f) * 4;
        let src = Ipv4Addr::from(<[u8; 4]>::try_from(quoted.get(12..16)?).ok()?);
        let dst = Ipv4Addr::from(<[u8; 4]>::try_from(quoted.get(16..20)?).ok()?);
        return Some((src.into(), dst.into(), *quoted.get(9)?, l4_ports(quoted[9], quoted.get(header_len..))));
    }
    Some((ip.src().into(), ip.dst().into(), ip.protocol(), l4_ports(ip.protocol(), Some(payload))))
}

fn l4_ports(protocol: u8, l4: Option<&[u8]>) -> Option<(u16, u16)> {
    if protocol != ipv4::PROTO_TCP && protocol != ipv4::PROTO_UDP {
        return None;
    }
    let p = l4?.get(0..4)?;
    Some((u16::from_be_bytes([p[0], p[1]]), u16::from_be_bytes([p[2], p[3]])))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn udp_frame(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
        let mut frame = vec![0u8; vnet::LEN + 14 + 28];
        frame[vnet::LEN + 12..vnet::LEN + 14].copy_from_slice(&[0x08, 0x00]);
        ipv4::emit_header(&mut frame[vnet::LEN + 14..], src.into(), dst.into(), ipv4::PROTO_UDP, 8, 64);
        frame[vnet::LEN + 34..vnet::LEN + 38].copy_from_slice(&[0x9c, 0x40, 0x00, 0x35]);
        frame
    }

    #[test]
    fn nothing_is_kept_unless_someone_watches_and_the_ring_is_bounded() {
        let sampler = DropSampler::default();
        sampler.sample(3, DropReason::SpoofedSourceIp, &udp_frame([10, 9, 9, 9], [10, 0, 0, 3]));
        assert!(sampler.since(0).0.is_empty());
        sampler.set_watching(true);
        for _ in 0..CAPACITY + 10 {
            sampler.sample(3, DropReason::SpoofedSourceIp, &udp_frame([10, 9, 9, 9], [10, 0, 0, 3]));
        }
        let (all, next) = sampler.since(0);
        assert_eq!((all.len(), next), (CAPACITY, CAPACITY as u64 + 10));
        let s = &all[0];
        assert_eq!((s.port, s.reason), (3, DropReason::SpoofedSourceIp));
        assert_eq!((s.src, s.dst), (Some([10, 9, 9, 9].into()), Some([10, 0, 0, 3].into())));
        assert_eq!((s.protocol, s.ports), (Some(ipv4::PROTO_UDP), Some((40000, 53))));
        assert!(sampler.since(next).0.is_empty(), "nothing new");
        sampler.sample(3, DropReason::TtlExpired, &[0u8; 4]);
        let (new, _) = sampler.since(next);
        assert_eq!((new.len(), new[0].src), (1, None), "a frame that does not parse is still sampled");
    }
}
