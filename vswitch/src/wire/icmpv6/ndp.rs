//! Neighbor Discovery (RFC 4861): views of the Neighbor and Router Solicitations and
//! Advertisements a router reads, their options, and the Neighbor Advertisements and Solicitations
//! it writes.

use std::net::Ipv6Addr;

use super::super::ipv6::{self, PROTO_ICMPV6};
use super::super::{need, MacAddr, WireError};
use super::{
    field, Icmpv6Packet, HEADER_LEN, TYPE_NEIGHBOR_ADVERT, TYPE_NEIGHBOR_SOLICIT, TYPE_ROUTER_ADVERT,
    TYPE_ROUTER_SOLICIT,
};

/// Offsets within an NDP option (RFC 4861 §4.6).
mod opt {
    use std::ops::Range;
    pub const TYPE: usize = 0;
    pub const LEN: usize = 1;
    pub const LINK_ADDR: Range<usize> = 2..8;
    pub const PREFIX_LEN: usize = 2;
    pub const PREFIX_FLAGS: usize = 3;
    pub const VALID_LIFETIME: Range<usize> = 4..8;
    pub const PREFERRED_LIFETIME: Range<usize> = 8..12;
    pub const PREFIX: Range<usize> = 16..32;
    pub const MTU: Range<usize> = 4..8;
}

/// NDP messages arrive with this hop limit, or were forwarded and must be ignored (RFC 4861
/// §6.1, §7.1); the ones written here leave with it.
pub const NDP_HOP_LIMIT: u8 = 255;
/// The fixed parts, header included, of a Router Solicitation, Router Advertisement, Neighbor
/// Solicitation and Neighbor Advertisement; their options follow.
pub const ROUTER_SOLICIT_LEN: usize = 8;
pub const ROUTER_ADVERT_LEN: usize = 16;
pub const NEIGHBOR_SOLICIT_LEN: usize = 24;
pub const NEIGHBOR_ADVERT_LEN: usize = 24;

pub const NA_FLAG_ROUTER: u8 = 0x80;
pub const NA_FLAG_SOLICITED: u8 = 0x40;
pub const NA_FLAG_OVERRIDE: u8 = 0x20;
pub const RA_FLAG_MANAGED: u8 = 0x80;
pub const RA_FLAG_OTHER_CONFIG: u8 = 0x40;
pub const PREFIX_FLAG_ON_LINK: u8 = 0x80;
pub const PREFIX_FLAG_AUTONOMOUS: u8 = 0x40;

pub const OPTION_SOURCE_LINK_ADDR: u8 = 1;
pub const OPTION_TARGET_LINK_ADDR: u8 = 2;
pub const OPTION_PREFIX_INFO: u8 = 3;
pub const OPTION_REDIRECTED_HEADER: u8 = 4;
pub const OPTION_MTU: u8 = 5;
/// A link-layer address option for Ethernet (RFC 2464 §6), and the MTU option: 8 bytes.
const OPTION_SHORT_LEN: usize = 8;
const OPTION_PREFIX_INFO_LEN: usize = 32;

/// An NDP option (RFC 4861 §4.6, with RFC 2464's 8-byte Ethernet link-layer addresses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NdpOption<'a> {
    SourceLinkAddr(MacAddr),
    TargetLinkAddr(MacAddr),
    PrefixInfo(PrefixInfo),
    Mtu(u32),
    /// Any other option (Redirected Header, Nonce, RDNSS...): its bytes after type and length.
    Other {
        kind: u8,
        data: &'a [u8],
    },
}

/// The prefix information option of a Router Advertisement (RFC 4861 §4.6.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrefixInfo {
    /// At most 128.
    pub prefix_len: u8,
    pub on_link: bool,
    /// Usable for stateless address autoconfiguration (RFC 4862).
    pub autonomous: bool,
    /// Seconds; 0xffffffff is forever.
    pub valid_lifetime: u32,
    pub preferred_lifetime: u32,
    pub prefix: Ipv6Addr,
}

