//! ARP for IPv4 over Ethernet (RFC 826). Other hardware or protocol types are malformed here.

use std::net::Ipv4Addr;

use super::{need, MacAddr, WireError};

mod field {
    use std::ops::Range;
    pub const HTYPE: Range<usize> = 0..2;
    pub const PTYPE: Range<usize> = 2..4;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: Range<usize> = 6..8;
    pub const SHA: Range<usize> = 8..14;
    pub const SPA: Range<usize> = 14..18;
    pub const THA: Range<usize> = 18..24;
    pub const TPA: Range<usize> = 24..28;
}

pub const PACKET_LEN: usize = 28;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Operation {
    Request,
    Reply,
}

/// A view of an Ethernet/IPv4 ARP packet, validated by `new_checked`.
#[derive(Debug)]
pub struct ArpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        need(b, PACKET_LEN)?;
        if b[field::HTYPE] != [0, 1] || b[field::PTYPE] != [0x08, 0x00] || b[field::HLEN] != 6 || b[field::PLEN] != 4 {
            return Err(WireError::Malformed("ARP is not Ethernet/IPv4"));
        }
        if b[field::OPER] != [0, 1] && b[field::OPER] != [0, 2] {
            return Err(WireError::Malformed("ARP operation is neither request nor reply"));
        }
        Ok(ArpPacket { buffer })
    }

    pub fn operation(&self) -> Operation {
        if self.buffer.as_ref()[field::OPER] == [0, 1] {
            Operation::Request
        } else {
            Operation::Reply
        }
    }

    pub fn sender_mac(&self) -> MacAddr {
        MacAddr(self.buffer.as_ref()[field::SHA].try_into().expect("6 bytes"))
    }

    pub fn sender_ip(&self) -> Ipv4Addr {
        ip(&self.buffer.as_ref()[field::SPA])
    }

    pub fn target_mac(&self) -> MacAddr {
        MacAddr(self.buffer.as_ref()[field::THA].try_into().expect("6 bytes"))
    }

    pub fn target_ip(&self) -> Ipv4Addr {
        ip(&self.buffer.as_ref()[field::TPA])
    }
}

fn ip(b: &[u8]) -> Ipv4Addr {
    Ipv4Addr::new(b[0], b[1], b[2], b[3])
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ArpPacket<T> {
    /// Turns this request into the reply "`target_ip` is at `mac`", in place.
    pub fn make_reply(&mut self, mac: MacAddr) {
        let b = self.buffer.as_mut();
        let (asker_mac, asker_ip, wanted_ip): ([u8; 6], [u8; 4], [u8; 4]) = (
            b[field::SHA].try_into().expect("6"),
            b[field::SPA].try_into().expect("4"),
            b[field::TPA].try_into().expect("4"),
        );
        b[field::OPER].copy_from_slice(&[0, 2]);
        b[field::SHA].copy_from_slice(&mac.0);
        b[field::SPA].copy_from_slice(&wanted_ip);
        b[field::THA].copy_from_slice(&asker_mac);
        b[field::TPA].copy_from_slice(&asker_ip);
    }
}

/// Writes a whole ARP packet (used for requests and gratuitous announcements).
pub fn emit(buf: &mut [u8], op: Operation, sender: (MacAddr, Ipv4Addr), target: (MacAddr, Ipv4Addr)) {
    buf[field::HTYPE].copy_from_slice(&[0, 1]);
    buf[field::PTYPE].copy_from_slice(&[0x08, 0]);
    buf[field::HLEN] = 6;
    buf[field::PLEN] = 4;
    buf[field::OPER].copy_from_slice(&[0, if op == Operation::Request { 1 } else { 2 }]);
    buf[field::SHA].copy_from_slice(&sender.0 .0);
    buf[field::SPA].copy_from_slice(&sender.1.octets());
    buf[field::THA].copy_from_slice(&target.0 .0);
    buf[field::TPA].copy_from_slice(&target.1.octets());
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::wire::captured::{ARP_REPLY, ARP_REQUEST};

    fn payload(frame: &[u8; 42]) -> [u8; 28] {
        frame[14..].try_into().unwrap()
    }

    #[test]
    fn parses_and_answers_a_captured_request() {
        let mut bytes = payload(&ARP_REQUEST);
        let mut arp = ArpPacket::new_checked(&mut bytes[..]).unwrap();
        assert_eq!(arp.operation(), Operation::Request);
        assert_eq!(arp.sender_ip(), Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(arp.target_ip(), Ipv4Addr::new(10, 0, 0, 2));
        let gw: MacAddr = "02:00:00:00:00:01".parse().unwrap();
        arp.make_reply(gw);
        assert_eq!(arp.operation(), Operation::Reply);
        assert_eq!((arp.sender_mac(), arp.sender_ip()), (gw, Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(arp.target_mac().to_string(), "02:42:ac:11:00:02");
        assert_eq!(arp.target_ip(), Ipv4Addr::new(10, 0, 0, 1));
        // The captured reply parses to the same fields a real host sent.
        let reply_bytes = payload(&ARP_REPLY);
        let reply = ArpPacket::new_checked(&reply_bytes[..]).unwrap();
        assert_eq!((reply.operation(), reply.sender_ip()), (Operation::Reply, Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(reply.sender_mac().to_string(), "02:42:ac:11:00:03");
    }

    #[test]
    fn refuses_non_ipv4_and_bad_operations() {
        let mut bad = payload(&ARP_REQUEST);
        bad[2] = 0x86; // IPv6 protocol type
        assert!(ArpPacket::new_checked(&bad[..]).is_err());
        let mut bad = payload(&ARP_REQUEST);
        bad[7] = 9;
        assert!(ArpPacket::new_checked(&bad[..]).is_err());
        assert!(ArpPacket::new_checked(&payload(&ARP_REQUEST)[..27]).is_err());
    }
}
