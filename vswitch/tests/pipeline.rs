//! The pipeline on every path and every drop reason, with frames built by etherparse and every
//! frame it sends parsed back by etherparse (an independent implementation).

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use etherparse::{PacketBuilder, SlicedPacket};
use vswitch::datapath::{Forwarder, PortQueues, Snapshot, WorkerStats};
use vswitch::pipeline::{DropReason, IcmpLimiter, Next, NoTrace, Pipeline, Trace};
use vswitch::port::{MemoryPort, NoUdpGso, PortQueue};
use vswitch::state::{Fibs, ForwardingState, ForwardingStateBuilder, PortRateLimit, PortRole};
use vswitch::wire::vnet::{self, VnetHeader};
use vswitch::wire::MacAddr;

#[path = "pipeline/hardening.rs"]
mod hardening;
#[path = "pipeline/ipv6.rs"]
mod ipv6;
#[path = "pipeline/udp_gso.rs"]
mod udp_gso;

const GW_IP: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 1);
const GW_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 1]);
const HOST_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0xee]);
const A_IP: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 2);
const A_MAC: MacAddr = MacAddr([0x02, 0, 10, 10, 1, 2]);
const B_IP: Ipv4Addr = Ipv4Addr::new(10, 10, 1, 3);
const B_MAC: MacAddr = MacAddr([0x02, 0, 10, 10, 1, 3]);
const VM_IP: Ipv4Addr = Ipv4Addr::new(10, 10, 9, 9);
const A: u16 = 0;
const B: u16 = 1;
const HOST: u16 = 2;

/// Pods A and B (ports 0 and 1, MTU 1500) and the host port (2, MTU 9000), no other routes.
fn base() -> ForwardingStateBuilder {
    ForwardingStateBuilder::new(GW_IP, GW_MAC).pod(A_IP, A_MAC, 1500).pod(B_IP, B_MAC, 1500).host_port(HOST_MAC, 9000)
}

struct Switch {
    state: ForwardingState,
    fib: Fibs,
    pipeline: Pipeline,
}

impl Switch {
    /// Pods A and B (MTU 1500) and the host port; the host adjacency is the default route.
    fn new() -> Switch {
        Switch::from(base().route("0.0.0.0/0".parse().unwrap(), HOST))
    }

    fn from(builder: ForwardingStateBuilder) -> Switch {
        let (state, fib) = builder.build();
        Switch { state, fib, pipeline: Pipeline::new(IcmpLimiter::new(1000, 10)) }
    }

    fn send(&mut self, port: u16, buf: &mut Vec<u8>) -> Next {
        let len = buf.len();
        buf.resize(len + 128, 0); // room for an ICMP error longer than the offending frame
        let view = self.state.pin();
        self.pipeline.process(&self.state, &view, port, buf, len, 0, &mut NoTrace)
    }
}

fn with_vnet(vnet: VnetHeader, frame: Vec<u8>) -> Vec<u8> {
    let mut buf = vec![0u8; vnet::LEN];
    vnet.write(&mut buf);
    buf.extend(frame);
    buf
}

fn icmp_echo(src_mac: MacAddr, dst_mac: MacAddr, src: Ipv4Addr, dst: Ipv4Addr, ttl: u8, payload: usize) -> Vec<u8> {
    let builder =
        PacketBuilder::ethernet2(src_mac.0, dst_mac.0).ipv4(src.octets(), dst.octets(), ttl).icmpv4_echo_request(1, 1);
    let payload = vec![0xab; payload];
    let mut frame = Vec::new();
    builder.write(&mut frame, &payload).unwrap();
    with_vnet(VnetHeader::default(), frame)
}

fn arp(src_mac: MacAddr, op: u16, sender: (MacAddr, Ipv4Addr), target_ip: Ipv4Addr) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(&MacAddr::BROADCAST.0);
    frame.extend_from_slice(&src_mac.0);
    frame.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, op as u8]);
    frame.extend_from_slice(&sender.0 .0);
    frame.extend_from_slice(&sender.1.octets());
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&target_ip.octets());
    with_vnet(VnetHeader::default(), frame)
}

/// Parses what the switch sent and returns (src MAC, dst MAC, IPv4 src, dst, TTL).
fn sent_ipv4(buf: &[u8], len: usize) -> (MacAddr, MacAddr, Ipv4Addr, Ipv4Addr, u8) {
    let p = SlicedPacket::from_ethernet(&buf[vnet::LEN..len]).expect("the switch sent a well-formed frame");
    let Some(etherparse::LinkSlice::Ethernet2(eth)) = p.link else { panic!("not Ethernet II") };
    let ip = match p.net.unwrap() {
        etherparse::NetSlice::Ipv4(ip) => ip.header().to_header(),
        _ => panic!("not IPv4"),
    };
    let expected = ip.calc_header_checksum();
    assert_eq!(ip.header_checksum, expected, "header checksum after rewrite");
    (MacAddr(eth.source()), MacAddr(eth.destination()), ip.source.into(), ip.destination.into(), ip.time_to_live)
}