/// The options after an NDP message's fixed part, in order, validated whole when the message
/// was: the iterator never fails.
#[derive(Clone, Debug)]
pub struct NdpOptions<'a> {
    rest: &'a [u8],
}

impl<'a> NdpOptions<'a> {
    /// Every option must have a nonzero length (RFC 4861 §4.6: a message with one is discarded)
    /// and end within `bytes`; those read here must have their size: 8 bytes for a link-layer
    /// address or the MTU, 32 for prefix information, whose prefix length is at most 128.
    pub fn new_checked(bytes: &'a [u8]) -> Result<Self, WireError> {
        let mut rest = bytes;
        while !rest.is_empty() {
            let (_, len) = parse_option(rest)?;
            rest = &rest[len..];
        }
        Ok(NdpOptions { rest: bytes })
    }
}

impl<'a> Iterator for NdpOptions<'a> {
    type Item = NdpOption<'a>;

    fn next(&mut self) -> Option<NdpOption<'a>> {
        // Validated, so only the end of the options stops this.
        let (option, len) = parse_option(self.rest).ok()?;
        self.rest = &self.rest[len..];
        Some(option)
    }
}

/// The option `b` starts with, and its length in bytes.
fn parse_option(b: &[u8]) -> Result<(NdpOption<'_>, usize), WireError> {
    if b.len() < 2 {
        return Err(WireError::Malformed("NDP option runs past the end of the message"));
    }
    let len = b[opt::LEN] as usize * 8;
    if len == 0 {
        return Err(WireError::Malformed("NDP option of length 0"));
    }
    let o = b.get(..len).ok_or(WireError::Malformed("NDP option runs past the end of the message"))?;
    let word = |r: std::ops::Range<usize>| u32::from_be_bytes(o[r].try_into().expect("4 bytes"));
    let option = match o[opt::TYPE] {
        kind @ (OPTION_SOURCE_LINK_ADDR | OPTION_TARGET_LINK_ADDR) => {
            if len != OPTION_SHORT_LEN {
                return Err(WireError::Malformed("NDP link-layer address option is not 8 bytes"));
            }
            let mac = MacAddr(o[opt::LINK_ADDR].try_into().expect("6 bytes"));
            if kind == OPTION_SOURCE_LINK_ADDR {
                NdpOption::SourceLinkAddr(mac)
            } else {
                NdpOption::TargetLinkAddr(mac)
            }
        }
        OPTION_PREFIX_INFO => {
            if len != OPTION_PREFIX_INFO_LEN {
                return Err(WireError::Malformed("NDP prefix information option is not 32 bytes"));
            }
            if o[opt::PREFIX_LEN] > 128 {
                return Err(WireError::Malformed("NDP prefix longer than 128 bits"));
            }
            NdpOption::PrefixInfo(PrefixInfo {
                prefix_len: o[opt::PREFIX_LEN],
                on_link: o[opt::PREFIX_FLAGS] & PREFIX_FLAG_ON_LINK != 0,
                autonomous: o[opt::PREFIX_FLAGS] & PREFIX_FLAG_AUTONOMOUS != 0,
                valid_lifetime: word(opt::VALID_LIFETIME),
                preferred_lifetime: word(opt::PREFERRED_LIFETIME),
                prefix: Ipv6Addr::from(<[u8; 16]>::try_from(&o[opt::PREFIX]).expect("16 bytes")),
            })
        }
        OPTION_MTU => {
            if len != OPTION_SHORT_LEN {
                return Err(WireError::Malformed("NDP MTU option is not 8 bytes"));
            }
            NdpOption::Mtu(word(opt::MTU))
        }
        kind => NdpOption::Other { kind, data: &o[2..] },
    };
    Ok((option, len))
}

/// The checks every NDP message gets: its type, code 0, its fixed part, valid options.
fn check_ndp(b: &[u8], msg_type: u8, fixed_len: usize, not_it: &'static str) -> Result<(), WireError> {
    need(b, HEADER_LEN)?;
    if b[field::TYPE] != msg_type {
        return Err(WireError::Malformed(not_it));
    }
    if b[field::CODE] != 0 {
        return Err(WireError::Malformed("NDP message with a code other than 0"));
    }
    need(b, fixed_len)?;
    NdpOptions::new_checked(&b[fixed_len..])?;
    Ok(())
}

