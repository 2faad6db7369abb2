//! FIB lookups on the full RIS tables: ours (batched and one at a time), prefix-trie and
//! ip_network_table, on the same addresses; and the update trace applied with publishing.
//! `cargo bench -p benches --bench fib`; `fib bench` prints the same comparison in one table.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use fib::compare::{self, IpNetworkTable, LpmTable, OneByOne, PrefixTrie, RouteSet, ToIpnet};
use fib::testdata::RisFile;
use fib::{routes, Fib, Prefix};

const ADDRESSES: usize = 1 << 16;

fn lookups<A: ToIpnet + Into<IpAddr>>(c: &mut Criterion, family: &str, routes: &[(Prefix<A>, u32)]) {
    let workloads = [
        ("uniform", compare::uniform_addresses::<A>(ADDRESSES, 1)),
        ("in_prefixes", compare::addresses_in_prefixes(routes, ADDRESSES, 2)),
    ];
    let ours = <Fib<A> as LpmTable<A>>::build(routes);
    let single = OneByOne::<A>::build(routes);
    let trie = PrefixTrie::<A>::build(routes);
    let table = IpNetworkTable::<A>::build(routes);
    for (workload, addrs) in &workloads {
        let mut group = c.benchmark_group(format!("{family}_lookup_{workload}"));
        group.throughput(Throughput::Elements(addrs.len() as u64));
        group.bench_function(BenchmarkId::from_parameter("ours"), |b| b.iter(|| ours.lookup_sum(addrs)));
        group.bench_function(BenchmarkId::from_parameter("ours_one_by_one"), |b| b.iter(|| single.lookup_sum(addrs)));
        group.bench_function(BenchmarkId::from_parameter("prefix_trie"), |b| b.iter(|| trie.lookup_sum(addrs)));
        group.bench_function(BenchmarkId::from_parameter("ip_network_table"), |b| b.iter(|| table.lookup_sum(addrs)));
        group.finish();
    }
}

fn updates<A: ToIpnet>(
    c: &mut Criterion,
    family: &str,
    routes: &[(Prefix<A>, u32)],
    trace: &[(Prefix<A>, Option<u32>)],
) {
    let trace = &trace[..trace.len().min(100_000)];
    let mut group = c.benchmark_group(format!("{family}_updates"));
    group.sample_size(10);
    group.throughput(Throughput::Elements(trace.len() as u64));
    let mut ours = <Fib<A> as LpmTable<A>>::build(routes);
    for publish_every in [1, 10_000] {
        group.bench_function(BenchmarkId::new("ours_publish_every", publish_every), |b| {
            b.iter(|| ours.apply(trace, publish_every))
        });
    }
    let mut trie = PrefixTrie::<A>::build(routes);
    group.bench_function(BenchmarkId::from_parameter("prefix_trie"), |b| b.iter(|| trie.apply(trace, 1)));
    group.finish();
}

fn fib_benches(c: &mut Criterion) {
    let mut prefixes = routes::read_table(&RisFile::V4Table.path()).expect("v4 table");
    prefixes.extend(routes::read_table(&RisFile::V6Table.path()).expect("v6 table"));
    let set = RouteSet::from_prefixes(&prefixes);
    let mut trace = routes::read_updates(&RisFile::V4Updates.path()).expect("v4 updates");
    trace.extend(routes::read_updates(&RisFile::V6Updates.path()).expect("v6 updates"));
    let (up4, up6) = compare::split_updates(&trace);
    lookups::<Ipv4Addr>(c, "v4", &set.v4);
    lookups::<Ipv6Addr>(c, "v6", &set.v6);
    updates::<Ipv4Addr>(c, "v4", &set.v4, &up4);
    updates::<Ipv6Addr>(c, "v6", &set.v6, &up6);
}

criterion_group!(benches, fib_benches);
criterion_main!(benches);
