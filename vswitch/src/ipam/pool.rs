//! The cluster's address pool: CIDRs of the VPC subnet minus what is reserved (nodes, the VPC
//! gateway, databases). Configured once for the cluster; every node reads the same list.
//!
//! An IPv6 pool is typically a /64: 2^64 addresses. Nothing here enumerates a pool into memory:
//! the pool is a short list of usable intervals (prefixes with the exclusions cut out), sizes
//! are sums of interval lengths, and candidates are computed one position at a time.

use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// An address family of the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    /// IPv4 first: the order of `AddressView::ips`.
    pub const ALL: [Family; 2] = [Family::Ipv4, Family::Ipv6];

    pub fn of(ip: &IpAddr) -> Family {
        if ip.is_ipv6() {
            Family::Ipv6
        } else {
            Family::Ipv4
        }
    }

    /// The `family` label of the metrics.
    pub fn name(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::Ipv4 => "IPv4",
            Family::Ipv6 => "IPv6",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    /// Inclusive intervals of usable addresses (exclusions already cut out), as integers (IPv4
    /// mapped into the low 32 bits), in configuration order.
    usable: Vec<Range>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    first: u128,
    last: u128,
    family: Family,
}

impl Range {
    fn len(&self) -> u128 {
        self.last - self.first + 1
    }

    fn at(&self, offset: u128) -> IpAddr {
        let n = self.first + offset;
        match self.family {
            Family::Ipv6 => IpAddr::V6(n.into()),
            Family::Ipv4 => IpAddr::V4((n as u32).into()),
        }
    }

    /// What is left of `self` once `cut` is taken out (zero, one or two ranges).
    fn minus(self, cut: Range) -> Vec<Range> {
        if cut.family != self.family || cut.last < self.first || self.last < cut.first {
            return vec![self];
        }
        let mut left = Vec::new();
        if cut.first > self.first {
            left.push(Range { last: cut.first - 1, ..self });
        }
        if cut.last < self.last {
            left.push(Range { first: cut.last + 1, ..self });
        }
        left
    }
}

fn to_int(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4) as u128,
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn range_of(net: &IpNet) -> Range {
    let family = if matches!(net, IpNet::V6(_)) { Family::Ipv6 } else { Family::Ipv4 };
    Range { first: to_int(net.network()), last: to_int(net.broadcast()), family }
}

/// What is wrong with a pool as configured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PoolError {
    #[error("pool prefix '{text}': {reason}")]
    BadPrefix { text: String, reason: ipnet::AddrParseError },
    #[error("pool prefix '{text}' has host bits set (did you mean {network}?)")]
    HostBits { text: String, network: IpNet },
    #[error("'{text}' is neither an address nor a prefix")]
    BadExclude { text: String },
    #[error("the pool is empty: give at least one prefix")]
    Empty,
    #[error("pool prefix '{0}' overlaps another one")]
    Overlap(PoolPrefix),
}

/// One prefix of the pool (`ipam.pools`): a network address and its length, checked when the
/// configuration is read. Written back as the text it was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PoolPrefix(IpNet);

impl PoolPrefix {
    pub fn net(&self) -> IpNet {
        self.0
    }
}

impl std::str::FromStr for PoolPrefix {
    type Err = PoolError;
    fn from_str(text: &str) -> Result<PoolPrefix, PoolError> {
        let net: IpNet = text.parse().map_err(|reason| PoolError::BadPrefix { text: text.into(), reason })?;
        if net.network() != net.addr() {
            return Err(PoolError::HostBits { text: text.into(), network: net.trunc() });
        }
        Ok(PoolPrefix(net))
    }
}

impl std::fmt::Display for PoolPrefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Never handed out (`ipam.exclude`): an address, or a prefix of any size. Kept as written, so
/// `10.10.0.5` is shown as such and not as `10.10.0.5/32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Excluded {
    Address(IpAddr),
    Prefix(IpNet),
}

impl Excluded {
    fn net(&self) -> IpNet {
        match *self {
            Excluded::Address(ip) => IpNet::from(ip),
            Excluded::Prefix(net) => net,
        }
    }
}

