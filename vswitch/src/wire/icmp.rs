//! ICMPv4 (RFC 792): the error messages a router sends.

use std::net::Ipv4Addr;

use super::{checksum, ipv4};

pub const HEADER_LEN: usize = 8;
pub const TYPE_ECHO_REPLY: u8 = 0;
pub const TYPE_DEST_UNREACHABLE: u8 = 3;
pub const CODE_FRAG_NEEDED: u8 = 4;
pub const TYPE_TIME_EXCEEDED: u8 = 11;
pub const TYPE_ECHO_REQUEST: u8 = 8;

/// Whether an ICMP message of type `kind` is an informational query or its answer (RFC 792,
/// RFC 950, RFC 1256), as opposed to an error. RFC 1812 §4.3.2.7 forbids answering an error with
/// an error, so that two routers cannot bounce errors at each other; a type this list does not
/// know counts as an error (the safe side: it gets no answer).
pub fn is_informational(kind: u8) -> bool {
    // Echo reply/request, router advertisement/solicitation, timestamp, information and
    // address-mask requests and replies.
    matches!(kind, 0 | 8 | 9 | 10 | 13..=18)
}

/// An ICMP error to emit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcmpError {
    TimeExceeded,
    /// Fragmentation needed, with the next-hop MTU (RFC 1191).
    FragmentationNeeded {
        mtu: u16,
    },
}

/// Bytes of the offending packet quoted in an error: its IP header and 8 bytes more (RFC 792).
pub fn quoted_len(offending: &[u8], header_len: usize) -> usize {
    offending.len().min(header_len + 8)
}

/// Writes IP header + ICMP error quoting `quoted` into `buf`; returns the IP packet length.
/// `buf` must hold `ipv4::MIN_HEADER_LEN + HEADER_LEN + quoted.len()` bytes.
pub fn emit_error(buf: &mut [u8], from: Ipv4Addr, to: Ipv4Addr, error: IcmpError, quoted: &[u8]) -> usize {
    let icmp_len = HEADER_LEN + quoted.len();
    let (ip, icmp) = buf.split_at_mut(ipv4::MIN_HEADER_LEN);
    let icmp = &mut icmp[..icmp_len];
    let (kind, code, rest) = match error {
        IcmpError::TimeExceeded => (TYPE_TIME_EXCEEDED, 0, [0u8; 4]),
        IcmpError::FragmentationNeeded { mtu } => {
            let m = mtu.to_be_bytes();
            (TYPE_DEST_UNREACHABLE, CODE_FRAG_NEEDED, [0, 0, m[0], m[1]])
        }
    };
    icmp[0] = kind;
    icmp[1] = code;
    icmp[2..4].fill(0);
    icmp[4..8].copy_from_slice(&rest);
    icmp[HEADER_LEN..].copy_from_slice(quoted);
    let c = checksum::checksum(icmp);
    icmp[2..4].copy_from_slice(&c.to_be_bytes());
    ipv4::emit_header(ip, from, to, ipv4::PROTO_ICMP, icmp_len, 64);
    ipv4::MIN_HEADER_LEN + icmp_len
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captured_echo_messages_verify() {
        use crate::wire::captured::{ICMP_ECHO_REPLY, ICMP_ECHO_REQUEST};
        for (frame, kind) in [(ICMP_ECHO_REQUEST, TYPE_ECHO_REQUEST), (ICMP_ECHO_REPLY, TYPE_ECHO_REPLY)] {
            let ip = ipv4::Ipv4Packet::new_checked(&frame[14..]).unwrap();
            assert_eq!(ip.payload()[0], kind);
            assert_eq!(checksum::sum(ip.payload()), 0xffff, "ICMP checksum over the captured message");
        }
    }

    #[test]
    fn errors_are_told_from_queries() {
        for kind in [TYPE_ECHO_REPLY, TYPE_ECHO_REQUEST, 9, 10, 13, 14, 15, 16, 17, 18] {
            assert!(is_informational(kind), "{kind}");
        }
        // Destination unreachable, source quench, redirect, time exceeded, parameter problem,
        // and types nobody defined.
        for kind in [TYPE_DEST_UNREACHABLE, 4, 5, TYPE_TIME_EXCEEDED, 12, 1, 42, 255] {
            assert!(!is_informational(kind), "{kind}");
        }
    }

    #[test]
    fn frag_needed_carries_the_mtu_and_verifies() {
        let quoted = [0x45u8; 28];
        let mut buf = [0u8; 56];
        let len = emit_error(
            &mut buf,
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(10, 0, 0, 9),
            IcmpError::FragmentationNeeded { mtu: 1400 },
            &quoted,
        );
        assert_eq!(len, 56);
        let ip = ipv4::Ipv4Packet::new_checked(&buf[..len]).unwrap();
        let icmp = ip.payload();
        assert_eq!((icmp[0], icmp[1], u16::from_be_bytes([icmp[6], icmp[7]])), (3, 4, 1400));
        assert_eq!(checksum::sum(icmp), 0xffff);
    }
}
