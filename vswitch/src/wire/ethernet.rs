//! Ethernet II frames, with the 802.1Q tag recognised (so it can be refused by name).

use super::{need, WireError};

pub mod field {
    use std::ops::Range;
    pub const DST: Range<usize> = 0..6;
    pub const SRC: Range<usize> = 6..12;
    pub const ETHERTYPE: Range<usize> = 12..14;
}

pub const HEADER_LEN: usize = 14;

/// MAC addresses are a value type shared with the control API.
pub use vswitch_api::MacAddr;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum EtherType {
    Ipv4,
    Arp,
    Ipv6,
    Vlan,
    Other(u16),
}

impl From<u16> for EtherType {
    fn from(v: u16) -> Self {
        match v {
            0x0800 => EtherType::Ipv4,
            0x0806 => EtherType::Arp,
            0x86dd => EtherType::Ipv6,
            0x8100 | 0x88a8 => EtherType::Vlan,
            other => EtherType::Other(other),
        }
    }
}

impl From<EtherType> for u16 {
    fn from(t: EtherType) -> u16 {
        match t {
            EtherType::Ipv4 => 0x0800,
            EtherType::Arp => 0x0806,
            EtherType::Ipv6 => 0x86dd,
            EtherType::Vlan => 0x8100,
            EtherType::Other(v) => v,
        }
    }
}

/// A view of an Ethernet frame; at least [`HEADER_LEN`] bytes.
#[derive(Debug)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        need(buffer.as_ref(), HEADER_LEN)?;
        Ok(EthernetFrame { buffer })
    }

    pub fn dst(&self) -> MacAddr {
        MacAddr(self.buffer.as_ref()[field::DST].try_into().expect("6 bytes"))
    }

    pub fn src(&self) -> MacAddr {
        MacAddr(self.buffer.as_ref()[field::SRC].try_into().expect("6 bytes"))
    }

    pub fn ethertype(&self) -> EtherType {
        self.ethertype_raw().into()
    }

    /// The EtherType field as on the wire.
    pub fn ethertype_raw(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::ETHERTYPE];
        u16::from_be_bytes([b[0], b[1]])
    }

    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    pub fn set_dst(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&mac.0);
    }

    pub fn set_src(&mut self, mac: MacAddr) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&mac.0);
    }

    pub fn set_ethertype(&mut self, t: EtherType) {
        self.buffer.as_mut()[field::ETHERTYPE].copy_from_slice(&u16::from(t).to_be_bytes());
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[HEADER_LEN..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::wire::captured::{ARP_REQUEST, ICMP_ECHO_REQUEST};

    #[test]
    fn parses_captured_header() {
        let f = EthernetFrame::new_checked(&ARP_REQUEST[..]).unwrap();
        assert_eq!(f.dst(), MacAddr::BROADCAST);
        assert_eq!(f.src().to_string(), "02:42:ac:11:00:02");
        assert_eq!(f.ethertype(), EtherType::Arp);
        assert_eq!(f.payload().len(), 28);
        let f = EthernetFrame::new_checked(&ICMP_ECHO_REQUEST[..]).unwrap();
        assert_eq!((f.dst().to_string(), f.ethertype()), ("02:42:ac:11:00:03".to_string(), EtherType::Ipv4));
    }

    #[test]
    fn truncated_frames_are_refused() {
        assert_eq!(
            EthernetFrame::new_checked(&ARP_REQUEST[..13]).unwrap_err(),
            WireError::Truncated { need: 14, have: 13 }
        );
    }

    #[test]
    fn mac_round_trips_and_rejects_junk() {
        let m: MacAddr = "02:00:0a:0a:00:01".parse().unwrap();
        assert_eq!(m.to_string(), "02:00:0a:0a:00:01");
        assert!("02:00:0a:0a:00".parse::<MacAddr>().is_err());
        assert!("02:00:0a:0a:00:01:02".parse::<MacAddr>().is_err());
        assert!("zz:00:0a:0a:00:01".parse::<MacAddr>().is_err());
        assert!(MacAddr::BROADCAST.is_multicast() && !m.is_multicast());
    }
}
