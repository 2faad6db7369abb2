//! IPv6 and neighbour discovery through the pipeline, with frames built by etherparse and every
//! frame the switch writes parsed back (and its ICMPv6 checksum verified) by etherparse.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv6Addr};

use etherparse::icmpv6::NeighborAdvertisementHeader;
use etherparse::{Icmpv6Slice, Icmpv6Type, PacketBuilder, SlicedPacket};
use vswitch::pipeline::{DropReason, Next, Trace};
use vswitch::state::ForwardingStateBuilder;
use vswitch::wire::vnet::{self, VnetHeader};
use vswitch::wire::MacAddr;

use super::{
    with_vnet, Switch, A, A_IP, A_MAC, B, B_IP, B_MAC, GW_IP, GW_MAC, HOST, HOST_MAC, UPLINK, UP_IP, UP_MAC, VM_MAC,
};

pub(super) const A6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 1, 2);
pub(super) const B6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 1, 3);
const VM6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 0x50);
pub(super) const FAR6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1);
const VPC_GW6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 1);
const UP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 7);

fn gw_ll() -> Ipv6Addr {
    GW_MAC.link_local()
}

/// Dual-stack pods A and B (MTU 1500) and the host port (MTU 9000); both defaults to the node.
fn dual() -> ForwardingStateBuilder {
    ForwardingStateBuilder::new(GW_IP, GW_MAC)
        .dual_stack_pod(Some(A_IP), Some(A6), A_MAC, 1500)
        .dual_stack_pod(Some(B_IP), Some(B6), B_MAC, 1500)
        .host_port(HOST_MAC, 9000)
}

pub(super) fn switch() -> Switch {
    Switch::from(dual().route("0.0.0.0/0".parse().unwrap(), HOST).route6("::/0".parse().unwrap(), HOST))
}

/// With a dedicated uplink on both VPC subnets, the defaults through the VPC gateways.
fn with_uplink(known: &[(Ipv6Addr, MacAddr)]) -> Switch {
    let builder = dual().uplink(UP_MAC, Some(UP_IP), "10.10.0.0/16".parse().unwrap(), Some(GW_IP), 1500).uplink_ipv6(
        Some(UP6),
        "fd00:10::/64".parse().unwrap(),
        Some(VPC_GW6),
    );
    assert_eq!(builder.next_port(), UPLINK + 1);
    Switch::from(known.iter().fold(builder, |b, &(ip, mac)| b.neighbor(ip, mac)))
}

pub(super) fn echo6(
    src_mac: MacAddr,
    dst_mac: MacAddr,
    src: Ipv6Addr,
    dst: Ipv6Addr,
    hop: u8,
    payload: usize,
) -> Vec<u8> {
    let builder =
        PacketBuilder::ethernet2(src_mac.0, dst_mac.0).ipv6(src.octets(), dst.octets(), hop).icmpv6_echo_request(1, 1);
    let mut frame = Vec::new();
    builder.write(&mut frame, &vec![0xab; payload]).unwrap();
    with_vnet(VnetHeader::default(), frame)
}

/// A neighbour discovery message (hop limit 255) with `body` after the ICMPv6 header.
fn ndp(src_mac: MacAddr, dst_mac: MacAddr, src: Ipv6Addr, dst: Ipv6Addr, kind: Icmpv6Type, body: &[u8]) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(src_mac.0, dst_mac.0).ipv6(src.octets(), dst.octets(), 255).icmpv6(kind);
    let mut frame = Vec::new();
    builder.write(&mut frame, body).unwrap();
    with_vnet(VnetHeader::default(), frame)
}

/// A target address and a link-layer address option of `option` type (1 source, 2 target).
fn target_and_option(target: Ipv6Addr, option: Option<(u8, MacAddr)>) -> Vec<u8> {
    let mut body = target.octets().to_vec();
    if let Some((kind, mac)) = option {
        body.extend_from_slice(&[kind, 1]);
        body.extend_from_slice(&mac.0);
    }
    body
}

fn solicited_node(ip: Ipv6Addr) -> Ipv6Addr {
    let o = ip.octets();
    Ipv6Addr::from([0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, o[13], o[14], o[15]])
}

fn multicast_mac(ip: Ipv6Addr) -> MacAddr {
    let o = ip.octets();
    MacAddr([0x33, 0x33, o[12], o[13], o[14], o[15]])
}

