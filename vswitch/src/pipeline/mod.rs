//! The packet pipeline: what happens to one frame, free of I/O and clocks.
//!
//! Stages, in order: vnet header check, Ethernet classify, then ARP ([`arp`], answered in place)
//! or IPv4 ([`ipv4`]): input checks (version, header length, total length, checksum), port
//! security (a pod sends only from its own MAC and IP), TTL, FIB lookup to an adjacency, MTU,
//! rewrite (MACs, TTL minus one with an incremental checksum). IPv6 ([`ipv6`]) goes through the
//! same stages, with neighbour discovery ([`ndp`]) in ARP's place. The result is a [`Next`]:
//! transmit on a port, or drop with a [`DropReason`] (possibly sending an ICMP error back,
//! rate-limited). Time comes in as an argument; [`Tracer`] lets `vswitchctl trace` watch every
//! stage without slowing the fast path.

mod arp;
mod drop;
mod icmp_limit;
mod ipv4;
mod ipv6;
mod ndp;

use std::fmt;
use std::net::IpAddr;

pub use drop::DropReason;
pub use icmp_limit::IcmpLimiter;

use crate::state::{Adjacency, FibViews, ForwardingState, NextHop, PortId, PortInfo, PortRole};
use crate::wire::ethernet::{self, EthernetFrame};
use crate::wire::vnet::{self, VnetHeader};
use crate::wire::{EtherType, MacAddr};

/// The fate of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Send the first `len` bytes of the buffer (vnet header included) out of `port`: for IP,
    /// up to the end of the IP packet, whatever followed it in the frame left behind.
    Tx {
        port: PortId,
        len: usize,
    },
    Drop(DropReason),
    /// The frame is dropped for `reason`, and the buffer now holds an ICMP error of `len` bytes
    /// to send out of `port`.
    Respond {
        reason: DropReason,
        port: PortId,
        len: usize,
    },
    /// Ready for `port` but for the destination MAC: hand it to the control plane, which
    /// resolves `next_hop` (ARP or neighbour discovery) and sends it.
    Resolve {
        port: PortId,
        next_hop: IpAddr,
        len: usize,
    },
    /// An ARP reply or neighbour advertisement on the uplink: the control plane learns from it.
    ToControl {
        len: usize,
    },
}

/// Watches the pipeline stage by stage.
pub trait Tracer {
    fn step(&mut self, stage: &'static str, detail: fmt::Arguments<'_>);
}

/// The fast path's tracer: does nothing, and compiles to nothing.
#[derive(Debug, Default)]
pub struct NoTrace;

impl Tracer for NoTrace {
    #[inline(always)]
    fn step(&mut self, _: &'static str, _: fmt::Arguments<'_>) {}
}

/// Records every stage, for `vswitchctl trace`.
#[derive(Debug, Default)]
pub struct Trace {
    pub steps: Vec<(String, String)>,
}

impl Tracer for Trace {
    fn step(&mut self, stage: &'static str, detail: fmt::Arguments<'_>) {
        self.steps.push((stage.to_string(), detail.to_string()));
    }
}

/// Per-worker pipeline state: the ICMP error budget, and how many errors it held back.
#[derive(Debug)]
pub struct Pipeline {
    icmp: IcmpLimiter,
    icmp_suppressed: u64,
}

/// Largest frame a port reads: a 64 KB GSO frame plus Ethernet and the vnet header.
pub const MAX_FRAME: usize = 65535 + ethernet::HEADER_LEN + vnet::LEN;

const ETH: usize = ethernet::HEADER_LEN;
const L2: usize = vnet::LEN + ETH;

impl Pipeline {
    pub fn new(icmp: IcmpLimiter) -> Pipeline {
        Pipeline { icmp, icmp_suppressed: 0 }
    }

    /// ICMP errors the rate limit held back since the last call. The packets themselves are
    /// dropped under their own reason (`ttl_expired`, `fragmentation_needed`); this is the
    /// `icmp_rate_limited` count of errors not sent.
    pub fn take_icmp_suppressed(&mut self) -> u64 {
        std::mem::take(&mut self.icmp_suppressed)
    }

    /// Decides the fate of `buf[..len]` (vnet header, then the frame) that arrived on `in_port`,
    /// rewriting the buffer in place for whatever is sent. Everything it depends on is an
    /// argument (state, FIB view, time), which is what keeps it testable and fuzzable.
    #[allow(clippy::too_many_arguments)]
    pub fn process<T: Tracer>(
        &mut self,
        state: &ForwardingState,
        fibs: &FibViews<'_>,
        in_port: PortId,
        buf: &mut [u8],
        len: usize,
        now_ns: u64,
        trace: &mut T,
    ) -> Next {
        let Some(port) = state.port(in_port) else {
            return Next::Drop(DropReason::PortDown);
        };
        if len > buf.len() {
            // A port that reported more than it could store (it should have refused the frame).
            return Next::Drop(DropReason::FrameTooLong);
        }
        if len < vnet::LEN {
            return Next::Drop(DropReason::BadVnetHeader);
        }
        let vnet = match VnetHeader::parse(&buf[..vnet::LEN], len - vnet::LEN) {
            Ok(v) => v,
            Err(e) => {
                trace.step("vnet", format_args!("{e}"));
                return Next::Drop(DropReason::BadVnetHeader);
            }
        };
        trace.step("vnet", format_args!("{vnet}"));
        let frame = &mut buf[vnet::LEN..len];
        let Ok(eth) = EthernetFrame::new_checked(&*frame) else {
            return Next::Drop(DropReason::FrameTooShort);
        };
        let (src_mac, dst_mac, ethertype) = (eth.src(), eth.dst(), eth.ethertype());
        trace.step("ethernet", format_args!("{src_mac} > {dst_mac} {ethertype:?} on {} ({})", port.name, in_port));
        if let PortRole::Pod { mac, .. } = port.role {
            if src_mac != mac {
                return Next::Drop(DropReason::SpoofedSourceMac);
            }
        }
        match ethertype {
            EtherType::Arp => self.arp(state, fibs, port, buf, len, trace),
            EtherType::Ipv4 => self.ipv4(state, fibs, port, &vnet, buf, len, now_ns, trace),
            EtherType::Ipv6 => self.ipv6(state, fibs, port, &vnet, buf, len, now_ns, trace),
            EtherType::Vlan => Next::Drop(DropReason::VlanTagged),
            _ => Next::Drop(DropReason::UnsupportedEtherType),
        }
    }
}

