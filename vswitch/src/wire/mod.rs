//! Zero-copy views of the headers the switch reads and writes.
//!
//! Each view wraps a byte slice and is made by `new_checked`, which validates lengths once, so
//! the accessors never fail or panic. Field offsets live in a private `field` module per header.
//! Parsing knows nothing of ports or packets' fates; see `pipeline` for that.

pub mod arp;
pub mod captured;
pub mod checksum;
pub mod ethernet;
pub mod fragment;
pub mod icmp;
pub mod icmpv6;
pub mod ipv4;
pub mod ipv6;
pub mod ipv6_chain;
pub mod udp_gso;
pub mod vnet;

pub use arp::ArpPacket;
pub use ethernet::{EtherType, EthernetFrame, MacAddr};
pub use icmpv6::Icmpv6Packet;
pub use ipv4::Ipv4Packet;
pub use ipv6::Ipv6Packet;
pub use vnet::VnetHeader;

/// Why bytes could not be viewed as a header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("truncated: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    #[error("malformed: {0}")]
    Malformed(&'static str),
}

#[inline]
pub(crate) fn need(buf: &[u8], len: usize) -> Result<(), WireError> {
    if buf.len() < len {
        Err(WireError::Truncated { need: len, have: buf.len() })
    } else {
        Ok(())
    }
}
