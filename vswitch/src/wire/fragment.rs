//! What a router that does not reassemble can judge of one IP fragment on its own, in both
//! families: whether a first fragment holds the headers it must (RFC 7112 for IPv6, RFC 1858
//! §3.2 for IPv4), and whether a later fragment's offset lands inside them (an overlap that
//! would rewrite, at reassembly, headers the switch judged in the first fragment: RFC 5722,
//! RFC 1858 §3.2). Overlaps elsewhere in the data are the reassembling host's to find.

use super::{ipv4, ipv6};

/// The fewest bytes of headers a first fragment holds from where `protocol` starts: the fixed
/// part of a TCP (20), UDP or ICMP/ICMPv6 (8) header, nothing after No Next Header, one byte of
/// any other upper layer (the sizes Linux checks in `ipv6frag_thdr_truncated`); an IPv6 extension
/// header's own minimum and at least one byte after it.
pub fn header_floor(protocol: u8) -> usize {
    match protocol {
        ipv4::PROTO_TCP => 20,
        ipv4::PROTO_UDP | ipv4::PROTO_ICMP | ipv6::PROTO_ICMPV6 => 8,
        ipv6::PROTO_NO_NEXT_HEADER => 0,
        ipv6::PROTO_HOP_BY_HOP | ipv6::PROTO_ROUTING | ipv6::PROTO_FRAGMENT | ipv6::PROTO_DEST_OPTIONS => 8 + 1,
        ipv6::PROTO_AH => 12 + 1,
        _ => 1,
    }
}

/// Whether a later fragment `offset` bytes into a packet whose fragmentable part starts with
/// `protocol` overlaps the headers its first fragment must hold.
pub fn overlaps_headers(offset: usize, protocol: u8) -> bool {
    offset > 0 && offset < header_floor(protocol)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_offsets_inside_the_first_fragments_headers_overlap() {
        // Offsets come in 8-byte units: 8 and 16 land in a TCP header, nothing in UDP's or ICMP's.
        assert!(overlaps_headers(8, ipv4::PROTO_TCP) && overlaps_headers(16, ipv4::PROTO_TCP));
        assert!(!overlaps_headers(24, ipv4::PROTO_TCP));
        for protocol in [ipv4::PROTO_UDP, ipv4::PROTO_ICMP, ipv6::PROTO_ICMPV6, 132, ipv6::PROTO_NO_NEXT_HEADER] {
            assert!(!overlaps_headers(8, protocol), "protocol {protocol}");
        }
        // A Destination Options header first: at 8 the data overwrites what follows it.
        assert!(overlaps_headers(8, ipv6::PROTO_DEST_OPTIONS) && !overlaps_headers(16, ipv6::PROTO_DEST_OPTIONS));
        assert!(overlaps_headers(8, ipv6::PROTO_AH) && !overlaps_headers(16, ipv6::PROTO_AH));
        // The first fragment itself never overlaps.
        assert!(!overlaps_headers(0, ipv4::PROTO_TCP));
    }
}
