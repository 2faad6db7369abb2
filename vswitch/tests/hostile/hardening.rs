//! The hostile pod's attacks on a router's finer rules, and what the switch forwards on purpose:
//! Routing Header type 0, incomplete first fragments, fragments overwriting the first one's
//! headers, atomic fragments, a checksum offload pointing past the IP packet (all dropped); bytes
//! past the IP length (cut, the packet forwarded); fragments overlapping only in their data
//! (forwarded, and the pod's own reassembly discards the datagram, RFC 5722).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use vpc_lab::netns::Pod;
use vswitch::port::packet::PacketSocket;
use vswitch::port::{netns, PortQueue};
use vswitch::wire::vnet::{self, VnetHeader};

use super::{checksum, drain, fragment, ipv6_frame, mac_of, GW_MAC, MARKER};

const TCP: u8 = 6;
const UDP: u8 = 17;
const MORE_FRAGMENTS: u16 = 0x2000;
/// What a frame forwarded on purpose carries instead of the marker.
const FORWARDED: &[u8] = b"FORWARDED-OK!";

/// An IPv4 frame from `src_mac` to the gateway: `protocol`, flags and fragment offset `flags`,
/// identification `id`, then `payload`.
pub(super) fn ipv4_packet(
    src_mac: [u8; 6],
    (src, dst, ttl): (Ipv4Addr, Ipv4Addr, u8),
    (protocol, flags, id): (u8, u16, u16),
    payload: &[u8],
) -> Vec<u8> {
    let mut f = vec![0u8; vnet::LEN];
    f.extend_from_slice(&GW_MAC);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + payload.len()) as u16;
    let mut ip =
        [&[0x45, 0][..], &total.to_be_bytes(), &id.to_be_bytes(), &flags.to_be_bytes(), &[ttl, protocol, 0, 0]]
            .concat();
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(payload);
    f
}

/// A Destination Options header of 24 bytes whose padding is the marker: a frame that carries
/// nothing after its headers still carries the marker.
fn dest_options_with_marker() -> (u8, Vec<u8>) {
    let mut header = vec![0, 2, 1, 20];
    header.extend_from_slice(MARKER);
    header.resize(24, 0);
    (60, header)
}

/// A Destination Options header of 16 bytes (PadN).
fn padn_16() -> Vec<u8> {
    let mut header = vec![0, 1, 1, 12];
    header.resize(16, 0);
    header
}

/// Bytes starting with the marker, `len` long.
fn marked(len: usize) -> Vec<u8> {
    let mut bytes = MARKER.to_vec();
    bytes.resize(len, 0xaa);
    bytes
}

/// Every attack here, each a frame the switch must drop (the pod-to-pod ones sent to pod-b).
pub(super) fn kinds(h: &Pod, b: &Pod) -> Vec<(&'static str, Vec<u8>)> {
    let hm = mac_of(h);
    let (h6, b6) = (h.ipv6.expect("dual stack"), b.ipv6.expect("dual stack"));
    let to_b = ((hm, GW_MAC), (h6, b6, 64));
    let v4 =
        |(protocol, flags): (u8, u16), payload: &[u8]| ipv4_packet(hm, (h.ip, b.ip, 64), (protocol, flags, 7), payload);
    let nothing = |_: &mut Vec<u8>| {};
    // Two addresses to visit: the packet would bounce between pod-b and the hostile pod.
    let routing_0 = {
        let mut header = vec![0, 4, 0, 2, 0, 0, 0, 0];
        header.extend_from_slice(&b6.octets());
        header.extend_from_slice(&h6.octets());
        (43, header)
    };
    vec![
        ("routing header type 0, segments left 2", ipv6_frame(to_b, &[routing_0], (UDP, marked(16)), nothing)),
        ("atomic fragment", ipv6_frame(to_b, &[fragment(0, false)], (UDP, marked(16)), nothing)),
        ("tiny first fragment (16 bytes of TCP)", ipv6_frame(to_b, &[fragment(0, true)], (TCP, marked(16)), nothing)),
        (
            "empty first fragment",
            ipv6_frame(to_b, &[dest_options_with_marker(), fragment(0, true)], (UDP, vec![]), nothing),
        ),
        (
            "first fragment cut inside its extension headers",
            ipv6_frame(to_b, &[dest_options_with_marker(), fragment(0, true), (60, padn_16())], (UDP, vec![]), |f| {
                f.truncate(f.len() - 8);
                let ip = vnet::LEN + 14;
                let payload = (f.len() - ip - 40) as u16;
                f[ip + 4..ip + 6].copy_from_slice(&payload.to_be_bytes());
            }),
        ),
        ("fragment overwriting the TCP header", ipv6_frame(to_b, &[fragment(8, true)], (TCP, marked(64)), nothing)),
        ("v4 tiny first fragment (16 bytes of TCP)", v4((TCP, MORE_FRAGMENTS), &marked(16))),
        ("v4 fragment at offset 1 over TCP (RFC 1858)", v4((TCP, MORE_FRAGMENTS | 1), &marked(64))),
        ("v4 fragment at offset 2 over TCP", v4((TCP, 2), &marked(64))),
        ("checksum offload into the padding", {
            let mut f = v4((UDP, 0), &[0x30, 0x39, 0x30, 0x39, 0, 12, 0, 0, 1, 2, 3, 4]);
            f.extend_from_slice(&marked(24));
            let csum_start = (f.len() - vnet::LEN - 8) as u16;
            VnetHeader { flags: vnet::FLAG_NEEDS_CSUM, csum_start, csum_offset: 6, ..Default::default() }
                .write(&mut f[..vnet::LEN]);
            f
        }),
    ]
}

