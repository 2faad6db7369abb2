//! `fib`: longest-prefix lookups from the command line, and a side-by-side benchmark against the
//! best general-purpose Rust crates on a real table.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{BufRead, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use clap::{Parser, Subcommand};
use fib::compare::{self, IpNetworkTable, LpmTable, OneByOne, PrefixTrie, RouteSet};
use fib::routes;
use fib::{Address, Fib, Prefix};

/// Counts live heap bytes, so every table's memory is measured the same way.
struct CountingAlloc;
static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size, Ordering::Relaxed);
        LIVE_BYTES.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

#[derive(Parser)]
#[command(name = "fib", version, about = "Longest-prefix-match lookups and benchmarks on route tables")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Read addresses (one per line) on stdin; print `ADDRESS PREFIX` or `ADDRESS none`.
    Lookup {
        /// Route table: one prefix per line (extra fields ignored, `#` comments, .gz accepted).
        #[arg(long)]
        table: PathBuf,
    },
    /// Measure lookups/s, update rate and memory for ours, prefix-trie and ip_network_table.
    Bench {
        /// Route table(s); repeat to combine files (e.g. the IPv4 and IPv6 tables).
        #[arg(long, required = true)]
        table: Vec<PathBuf>,
        /// Update trace(s) (`A PREFIX` / `W PREFIX` lines), applied while a reader keeps looking up.
        #[arg(long)]
        updates: Vec<PathBuf>,
        /// Print one JSON object instead of a table.
        #[arg(long)]
        json: bool,
        /// Addresses per workload.
        #[arg(long, default_value_t = 1_000_000)]
        addresses: usize,
        /// Publish after this many updates (1: every update is published on its own). At the
        /// rates measured here 10000 updates take a few milliseconds, which bounds how long an
        /// update waits before readers see it.
        #[arg(long, default_value_t = 10_000)]
        publish_every: usize,
        /// Seconds spent measuring each (table, workload) pair.
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Lookup { table } => lookup(&table),
        Command::Bench { table, updates, json, addresses, seconds, publish_every } => {
            bench(&table, &updates, json, addresses, seconds, publish_every)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fib: {e}");
            ExitCode::FAILURE
        }
    }
}

type Error = Box<dyn std::error::Error>;

fn build_ours<A: Address>(routes: &[(Prefix<A>, u32)]) -> Fib<A> {
    <Fib<A> as LpmTable<A>>::build(routes)
}

fn lookup(table: &std::path::Path) -> Result<(), Error> {
    let set = RouteSet::from_prefixes(&routes::read_table(table)?);
    // Next hop = index into the family's route list, which gives the matched prefix back.
    let (v4, v6) = (&set.v4, &set.v6);
    let (fib4, fib6) = (build_ours(v4), build_ours(v6));
    let (reader4, reader6) = (fib4.reader(), fib6.reader());
    let stdin = std::io::stdin().lock();
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for (number, line) in stdin.lines().enumerate() {
        let line = line?;
        let text = line.trim();
        if text.is_empty() {
            continue;
        }
        let addr: IpAddr =
            text.parse().map_err(|_| format!("stdin line {}: '{text}' is not an IP address", number + 1))?;
        let matched = match addr {
            IpAddr::V4(a) => reader4.lookup(a).map(|i| v4[i as usize].0.to_string()),
            IpAddr::V6(a) => reader6.lookup(a).map(|i| v6[i as usize].0.to_string()),
        };
        writeln!(out, "{text} {}", matched.as_deref().unwrap_or("none"))?;
    }
    out.flush()?;
    Ok(())
}

/// One full pass of a table's lookups over some addresses (returns a checksum).
type Pass<'a, A> = &'a dyn Fn(&[A]) -> u64;