impl std::str::FromStr for Excluded {
    type Err = PoolError;
    fn from_str(text: &str) -> Result<Excluded, PoolError> {
        text.parse()
            .map(Excluded::Prefix)
            .or_else(|_| text.parse().map(Excluded::Address))
            .map_err(|_| PoolError::BadExclude { text: text.into() })
    }
}

impl std::fmt::Display for Excluded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Excluded::Address(ip) => ip.fmt(f),
            Excluded::Prefix(net) => net.fmt(f),
        }
    }
}

/// Serde reads and writes these as their text (`#[serde(try_from = "String", into = "String")]`).
macro_rules! serde_as_text {
    ($($t:ty),*) => {$(
        impl TryFrom<String> for $t {
            type Error = PoolError;
            fn try_from(text: String) -> Result<$t, PoolError> {
                text.parse()
            }
        }

        impl From<$t> for String {
            fn from(value: $t) -> String {
                value.to_string()
            }
        }
    )*};
}

serde_as_text!(PoolPrefix, Excluded);

impl Pool {
    /// `prefixes` are the pool; the first and last address of each IPv4 prefix shorter than /31
    /// (network and broadcast) and the subnet-router anycast address of each IPv6 prefix are
    /// never handed out, and neither is anything in `exclude`.
    pub fn new(prefixes: &[PoolPrefix], exclude: &[Excluded]) -> Result<Pool, PoolError> {
        if prefixes.is_empty() {
            return Err(PoolError::Empty);
        }
        let mut ranges: Vec<Range> = Vec::new();
        for prefix in prefixes {
            let mut range = range_of(&prefix.0);
            match prefix.0 {
                IpNet::V4(v4) if v4.prefix_len() < 31 => (range.first, range.last) = (range.first + 1, range.last - 1),
                IpNet::V6(v6) if v6.prefix_len() < 127 => range.first += 1,
                _ => {}
            }
            if ranges.iter().any(|r| r.family == range.family && r.first <= range.last && range.first <= r.last) {
                return Err(PoolError::Overlap(*prefix));
            }
            ranges.push(range);
        }
        for excluded in exclude {
            let cut = range_of(&excluded.net());
            ranges = ranges.into_iter().flat_map(|r| r.minus(cut)).collect();
        }
        Ok(Pool { usable: ranges })
    }

    /// [`Pool::new`] from text (the pools and exclusions an API view lists).
    pub fn parse(prefixes: &[String], exclude: &[String]) -> Result<Pool, PoolError> {
        let prefixes: Vec<PoolPrefix> = prefixes.iter().map(|p| p.parse()).collect::<Result<_, _>>()?;
        let exclude: Vec<Excluded> = exclude.iter().map(|e| e.parse()).collect::<Result<_, _>>()?;
        Pool::new(&prefixes, &exclude)
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let (n, family) = (to_int(ip), Family::of(&ip));
        self.usable.iter().any(|r| r.family == family && (r.first..=r.last).contains(&n))
    }

    /// The families the pool has usable addresses of, IPv4 first.
    pub fn families(&self) -> Vec<Family> {
        Family::ALL.into_iter().filter(|f| self.size(*f) > 0).collect()
    }

    /// How many addresses of the family may be handed out (exclusions applied).
    pub fn size(&self, family: Family) -> u128 {
        self.usable.iter().filter(|r| r.family == family).map(Range::len).sum()
    }

