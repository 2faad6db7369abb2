//! One chunk: an immutable poptrie over a 16-bit slice of the address.
//!
//! A chunk answers "which code does 16-bit index `i` map to" with at most three popcount steps.
//! Following Poptrie (Asai & Ohara, SIGCOMM 2015) the 16 bits are read as an 18-bit key
//! (`i << 2`) in three 6-bit strides. A node keeps two 64-bit maps: `vector` marks the positions
//! that continue in a child node, `leafvec` marks where a new run of equal leaves starts; children
//! and leaf runs are stored contiguously, so a node needs only two base indices.
//!
//! Leaf codes are next hops, [`NONE`] (nothing in this chunk matches: the lookup falls back to the
//! chunk's `fallback`, the best match from shorter prefixes above it), or [`CHILD_FLAG`]` | n`:
//! continue in `children[n]`, the chunk for the next 16 bits (IPv6 only).
//!
//! Invariants the lookup relies on (established by [`Chunk::build`]): `nodes` is non-empty; for
//! every node, `base1 + popcount(vector)` <= `nodes.len()` and every leaf position's run index
//! lies inside `leaves`; every child code indexes `children`, whose pointers are never null.

use std::sync::atomic::{AtomicPtr, Ordering};

/// Leaf code: no prefix of this chunk covers the index.
pub(crate) const NONE: u32 = 0x7fff_ffff;
/// Leaf code flag: the low bits index the chunk's children.
pub(crate) const CHILD_FLAG: u32 = 0x8000_0000;
/// The largest next hop a table can hold (codes above are reserved).
pub const MAX_NEXT_HOP: u32 = NONE - 1;

/// Key width inside a chunk: 16 index bits read as three 6-bit strides.
const KEY_BITS: u32 = 18;
const STRIDE: u32 = 6;

#[derive(Clone, Copy, Default, Debug)]
struct Node {
    vector: u64,
    leafvec: u64,
    /// Index of this node's first leaf run in `leaves`.
    base_leaf: u32,
    /// Index of this node's first child in `nodes`.
    base_node: u32,
}

/// A prefix local to a chunk: `bits` left-aligned in 16 bits, `len` in 1..=16.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct LocalPrefix {
    pub bits: u16,
    pub len: u8,
    pub next_hop: u32,
}

impl LocalPrefix {
    #[inline]
    pub fn covers(&self, index: u16) -> bool {
        let shift = 16 - self.len as u32;
        (index as u32) >> shift == (self.bits as u32) >> shift
    }
}

#[derive(Debug)]
pub(crate) struct Chunk {
    /// Best match from prefixes shorter than this chunk, for indices nothing here covers.
    pub fallback: u32,
    nodes: Box<[Node]>,
    leaves: Box<[u32]>,
    /// Chunks for the next 16 bits; swapped in place when only a child changes.
    pub children: Box<[AtomicPtr<Chunk>]>,
}

/// A build input: an 18-bit-key prefix and the code its positions get.
#[derive(Clone, Copy)]
struct Item {
    start: u32,
    len: u32,
    code: u32,
}