/// Lookups per second of each table. The tables take turns in blocks (three rounds), each block
/// repeated full passes over `addrs` whose median counts (so its first, cache-cold pass does
/// not); a table's figure is the median of its blocks. Taking turns means the machine speeding
/// up or slowing down (by 2x here, on a shared host) moves every table's figure alike.
fn rates<A: Address, const N: usize>(tables: [Pass<'_, A>; N], addrs: &[A], seconds: f64) -> [f64; N] {
    const ROUNDS: usize = 3;
    let mut blocks: [Vec<f64>; N] = std::array::from_fn(|_| Vec::new());
    let mut sink = 0u64;
    for _ in 0..ROUNDS {
        for (table, blocks) in tables.iter().zip(blocks.iter_mut()) {
            let mut passes = Vec::new();
            let start = Instant::now();
            while passes.len() < 3 || start.elapsed().as_secs_f64() < seconds / ROUNDS as f64 {
                let t = Instant::now();
                sink = sink.wrapping_add(table(addrs));
                passes.push(addrs.len() as f64 / t.elapsed().as_secs_f64());
            }
            blocks.push(median(passes));
        }
    }
    std::hint::black_box(sink);
    blocks.map(median)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Builds `T` and returns it with the heap bytes its build left allocated.
fn measured_build<A: Address, T: LpmTable<A>>(routes: &[(Prefix<A>, u32)]) -> (T, usize) {
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    let table = T::build(routes);
    (table, LIVE_BYTES.load(Ordering::Relaxed).saturating_sub(before))
}

#[derive(Default)]
struct FamilyReport {
    prefixes: usize,
    uniform: [f64; 4],
    in_prefixes: [f64; 4],
    heap: [usize; 4],
    ours_lookup_bytes: usize,
    ours_total_bytes: usize,
    mismatches: usize,
}

const NAMES: [&str; 4] = ["ours", "prefix_trie", "ip_network_table", "ours_one_by_one"];

fn bench_family<A>(routes: &[(Prefix<A>, u32)], n: usize, seconds: f64) -> FamilyReport
where
    A: compare::ToIpnet + Into<IpAddr>,
{
    let (ours, ours_heap) = measured_build::<A, Fib<A>>(routes);
    let (trie, trie_heap) = measured_build::<A, PrefixTrie<A>>(routes);
    let (tbl, tbl_heap) = measured_build::<A, IpNetworkTable<A>>(routes);
    let (single, single_heap) = measured_build::<A, OneByOne<A>>(routes);
    let uniform = compare::uniform_addresses::<A>(n, 1);
    let inside = compare::addresses_in_prefixes(routes, n, 2);
    // The comparison only means something if all three agree.
    let mismatches = uniform
        .iter()
        .chain(&inside)
        .take(200_000)
        .filter(|&&a| {
            let o = LpmTable::lookup(&ours, a);
            o != trie.lookup(a) || o != tbl.lookup(a)
        })
        .count();
    let run = |addrs: &[A]| {
        rates::<A, 4>(
            [&|a| ours.lookup_sum(a), &|a| trie.lookup_sum(a), &|a| tbl.lookup_sum(a), &|a| single.lookup_sum(a)],
            addrs,
            seconds,
        )
    };
    let memory = ours.memory();
    FamilyReport {
        prefixes: routes.len(),
        uniform: run(&uniform),
        in_prefixes: run(&inside),
        heap: [ours_heap, trie_heap, tbl_heap, single_heap],
        ours_lookup_bytes: memory.lookup_bytes,
        ours_total_bytes: memory.total(),
        mismatches,
    }
}

struct UpdateReport {
    updates: usize,
    per_sec: f64,
    reader_lookups_per_sec: f64,
    prefix_trie_per_sec: f64,
}

/// Applies the trace to tables loaded with `set`, publishing after every update, while a reader
/// thread looks up continuously.
fn bench_updates(set: &RouteSet, updates: &[routes::Update], publish_every: usize) -> UpdateReport {
    let (up4, up6) = compare::split_updates(updates);
    let (mut fib4, mut fib6) = (build_ours(&set.v4), build_ours(&set.v6));
    let probes4 = compare::addresses_in_prefixes(&set.v4, 1 << 16, 3);
    let probes6 = compare::addresses_in_prefixes(&set.v6, 1 << 16, 4);
    let stop = AtomicBool::new(false);
    let (reader4, reader6) = (fib4.reader(), fib6.reader());
    let (elapsed, lookups) = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let mut count = 0u64;
            let mut sink = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (v4, v6) = (reader4.pin(), reader6.pin());
                for a in probes4.iter().take(4096) {
                    sink += u64::from(v4.lookup(*a).unwrap_or(0));
                }
                for b in probes6.iter().take(4096) {
                    sink += u64::from(v6.lookup(*b).unwrap_or(0));
                }
                count += (probes4.len().min(4096) + probes6.len().min(4096)) as u64;
                if probes4.is_empty() && probes6.is_empty() {
                    std::thread::yield_now();
                }
            }
            std::hint::black_box(sink);
            count
        });
        let start = Instant::now();
        fib4.apply(&up4, publish_every);
        fib6.apply(&up6, publish_every);
        let elapsed = start.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        (elapsed, reader.join().expect("reader thread"))
    });
    let mut trie4 = PrefixTrie::<Ipv4Addr>::build(&set.v4);
    let mut trie6 = PrefixTrie::<Ipv6Addr>::build(&set.v6);
    let start = Instant::now();
    trie4.apply(&up4, 1);
    trie6.apply(&up6, 1);
    let trie_elapsed = start.elapsed().as_secs_f64();
    UpdateReport {
        updates: updates.len(),
        per_sec: updates.len() as f64 / elapsed,
        reader_lookups_per_sec: lookups as f64 / elapsed,
        prefix_trie_per_sec: updates.len() as f64 / trie_elapsed,
    }
}

