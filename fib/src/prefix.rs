//! IP prefixes and the address families the table is generic over.
//!
//! A [`Prefix`] is always canonical: the bits beyond its length are zero. [`Prefix::new`] refuses
//! an address with host bits set (`10.1.2.3/8` is almost always a typo in a route), while
//! [`Prefix::new_masked`] clears them for callers that mean "the network containing this address".

use std::fmt;
use std::hash::Hash;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Why a prefix could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PrefixError {
    #[error("prefix length {len} is longer than {max} bits")]
    LengthTooLong { len: u8, max: u8 },
    #[error("{addr}/{len} has host bits set (did you mean {masked}?)")]
    HostBitsSet { addr: String, len: u8, masked: String },
    #[error("'{0}' is not an address/length prefix")]
    Syntax(String),
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for std::net::Ipv4Addr {}
    impl Sealed for std::net::Ipv6Addr {}
}

/// An address family: [`Ipv4Addr`] or [`Ipv6Addr`].
///
/// The table splits an address into 18-bit groups, most significant first: group 0 indexes the
/// direct top-level array, each later group one chunk level. A group past the end of the address
/// is zero-filled on the right (IPv4's second group has 14 real bits, IPv6's last has 2).
pub trait Address:
    sealed::Sealed + Copy + Eq + Ord + Hash + fmt::Debug + fmt::Display + FromStr + Send + Sync + 'static
{
    /// Address width in bits.
    const BITS: u8;
    /// The address as an integer (right-aligned in the u128).
    fn to_u128(self) -> u128;
    /// The inverse of [`Address::to_u128`]; bits beyond [`Address::BITS`] are ignored.
    fn from_u128(bits: u128) -> Self;
    /// The 18-bit group number `level` (0 = most significant).
    fn group(self, level: usize) -> usize;
}

impl Address for Ipv4Addr {
    const BITS: u8 = 32;
    #[inline]
    fn to_u128(self) -> u128 {
        u32::from(self) as u128
    }
    #[inline]
    fn from_u128(bits: u128) -> Self {
        Ipv4Addr::from(bits as u32)
    }
    #[inline(always)]
    fn group(self, level: usize) -> usize {
        let bits = u32::from(self);
        // Only two groups: bits 0..18, then bits 18..32 left-aligned.
        if level == 0 {
            (bits >> 14) as usize
        } else {
            ((bits & 0x3fff) << 4) as usize
        }
    }
}

impl Address for Ipv6Addr {
    const BITS: u8 = 128;
    #[inline]
    fn to_u128(self) -> u128 {
        u128::from(self)
    }
    #[inline]
    fn from_u128(bits: u128) -> Self {
        Ipv6Addr::from(bits)
    }
    #[inline(always)]
    fn group(self, level: usize) -> usize {
        ((u128::from(self) << (GROUP_BITS * level as u32)) >> (128 - GROUP_BITS)) as usize
    }
}

/// Width of one address group: the top-level index and each chunk's key.
pub(crate) const GROUP_BITS: u32 = 18;

/// Mask keeping the top `len` bits of a `bits`-wide value (right-aligned in a u128).
#[inline]
pub(crate) fn net_mask(bits: u8, len: u8) -> u128 {
    let width_mask = if bits == 128 { u128::MAX } else { (1u128 << bits) - 1 };
    if len == 0 {
        0
    } else {
        (u128::MAX << (bits - len)) & width_mask
    }
}

/// A network prefix: an address and a length, with no host bits set.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix<A: Address> {
    addr: A,
    len: u8,
}

/// An IPv4 prefix such as `10.1.0.0/16`.
pub type Ipv4Prefix = Prefix<Ipv4Addr>;
/// An IPv6 prefix such as `2001:db8::/32`.
pub type Ipv6Prefix = Prefix<Ipv6Addr>;

impl<A: Address> Prefix<A> {
    /// A prefix from its network address; host bits set is an error.
    pub fn new(addr: A, len: u8) -> Result<Self, PrefixError> {
        let masked = Self::new_masked(addr, len)?;
        if masked.addr != addr {
            return Err(PrefixError::HostBitsSet { addr: addr.to_string(), len, masked: masked.to_string() });
        }
        Ok(masked)
    }

    /// The prefix of length `len` containing `addr` (host bits cleared).
    pub fn new_masked(addr: A, len: u8) -> Result<Self, PrefixError> {
        if len > A::BITS {
            return Err(PrefixError::LengthTooLong { len, max: A::BITS });
        }
        let bits = addr.to_u128() & net_mask(A::BITS, len);
        Ok(Prefix { addr: A::from_u128(bits), len })
    }

    /// The host route for one address (/32 or /128).
    pub fn host(addr: A) -> Self {
        Prefix { addr, len: A::BITS }
    }

    pub fn addr(&self) -> A {
        self.addr
    }

    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u8 {
        self.len
    }