impl Chunk {
    /// Builds a chunk from its prefixes (sorted by `(bits, len)`) and its children, given as
    /// `(index, chunk)` in increasing index order.
    pub fn build(prefixes: &[LocalPrefix], children: &[(u16, *mut Chunk)], fallback: u32) -> Chunk {
        debug_assert!(prefixes.windows(2).all(|w| (w[0].bits, w[0].len) < (w[1].bits, w[1].len)));
        // A child is a full-length (18-bit) item so it wins over any prefix at its index; merging
        // keeps the items in (start, len) order, which puts every prefix before its more-specifics.
        let mut items = Vec::with_capacity(prefixes.len() + children.len());
        let mut kids = children.iter().enumerate().peekable();
        for p in prefixes {
            let start = (p.bits as u32) << 2;
            while let Some(&(n, &(index, _))) = kids.peek() {
                if ((index as u32) << 2) >= start {
                    break;
                }
                items.push(Item { start: (index as u32) << 2, len: KEY_BITS, code: CHILD_FLAG | n as u32 });
                kids.next();
            }
            items.push(Item { start, len: p.len as u32, code: p.next_hop });
        }
        for (n, &(index, _)) in kids {
            items.push(Item { start: (index as u32) << 2, len: KEY_BITS, code: CHILD_FLAG | n as u32 });
        }

        let mut nodes = vec![Node::default()];
        let mut leaves = Vec::new();
        // Breadth-first, so each node's children can be reserved as one contiguous block.
        let mut queue = std::collections::VecDeque::new();
        queue.push_back((0usize, 0u32, 0u32, 0usize, items.len(), NONE));
        while let Some((node_index, depth, base, lo, hi, inherited)) = queue.pop_front() {
            let covered_above = STRIDE * depth;
            let covered_here = covered_above + STRIDE;
            let shift = KEY_BITS - covered_here;
            let mut values = [inherited; 64];
            let mut vector = 0u64;
            for item in &items[lo..hi] {
                if item.len <= covered_above {
                    continue; // already folded into `inherited`
                }
                let position = ((item.start - base) >> shift) as usize;
                if item.len <= covered_here {
                    let span = 1usize << (covered_here - item.len);
                    values[position..position + span].fill(item.code);
                } else {
                    vector |= 1 << position;
                }
            }

            let base_node = nodes.len();
            nodes.resize(base_node + vector.count_ones() as usize, Node::default());
            let mut next = lo;
            let mut child_slot = base_node;
            let mut rest = vector;
            while rest != 0 {
                let position = rest.trailing_zeros();
                rest &= rest - 1;
                let child_base = base + (position << shift);
                let child_end = child_base + (1 << shift);
                while items[next].start < child_base {
                    next += 1;
                }
                let mut end = next;
                while end < hi && items[end].start < child_end {
                    end += 1;
                }
                queue.push_back((child_slot, depth + 1, child_base, next, end, values[position as usize]));
                child_slot += 1;
                next = end;
            }

            let base_leaf = leaves.len();
            let mut leafvec = 0u64;
            let mut previous = None;
            for (position, &value) in values.iter().enumerate() {
                if vector & (1 << position) != 0 {
                    continue;
                }
                if previous != Some(value) {
                    leafvec |= 1 << position;
                    leaves.push(value);
                    previous = Some(value);
                }
            }
            nodes[node_index] =
                Node { vector, leafvec, base_leaf: base_leaf as u32, base_node: base_node as u32 };
        }

        Chunk {
            fallback,
            nodes: nodes.into_boxed_slice(),
            leaves: leaves.into_boxed_slice(),
            children: children.iter().map(|&(_, c)| AtomicPtr::new(c)).collect(),
        }
    }

    /// The same chunk with another fallback (a covering prefix above it changed).
    pub fn with_fallback(&self, fallback: u32) -> Chunk {
        Chunk {
            fallback,
            nodes: self.nodes.clone(),
            leaves: self.leaves.clone(),
            children: self.children.iter().map(|c| AtomicPtr::new(c.load(Ordering::Relaxed))).collect(),
        }
    }

    /// The code for a 16-bit index: a next hop, [`NONE`], or a child reference.
    #[inline(always)]
    pub fn find(&self, index: usize) -> u32 {
        let key = (index as u32) << 2;
        // SAFETY: `nodes` is never empty (build always creates the root).
        let mut node = unsafe { self.nodes.get_unchecked(0) };
        let mut shift = KEY_BITS - STRIDE;
        loop {
            let bit = 1u64 << ((key >> shift) & 63);
            if node.vector & bit != 0 {
                let at = node.base_node as usize + (node.vector & (bit - 1)).count_ones() as usize;
                // SAFETY: build reserved popcount(vector) children from base_node.
                node = unsafe { self.nodes.get_unchecked(at) };
                shift -= STRIDE;
            } else {
                let run = (node.leafvec & (bit | (bit - 1))).count_ones() as usize;
                // SAFETY: a leaf position always has a run starting at or before it (the first
                // leaf position of a node sets its leafvec bit), so run >= 1 and indexes the
                // node's own runs in `leaves`.
                return unsafe { *self.leaves.get_unchecked(node.base_leaf as usize + run - 1) };
            }
        }
    }