#[test]
fn pod_to_pod_is_routed_with_macs_rewritten_and_ttl_decremented() {
    let mut sw = Switch::new();
    let mut buf = icmp_echo(A_MAC, GW_MAC, A_IP, B_IP, 64, 56);
    let Next::Tx { port, len } = sw.send(A, &mut buf) else { panic!("not forwarded") };
    assert_eq!(port, B);
    assert_eq!(sent_ipv4(&buf, len), (GW_MAC, B_MAC, A_IP, B_IP, 63));
}

#[test]
fn pod_to_node_and_beyond_goes_to_the_host_port_and_back() {
    let mut sw = Switch::new();
    let mut buf = icmp_echo(A_MAC, GW_MAC, A_IP, VM_IP, 64, 10);
    let Next::Tx { port, len } = sw.send(A, &mut buf) else { panic!("not forwarded") };
    assert_eq!((port, sent_ipv4(&buf, len)), (HOST, (GW_MAC, HOST_MAC, A_IP, VM_IP, 63)));
    // The node's stack answers from anywhere (no port security on the host port).
    let mut buf = icmp_echo(HOST_MAC, GW_MAC, VM_IP, A_IP, 63, 10);
    let Next::Tx { port, len } = sw.send(HOST, &mut buf) else { panic!("not forwarded") };
    assert_eq!((port, sent_ipv4(&buf, len)), (A, (GW_MAC, A_MAC, VM_IP, A_IP, 62)));
}

#[test]
fn a_64k_tso_frame_crosses_unsegmented() {
    let mut sw = Switch::new();
    let builder =
        PacketBuilder::ethernet2(A_MAC.0, GW_MAC.0).ipv4(A_IP.octets(), B_IP.octets(), 64).tcp(40000, 5201, 1, 65535);
    let mut frame = Vec::new();
    builder.write(&mut frame, &vec![7u8; 65000]).unwrap();
    let tso = VnetHeader {
        flags: vnet::FLAG_NEEDS_CSUM,
        gso_type: vnet::GSO_TCPV4,
        hdr_len: 54,
        gso_size: 1448,
        csum_start: 34,
        csum_offset: 16,
    };
    let mut buf = with_vnet(tso, frame);
    let original_len = buf.len();
    let Next::Tx { port, len } = sw.send(A, &mut buf) else { panic!("not forwarded") };
    assert_eq!((port, len), (B, original_len), "one frame in, the same one frame out");
    assert_eq!(VnetHeader::parse(&buf[..vnet::LEN], len - vnet::LEN).unwrap(), tso, "offload metadata kept");
}

#[test]
fn arp_from_pods_is_answered_by_the_gateway_except_for_their_own_address() {
    let mut sw = Switch::new();
    for target in [GW_IP, B_IP, VM_IP] {
        let mut buf = arp(A_MAC, 1, (A_MAC, A_IP), target);
        let Next::Tx { port, len } = sw.send(A, &mut buf) else { panic!("no reply for {target}") };
        assert_eq!(port, A);
        let p = SlicedPacket::from_ethernet(&buf[vnet::LEN..len]).unwrap();
        let Some(etherparse::NetSlice::Arp(reply)) = p.net else { panic!("not ARP") };
        assert_eq!(reply.operation(), etherparse::ArpOperation::REPLY);
        assert_eq!((reply.sender_hw_addr(), reply.sender_protocol_addr()), (&GW_MAC.0[..], &target.octets()[..]));
        assert_eq!(reply.target_hw_addr(), &A_MAC.0[..]);
    }
    // Duplicate address detection: a probe (sender 0.0.0.0) or announcement for its own IP
    // must stay unanswered.
    let mut buf = arp(A_MAC, 1, (A_MAC, Ipv4Addr::UNSPECIFIED), A_IP);
    assert_eq!(sw.send(A, &mut buf), Next::Drop(DropReason::ArpOwnAddress));
    let mut buf = arp(A_MAC, 1, (A_MAC, A_IP), A_IP);
    assert_eq!(sw.send(A, &mut buf), Next::Drop(DropReason::ArpOwnAddress));
}

