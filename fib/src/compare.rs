//! Side-by-side adapters: our table and the best general-purpose Rust crates, behind one trait,
//! so the `fib bench` command, the criterion benches and the tests drive them identically.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::prefix::{Address, AnyPrefix, Prefix};
use crate::routes::Update;
use crate::Fib;

/// Routes split by family, each with a next hop: its position in its family's list.
#[derive(Debug, Default, Clone)]
pub struct RouteSet {
    pub v4: Vec<(Prefix<Ipv4Addr>, u32)>,
    pub v6: Vec<(Prefix<Ipv6Addr>, u32)>,
}

impl RouteSet {
    pub fn from_prefixes(prefixes: &[AnyPrefix]) -> RouteSet {
        let mut set = RouteSet::default();
        for p in prefixes {
            match *p {
                AnyPrefix::V4(p) => set.v4.push((p, set.v4.len() as u32)),
                AnyPrefix::V6(p) => set.v6.push((p, set.v6.len() as u32)),
            }
        }
        set
    }
}

/// A longest-prefix-match table under test.
pub trait LpmTable<A: Address> {
    const NAME: &'static str;
    fn build(routes: &[(Prefix<A>, u32)]) -> Self;
    /// Applies announcements (`Some(next_hop)`) and withdrawals (`None`); a table with a publish
    /// step publishes after every `publish_every` of them and at the end.
    fn apply(&mut self, updates: &[(Prefix<A>, Option<u32>)], publish_every: usize);
    /// Sums the next hops found for `addrs` (so the work cannot be optimised away).
    fn lookup_sum(&self, addrs: &[A]) -> u64;
    fn lookup(&self, addr: A) -> Option<u32>;
}

impl<A: Address> LpmTable<A> for Fib<A> {
    const NAME: &'static str = "ours";
    fn build(routes: &[(Prefix<A>, u32)]) -> Self {
        let mut fib = Fib::new();
        for &(p, nh) in routes {
            fib.insert(p, nh).expect("next hop in range");
        }
        fib.publish();
        fib
    }
    fn apply(&mut self, updates: &[(Prefix<A>, Option<u32>)], publish_every: usize) {
        for batch in updates.chunks(publish_every.max(1)) {
            for (p, nh) in batch {
                match nh {
                    Some(nh) => drop(self.insert(*p, *nh).expect("next hop in range")),
                    None => drop(Fib::remove(self, p)),
                }
            }
            self.publish();
        }
    }
    /// Batched, as a packet worker looks up a received batch.
    fn lookup_sum(&self, addrs: &[A]) -> u64 {
        let reader = self.reader();
        let view = reader.pin();
        let mut out = [None; 256];
        addrs
            .chunks(256)
            .map(|batch| {
                let out = &mut out[..batch.len()];
                view.lookup_batch(batch, out);
                out.iter().map(|nh| nh.map_or(0, u64::from)).sum::<u64>()
            })
            .sum()
    }
    fn lookup(&self, addr: A) -> Option<u32> {
        Fib::lookup(self, addr)
    }
}

/// Our table driven one lookup at a time (no batching), for an honest single-lookup figure.
#[derive(Debug)]
pub struct OneByOne<A: Address>(pub Fib<A>);

impl<A: Address> LpmTable<A> for OneByOne<A> {
    const NAME: &'static str = "ours_one_by_one";
    fn build(routes: &[(Prefix<A>, u32)]) -> Self {
        OneByOne(<Fib<A> as LpmTable<A>>::build(routes))
    }
    fn apply(&mut self, updates: &[(Prefix<A>, Option<u32>)], publish_every: usize) {
        self.0.apply(updates, publish_every)
    }
    fn lookup_sum(&self, addrs: &[A]) -> u64 {
        let reader = self.0.reader();
        let view = reader.pin();
        addrs.iter().map(|&a| view.lookup(a).map_or(0, u64::from)).sum()
    }
    fn lookup(&self, addr: A) -> Option<u32> {
        self.0.lookup(addr)
    }
}

/// Converts our prefixes to the `ipnet` types `prefix-trie` keys on.
pub trait ToIpnet: Address {
    type Net: prefix_trie::Prefix + Copy;
    fn net(p: &Prefix<Self>) -> Self::Net;
    fn host(addr: Self) -> Self::Net;
}

impl ToIpnet for Ipv4Addr {
    type Net = ipnet::Ipv4Net;
    fn net(p: &Prefix<Self>) -> Self::Net {
        ipnet::Ipv4Net::new(p.addr(), p.len()).expect("valid prefix")
    }
    fn host(addr: Self) -> Self::Net {
        ipnet::Ipv4Net::new(addr, 32).expect("host route")
    }
}

impl ToIpnet for Ipv6Addr {
    type Net = ipnet::Ipv6Net;
    fn net(p: &Prefix<Self>) -> Self::Net {
        ipnet::Ipv6Net::new(p.addr(), p.len()).expect("valid prefix")
    }
    fn host(addr: Self) -> Self::Net {
        ipnet::Ipv6Net::new(addr, 128).expect("host route")
    }
}