/// Is `ip` the address of a pod on this switch (what the switch answers ARP and neighbour
/// solicitations for on the uplink and toward the node)?
fn is_local_pod(state: &ForwardingState, fibs: &FibViews<'_>, ip: IpAddr) -> bool {
    let adjacency = match ip {
        IpAddr::V4(v4) => fibs.v4.lookup(v4),
        IpAddr::V6(v6) => fibs.v6.lookup(v6),
    };
    adjacency.and_then(|a| state.adjacency(a)).and_then(|a| state.port(a.port)).is_some_and(|p| match p.role {
        PortRole::Pod { ip: v4, ipv6, .. } => match ip {
            IpAddr::V4(ip) => v4 == Some(ip),
            IpAddr::V6(ip) => ipv6 == Some(ip),
        },
        _ => false,
    })
}

/// The frame's length cut at the end of its IP packet (`ip_len` bytes after the Ethernet header):
/// a router forwards the packet, not what follows it (Ethernet pads short frames to 60 bytes; a
/// sender may append anything). Refused as `ip_length_mismatch` where cutting would leave the
/// vnet header wrong: a GSO frame (the kernel never pads one, and its receiver's IP layer would
/// cut it at the IP length where segmentation rewrites the lengths from the frame: ambiguous), or
/// a header whose checksum to complete, or `hdr_len`, lies past the IP packet.
fn trim_to_ip<T: Tracer>(vnet: &VnetHeader, len: usize, ip_len: usize, trace: &mut T) -> Result<usize, DropReason> {
    let end = L2 + ip_len;
    if end == len {
        return Ok(len);
    }
    let frame_len = end - vnet::LEN;
    let checksum_end = vnet.csum_start as usize + vnet.csum_offset as usize + 2;
    if vnet.is_gso()
        || vnet.hdr_len as usize > frame_len
        || (vnet.flags & vnet::FLAG_NEEDS_CSUM != 0 && checksum_end > frame_len)
    {
        trace.step("trim", format_args!("{} bytes past the IP packet, {vnet}: not cut", len - end));
        return Err(DropReason::IpLengthMismatch);
    }
    trace.step("trim", format_args!("{} bytes past the IP packet cut", len - end));
    Ok(end)
}

/// The FIB stage of both families: the adjacency of the route `index` the lookup for `dst` found,
/// or the drop (no route, an adjacency already freed, or back out of the arrival port).
fn route<T: Tracer>(
    state: &ForwardingState,
    index: Option<u32>,
    dst: IpAddr,
    port: &PortInfo,
    trace: &mut T,
) -> Result<Adjacency, Next> {
    let Some(index) = index else {
        trace.step("fib", format_args!("{dst}: no route"));
        return Err(Next::Drop(DropReason::NoRoute));
    };
    let adj = *state.adjacency(index).ok_or(Next::Drop(DropReason::NoRoute))?;
    trace.step(
        "fib",
        format_args!(
            "{dst} -> adjacency {index}: port {} from {} to {:?} mtu {}",
            adj.port, adj.src_mac, adj.next_hop, adj.mtu
        ),
    );
    if adj.port == port.id {
        return Err(Next::Drop(DropReason::Hairpin));
    }
    Ok(adj)
}

/// The last stage of both families (`rewritten` says what the caller changed in the IP header):
/// the MACs of the adjacency's port and next hop, and out; or, the next hop not yet resolved, to
/// the control plane, which resolves it and sends the frame.
fn to_next_hop<T: Tracer>(
    state: &ForwardingState,
    adj: &Adjacency,
    dst: IpAddr,
    buf: &mut [u8],
    len: usize,
    trace: &mut T,
    rewritten: fmt::Arguments<'_>,
) -> Next {
    let dst_mac = next_hop_mac(state, adj.next_hop, dst);
    let mut eth = EthernetFrame::new_checked(&mut buf[vnet::LEN..len]).expect("checked before");
    eth.set_src(adj.src_mac);
    match dst_mac {
        Ok(mac) => {
            eth.set_dst(mac);
            trace.step("rewrite", format_args!("{rewritten}, {} > {mac}", adj.src_mac));
            Next::Tx { port: adj.port, len }
        }
        Err(next_hop) => {
            trace.step("neighbor", format_args!("{next_hop} unresolved: to the control plane to resolve"));
            Next::Resolve { port: adj.port, next_hop, len }
        }
    }
}

/// The destination MAC of an adjacency's next hop for `dst`, or the neighbour to resolve first.
fn next_hop_mac(state: &ForwardingState, next_hop: NextHop, dst: IpAddr) -> Result<MacAddr, IpAddr> {
    match next_hop {
        NextHop::Mac(mac) => Ok(mac),
        NextHop::Resolve { via } => {
            let hop = via.unwrap_or(dst);
            state.neighbors.get(&hop).copied().ok_or(hop)
        }
    }
}