    /// The highest address in the prefix (every host bit set).
    pub fn last(&self) -> A {
        A::from_u128(self.addr.to_u128() | (net_mask(A::BITS, A::BITS) & !net_mask(A::BITS, self.len)))
    }

    /// Does this prefix contain `addr`?
    pub fn contains(&self, addr: A) -> bool {
        addr.to_u128() & net_mask(A::BITS, self.len) == self.addr.to_u128()
    }

    /// Does this prefix contain all of `other`?
    pub fn covers(&self, other: &Prefix<A>) -> bool {
        self.len <= other.len && self.contains(other.addr)
    }
}

impl<A: Address> fmt::Display for Prefix<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl<A: Address> fmt::Debug for Prefix<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl<A: Address> FromStr for Prefix<A> {
    type Err = PrefixError;

    /// Parses `ADDR/LEN` strictly (host bits set is an error); a bare address is a host route.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || PrefixError::Syntax(s.to_string());
        match s.split_once('/') {
            Some((addr, len)) => {
                let addr: A = addr.parse().map_err(|_| syntax())?;
                let len: u8 = len.parse().map_err(|_| syntax())?;
                Prefix::new(addr, len)
            }
            None => Ok(Prefix::host(s.parse().map_err(|_| syntax())?)),
        }
    }
}

/// A prefix of either family, as found in route files that mix them.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub enum AnyPrefix {
    V4(Ipv4Prefix),
    V6(Ipv6Prefix),
}

impl FromStr for AnyPrefix {
    type Err = PrefixError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains(':') {
            s.parse().map(AnyPrefix::V6)
        } else {
            s.parse().map(AnyPrefix::V4)
        }
    }
}

impl fmt::Display for AnyPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AnyPrefix::V4(p) => p.fmt(f),
            AnyPrefix::V6(p) => p.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_canonical_forms() {
        let p: Ipv4Prefix = "10.1.0.0/16".parse().unwrap();
        assert_eq!(p.to_string(), "10.1.0.0/16");
        let p: Ipv6Prefix = "2001:db8:0::/32".parse().unwrap();
        assert_eq!(p.to_string(), "2001:db8::/32");
        let p: Ipv4Prefix = "0.0.0.0/0".parse().unwrap();
        assert_eq!(p.len(), 0);
        let p: Ipv4Prefix = "192.0.2.7".parse().unwrap();
        assert_eq!(p.len(), 32);
    }

    #[test]
    fn host_bits_are_an_error_naming_the_intended_prefix() {
        let err = "10.1.2.3/8".parse::<Ipv4Prefix>().unwrap_err();
        assert_eq!(err.to_string(), "10.1.2.3/8 has host bits set (did you mean 10.0.0.0/8?)");
        let masked = Ipv4Prefix::new_masked("10.1.2.3".parse().unwrap(), 8).unwrap();
        assert_eq!(masked.to_string(), "10.0.0.0/8");
    }

    #[test]
    fn rejects_bad_lengths_and_syntax() {
        assert!(matches!("10.0.0.0/33".parse::<Ipv4Prefix>(), Err(PrefixError::LengthTooLong { .. })));
        assert!(matches!("::/129".parse::<Ipv6Prefix>(), Err(PrefixError::LengthTooLong { .. })));
        assert!(matches!("10.0.0/8".parse::<Ipv4Prefix>(), Err(PrefixError::Syntax(_))));
        assert!(matches!("10.0.0.0/x".parse::<Ipv4Prefix>(), Err(PrefixError::Syntax(_))));
    }

    #[test]
    fn containment() {
        let p: Ipv4Prefix = "10.1.0.0/16".parse().unwrap();
        assert!(p.contains("10.1.255.1".parse().unwrap()));
        assert!(!p.contains("10.2.0.1".parse().unwrap()));
        let q: Ipv4Prefix = "10.1.2.0/24".parse().unwrap();
        assert!(p.covers(&q) && !q.covers(&p));
        let all: Ipv6Prefix = "::/0".parse().unwrap();
        assert!(all.contains("2001:db8::1".parse().unwrap()));
        assert_eq!(p.last(), "10.1.255.255".parse::<Ipv4Addr>().unwrap());
        assert_eq!(all.last(), Ipv6Addr::from(u128::MAX));
        assert_eq!(Prefix::host(Ipv4Addr::new(10, 0, 0, 1)).last(), Ipv4Addr::new(10, 0, 0, 1));
    }

    #[test]
    fn groups_split_most_significant_first() {
        let a: Ipv4Addr = "10.1.2.3".parse().unwrap();
        assert_eq!(a.group(0), 0x0a01_0203 >> 14);
        assert_eq!(a.group(1), (0x0203 & 0x3fff) << 4);
        let b: Ipv6Addr = "2001:db8:1:2:3:4:5:7".parse().unwrap();
        assert_eq!(b.group(0), 0x2001 << 2);
        // Group 7 holds the last two bits, left-aligned in 18.
        assert_eq!(b.group(7), 0b11 << 16);
    }
}
