//! IPv6 headers (RFC 8200): the fixed header, the way to the upper layer (the extension-header
//! walk is in [`ipv6_chain`]), and the rewrites a router makes (hop limit, addresses). IPv6 has
//! no header checksum; the upper layers' pseudo-header is in `checksum`.

use std::net::Ipv6Addr;

use super::ipv6_chain;
pub use super::ipv6_chain::{ChainError, Fragment, Routing, UpperLayer, MAX_EXTENSION_HEADERS};
use super::{need, MacAddr, WireError};

mod field {
    use std::ops::Range;
    pub const VER_TC_FLOW: Range<usize> = 0..4;
    pub const PAYLOAD_LEN: Range<usize> = 4..6;
    pub const NEXT_HEADER: usize = 6;
    pub const HOP_LIMIT: usize = 7;
    pub const SRC: Range<usize> = 8..24;
    pub const DST: Range<usize> = 24..40;
}

pub const HEADER_LEN: usize = 40;
/// Every IPv6 link carries packets of this size (RFC 8200 §5); it bounds ICMPv6 errors too.
pub const MIN_MTU: usize = 1280;

pub const PROTO_HOP_BY_HOP: u8 = 0;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ROUTING: u8 = 43;
pub const PROTO_FRAGMENT: u8 = 44;
pub const PROTO_ESP: u8 = 50;
pub const PROTO_AH: u8 = 51;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_NO_NEXT_HEADER: u8 = 59;
pub const PROTO_DEST_OPTIONS: u8 = 60;

/// All nodes on the link (RFC 4291 §2.7.1): where unsolicited Neighbor and Router
/// Advertisements go.
pub const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
/// All routers on the link: where Router Solicitations go.
pub const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);

/// A view of an IPv6 packet whose fixed header passed the checks in `new_checked`.
#[derive(Debug)]
pub struct Ipv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv6Packet<T> {
    /// Validates the version and the payload length against the bytes present. Bytes beyond the
    /// payload length (Ethernet pads short frames to 60 bytes) are allowed and ignored:
    /// [`payload`](Self::payload) and [`upper_layer`](Self::upper_layer) stop where the payload
    /// length says. A payload length of 0 means an empty payload: jumbograms (RFC 2675) and the
    /// kernel's BIG TCP packets, which announce their length elsewhere, are not understood.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        need(b, HEADER_LEN)?;
        if b[field::VER_TC_FLOW.start] >> 4 != 6 {
            return Err(WireError::Malformed("IP version is not 6"));
        }
        let total = HEADER_LEN + u16::from_be_bytes([b[4], b[5]]) as usize;
        need(b, total)?;
        Ok(Ipv6Packet { buffer })
    }

    fn word(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::VER_TC_FLOW];
        u32::from_be_bytes([b[0], b[1], b[2], b[3]])
    }

    /// Always 6.
    pub fn version(&self) -> u8 {
        (self.word() >> 28) as u8
    }

    /// DSCP and ECN, as one byte.
    pub fn traffic_class(&self) -> u8 {
        (self.word() >> 20) as u8
    }

    /// The low 20 bits.
    pub fn flow_label(&self) -> u32 {
        self.word() & 0x000f_ffff
    }

    pub fn payload_len(&self) -> usize {
        let b = &self.buffer.as_ref()[field::PAYLOAD_LEN];
        u16::from_be_bytes([b[0], b[1]]) as usize
    }

    /// The fixed header and the payload, without trailing padding.
    pub fn total_len(&self) -> usize {
        HEADER_LEN + self.payload_len()
    }

    /// The protocol of the first header after the fixed one (an extension header or the upper
    /// layer's; see [`upper_layer`](Self::upper_layer)).
    pub fn next_header(&self) -> u8 {
        self.buffer.as_ref()[field::NEXT_HEADER]
    }

    pub fn hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::HOP_LIMIT]
    }

    pub fn src(&self) -> Ipv6Addr {
        addr(&self.buffer.as_ref()[field::SRC])
    }

    pub fn dst(&self) -> Ipv6Addr {
        addr(&self.buffer.as_ref()[field::DST])
    }

    /// The packet, fixed header included, without trailing padding; [`UpperLayer::offset`]
    /// counts from its start.
    pub fn packet(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.total_len()]
    }

    /// What follows the fixed header: extension headers, then the upper layer.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..self.total_len()]
    }

    /// Walks the extension headers to the upper layer: see [`ipv6_chain::walk`].
    pub fn upper_layer(&self) -> Result<UpperLayer, ChainError> {
        ipv6_chain::walk(self.packet(), self.next_header())
    }
}

fn addr(b: &[u8]) -> Ipv6Addr {
    Ipv6Addr::from(<[u8; 16]>::try_from(b).expect("16 bytes"))
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv6Packet<T> {
    /// No checksum to update: IPv6 has none, and the hop limit is not in the pseudo-header.
    pub fn set_hop_limit(&mut self, hop_limit: u8) {
        self.buffer.as_mut()[field::HOP_LIMIT] = hop_limit;
    }

    /// Rewrites the source; the upper layer's checksum covers it, and is the caller's to fix.
    pub fn set_src(&mut self, src: Ipv6Addr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&src.octets());
    }

    /// Rewrites the destination; the upper layer's checksum covers it, and is the caller's to fix.
    pub fn set_dst(&mut self, dst: Ipv6Addr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&dst.octets());
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let total = self.total_len();
        &mut self.buffer.as_mut()[HEADER_LEN..total]
    }
}

