//! IPv4 headers (RFC 791): validation of the fields a router must check, and the TTL rewrite.

use std::net::Ipv4Addr;

use super::{checksum, need};

mod field {
    use std::ops::Range;
    pub const VER_IHL: usize = 0;
    pub const TOTAL_LEN: Range<usize> = 2..4;
    pub const FLAGS_FRAG: Range<usize> = 6..8;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: Range<usize> = 10..12;
    pub const SRC: Range<usize> = 12..16;
    pub const DST: Range<usize> = 16..20;
}

pub const MIN_HEADER_LEN: usize = 20;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// What is wrong with an IPv4 header; each maps to its own drop counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Ipv4Error {
    #[error("shorter than an IPv4 header")]
    Truncated,
    #[error("version is not 4")]
    BadVersion,
    #[error("header length below 20 or beyond the packet")]
    BadHeaderLength,
    #[error("total length below the header or beyond the frame")]
    BadTotalLength,
    #[error("header checksum does not verify")]
    BadChecksum,
}

/// A view of an IPv4 packet whose header passed every check in `new_checked`.
#[derive(Debug)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Validates version, header length, total length (against the bytes present; trailing
    /// Ethernet padding is allowed) and the header checksum.
    pub fn new_checked(buffer: T) -> Result<Self, Ipv4Error> {
        let b = buffer.as_ref();
        need(b, MIN_HEADER_LEN).map_err(|_| Ipv4Error::Truncated)?;
        if b[field::VER_IHL] >> 4 != 4 {
            return Err(Ipv4Error::BadVersion);
        }
        let header_len = ((b[field::VER_IHL] & 0x0f) as usize) * 4;
        if header_len < MIN_HEADER_LEN || header_len > b.len() {
            return Err(Ipv4Error::BadHeaderLength);
        }
        let total = u16::from_be_bytes([b[2], b[3]]) as usize;
        if total < header_len || total > b.len() {
            return Err(Ipv4Error::BadTotalLength);
        }
        if checksum::sum(&b[..header_len]) != 0xffff {
            return Err(Ipv4Error::BadChecksum);
        }
        Ok(Ipv4Packet { buffer })
    }

    /// A view of bytes that already passed [`Ipv4Packet::new_checked`] (the pipeline re-wraps a
    /// validated header to rewrite it; checking the checksum twice per packet buys nothing).
    pub(crate) fn new_unchecked(buffer: T) -> Self {
        debug_assert!(Ipv4Packet::new_checked(buffer.as_ref()).is_ok());
        Ipv4Packet { buffer }
    }

    pub fn header_len(&self) -> usize {
        ((self.buffer.as_ref()[field::VER_IHL] & 0x0f) as usize) * 4
    }

    pub fn total_len(&self) -> usize {
        let b = &self.buffer.as_ref()[field::TOTAL_LEN];
        u16::from_be_bytes([b[0], b[1]]) as usize
    }

    pub fn dont_fragment(&self) -> bool {
        self.buffer.as_ref()[field::FLAGS_FRAG.start] & 0x40 != 0
    }

    fn flags_fragment(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::FLAGS_FRAG];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// Where this fragment's data goes in the original datagram, in bytes.
    pub fn fragment_offset(&self) -> usize {
        (self.flags_fragment() & 0x1fff) as usize * 8
    }

    /// True for every fragment but the first (they carry no L4 header).
    pub fn is_later_fragment(&self) -> bool {
        self.fragment_offset() != 0
    }

    /// True for the first of several fragments: more fragments set, offset 0.
    pub fn is_first_fragment(&self) -> bool {
        self.flags_fragment() & 0x3fff == 0x2000
    }

    /// True for any fragment, the first included (more fragments set, or an offset).
    pub fn is_fragment(&self) -> bool {
        self.flags_fragment() & 0x3fff != 0
    }

    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    pub fn src(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::SRC];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    pub fn dst(&self) -> Ipv4Addr {
        let b = &self.buffer.as_ref()[field::DST];
        Ipv4Addr::new(b[0], b[1], b[2], b[3])
    }

    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..self.total_len()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    /// TTL minus one, with the checksum updated incrementally (RFC 1624).
    pub fn decrement_ttl(&mut self) {
        let b = self.buffer.as_mut();
        let old = u16::from_be_bytes([b[field::TTL], b[field::PROTOCOL]]);
        b[field::TTL] -= 1;
        let new = u16::from_be_bytes([b[field::TTL], b[field::PROTOCOL]]);
        let c = u16::from_be_bytes([b[10], b[11]]);
        b[field::CHECKSUM].copy_from_slice(&checksum::update(c, old, new).to_be_bytes());
    }
}