/// A pod's neighbour solicitation for `target`, from `src` (multicast to the solicited node).
fn solicit(from_mac: MacAddr, src: Ipv6Addr, target: Ipv6Addr, sll: Option<MacAddr>) -> Vec<u8> {
    let dst = solicited_node(target);
    let body = target_and_option(target, sll.map(|m| (1, m)));
    ndp(from_mac, multicast_mac(dst), src, dst, Icmpv6Type::NeighborSolicitation, &body)
}

fn advert(from_mac: MacAddr, src: Ipv6Addr, target: Ipv6Addr, tll: Option<MacAddr>) -> Vec<u8> {
    let header = NeighborAdvertisementHeader { router: false, solicited: false, r#override: true };
    let body = target_and_option(target, tll.map(|m| (2, m)));
    let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    ndp(from_mac, multicast_mac(all_nodes), src, all_nodes, Icmpv6Type::NeighborAdvertisement(header), &body)
}

/// What the switch sent, parsed by etherparse: (src MAC, dst MAC, src, dst, hop limit, ICMPv6
/// type and the bytes after its header if it is ICMPv6). An ICMPv6 message must verify.
#[allow(clippy::type_complexity)]
fn sent(buf: &[u8], len: usize) -> (MacAddr, MacAddr, Ipv6Addr, Ipv6Addr, u8, Option<(u8, Vec<u8>)>) {
    let p = SlicedPacket::from_ethernet(&buf[vnet::LEN..len]).expect("the switch sent a well-formed frame");
    let Some(etherparse::LinkSlice::Ethernet2(eth)) = p.link else { panic!("not Ethernet II") };
    let Some(etherparse::NetSlice::Ipv6(ip)) = p.net else { panic!("not IPv6") };
    let h = ip.header();
    let icmp = match p.transport {
        Some(etherparse::TransportSlice::Icmpv6(_)) => {
            let icmp = Icmpv6Slice::from_slice(ip.payload().payload).unwrap();
            assert!(icmp.is_checksum_valid(h.source(), h.destination()), "ICMPv6 checksum");
            Some((icmp.type_u8(), icmp.slice()[4..].to_vec()))
        }
        _ => None,
    };
    (MacAddr(eth.source()), MacAddr(eth.destination()), h.source_addr(), h.destination_addr(), h.hop_limit(), icmp)
}

/// The answer to a solicitation: (to MAC, target, the MAC it advertises, the router flag).
fn answer(buf: &[u8], len: usize) -> (MacAddr, Ipv6Addr, MacAddr, bool) {
    let (src_mac, dst_mac, src, _, hop, icmp) = sent(buf, len);
    let (kind, rest) = icmp.expect("an ICMPv6 message");
    assert_eq!((kind, hop), (136, 255), "a neighbour advertisement, hop limit 255");
    let target = Ipv6Addr::from(<[u8; 16]>::try_from(&rest[4..20]).unwrap());
    assert_eq!(src, target, "sent from the target address");
    assert_eq!(&rest[20..22], &[2, 1], "a target link-layer address option");
    let advertised = MacAddr(rest[22..28].try_into().unwrap());
    assert_eq!(src_mac, advertised);
    (dst_mac, target, advertised, rest[0] & 0x80 != 0)
}

#[test]
fn pod_to_pod_and_to_the_node_over_ipv6() {
    let mut sw = switch();
    let mut buf = echo6(A_MAC, GW_MAC, A6, B6, 64, 56);
    let Next::Tx { port: B, len } = sw.send(A, &mut buf) else { panic!("not forwarded") };
    let (src_mac, dst_mac, src, dst, hop, _) = sent(&buf, len);
    assert_eq!((src_mac, dst_mac, src, dst, hop), (GW_MAC, B_MAC, A6, B6, 63));
    let mut buf = echo6(A_MAC, GW_MAC, A6, FAR6, 64, 56);
    let Next::Tx { port: HOST, len } = sw.send(A, &mut buf) else { panic!("not to the node") };
    assert_eq!(sent(&buf, len).1, HOST_MAC);
    // The node's stack may send from anywhere (it is the router's other side).
    let mut buf = echo6(HOST_MAC, GW_MAC, FAR6, A6, 64, 56);
    assert!(matches!(sw.send(HOST, &mut buf), Next::Tx { port: A, .. }));
}

#[test]
fn pods_resolve_the_gateway_and_every_other_address_to_the_gateway_mac() {
    let mut sw = switch();
    let a_ll = A_MAC.link_local();
    for (src, target, router) in [(A6, gw_ll(), true), (a_ll, gw_ll(), true), (A6, B6, false), (a_ll, FAR6, false)] {
        let mut buf = solicit(A_MAC, src, target, Some(A_MAC));
        let Next::Tx { port: A, len } = sw.send(A, &mut buf) else { panic!("{target} not answered") };
        assert_eq!(answer(&buf, len), (A_MAC, target, GW_MAC, router), "{src} asks for {target}");
        assert_eq!(sent(&buf, len).3, src, "back to the asker");
    }
}

#[test]
fn duplicate_address_detection_passes_and_nothing_else_speaks_for_a_pod() {
    let mut sw = switch();
    // DAD for its own addresses (from ::, no link-layer option): never answered.
    for target in [A6, A_MAC.link_local()] {
        let mut buf = solicit(A_MAC, Ipv6Addr::UNSPECIFIED, target, None);
        assert_eq!(sw.send(A, &mut buf), Next::Drop(DropReason::NdpOwnAddress), "{target}");
    }
    // DAD is for one's own addresses only; a solicitation must carry the pod's own MAC.
    let mut buf = solicit(A_MAC, Ipv6Addr::UNSPECIFIED, B6, None);
    assert_eq!(sw.send(A, &mut buf), Next::Drop(DropReason::NdpSpoofed));
    let mut buf = solicit(A_MAC, A6, B6, Some(B_MAC));
    assert_eq!(sw.send(A, &mut buf), Next::Drop(DropReason::NdpSpoofed));
    // Advertisements from a pod: claiming another's address is spoofing; its own, unasked.
    assert_eq!(sw.send(A, &mut advert(A_MAC, A6, B6, Some(A_MAC))), Next::Drop(DropReason::NdpSpoofed));
    assert_eq!(sw.send(A, &mut advert(A_MAC, A6, A6, Some(B_MAC))), Next::Drop(DropReason::NdpSpoofed));
    assert_eq!(sw.send(A, &mut advert(A_MAC, A6, A6, Some(A_MAC))), Next::Drop(DropReason::NdpNotOurs));
}

#[test]
fn router_advertisements_and_redirects_from_pods_are_dropped() {
    let mut sw = switch();
    let all_nodes = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
    let ra = Icmpv6Type::RouterAdvertisement(etherparse::icmpv6::RouterAdvertisementHeader {
        cur_hop_limit: 64,
        managed_address_config: false,
        other_config: false,
        router_lifetime: 1800,
    });
    let mut buf = ndp(A_MAC, multicast_mac(all_nodes), A_MAC.link_local(), all_nodes, ra, &[0; 8]);
    assert_eq!(sw.send(A, &mut buf), Next::Drop(DropReason::RaGuard));
    let redirect = Icmpv6Type::Unknown { type_u8: 137, code_u8: 0, bytes5to8: [0; 4] };
    let body = [B6.octets(), FAR6.octets()].concat();
    let mut buf = ndp(A_MAC, B_MAC, A_MAC.link_local(), B_MAC.link_local(), redirect, &body);
    assert_eq!(sw.send(A, &mut buf), Next::Drop(DropReason::RaGuard));
    // Router solicitations have no one to answer them.
    let all_routers = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
    let rs = Icmpv6Type::RouterSolicitation;
    let mut buf = ndp(A_MAC, multicast_mac(all_routers), A_MAC.link_local(), all_routers, rs, &[0; 4]);
    assert_eq!(sw.send(A, &mut buf), Next::Drop(DropReason::NdpNotOurs));
}

#[test]
fn a_pod_sends_only_from_its_own_address_and_link_local_never_leaves_the_link() {
    let mut sw = switch();
    for spoofed in [B6, FAR6, B_MAC.link_local(), Ipv6Addr::UNSPECIFIED] {
        let mut buf = echo6(A_MAC, GW_MAC, spoofed, B6, 64, 8);
        assert_eq!(sw.send(A, &mut buf), Next::Drop(DropReason::SpoofedSourceIp), "from {spoofed}");
    }
    let mut buf = echo6(A_MAC, GW_MAC, A_MAC.link_local(), B6, 64, 8);
    assert_eq!(sw.send(A, &mut buf), Next::Drop(DropReason::Ipv6LinkLocal));
    let mut buf = echo6(A_MAC, GW_MAC, A6, B_MAC.link_local(), 64, 8);
    assert_eq!(sw.send(A, &mut buf), Next::Drop(DropReason::Ipv6LinkLocal));
    let mld = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x16);
    let mut buf = echo6(A_MAC, multicast_mac(mld), A6, mld, 1, 8);
    assert_eq!(sw.send(A, &mut buf), Next::Drop(DropReason::Ipv6Multicast));
    // A listener report from the unspecified address, as every pod sends one while its addresses
    // are tentative: not switched, and not taken for spoofing either.
    let report = Icmpv6Type::Unknown { type_u8: 143, code_u8: 0, bytes5to8: [0, 0, 0, 1] };
    let body = [[4, 0, 0, 0].as_slice(), &Ipv6Addr::new(0xff02, 0, 0, 0, 0, 1, 0xff01, 2).octets()].concat();
    let mut buf = ndp(A_MAC, multicast_mac(mld), Ipv6Addr::UNSPECIFIED, mld, report, &body);
    assert_eq!(sw.send(A, &mut buf), Next::Drop(DropReason::Ipv6Multicast));
    // From the unspecified address to anyone else it is spoofing.
    let mut buf = echo6(A_MAC, GW_MAC, Ipv6Addr::UNSPECIFIED, B6, 64, 8);
    assert_eq!(sw.send(A, &mut buf), Next::Drop(DropReason::SpoofedSourceIp));
}

