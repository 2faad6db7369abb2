//! What a hardened router does not forward, IPv4 and IPv6: bytes past the IP length (cut, or the
//! frame refused where cutting would leave the vnet header wrong), Routing Header type 0 (RFC
//! 5095), first fragments without their whole header chain (RFC 7112, RFC 1858), later
//! fragments overwriting those headers (RFC 5722), atomic fragments from pods (RFC 8021).

use std::collections::HashSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use etherparse::SlicedPacket;
use vswitch::pipeline::{DropReason, Next};
use vswitch::wire::vnet::{self, VnetHeader};
use vswitch::wire::{checksum, ipv4, ipv6, MacAddr};

use super::ipv6::{echo6, switch, A6, B6, FAR6};
use super::{icmp_echo, with_vnet, A, A_IP, A_MAC, B, B_IP, GW_MAC, HOST, HOST_MAC};

const L3: usize = vnet::LEN + 14;
const TCP: u8 = 6;
const UDP: u8 = 17;

/// An IPv4 frame to the gateway with `protocol`, the flags and fragment offset word `flags`, and
/// `payload` (a valid header checksum, nothing checked above it).
fn ipv4_frame(src_mac: MacAddr, (src, dst): (Ipv4Addr, Ipv4Addr), protocol: u8, flags: u16, payload: &[u8]) -> Vec<u8> {
    let mut frame = [GW_MAC.0, src_mac.0].concat();
    frame.extend_from_slice(&[0x08, 0x00]);
    let mut ip = [0u8; 20];
    ipv4::emit_header(&mut ip, src, dst, protocol, payload.len(), 64);
    ip[6..8].copy_from_slice(&flags.to_be_bytes());
    ip[10..12].fill(0);
    let c = checksum::checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    frame.extend_from_slice(&ip);
    frame.extend_from_slice(payload);
    with_vnet(VnetHeader::default(), frame)
}

/// An IPv6 frame to the gateway: `headers` (each an extension header's protocol number and its
/// bytes after the next-header byte) chained before `payload` of protocol `last`.
fn ipv6_frame(
    src_mac: MacAddr,
    (src, dst): (Ipv6Addr, Ipv6Addr),
    headers: &[(u8, Vec<u8>)],
    last: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut body = Vec::new();
    for (i, (_, rest)) in headers.iter().enumerate() {
        body.push(headers.get(i + 1).map_or(last, |h| h.0));
        body.extend_from_slice(rest);
    }
    body.extend_from_slice(payload);
    let mut frame = [GW_MAC.0, src_mac.0].concat();
    frame.extend_from_slice(&[0x86, 0xdd]);
    let mut ip = [0u8; 40];
    ipv6::emit_header(&mut ip, src, dst, headers.first().map_or(last, |h| h.0), body.len(), 64);
    frame.extend_from_slice(&ip);
    frame.extend(body);
    with_vnet(VnetHeader::default(), frame)
}

/// A Routing header of `routing_type` with `segments_left`, listing one address.
fn routing(routing_type: u8, segments_left: u8) -> (u8, Vec<u8>) {
    let mut header = vec![2, routing_type, segments_left, 0, 0, 0, 0];
    header.extend_from_slice(&FAR6.octets());
    (ipv6::PROTO_ROUTING, header)
}

fn fragment(offset: u16, more: bool) -> (u8, Vec<u8>) {
    let w = (offset | more as u16).to_be_bytes();
    (ipv6::PROTO_FRAGMENT, vec![0, w[0], w[1], 0, 0, 0x12, 0x34])
}

fn dest_options() -> (u8, Vec<u8>) {
    (ipv6::PROTO_DEST_OPTIONS, vec![0, 1, 4, 0, 0, 0, 0])
}

/// The IP length and the frame length (without the Ethernet header) of what the switch sent.
fn lengths(buf: &[u8], len: usize) -> (usize, usize) {
    let p = SlicedPacket::from_ethernet(&buf[vnet::LEN..len]).expect("a well-formed frame");
    let ip_len = match p.net.expect("IP") {
        etherparse::NetSlice::Ipv4(ip) => ip.header().total_len() as usize,
        etherparse::NetSlice::Ipv6(ip) => 40 + ip.header().payload_length() as usize,
        _ => panic!("not IP"),
    };
    (ip_len, len - L3)
}

