//! ICMPv6 (RFC 4443) and Neighbor Discovery (RFC 4861): views of the messages a router reads,
//! and the Neighbor Advertisements and errors it writes.
//!
//! The views take the ICMPv6 message alone, from its type byte to the end of the IPv6 packet
//! (where [`ipv6::UpperLayer`] says it starts). Its checksum covers the IPv6 addresses, so it is
//! checked by [`Icmpv6Packet::verify_checksum`], not by `new_checked`. What NDP asks of the IPv6
//! header (hop limit [`NDP_HOP_LIMIT`], no source link-layer address from the unspecified
//! address, link-local sources for Router Advertisements) is the caller's to check too.
//!
//! This file: the message header, its checksum, and the errors a router writes; [`ndp`]: the
//! Neighbor Discovery messages and options.

use std::net::Ipv6Addr;

use super::ipv6::{self, PROTO_ICMPV6};
use super::{checksum, need, WireError};

mod field {
    use std::ops::Range;
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: Range<usize> = 2..4;
    pub const REST: Range<usize> = 4..8;
    // Neighbor Solicitation and Advertisement (RFC 4861 §4.3, §4.4).
    pub const NA_FLAGS: usize = 4;
    pub const TARGET: Range<usize> = 8..24;
    // Router Advertisement (§4.2).
    pub const RA_HOP_LIMIT: usize = 4;
    pub const RA_FLAGS: usize = 5;
    pub const RA_LIFETIME: Range<usize> = 6..8;
    pub const RA_REACHABLE: Range<usize> = 8..12;
    pub const RA_RETRANS: Range<usize> = 12..16;
}

mod ndp;

pub use ndp::*;

pub const HEADER_LEN: usize = 8;
pub const TYPE_DEST_UNREACHABLE: u8 = 1;
pub const TYPE_PACKET_TOO_BIG: u8 = 2;
pub const TYPE_TIME_EXCEEDED: u8 = 3;
pub const TYPE_PARAM_PROBLEM: u8 = 4;
pub const TYPE_ECHO_REQUEST: u8 = 128;
pub const TYPE_ECHO_REPLY: u8 = 129;
pub const TYPE_ROUTER_SOLICIT: u8 = 133;
pub const TYPE_ROUTER_ADVERT: u8 = 134;
pub const TYPE_NEIGHBOR_SOLICIT: u8 = 135;
pub const TYPE_NEIGHBOR_ADVERT: u8 = 136;
pub const TYPE_REDIRECT: u8 = 137;
/// Time Exceeded's code for a hop limit run out in transit.
pub const CODE_HOP_LIMIT_EXCEEDED: u8 = 0;

/// Whether an ICMPv6 message of type `msg_type` is an error (types 0 to 127, RFC 4443 §2.1), as
/// opposed to an informational message. No error may answer an error (§2.4 (e)).
pub fn is_error(msg_type: u8) -> bool {
    msg_type < 128
}

