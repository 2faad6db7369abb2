//! The pipeline fuzz check: whatever frame arrives on whichever port, what leaves is well
//! formed, a hop older, not spoofed, cut at its IP length, and free of what a hardened router
//! drops (Routing Header type 0, incomplete first fragments, fragments overwriting the first
//! one's headers, atomic fragments from pods), judged by etherparse's reading of it.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

use etherparse::{Ethernet2Slice, IpNumber, Ipv4HeaderSlice, Ipv6ExtensionSlice, Ipv6ExtensionsSlice};
use vswitch::pipeline::{IcmpLimiter, Next, NoTrace, Pipeline};
use vswitch::state::{Fibs, ForwardingState, ForwardingStateBuilder, PortRole};
use vswitch::wire::fragment;
use vswitch::wire::icmpv6::Icmpv6Packet;
use vswitch::wire::ipv4::Ipv4Packet;
use vswitch::wire::ipv6::Ipv6Packet;
use vswitch::wire::vnet::{self, VnetHeader};
use vswitch::wire::{EthernetFrame, MacAddr};

use super::checksum_verifies;

const GW_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
const GW_MAC: MacAddr = MacAddr([2, 0, 0xa9, 0xfe, 1, 1]);
const UP_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 0x99]);

/// Pods A (10.10.1.2, fd00:10::1:2) and B (10.10.1.3, fd00:10::1:3), the host port, an uplink
/// with the VPC subnets and known neighbours, default routes through the VPC gateways.
fn state() -> &'static (ForwardingState, Fibs) {
    static STATE: OnceLock<(ForwardingState, Fibs)> = OnceLock::new();
    STATE.get_or_init(|| {
        let pod = |last| Ipv4Addr::new(10, 10, 1, last);
        let pod6 = |last| Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 1, last);
        let mac = |ip: Ipv4Addr| MacAddr::local_from(ip.octets());
        ForwardingStateBuilder::new(GW_IP, GW_MAC)
            .dual_stack_pod(Some(pod(2)), Some(pod6(2)), mac(pod(2)), 1500)
            .dual_stack_pod(Some(pod(3)), Some(pod6(3)), mac(pod(3)), 1500)
            .host_port(MacAddr([2, 0, 0, 0, 0, 0xee]), 9000)
            .route("10.96.0.0/12".parse().expect("prefix"), 2)
            .route6("fd00:96::/108".parse().expect("prefix"), 2)
            .uplink(
                UP_MAC,
                Some(Ipv4Addr::new(10, 10, 0, 7)),
                "10.10.0.0/16".parse().expect("prefix"),
                Some(Ipv4Addr::new(10, 10, 0, 1)),
                1500,
            )
            .uplink_ipv6(
                Some(Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 7)),
                "fd00:10::/64".parse().expect("prefix"),
                Some(Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 1)),
            )
            .neighbor(Ipv4Addr::new(10, 10, 0, 50), MacAddr([2, 0, 0, 0, 0, 0x50]))
            .neighbor(Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 0x50), MacAddr([2, 0, 0, 0, 0, 0x50]))
            .build()
    })
}

