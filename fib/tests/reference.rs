//! The table against a naive reference (a list of prefixes, longest match by scanning) over
//! random tables and operation sequences: /0, host routes, deep nesting, removing a covering
//! prefix, re-adding, and lookups before and after publish.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use fib::{Address, Fib, Prefix};
use proptest::prelude::*;

struct Naive<A: Address>(BTreeMap<Prefix<A>, u32>);

impl<A: Address> Default for Naive<A> {
    fn default() -> Self {
        Naive(BTreeMap::new())
    }
}

impl<A: Address> Naive<A> {
    fn lookup(&self, addr: A) -> Option<u32> {
        self.0.iter().filter(|(p, _)| p.contains(addr)).max_by_key(|(p, _)| p.len()).map(|(_, &nh)| nh)
    }
}

#[derive(Debug, Clone)]
enum Op {
    Insert(u128, u8, u32),
    Remove(u128, u8),
    Publish,
}

/// Prefixes clustered around a few bases so that nesting, siblings and shared chunks are common.
fn op_strategy(bits: u8) -> impl Strategy<Value = Op> {
    let base = prop_oneof![Just(0u128), Just(u128::MAX), Just(0x0a00_0000u128 << (bits - 32)), any::<u128>()];
    let addr = (base, any::<u128>(), 0..=bits).prop_map(move |(base, noise, scatter)| {
        // Keep the top bits of `base`, randomise the rest below `scatter` bits of depth.
        let keep = if scatter == 0 { 0 } else { u128::MAX << (128 - scatter as u32) };
        let value = (base << (128 - bits as u32) & keep) | (noise & !keep);
        value >> (128 - bits as u32)
    });
    let len = prop_oneof![Just(0u8), Just(bits), Just(16), Just(17), Just(24), 0..=bits];
    prop_oneof![
        6 => (addr.clone(), len.clone(), 0u32..1000).prop_map(|(a, l, nh)| Op::Insert(a, l, nh)),
        3 => (addr, len).prop_map(|(a, l)| Op::Remove(a, l)),
        1 => Just(Op::Publish),
    ]
}

/// Prefixes crowded into one /18 (one chunk under one top-level slot), mostly /19../24, so that
/// the chunk's root has many runs and gets a root index, with longer prefixes below it and
/// covering prefixes above it coming and going (which rewrites the index's fallback answers).
fn dense_op_strategy(bits: u8) -> impl Strategy<Value = Op> {
    let base = (0x0a01_0000u128 >> 14) << (bits - 18); // 10.1.0.0/18, or its IPv6 namesake
    let addr = any::<u128>().prop_map(move |noise| base | (noise & ((1u128 << (bits - 18)) - 1)));
    let len = prop_oneof![6 => 19..=24u8, 2 => 25..=bits, 1 => 0..=18u8];
    prop_oneof![
        6 => (addr.clone(), len.clone(), 0u32..4).prop_map(|(a, l, nh)| Op::Insert(a, l, nh)),
        2 => (addr, len).prop_map(|(a, l)| Op::Remove(a, l)),
        1 => Just(Op::Publish),
    ]
}

fn run<A: Address>(ops: Vec<Op>, probes: Vec<u128>) -> Result<(), TestCaseError> {
    let mut fib = Fib::<A>::new();
    let reader = fib.reader();
    let mut staged = Naive::<A>::default();
    let mut published = Naive::<A>::default();
    let mut inserted = Vec::new();
    for op in ops {
        match op {
            Op::Insert(a, l, nh) => {
                let p = Prefix::new_masked(A::from_u128(a), l).unwrap();
                prop_assert_eq!(fib.insert(p, nh).unwrap(), staged.0.insert(p, nh));
                inserted.push(p);
            }
            Op::Remove(a, l) => {
                // Half the time remove something that is there (often a covering prefix).
                let p = if a % 2 == 0 && !inserted.is_empty() {
                    inserted[(a as usize / 2) % inserted.len()]
                } else {
                    Prefix::new_masked(A::from_u128(a), l).unwrap()
                };
                prop_assert_eq!(fib.remove(&p), staged.0.remove(&p));
            }
            Op::Publish => {
                fib.publish();
                published.0 = staged.0.clone();
            }
        }
        prop_assert_eq!(fib.len(), staged.0.len());
    }
    // Probe the staged-but-unpublished state first, then publish.
    let mut addrs: Vec<A> = probes.iter().map(|&a| A::from_u128(a)).collect();
    for p in staged.0.keys().chain(published.0.keys()) {
        addrs.push(p.addr());
        addrs.push(p.last());
    }
    for &a in &addrs {
        prop_assert_eq!(reader.lookup(a), published.lookup(a), "unpublished changes leaked at {}", a);
    }
    fib.publish();
    let mut out = vec![None; addrs.len()];
    reader.lookup_batch(&addrs, &mut out);
    for (&a, got) in addrs.iter().zip(out) {
        prop_assert_eq!(got, staged.lookup(a), "lookup {}", a);
    }
    for (p, nh) in &staged.0 {
        prop_assert_eq!(fib.get(p), Some(*nh));
    }
    let listed: Vec<_> = fib.iter().collect();
    let expected: Vec<_> = staged.0.iter().map(|(p, nh)| (*p, *nh)).collect();
    let mut listed_sorted = listed.clone();
    listed_sorted.sort();
    prop_assert_eq!(listed_sorted, expected);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn ipv4_matches_reference(ops in prop::collection::vec(op_strategy(32), 1..120),
                              probes in prop::collection::vec(any::<u32>().prop_map(u128::from), 50)) {
        run::<Ipv4Addr>(ops, probes)?;
    }

    #[test]
    fn ipv6_matches_reference(ops in prop::collection::vec(op_strategy(128), 1..120),
                              probes in prop::collection::vec(any::<u128>(), 50)) {
        run::<Ipv6Addr>(ops, probes)?;
    }

    #[test]
    fn crowded_chunks_match_reference(ops4 in prop::collection::vec(dense_op_strategy(32), 1..200),
                                      ops6 in prop::collection::vec(dense_op_strategy(128), 1..200),
                                      probes in prop::collection::vec(any::<u16>(), 50)) {
        let near = |bits: u8| -> Vec<u128> {
            probes.iter().map(|&p| ((0x0a01_0000u128 >> 14) << (bits - 18)) | (u128::from(p) << (bits - 32))).collect()
        };
        run::<Ipv4Addr>(ops4, near(32))?;
        run::<Ipv6Addr>(ops6, near(128))?;
    }
}