#[test]
fn arp_on_the_host_port_is_answered_for_local_pods_only() {
    let mut sw = Switch::new();
    let mut buf = arp(HOST_MAC, 1, (HOST_MAC, Ipv4Addr::new(10, 10, 0, 5)), B_IP);
    assert!(matches!(sw.send(HOST, &mut buf), Next::Tx { port: HOST, .. }));
    let mut buf = arp(HOST_MAC, 1, (HOST_MAC, Ipv4Addr::new(10, 10, 0, 5)), VM_IP);
    assert_eq!(sw.send(HOST, &mut buf), Next::Drop(DropReason::ArpNotOurs));
}

#[test]
fn ttl_expiry_sends_time_exceeded_back_to_the_sender() {
    let mut sw = Switch::new();
    let mut buf = icmp_echo(A_MAC, GW_MAC, A_IP, B_IP, 1, 20);
    let Next::Respond { reason, port, len } = sw.send(A, &mut buf) else { panic!("no ICMP error") };
    assert_eq!((reason, port), (DropReason::TtlExpired, A));
    assert_eq!(sent_ipv4(&buf, len), (GW_MAC, A_MAC, GW_IP, A_IP, 64));
    let p = SlicedPacket::from_ethernet(&buf[vnet::LEN..len]).unwrap();
    let Some(etherparse::TransportSlice::Icmpv4(icmp)) = p.transport else { panic!("not ICMP") };
    assert!(matches!(icmp.icmp_type(), etherparse::Icmpv4Type::TimeExceeded(_)));
}

#[test]
fn too_big_with_df_gets_fragmentation_needed_with_the_mtu() {
    let mut sw = Switch::new();
    // etherparse sets DF on the packets it builds.
    let mut buf = icmp_echo(HOST_MAC, GW_MAC, VM_IP, A_IP, 64, 3000);
    let Next::Respond { reason, port, len } = sw.send(HOST, &mut buf) else { panic!("no ICMP error") };
    assert_eq!((reason, port), (DropReason::FragmentationNeeded, HOST));
    let p = SlicedPacket::from_ethernet(&buf[vnet::LEN..len]).unwrap();
    let Some(etherparse::TransportSlice::Icmpv4(icmp)) = p.transport else { panic!("not ICMP") };
    let etherparse::Icmpv4Type::DestinationUnreachable(
        etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu },
    ) = icmp.icmp_type()
    else {
        panic!("not fragmentation needed: {:?}", icmp.icmp_type())
    };
    assert_eq!(next_hop_mtu, 1500);
    // A GSO frame is judged by its segments: 20 + 20 bytes of headers + 1460 fits in 1500, one
    // more byte does not. The headers are measured in the packet: hdr_len is what the kernel
    // reports on receive, the skb's linear length, here 1000 bytes (headers and payload).
    let builder =
        PacketBuilder::ethernet2(HOST_MAC.0, GW_MAC.0).ipv4(VM_IP.octets(), A_IP.octets(), 64).tcp(1, 2, 3, 4);
    let mut frame = Vec::new();
    builder.write(&mut frame, &vec![0u8; 20000]).unwrap();
    let gso = |size| VnetHeader { gso_type: vnet::GSO_TCPV4, gso_size: size, hdr_len: 1000, ..Default::default() };
    assert!(matches!(sw.send(HOST, &mut with_vnet(gso(1460), frame.clone())), Next::Tx { port: A, .. }));
    assert!(matches!(
        sw.send(HOST, &mut with_vnet(gso(1461), frame)),
        Next::Respond { reason: DropReason::FragmentationNeeded, .. }
    ));
}

#[test]
fn icmp_errors_are_rate_limited() {
    let mut sw = Switch::new();
    sw.pipeline = Pipeline::new(IcmpLimiter::new(1, 2));
    let results: Vec<_> = (0..4).map(|_| sw.send(A, &mut icmp_echo(A_MAC, GW_MAC, A_IP, B_IP, 0, 8))).collect();
    assert!(matches!(results[0], Next::Respond { .. }) && matches!(results[1], Next::Respond { .. }));
    // Held back, the packet still counts as what it was; the pipeline tallies the unsent errors.
    assert_eq!(results[2], Next::Drop(DropReason::TtlExpired));
    assert_eq!(sw.pipeline.take_icmp_suppressed(), 2);
    assert_eq!(sw.pipeline.take_icmp_suppressed(), 0);
}

