//! `vswitchctl trace`: runs one frame through the live pipeline, sending nothing, and says in
//! words what happened: each stage, the route that matched, and the frame as it leaves.
//!
//! The frame is either given in hex or built here from a flow (a pod to an address, TCP, UDP or
//! ICMP, of a size, optionally as a GSO super-frame the way a pod's kernel hands TSO frames over).

use std::net::IpAddr;

use vswitch_api::api::{FlowProtocol, FlowSpec, RouteView, TraceView};

use crate::datapath::Snapshot;
use crate::pipeline::{IcmpLimiter, Next, Pipeline, Trace, MAX_FRAME};
use crate::state::PortId;
use crate::wire::ethernet::{self, EthernetFrame};
use crate::wire::ipv4::{self, Ipv4Packet};
use crate::wire::ipv6::{self, Ipv6Packet};
use crate::wire::vnet::{self, VnetHeader};
use crate::wire::{checksum, EtherType, MacAddr};

const TCP_HEADER: usize = 20;
const UDP_HEADER: usize = 8;
const SOURCE_PORT: u16 = 40000;

/// Why a frame or a flow cannot be traced.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TraceError {
    #[error("no port named '{0}'")]
    NoSuchPort(String),
    #[error("no pod or port '{0}'")]
    NoSuchPod(String),
    #[error("frame is not hex: {0}")]
    NotHex(#[from] hex::FromHexError),
    #[error("frame too long")]
    FrameTooLong,
    #[error("'{0}' is not a pod port")]
    NotAPod(String),
    #[error("'{from}' has no address of {to}'s family")]
    NoAddressOfFamily { from: String, to: IpAddr },
    #[error("{src} and {dst} are of different families")]
    MixedFamilies { src: IpAddr, dst: IpAddr },
    #[error("size {size} is outside {min}..={max}")]
    Size { size: usize, min: usize, max: usize },
    #[error("GSO frames carry TCP or UDP")]
    GsoNotTcpUdp,
}