#[test]
fn hop_limit_expiry_and_packet_too_big_answer_from_the_gateway_link_local_address() {
    let mut sw = switch();
    let mut buf = echo6(A_MAC, GW_MAC, A6, B6, 1, 20);
    let Next::Respond { reason: DropReason::TtlExpired, port: A, len } = sw.send(A, &mut buf) else {
        panic!("no time exceeded")
    };
    let (src_mac, dst_mac, src, dst, _, icmp) = sent(&buf, len);
    assert_eq!((src_mac, dst_mac, src, dst, icmp.map(|i| i.0)), (GW_MAC, A_MAC, gw_ll(), A6, Some(3)));
    // The node sends 3000 bytes to a pod with MTU 1500: Packet Too Big with the pod's MTU.
    let mut buf = echo6(HOST_MAC, GW_MAC, FAR6, A6, 64, 3000);
    let Next::Respond { reason: DropReason::PacketTooBig, port: HOST, len } = sw.send(HOST, &mut buf) else {
        panic!("no packet too big")
    };
    let (_, dst_mac, src, dst, _, icmp) = sent(&buf, len);
    let (kind, rest) = icmp.unwrap();
    assert_eq!((dst_mac, src, dst, kind), (HOST_MAC, gw_ll(), FAR6, 2));
    assert_eq!(u32::from_be_bytes(rest[..4].try_into().unwrap()), 1500);
    assert!(len - vnet::LEN - 14 <= 1280, "an ICMPv6 error fits the minimum MTU");
    // Never an error about an ICMPv6 error.
    let mut buf = echo6(HOST_MAC, GW_MAC, FAR6, A6, 64, 3000);
    let (l4, checksum) = (vnet::LEN + 14 + 40, vnet::LEN + 14 + 42);
    buf[l4] = 1; // destination unreachable (the checksum is not the switch's business)
    buf[checksum] ^= 0x7f;
    assert_eq!(sw.send(HOST, &mut buf), Next::Drop(DropReason::PacketTooBig));
}