/// Overwrites bytes of the IPv4 header (`offset` from its start) and makes its checksum valid
/// again.
fn patch_ipv4(mut buf: Vec<u8>, offset: usize, bytes: &[u8]) -> Vec<u8> {
    let ip = vnet::LEN + 14;
    buf[ip + offset..ip + offset + bytes.len()].copy_from_slice(bytes);
    buf[ip + 10..ip + 12].fill(0);
    let c = etherparse::Ipv4HeaderSlice::from_slice(&buf[ip..]).unwrap().to_header().calc_header_checksum();
    buf[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
    buf
}

/// An echo request from A to B turned into another ICMP type (the pipeline reads only the type).
fn icmp_of_type(kind: u8, ttl: u8, payload: usize) -> Vec<u8> {
    let mut buf = icmp_echo(A_MAC, GW_MAC, A_IP, B_IP, ttl, payload);
    buf[vnet::LEN + 14 + 20] = kind;
    buf
}

#[test]
fn no_icmp_error_about_an_icmp_error() {
    let mut sw = Switch::new();
    // Destination unreachable, source quench, redirect, time exceeded, parameter problem, and a
    // type nobody defined: dropped, no error back.
    for kind in [3, 4, 5, 11, 12, 42] {
        assert_eq!(sw.send(A, &mut icmp_of_type(kind, 1, 20)), Next::Drop(DropReason::TtlExpired), "type {kind}");
    }
    // Queries and their answers still earn one.
    for kind in [0, 8, 13, 17] {
        let next = sw.send(A, &mut icmp_of_type(kind, 1, 20));
        assert!(matches!(next, Next::Respond { reason: DropReason::TtlExpired, .. }), "type {kind}: {next:?}");
    }
    // Too big with DF: an error is dropped without fragmentation-needed.
    let mut big = icmp_echo(HOST_MAC, GW_MAC, VM_IP, A_IP, 64, 3000);
    big[vnet::LEN + 14 + 20] = 3;
    assert_eq!(sw.send(HOST, &mut big), Next::Drop(DropReason::FragmentationNeeded));
}

#[test]
fn no_icmp_error_about_a_later_fragment() {
    let mut sw = Switch::new();
    // Offset 185 (1480 bytes), more fragments.
    let later = patch_ipv4(icmp_echo(A_MAC, GW_MAC, A_IP, B_IP, 1, 20), 6, &[0x20, 0xb9]);
    assert_eq!(sw.send(A, &mut later.clone()), Next::Drop(DropReason::TtlExpired));
    let last = patch_ipv4(icmp_echo(A_MAC, GW_MAC, A_IP, B_IP, 1, 20), 6, &[0x00, 0xb9]);
    assert_eq!(sw.send(A, &mut last.clone()), Next::Drop(DropReason::TtlExpired));
    // The first fragment (offset 0, more fragments) does get one.
    let first = patch_ipv4(icmp_echo(A_MAC, GW_MAC, A_IP, B_IP, 1, 20), 6, &[0x20, 0x00]);
    assert!(matches!(sw.send(A, &mut first.clone()), Next::Respond { reason: DropReason::TtlExpired, .. }));
    // Too big, DF and a later fragment (a sender's own bug): no fragmentation-needed either.
    let big = patch_ipv4(icmp_echo(HOST_MAC, GW_MAC, VM_IP, A_IP, 64, 3000), 6, &[0x40, 0xb9]);
    assert_eq!(sw.send(HOST, &mut big.clone()), Next::Drop(DropReason::FragmentationNeeded));
}

#[test]
fn no_icmp_error_about_broadcast_or_multicast() {
    let mut sw = Switch::new();
    for dst in [Ipv4Addr::BROADCAST, Ipv4Addr::new(224, 0, 0, 251), Ipv4Addr::new(239, 1, 2, 3)] {
        let mut buf = icmp_echo(A_MAC, GW_MAC, A_IP, dst, 1, 20);
        assert_eq!(sw.send(A, &mut buf), Next::Drop(DropReason::TtlExpired), "to {dst}");
    }
    // The host port has no source check, so it can carry these sources.
    for src in [Ipv4Addr::BROADCAST, Ipv4Addr::new(224, 0, 0, 1), Ipv4Addr::UNSPECIFIED] {
        let mut buf = icmp_echo(HOST_MAC, GW_MAC, src, A_IP, 1, 20);
        assert_eq!(sw.send(HOST, &mut buf), Next::Drop(DropReason::TtlExpired), "from {src}");
        let mut big = icmp_echo(HOST_MAC, GW_MAC, src, A_IP, 64, 3000);
        assert_eq!(sw.send(HOST, &mut big), Next::Drop(DropReason::FragmentationNeeded), "from {src}");
    }
    // A link-layer group address as the sender: the error would go to a group.
    let mut buf = icmp_echo(MacAddr([0x03, 0, 0, 0, 0, 0xee]), GW_MAC, VM_IP, A_IP, 1, 20);
    assert_eq!(sw.send(HOST, &mut buf), Next::Drop(DropReason::TtlExpired));
    // Nothing suppressed counts against the rate limit.
    assert_eq!(sw.pipeline.take_icmp_suppressed(), 0);
}

/// Flips one byte of a valid echo from A to B (frame offset, after the vnet header).
fn corrupted(offset: usize, value: u8) -> Vec<u8> {
    let mut buf = icmp_echo(A_MAC, GW_MAC, A_IP, B_IP, 64, 8);
    buf[vnet::LEN + offset] = value;
    buf
}

#[test]
fn every_drop_reason_is_reachable_and_named() {
    let mut sw = Switch::new();
    let mut seen = HashSet::new();
    let mut check = |port, mut buf: Vec<u8>, reason| {
        assert_eq!(sw.send(port, &mut buf), Next::Drop(reason), "{reason:?}");
        seen.insert(reason);
    };
    check(A, vec![0; 5], DropReason::BadVnetHeader);
    check(A, with_vnet(VnetHeader { flags: 0x40, ..Default::default() }, vec![0; 60]), DropReason::BadVnetHeader);
    check(A, with_vnet(VnetHeader::default(), vec![0; 13]), DropReason::FrameTooShort);
    check(A, corrupted(6, 0x66), DropReason::SpoofedSourceMac);
    check(A, corrupted(12, 0x81), DropReason::VlanTagged);
    check(
        A,
        corrupted(13, 0xcc).iter().enumerate().map(|(i, &b)| if i == vnet::LEN + 12 { 0x88 } else { b }).collect(),
        DropReason::UnsupportedEtherType,
    );
    check(A, corrupted(0, 0xff), DropReason::NotOurMac);
    check(A, icmp_echo(A_MAC, GW_MAC, A_IP, B_IP, 64, 8)[..vnet::LEN + 14 + 19].to_vec(), DropReason::Ipv4Truncated);
    check(A, corrupted(14, 0x65), DropReason::Ipv4BadVersion);
    check(A, corrupted(14, 0x43), DropReason::Ipv4BadHeaderLength);
    check(A, corrupted(17, 0xff), DropReason::Ipv4BadTotalLength);
    check(A, corrupted(24, 0x00), DropReason::Ipv4BadChecksum);
    check(A, icmp_echo(A_MAC, GW_MAC, B_IP, VM_IP, 64, 8), DropReason::SpoofedSourceIp);
    check(A, icmp_echo(A_MAC, GW_MAC, A_IP, A_IP, 64, 8), DropReason::Hairpin);
    check(A, arp(A_MAC, 1, (A_MAC, A_IP), GW_IP)[..vnet::LEN + 14 + 20].to_vec(), DropReason::ArpMalformed);
    check(A, arp(A_MAC, 1, (B_MAC, A_IP), GW_IP), DropReason::ArpSpoofed);
    check(A, arp(A_MAC, 1, (A_MAC, B_IP), GW_IP), DropReason::ArpSpoofed);
    check(A, arp(A_MAC, 2, (A_MAC, A_IP), B_IP), DropReason::ArpReplyFromPod);
    check(A, arp(A_MAC, 1, (A_MAC, A_IP), A_IP), DropReason::ArpOwnAddress);
    check(HOST, arp(HOST_MAC, 1, (HOST_MAC, Ipv4Addr::new(10, 10, 0, 5)), VM_IP), DropReason::ArpNotOurs);
    check(7, icmp_echo(A_MAC, GW_MAC, A_IP, B_IP, 64, 8), DropReason::PortDown);
    check(A, icmp_of_type(3, 1, 8), DropReason::TtlExpired); // an ICMP error: no error back
    let mut big = icmp_echo(HOST_MAC, GW_MAC, VM_IP, A_IP, 64, 3000);
    big[vnet::LEN + 14 + 20] = 3; // an ICMP error, so no error comes back about it
    check(HOST, big, DropReason::FragmentationNeeded);
    // Without DF the switch would have to fragment, which it does not do.
    let mut big = icmp_echo(HOST_MAC, GW_MAC, VM_IP, A_IP, 64, 3000);
    big[vnet::LEN + 14 + 6] = 0; // clear DF
    let c = {
        big[vnet::LEN + 24..vnet::LEN + 26].fill(0);
        etherparse::Ipv4HeaderSlice::from_slice(&big[vnet::LEN + 14..]).unwrap().to_header().calc_header_checksum()
    };
    big[vnet::LEN + 24..vnet::LEN + 26].copy_from_slice(&c.to_be_bytes());
    check(HOST, big, DropReason::FragmentationUnsupported);
    // No route once the default is gone.
    sw.fib.v4.remove(&"0.0.0.0/0".parse().unwrap());
    sw.fib.v4.publish();
    let mut buf = icmp_echo(A_MAC, GW_MAC, A_IP, VM_IP, 64, 8);
    assert_eq!(sw.send(A, &mut buf), Next::Drop(DropReason::NoRoute));
    seen.insert(DropReason::NoRoute);
    // A length beyond the buffer (a port that failed to refuse the frame).
    let mut buf = icmp_echo(A_MAC, GW_MAC, A_IP, B_IP, 64, 8);
    let view = sw.state.pin();
    let next = sw.pipeline.process(&sw.state, &view, A, &mut buf, 100_000, 0, &mut NoTrace);
    assert_eq!(next, Next::Drop(DropReason::FrameTooLong));
    seen.insert(DropReason::FrameTooLong);
    drop(view);

    seen.extend(ipv6::drop_reasons());
    seen.extend(hardening::drop_reasons());
    // The rest are counted around the pipeline, by the forwarder.
    seen.extend(forwarder_drops());

    // Produced only outside the datapath, so no frame given to the forwarder can cause them.
    let elsewhere: &[(DropReason, &str)] = &[
        (DropReason::NeighborUnresolved, "the control plane, when ARP for a waiting packet's next hop gives up"),
        (DropReason::NeighborQueueFull, "the control plane, when too many packets wait for one next hop"),
        (DropReason::RxOverflow, "the worker loop, from the kernel's PACKET_STATISTICS on the uplink"),
    ];
    for &reason in DropReason::ALL {
        let why = elsewhere.iter().find(|(r, _)| *r == reason);
        match (seen.contains(&reason), why) {
            (true, None) | (false, Some(_)) => {}
            (false, None) => panic!("no input produces {reason:?} ({})", reason.name()),
            (true, Some(_)) => panic!("{reason:?} is produced here: take it off the list of others' reasons"),
        }
    }
}

/// Runs frames through a [`Forwarder`] on in-memory ports (pods A and B, the host, the uplink
/// without resolved neighbours) and returns the drop reasons it counted.
fn forwarder_drops() -> HashSet<DropReason> {
    let sw = with_uplink(&[]);
    let ports: Vec<Arc<MemoryPort>> = (0..4).map(|_| Arc::new(MemoryPort::default())).collect();
    let mut queues: Vec<Option<PortQueues>> =
        ports.iter().map(|p| Some(Arc::from(vec![p.clone() as Arc<dyn PortQueue>]))).collect();
    queues[HOST as usize] = None; // attached, but its queues are gone
                                  // B takes no UDP GSO frames whole: the forwarder cuts them into datagrams for it.
    queues[B as usize] = Some(Arc::from(vec![Arc::new(NoUdpGso(ports[B as usize].clone())) as Arc<dyn PortQueue>]));
    let snapshot = Snapshot { generation: 1, forwarding: sw.state.clone(), queues };
    // A slow path with room for one packet, an ICMP budget of none.
    let (slow_path, _slow_rx) = tokio::sync::mpsc::channel(1);
    let stats = Arc::new(WorkerStats::default());
    let mut forwarder = Forwarder::new(0, stats.clone(), Pipeline::new(IcmpLimiter::new(0, 0)), slow_path);
    let mut run = |port: u16, frame: Vec<u8>| {
        ports[port as usize].push(frame);
        forwarder.forward_batch(&snapshot, port, &*ports[port as usize]);
    };
    run(A, vec![0; vswitch::pipeline::MAX_FRAME + 1]); // frame_too_long
    run(A, icmp_echo(A_MAC, GW_MAC, A_IP, B_IP, 1, 8)); // ttl_expired, and its error rate-limited
    run(A, icmp_echo(A_MAC, GW_MAC, A_IP, Ipv4Addr::new(192, 0, 2, 9), 64, 8)); // port_down (host)
    run(A, icmp_echo(A_MAC, GW_MAC, A_IP, VM_IP, 64, 8)); // to the slow path, which is now full
    run(A, icmp_echo(A_MAC, GW_MAC, A_IP, VM_IP, 64, 8)); // slow_path_full
    ports[B as usize].fail_sends(Some(std::io::ErrorKind::WouldBlock));
    run(A, icmp_echo(A_MAC, GW_MAC, A_IP, B_IP, 64, 8)); // tx_queue_full
    ports[B as usize].fail_sends(Some(std::io::ErrorKind::BrokenPipe));
    run(A, icmp_echo(A_MAC, GW_MAC, A_IP, B_IP, 64, 8)); // tx_error
    ports[B as usize].fail_sends(None);
    // A UDP GSO frame the pipeline passes but that cannot be cut (its checksum offset is TCP's).
    let mut uncuttable = udp_gso::frame(IpAddr::V4(B_IP), &[7; 3000], 1400);
    uncuttable[8] = 16;
    run(A, uncuttable); // udp_gso_malformed
                        // Nothing refills at 1 bit/s: the first frame into B empties its bucket, the next ones wait
                        // in the delay queue, and once that holds its bound (256 KiB) the rest are rate_limited.
    let mut snapshot = snapshot;
    let limit = Arc::new(PortRateLimit::new(Some(1), None, 8));
    snapshot.forwarding.ports[B as usize].as_mut().unwrap().rate_limit = Some(limit);
    for _ in 0..200 {
        ports[A as usize].push(icmp_echo(A_MAC, GW_MAC, A_IP, B_IP, 64, 1400));
    }
    for _ in 0..200 / vswitch::datapath::BATCH + 1 {
        forwarder.forward_batch(&snapshot, A, &*ports[A as usize]);
    }
    DropReason::ALL.iter().copied().filter(|&r| stats.drops(r) > 0).collect()
}

#[test]
fn trace_names_each_stage() {
    let sw = Switch::new();
    let mut pipeline = Pipeline::new(IcmpLimiter::new(10, 10));
    let mut buf = icmp_echo(A_MAC, GW_MAC, A_IP, B_IP, 64, 8);
    let len = buf.len();
    let mut trace = Trace::default();
    let view = sw.state.pin();
    let next = pipeline.process(&sw.state, &view, A, &mut buf, len, 0, &mut trace);
    assert!(matches!(next, Next::Tx { port: B, .. }));
    let stages: Vec<_> = trace.steps.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(stages, ["vnet", "ethernet", "ipv4", "fib", "rewrite"]);
    assert!(trace.steps[3].1.contains("adjacency 1"), "{:?}", trace.steps[3]);
}

const UPLINK: u16 = 3;
const UP_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x99]);
const VPC_GW: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 1);
const VM_MAC: MacAddr = MacAddr([0x02, 0, 0, 0, 0, 0x42]);
/// The uplink NIC's own address on the VPC subnet.
const UP_IP: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 7);