    /// Bytes this chunk occupies (header and arrays, not its children).
    pub fn heap_bytes(&self) -> usize {
        std::mem::size_of::<Chunk>()
            + self.nodes.len() * std::mem::size_of::<Node>()
            + self.leaves.len() * 4
            + self.children.len() * std::mem::size_of::<AtomicPtr<Chunk>>()
    }

    /// Frees this chunk and, recursively, every chunk below it.
    ///
    /// # Safety
    /// `chunk` came from `Box::into_raw`, and no reader can reach it or its children any more.
    pub unsafe fn free_tree(chunk: *mut Chunk) {
        // SAFETY: guaranteed by the caller.
        let owned = unsafe { Box::from_raw(chunk) };
        for child in owned.children.iter() {
            // SAFETY: children are owned by their parent and unreachable once it is.
            unsafe { Chunk::free_tree(child.load(Ordering::Relaxed)) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(prefixes: &[LocalPrefix], index: u16) -> u32 {
        prefixes.iter().filter(|p| p.covers(index)).max_by_key(|p| p.len).map_or(NONE, |p| p.next_hop)
    }

    fn check(mut prefixes: Vec<LocalPrefix>) {
        prefixes.sort();
        prefixes.dedup_by_key(|p| (p.bits, p.len));
        let chunk = Chunk::build(&prefixes, &[], 7);
        for index in 0..=u16::MAX {
            assert_eq!(chunk.find(index as usize), naive(&prefixes, index), "index {index:#x}");
        }
    }

    #[test]
    fn empty_chunk_is_all_none() {
        let chunk = Chunk::build(&[], &[], 3);
        assert_eq!(chunk.find(0), NONE);
        assert_eq!(chunk.find(0xffff), NONE);
        assert_eq!(chunk.fallback, 3);
    }

    #[test]
    fn every_length_and_nesting() {
        let mut prefixes = Vec::new();
        for len in 1..=16u8 {
            let bits = (0xa5a5u16 >> (16 - len)) << (16 - len);
            prefixes.push(LocalPrefix { bits, len, next_hop: len as u32 });
        }
        prefixes.push(LocalPrefix { bits: 0xffff, len: 16, next_hop: 100 });
        prefixes.push(LocalPrefix { bits: 0x0000, len: 16, next_hop: 101 });
        prefixes.push(LocalPrefix { bits: 0x8000, len: 1, next_hop: 102 });
        check(prefixes);
    }

    #[test]
    fn random_chunks_match_the_naive_answer() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        for _ in 0..20 {
            let n = rng.gen_range(0..300);
            let prefixes = (0..n)
                .map(|i| {
                    let len = rng.gen_range(1..=16u8);
                    let bits = (rng.gen::<u16>() >> (16 - len)) << (16 - len);
                    LocalPrefix { bits, len, next_hop: i }
                })
                .collect();
            check(prefixes);
        }
    }

    #[test]
    fn children_win_over_prefixes_at_their_index() {
        let prefixes = [LocalPrefix { bits: 0x1200, len: 8, next_hop: 5 }];
        let dummy = std::ptr::NonNull::<Chunk>::dangling().as_ptr();
        let chunk = Chunk::build(&prefixes, &[(0x1234, dummy), (0xfff0, dummy)], NONE);
        assert_eq!(chunk.find(0x1234), CHILD_FLAG);
        assert_eq!(chunk.find(0x1235), 5);
        assert_eq!(chunk.find(0xfff0), CHILD_FLAG | 1);
        assert_eq!(chunk.find(0xfff1), NONE);
    }
}