fn padded(mut buf: Vec<u8>, bytes: usize) -> Vec<u8> {
    buf.extend(std::iter::repeat_n(0xee, bytes));
    buf
}

#[test]
fn bytes_past_the_ip_length_are_cut_before_forwarding() {
    let mut sw = switch();
    // A sender's 24 trailing bytes, IPv4 and IPv6: the packet goes, the bytes stay.
    for (frame, to) in [(icmp_echo(A_MAC, GW_MAC, A_IP, B_IP, 64, 56), B), (echo6(A_MAC, GW_MAC, A6, B6, 64, 56), B)] {
        let whole = frame.len();
        let mut buf = padded(frame.clone(), 24);
        let Next::Tx { port, len } = sw.send(A, &mut buf) else { panic!("not forwarded") };
        assert_eq!((port, len), (to, whole), "cut to the IP packet");
        assert_eq!(lengths(&buf, len).0, lengths(&buf, len).1);
        assert_eq!(buf[L3 + 20..len], frame[L3 + 20..], "the packet itself unchanged past the header");
    }
    // Ethernet's minimum: a 28-byte IPv4 packet arrives in a 60-byte frame.
    let small = icmp_echo(A_MAC, GW_MAC, A_IP, B_IP, 64, 0);
    assert_eq!(small.len(), vnet::LEN + 42);
    let mut buf = padded(small, 18);
    let Next::Tx { port: B, len } = sw.send(A, &mut buf) else { panic!("a padded minimum frame dropped") };
    assert_eq!(lengths(&buf, len), (28, 28));
    // From the node too, and to the control plane (a next hop to resolve) cut the same way.
    let mut buf = padded(echo6(HOST_MAC, GW_MAC, FAR6, A6, 64, 8), 20);
    let Next::Tx { port: A, len } = sw.send(HOST, &mut buf) else { panic!("not forwarded") };
    assert_eq!(lengths(&buf, len), (56, 56));
    // An ICMP error about a padded 24-byte packet quotes the packet, not the padding after it.
    let short = ipv4_frame(A_MAC, (A_IP, B_IP), UDP, 0, &[0, 1, 0, 2]);
    let mut buf = padded(super::patch_ipv4(short, 8, &[1]), 30);
    let Next::Respond { port: A, len, .. } = sw.send(A, &mut buf) else { panic!("no time exceeded") };
    assert_eq!(lengths(&buf, len), (20 + 8 + 24, 52), "an IP header, an ICMP header, the 24-byte packet");
}

#[test]
fn bytes_past_the_ip_length_that_cannot_be_cut_drop_the_frame() {
    let mut sw = switch();
    // A GSO frame is never padded: its lengths and its frame disagree, whichever is right.
    let tso = |frame: Vec<u8>, gso_type, csum_start| {
        let header = VnetHeader {
            flags: vnet::FLAG_NEEDS_CSUM,
            gso_type,
            hdr_len: 0,
            gso_size: 1000,
            csum_start,
            csum_offset: 16,
        };
        let mut buf = frame;
        header.write(&mut buf[..vnet::LEN]);
        buf
    };
    let tcp4 = ipv4_frame(A_MAC, (A_IP, B_IP), TCP, 0x4000, &[0x50; 3000]);
    let tcp6 = ipv6_frame(A_MAC, (A6, B6), &[], TCP, &[0x50; 3000]);
    for (frame, gso_type, csum_start) in [(tcp4, vnet::GSO_TCPV4, 34), (tcp6, vnet::GSO_TCPV6, 54)] {
        let mut buf = tso(frame.clone(), gso_type, csum_start);
        assert!(matches!(sw.send(A, &mut buf), Next::Tx { port: B, .. }), "the frame as a kernel sends it");
        let mut buf = padded(tso(frame, gso_type, csum_start), 24);
        assert_eq!(sw.send(A, &mut buf), Next::Drop(DropReason::IpLengthMismatch));
    }
    // A checksum to complete inside the packet: cut; in the trailing bytes: refused.
    let udp = ipv4_frame(A_MAC, (A_IP, B_IP), UDP, 0, &[0, 1, 0, 2, 0, 12, 0, 0, 1, 2, 3, 4]);
    let with_checksum_at = |csum_start: u16| {
        let mut buf = padded(udp.clone(), 20);
        let header = VnetHeader { flags: vnet::FLAG_NEEDS_CSUM, csum_start, csum_offset: 6, ..Default::default() };
        header.write(&mut buf[..vnet::LEN]);
        buf
    };
    assert!(matches!(sw.send(A, &mut with_checksum_at(34)), Next::Tx { port: B, len } if len == udp.len()));
    assert_eq!(sw.send(A, &mut with_checksum_at(46)), Next::Drop(DropReason::IpLengthMismatch));
    // An IP length beyond the frame cannot be cut to: refused as before.
    let mut buf = icmp_echo(A_MAC, GW_MAC, A_IP, B_IP, 64, 8);
    buf[L3 + 3] += 1;
    assert_eq!(sw.send(A, &mut buf), Next::Drop(DropReason::Ipv4BadTotalLength));
}