/// The same switch with a dedicated uplink: the VPC subnet on it (ARP per destination), the
/// default route through the VPC gateway, and nothing else to the host port.
fn with_uplink(known_neighbors: &[(Ipv4Addr, MacAddr)]) -> Switch {
    let builder = base().uplink(UP_MAC, Some(UP_IP), "10.10.0.0/16".parse().unwrap(), Some(VPC_GW), 1500);
    let builder = known_neighbors.iter().fold(builder, |b, &(ip, mac)| b.neighbor(ip, mac));
    assert_eq!(builder.next_port(), UPLINK + 1);
    Switch::from(builder)
}

#[test]
fn the_uplink_answers_arp_for_local_pods_only_and_passes_replies_to_the_control_plane() {
    let mut sw = with_uplink(&[]);
    let mut buf = arp(VM_MAC, 1, (VM_MAC, VM_IP), A_IP);
    let Next::Tx { port: UPLINK, len } = sw.send(UPLINK, &mut buf) else { panic!("no reply") };
    let p = SlicedPacket::from_ethernet(&buf[vnet::LEN..len]).unwrap();
    let Some(etherparse::NetSlice::Arp(reply)) = p.net else { panic!("not ARP") };
    assert_eq!((reply.sender_hw_addr(), reply.sender_protocol_addr()), (&UP_MAC.0[..], &A_IP.octets()[..]));
    let mut buf = arp(VM_MAC, 1, (VM_MAC, VM_IP), Ipv4Addr::new(10, 10, 7, 7));
    assert_eq!(sw.send(UPLINK, &mut buf), Next::Drop(DropReason::ArpNotOurs));
    let mut buf = arp(VM_MAC, 2, (VM_MAC, VM_IP), A_IP);
    assert!(matches!(sw.send(UPLINK, &mut buf), Next::ToControl { .. }));
    // A host announcing its address (a gratuitous request) goes to the control plane too, which
    // moves the neighbour if it knows it; a probe (sender 0.0.0.0) does not.
    let mut buf = arp(VM_MAC, 1, (VM_MAC, VM_IP), VM_IP);
    assert!(matches!(sw.send(UPLINK, &mut buf), Next::ToControl { .. }));
    let mut buf = arp(VM_MAC, 1, (VM_MAC, Ipv4Addr::UNSPECIFIED), Ipv4Addr::UNSPECIFIED);
    assert_eq!(sw.send(UPLINK, &mut buf), Next::Drop(DropReason::ArpNotOurs));
}

