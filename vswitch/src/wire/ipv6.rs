//! IPv6 headers (RFC 8200): the fixed header, a bounded walk over the extension headers to the
//! upper layer, and the rewrites a router makes (hop limit, addresses). IPv6 has no header
//! checksum; the upper layers' pseudo-header is in `checksum`.

use std::net::Ipv6Addr;

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

/// The fields every extension header starts with (RFC 8200 §4.2), and the Fragment header's.
mod ext {
    use std::ops::Range;
    pub const NEXT_HEADER: usize = 0;
    pub const LEN: usize = 1;
    pub const FRAG_OFFSET_FLAGS: Range<usize> = 2..4;
    pub const FRAG_ID: Range<usize> = 4..8;
}

pub const HEADER_LEN: usize = 40;
/// Every IPv6 link carries packets of this size (RFC 8200 §5); it bounds ICMPv6 errors too.
pub const MIN_MTU: usize = 1280;
/// Extension headers [`Ipv6Packet::upper_layer`] walks before it calls the chain malformed. RFC
/// 8200 §4.1 expects at most six (Destination Options twice); eight leaves room without letting
/// a packet make the switch walk a chain of a hundred 8-byte headers.
pub const MAX_EXTENSION_HEADERS: usize = 8;

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

const FRAGMENT_HEADER_LEN: usize = 8;
/// Next header, length, reserved, SPI and sequence number: the smallest Authentication header.
const AH_MIN_LEN: usize = 12;

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

    /// Walks the extension headers (Hop-by-Hop Options, first only; Routing; Fragment, once;
    /// Destination Options; Authentication) to the upper layer, within the payload length and
    /// for at most [`MAX_EXTENSION_HEADERS`]. ESP, No Next Header and every protocol number not
    /// listed end the walk: whatever follows them is the caller's business.
    ///
    /// A fragment other than the first ends the walk at its Fragment header: the bytes after it
    /// are the middle of the original packet, not headers. `protocol` is then the Fragment
    /// header's next header, which describes the first fragment's contents, not this one's.
    ///
    /// A header running past the payload is [`WireError::Truncated`] (`have` is the packet's
    /// length by its payload length); a Hop-by-Hop header not first, a second Fragment header,
    /// an Authentication header shorter than its fixed fields or a chain longer than the bound
    /// is [`WireError::Malformed`].
    pub fn upper_layer(&self) -> Result<UpperLayer, WireError> {
        let b = self.packet();
        let mut protocol = self.next_header();
        let mut offset = HEADER_LEN;
        let mut extensions = 0;
        let mut fragment = None;
        loop {
            if !matches!(protocol, PROTO_HOP_BY_HOP | PROTO_ROUTING | PROTO_FRAGMENT | PROTO_DEST_OPTIONS | PROTO_AH) {
                break;
            }
            if extensions == MAX_EXTENSION_HEADERS {
                return Err(WireError::Malformed("more than 8 IPv6 extension headers"));
            }
            let len = match protocol {
                PROTO_HOP_BY_HOP if extensions > 0 => {
                    return Err(WireError::Malformed("IPv6 Hop-by-Hop Options header not first"))
                }
                PROTO_FRAGMENT if fragment.is_some() => return Err(WireError::Malformed("two IPv6 Fragment headers")),
                PROTO_FRAGMENT => FRAGMENT_HEADER_LEN,
                PROTO_AH => {
                    need_within(b, offset, AH_MIN_LEN)?;
                    // RFC 4302 §2.2: in 4-byte units, minus 2.
                    match b[offset + ext::LEN] {
                        0 => return Err(WireError::Malformed("IPv6 Authentication header shorter than 12 bytes")),
                        n => (n as usize + 2) * 4,
                    }
                }
                // Hop-by-Hop, Routing, Destination Options: in 8-byte units, not counting the first.
                _ => {
                    need_within(b, offset, 8)?;
                    (b[offset + ext::LEN] as usize + 1) * 8
                }
            };
            need_within(b, offset, len)?;
            let header = &b[offset..offset + len];
            extensions += 1;
            offset += len;
            if protocol == PROTO_FRAGMENT {
                let f = &header[ext::FRAG_OFFSET_FLAGS];
                let word = u16::from_be_bytes([f[0], f[1]]);
                let id = &header[ext::FRAG_ID];
                let this = Fragment {
                    offset: word & 0xfff8,
                    more: word & 1 != 0,
                    id: u32::from_be_bytes([id[0], id[1], id[2], id[3]]),
                };
                fragment = Some(this);
                protocol = header[ext::NEXT_HEADER];
                if this.is_later() {
                    break;
                }
            } else {
                protocol = header[ext::NEXT_HEADER];
            }
        }
        Ok(UpperLayer { protocol, offset, extensions, fragment })
    }
}