/// RFC 4861 §7.1.1, §7.1.2: a target is never a multicast address.
fn check_target(b: &[u8]) -> Result<(), WireError> {
    if b[field::TARGET.start] == 0xff {
        return Err(WireError::Malformed("NDP target is a multicast address"));
    }
    Ok(())
}

fn target(b: &[u8]) -> Ipv6Addr {
    Ipv6Addr::from(<[u8; 16]>::try_from(&b[field::TARGET]).expect("16 bytes"))
}

fn source_mac(options: NdpOptions<'_>) -> Option<MacAddr> {
    options.into_iter().find_map(|o| if let NdpOption::SourceLinkAddr(mac) = o { Some(mac) } else { None })
}

/// Neighbor Solicitation (RFC 4861 §4.3): who has the target? Asked by a host resolving an
/// address, or (from the unspecified address) checking that its own is not taken.
#[derive(Debug)]
pub struct NeighborSolicit<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> NeighborSolicit<T> {
    /// Validates type, code, length, options, and a target that is not multicast.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        check_ndp(b, TYPE_NEIGHBOR_SOLICIT, NEIGHBOR_SOLICIT_LEN, "ICMPv6 message is not a Neighbor Solicitation")?;
        check_target(b)?;
        Ok(NeighborSolicit { buffer })
    }

    pub fn target(&self) -> Ipv6Addr {
        target(self.buffer.as_ref())
    }

    pub fn options(&self) -> NdpOptions<'_> {
        NdpOptions { rest: &self.buffer.as_ref()[NEIGHBOR_SOLICIT_LEN..] }
    }

    /// The solicitor's MAC from its first source link-layer address option (none when it comes
    /// from the unspecified address).
    pub fn source_mac(&self) -> Option<MacAddr> {
        source_mac(self.options())
    }
}

/// Neighbor Advertisement (RFC 4861 §4.4): the target is at the target link-layer address.
#[derive(Debug)]
pub struct NeighborAdvert<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> NeighborAdvert<T> {
    /// Validates type, code, length, options, and a target that is not multicast.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        check_ndp(b, TYPE_NEIGHBOR_ADVERT, NEIGHBOR_ADVERT_LEN, "ICMPv6 message is not a Neighbor Advertisement")?;
        check_target(b)?;
        Ok(NeighborAdvert { buffer })
    }

    fn flag(&self, flag: u8) -> bool {
        self.buffer.as_ref()[field::NA_FLAGS] & flag != 0
    }

    /// The sender is a router.
    pub fn is_router(&self) -> bool {
        self.flag(NA_FLAG_ROUTER)
    }

    /// An answer to a solicitation (which confirms reachability).
    pub fn is_solicited(&self) -> bool {
        self.flag(NA_FLAG_SOLICITED)
    }

    /// The advertised address replaces a cached one.
    pub fn is_override(&self) -> bool {
        self.flag(NA_FLAG_OVERRIDE)
    }

    pub fn target(&self) -> Ipv6Addr {
        target(self.buffer.as_ref())
    }

    pub fn options(&self) -> NdpOptions<'_> {
        NdpOptions { rest: &self.buffer.as_ref()[NEIGHBOR_ADVERT_LEN..] }
    }

    /// The first target link-layer address option's MAC (an answer to a unicast solicitation may
    /// leave it out).
    pub fn target_mac(&self) -> Option<MacAddr> {
        self.options().find_map(|o| if let NdpOption::TargetLinkAddr(mac) = o { Some(mac) } else { None })
    }
}

/// Router Solicitation (RFC 4861 §4.1): a host asking for Router Advertisements now.
#[derive(Debug)]
pub struct RouterSolicit<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> RouterSolicit<T> {
    /// Validates type, code, length and options.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        check_ndp(b, TYPE_ROUTER_SOLICIT, ROUTER_SOLICIT_LEN, "ICMPv6 message is not a Router Solicitation")?;
        Ok(RouterSolicit { buffer })
    }

    pub fn options(&self) -> NdpOptions<'_> {
        NdpOptions { rest: &self.buffer.as_ref()[ROUTER_SOLICIT_LEN..] }
    }

    pub fn source_mac(&self) -> Option<MacAddr> {
        source_mac(self.options())
    }
}

