//! UDP GSO frames (a pod's UDP_SEGMENT sends, virtio-net GSO_UDP_L4) through the pipeline and
//! the forwarder, IPv4 and IPv6: carried whole to a port that takes them, with the offload
//! metadata kept and the partial checksum still right after the rewrite (TTL and hop limit are
//! not in the pseudo-header); cut into datagrams, each parsed and verified by etherparse, for a
//! port that does not; judged against the MTU by their datagrams.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

use etherparse::{NetSlice, PacketBuilder, SlicedPacket, TransportSlice};
use vswitch::datapath::{Forwarder, PortQueues, Snapshot, WorkerStats};
use vswitch::pipeline::{DropReason, IcmpLimiter, Next, Pipeline};
use vswitch::port::{MemoryPort, NoUdpGso, PortQueue};
use vswitch::state::ForwardingStateBuilder;
use vswitch::wire::checksum;
use vswitch::wire::vnet::{self, VnetHeader};

use super::{with_vnet, Switch, A, A_IP, A_MAC, B, B_IP, B_MAC, GW_IP, GW_MAC, HOST, HOST_MAC};

const A6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 1, 2);
const B6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 1, 3);
const L3: usize = vnet::LEN + 14;

/// Dual-stack pods A and B (MTU 1500) and the host port.
fn dual() -> Switch {
    Switch::from(
        ForwardingStateBuilder::new(GW_IP, GW_MAC)
            .dual_stack_pod(Some(A_IP), Some(A6), A_MAC, 1500)
            .dual_stack_pod(Some(B_IP), Some(B6), B_MAC, 1500)
            .host_port(HOST_MAC, 9000),
    )
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 253) as u8 ^ (i >> 8) as u8).collect()
}

/// A UDP GSO frame from pod A to `to` (B_IP or B6) as A's kernel hands it over: one datagram's
/// headers and the whole payload, the UDP checksum field seeded with the pseudo-header sum for
/// whoever completes it.
pub(super) fn frame(to: IpAddr, data: &[u8], gso_size: u16) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(A_MAC.0, GW_MAC.0);
    let (builder, ip_len) = match to {
        IpAddr::V4(to) => (builder.ipv4(A_IP.octets(), to.octets(), 64), 20),
        IpAddr::V6(to) => (builder.ipv6(A6.octets(), to.octets(), 64), 40),
    };
    let mut frame = Vec::new();
    builder.udp(40000, 443).write(&mut frame, data).unwrap();
    let l4 = 14 + ip_len;
    let udp_len = (frame.len() - l4) as u16;
    let seed = match to {
        IpAddr::V4(to) => checksum::ipv4_pseudo_header(A_IP, to, 17, udp_len),
        IpAddr::V6(to) => checksum::ipv6_pseudo_header(&A6, &to, 17, udp_len.into()),
    };
    frame[l4 + 6..l4 + 8].copy_from_slice(&seed.to_be_bytes());
    let header = VnetHeader {
        flags: vnet::FLAG_NEEDS_CSUM,
        gso_type: vnet::GSO_UDP_L4,
        hdr_len: (l4 + 8) as u16,
        gso_size,
        csum_start: l4 as u16,
        csum_offset: 6,
    };
    with_vnet(header, frame)
}

/// Runs `frame` from pod A through a forwarder to pod B, whose queue takes UDP GSO frames or
/// not; returns what B's queue got and the counters.
fn forward(sw: &Switch, frame: Vec<u8>, b_takes_udp_gso: bool) -> (Vec<Vec<u8>>, Arc<WorkerStats>) {
    let ports: Vec<Arc<MemoryPort>> = (0..3).map(|_| Arc::new(MemoryPort::default())).collect();
    let queues: Vec<Option<PortQueues>> = ports
        .iter()
        .enumerate()
        .map(|(id, p)| {
            let queue: Arc<dyn PortQueue> = p.clone();
            let queue = if id == B as usize && !b_takes_udp_gso { Arc::new(NoUdpGso(queue)) } else { queue };
            Some(Arc::from(vec![queue]))
        })
        .collect();
    let snapshot = Snapshot { generation: 1, forwarding: sw.state.clone(), queues };
    let (slow_path, _slow_rx) = tokio::sync::mpsc::channel(1);
    let stats = Arc::new(WorkerStats::default());
    let mut forwarder = Forwarder::new(0, stats.clone(), Pipeline::new(IcmpLimiter::new(10, 10)), slow_path);
    ports[A as usize].push(frame);
    forwarder.forward_batch(&snapshot, A, &*ports[A as usize]);
    assert!(ports[A as usize].take_sent().is_empty() && ports[HOST as usize].take_sent().is_empty());
    (ports[B as usize].take_sent(), stats)
}