#[test]
fn default_route_host_routes_and_covering_removal() {
    let mut fib = Fib::<Ipv4Addr>::new();
    let p = |s: &str| s.parse::<Prefix<Ipv4Addr>>().unwrap();
    fib.insert(p("0.0.0.0/0"), 1).unwrap();
    fib.insert(p("10.0.0.0/8"), 2).unwrap();
    fib.insert(p("10.1.2.3/32"), 3).unwrap();
    fib.insert(p("10.1.2.0/24"), 4).unwrap();
    fib.publish();
    let r = fib.reader();
    let a = |s: &str| s.parse::<Ipv4Addr>().unwrap();
    assert_eq!(r.lookup(a("10.1.2.3")), Some(3));
    assert_eq!(r.lookup(a("10.1.2.4")), Some(4));
    assert_eq!(r.lookup(a("10.9.9.9")), Some(2));
    assert_eq!(r.lookup(a("192.0.2.1")), Some(1));
    // Remove the covering /8: the /24 and /32 stay, the rest falls to the default.
    assert_eq!(fib.remove(&p("10.0.0.0/8")), Some(2));
    fib.publish();
    assert_eq!(r.lookup(a("10.9.9.9")), Some(1));
    assert_eq!(r.lookup(a("10.1.2.4")), Some(4));
    // Remove everything below /16 and the default: no route at all.
    fib.remove(&p("10.1.2.3/32"));
    fib.remove(&p("10.1.2.0/24"));
    fib.remove(&p("0.0.0.0/0"));
    fib.publish();
    assert_eq!(r.lookup(a("10.1.2.3")), None);
    assert!(fib.is_empty());
    // Re-adding works and the emptied chunks were released.
    fib.insert(p("10.1.2.0/24"), 9).unwrap();
    fib.publish();
    assert_eq!(r.lookup(a("10.1.2.200")), Some(9));
}

#[test]
fn ipv6_host_routes_and_deep_chains() {
    let mut fib = Fib::<Ipv6Addr>::new();
    let p = |s: &str| s.parse::<Prefix<Ipv6Addr>>().unwrap();
    fib.insert(p("2001:db8::/32"), 1).unwrap();
    fib.insert(p("2001:db8:1:2:3:4:5:6/128"), 2).unwrap();
    fib.insert(p("2001:db8:1::/48"), 3).unwrap();
    fib.publish();
    let r = fib.reader();
    let a = |s: &str| s.parse::<Ipv6Addr>().unwrap();
    assert_eq!(r.lookup(a("2001:db8:1:2:3:4:5:6")), Some(2));
    assert_eq!(r.lookup(a("2001:db8:1:2:3:4:5:7")), Some(3));
    assert_eq!(r.lookup(a("2001:db8:2::1")), Some(1));
    // Changing the /32 changes the fallback deep below it.
    fib.insert(p("2001:db8::/32"), 5).unwrap();
    fib.remove(&p("2001:db8:1::/48"));
    fib.publish();
    assert_eq!(r.lookup(a("2001:db8:1:2:3:4:5:7")), Some(5));
    assert_eq!(r.lookup(a("2001:db8:1:2:3:4:5:6")), Some(2));
    fib.remove(&p("2001:db8:1:2:3:4:5:6/128"));
    fib.publish();
    assert_eq!(r.lookup(a("2001:db8:1:2:3:4:5:6")), Some(5));
}

#[test]
fn next_hops_beyond_the_reserved_range_are_refused() {
    let mut fib = Fib::<Ipv4Addr>::new();
    let p: Prefix<Ipv4Addr> = "10.0.0.0/8".parse().unwrap();
    assert!(fib.insert(p, fib::MAX_NEXT_HOP).is_ok());
    assert!(fib.insert(p, fib::MAX_NEXT_HOP + 1).is_err());
}
