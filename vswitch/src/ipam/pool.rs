//! The cluster's address pool: CIDRs of the VPC subnet minus what is reserved (nodes, the VPC
//! gateway, databases). Configured once for the cluster; every node reads the same list.
//!
//! An IPv6 pool is typically a /64: 2^64 addresses. Nothing here enumerates a pool into memory:
//! the pool is a short list of usable intervals (prefixes with the exclusions cut out), sizes
//! are sums of interval lengths, and candidates are computed one position at a time.

use std::net::IpAddr;

use ipnet::IpNet;

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

/// An address or a prefix: `10.10.0.5` means `10.10.0.5/32`.
fn parse_net(text: &str) -> Result<IpNet, String> {
    text.parse::<IpNet>()
        .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| format!("'{text}' is neither an address nor a prefix"))
}

impl Pool {
    /// `cidrs` are the pool; the first and last address of each IPv4 prefix shorter than /31
    /// (network and broadcast) and the subnet-router anycast address of each IPv6 prefix are
    /// never handed out, and neither is anything in `exclude` (addresses or prefixes).
    pub fn parse(cidrs: &[String], exclude: &[String]) -> Result<Pool, String> {
        if cidrs.is_empty() {
            return Err("the pool is empty: give at least one prefix".into());
        }
        let mut ranges: Vec<Range> = Vec::new();
        for cidr in cidrs {
            let net: IpNet = cidr.parse().map_err(|e| format!("pool prefix '{cidr}': {e}"))?;
            if net.network() != net.addr() {
                return Err(format!("pool prefix '{cidr}' has host bits set (did you mean {}?)", net.trunc()));
            }
            let mut range = range_of(&net);
            match net {
                IpNet::V4(v4) if v4.prefix_len() < 31 => (range.first, range.last) = (range.first + 1, range.last - 1),
                IpNet::V6(v6) if v6.prefix_len() < 127 => range.first += 1,
                _ => {}
            }
            if ranges.iter().any(|r| r.family == range.family && r.first <= range.last && range.first <= r.last) {
                return Err(format!("pool prefix '{cidr}' overlaps another one"));
            }
            ranges.push(range);
        }
        for text in exclude {
            let cut = range_of(&parse_net(text)?);
            ranges = ranges.into_iter().flat_map(|r| r.minus(cut)).collect();
        }
        Ok(Pool { usable: ranges })
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
        assert!(Pool::parse(&s(&["10.0.0.0/24", "10.0.0.128/25"]), &[]).unwrap_err().contains("overlaps"));
        assert!(Pool::parse(&s(&["10.0.0.1/24"]), &[]).unwrap_err().contains("host bits"));
        assert!(Pool::parse(&[], &[]).is_err());
        assert!(Pool::parse(&s(&["10.0.0.0/24"]), &s(&["nonsense"])).is_err());
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
