//! `vswitchctl trace`: runs one frame through the live pipeline, sending nothing, and says in
//! words what happened: each stage, the route that matched, and the frame as it leaves.
//!
//! The frame is either given in hex or built here from a flow (a pod to an address, TCP, UDP or
//! ICMP, of a size, optionally as a GSO super-frame the way a pod's kernel hands TSO frames over).

use std::net::Ipv4Addr;

use vswitch_api::api::{ApiError, ErrorCode, FlowProtocol, FlowSpec, RouteView, TraceView};

use crate::datapath::Snapshot;
use crate::pipeline::{IcmpLimiter, Next, Pipeline, Trace, MAX_FRAME};
use crate::state::PortId;
use crate::wire::ethernet::{self, EthernetFrame};
use crate::wire::ipv4::{self, Ipv4Packet};
use crate::wire::vnet::{self, VnetHeader};
use crate::wire::{checksum, EtherType, MacAddr};

const TCP_HEADER: usize = 20;
const UDP_HEADER: usize = 8;
const SOURCE_PORT: u16 = 40000;

fn invalid(message: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::Invalid, message)
}

/// A frame (vnet header first) from `src` (`src_mac`) to `flow.to`, addressed to the gateway MAC
/// as the pod's kernel would send it. Returns the buffer and the frame's length in it.
pub fn flow_frame(
    flow: &FlowSpec,
    src: Ipv4Addr,
    src_mac: MacAddr,
    gateway_mac: MacAddr,
    mtu: u16,
) -> Result<(Vec<u8>, usize), ApiError> {
    let (protocol, l4_header) = match flow.protocol {
        FlowProtocol::Tcp { .. } => (ipv4::PROTO_TCP, TCP_HEADER),
        FlowProtocol::Udp { .. } => (ipv4::PROTO_UDP, UDP_HEADER),
        FlowProtocol::Icmp => (ipv4::PROTO_ICMP, crate::wire::icmp::HEADER_LEN),
    };
    let default = if flow.gso { 65_000 } else { ipv4::MIN_HEADER_LEN + l4_header + 56 };
    let size = flow.size.map_or(default, usize::from);
    let min = ipv4::MIN_HEADER_LEN + l4_header;
    let max = MAX_FRAME - vnet::LEN - ethernet::HEADER_LEN;
    if !(min..=max.min(65_535)).contains(&size) {
        return Err(invalid(format!("size {size} is outside {min}..={}", max.min(65_535))));
    }
    if flow.gso && flow.protocol == FlowProtocol::Icmp {
        return Err(invalid("GSO frames carry TCP or UDP"));
    }
    let mut buf = vec![0u8; vnet::LEN + ethernet::HEADER_LEN + size];
    let l3 = vnet::LEN + ethernet::HEADER_LEN;
    let l4 = l3 + ipv4::MIN_HEADER_LEN;
    {
        let mut eth = EthernetFrame::new_checked(&mut buf[vnet::LEN..]).expect("sized");
        eth.set_dst(gateway_mac);
        eth.set_src(src_mac);
        eth.set_ethertype(EtherType::Ipv4);
    }
    ipv4::emit_header(&mut buf[l3..], src, flow.to, protocol, size - ipv4::MIN_HEADER_LEN, 64);
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
            segment[4..6].copy_from_slice(&((size - ipv4::MIN_HEADER_LEN) as u16).to_be_bytes());
        }
        FlowProtocol::Icmp => {
            segment[0] = crate::wire::icmp::TYPE_ECHO_REQUEST;
            segment[4..6].copy_from_slice(&1u16.to_be_bytes());
            segment[6..8].copy_from_slice(&1u16.to_be_bytes());
        }
    }
    let (checksum_at, gso_type) = match flow.protocol {
        FlowProtocol::Tcp { .. } => (16, vnet::GSO_TCPV4),
        FlowProtocol::Udp { .. } => (6, vnet::GSO_UDP_L4),
        FlowProtocol::Icmp => (2, vnet::GSO_NONE),
    };
    if flow.gso {
        // As the kernel hands it over: the checksum left for the device (the pseudo-header sum
        // in place), the segment size of the path's MTU.
        let pseudo = pseudo_header_sum(src, flow.to, protocol, size - ipv4::MIN_HEADER_LEN);
        buf[l4 + checksum_at..l4 + checksum_at + 2].copy_from_slice(&pseudo.to_be_bytes());
        VnetHeader {
            flags: vnet::FLAG_NEEDS_CSUM,
            gso_type,
            hdr_len: (ethernet::HEADER_LEN + ipv4::MIN_HEADER_LEN + l4_header) as u16,
            gso_size: mtu.saturating_sub((ipv4::MIN_HEADER_LEN + l4_header) as u16),
            csum_start: (ethernet::HEADER_LEN + ipv4::MIN_HEADER_LEN) as u16,
            csum_offset: checksum_at as u16,
        }
        .write(&mut buf);
    } else {
        let sum = match flow.protocol {
            FlowProtocol::Icmp => checksum::checksum(&buf[l4..]),
            _ => l4_checksum(src, flow.to, protocol, &buf[l4..]),
        };
        buf[l4 + checksum_at..l4 + checksum_at + 2].copy_from_slice(&sum.to_be_bytes());
    }
    let len = buf.len();
    Ok((buf, len))
}