#[test]
fn routing_header_type_0_with_segments_left_is_dropped() {
    let mut sw = switch();
    let udp = [0u8; 8];
    for (port, mac, addresses) in [(A, A_MAC, (A6, B6)), (HOST, HOST_MAC, (FAR6, A6))] {
        let mut buf = ipv6_frame(mac, addresses, &[routing(0, 2)], UDP, &udp);
        assert_eq!(sw.send(port, &mut buf), Next::Drop(DropReason::Ipv6RoutingHeader0), "from port {port}");
        // Behind other headers too.
        let mut buf = ipv6_frame(mac, addresses, &[dest_options(), routing(0, 1)], UDP, &udp);
        assert_eq!(sw.send(port, &mut buf), Next::Drop(DropReason::Ipv6RoutingHeader0));
    }
    // With no segments left it is ignored (RFC 5095 §3); other types are the destination's.
    let mut buf = ipv6_frame(A_MAC, (A6, B6), &[routing(0, 0)], UDP, &udp);
    assert!(matches!(sw.send(A, &mut buf), Next::Tx { port: B, .. }));
    let mut buf = ipv6_frame(A_MAC, (A6, B6), &[routing(4, 1)], UDP, &udp);
    assert!(matches!(sw.send(A, &mut buf), Next::Tx { port: B, .. }));
    // A second Routing header cannot hide one: two are malformed.
    let mut buf = ipv6_frame(A_MAC, (A6, B6), &[routing(4, 0), routing(0, 1)], UDP, &udp);
    assert_eq!(sw.send(A, &mut buf), Next::Drop(DropReason::Ipv6BadExtensionHeaders));
}

#[test]
fn first_fragments_must_hold_the_whole_header_chain() {
    let mut sw = switch();
    let v6 = |headers: &[(u8, Vec<u8>)], last, payload: &[u8]| ipv6_frame(A_MAC, (A6, B6), headers, last, payload);
    let incomplete = [
        ("16 bytes of TCP", v6(&[fragment(0, true)], TCP, &[0; 16])),
        ("empty", v6(&[fragment(0, true)], UDP, &[])),
        ("the chain cut after the Fragment header", {
            let mut buf = v6(&[fragment(0, true), dest_options()], UDP, &[]);
            buf.truncate(buf.len() - 4);
            buf[L3 + 5] -= 4;
            buf
        }),
        ("IPv4, 16 bytes of TCP", ipv4_frame(A_MAC, (A_IP, B_IP), TCP, 0x2000, &[0; 16])),
        ("IPv4, 4 bytes of UDP", ipv4_frame(A_MAC, (A_IP, B_IP), UDP, 0x2000, &[0; 4])),
    ];
    for (what, mut buf) in incomplete {
        assert_eq!(sw.send(A, &mut buf), Next::Drop(DropReason::FirstFragmentIncomplete), "{what}");
    }
    let complete = [
        ("TCP header whole", v6(&[fragment(0, true), dest_options()], TCP, &[0; 20])),
        ("UDP header whole", v6(&[fragment(0, true)], UDP, &[0; 8])),
        ("IPv4, TCP header whole", ipv4_frame(A_MAC, (A_IP, B_IP), TCP, 0x2000, &[0; 24])),
        ("IPv4, not a fragment", ipv4_frame(A_MAC, (A_IP, B_IP), TCP, 0x4000, &[0; 4])),
    ];
    for (what, mut buf) in complete {
        assert!(matches!(sw.send(A, &mut buf), Next::Tx { port: B, .. }), "{what}");
    }
}