/// A frame (vnet header first) from `src` (`src_mac`) to `flow.to` (of the same family),
/// addressed to the gateway MAC as the pod's kernel would send it. Returns the buffer and the
/// frame's length in it.
pub fn flow_frame(
    flow: &FlowSpec,
    src: IpAddr,
    src_mac: MacAddr,
    gateway_mac: MacAddr,
    mtu: u16,
) -> Result<(Vec<u8>, usize), TraceError> {
    let v6 = src.is_ipv6();
    if v6 != flow.to.is_ipv6() {
        return Err(TraceError::MixedFamilies { src, dst: flow.to });
    }
    let ip_header = if v6 { ipv6::HEADER_LEN } else { ipv4::MIN_HEADER_LEN };
    let (protocol, l4_header) = match flow.protocol {
        FlowProtocol::Tcp { .. } => (ipv4::PROTO_TCP, TCP_HEADER),
        FlowProtocol::Udp { .. } => (ipv4::PROTO_UDP, UDP_HEADER),
        FlowProtocol::Icmp if v6 => (ipv6::PROTO_ICMPV6, crate::wire::icmpv6::HEADER_LEN),
        FlowProtocol::Icmp => (ipv4::PROTO_ICMP, crate::wire::icmp::HEADER_LEN),
    };
    let default = if flow.gso { 65_000 } else { ip_header + l4_header + 56 };
    let size = flow.size.map_or(default, usize::from);
    let min = ip_header + l4_header;
    let max = MAX_FRAME - vnet::LEN - ethernet::HEADER_LEN;
    if !(min..=max.min(65_535)).contains(&size) {
        return Err(TraceError::Size { size, min, max: max.min(65_535) });
    }
    if flow.gso && flow.protocol == FlowProtocol::Icmp {
        return Err(TraceError::GsoNotTcpUdp);
    }
    let mut buf = vec![0u8; vnet::LEN + ethernet::HEADER_LEN + size];
    let l3 = vnet::LEN + ethernet::HEADER_LEN;
    let l4 = l3 + ip_header;
    let l4_len = size - ip_header;
    {
        let mut eth = EthernetFrame::new_checked(&mut buf[vnet::LEN..]).expect("sized");
        eth.set_dst(gateway_mac);
        eth.set_src(src_mac);
        eth.set_ethertype(if v6 { EtherType::Ipv6 } else { EtherType::Ipv4 });
    }
    match (src, flow.to) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => ipv4::emit_header(&mut buf[l3..], src, dst, protocol, l4_len, 64),
        (IpAddr::V6(src), IpAddr::V6(dst)) => ipv6::emit_header(&mut buf[l3..], src, dst, protocol, l4_len, 64),
        _ => unreachable!("families checked above"),
    }
    let segment = &mut buf[l4..];
    match flow.protocol {
        FlowProtocol::Tcp { port } => {
            segment[0..2].copy_from_slice(&SOURCE_PORT.to_be_bytes());
            segment[2..4].copy_from_slice(&port.to_be_bytes());
            segment[4..8].copy_from_slice(&1u32.to_be_bytes());
            segment[12] = 5 << 4;
            // A connection's first packet, or a data segment of an established one.
            segment[13] = if flow.gso || size > min { 0x18 } else { 0x02 };
            segment[14..16].copy_from_slice(&65_535u16.to_be_bytes());
        }
        FlowProtocol::Udp { port } => {
            segment[0..2].copy_from_slice(&SOURCE_PORT.to_be_bytes());
            segment[2..4].copy_from_slice(&port.to_be_bytes());
            segment[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
        }
        FlowProtocol::Icmp => {
            segment[0] = if v6 { crate::wire::icmpv6::TYPE_ECHO_REQUEST } else { crate::wire::icmp::TYPE_ECHO_REQUEST };
            segment[4..6].copy_from_slice(&1u16.to_be_bytes());
            segment[6..8].copy_from_slice(&1u16.to_be_bytes());
        }
    }
    let (checksum_at, gso_type) = match flow.protocol {
        FlowProtocol::Tcp { .. } if v6 => (16, vnet::GSO_TCPV6),
        FlowProtocol::Tcp { .. } => (16, vnet::GSO_TCPV4),
        FlowProtocol::Udp { .. } => (6, vnet::GSO_UDP_L4),
        FlowProtocol::Icmp => (2, vnet::GSO_NONE),
    };
    if flow.gso {
        // As the kernel hands it over: the checksum left for the device (the pseudo-header sum
        // in place), the segment size of the path's MTU.
        let pseudo = pseudo_header(src, flow.to, protocol, l4_len);
        buf[l4 + checksum_at..l4 + checksum_at + 2].copy_from_slice(&pseudo.to_be_bytes());
        VnetHeader {
            flags: vnet::FLAG_NEEDS_CSUM,
            gso_type,
            hdr_len: (ethernet::HEADER_LEN + ip_header + l4_header) as u16,
            gso_size: mtu.saturating_sub((ip_header + l4_header) as u16),
            csum_start: (ethernet::HEADER_LEN + ip_header) as u16,
            csum_offset: checksum_at as u16,
        }
        .write(&mut buf);
    } else {
        // ICMP's checksum covers the message only; ICMPv6's, TCP's and UDP's a pseudo-header too.
        let sum = match flow.protocol {
            FlowProtocol::Icmp if !v6 => checksum::checksum(&buf[l4..]),
            _ => l4_checksum(src, flow.to, protocol, &buf[l4..]),
        };
        buf[l4 + checksum_at..l4 + checksum_at + 2].copy_from_slice(&sum.to_be_bytes());
    }
    let len = buf.len();
    Ok((buf, len))
}

/// The folded sum of the transport checksum's pseudo-header (RFC 768 for IPv4, RFC 8200 §8.1 for
/// IPv6): what a device expects in place for a checksum it completes.
fn pseudo_header(src: IpAddr, dst: IpAddr, protocol: u8, len: usize) -> u16 {
    match (src, dst) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => checksum::ipv4_pseudo_header(src, dst, protocol, len as u16),
        (IpAddr::V6(src), IpAddr::V6(dst)) => checksum::ipv6_pseudo_header(&src, &dst, protocol, len as u32),
        _ => unreachable!("flow_frame refuses mixed families"),
    }
}

fn l4_checksum(src: IpAddr, dst: IpAddr, protocol: u8, segment: &[u8]) -> u16 {
    !checksum::add(pseudo_header(src, dst, protocol, segment.len()), checksum::sum(segment))
}