fn pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, len: usize) -> [u8; 12] {
    let mut pseudo = [0u8; 12];
    pseudo[0..4].copy_from_slice(&src.octets());
    pseudo[4..8].copy_from_slice(&dst.octets());
    pseudo[9] = protocol;
    pseudo[10..12].copy_from_slice(&(len as u16).to_be_bytes());
    pseudo
}

/// The folded (not complemented) pseudo-header sum, as a device expects it for a checksum it
/// completes.
fn pseudo_header_sum(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, len: usize) -> u16 {
    checksum::sum(&pseudo_header(src, dst, protocol, len))
}

fn l4_checksum(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, segment: &[u8]) -> u16 {
    let mut data = pseudo_header(src, dst, protocol, segment.len()).to_vec();
    data.extend_from_slice(segment);
    checksum::checksum(&data)
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
    }
    words
}

/// The most specific route for `dst` among `routes`, in words.
pub fn matching_route(routes: &[RouteView], dst: Ipv4Addr) -> Option<String> {
    routes
        .iter()
        .filter_map(|r| Some((r.prefix.parse::<fib::Ipv4Prefix>().ok()?, r)))
        .filter(|(prefix, _)| prefix.contains(dst))
        .max_by_key(|(prefix, _)| prefix.len())
        .map(|(_, r)| {
            format!("{} out of {} (next hop {}, mtu {}, from {})", r.prefix, r.port, r.next_hop, r.mtu, r.origin)
        })
}

/// Runs `buf[..len]` (vnet header first) through the pipeline as if it arrived on `port`.
pub fn run(snapshot: &Snapshot, routes: &[RouteView], port: PortId, mut buf: Vec<u8>, len: usize) -> TraceView {
    buf.resize(MAX_FRAME.max(len), 0);
    let destination = buf
        .get(vnet::LEN..len)
        .and_then(|f| EthernetFrame::new_checked(f).ok())
        .and_then(|eth| Ipv4Packet::new_checked(eth.payload()).ok().map(|ip| ip.dst()));
    let fib = snapshot.forwarding.fib.pin();
    let mut pipeline = Pipeline::new(IcmpLimiter::new(1, 1));
    let mut trace = Trace::default();
    let next = pipeline.process(&snapshot.forwarding, &fib, port, &mut buf, len, 0, &mut trace);
    let name = |id: PortId| snapshot.forwarding.port(id).map_or_else(|| id.to_string(), |p| p.name.clone());
    let (verdict, out) = match next {
        Next::Tx { port, len } => (format!("output to {} ({} bytes)", name(port), len - vnet::LEN), Some(len)),
        Next::Drop(reason) => (format!("drop: {} ({})", reason.name(), reason.help()), None),
        Next::Respond { reason, port, len } => (
            format!("drop: {}; ICMP error of {} bytes back to {}", reason.name(), len - vnet::LEN, name(port)),
            Some(len),
        ),
        Next::Resolve { port, next_hop, .. } => (format!("to {} once ARP resolves {next_hop}", name(port)), None),
        Next::ToControl { .. } => ("to the control plane (ARP learning)".to_string(), None),
    };
    TraceView {
        steps: trace.steps,
        verdict,
        route: destination.and_then(|dst| matching_route(routes, dst)),
        output: out.map(|len| describe(&buf[..len])),
        output_hex: out.map(|len| hex::encode(&buf[vnet::LEN..len])),
    }
}