/// Writes a 20-byte header (no options, DF clear) with a valid checksum.
pub fn emit_header(buf: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, payload_len: usize, ttl: u8) {
    let total = (MIN_HEADER_LEN + payload_len) as u16;
    buf[..MIN_HEADER_LEN].fill(0);
    buf[field::VER_IHL] = 0x45;
    buf[field::TOTAL_LEN].copy_from_slice(&total.to_be_bytes());
    buf[field::TTL] = ttl;
    buf[field::PROTOCOL] = protocol;
    buf[field::SRC].copy_from_slice(&src.octets());
    buf[field::DST].copy_from_slice(&dst.octets());
    let c = checksum::checksum(&buf[..MIN_HEADER_LEN]);
    buf[field::CHECKSUM].copy_from_slice(&c.to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::wire::captured::{ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST};

    /// The IP packet of a captured frame.
    fn ip(frame: &[u8; 50]) -> [u8; 36] {
        frame[14..].try_into().unwrap()
    }

    #[test]
    fn parses_captured_header() {
        let bytes = ip(&ICMP_ECHO_REQUEST);
        let p = Ipv4Packet::new_checked(&bytes[..]).unwrap();
        assert_eq!((p.src(), p.dst()), (Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!((p.ttl(), p.protocol(), p.total_len(), p.header_len()), (64, PROTO_ICMP, 36, 20));
        assert!(p.dont_fragment() && !p.is_later_fragment());
        assert_eq!(p.payload().len(), 16);
        let bytes = ip(&ICMP_ECHO_REPLY);
        let p = Ipv4Packet::new_checked(&bytes[..]).unwrap();
        assert!(!p.dont_fragment());
    }

    #[test]
    fn fragment_fields() {
        let with_flags = |word: u16| {
            let mut b = ip(&ICMP_ECHO_REQUEST);
            b[6..8].copy_from_slice(&word.to_be_bytes());
            b[10..12].fill(0);
            let c = checksum::checksum(&b[..20]);
            b[10..12].copy_from_slice(&c.to_be_bytes());
            let p = Ipv4Packet::new_checked(b).unwrap();
            (p.fragment_offset(), p.is_first_fragment(), p.is_later_fragment(), p.is_fragment())
        };
        assert_eq!(with_flags(0x4000), (0, false, false, false), "DF, whole");
        assert_eq!(with_flags(0x2000), (0, true, false, true), "first");
        assert_eq!(with_flags(0x2001), (8, false, true, true), "middle, offset 1");
        assert_eq!(with_flags(0x00b9), (1480, false, true, true), "last");
    }

    #[test]
    fn every_bad_field_has_its_error() {
        let check = |mutate: fn(&mut [u8; 36])| {
            let mut b = ip(&ICMP_ECHO_REQUEST);
            mutate(&mut b);
            Ipv4Packet::new_checked(&b[..]).unwrap_err()
        };
        assert_eq!(check(|b| b[0] = 0x65), Ipv4Error::BadVersion);
        assert_eq!(check(|b| b[0] = 0x44), Ipv4Error::BadHeaderLength);
        assert_eq!(check(|b| b[0] = 0x4f), Ipv4Error::BadHeaderLength);
        assert_eq!(check(|b| b[3] = 0x40), Ipv4Error::BadTotalLength);
        assert_eq!(check(|b| b[10] ^= 0xff), Ipv4Error::BadChecksum);
        assert_eq!(check(|b| b[3] = 0x10), Ipv4Error::BadTotalLength);
        assert_eq!(check(|b| b[11] ^= 1), Ipv4Error::BadChecksum);
        assert_eq!(Ipv4Packet::new_checked(&ip(&ICMP_ECHO_REQUEST)[..19]).unwrap_err(), Ipv4Error::Truncated);
    }

    #[test]
    fn ttl_decrement_keeps_the_checksum_valid() {
        let mut b = ip(&ICMP_ECHO_REQUEST);
        let mut p = Ipv4Packet::new_checked(&mut b[..]).unwrap();
        p.decrement_ttl();
        assert_eq!(p.ttl(), 63);
        assert!(Ipv4Packet::new_checked(&b[..]).is_ok());
    }
}