/// One frame (vnet header first) in words: the offload, the MACs, the addresses, the protocol.
pub fn describe(frame: &[u8]) -> String {
    let Some(eth_bytes) = frame.get(vnet::LEN..) else { return "(no frame)".into() };
    let Ok(eth) = EthernetFrame::new_checked(eth_bytes) else { return "(not Ethernet)".into() };
    let offload = VnetHeader::parse(frame, eth_bytes.len()).map_or_else(|_| String::new(), |h| format!(", {h}"));
    let mut words = format!("{} > {}, {} bytes{offload}", eth.src(), eth.dst(), eth_bytes.len());
    if let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) {
        let l4 = ip.payload();
        let ports = |name: &str| match l4.get(0..4) {
            Some(p) => format!("{name} {} > {}", u16::from_be_bytes([p[0], p[1]]), u16::from_be_bytes([p[2], p[3]])),
            None => name.to_string(),
        };
        let protocol = match ip.protocol() {
            ipv4::PROTO_TCP => ports("tcp"),
            ipv4::PROTO_UDP => ports("udp"),
            ipv4::PROTO_ICMP => format!("icmp type {} code {}", l4.first().unwrap_or(&0), l4.get(1).unwrap_or(&0)),
            other => format!("protocol {other}"),
        };
        words += &format!(": {} > {} ttl {}, {protocol}", ip.src(), ip.dst(), ip.ttl());
    } else if let Ok(ip) = Ipv6Packet::new_checked(eth.payload()) {
        let upper = ip.upper_layer().ok();
        let l4 = upper.and_then(|u| ip.packet().get(u.offset..)).unwrap_or_default();
        let ports = |name: &str| match l4.get(0..4) {
            Some(p) => format!("{name} {} > {}", u16::from_be_bytes([p[0], p[1]]), u16::from_be_bytes([p[2], p[3]])),
            None => name.to_string(),
        };
        let protocol = match upper.map(|u| u.protocol) {
            Some(ipv6::PROTO_TCP) => ports("tcp"),
            Some(ipv6::PROTO_UDP) => ports("udp"),
            Some(ipv6::PROTO_ICMPV6) => {
                format!("icmpv6 type {} code {}", l4.first().unwrap_or(&0), l4.get(1).unwrap_or(&0))
            }
            Some(other) => format!("protocol {other}"),
            None => "malformed extension headers".to_string(),
        };
        words += &format!(": {} > {} hop limit {}, {protocol}", ip.src(), ip.dst(), ip.hop_limit());
    }
    words
}

/// The most specific route for `dst` among `routes`, in words.
pub fn matching_route(routes: &[RouteView], dst: IpAddr) -> Option<String> {
    routes
        .iter()
        .filter_map(|r| {
            let len = match (r.prefix.parse::<fib::AnyPrefix>().ok()?, dst) {
                (fib::AnyPrefix::V4(p), IpAddr::V4(dst)) if p.contains(dst) => p.len(),
                (fib::AnyPrefix::V6(p), IpAddr::V6(dst)) if p.contains(dst) => p.len(),
                _ => return None,
            };
            Some((len, r))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, r)| {
            format!("{} out of {} (next hop {}, mtu {}, from {})", r.prefix, r.port, r.next_hop, r.mtu, r.origin)
        })
}