    /// Every usable address of the family, starting at position `start` (modulo the size) and
    /// wrapping around once: nodes start at random places so that they rarely race for the
    /// same address. Lazy, one address at a time: callers bound how far they go.
    pub fn candidates(&self, family: Family, start: u128) -> impl Iterator<Item = IpAddr> + '_ {
        let total = self.size(family);
        let start = if total == 0 { 0 } else { start % total };
        let nth = move |i: u128| {
            // i < total <= 2^128 - 1, and start < total: the sum cannot overflow past twice.
            let mut p = start.checked_add(i).map_or_else(|| i - (total - start), |s| s % total);
            for r in self.usable.iter().filter(|r| r.family == family) {
                if p < r.len() {
                    return r.at(p);
                }
                p -= r.len();
            }
            unreachable!("p < total")
        };
        (0..total).map(nth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn network_broadcast_and_exclusions_are_never_candidates() {
        let pool = Pool::parse(&s(&["10.0.0.0/29"]), &s(&["10.0.0.2", "10.0.0.4/31"])).unwrap();
        let all: Vec<String> = pool.candidates(Family::Ipv4, 0).map(|ip| ip.to_string()).collect();
        assert_eq!(all, ["10.0.0.1", "10.0.0.3", "10.0.0.6"]);
        assert!(pool.contains("10.0.0.6".parse().unwrap()));
        assert!(!pool.contains("10.0.0.7".parse().unwrap()), "broadcast");
        assert!(!pool.contains("10.0.0.5".parse().unwrap()), "excluded");
        let wrapped: Vec<String> = pool.candidates(Family::Ipv4, 2).map(|ip| ip.to_string()).collect();
        assert_eq!(
            wrapped,
            ["10.0.0.6", "10.0.0.1", "10.0.0.3"],
            "starts anywhere (positions count usable addresses) and wraps once"
        );
    }

    #[test]
    fn several_prefixes_and_both_families() {
        let pool = Pool::parse(&s(&["10.0.0.0/30", "10.0.1.0/30", "fd00::/126"]), &[]).unwrap();
        assert_eq!(pool.candidates(Family::Ipv4, 0).count(), 4);
        let v6: Vec<String> = pool.candidates(Family::Ipv6, 0).map(|ip| ip.to_string()).collect();
        assert_eq!(v6, ["fd00::1", "fd00::2", "fd00::3"]);
        let overlap = Pool::parse(&s(&["10.0.0.0/24", "10.0.0.128/25"]), &[]).unwrap_err();
        assert_eq!(overlap.to_string(), "pool prefix '10.0.0.128/25' overlaps another one");
        let host_bits = Pool::parse(&s(&["10.0.0.1/24"]), &[]).unwrap_err();
        assert_eq!(host_bits.to_string(), "pool prefix '10.0.0.1/24' has host bits set (did you mean 10.0.0.0/24?)");
        assert_eq!(Pool::parse(&[], &[]), Err(PoolError::Empty));
        assert_eq!(
            Pool::parse(&s(&["10.0.0.0/24"]), &s(&["nonsense"])),
            Err(PoolError::BadExclude { text: "nonsense".into() })
        );
    }

    #[test]
    fn ipv6_pools_are_sized_and_probed_without_enumerating_them() {
        let pool = Pool::parse(&s(&["10.0.0.0/24", "fd00::/64"]), &s(&["fd00::/80", "fd00::ffff:0:0:5"])).unwrap();
        assert_eq!(pool.families(), [Family::Ipv4, Family::Ipv6]);
        assert_eq!(pool.size(Family::Ipv4), 254);
        // 2^64, less the anycast address (inside the excluded /80 anyway), the /80 and one more.
        assert_eq!(pool.size(Family::Ipv6), (1u128 << 64) - (1 << 48) - 1);
        assert!(!pool.contains("fd00::1".parse().unwrap()), "in the excluded /80");
        assert!(!pool.contains("fd00::ffff:0:0:5".parse().unwrap()));
        assert!(pool.contains("fd00::1:0:0:0".parse().unwrap()));
        // The first candidate is the first address after the exclusion, found at once.
        let first = pool.candidates(Family::Ipv6, 0).next().unwrap();
        assert_eq!(first, "fd00::1:0:0:0".parse::<IpAddr>().unwrap());
        // Any start, even past the end, gives addresses of the pool.
        for start in [u128::MAX, 1 << 100, 12345] {
            let some: Vec<IpAddr> = pool.candidates(Family::Ipv6, start).take(3).collect();
            assert!(some.iter().all(|ip| pool.contains(*ip)), "{some:?}");
        }
        let tiny = Pool::parse(&s(&["fd00::/124"]), &s(&["fd00::/125"])).unwrap();
        let all: Vec<String> = tiny.candidates(Family::Ipv6, 2).map(|ip| ip.to_string()).collect();
        assert_eq!(all, ["fd00::a", "fd00::b", "fd00::c", "fd00::d", "fd00::e", "fd00::f", "fd00::8", "fd00::9"]);
        assert_eq!(Pool::parse(&s(&["10.0.0.0/24"]), &[]).unwrap().families(), [Family::Ipv4]);
    }
}
