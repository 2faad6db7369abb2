//! Writer churn against reader threads. Every answer a reader sees must be one that some
//! published version of the table gives: the stable route's next hop, or the next hop of a churning
//! route that covers the address more specifically. A stable route with no churn below it must
//! never be missed.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fib::{Address, Fib, Prefix};
use rand::{Rng, SeedableRng};

const CHURN_BASE: u32 = 1_000_000;
const VERSIONS: u32 = 1000;

fn random_prefix<A: Address>(rng: &mut impl Rng, around: u128, min_len: u8, max_len: u8) -> Prefix<A> {
    let len = rng.gen_range(min_len..=max_len);
    // Stay near `around` so that churn nests over and under the stable routes.
    let noise: u128 = rng.gen::<u128>() >> (128 - A::BITS as u32 + 12).min(127);
    Prefix::new_masked(A::from_u128(around ^ noise), len).unwrap()
}

fn stress<A: Address>(seconds: f64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let around: u128 = rng.gen::<u128>() >> (128 - A::BITS as u32);
    let mut fib = Fib::<A>::new();

    // Stable routes: fixed next hops 0..N, never touched by the writer again.
    let mut stable = Vec::new();
    while stable.len() < 400 {
        let p = random_prefix::<A>(&mut rng, around, 8, A::BITS);
        if fib.get(&p).is_none() {
            fib.insert(p, stable.len() as u32).unwrap();
            stable.push(p);
        }
    }
    // Churning routes, from /0 (every slot's fallback) to host routes.
    let mut churn: Vec<Prefix<A>> = vec![Prefix::new_masked(A::from_u128(0), 0).unwrap()];
    while churn.len() < 300 {
        let p = random_prefix::<A>(&mut rng, around, 4, A::BITS);
        if fib.get(&p).is_none() && !churn.contains(&p) {
            churn.push(p);
        }
    }
    fib.publish();

    let stop = Arc::new(AtomicBool::new(false));
    let lookups = Arc::new(AtomicU64::new(0));
    let readers: Vec<_> = (0..3)
        .map(|seed| {
            let reader = fib.reader();
            let (stable, churn, stop, lookups) = (stable.clone(), churn.clone(), stop.clone(), lookups.clone());
            std::thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                let mut count = 0u64;
                let mut must_hit = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let view = reader.pin();
                    for _ in 0..256 {
                        // Probe inside a stable route, at a random host of it.
                        let s = stable[rng.gen_range(0..stable.len())];
                        let host = rng.gen::<u128>() & (s.last().to_u128() - s.addr().to_u128());
                        let addr = A::from_u128(s.addr().to_u128() | host);
                        let best_stable = stable.iter().filter(|p| p.contains(addr)).max_by_key(|p| p.len()).unwrap();
                        let got = view.lookup(addr).expect("a stable route covers this address");
                        let shadowing = churn.iter().any(|c| c.contains(addr) && c.len() > best_stable.len());
                        if got < CHURN_BASE {
                            assert_eq!(
                                got,
                                stable.iter().position(|p| p == best_stable).unwrap() as u32,
                                "{addr}: stable answer from the wrong route"
                            );
                        } else {
                            let c = churn[((got - CHURN_BASE) / VERSIONS) as usize];
                            assert!(
                                c.contains(addr) && c.len() > best_stable.len(),
                                "{addr}: answer from churn route {c} which cannot be the best match"
                            );
                        }
                        if !shadowing {
                            must_hit += 1;
                            assert!(got < CHURN_BASE, "{addr}: stable route {best_stable} missed");
                        }
                        count += 1;
                    }
                }
                lookups.fetch_add(count, Ordering::Relaxed);
                must_hit
            })
        })
        .collect();

    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut publishes = 0u64;
    let mut version = vec![0u32; churn.len()];
    while Instant::now() < deadline {
        for _ in 0..rng.gen_range(1..8) {
            let i = rng.gen_range(0..churn.len());
            if rng.gen_bool(0.5) {
                version[i] = (version[i] + 1) % VERSIONS;
                fib.insert(churn[i], CHURN_BASE + i as u32 * VERSIONS + version[i]).unwrap();
            } else {
                fib.remove(&churn[i]);
            }
        }
        fib.publish();
        publishes += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let must_hit: u64 = readers.into_iter().map(|r| r.join().expect("reader saw an inconsistent answer")).sum();
    let total = lookups.load(Ordering::Relaxed);
    eprintln!("{}-bit: {publishes} publishes, {total} lookups, {must_hit} on never-shadowed stable routes", A::BITS);
    assert!(publishes > 100 && total > 10_000 && must_hit > 1000, "stress ran too little to mean anything");
}

#[test]
fn ipv4_readers_see_only_published_versions_under_churn() {
    stress::<Ipv4Addr>(2.0);
}

#[test]
fn ipv6_readers_see_only_published_versions_under_churn() {
    stress::<Ipv6Addr>(2.0);
}