#[test]
fn gso_frames_cross_whole_and_are_judged_by_their_segments() {
    let mut sw = switch();
    let tso = |gso_size: u16| {
        let builder =
            PacketBuilder::ethernet2(A_MAC.0, GW_MAC.0).ipv6(A6.octets(), B6.octets(), 64).tcp(40000, 5201, 1, 65535);
        let mut frame = Vec::new();
        builder.write(&mut frame, &vec![7u8; 64000]).unwrap();
        let header = VnetHeader {
            flags: vnet::FLAG_NEEDS_CSUM,
            gso_type: vnet::GSO_TCPV6,
            hdr_len: 74,
            gso_size,
            csum_start: 54,
            csum_offset: 16,
        };
        with_vnet(header, frame)
    };
    let mut buf = tso(1440);
    let whole = buf.len();
    let Next::Tx { port: B, len } = sw.send(A, &mut buf) else { panic!("not forwarded") };
    assert_eq!(len, whole, "one 64 KB frame, unsegmented");
    let mut buf = tso(1441); // 40 + 20 + 1441 > 1500
    assert!(matches!(sw.send(A, &mut buf), Next::Respond { reason: DropReason::PacketTooBig, .. }));
}

#[test]
fn the_uplink_speaks_for_local_pods_resolves_next_hops_and_errors_come_from_the_nic() {
    let mut sw = with_uplink(&[]);
    let vm_ll = VM_MAC.link_local();
    let mut buf = solicit(VM_MAC, vm_ll, A6, Some(VM_MAC));
    let Next::Tx { port: UPLINK, len } = sw.send(UPLINK, &mut buf) else { panic!("not answered") };
    assert_eq!(answer(&buf, len), (VM_MAC, A6, UP_MAC, false));
    let mut buf = solicit(VM_MAC, vm_ll, UP6, Some(VM_MAC));
    assert!(matches!(sw.send(UPLINK, &mut buf), Next::Tx { port: UPLINK, .. }), "the NIC's own address");
    for other in [VM6, gw_ll(), Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 1, 9)] {
        let mut buf = solicit(VM_MAC, vm_ll, other, Some(VM_MAC));
        assert_eq!(sw.send(UPLINK, &mut buf), Next::Drop(DropReason::NdpNotOurs), "{other}");
    }
    // Advertisements teach the control plane.
    assert!(matches!(sw.send(UPLINK, &mut advert(VM_MAC, VM6, VM6, Some(VM_MAC))), Next::ToControl { .. }));
    // Pod traffic waits for the neighbour: the destination on the subnet, the VPC router beyond.
    let mut buf = echo6(A_MAC, GW_MAC, A6, VM6, 64, 8);
    assert!(matches!(sw.send(A, &mut buf), Next::Resolve { port: UPLINK, next_hop: IpAddr::V6(VM6), .. }));
    let mut buf = echo6(A_MAC, GW_MAC, A6, FAR6, 64, 8);
    assert!(matches!(sw.send(A, &mut buf), Next::Resolve { port: UPLINK, next_hop: IpAddr::V6(VPC_GW6), .. }));
    let mut sw = with_uplink(&[(VM6, VM_MAC)]);
    let mut buf = echo6(A_MAC, GW_MAC, A6, VM6, 64, 8);
    let Next::Tx { port: UPLINK, len } = sw.send(A, &mut buf) else { panic!("not sent") };
    let (src_mac, dst_mac, src, dst, hop, _) = sent(&buf, len);
    assert_eq!((src_mac, dst_mac, src, dst, hop), (UP_MAC, VM_MAC, A6, VM6, 63));
    // From the VPC, hop limit 1: time exceeded from the NIC's address, not the link-local gateway.
    let mut buf = echo6(VM_MAC, UP_MAC, VM6, A6, 1, 8);
    let Next::Respond { port: UPLINK, len, .. } = sw.send(UPLINK, &mut buf) else { panic!("no error") };
    let (src_mac, dst_mac, src, dst, _, _) = sent(&buf, len);
    assert_eq!((src_mac, dst_mac, src, dst), (UP_MAC, VM_MAC, UP6, VM6));
}