/// Writes a 40-byte header (traffic class and flow label 0).
pub fn emit_header(buf: &mut [u8], src: Ipv6Addr, dst: Ipv6Addr, next_header: u8, payload_len: usize, hop_limit: u8) {
    buf[field::VER_TC_FLOW].copy_from_slice(&[0x60, 0, 0, 0]);
    buf[field::PAYLOAD_LEN].copy_from_slice(&(payload_len as u16).to_be_bytes());
    buf[field::NEXT_HEADER] = next_header;
    buf[field::HOP_LIMIT] = hop_limit;
    buf[field::SRC].copy_from_slice(&src.octets());
    buf[field::DST].copy_from_slice(&dst.octets());
}

/// The solicited-node multicast address of `addr` (RFC 4291 §2.7.1), where Neighbor
/// Solicitations for it go: ff02::1:ff00:0/104 and its low 24 bits.
pub fn solicited_node(addr: Ipv6Addr) -> Ipv6Addr {
    let o = addr.octets();
    Ipv6Addr::from([0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, o[13], o[14], o[15]])
}

/// The Ethernet address an IPv6 multicast `addr` is sent to (RFC 2464 §7): 33:33 and its low
/// 32 bits.
pub fn multicast_mac(addr: Ipv6Addr) -> MacAddr {
    let o = addr.octets();
    MacAddr([0x33, 0x33, o[12], o[13], o[14], o[15]])
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::wire::captured::{
        ICMPV6_ECHO_EXTENSION_HEADERS, ICMPV6_ECHO_REQUEST, IPV6_LAST_FRAGMENT, MLD_REPORT, NDP_NEIGHBOR_SOLICIT,
        TCP6_SYN,
    };

    fn ip(frame: &[u8]) -> Vec<u8> {
        frame[14..].to_vec()
    }

    fn a(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_captured_headers() {
        let b = ip(&ICMPV6_ECHO_REQUEST);
        let p = Ipv6Packet::new_checked(&b[..]).unwrap();
        assert_eq!((p.version(), p.traffic_class(), p.flow_label()), (6, 0, 0xa778f));
        assert_eq!((p.payload_len(), p.total_len(), p.next_header(), p.hop_limit()), (16, 56, PROTO_ICMPV6, 64));
        assert_eq!((p.src(), p.dst()), (a("fe80::42:acff:fe11:2"), a("fe80::42:acff:fe11:3")));
        assert_eq!(p.payload()[0], 128);
        let b = ip(&NDP_NEIGHBOR_SOLICIT);
        let p = Ipv6Packet::new_checked(&b[..]).unwrap();
        assert_eq!((p.hop_limit(), p.dst()), (255, a("ff02::1:ff11:3")));
        // The captured NS went to its target's solicited-node group, at that group's MAC.
        assert_eq!(solicited_node(a("fe80::42:acff:fe11:3")), p.dst());
        assert_eq!(multicast_mac(p.dst()), MacAddr(NDP_NEIGHBOR_SOLICIT[..6].try_into().unwrap()));
    }

    #[test]
    fn trailing_bytes_are_padding() {
        let mut b = ip(&TCP6_SYN);
        let want = b.clone();
        b.extend_from_slice(&[0xee; 10]);
        let p = Ipv6Packet::new_checked(&b[..]).unwrap();
        assert_eq!((p.total_len(), p.packet()), (80, &want[..]));
        assert_eq!(p.payload(), &want[40..]);
        assert_eq!(p.upper_layer().unwrap().offset, 40);
        // A payload length of 0 is an empty payload, whatever follows.
        b[4..6].fill(0);
        let p = Ipv6Packet::new_checked(&b[..]).unwrap();
        assert_eq!((p.payload(), p.upper_layer().unwrap().protocol), (&[][..], PROTO_TCP));
    }

    #[test]
    fn truncations_at_every_byte_are_refused() {
        for frame in [&ICMPV6_ECHO_EXTENSION_HEADERS[..], &IPV6_LAST_FRAGMENT[..], &TCP6_SYN[..], &MLD_REPORT[..]] {
            let b = ip(frame);
            for cut in 0..b.len() {
                let err = Ipv6Packet::new_checked(&b[..cut]).unwrap_err();
                let need = if cut < HEADER_LEN { HEADER_LEN } else { b.len() };
                assert_eq!(err, WireError::Truncated { need, have: cut });
            }
        }
    }

    #[test]
    fn refuses_other_versions() {
        let mut b = ip(&TCP6_SYN);
        b[0] = 0x45;
        assert_eq!(Ipv6Packet::new_checked(&b[..]).unwrap_err(), WireError::Malformed("IP version is not 6"));
    }

    #[test]
    fn setters_rewrite_in_place() {
        let mut b = ip(&TCP6_SYN);
        let mut p = Ipv6Packet::new_checked(&mut b[..]).unwrap();
        p.set_hop_limit(63);
        p.set_src(a("2001:db8::a"));
        p.set_dst(a("2001:db8::b"));
        p.payload_mut()[0] = 0xab;
        let p = Ipv6Packet::new_checked(&b[..]).unwrap();
        assert_eq!((p.hop_limit(), p.src(), p.dst()), (63, a("2001:db8::a"), a("2001:db8::b")));
        assert_eq!((p.payload()[0], p.flow_label(), p.payload_len()), (0xab, 0x7bb39, 40));
    }
}
