//! Chunks built from prefixes and looked up against a naive answer: every length and nesting,
//! random chunks, children against prefixes, which chunks get a root index.

use super::*;

fn naive(prefixes: &[LocalPrefix], key: u32) -> u32 {
    prefixes.iter().filter(|p| p.covers(key)).max_by_key(|p| p.len()).map_or(NONE, |p| p.next_hop)
}

/// Checks both builds (the one allowed an index goes through it when it has one) and a copy
/// of the second with another fallback.
fn check(mut prefixes: Vec<LocalPrefix>) {
    prefixes.sort();
    prefixes.dedup_by_key(|p| p.key());
    let chunk = ChunkPtr::build(&prefixes, &[], 7, false);
    let indexed = ChunkPtr::build(&prefixes, &[], 7, true);
    let copy = indexed.with_fallback(8);
    // An index answers with the fallback applied; the nodes leave that to the caller.
    let answer = |chunk: ChunkPtr, key: u32| match chunk.find(key as usize) {
        NONE => chunk.fallback(),
        code => code,
    };
    for key in 0..1u32 << KEY_BITS {
        let want = naive(&prefixes, key);
        let want_or = |fallback| if want == NONE { fallback } else { want };
        assert_eq!(chunk.find(key as usize), want, "key {key:#x}");
        assert_eq!(answer(indexed, key), want_or(7), "key {key:#x}, chunk allowed an index");
        assert_eq!(answer(copy, key), want_or(8), "key {key:#x}, its copy");
    }
    assert!(!chunk.is_indexed());
    assert_eq!((chunk.fallback(), copy.fallback()), (7, 8));
    // SAFETY: never shared.
    unsafe {
        chunk.free();
        indexed.free();
        copy.free();
    }
}

#[test]
fn only_chunks_with_many_root_runs_get_an_index() {
    let runs = |n: u32| -> Vec<_> { (0..n).map(|i| prefix(i << 12, 6, i)).collect() };
    // n prefixes at the start of the root, then one run of NONE.
    let small = ChunkPtr::build(&runs(INDEX_MIN_RUNS - 1), &[], NONE, true);
    let mut many = runs(64);
    many.push(prefix(0x3f800, 18, 99)); // below the root: the index points at a node
    let large = ChunkPtr::build(&many, &[], NONE, true);
    assert!(!small.is_indexed());
    assert!(large.is_indexed());
    // SAFETY: `large` is indexed and the keys have 18 bits.
    let found = unsafe { (large.find_indexed(0x3f000), large.find_indexed(0x3f800)) };
    assert_eq!(found, (63, 99));
    let plain = ChunkPtr::build(&many, &[], NONE, false);
    // The index replaces the root's 63 runs (the leaves are padded to 8 bytes).
    assert!(large.heap_bytes().abs_diff(plain.heap_bytes() + INDEX_BYTES - 63 * 4) <= 4);
    // SAFETY: never shared.
    unsafe {
        small.free();
        plain.free();
        large.free();
    }
}

fn prefix(bits: u32, len: u8, next_hop: u32) -> LocalPrefix {
    let bits = bits & ((1 << KEY_BITS) - 1);
    LocalPrefix::new((bits >> (KEY_BITS - len as u32)) << (KEY_BITS - len as u32), len, next_hop)
}

#[test]
fn empty_chunk_is_all_none() {
    check(Vec::new());
}

#[test]
fn every_length_and_nesting() {
    let mut prefixes: Vec<_> = (1..=18u8).map(|len| prefix(0x2a5a5, len, len as u32)).collect();
    prefixes.push(prefix(0x3ffff, 18, 100));
    prefixes.push(prefix(0, 18, 101));
    prefixes.push(prefix(0x20000, 1, 102));
    check(prefixes);
}

#[test]
fn random_chunks_match_the_naive_answer() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    for _ in 0..10 {
        let n = rng.gen_range(0..400);
        let prefixes = (0..n).map(|i| prefix(rng.gen(), rng.gen_range(1..=18u8), i)).collect();
        check(prefixes);
    }
}

#[test]
fn children_win_over_prefixes_at_their_key_and_copies_keep_them() {
    let leaf = ChunkPtr::build(&[], &[], 1, false);
    let prefixes = [prefix(0x12000, 8, 5), prefix(0x12345, 18, 6)];
    let chunk = ChunkPtr::build(&prefixes, &[(0x12345, leaf), (0x3fff0, leaf)], NONE, false);
    assert_eq!(chunk.find(0x12345), CHILD_FLAG);
    assert_eq!(chunk.find(0x12346), 5);
    assert_eq!(chunk.find(0x3fff0), CHILD_FLAG | 1);
    assert_eq!(chunk.find(0x3fff1), NONE);
    let copy = chunk.with_fallback(9);
    // SAFETY: the chunk was built with two children.
    let child = unsafe { copy.child(1) };
    assert_eq!((copy.fallback(), copy.find(0x3fff0), child), (9, CHILD_FLAG | 1, leaf));
    // SAFETY: never shared; `leaf` is freed once, the two parents without their children.
    unsafe {
        copy.free();
        chunk.free();
        leaf.free();
    }
}