#[test]
fn the_node_resolves_the_gateway_and_local_pods_only() {
    let mut sw = switch();
    let host_ll = HOST_MAC.link_local();
    for (target, router) in [(gw_ll(), true), (A6, false)] {
        let mut buf = solicit(HOST_MAC, host_ll, target, Some(HOST_MAC));
        let Next::Tx { port: HOST, len } = sw.send(HOST, &mut buf) else { panic!("{target} not answered") };
        assert_eq!(answer(&buf, len), (HOST_MAC, target, GW_MAC, router));
    }
    let mut buf = solicit(HOST_MAC, host_ll, FAR6, Some(HOST_MAC));
    assert_eq!(sw.send(HOST, &mut buf), Next::Drop(DropReason::NdpNotOurs));
}

#[test]
fn trace_names_each_ipv6_stage() {
    let sw = switch();
    let mut pipeline = vswitch::pipeline::Pipeline::new(vswitch::pipeline::IcmpLimiter::new(10, 10));
    let mut buf = echo6(A_MAC, GW_MAC, A6, B6, 64, 8);
    let len = buf.len();
    let mut trace = Trace::default();
    let next = pipeline.process(&sw.state, &sw.state.pin(), A, &mut buf, len, 0, &mut trace);
    assert!(matches!(next, Next::Tx { port: B, .. }));
    let stages: Vec<_> = trace.steps.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(stages, ["vnet", "ethernet", "ipv6", "fib", "rewrite"]);
}