/// `len` bytes at `offset` lie within `packet`.
fn need_within(packet: &[u8], offset: usize, len: usize) -> Result<(), WireError> {
    if offset + len > packet.len() {
        Err(WireError::Truncated { need: offset + len, have: packet.len() })
    } else {
        Ok(())
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

/// Where the extension headers end, as [`Ipv6Packet::upper_layer`] found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UpperLayer {
    /// The protocol number of what follows the last extension header: TCP, UDP, ICMPv6, ESP, No
    /// Next Header, or any number not walked as an extension header.
    pub protocol: u8,
    /// Where it starts, counted from the start of the fixed header; at most the packet's length.
    pub offset: usize,
    /// Extension headers walked.
    pub extensions: usize,
    /// The Fragment header's fields, if there was one.
    pub fragment: Option<Fragment>,
}

/// A Fragment header's fields (RFC 8200 §4.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fragment {
    /// Where this fragment's data goes in the original packet's fragmentable part, in bytes (a
    /// multiple of 8).
    pub offset: u16,
    /// More fragments follow.
    pub more: bool,
    pub id: u32,
}

impl Fragment {
    /// False for an atomic fragment (offset 0, no more: a whole packet behind a Fragment header,
    /// RFC 6946), which is processed like an unfragmented one.
    pub fn is_fragmenting(&self) -> bool {
        self.offset != 0 || self.more
    }

    /// Every fragment but the first: no upper-layer header in it.
    pub fn is_later(&self) -> bool {
        self.offset != 0
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
        ICMPV6_ECHO_EXTENSION_HEADERS, ICMPV6_ECHO_REQUEST, IPV6_FIRST_FRAGMENT, IPV6_LAST_FRAGMENT, MLD_REPORT,
        NDP_NEIGHBOR_SOLICIT, TCP6_SYN,
    };

    fn ip(frame: &[u8]) -> Vec<u8> {
        frame[14..].to_vec()
    }

