//! The cluster's address pool: CIDRs of the VPC subnet minus what is reserved (nodes, the VPC
//! gateway, databases). Configured once for the cluster; every node reads the same list.

use std::net::IpAddr;

use ipnet::IpNet;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    /// Inclusive ranges of usable addresses, as integers (IPv4 mapped into the low 32 bits).
    ranges: Vec<Range>,
    excluded: Vec<IpNet>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    first: u128,
    last: u128,
    v6: bool,
}

impl Range {
    fn len(&self) -> u128 {
        self.last - self.first + 1
    }

    fn at(&self, offset: u128) -> IpAddr {
        let n = self.first + offset;
        if self.v6 {
            IpAddr::V6(n.into())
        } else {
            IpAddr::V4((n as u32).into())
        }
    }
}

fn to_int(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4) as u128,
        IpAddr::V6(v6) => u128::from(v6),
    }
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
        let mut ranges = Vec::new();
        for cidr in cidrs {
            let net: IpNet = cidr.parse().map_err(|e| format!("pool prefix '{cidr}': {e}"))?;
            if net.network() != net.addr() {
                return Err(format!("pool prefix '{cidr}' has host bits set (did you mean {}?)", net.trunc()));
            }
            let (mut first, mut last) = (to_int(net.network()), to_int(net.broadcast()));
            match net {
                IpNet::V4(v4) if v4.prefix_len() < 31 => (first, last) = (first + 1, last - 1),
                IpNet::V6(v6) if v6.prefix_len() < 127 => first += 1,
                _ => {}
            }
            let v6 = matches!(net, IpNet::V6(_));
            if ranges.iter().any(|r: &Range| r.v6 == v6 && r.first <= last && first <= r.last) {
                return Err(format!("pool prefix '{cidr}' overlaps another one"));
            }
            ranges.push(Range { first, last, v6 });
        }
        let excluded = exclude.iter().map(|e| parse_net(e)).collect::<Result<Vec<_>, _>>()?;
        Ok(Pool { ranges, excluded })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let n = to_int(ip);
        self.ranges.iter().any(|r| r.v6 == ip.is_ipv6() && (r.first..=r.last).contains(&n))
            && !self.excluded.iter().any(|e| e.contains(&ip))
    }

    /// Every usable address of the family, starting at position `start` (modulo the size) and
    /// wrapping around once: nodes start at random places so that they rarely race for the
    /// same address.
    pub fn candidates(&self, v6: bool, start: u128) -> impl Iterator<Item = IpAddr> + '_ {
        let ranges: Vec<Range> = self.ranges.iter().copied().filter(|r| r.v6 == v6).collect();
        let total: u128 = ranges.iter().map(Range::len).sum();
        let start = if total == 0 { 0 } else { start % total };
        // The position in the concatenated ranges, from `start` on, wrapping (no collection).
        let nth = move |i: u128| {
            let mut p = (start + i) % total;
            for r in &ranges {
                if p < r.len() {
                    return r.at(p);
                }
                p -= r.len();
            }
            unreachable!("p < total")
        };
        (0..total).map(nth).filter(move |ip| !self.excluded.iter().any(|e| e.contains(ip)))
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
        let all: Vec<String> = pool.candidates(false, 0).map(|ip| ip.to_string()).collect();
        assert_eq!(all, ["10.0.0.1", "10.0.0.3", "10.0.0.6"]);
        assert!(pool.contains("10.0.0.6".parse().unwrap()));
        assert!(!pool.contains("10.0.0.7".parse().unwrap()), "broadcast");
        assert!(!pool.contains("10.0.0.5".parse().unwrap()), "excluded");
        let wrapped: Vec<String> = pool.candidates(false, 4).map(|ip| ip.to_string()).collect();
        assert_eq!(wrapped, ["10.0.0.6", "10.0.0.1", "10.0.0.3"], "starts anywhere and wraps once");
    }

    #[test]
    fn several_prefixes_and_both_families() {
        let pool = Pool::parse(&s(&["10.0.0.0/30", "10.0.1.0/30", "fd00::/126"]), &[]).unwrap();
        assert_eq!(pool.candidates(false, 0).count(), 4);
        let v6: Vec<String> = pool.candidates(true, 0).map(|ip| ip.to_string()).collect();
        assert_eq!(v6, ["fd00::1", "fd00::2", "fd00::3"]);
        assert!(Pool::parse(&s(&["10.0.0.0/24", "10.0.0.128/25"]), &[]).unwrap_err().contains("overlaps"));
        assert!(Pool::parse(&s(&["10.0.0.1/24"]), &[]).unwrap_err().contains("host bits"));
        assert!(Pool::parse(&[], &[]).is_err());
        assert!(Pool::parse(&s(&["10.0.0.0/24"]), &s(&["nonsense"])).is_err());
    }
}