/// The drop reasons [`kinds`] must have counted.
pub(super) const REASONS: &[&str] = &[
    "ipv6_routing_header_0",
    "ipv6_atomic_fragment",
    "first_fragment_incomplete",
    "fragment_overlaps_headers",
    "ip_length_mismatch",
];

/// A UDP datagram from `src` to `dst` (ports 4000 to `port`) with its checksum, which IPv6
/// requires and a reassembled IPv4 datagram is checked against too.
fn udp_datagram(src: IpAddr, dst: IpAddr, port: u16, data: &[u8]) -> Vec<u8> {
    let len = (8 + data.len()) as u16;
    let mut udp = [&4000u16.to_be_bytes()[..], &port.to_be_bytes(), &len.to_be_bytes(), &[0, 0]].concat();
    udp.extend_from_slice(data);
    let mut pseudo = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => [&s.octets()[..], &d.octets(), &[0, UDP], &len.to_be_bytes()].concat(),
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            [&s.octets()[..], &d.octets(), &u32::from(len).to_be_bytes(), &[0, 0, 0, UDP]].concat()
        }
        _ => unreachable!("one family"),
    };
    pseudo.extend_from_slice(&udp);
    udp[6..8].copy_from_slice(&checksum(&pseudo).to_be_bytes());
    udp
}

/// `datagram` cut into two fragments, the second starting at `second_at` (a multiple of 8, at
/// most 32): at 32 they meet, below it they overlap (with the same bytes).
fn fragments(h: &Pod, b: &Pod, ipv6: bool, datagram: &[u8], id: u16, second_at: usize) -> [Vec<u8>; 2] {
    let hm = mac_of(h);
    let (first, second) = (&datagram[..32], &datagram[second_at..]);
    if ipv6 {
        let addressing = ((hm, GW_MAC), (h.ipv6.unwrap(), b.ipv6.unwrap(), 64));
        let frag = |offset: usize, more| {
            let (kind, mut header) = fragment(offset as u16, more);
            header[4..6].copy_from_slice(&id.to_be_bytes());
            (kind, header)
        };
        let nothing = |_: &mut Vec<u8>| {};
        [
            ipv6_frame(addressing, &[frag(0, true)], (UDP, first.to_vec()), nothing),
            ipv6_frame(addressing, &[frag(second_at, false)], (UDP, second.to_vec()), nothing),
        ]
    } else {
        let v4 = |flags, data: &[u8]| ipv4_packet(hm, (h.ip, b.ip, 64), (UDP, flags, id), data);
        [v4(MORE_FRAGMENTS, first), v4((second_at / 8) as u16, second)]
    }
}