/// The whole pipeline: first byte picks the arrival port (5 is no port), the rest is the vnet
/// header and frame. Nothing panics; what leaves is well formed and ends with its IP packet;
/// forwarded IPv4 has TTL - 1 and IPv6 hop limit - 1, and neither holds what [`fragments_sound`]
/// and [`routing_sound`] refuse; a pod's frame only leaves if its source MAC and IP are the pod's
/// own.
pub fn pipeline(data: &[u8]) {
    let Some((&selector, packet)) = data.split_first() else { return };
    let (state, _) = state();
    let in_port = (selector % 5) as u16;
    let mut buf = vec![0u8; packet.len().max(128) + 128];
    buf[..packet.len()].copy_from_slice(packet);
    let mut pipeline = Pipeline::new(IcmpLimiter::new(1_000_000, 1_000_000));
    let view = state.pin();
    let next = pipeline.process(state, &view, in_port, &mut buf, packet.len(), 0, &mut NoTrace);
    let sent = match next {
        Next::Tx { len, .. } | Next::Respond { len, .. } | Next::Resolve { len, .. } => &buf[..len],
        Next::Drop(_) | Next::ToControl { .. } => return,
    };
    // Well formed: a valid vnet header and Ethernet frame, and valid IPv4 when IPv4.
    VnetHeader::parse(&sent[..vnet::LEN], sent.len() - vnet::LEN).expect("valid vnet header out");
    // The switch answers for layers 2 and 3 (it does not parse L4): check those.
    let frame = &sent[vnet::LEN..];
    let eth = Ethernet2Slice::from_slice_without_fcs(frame).expect("etherparse reads the Ethernet header we send");
    let arrived = &packet[vnet::LEN.min(packet.len())..];
    let forwarded = matches!(next, Next::Tx { .. } | Next::Resolve { .. });
    let from_pod = matches!(state.port(in_port).map(|p| &p.role), Some(PortRole::Pod { .. }));
    if eth.ether_type() == etherparse::EtherType::IPV4 {
        let slice = Ipv4HeaderSlice::from_slice(eth.payload_slice()).expect("etherparse reads the IPv4 header we send");
        assert!(checksum_verifies(slice.slice()), "bad checksum out");
        assert_eq!(slice.total_len() as usize, eth.payload_slice().len(), "bytes past the IPv4 packet left");
        let header = slice.to_header();
        if forwarded {
            // Forwarded: the same packet, one hop older.
            let original = Ipv4Packet::new_checked(&arrived[14..]).expect("forwarded only valid IPv4");
            assert_eq!(header.time_to_live + 1, original.ttl(), "TTL not decremented");
            assert_eq!(header.source, original.src().octets());
            let offset = header.fragment_offset.byte_offset() as usize;
            let first = header.more_fragments && offset == 0;
            let transport = eth.payload_slice().len() - slice.slice().len();
            fragments_sound(first, offset, header.protocol.0, transport);
        }
    } else if eth.ether_type() == etherparse::EtherType::IPV6 {
        // The fixed header only: a later fragment is forwarded without walking what follows its
        // Fragment header (a router does not), so its "extension headers" may be anything.
        let header = etherparse::Ipv6HeaderSlice::from_slice(eth.payload_slice())
            .expect("etherparse reads the IPv6 header we send")
            .to_header();
        let payload = &eth.payload_slice()[40..];
        assert_eq!(header.payload_length as usize, payload.len(), "bytes past the IPv6 packet left");
        if forwarded {
            ipv6_chain_sound(header.next_header, payload, from_pod);
        }
        if forwarded && u16::from(EthernetFrame::new_checked(arrived).expect("parsed").ethertype()) == 0x86dd {
            let original = Ipv6Packet::new_checked(&arrived[14..]).expect("forwarded only valid IPv6");
            if header.source == original.src().octets() && header.destination == original.dst().octets() {
                // Forwarded (not an answer the switch wrote): one hop older.
                assert_eq!(header.hop_limit + 1, original.hop_limit(), "hop limit not decremented");
            }
        }
        if header.next_header == IpNumber::IPV6_ICMP && !forwarded {
            // An error the switch wrote: it verifies.
            let icmp = Icmpv6Packet::new_checked(&payload[..header.payload_length as usize]).expect("ICMPv6 out");
            assert!(icmp.verify_checksum(header.source.into(), header.destination.into()), "bad ICMPv6 checksum out");
        }
    } else if eth.ether_type() == etherparse::EtherType::ARP {
        etherparse::ArpPacketSlice::from_slice(eth.payload_slice()).expect("etherparse reads the ARP we send");
    }
    // Port security: nothing from a pod leaves unless it came from the pod's own addresses
    // (ICMP errors and ARP replies go back to the pod itself).
    if let Some(PortRole::Pod { ip, ipv6, mac }) = state.port(in_port).map(|p| &p.role) {
        let eth = EthernetFrame::new_checked(arrived).expect("sent something, so it parsed");
        assert_eq!(eth.src(), *mac, "a spoofed source MAC left the switch");
        let forwarded = matches!(next, Next::Tx { port, .. } | Next::Resolve { port, .. } if port != in_port);
        if let Ok(original) = Ipv4Packet::new_checked(&arrived[14..]) {
            if forwarded && u16::from(eth.ethertype()) == 0x0800 {
                assert_eq!(Some(original.src()), *ip, "a spoofed source IP left the switch");
            }
        }
        if let Ok(original) = Ipv6Packet::new_checked(&arrived[14..]) {
            if forwarded && u16::from(eth.ethertype()) == 0x86dd {
                assert_eq!(Some(original.src()), *ipv6, "a spoofed source IPv6 address left the switch");
            }
        }
    }
}

/// A forwarded IPv6 packet's chain as etherparse walks it (as far as it can: after a later
/// fragment's Fragment header it reads data as headers, so only what comes before counts): no
/// Routing Header type 0 with segments left, fragments sound, no atomic fragment from a pod.
fn ipv6_chain_sound(next_header: IpNumber, payload: &[u8], from_pod: bool) {
    let (chain, upper, rest, error) = Ipv6ExtensionsSlice::from_slice_lax(next_header, payload);
    for header in chain.clone().into_iter() {
        match header {
            Ipv6ExtensionSlice::Routing(routing) => routing_sound(routing.slice()),
            Ipv6ExtensionSlice::Fragment(f) => {
                let offset = f.fragment_offset().byte_offset() as usize;
                assert!(!(from_pod && offset == 0 && !f.more_fragments()), "an atomic fragment from a pod left");
                if offset != 0 {
                    fragments_sound(false, offset, f.next_header().0, 0);
                    return;
                }
                if f.more_fragments() {
                    assert!(error.is_none(), "a first fragment with a broken chain left: {error:?}");
                    fragments_sound(true, 0, upper.0, rest.len());
                }
            }
            _ => {}
        }
    }
}

/// RFC 5095: type 0 with segments left is never forwarded.
fn routing_sound(header: &[u8]) {
    assert!(!(header[2] == 0 && header[3] > 0), "a Routing Header type 0 with segments left left");
}

/// A first fragment holds `upper_bytes` of its upper layer `protocol`: at least its header (RFC
/// 7112, RFC 1858); a later one at `offset` starts past that header.
fn fragments_sound(first: bool, offset: usize, protocol: u8, upper_bytes: usize) {
    let floor = fragment::header_floor(protocol);
    if first {
        assert!(upper_bytes >= floor, "a first fragment with {upper_bytes} bytes of protocol {protocol} left");
    }
    assert!(
        offset == 0 || offset >= floor,
        "a fragment at {offset} over the first one's protocol {protocol} headers left"
    );
}