    fn a(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    /// A packet with `headers` (next header, bytes after the next-header byte) chained in front
    /// of `upper` bytes of protocol `last`.
    fn chain(headers: &[(u8, Vec<u8>)], last: u8, upper: &[u8]) -> Vec<u8> {
        let mut body = Vec::new();
        for (i, (_, rest)) in headers.iter().enumerate() {
            body.push(headers.get(i + 1).map_or(last, |h| h.0));
            body.extend_from_slice(rest);
        }
        body.extend_from_slice(upper);
        let mut p = vec![0u8; HEADER_LEN];
        let next = headers.first().map_or(last, |h| h.0);
        emit_header(&mut p, a("2001:db8::1"), a("2001:db8::2"), next, body.len(), 64);
        p.extend_from_slice(&body);
        p
    }

    /// An 8-byte Hop-by-Hop, Routing or Destination Options header (length 0, PadN).
    fn opts(kind: u8) -> (u8, Vec<u8>) {
        (kind, vec![0, 1, 4, 0, 0, 0, 0])
    }

    fn fragment(offset: u16, more: bool) -> (u8, Vec<u8>) {
        let w = (offset | more as u16).to_be_bytes();
        (PROTO_FRAGMENT, vec![0, w[0], w[1], 0xde, 0xad, 0xbe, 0xef])
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
    fn walks_captured_extension_headers() {
        let walk = |frame: &[u8]| Ipv6Packet::new_checked(&frame[14..]).unwrap().upper_layer().unwrap();
        let plain = |protocol, offset| UpperLayer { protocol, offset, extensions: 0, fragment: None };
        assert_eq!(walk(&NDP_NEIGHBOR_SOLICIT), plain(PROTO_ICMPV6, 40));
        assert_eq!(walk(&TCP6_SYN), plain(PROTO_TCP, 40));
        // Hop-by-Hop (Router Alert) before MLD.
        assert_eq!(walk(&MLD_REPORT), UpperLayer { protocol: PROTO_ICMPV6, offset: 48, extensions: 1, fragment: None });
        // Hop-by-Hop (8 bytes) then Destination Options (16).
        let up = walk(&ICMPV6_ECHO_EXTENSION_HEADERS);
        assert_eq!((up.protocol, up.offset, up.extensions, up.fragment), (PROTO_ICMPV6, 64, 2, None));
        assert_eq!(ICMPV6_ECHO_EXTENSION_HEADERS[14 + up.offset], 128, "an echo request there");
        // The first fragment holds the ICMPv6 header; the last stops at its Fragment header.
        let first = walk(&IPV6_FIRST_FRAGMENT);
        let frag = Fragment { offset: 0, more: true, id: 0xeb70555f };
        assert_eq!(first, UpperLayer { protocol: PROTO_ICMPV6, offset: 48, extensions: 1, fragment: Some(frag) });
        assert!(frag.is_fragmenting() && !frag.is_later());
        assert_eq!(IPV6_FIRST_FRAGMENT[14 + 48], 128);
        let last = walk(&IPV6_LAST_FRAGMENT);
        let frag = Fragment { offset: 1232, more: false, id: 0xeb70555f };
        assert_eq!(last, UpperLayer { protocol: PROTO_ICMPV6, offset: 48, extensions: 1, fragment: Some(frag) });
        assert!(frag.is_fragmenting() && frag.is_later());
        // Both fragments' data make the whole original payload: 1232 + 76 bytes.
        assert_eq!(IPV6_LAST_FRAGMENT.len() - 14 - 48, 76);
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
        // With the payload length cut too, the fixed header is fine but the chain is not: every
        // cut inside the 24 bytes of extension headers is refused, every cut after is not.
        let b = ip(&ICMPV6_ECHO_EXTENSION_HEADERS);
        for cut in HEADER_LEN..=b.len() {
            let mut short = b[..cut].to_vec();
            short[4..6].copy_from_slice(&((cut - HEADER_LEN) as u16).to_be_bytes());
            let walk = Ipv6Packet::new_checked(&short[..]).unwrap().upper_layer();
            match cut {
                ..48 => assert_eq!(walk, Err(WireError::Truncated { need: 48, have: cut }), "{cut}"),
                // The Destination Options header's length byte is read once its 8 bytes are in.
                48..56 => assert_eq!(walk, Err(WireError::Truncated { need: 56, have: cut }), "{cut}"),
                56..64 => assert_eq!(walk, Err(WireError::Truncated { need: 64, have: cut }), "{cut}"),
                _ => assert_eq!(walk.unwrap().offset, 64),
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
    fn long_and_repeated_chains_are_malformed() {
        let upper = [0u8; 8];
        let dest = || opts(PROTO_DEST_OPTIONS);
        // Eight headers are walked, a ninth is one too many.
        let eight: Vec<_> =
            std::iter::once(opts(PROTO_HOP_BY_HOP)).chain(std::iter::repeat_with(dest).take(7)).collect();
        let p = chain(&eight, PROTO_UDP, &upper);
        let up = Ipv6Packet::new_checked(&p[..]).unwrap().upper_layer().unwrap();
        assert_eq!((up.protocol, up.offset, up.extensions), (PROTO_UDP, 40 + 64, 8));
        let nine: Vec<_> = std::iter::repeat_with(dest).take(9).collect();
        let p = chain(&nine, PROTO_UDP, &upper);
        let err = Ipv6Packet::new_checked(&p[..]).unwrap().upper_layer().unwrap_err();
        assert_eq!(err, WireError::Malformed("more than 8 IPv6 extension headers"));
        // A Destination Options header pointing at itself forever ends at the bound, or at the
        // end of the packet, whichever comes first.
        let mut p = chain(&[dest()], PROTO_DEST_OPTIONS, &[]);
        let err = Ipv6Packet::new_checked(&p[..]).unwrap().upper_layer().unwrap_err();
        assert_eq!(err, WireError::Truncated { need: 56, have: 48 });
        for _ in 0..20 {
            p.extend_from_slice(&[PROTO_DEST_OPTIONS, 0, 1, 4, 0, 0, 0, 0]);
        }
        let payload_len = (p.len() - HEADER_LEN) as u16;
        p[4..6].copy_from_slice(&payload_len.to_be_bytes());
        let err = Ipv6Packet::new_checked(&p[..]).unwrap().upper_layer().unwrap_err();
        assert_eq!(err, WireError::Malformed("more than 8 IPv6 extension headers"));
        // Hop-by-Hop only first; one Fragment header.
        let p = chain(&[dest(), opts(PROTO_HOP_BY_HOP)], PROTO_UDP, &upper);
        let err = Ipv6Packet::new_checked(&p[..]).unwrap().upper_layer().unwrap_err();
        assert_eq!(err, WireError::Malformed("IPv6 Hop-by-Hop Options header not first"));
        let p = chain(&[fragment(0, true), fragment(0, false)], PROTO_UDP, &upper);
        let err = Ipv6Packet::new_checked(&p[..]).unwrap().upper_layer().unwrap_err();
        assert_eq!(err, WireError::Malformed("two IPv6 Fragment headers"));
    }

    #[test]
    fn every_extension_header_has_its_length_rule() {
        let upper = [0u8; 8];
        // Routing: (1 + 1) * 8 bytes.
        let mut routing = vec![1, 0, 0];
        routing.resize(15, 0);
        let p = chain(&[(PROTO_ROUTING, routing)], PROTO_TCP, &upper);
        let up = Ipv6Packet::new_checked(&p[..]).unwrap().upper_layer().unwrap();
        assert_eq!((up.protocol, up.offset), (PROTO_TCP, 56));
        // Authentication: (4 + 2) * 4 bytes; a length of 0 is shorter than its fixed fields.
        let mut ah = vec![4];
        ah.resize(23, 0);
        let p = chain(&[(PROTO_AH, ah)], PROTO_ICMPV6, &upper);
        let up = Ipv6Packet::new_checked(&p[..]).unwrap().upper_layer().unwrap();
        assert_eq!((up.protocol, up.offset, up.extensions), (PROTO_ICMPV6, 64, 1));
        let p = chain(&[(PROTO_AH, vec![0; 11])], PROTO_ICMPV6, &upper);
        let err = Ipv6Packet::new_checked(&p[..]).unwrap().upper_layer().unwrap_err();
        assert_eq!(err, WireError::Malformed("IPv6 Authentication header shorter than 12 bytes"));
        // ESP and No Next Header end the walk where they start.
        let p = chain(&[opts(PROTO_HOP_BY_HOP)], PROTO_ESP, &upper);
        let up = Ipv6Packet::new_checked(&p[..]).unwrap().upper_layer().unwrap();
        assert_eq!((up.protocol, up.offset), (PROTO_ESP, 48));
        let p = chain(&[], PROTO_NO_NEXT_HEADER, &[]);
        let up = Ipv6Packet::new_checked(&p[..]).unwrap().upper_layer().unwrap();
        assert_eq!((up.protocol, up.offset, up.extensions), (PROTO_NO_NEXT_HEADER, 40, 0));
        // An atomic fragment: walked through, not fragmenting.
        let p = chain(&[fragment(0, false)], PROTO_UDP, &upper);
        let up = Ipv6Packet::new_checked(&p[..]).unwrap().upper_layer().unwrap();
        assert_eq!((up.protocol, up.offset), (PROTO_UDP, 48));
        assert!(!up.fragment.unwrap().is_fragmenting());
        // A later fragment stops at its Fragment header even if what follows looks like headers.
        let p = chain(&[fragment(8, true)], PROTO_DEST_OPTIONS, &[0xff; 3]);
        let up = Ipv6Packet::new_checked(&p[..]).unwrap().upper_layer().unwrap();
        assert_eq!((up.protocol, up.offset, up.fragment.unwrap().offset), (PROTO_DEST_OPTIONS, 48, 8));
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
