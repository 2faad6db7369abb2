//! The IPv6 extension-header chain (RFC 8200 §4): a bounded walk from the fixed header to the
//! upper layer, reading only bytes within the payload length, and what it finds on the way that
//! a router in front of hosts judges: the Routing header (RFC 5095 deprecated type 0) and the
//! Fragment header, with RFC 7112's rule that a first fragment holds the whole chain through the
//! upper-layer header.

use super::fragment;
use super::ipv6::{HEADER_LEN, PROTO_AH, PROTO_DEST_OPTIONS, PROTO_FRAGMENT, PROTO_HOP_BY_HOP, PROTO_ROUTING};

/// The fields every extension header starts with (RFC 8200 §4.2), the Routing header's and the
/// Fragment header's.
mod field {
    use std::ops::Range;
    pub const NEXT_HEADER: usize = 0;
    pub const LEN: usize = 1;
    pub const ROUTING_TYPE: usize = 2;
    pub const SEGMENTS_LEFT: usize = 3;
    pub const FRAG_OFFSET_FLAGS: Range<usize> = 2..4;
    pub const FRAG_ID: Range<usize> = 4..8;
}

/// Extension headers [`walk`] follows before it calls the chain malformed. RFC 8200 §4.1 expects
/// at most six (Destination Options twice); eight leaves room without letting a packet make the
/// switch walk a chain of a hundred 8-byte headers.
pub const MAX_EXTENSION_HEADERS: usize = 8;

const FRAGMENT_HEADER_LEN: usize = 8;
/// Next header, length, reserved, SPI and sequence number: the smallest Authentication header.
const AH_MIN_LEN: usize = 12;

/// Why a chain cannot be walked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// A header runs past the payload (`have` is the packet's length by its payload length).
    #[error("IPv6 extension header truncated: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    #[error("malformed: {0}")]
    Malformed(&'static str),
    /// A first fragment ends before its chain and upper-layer header do (RFC 7112 §5).
    #[error("first fragment of {have} bytes, its headers need {need} (RFC 7112)")]
    IncompleteFirstFragment { need: usize, have: usize },
}

/// Where the extension headers end, as [`walk`] found it.
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
    /// The Routing header's type and segments left, if there was one.
    pub routing: Option<Routing>,
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

    /// The first of several fragments: RFC 7112 wants the whole chain in it.
    pub fn is_first(&self) -> bool {
        self.offset == 0 && self.more
    }
}

/// A Routing header's fixed fields (RFC 8200 §4.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Routing {
    pub routing_type: u8,
    /// Route segments still to visit; 0 means the header is ignored.
    pub segments_left: u8,
}

impl Routing {
    /// Type 0 (RFC 5095 deprecated it: one packet can bounce between two hosts as often as it
    /// lists them, an amplifier) with segments still to visit. With none left it is ignored.
    pub fn is_active_type_0(&self) -> bool {
        self.routing_type == 0 && self.segments_left > 0
    }
}