#[test]
fn later_fragments_overwriting_the_first_fragments_headers_are_dropped() {
    let mut sw = switch();
    let v6 = |offset, first_header| ipv6_frame(A_MAC, (A6, B6), &[fragment(offset, true)], first_header, &[0; 64]);
    let v4 = |offset: u16, protocol| ipv4_frame(A_MAC, (A_IP, B_IP), protocol, 0x2000 | (offset / 8), &[0; 64]);
    // Offsets 8 and 16 land in the TCP header; 8 in whatever follows a Destination Options header.
    for (what, mut buf) in [
        ("v6 TCP at 8", v6(8, TCP)),
        ("v6 TCP at 16", v6(16, TCP)),
        ("v6 Destination Options at 8", v6(8, ipv6::PROTO_DEST_OPTIONS)),
        ("v4 TCP at 8", v4(8, TCP)),
        ("v4 TCP at 16", v4(16, TCP)),
    ] {
        assert_eq!(sw.send(A, &mut buf), Next::Drop(DropReason::FragmentOverlapsHeaders), "{what}");
    }
    // Past the headers the data is the reassembling pod's to judge.
    for (what, mut buf) in [
        ("v6 TCP at 24", v6(24, TCP)),
        ("v6 UDP at 8", v6(8, UDP)),
        ("v4 TCP at 24", v4(24, TCP)),
        ("v4 UDP at 8", v4(8, UDP)),
    ] {
        assert!(matches!(sw.send(A, &mut buf), Next::Tx { port: B, .. }), "{what}");
    }
}

#[test]
fn atomic_fragments_from_pods_are_dropped_and_from_elsewhere_passed() {
    let mut sw = switch();
    let mut buf = ipv6_frame(A_MAC, (A6, B6), &[fragment(0, false)], UDP, &[0; 8]);
    assert_eq!(sw.send(A, &mut buf), Next::Drop(DropReason::Ipv6AtomicFragment));
    let mut buf = ipv6_frame(HOST_MAC, (FAR6, A6), &[fragment(0, false)], UDP, &[0; 8]);
    assert!(matches!(sw.send(HOST, &mut buf), Next::Tx { port: A, .. }));
}

/// Each of these drop reasons from a frame that causes it (for the drop-reason walk).
pub fn drop_reasons() -> HashSet<DropReason> {
    let mut sw = switch();
    let frames = [
        (ipv6_frame(A_MAC, (A6, B6), &[routing(0, 1)], UDP, &[0; 8]), DropReason::Ipv6RoutingHeader0),
        (ipv6_frame(A_MAC, (A6, B6), &[fragment(0, false)], UDP, &[0; 8]), DropReason::Ipv6AtomicFragment),
        (ipv6_frame(A_MAC, (A6, B6), &[fragment(0, true)], TCP, &[0; 8]), DropReason::FirstFragmentIncomplete),
        (ipv4_frame(A_MAC, (A_IP, B_IP), TCP, 0x2001, &[0; 8]), DropReason::FragmentOverlapsHeaders),
        (
            {
                let mut buf = padded(icmp_echo(A_MAC, GW_MAC, A_IP, B_IP, 64, 8), 8);
                VnetHeader { gso_type: vnet::GSO_UDP_L4, gso_size: 8, ..Default::default() }.write(&mut buf);
                buf
            },
            DropReason::IpLengthMismatch,
        ),
    ];
    frames
        .into_iter()
        .map(|(mut buf, reason)| {
            assert_eq!(sw.send(A, &mut buf), Next::Drop(reason), "{reason:?}");
            reason
        })
        .collect()
}
