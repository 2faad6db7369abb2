//! The real RIPE RIS tables (peer AS3333, 2026-05-11, in `fib/testdata/routes`): ours against prefix-trie on a million
//! random addresses per family, then again after applying the day's update trace.

use std::net::{Ipv4Addr, Ipv6Addr};

use fib::compare::{self, LpmTable, PrefixTrie, RouteSet, ToIpnet};
use fib::routes;
use fib::testdata::RisFile;
use fib::{Fib, Prefix};

fn compare_family<A: ToIpnet>(fib: &Fib<A>, trie: &PrefixTrie<A>, routes: &[(Prefix<A>, u32)], what: &str) {
    let mut addrs = compare::uniform_addresses::<A>(500_000, 11);
    addrs.extend(compare::addresses_in_prefixes(routes, 500_000, 12));
    let mut ours = vec![None; addrs.len()];
    fib.reader().lookup_batch(&addrs, &mut ours);
    let mut checked_hits = 0;
    for (addr, got) in addrs.iter().zip(&ours) {
        let want = trie.lookup(*addr);
        assert_eq!(*got, want, "{what}: lookup {addr}");
        assert_eq!(fib.lookup(*addr), want, "{what}: single lookup {addr}");
        checked_hits += want.is_some() as usize;
    }
    assert!(checked_hits > 500_000, "{what}: too few addresses matched a route ({checked_hits})");
}

fn run<A: ToIpnet>(table: &[(Prefix<A>, u32)], updates: &[(Prefix<A>, Option<u32>)], what: &str) {
    let mut fib = <Fib<A> as LpmTable<A>>::build(table);
    let mut trie = PrefixTrie::<A>::build(table);
    assert_eq!(fib.len(), table.len());
    compare_family(&fib, &trie, table, what);

    // Published in batches of 1000, so many publishes interleave with the trace.
    fib.apply(updates, 1000);
    trie.apply(updates, 1);
    assert_eq!(fib.len(), trie.0.len(), "{what}: route count after updates");
    let after: Vec<_> = fib.iter().collect();
    compare_family(&fib, &trie, &after, &format!("{what} after {} updates", updates.len()));
}

#[test]
fn ipv4_full_table_matches_prefix_trie_before_and_after_updates() {
    let set = RouteSet::from_prefixes(&routes::read_table(&RisFile::V4Table.path()).unwrap());
    assert!(set.v4.len() > 1_000_000);
    let (updates, _) = compare::split_updates(&routes::read_updates(&RisFile::V4Updates.path()).unwrap());
    run::<Ipv4Addr>(&set.v4, &updates, "IPv4");
}

#[test]
fn ipv6_full_table_matches_prefix_trie_before_and_after_updates() {
    let set = RouteSet::from_prefixes(&routes::read_table(&RisFile::V6Table.path()).unwrap());
    assert!(set.v6.len() > 200_000);
    let (_, updates) = compare::split_updates(&routes::read_updates(&RisFile::V6Updates.path()).unwrap());
    run::<Ipv6Addr>(&set.v6, &updates, "IPv6");
}