/// Router Advertisement (RFC 4861 §4.2): a router's parameters for the link, and its prefixes.
#[derive(Debug)]
pub struct RouterAdvert<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> RouterAdvert<T> {
    /// Validates type, code, length and options.
    pub fn new_checked(buffer: T) -> Result<Self, WireError> {
        let b = buffer.as_ref();
        check_ndp(b, TYPE_ROUTER_ADVERT, ROUTER_ADVERT_LEN, "ICMPv6 message is not a Router Advertisement")?;
        Ok(RouterAdvert { buffer })
    }

    /// The hop limit hosts should use; 0 leaves it to them.
    pub fn cur_hop_limit(&self) -> u8 {
        self.buffer.as_ref()[field::RA_HOP_LIMIT]
    }

    /// Addresses come from DHCPv6.
    pub fn is_managed(&self) -> bool {
        self.buffer.as_ref()[field::RA_FLAGS] & RA_FLAG_MANAGED != 0
    }

    /// Other configuration comes from DHCPv6.
    pub fn is_other_config(&self) -> bool {
        self.buffer.as_ref()[field::RA_FLAGS] & RA_FLAG_OTHER_CONFIG != 0
    }

    /// Seconds this router serves as a default router; 0: not a default router.
    pub fn router_lifetime(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::RA_LIFETIME];
        u16::from_be_bytes([b[0], b[1]])
    }

    /// Milliseconds; 0 is unspecified.
    pub fn reachable_time(&self) -> u32 {
        u32::from_be_bytes(self.buffer.as_ref()[field::RA_REACHABLE].try_into().expect("4 bytes"))
    }

    /// Milliseconds; 0 is unspecified.
    pub fn retrans_timer(&self) -> u32 {
        u32::from_be_bytes(self.buffer.as_ref()[field::RA_RETRANS].try_into().expect("4 bytes"))
    }

    pub fn options(&self) -> NdpOptions<'_> {
        NdpOptions { rest: &self.buffer.as_ref()[ROUTER_ADVERT_LEN..] }
    }

    pub fn source_mac(&self) -> Option<MacAddr> {
        source_mac(self.options())
    }

    /// The first MTU option's.
    pub fn mtu(&self) -> Option<u32> {
        self.options().find_map(|o| if let NdpOption::Mtu(mtu) = o { Some(mtu) } else { None })
    }

    pub fn prefixes(&self) -> impl Iterator<Item = PrefixInfo> + '_ {
        self.options().filter_map(|o| if let NdpOption::PrefixInfo(p) = o { Some(p) } else { None })
    }
}

/// The IPv6 packet length of the Neighbor Advertisements written here: header, message, and a
/// target link-layer address option.
pub const NA_PACKET_LEN: usize = ipv6::HEADER_LEN + NEIGHBOR_ADVERT_LEN + OPTION_SHORT_LEN;

/// Writes an IPv6 packet holding a Neighbor Advertisement: `target` is at `mac` (in a target
/// link-layer address option), with `flags` (`NA_FLAG_*`), hop limit 255, checksum filled.
/// `buf` must hold [`NA_PACKET_LEN`] bytes; returns that length.
pub fn emit_neighbor_advert(
    buf: &mut [u8],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    target: Ipv6Addr,
    mac: MacAddr,
    flags: u8,
) -> usize {
    let (ip, icmp) = buf[..NA_PACKET_LEN].split_at_mut(ipv6::HEADER_LEN);
    icmp[field::TYPE] = TYPE_NEIGHBOR_ADVERT;
    icmp[field::CODE] = 0;
    icmp[field::REST].copy_from_slice(&[flags, 0, 0, 0]);
    icmp[field::TARGET].copy_from_slice(&target.octets());
    let option = &mut icmp[NEIGHBOR_ADVERT_LEN..];
    option[opt::TYPE] = OPTION_TARGET_LINK_ADDR;
    option[opt::LEN] = 1;
    option[opt::LINK_ADDR].copy_from_slice(&mac.0);
    Icmpv6Packet { buffer: &mut *icmp }.fill_checksum(src, dst);
    ipv6::emit_header(ip, src, dst, PROTO_ICMPV6, icmp.len(), NDP_HOP_LIMIT);
    NA_PACKET_LEN
}