/// Walks the extension headers of `packet` (fixed header included, cut at its payload length),
/// starting from the fixed header's `next_header`: Hop-by-Hop Options, first only; Routing, once;
/// Fragment, once; Destination Options; Authentication; to the upper layer, for at most
/// [`MAX_EXTENSION_HEADERS`]. ESP, No Next Header and every protocol number not listed end the
/// walk: whatever follows them is the caller's business.
///
/// A fragment other than the first ends the walk at its Fragment header: the bytes after it are
/// the middle of the original packet, not headers. `protocol` is then the Fragment header's next
/// header, which describes the first fragment's contents, not this one's.
///
/// A header running past the payload is [`ChainError::Truncated`], or, after the Fragment header
/// of a first fragment, [`ChainError::IncompleteFirstFragment`], as is a first fragment without
/// the upper-layer header's [`fragment::header_floor`]. A Hop-by-Hop header not first, a second
/// Routing or Fragment header, an Authentication header shorter than its fixed fields or a chain
/// longer than the bound is [`ChainError::Malformed`].
pub fn walk(packet: &[u8], next_header: u8) -> Result<UpperLayer, ChainError> {
    let mut up = UpperLayer { protocol: next_header, offset: HEADER_LEN, extensions: 0, fragment: None, routing: None };
    let first_fragment = |up: &UpperLayer| up.fragment.is_some_and(|f| f.is_first());
    let need = |up: &UpperLayer, len: usize| {
        let need = up.offset + len;
        match need > packet.len() {
            false => Ok(()),
            true if first_fragment(up) => Err(ChainError::IncompleteFirstFragment { need, have: packet.len() }),
            true => Err(ChainError::Truncated { need, have: packet.len() }),
        }
    };
    loop {
        let protocol = up.protocol;
        if !matches!(protocol, PROTO_HOP_BY_HOP | PROTO_ROUTING | PROTO_FRAGMENT | PROTO_DEST_OPTIONS | PROTO_AH) {
            break;
        }
        if up.extensions == MAX_EXTENSION_HEADERS {
            return Err(ChainError::Malformed("more than 8 IPv6 extension headers"));
        }
        let at = up.offset;
        let len = match protocol {
            PROTO_HOP_BY_HOP if up.extensions > 0 => {
                return Err(ChainError::Malformed("IPv6 Hop-by-Hop Options header not first"))
            }
            PROTO_FRAGMENT if up.fragment.is_some() => return Err(ChainError::Malformed("two IPv6 Fragment headers")),
            PROTO_ROUTING if up.routing.is_some() => return Err(ChainError::Malformed("two IPv6 Routing headers")),
            PROTO_FRAGMENT => FRAGMENT_HEADER_LEN,
            PROTO_AH => {
                need(&up, AH_MIN_LEN)?;
                // RFC 4302 §2.2: in 4-byte units, minus 2.
                match packet[at + field::LEN] {
                    0 => return Err(ChainError::Malformed("IPv6 Authentication header shorter than 12 bytes")),
                    n => (n as usize + 2) * 4,
                }
            }
            // Hop-by-Hop, Routing, Destination Options: in 8-byte units, not counting the first.
            _ => {
                need(&up, 8)?;
                (packet[at + field::LEN] as usize + 1) * 8
            }
        };
        need(&up, len)?;
        let header = &packet[at..at + len];
        up.extensions += 1;
        up.offset += len;
        up.protocol = header[field::NEXT_HEADER];
        match protocol {
            PROTO_ROUTING => {
                up.routing = Some(Routing {
                    routing_type: header[field::ROUTING_TYPE],
                    segments_left: header[field::SEGMENTS_LEFT],
                })
            }
            PROTO_FRAGMENT => {
                let f = &header[field::FRAG_OFFSET_FLAGS];
                let word = u16::from_be_bytes([f[0], f[1]]);
                let id = &header[field::FRAG_ID];
                let this = Fragment {
                    offset: word & 0xfff8,
                    more: word & 1 != 0,
                    id: u32::from_be_bytes([id[0], id[1], id[2], id[3]]),
                };
                up.fragment = Some(this);
                if this.is_later() {
                    return Ok(up);
                }
            }
            _ => {}
        }
    }
    if first_fragment(&up) {
        need(&up, fragment::header_floor(up.protocol))?;
    }
    Ok(up)
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;
    use crate::wire::captured::{
        ICMPV6_ECHO_EXTENSION_HEADERS, IPV6_FIRST_FRAGMENT, IPV6_LAST_FRAGMENT, MLD_REPORT, NDP_NEIGHBOR_SOLICIT,
        TCP6_SYN,
    };
    use crate::wire::ipv6::{
        emit_header, Ipv6Packet, PROTO_ESP, PROTO_ICMPV6, PROTO_NO_NEXT_HEADER, PROTO_TCP, PROTO_UDP,
    };

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
        let a = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        emit_header(&mut p, a("2001:db8::1"), a("2001:db8::2"), next, body.len(), 64);
        p.extend_from_slice(&body);
        p
    }

    fn walk_packet(p: &[u8]) -> Result<UpperLayer, ChainError> {
        Ipv6Packet::new_checked(p).unwrap().upper_layer()
    }

    /// An 8-byte Hop-by-Hop, Routing or Destination Options header (length 0, PadN).
    fn opts(kind: u8) -> (u8, Vec<u8>) {
        (kind, vec![0, 1, 4, 0, 0, 0, 0])
    }

    fn fragment(offset: u16, more: bool) -> (u8, Vec<u8>) {
        let w = (offset | more as u16).to_be_bytes();
        (PROTO_FRAGMENT, vec![0, w[0], w[1], 0xde, 0xad, 0xbe, 0xef])
    }

    /// A Routing header of `routing_type` with `segments_left`, listing one address.
    fn routing(routing_type: u8, segments_left: u8) -> (u8, Vec<u8>) {
        let mut header = vec![2, routing_type, segments_left, 0, 0, 0, 0];
        header.extend_from_slice(&Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 9).octets());
        (PROTO_ROUTING, header)
    }

    fn plain(protocol: u8, offset: usize, extensions: usize) -> UpperLayer {
        UpperLayer { protocol, offset, extensions, fragment: None, routing: None }
    }

    #[test]
    fn walks_captured_extension_headers() {
        let walk = |frame: &[u8]| walk_packet(&frame[14..]).unwrap();
        assert_eq!(walk(&NDP_NEIGHBOR_SOLICIT), plain(PROTO_ICMPV6, 40, 0));
        assert_eq!(walk(&TCP6_SYN), plain(PROTO_TCP, 40, 0));
        // Hop-by-Hop (Router Alert) before MLD.
        assert_eq!(walk(&MLD_REPORT), plain(PROTO_ICMPV6, 48, 1));
        // Hop-by-Hop (8 bytes) then Destination Options (16).
        let up = walk(&ICMPV6_ECHO_EXTENSION_HEADERS);
        assert_eq!(up, plain(PROTO_ICMPV6, 64, 2));
        assert_eq!(ICMPV6_ECHO_EXTENSION_HEADERS[14 + up.offset], 128, "an echo request there");
        // The first fragment holds the ICMPv6 header; the last stops at its Fragment header.
        let first = walk(&IPV6_FIRST_FRAGMENT);
        let frag = Fragment { offset: 0, more: true, id: 0xeb70555f };
        assert_eq!(first, UpperLayer { fragment: Some(frag), ..plain(PROTO_ICMPV6, 48, 1) });
        assert!(frag.is_fragmenting() && frag.is_first() && !frag.is_later());
        assert_eq!(IPV6_FIRST_FRAGMENT[14 + 48], 128);
        let last = walk(&IPV6_LAST_FRAGMENT);
        let frag = Fragment { offset: 1232, more: false, id: 0xeb70555f };
        assert_eq!(last, UpperLayer { fragment: Some(frag), ..plain(PROTO_ICMPV6, 48, 1) });
        assert!(frag.is_fragmenting() && frag.is_later() && !frag.is_first());
        // Both fragments' data make the whole original payload: 1232 + 76 bytes.
        assert_eq!(IPV6_LAST_FRAGMENT.len() - 14 - 48, 76);
    }

    #[test]
    fn truncated_chains_are_refused_at_the_header_that_runs_out() {
        // With the payload length cut too, the fixed header is fine but the chain is not: every
        // cut inside the 24 bytes of extension headers is refused, every cut after is not.
        let b = ICMPV6_ECHO_EXTENSION_HEADERS[14..].to_vec();
        for cut in HEADER_LEN..=b.len() {
            let mut short = b[..cut].to_vec();
            short[4..6].copy_from_slice(&((cut - HEADER_LEN) as u16).to_be_bytes());
            let walk = walk_packet(&short);
            match cut {
                ..48 => assert_eq!(walk, Err(ChainError::Truncated { need: 48, have: cut }), "{cut}"),
                // The Destination Options header's length byte is read once its 8 bytes are in.
                48..56 => assert_eq!(walk, Err(ChainError::Truncated { need: 56, have: cut }), "{cut}"),
                56..64 => assert_eq!(walk, Err(ChainError::Truncated { need: 64, have: cut }), "{cut}"),
                _ => assert_eq!(walk.unwrap().offset, 64),
            }
        }
    }

    #[test]
    fn long_and_repeated_chains_are_malformed() {
        let upper = [0u8; 8];
        let dest = || opts(PROTO_DEST_OPTIONS);
        // Eight headers are walked, a ninth is one too many.
        let eight: Vec<_> =
            std::iter::once(opts(PROTO_HOP_BY_HOP)).chain(std::iter::repeat_with(dest).take(7)).collect();
        let up = walk_packet(&chain(&eight, PROTO_UDP, &upper)).unwrap();
        assert_eq!((up.protocol, up.offset, up.extensions), (PROTO_UDP, 40 + 64, 8));
        let nine: Vec<_> = std::iter::repeat_with(dest).take(9).collect();
        let err = walk_packet(&chain(&nine, PROTO_UDP, &upper)).unwrap_err();
        assert_eq!(err, ChainError::Malformed("more than 8 IPv6 extension headers"));
        // A Destination Options header pointing at itself forever ends at the bound, or at the
        // end of the packet, whichever comes first.
        let mut p = chain(&[dest()], PROTO_DEST_OPTIONS, &[]);
        assert_eq!(walk_packet(&p).unwrap_err(), ChainError::Truncated { need: 56, have: 48 });
        for _ in 0..20 {
            p.extend_from_slice(&[PROTO_DEST_OPTIONS, 0, 1, 4, 0, 0, 0, 0]);
        }
        let payload_len = (p.len() - HEADER_LEN) as u16;
        p[4..6].copy_from_slice(&payload_len.to_be_bytes());
        assert_eq!(walk_packet(&p).unwrap_err(), ChainError::Malformed("more than 8 IPv6 extension headers"));
        // Hop-by-Hop only first; one Fragment header, one Routing header.
        let err = walk_packet(&chain(&[dest(), opts(PROTO_HOP_BY_HOP)], PROTO_UDP, &upper)).unwrap_err();
        assert_eq!(err, ChainError::Malformed("IPv6 Hop-by-Hop Options header not first"));
        let err = walk_packet(&chain(&[fragment(0, true), fragment(0, false)], PROTO_UDP, &upper)).unwrap_err();
        assert_eq!(err, ChainError::Malformed("two IPv6 Fragment headers"));
        let err = walk_packet(&chain(&[routing(4, 0), dest(), routing(0, 1)], PROTO_UDP, &upper)).unwrap_err();
        assert_eq!(err, ChainError::Malformed("two IPv6 Routing headers"));
    }

    #[test]
    fn every_extension_header_has_its_length_rule() {
        let upper = [0u8; 20];
        // Routing: (2 + 1) * 8 bytes, its type and segments left read.
        let up = walk_packet(&chain(&[routing(0, 2)], PROTO_TCP, &upper)).unwrap();
        assert_eq!((up.protocol, up.offset), (PROTO_TCP, 64));
        assert_eq!(up.routing, Some(Routing { routing_type: 0, segments_left: 2 }));
        // Authentication: (4 + 2) * 4 bytes; a length of 0 is shorter than its fixed fields.
        let mut ah = vec![4];
        ah.resize(23, 0);
        let up = walk_packet(&chain(&[(PROTO_AH, ah)], PROTO_ICMPV6, &upper)).unwrap();
        assert_eq!((up.protocol, up.offset, up.extensions), (PROTO_ICMPV6, 64, 1));
        let err = walk_packet(&chain(&[(PROTO_AH, vec![0; 11])], PROTO_ICMPV6, &upper)).unwrap_err();
        assert_eq!(err, ChainError::Malformed("IPv6 Authentication header shorter than 12 bytes"));
        // ESP and No Next Header end the walk where they start.
        let up = walk_packet(&chain(&[opts(PROTO_HOP_BY_HOP)], PROTO_ESP, &upper)).unwrap();
        assert_eq!((up.protocol, up.offset), (PROTO_ESP, 48));
        let up = walk_packet(&chain(&[], PROTO_NO_NEXT_HEADER, &[])).unwrap();
        assert_eq!(up, plain(PROTO_NO_NEXT_HEADER, 40, 0));
        // An atomic fragment: walked through, not fragmenting.
        let up = walk_packet(&chain(&[fragment(0, false)], PROTO_UDP, &upper)).unwrap();
        assert_eq!((up.protocol, up.offset), (PROTO_UDP, 48));
        assert!(!up.fragment.unwrap().is_fragmenting());
        // A later fragment stops at its Fragment header even if what follows looks like headers.
        let up = walk_packet(&chain(&[fragment(8, true)], PROTO_DEST_OPTIONS, &[0xff; 3])).unwrap();
        assert_eq!((up.protocol, up.offset, up.fragment.unwrap().offset), (PROTO_DEST_OPTIONS, 48, 8));
    }

    #[test]
    fn routing_type_0_is_active_only_with_segments_left() {
        assert!(Routing { routing_type: 0, segments_left: 1 }.is_active_type_0());
        assert!(!Routing { routing_type: 0, segments_left: 0 }.is_active_type_0());
        // Segment routing (type 4) and the like are not type 0.
        assert!(!Routing { routing_type: 4, segments_left: 3 }.is_active_type_0());
    }

    #[test]
    fn a_first_fragment_must_hold_its_whole_chain_and_upper_layer_header() {
        let incomplete = |need, have| Err(ChainError::IncompleteFirstFragment { need, have });
        // The upper-layer header's fixed part: TCP 20, UDP and ICMPv6 8, anything else one byte.
        for (protocol, floor) in [(PROTO_TCP, 20), (PROTO_UDP, 8), (PROTO_ICMPV6, 8), (132, 1)] {
            let p = chain(&[fragment(0, true)], protocol, &vec![0; floor]);
            assert_eq!(walk_packet(&p).unwrap().offset, 48, "{protocol}: all {floor} bytes are in");
            let p = chain(&[fragment(0, true)], protocol, &vec![0; floor - 1]);
            assert_eq!(walk_packet(&p), incomplete(48 + floor, 47 + floor), "{protocol}: one byte short");
        }
        // Empty: nothing after the Fragment header.
        assert_eq!(walk_packet(&chain(&[fragment(0, true)], PROTO_UDP, &[])), incomplete(56, 48));
        // Cut inside a header after the Fragment header.
        let p = chain(&[fragment(0, true), opts(PROTO_DEST_OPTIONS)], PROTO_UDP, &[]);
        let short = &p[..52];
        let mut short = short.to_vec();
        short[4..6].copy_from_slice(&12u16.to_be_bytes());
        assert_eq!(walk_packet(&short), incomplete(56, 52));
        // Nothing follows No Next Header, so nothing is missing.
        assert!(walk_packet(&chain(&[fragment(0, true)], PROTO_NO_NEXT_HEADER, &[])).is_ok());
        // Atomic, later and unfragmented packets are not first fragments: an empty UDP payload
        // there is the upper layer's business, and a cut header a plain truncation.
        assert!(walk_packet(&chain(&[fragment(0, false)], PROTO_UDP, &[])).is_ok());
        assert!(walk_packet(&chain(&[fragment(8, true)], PROTO_TCP, &[])).is_ok());
        assert!(walk_packet(&chain(&[], PROTO_TCP, &[0; 4])).is_ok());
        let mut short = chain(&[opts(PROTO_DEST_OPTIONS)], PROTO_UDP, &[])[..44].to_vec();
        short[4..6].copy_from_slice(&4u16.to_be_bytes());
        assert_eq!(walk_packet(&short), Err(ChainError::Truncated { need: 48, have: 44 }));
    }
}