#[test]
fn pod_traffic_to_the_vpc_waits_for_arp_then_leaves_on_the_uplink() {
    let mut sw = with_uplink(&[]);
    let mut buf = icmp_echo(A_MAC, GW_MAC, A_IP, VM_IP, 64, 8);
    assert!(matches!(sw.send(A, &mut buf), Next::Resolve { port: UPLINK, next_hop: IpAddr::V4(VM_IP), .. }));
    // Beyond the subnet the next hop is the VPC gateway.
    let mut buf = icmp_echo(A_MAC, GW_MAC, A_IP, Ipv4Addr::new(192, 0, 2, 1), 64, 8);
    assert!(matches!(sw.send(A, &mut buf), Next::Resolve { port: UPLINK, next_hop: IpAddr::V4(VPC_GW), .. }));

    let mut sw = with_uplink(&[(VM_IP, VM_MAC)]);
    let mut buf = icmp_echo(A_MAC, GW_MAC, A_IP, VM_IP, 64, 8);
    let Next::Tx { port: UPLINK, len } = sw.send(A, &mut buf) else { panic!("not sent") };
    assert_eq!(sent_ipv4(&buf, len), (UP_MAC, VM_MAC, A_IP, VM_IP, 63));
}

#[test]
fn traffic_from_the_uplink_reaches_pods_and_nothing_else() {
    let mut sw = with_uplink(&[(VM_IP, VM_MAC)]);
    let mut buf = icmp_echo(VM_MAC, UP_MAC, VM_IP, A_IP, 64, 8);
    let Next::Tx { port: A, len } = sw.send(UPLINK, &mut buf) else { panic!("not forwarded") };
    assert_eq!(sent_ipv4(&buf, len), (GW_MAC, A_MAC, VM_IP, A_IP, 63));
    let mut buf = icmp_echo(VM_MAC, GW_MAC, VM_IP, A_IP, 64, 8);
    assert_eq!(sw.send(UPLINK, &mut buf), Next::Drop(DropReason::NotOurMac));
    let mut buf = icmp_echo(VM_MAC, UP_MAC, VM_IP, Ipv4Addr::new(10, 10, 7, 7), 64, 8);
    assert_eq!(sw.send(UPLINK, &mut buf), Next::Drop(DropReason::Hairpin));
}