/// What the switch forwards on purpose, sent after the flood: frames with bytes past their IP
/// length reach pod-b cut to the packet; a datagram in two clean fragments reaches its socket,
/// one whose fragments overlap does not (the switch passes both pairs: only the pod's
/// reassembly can see an overlap in the data). Both families.
pub(super) fn forwarded_on_purpose(h: &Pod, b: &Pod, hostile: &PacketSocket, capture_b: &PacketSocket) {
    let port = 7000 + (std::process::id() % 2000) as u16;
    let path = b.ns.path();
    let socket = netns::run_in(Some(&path), || UdpSocket::bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))))
        .expect("a UDP socket in pod-b");
    socket.set_read_timeout(Some(Duration::from_millis(500))).expect("timeout");
    drain(capture_b);

    let hm = mac_of(h);
    let (h6, b6) = (h.ipv6.unwrap(), b.ipv6.unwrap());
    let mut padded = Vec::new();
    for ipv6 in [false, true] {
        let (src, dst) = if ipv6 { (IpAddr::V6(h6), IpAddr::V6(b6)) } else { (IpAddr::V4(h.ip), IpAddr::V4(b.ip)) };
        let datagram = udp_datagram(src, dst, port, FORWARDED);
        let mut frame = if ipv6 {
            ipv6_frame(((hm, GW_MAC), (h6, b6, 64)), &[], (UDP, datagram), |_| {})
        } else {
            ipv4_packet(hm, (h.ip, b.ip, 64), (UDP, 0x4000, 1), &datagram)
        };
        frame.extend_from_slice(&marked(24));
        padded.push(frame);
    }
    for frame in &padded {
        hostile.send(frame).expect("send a padded frame");
    }
    let mut delivered = Vec::new();
    for ipv6 in [false, true] {
        let (src, dst) = if ipv6 { (IpAddr::V6(h6), IpAddr::V6(b6)) } else { (IpAddr::V4(h.ip), IpAddr::V4(b.ip)) };
        for (id, second_at, label) in [(0x100, 32, "clean"), (0x200, 24, "overlap")] {
            let data = format!("{label}-{}-{}", if ipv6 { "v6" } else { "v4" }, "x".repeat(40));
            let datagram = udp_datagram(src, dst, port, data.as_bytes());
            for frame in fragments(h, b, ipv6, &datagram, id + ipv6 as u16, second_at) {
                hostile.send(&frame).expect("send a fragment");
            }
        }
    }
    let mut buf = [0u8; 2048];
    while let Ok((n, _)) = socket.recv_from(&mut buf) {
        delivered.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    std::thread::sleep(Duration::from_millis(100));
    let frames = drain(capture_b);

    // Cut: the packet arrived without the bytes after it, and the socket got the datagram.
    assert!(frames.iter().all(|f| !f.windows(MARKER.len()).any(|w| w == MARKER)), "padding reached pod-b");
    let forwarded: Vec<_> = frames.iter().filter(|f| f.windows(FORWARDED.len()).any(|w| w == FORWARDED)).collect();
    assert_eq!(forwarded.len(), 2, "both padded packets, cut, reached pod-b");
    for f in forwarded {
        let ip_len = match f[12..14] {
            [0x08, 0x00] => u16::from_be_bytes([f[16], f[17]]) as usize,
            _ => 40 + u16::from_be_bytes([f[18], f[19]]) as usize,
        };
        assert_eq!(ip_len, f.len() - 14, "a forwarded frame ends with its IP packet");
    }
    let from_padded = delivered.iter().filter(|d| d.as_bytes() == FORWARDED).count();
    assert_eq!(from_padded, 2, "the cut packets were delivered: {delivered:?}");
    // Fragments: the clean pairs reassemble, the overlapping ones are discarded by pod-b itself.
    let clean: Vec<_> = delivered.iter().filter(|d| d.starts_with("clean")).collect();
    assert_eq!(clean.len(), 2, "clean fragments reassembled in pod-b: {delivered:?}");
    assert!(
        !delivered.iter().any(|d| d.starts_with("overlap")),
        "an overlapping datagram was delivered: {delivered:?}"
    );
    let overlapping = frames.iter().filter(|f| f.windows(7).any(|w| w == b"overlap")).count();
    eprintln!("forwarded on purpose: 2 padded packets cut, 2 datagrams in clean fragments delivered, {overlapping} overlapping first fragments forwarded and discarded by pod-b's reassembly");
}