/// `prefix_trie::PrefixMap`: the fastest general Rust crate measured here.
#[derive(Debug)]
pub struct PrefixTrie<A: ToIpnet>(pub prefix_trie::PrefixMap<A::Net, u32>);

impl<A: ToIpnet> LpmTable<A> for PrefixTrie<A> {
    const NAME: &'static str = "prefix_trie";
    fn build(routes: &[(Prefix<A>, u32)]) -> Self {
        let mut map = prefix_trie::PrefixMap::new();
        for (p, nh) in routes {
            map.insert(A::net(p), *nh);
        }
        PrefixTrie(map)
    }
    fn apply(&mut self, updates: &[(Prefix<A>, Option<u32>)], _publish_every: usize) {
        for (p, nh) in updates {
            match nh {
                Some(nh) => drop(self.0.insert(A::net(p), *nh)),
                None => drop(self.0.remove(&A::net(p))),
            }
        }
    }
    fn lookup_sum(&self, addrs: &[A]) -> u64 {
        addrs.iter().map(|&a| self.0.get_lpm(&A::host(a)).map_or(0, |(_, &nh)| u64::from(nh))).sum()
    }
    fn lookup(&self, addr: A) -> Option<u32> {
        self.0.get_lpm(&A::host(addr)).map(|(_, &nh)| nh)
    }
}

/// `ip_network_table::IpNetworkTable` (a tree bitmap).
pub struct IpNetworkTable<A>(pub ip_network_table::IpNetworkTable<u32>, std::marker::PhantomData<A>);

impl<A> std::fmt::Debug for IpNetworkTable<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IpNetworkTable")
    }
}

fn ip_network<A: Address>(p: &Prefix<A>) -> ip_network::IpNetwork {
    let addr: IpAddr = p.addr().to_string().parse().expect("an address prints as one");
    ip_network::IpNetwork::new(addr, p.len()).expect("valid prefix")
}

impl<A: Address + Into<IpAddr>> LpmTable<A> for IpNetworkTable<A> {
    const NAME: &'static str = "ip_network_table";
    fn build(routes: &[(Prefix<A>, u32)]) -> Self {
        let mut table = ip_network_table::IpNetworkTable::new();
        for (p, nh) in routes {
            table.insert(ip_network(p), *nh);
        }
        IpNetworkTable(table, std::marker::PhantomData)
    }
    fn apply(&mut self, updates: &[(Prefix<A>, Option<u32>)], _publish_every: usize) {
        for (p, nh) in updates {
            match nh {
                Some(nh) => drop(self.0.insert(ip_network(p), *nh)),
                None => drop(self.0.remove(ip_network(p))),
            }
        }
    }
    fn lookup_sum(&self, addrs: &[A]) -> u64 {
        addrs.iter().map(|&a| self.0.longest_match(a.into()).map_or(0, |(_, &nh)| u64::from(nh))).sum()
    }
    fn lookup(&self, addr: A) -> Option<u32> {
        self.0.longest_match(addr.into()).map(|(_, &nh)| nh)
    }
}

/// Lookup workloads: addresses drawn uniformly, or from inside announced prefixes (each prefix
/// equally likely, a random host inside it).
pub fn uniform_addresses<A: Address>(n: usize, seed: u64) -> Vec<A> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..n).map(|_| A::from_u128(rng.gen::<u128>())).collect()
}

pub fn addresses_in_prefixes<A: Address>(routes: &[(Prefix<A>, u32)], n: usize, seed: u64) -> Vec<A> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    if routes.is_empty() {
        return Vec::new();
    }
    (0..n)
        .map(|_| {
            let (p, _) = routes[rng.gen_range(0..routes.len())];
            let host_bits = A::BITS - p.len();
            let host = if host_bits == 0 { 0 } else { rng.gen::<u128>() >> (128 - host_bits as u32) };
            A::from_u128(p.addr().to_u128() | host)
        })
        .collect()
}

/// Announcements (`Some(next_hop)`) and withdrawals (`None`) of one family, in order.
pub type UpdateTrace<A> = Vec<(Prefix<A>, Option<u32>)>;

/// Splits an update trace by family; an announcement's next hop is its line index, so that
/// re-announcements really change the table.
pub fn split_updates(updates: &[Update]) -> (UpdateTrace<Ipv4Addr>, UpdateTrace<Ipv6Addr>) {
    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    for (i, u) in updates.iter().enumerate() {
        let nh = (i as u32) % crate::MAX_NEXT_HOP;
        match *u {
            Update::Announce(AnyPrefix::V4(p)) => v4.push((p, Some(nh))),
            Update::Withdraw(AnyPrefix::V4(p)) => v4.push((p, None)),
            Update::Announce(AnyPrefix::V6(p)) => v6.push((p, Some(nh))),
            Update::Withdraw(AnyPrefix::V6(p)) => v6.push((p, None)),
        }
    }
    (v4, v6)
}