/// A view of an ICMPv6 message; at least [`HEADER_LEN`] bytes.
#[derive(Debug)]
pub struct Icmpv6Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Icmpv6Packet<T> {
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        need(buffer.as_ref(), HEADER_LEN)?;
        Ok(Icmpv6Packet { buffer })
    }

    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    pub fn checksum(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::CHECKSUM];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// The four bytes after the checksum: an echo's identifier and sequence number, Packet Too
    /// Big's MTU, Parameter Problem's pointer, NDP's flags.
    pub fn rest_of_header(&self) -> [u8; 4] {
        self.buffer.as_ref()[field::REST].try_into().expect("4 bytes")
    }

    /// What follows the 8-byte header: the quoted packet of an error, an echo's data, NDP's
    /// target and options.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }

    /// Whether the checksum verifies over the pseudo-header of `src` and `dst` and the whole
    /// message.
    pub fn verify_checksum(&self, src: Ipv6Addr, dst: Ipv6Addr) -> bool {
        let b = self.buffer.as_ref();
        checksum::add(pseudo_header(src, dst, b.len()), checksum::sum(b)) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Icmpv6Packet<T> {
    /// Computes the checksum over the pseudo-header of `src` and `dst` and the whole message.
    pub fn fill_checksum(&mut self, src: Ipv6Addr, dst: Ipv6Addr) {
        let b = self.buffer.as_mut();
        b[field::CHECKSUM].fill(0);
        let c = !checksum::add(pseudo_header(src, dst, b.len()), checksum::sum(b));
        b[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
    }
}

fn pseudo_header(src: Ipv6Addr, dst: Ipv6Addr, len: usize) -> u16 {
    checksum::ipv6_pseudo_header(&src, &dst, PROTO_ICMPV6, len as u32)
}

/// An ICMPv6 error to emit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Icmpv6Error {
    /// Hop limit exceeded in transit.
    TimeExceeded,
    /// Packet Too Big, with the next hop's MTU (RFC 4443 §3.2): IPv6 routers never fragment.
    PacketTooBig { mtu: u32 },
}

/// Bytes of the offending packet an error quotes: as many as fit in the minimum MTU with the
/// error's own headers (RFC 4443 §2.4 (c)), 1232 at most.
pub fn quoted_len(offending: &[u8]) -> usize {
    offending.len().min(ipv6::MIN_MTU - ipv6::HEADER_LEN - HEADER_LEN)
}

/// Writes an IPv6 packet holding an ICMPv6 error from `from` to `to` that quotes the first
/// [`quoted_len`] bytes of `offending`; returns its length (at most 1280). `buf` must hold
/// `ipv6::HEADER_LEN + HEADER_LEN + quoted_len(offending)` bytes.
pub fn emit_error(buf: &mut [u8], from: Ipv6Addr, to: Ipv6Addr, error: Icmpv6Error, offending: &[u8]) -> usize {
    let quoted = &offending[..quoted_len(offending)];
    let icmp_len = HEADER_LEN + quoted.len();
    let (ip, icmp) = buf[..ipv6::HEADER_LEN + icmp_len].split_at_mut(ipv6::HEADER_LEN);
    let (kind, code, rest) = match error {
        Icmpv6Error::TimeExceeded => (TYPE_TIME_EXCEEDED, CODE_HOP_LIMIT_EXCEEDED, [0u8; 4]),
        Icmpv6Error::PacketTooBig { mtu } => (TYPE_PACKET_TOO_BIG, 0, mtu.to_be_bytes()),
    };
    icmp[field::TYPE] = kind;
    icmp[field::CODE] = code;
    icmp[field::REST].copy_from_slice(&rest);
    icmp[HEADER_LEN..].copy_from_slice(quoted);
    Icmpv6Packet { buffer: &mut *icmp }.fill_checksum(from, to);
    ipv6::emit_header(ip, from, to, PROTO_ICMPV6, icmp_len, 64);
    ipv6::HEADER_LEN + icmp_len
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::wire::captured::{
        ICMPV6_ECHO_EXTENSION_HEADERS, ICMPV6_ECHO_HOP_LIMIT_1, ICMPV6_ECHO_REPLY, ICMPV6_ECHO_REQUEST,
        ICMPV6_TIME_EXCEEDED, IPV6_FIRST_FRAGMENT, MLD_REPORT, NDP_DAD_SOLICIT, NDP_NEIGHBOR_ADVERT,
        NDP_NEIGHBOR_ADVERT_NO_OPTIONS, NDP_NEIGHBOR_SOLICIT, NDP_ROUTER_ADVERT, NDP_ROUTER_SOLICIT, TCP6_SYN,
    };
    use crate::wire::ipv6::Ipv6Packet;
    use crate::wire::MacAddr;

    pub(super) fn a(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    pub(super) fn mac(s: &str) -> MacAddr {
        s.parse().unwrap()
    }

    /// The ICMPv6 message of a captured frame, and its IPv6 addresses.
    pub(super) fn message(frame: &[u8]) -> (Vec<u8>, Ipv6Addr, Ipv6Addr) {
        let ip = Ipv6Packet::new_checked(&frame[14..]).unwrap();
        let up = ip.upper_layer().unwrap();
        assert_eq!(up.protocol, PROTO_ICMPV6);
        (ip.packet()[up.offset..].to_vec(), ip.src(), ip.dst())
    }

    #[test]
    fn captured_messages_verify() {
        let frames: [(&[u8], u8); 12] = [
            (&NDP_NEIGHBOR_SOLICIT, TYPE_NEIGHBOR_SOLICIT),
            (&NDP_DAD_SOLICIT, TYPE_NEIGHBOR_SOLICIT),
            (&NDP_NEIGHBOR_ADVERT, TYPE_NEIGHBOR_ADVERT),
            (&NDP_NEIGHBOR_ADVERT_NO_OPTIONS, TYPE_NEIGHBOR_ADVERT),
            (&NDP_ROUTER_SOLICIT, TYPE_ROUTER_SOLICIT),
            (&NDP_ROUTER_ADVERT, TYPE_ROUTER_ADVERT),
            (&MLD_REPORT, 143),
            (&ICMPV6_ECHO_REQUEST, TYPE_ECHO_REQUEST),
            (&ICMPV6_ECHO_REPLY, TYPE_ECHO_REPLY),
            (&ICMPV6_ECHO_EXTENSION_HEADERS, TYPE_ECHO_REQUEST),
            (&ICMPV6_ECHO_HOP_LIMIT_1, TYPE_ECHO_REQUEST),
            (&ICMPV6_TIME_EXCEEDED, TYPE_TIME_EXCEEDED),
        ];
        for (frame, kind) in frames {
            let (mut bytes, src, dst) = message(frame);
            let icmp = Icmpv6Packet::new_checked(&bytes[..]).unwrap();
            assert_eq!((icmp.msg_type(), icmp.code()), (kind, 0));
            assert!(icmp.verify_checksum(src, dst), "type {kind}");
            let theirs = etherparse::Icmpv6Slice::from_slice(&bytes).unwrap();
            assert!(theirs.is_checksum_valid(src.octets(), dst.octets()));
            let elsewhere = Ipv6Addr::from(dst.to_bits() ^ 1);
            assert!(!icmp.verify_checksum(src, elsewhere), "the addresses count");
            // Filling recomputes what the sender wrote.
            let sent = icmp.checksum();
            let mut icmp = Icmpv6Packet::new_checked(&mut bytes[..]).unwrap();
            icmp.fill_checksum(src, dst);
            assert_eq!(icmp.checksum(), sent);
            bytes[HEADER_LEN] ^= 1;
            assert!(!Icmpv6Packet::new_checked(&bytes[..]).unwrap().verify_checksum(src, dst));
        }
        let (echo, _, _) = message(&ICMPV6_ECHO_REQUEST);
        let echo = Icmpv6Packet::new_checked(&echo[..]).unwrap();
        assert_eq!((echo.rest_of_header(), echo.payload()), ([0x2c, 0xe1, 0, 1], &[0, 1, 2, 3, 4, 5, 6, 7][..]));
        assert_eq!(
            Icmpv6Packet::new_checked(&[128u8, 0, 0, 0, 0, 0, 0][..]).unwrap_err(),
            WireError::Truncated { need: 8, have: 7 }
        );
    }

    #[test]
    fn errors_are_told_from_informational_messages() {
        for kind in [TYPE_DEST_UNREACHABLE, TYPE_PACKET_TOO_BIG, TYPE_TIME_EXCEEDED, TYPE_PARAM_PROBLEM, 0, 127] {
            assert!(is_error(kind), "{kind}");
        }
        for kind in [TYPE_ECHO_REQUEST, TYPE_ECHO_REPLY, TYPE_NEIGHBOR_SOLICIT, TYPE_ROUTER_ADVERT, TYPE_REDIRECT, 255]
        {
            assert!(!is_error(kind), "{kind}");
        }
    }

    #[test]
    fn time_exceeded_is_what_linux_sends() {
        // The captured router's error about the captured echo request, but for the flow label
        // (Linux hashes one; we leave it 0).
        let mut buf = [0u8; ipv6::MIN_MTU];
        let offending = &ICMPV6_ECHO_HOP_LIMIT_1[14..];
        let len = emit_error(&mut buf, a("2001:db8:2::1"), a("2001:db8:2::2"), Icmpv6Error::TimeExceeded, offending);
        let linux = &ICMPV6_TIME_EXCEEDED[14..];
        assert_eq!(len, linux.len());
        assert_eq!((&buf[..1], &buf[4..len]), (&linux[..1], &linux[4..]));
        assert_eq!(Ipv6Packet::new_checked(linux).unwrap().flow_label(), 0x544eb);
    }

    #[test]
    fn packet_too_big_quotes_what_fits_in_1280_bytes() {
        // A 1500-byte packet: the TCP SYN's header with 1460 bytes of payload.
        let mut offending = TCP6_SYN[14..54].to_vec();
        offending[4..6].copy_from_slice(&1460u16.to_be_bytes());
        offending.extend((0..1460).map(|i| i as u8));
        let mut buf = [0u8; ipv6::MIN_MTU];
        let (from, to) = (a("2001:db8::1"), a("2001:db8:1:0:42:acff:fe11:2"));
        let len = emit_error(&mut buf, from, to, Icmpv6Error::PacketTooBig { mtu: 1400 }, &offending);
        assert_eq!((len, quoted_len(&offending)), (1280, 1232));
        let ip = Ipv6Packet::new_checked(&buf[..len]).unwrap();
        assert_eq!((ip.src(), ip.dst(), ip.next_header(), ip.payload_len()), (from, to, PROTO_ICMPV6, 1240));
        let icmp = Icmpv6Packet::new_checked(ip.payload()).unwrap();
        assert_eq!((icmp.msg_type(), icmp.code(), icmp.rest_of_header()), (2, 0, 1400u32.to_be_bytes()));
        assert_eq!(icmp.payload(), &offending[..1232]);
        assert!(icmp.verify_checksum(from, to));
        // A first fragment of 1280 bytes is quoted up to what fits; a small packet whole.
        let len = emit_error(&mut buf, from, to, Icmpv6Error::TimeExceeded, &IPV6_FIRST_FRAGMENT[14..]);
        assert_eq!(len, 1280);
        let len = emit_error(&mut buf, from, to, Icmpv6Error::TimeExceeded, &TCP6_SYN[14..]);
        assert_eq!(len, 40 + 8 + 80);
        let ip = Ipv6Packet::new_checked(&buf[..len]).unwrap();
        assert!(Icmpv6Packet::new_checked(ip.payload()).unwrap().verify_checksum(from, to));
    }
}