/// Answers a Neighbor Solicitation from `solicitor` for `target`, an address of ours at `mac`
/// (RFC 4861 §7.2.4): from `target`, Override set, Router set when `router`; back to the
/// solicitor with Solicited set or, when it asked from the unspecified address (Duplicate
/// Address Detection: the address is taken), to all nodes without. The Ethernet destination is
/// then the solicitor's MAC, or [`ipv6::multicast_mac`] of all nodes. Returns
/// [`NA_PACKET_LEN`].
pub fn emit_neighbor_advert_reply(
    buf: &mut [u8],
    solicitor: Ipv6Addr,
    target: Ipv6Addr,
    mac: MacAddr,
    router: bool,
) -> usize {
    let router = if router { NA_FLAG_ROUTER } else { 0 };
    if solicitor.is_unspecified() {
        emit_neighbor_advert(buf, target, ipv6::ALL_NODES, target, mac, router | NA_FLAG_OVERRIDE)
    } else {
        emit_neighbor_advert(buf, target, solicitor, target, mac, router | NA_FLAG_SOLICITED | NA_FLAG_OVERRIDE)
    }
}

/// An unsolicited Neighbor Advertisement (RFC 4861 §7.2.6), IPv6's gratuitous ARP: `target` is
/// at `mac`, to all nodes, Override set, Router set when `router`. Returns [`NA_PACKET_LEN`].
pub fn emit_unsolicited_neighbor_advert(buf: &mut [u8], target: Ipv6Addr, mac: MacAddr, router: bool) -> usize {
    let router = if router { NA_FLAG_ROUTER } else { 0 };
    emit_neighbor_advert(buf, target, ipv6::ALL_NODES, target, mac, router | NA_FLAG_OVERRIDE)
}

/// The IPv6 packet length of the Neighbor Solicitations written here: header, message, and a
/// source link-layer address option.
pub const NS_PACKET_LEN: usize = ipv6::HEADER_LEN + NEIGHBOR_SOLICIT_LEN + OPTION_SHORT_LEN;

/// Writes an IPv6 packet holding a Neighbor Solicitation for `target` from `src` at `mac`, to
/// the target's solicited-node multicast address (RFC 4861 §7.2.2), hop limit 255, checksum
/// filled. Send it to [`ipv6::multicast_mac`] of [`ipv6::solicited_node`]`(target)`. `buf` must
/// hold [`NS_PACKET_LEN`] bytes; returns that length.
pub fn emit_neighbor_solicit(buf: &mut [u8], src: Ipv6Addr, target: Ipv6Addr, mac: MacAddr) -> usize {
    let dst = ipv6::solicited_node(target);
    let (ip, icmp) = buf[..NS_PACKET_LEN].split_at_mut(ipv6::HEADER_LEN);
    icmp[field::TYPE] = TYPE_NEIGHBOR_SOLICIT;
    icmp[field::CODE] = 0;
    icmp[field::REST].copy_from_slice(&[0; 4]);
    icmp[field::TARGET].copy_from_slice(&target.octets());
    let option = &mut icmp[NEIGHBOR_SOLICIT_LEN..];
    option[opt::TYPE] = OPTION_SOURCE_LINK_ADDR;
    option[opt::LEN] = 1;
    option[opt::LINK_ADDR].copy_from_slice(&mac.0);
    Icmpv6Packet { buffer: &mut *icmp }.fill_checksum(src, dst);
    ipv6::emit_header(ip, src, dst, PROTO_ICMPV6, icmp.len(), NDP_HOP_LIMIT);
    NS_PACKET_LEN
}

#[cfg(test)]
mod tests;