/// A chain of `count` Destination Options headers (8 bytes each) before an ICMPv6 echo.
fn with_extension_headers(count: usize) -> Vec<u8> {
    let mut buf = echo6(A_MAC, GW_MAC, A6, B6, 64, 8);
    let ip = vnet::LEN + 14;
    let icmp = buf.split_off(ip + 40);
    buf[ip + 6] = 60;
    for i in 0..count {
        buf.extend_from_slice(&[if i + 1 == count { 58 } else { 60 }, 0, 1, 4, 0, 0, 0, 0]);
    }
    buf.extend(icmp);
    let payload = (buf.len() - ip - 40) as u16;
    buf[ip + 4..ip + 6].copy_from_slice(&payload.to_be_bytes());
    buf
}

/// Every IPv6 drop reason, each from a frame that causes it (for the drop-reason walk).
pub fn drop_reasons() -> HashSet<DropReason> {
    let mut sw = switch();
    let mut seen = HashSet::new();
    let mut check = |sw: &mut Switch, port, mut buf: Vec<u8>, reason| {
        assert_eq!(sw.send(port, &mut buf), Next::Drop(reason), "{reason:?}");
        seen.insert(reason);
    };
    let ip = vnet::LEN + 14;
    check(&mut sw, A, echo6(A_MAC, GW_MAC, A6, B6, 64, 8)[..ip + 39].to_vec(), DropReason::Ipv6Truncated);
    let mut long = echo6(A_MAC, GW_MAC, A6, B6, 64, 8);
    long[ip + 4] = 0x10; // a payload length beyond the frame
    check(&mut sw, A, long, DropReason::Ipv6Truncated);
    let mut v4 = echo6(A_MAC, GW_MAC, A6, B6, 64, 8);
    v4[ip] = 0x40;
    check(&mut sw, A, v4, DropReason::Ipv6BadVersion);
    check(&mut sw, A, with_extension_headers(9), DropReason::Ipv6BadExtensionHeaders);
    let mld = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x16);
    check(&mut sw, A, echo6(A_MAC, multicast_mac(mld), A6, mld, 1, 8), DropReason::Ipv6Multicast);
    check(&mut sw, A, echo6(A_MAC, GW_MAC, A6, B_MAC.link_local(), 64, 8), DropReason::Ipv6LinkLocal);
    let mut routed_ndp = solicit(A_MAC, A6, B6, Some(A_MAC));
    routed_ndp[ip + 7] = 64; // not 255: came through a router
    check(&mut sw, A, routed_ndp, DropReason::NdpMalformed);
    let mut bad_sum = solicit(A_MAC, A6, B6, Some(A_MAC));
    bad_sum[ip + 42] ^= 0xff;
    check(&mut sw, A, bad_sum, DropReason::NdpMalformed);
    check(&mut sw, A, solicit(A_MAC, A6, B6, Some(B_MAC)), DropReason::NdpSpoofed);
    check(&mut sw, A, solicit(A_MAC, Ipv6Addr::UNSPECIFIED, A6, None), DropReason::NdpOwnAddress);
    check(&mut sw, HOST, solicit(HOST_MAC, HOST_MAC.link_local(), FAR6, Some(HOST_MAC)), DropReason::NdpNotOurs);
    let redirect = Icmpv6Type::Unknown { type_u8: 137, code_u8: 0, bytes5to8: [0; 4] };
    let body = [B6.octets(), FAR6.octets()].concat();
    check(&mut sw, A, ndp(A_MAC, B_MAC, A_MAC.link_local(), B_MAC.link_local(), redirect, &body), DropReason::RaGuard);
    let mut big = echo6(HOST_MAC, GW_MAC, FAR6, A6, 64, 3000);
    big[ip + 40] = 1; // an ICMPv6 error: dropped without an error back
    check(&mut sw, HOST, big, DropReason::PacketTooBig);
    seen
}