/// Parses a frame B got (vnet header stripped) with etherparse and checks what the switch and
/// the segmentation set: the MACs, TTL or hop limit 63, IP lengths and header checksum, UDP
/// length and checksum. Returns the UDP payload.
fn verify(frame: &[u8]) -> Vec<u8> {
    let p = SlicedPacket::from_ethernet(&frame[vnet::LEN..]).expect("a well-formed frame");
    let Some(etherparse::LinkSlice::Ethernet2(eth)) = p.link else { panic!("not Ethernet II") };
    assert_eq!((eth.source(), eth.destination()), (GW_MAC.0, B_MAC.0), "MACs rewritten");
    let Some(TransportSlice::Udp(udp)) = p.transport else { panic!("not UDP") };
    let data = udp.payload();
    assert_eq!(udp.length() as usize, 8 + data.len(), "UDP length");
    let expected = match p.net.expect("IP") {
        NetSlice::Ipv4(ip) => {
            let h = ip.header().to_header();
            assert_eq!(h.time_to_live, 63);
            assert_eq!(h.total_len as usize, frame.len() - L3, "IPv4 total length");
            assert_eq!(h.header_checksum, h.calc_header_checksum(), "IPv4 header checksum");
            udp.to_header().calc_checksum_ipv4(&h, data).unwrap()
        }
        NetSlice::Ipv6(ip) => {
            let h = ip.header().to_header();
            assert_eq!(h.hop_limit, 63);
            assert_eq!(h.payload_length as usize, 8 + data.len(), "IPv6 payload length");
            udp.to_header().calc_checksum_ipv6(&h, data).unwrap()
        }
        _ => panic!("not IP"),
    };
    assert_eq!(udp.checksum(), expected, "UDP checksum");
    data.to_vec()
}

/// Completes a partial checksum as the receiving kernel or NIC does: the sum from csum_start to
/// the end of the frame (the field holds the pseudo-header sum), inverted, at csum_offset.
fn complete_checksum(frame: &mut [u8]) {
    let h = VnetHeader::parse(&frame[..vnet::LEN], frame.len() - vnet::LEN).unwrap();
    let start = vnet::LEN + h.csum_start as usize;
    let c = checksum::checksum(&frame[start..]);
    let at = start + h.csum_offset as usize;
    frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

#[test]
fn udp_gso_frames_cross_whole_with_their_partial_checksum_still_right() {
    let data = payload(46 * 1400 + 700);
    for to in [IpAddr::V4(B_IP), IpAddr::V6(B6)] {
        let original = frame(to, &data, 1400);
        let (mut sent, stats) = forward(&dual(), original.clone(), true);
        assert_eq!(sent.len(), 1, "{to}: one frame in, one frame out");
        let out = &mut sent[0];
        assert_eq!(out.len(), original.len());
        assert_eq!(out[..vnet::LEN], original[..vnet::LEN], "{to}: the offload metadata unchanged");
        complete_checksum(out);
        assert_eq!(verify(out), data, "{to}: the whole payload, checksum valid once completed");
        assert_eq!(stats.port(B).tx_segmented, 0);
    }
}

#[test]
fn udp_gso_frames_are_cut_into_datagrams_for_a_port_that_cannot_take_them() {
    // 46 full datagrams and an odd last one.
    let data = payload(46 * 1400 + 701);
    for to in [IpAddr::V4(B_IP), IpAddr::V6(B6)] {
        let (sent, stats) = forward(&dual(), frame(to, &data, 1400), false);
        assert_eq!(sent.len(), 47, "{to}");
        let mut joined = Vec::new();
        for (i, datagram) in sent.iter().enumerate() {
            let h = VnetHeader::parse(&datagram[..vnet::LEN], datagram.len() - vnet::LEN).unwrap();
            assert_eq!(h, VnetHeader::default(), "{to}: datagram {i} leaves complete, without offload");
            let part = verify(datagram);
            assert_eq!(part.len(), if i == 46 { 701 } else { 1400 }, "{to}: datagram {i}");
            joined.extend(part);
        }
        assert_eq!(joined, data, "{to}: the datagrams, in order, carry the payload");
        assert_eq!(stats.port(B).tx_segmented, 1);
        assert_eq!(stats.port(B).tx_packets, 47);
        assert_eq!(stats.port(A).rx_packets, 1);
    }
    // IPv4 identifications follow on from the super-frame's, one per datagram.
    let (sent, _) = forward(&dual(), frame(IpAddr::V4(B_IP), &data, 1400), false);
    let ids: Vec<u16> = sent.iter().map(|d| u16::from_be_bytes([d[L3 + 4], d[L3 + 5]])).collect();
    assert!(ids.windows(2).all(|w| w[1] == w[0].wrapping_add(1)), "{ids:?}");
}

#[test]
fn udp_gso_frames_are_judged_by_their_datagrams_against_the_mtu() {
    let mut sw = dual();
    let data = payload(20_000);
    // 20 + 8 + 1472 = 1500 fits; one byte more does not (DF: fragmentation needed).
    assert!(matches!(sw.send(A, &mut frame(IpAddr::V4(B_IP), &data, 1472)), Next::Tx { port: B, .. }));
    assert!(matches!(
        sw.send(A, &mut frame(IpAddr::V4(B_IP), &data, 1473)),
        Next::Respond { reason: DropReason::FragmentationNeeded, .. }
    ));
    // 40 + 8 + 1452 = 1500.
    assert!(matches!(sw.send(A, &mut frame(IpAddr::V6(B6), &data, 1452)), Next::Tx { port: B, .. }));
    assert!(matches!(
        sw.send(A, &mut frame(IpAddr::V6(B6), &data, 1453)),
        Next::Respond { reason: DropReason::PacketTooBig, .. }
    ));
}