fn bench(
    tables: &[PathBuf],
    updates: &[PathBuf],
    json: bool,
    n: usize,
    seconds: f64,
    publish_every: usize,
) -> Result<(), Error> {
    let mut prefixes = Vec::new();
    for table in tables {
        prefixes.extend(routes::read_table(table)?);
    }
    let set = RouteSet::from_prefixes(&prefixes);
    let mut trace = None;
    for file in updates {
        trace.get_or_insert_with(Vec::new).extend(routes::read_updates(file)?);
    }
    let v4 = bench_family::<Ipv4Addr>(&set.v4, n, seconds);
    let v6 = bench_family::<Ipv6Addr>(&set.v6, n, seconds);
    let upd = trace.as_ref().map(|t| bench_updates(&set, t, publish_every));
    if v4.mismatches + v6.mismatches > 0 {
        return Err(format!("tables disagree on {} of the checked lookups", v4.mismatches + v6.mismatches).into());
    }
    if json {
        let family = |r: &FamilyReport| {
            let by_name =
                |v: &[f64; 4]| serde_json::json!({NAMES[0]: v[0], NAMES[1]: v[1], NAMES[2]: v[2], NAMES[3]: v[3]});
            serde_json::json!({
                "prefixes": r.prefixes,
                // Headline figures: addresses inside announced prefixes (every lookup walks to a
                // real route; uniform addresses often stop at an empty top-level slot).
                "ours": r.in_prefixes[0], "prefix_trie": r.in_prefixes[1], "ip_network_table": r.in_prefixes[2],
                "ours_one_by_one": r.in_prefixes[3],
                "uniform": by_name(&r.uniform),
                "in_prefixes": by_name(&r.in_prefixes),
                "memory_bytes": r.ours_total_bytes,
                "lookup_structure_bytes": r.ours_lookup_bytes,
                "heap_bytes": {NAMES[0]: r.heap[0], NAMES[1]: r.heap[1], NAMES[2]: r.heap[2]},
            })
        };
        let mut out = serde_json::json!({"v4": family(&v4), "v6": family(&v6)});
        if let Some(u) = &upd {
            out["updates"] = serde_json::json!(u.updates);
            out["updates_per_sec"] = serde_json::json!(u.per_sec);
            out["updates_publish_every"] = serde_json::json!(publish_every);
            out["updates_reader_lookups_per_sec"] = serde_json::json!(u.reader_lookups_per_sec);
            out["prefix_trie_updates_per_sec"] = serde_json::json!(u.prefix_trie_per_sec);
        }
        println!("{out}");
        return Ok(());
    }
    for (name, r) in [("IPv4", &v4), ("IPv6", &v6)] {
        println!("{name}: {} prefixes", r.prefixes);
        println!("  {:<18} {:>14} {:>14} {:>12}", "table", "uniform M/s", "in-prefix M/s", "heap MiB");
        for (i, name) in NAMES.iter().enumerate() {
            println!(
                "  {:<18} {:>14.1} {:>14.1} {:>12.1}",
                name,
                r.uniform[i] / 1e6,
                r.in_prefixes[i] / 1e6,
                r.heap[i] as f64 / (1 << 20) as f64
            );
        }
        println!(
            "  ours vs prefix_trie: {:.1}x uniform, {:.1}x in-prefix; ours: lookup structure {:.1} MiB, with writer mirror {:.1} MiB",
            r.uniform[0] / r.uniform[1],
            r.in_prefixes[0] / r.in_prefixes[1],
            r.ours_lookup_bytes as f64 / (1 << 20) as f64,
            r.ours_total_bytes as f64 / (1 << 20) as f64
        );
    }
    if let Some(u) = upd {
        println!(
            "updates: {} applied at {:.2} M/s, published every {publish_every}, while a reader did {:.1} M lookups/s (prefix_trie, single-threaded, no readers: {:.2} M/s)",
            u.updates,
            u.per_sec / 1e6,
            u.reader_lookups_per_sec / 1e6,
            u.prefix_trie_per_sec / 1e6
        );
    }
    println!("published anchors (other machines): Poptrie 174-240+ M/s on one core, DXR 100-200+ M/s");
    Ok(())
}
