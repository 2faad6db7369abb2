//! The Internet checksum (RFC 1071), its incremental update (RFC 1624), and the IPv4 and IPv6
//! pseudo-headers the upper layers' checksums cover (RFC 768, RFC 8200 §8.1).

use std::net::{Ipv4Addr, Ipv6Addr};

/// One's-complement sum of `data` folded to 16 bits (not inverted).
pub fn sum(data: &[u8]) -> u16 {
    let mut acc: u64 = 0;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u16::from_be_bytes([c[0], c[1]]) as u64;
    }
    if let [last] = chunks.remainder() {
        acc += (*last as u64) << 8;
    }
    fold(acc)
}

fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The checksum field value for `data` (with its checksum field zeroed).
pub fn checksum(data: &[u8]) -> u16 {
    !sum(data)
}

/// One's-complement sum of two sums (a pseudo-header's and its packet's, say).
pub fn add(a: u16, b: u16) -> u16 {
    fold(a as u64 + b as u64)
}

/// Sum (not inverted) of the IPv6 pseudo-header for an upper-layer packet of `len` bytes with
/// protocol `next_header`: add it to the packet's [`sum`]; the result is 0xffff when the
/// packet's checksum verifies.
pub fn ipv6_pseudo_header(src: &Ipv6Addr, dst: &Ipv6Addr, next_header: u8, len: u32) -> u16 {
    let acc = sum(&src.octets()) as u64
        + sum(&dst.octets()) as u64
        + (len >> 16) as u64
        + (len & 0xffff) as u64
        + next_header as u64;
    fold(acc)
}

/// Sum (not inverted) of the IPv4 pseudo-header (RFC 768: source, destination, zero, protocol,
/// length) for an upper-layer packet of `len` bytes; used like [`ipv6_pseudo_header`].
pub fn ipv4_pseudo_header(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, len: u16) -> u16 {
    let acc = sum(&src.octets()) as u64 + sum(&dst.octets()) as u64 + len as u64 + protocol as u64;
    fold(acc)
}

/// RFC 1624 eqn. 3: the new checksum after one 16-bit word changed from `old` to `new`.
pub fn update(checksum: u16, old: u16, new: u16) -> u16 {
    !fold(!checksum as u64 + !old as u64 + new as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // The RFC's example bytes sum to 0xddf2.
        assert_eq!(sum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]), 0xddf2);
    }

    #[test]
    fn incremental_update_matches_recomputation() {
        let mut header = [0x45u8, 0, 0, 84, 0x12, 0x34, 0x40, 0, 64, 1, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2];
        let c = checksum(&header);
        header[10..12].copy_from_slice(&c.to_be_bytes());
        let old = u16::from_be_bytes([header[8], header[9]]);
        header[8] -= 1;
        let new = u16::from_be_bytes([header[8], header[9]]);
        let incremental = update(c, old, new);
        header[10..12].copy_from_slice(&[0, 0]);
        assert_eq!(incremental, checksum(&header));
    }

    #[test]
    fn ipv6_pseudo_header_verifies_a_captured_echo_request() {
        use crate::wire::captured::ICMPV6_ECHO_REQUEST;
        let ip = &ICMPV6_ECHO_REQUEST[14..];
        let addr = |r: std::ops::Range<usize>| Ipv6Addr::from(<[u8; 16]>::try_from(&ip[r]).unwrap());
        let (src, dst, icmp) = (addr(8..24), addr(24..40), &ip[40..]);
        let pseudo = ipv6_pseudo_header(&src, &dst, 58, icmp.len() as u32);
        assert_eq!(add(pseudo, sum(icmp)), 0xffff);
        // Recomputed from scratch: checksum field zeroed, then the inverted total.
        let mut zeroed = icmp.to_vec();
        zeroed[2..4].fill(0);
        assert_eq!(!add(pseudo, sum(&zeroed)), u16::from_be_bytes([icmp[2], icmp[3]]));
        // A length beyond 16 bits carries into the sum (jumbo lengths are 32 bits on the wire).
        assert_eq!(ipv6_pseudo_header(&src, &dst, 58, 0x1_0000), add(ipv6_pseudo_header(&src, &dst, 58, 0), 1));
    }
}