/// Runs `buf[..len]` (vnet header first) through the pipeline as if it arrived on `port`.
pub fn run(snapshot: &Snapshot, routes: &[RouteView], port: PortId, mut buf: Vec<u8>, len: usize) -> TraceView {
    buf.resize(MAX_FRAME.max(len), 0);
    let destination = buf.get(vnet::LEN..len).and_then(|f| EthernetFrame::new_checked(f).ok()).and_then(|eth| {
        match Ipv4Packet::new_checked(eth.payload()) {
            Ok(ip) => Some(IpAddr::V4(ip.dst())),
            Err(_) => Ipv6Packet::new_checked(eth.payload()).ok().map(|ip| IpAddr::V6(ip.dst())),
        }
    });
    let fibs = snapshot.forwarding.pin();
    let mut pipeline = Pipeline::new(IcmpLimiter::new(1, 1));
    let mut trace = Trace::default();
    let next = pipeline.process(&snapshot.forwarding, &fibs, port, &mut buf, len, 0, &mut trace);
    let name = |id: PortId| snapshot.forwarding.port(id).map_or_else(|| id.to_string(), |p| p.name.clone());
    let (verdict, out) = match next {
        Next::Tx { port, len } => (format!("output to {} ({} bytes)", name(port), len - vnet::LEN), Some(len)),
        Next::Drop(reason) => (format!("drop: {} ({})", reason.name(), reason.help()), None),
        Next::Respond { reason, port, len } => (
            format!("drop: {}; ICMP error of {} bytes back to {}", reason.name(), len - vnet::LEN, name(port)),
            Some(len),
        ),
        Next::Resolve { port, next_hop, .. } => (format!("to {} once {next_hop} is resolved", name(port)), None),
        Next::ToControl { .. } => ("to the control plane (neighbour learning)".to_string(), None),
    };
    TraceView {
        steps: trace.steps,
        verdict,
        route: destination.and_then(|dst| matching_route(routes, dst)),
        output: out.map(|len| describe(&buf[..len])),
        output_hex: out.map(|len| hex::encode(&buf[vnet::LEN..len])),
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::state::ForwardingStateBuilder;
    use crate::wire::icmpv6::Icmpv6Packet;

    const GW_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);
    const A_MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 0xa]);
    const A6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0xa);
    const B6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 0xb);

    fn snapshot() -> (Snapshot, crate::state::Fibs) {
        let (forwarding, fibs) = ForwardingStateBuilder::new(Ipv4Addr::new(169, 254, 1, 1), GW_MAC)
            .dual_stack_pod(Some(Ipv4Addr::new(10, 0, 0, 10)), Some(A6), A_MAC, 1500)
            .dual_stack_pod(None, Some(B6), MacAddr([2, 0, 0, 0, 0, 0xb]), 1500)
            .build();
        (Snapshot { generation: 1, forwarding, queues: Vec::new() }, fibs)
    }

    fn flow(to: IpAddr, protocol: FlowProtocol, gso: bool) -> FlowSpec {
        FlowSpec { from: "pod0".into(), to, protocol, size: None, gso }
    }

    #[test]
    fn ipv6_flows_are_built_as_a_pod_would_send_them_and_forwarded() {
        let (snapshot, _fibs) = snapshot();
        let routes = [RouteView {
            prefix: format!("{B6}/128"),
            port: "pod1".into(),
            next_hop: "02:00:00:00:00:0b".into(),
            mtu: 1500,
            origin: vswitch_api::api::RouteOrigin::Port,
        }];
        for (protocol, gso) in [
            (FlowProtocol::Icmp, false),
            (FlowProtocol::Udp { port: 53 }, false),
            (FlowProtocol::Tcp { port: 80 }, false),
            (FlowProtocol::Tcp { port: 80 }, true),
        ] {
            let (buf, len) = flow_frame(&flow(B6.into(), protocol, gso), A6.into(), A_MAC, GW_MAC, 1500).unwrap();
            if protocol == FlowProtocol::Icmp {
                let icmp =
                    Icmpv6Packet::new_checked(&buf[vnet::LEN + ethernet::HEADER_LEN + ipv6::HEADER_LEN..len]).unwrap();
                assert!(icmp.verify_checksum(A6, B6), "the echo request's checksum");
            }
            let view = run(&snapshot, &routes, 0, buf, len);
            assert!(view.verdict.starts_with("output to pod1"), "{protocol:?} gso {gso}: {view:?}");
            assert!(view.output.as_deref().is_some_and(|o| o.contains("hop limit 63")), "{view:?}");
            assert_eq!(view.route.as_deref().map(|r| r.starts_with(&format!("{B6}/128"))), Some(true));
        }
        // A flow between families is refused, not built.
        let mixed = flow_frame(
            &flow(B6.into(), FlowProtocol::Icmp, false),
            Ipv4Addr::new(10, 0, 0, 10).into(),
            A_MAC,
            GW_MAC,
            1500,
        );
        assert!(matches!(mixed.unwrap_err(), TraceError::MixedFamilies { .. }));
    }
}