#[test]
fn icmp_errors_out_of_the_uplink_come_from_the_nic_not_the_gateway() {
    let mut sw = with_uplink(&[(VM_IP, VM_MAC)]);
    let mut buf = icmp_echo(VM_MAC, UP_MAC, VM_IP, A_IP, 1, 20);
    let Next::Respond { reason, port, len } = sw.send(UPLINK, &mut buf) else { panic!("no ICMP error") };
    assert_eq!((reason, port), (DropReason::TtlExpired, UPLINK));
    assert_eq!(sent_ipv4(&buf, len), (UP_MAC, VM_MAC, UP_IP, VM_IP, 64));
    // Fragmentation needed too (the uplink does not police its own MTU on the way in).
    let mut buf = icmp_echo(VM_MAC, UP_MAC, VM_IP, A_IP, 64, 3000);
    let Next::Respond { reason, port, len } = sw.send(UPLINK, &mut buf) else { panic!("no ICMP error") };
    assert_eq!((reason, port), (DropReason::FragmentationNeeded, UPLINK));
    assert_eq!(sent_ipv4(&buf, len), (UP_MAC, VM_MAC, UP_IP, VM_IP, 64));
    // Toward a pod the error still comes from the gateway.
    let mut buf = icmp_echo(A_MAC, GW_MAC, A_IP, VM_IP, 1, 20);
    let Next::Respond { port: A, len, .. } = sw.send(A, &mut buf) else { panic!("no ICMP error") };
    assert_eq!(sent_ipv4(&buf, len), (GW_MAC, A_MAC, GW_IP, A_IP, 64));
}

#[test]
fn an_uplink_without_an_address_sends_no_icmp_errors() {
    let mut sw = with_uplink(&[(VM_IP, VM_MAC)]);
    if let Some(port) = sw.state.ports[UPLINK as usize].as_mut() {
        port.role = PortRole::Uplink { mac: UP_MAC, ip: None, ipv6: None };
    }
    let mut buf = icmp_echo(VM_MAC, UP_MAC, VM_IP, A_IP, 1, 20);
    assert_eq!(sw.send(UPLINK, &mut buf), Next::Drop(DropReason::TtlExpired));
    let mut buf = icmp_echo(VM_MAC, UP_MAC, VM_IP, A_IP, 64, 3000);
    assert_eq!(sw.send(UPLINK, &mut buf), Next::Drop(DropReason::FragmentationNeeded));
    assert_eq!(sw.pipeline.take_icmp_suppressed(), 0, "not a rate-limit suppression");
}
