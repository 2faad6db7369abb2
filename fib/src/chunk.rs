//! One chunk: an immutable poptrie over an 18-bit group of the address, in one allocation.
//!
//! A chunk answers "which code does 18-bit key `k` map to" with at most three popcount steps, one
//! per 6-bit stride, as in Poptrie (Asai & Ohara, SIGCOMM 2015). A node keeps two 64-bit maps:
//! `vector` marks positions that continue in a child node, `leafvec` marks where a new run of
//! equal leaves starts; children and leaf runs are contiguous, so a node needs two base indices.
//!
//! Leaf codes are next hops, [`NONE`] (nothing in this chunk covers the key: the lookup returns
//! the chunk's `fallback`, the best match among shorter prefixes above it), or
//! [`CHILD_FLAG`]` | n`: continue in child `n`, the chunk for the next group (IPv6 only).
//!
//! Layout, 64-byte aligned so the header and root node share a cache line:
//! `[root index?][Header][Node; nodes][u32; leaves (padded to 8 bytes)][AtomicPtr; children]`.
//!
//! The root index (chunks hung from the top level with more than [`INDEX_MIN_RUNS`] root leaf
//! runs) holds, for each of the root's 64 positions, the leaf code the root would give with the
//! fallback applied (so that no answer needs the header) or [`NODE_FLAG`]` | n`: continue at
//! node `n`. It sits in the four lines before the header, so a
//! reader that knows a chunk is indexed (the top-level entry says so) reads the one line that
//! answers a /19../24 match without first reading the header and root node: two memory accesses
//! per lookup instead of three, and batched lookups are bound by how many accesses are in
//! flight. The index replaces the root's leaves (an indexed root node is never stepped from; its
//! `leafvec` marks the positions that answer the fallback instead, for copies with another), so
//! it costs 256 bytes less four per root run.
//!
//! Invariants the lookup relies on (established by [`ChunkPtr::build`]): there is at least the
//! root node; for every node, its `popcount(vector)` children start at `base_node` inside the
//! node array; every leaf position has a run starting at or before it among the node's runs
//! (the node's first leaf position always sets its `leafvec` bit), and those runs lie inside the
//! leaf array, except at an indexed chunk's root, which has no leaves and is never stepped
//! from; every node code in the index indexes the node array; every child code indexes the
//! child array, whose pointers are never null.

use std::alloc::{alloc, dealloc, handle_alloc_error, Layout};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicPtr, Ordering};

/// Leaf code: no prefix of this chunk covers the key.
pub(crate) const NONE: u32 = 0x7fff_ffff;
/// Leaf code flag: the low bits index the chunk's children. Child codes never appear at the root
/// (a child sits under a full-length key, so its root position is a node).
pub(crate) const CHILD_FLAG: u32 = 0x8000_0000;
/// Root index code flag: the low bits index the chunk's nodes (a node below the root).
pub(crate) const NODE_FLAG: u32 = 0xc000_0000;
/// The largest next hop a table can hold (codes above are reserved).
pub const MAX_NEXT_HOP: u32 = NONE - 1;

/// Key width inside a chunk, read in three 6-bit strides.
pub(crate) const KEY_BITS: u32 = 18;
const STRIDE: u32 = 6;
const ALIGN: usize = 64;
/// The root index: one code per root position, four cache lines.
const INDEX_BYTES: usize = 64 * size_of::<u32>();
const _: () = assert!(size_of::<Header>() == 16 && INDEX_BYTES.is_multiple_of(ALIGN));
/// Chunks that may have an index get one above this many root leaf runs. Below it, the leaves
/// mostly share the first line with the root node, and an index would cost more memory than
/// it saves in leaves. Each step down adds about a MiB to a full IPv4 table.
pub(crate) const INDEX_MIN_RUNS: u32 = 8;

#[repr(C)]
pub(crate) struct Header {
    fallback: u32,
    leaf_count: u32,
    child_count: u32,
    /// At most 1 + 64 + 64 * 64 nodes in three strides.
    node_count: u16,
    indexed: bool,
}

#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
struct Node {
    vector: u64,
    leafvec: u64,
    /// Index of this node's first leaf run.
    base_leaf: u32,
    /// Index of this node's first child node.
    base_node: u32,
}

/// A prefix local to a chunk: `bits` left-aligned in the 18-bit key, `len` in 0..=18, packed
/// into one word (a full table holds a million of these) that sorts by `(bits, len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct LocalPrefix {
    bits_len: u32,
    pub next_hop: u32,
}

impl LocalPrefix {
    pub fn new(bits: u32, len: u8, next_hop: u32) -> Self {
        debug_assert!(bits < 1 << KEY_BITS && len as u32 <= KEY_BITS);
        LocalPrefix { bits_len: (bits << 5) | len as u32, next_hop }
    }

    #[inline]
    pub fn bits(&self) -> u32 {
        self.bits_len >> 5
    }

    #[inline]
    pub fn len(&self) -> u8 {
        (self.bits_len & 31) as u8
    }

    /// `(bits, len)` in one sortable word.
    #[inline]
    pub fn key(&self) -> u32 {
        self.bits_len
    }

    #[inline]
    pub fn covers(&self, key: u32) -> bool {
        let shift = KEY_BITS - self.len() as u32;
        key >> shift == self.bits() >> shift
    }
}

/// A position in a lookup: a node of a chunk and the shift of its stride.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NodeAt {
    node: *const Node,
    shift: u32,
}

impl NodeAt {
    /// A placeholder for lanes not in a chunk; never stepped from.
    pub fn dangling() -> NodeAt {
        NodeAt { node: std::ptr::null(), shift: 0 }
    }

    pub fn as_ptr(self) -> *const u8 {
        self.node as *const u8
    }
}

/// Asks for the cache line at `p` ahead of use; a hint only, never faults.
#[inline(always)]
pub(crate) fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetch is a hint with no memory effects; any address is allowed.
    unsafe {
        std::arch::x86_64::_mm_prefetch(p as *const i8, std::arch::x86_64::_MM_HINT_T0)
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// A build input: a prefix in key space and the code its positions get.
#[derive(Clone, Copy)]
struct Item {
    start: u32,
    len: u32,
    code: u32,
}

/// The one handle on a chunk allocation. `Copy`: ownership is tracked by the table (a chunk is
/// owned by its parent entry and freed exactly once, by the table or the epoch collector).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) struct ChunkPtr(NonNull<Header>);

fn layout(nodes: usize, leaves: usize, children: usize, indexed: bool) -> Layout {
    let leaf_bytes = (leaves * 4).next_multiple_of(8);
    let index_bytes = if indexed { INDEX_BYTES } else { 0 };
    let size = index_bytes
        + size_of::<Header>()
        + nodes * size_of::<Node>()
        + leaf_bytes
        + children * size_of::<AtomicPtr<Header>>();
    Layout::from_size_align(size, ALIGN).expect("chunk layout")
}

impl ChunkPtr {
    /// Builds a chunk from its prefixes (sorted by `(bits, len)`, distinct) and its children,
    /// given as `(key, chunk)` in increasing key order. With `may_index`, the chunk gets a root
    /// index if its root has more than [`INDEX_MIN_RUNS`] leaf runs.
    pub fn build(prefixes: &[LocalPrefix], children: &[(u32, ChunkPtr)], fallback: u32, may_index: bool) -> ChunkPtr {
        debug_assert!(prefixes.windows(2).all(|w| w[0].key() < w[1].key()));
        // Items in (start, len) order put every prefix before its more-specifics, so filling
        // positions in order lets longer prefixes overwrite shorter ones. A child is a full-length
        // item placed after every prefix starting at or before its key, so it wins its position.
        let mut items = Vec::with_capacity(prefixes.len() + children.len());
        let mut kids = children.iter().enumerate().peekable();
        for p in prefixes {
            while let Some(&(n, &(key, _))) = kids.peek() {
                if key >= p.bits() {
                    break;
                }
                items.push(Item { start: key, len: KEY_BITS, code: CHILD_FLAG | n as u32 });
                kids.next();
            }
            items.push(Item { start: p.bits(), len: p.len() as u32, code: p.next_hop });
        }
        items.extend(kids.map(|(n, &(key, _))| Item { start: key, len: KEY_BITS, code: CHILD_FLAG | n as u32 }));

        let (mut nodes, mut leaves) = build_nodes(&items);
        let root_runs = nodes[0].leafvec.count_ones();
        let index = (may_index && root_runs > INDEX_MIN_RUNS).then(|| {
            let root = nodes[0];
            let mut answers_fallback = 0u64;
            let index: [u32; 64] = std::array::from_fn(|position| {
                let bit = 1u64 << position;
                if root.vector & bit != 0 {
                    return NODE_FLAG | (root.base_node + (root.vector & (bit - 1)).count_ones());
                }
                match leaves[(root.base_leaf + (root.leafvec & (bit | (bit - 1))).count_ones() - 1) as usize] {
                    NONE => {
                        answers_fallback |= bit;
                        fallback
                    }
                    code => code,
                }
            });
            // Breadth-first, the root's runs are the first leaves; the index takes their place.
            debug_assert_eq!(root.base_leaf, 0);
            leaves.drain(..root_runs as usize);
            for node in &mut nodes[1..] {
                node.base_leaf -= root_runs;
            }
            nodes[0].leafvec = answers_fallback;
            index
        });
        let chunk = ChunkPtr::allocate(nodes.len(), leaves.len(), children.len(), fallback, index.is_some());
        // SAFETY: the allocation was sized for exactly these arrays.
        unsafe {
            std::ptr::copy_nonoverlapping(nodes.as_ptr(), chunk.nodes(), nodes.len());
            std::ptr::copy_nonoverlapping(leaves.as_ptr(), chunk.leaves(), leaves.len());
            for (i, (_, child)) in children.iter().enumerate() {
                chunk.children().add(i).write(AtomicPtr::new(child.0.as_ptr()));
            }
            if let Some(index) = index {
                std::ptr::copy_nonoverlapping(index.as_ptr(), chunk.index_slot(0) as *mut u32, index.len());
            }
        }
        chunk
    }

    fn allocate(nodes: usize, leaves: usize, children: usize, fallback: u32, indexed: bool) -> ChunkPtr {
        let layout = layout(nodes, leaves, children, indexed);
        // SAFETY: the layout has non-zero size (the header).
        let base = unsafe { alloc(layout) };
        if base.is_null() {
            handle_alloc_error(layout);
        }
        let index_bytes = if indexed { INDEX_BYTES } else { 0 };
        // SAFETY: the header follows the index inside the allocation; INDEX_BYTES keeps it
        // 64-byte aligned.
        let raw = unsafe { base.add(index_bytes) } as *mut Header;
        // SAFETY: freshly allocated, aligned for Header.
        unsafe {
            raw.write(Header {
                fallback,
                leaf_count: leaves as u32,
                child_count: children as u32,
                node_count: u16::try_from(nodes).expect("three strides hold at most 4161 nodes"),
                indexed,
            })
        };
        // SAFETY: inside a non-null allocation.
        ChunkPtr(unsafe { NonNull::new_unchecked(raw) })
    }

    #[inline(always)]
    pub fn is_indexed(self) -> bool {
        self.header().indexed
    }

    /// Where the allocation starts: at the index, when the chunk has one.
    fn allocation(self) -> *mut u8 {
        let index_bytes = if self.is_indexed() { INDEX_BYTES } else { 0 };
        (self.0.as_ptr() as *mut u8).wrapping_sub(index_bytes)
    }

    /// The root index slot for an 18-bit key. Computed from the pointer alone, without reading
    /// the chunk: only meaningful (and only read) when the chunk is indexed.
    #[inline(always)]
    pub fn index_slot(self, key: u32) -> *const u32 {
        let index = (self.0.as_ptr() as *const u8).wrapping_sub(INDEX_BYTES) as *const u32;
        index.wrapping_add((key >> (KEY_BITS - STRIDE)) as usize)
    }

    /// Where a root index code `NODE_FLAG | n` continues: node `n`, one stride below the root.
    #[inline(always)]
    pub fn below_root(self, code: u32) -> NodeAt {
        NodeAt { node: self.nodes().wrapping_add((code & !NODE_FLAG) as usize), shift: KEY_BITS - 2 * STRIDE }
    }

    /// A copy of this chunk with another fallback (a covering prefix above it changed). The
    /// copy shares the children.
    pub fn with_fallback(self, fallback: u32) -> ChunkPtr {
        let h = self.header();
        let copy = ChunkPtr::allocate(
            h.node_count as usize,
            h.leaf_count as usize,
            h.child_count as usize,
            fallback,
            h.indexed,
        );
        // SAFETY: same layout; the index, header and body are plain data (the copied header is
        // the same but for the fallback, set again below). Child pointers are only ever stored by
        // the writer, which is the caller, so the copy is not torn.
        unsafe {
            std::ptr::copy_nonoverlapping(self.allocation(), copy.allocation(), self.layout().size());
            (*copy.0.as_ptr()).fallback = fallback;
            if h.indexed {
                // Index positions that answered the old fallback answer the new one.
                let index = copy.index_slot(0) as *mut u32;
                let mut answers_fallback = (*copy.nodes()).leafvec;
                while answers_fallback != 0 {
                    index.add(answers_fallback.trailing_zeros() as usize).write(fallback);
                    answers_fallback &= answers_fallback - 1;
                }
            }
        }
        copy
    }

    #[inline(always)]
    fn header(&self) -> &Header {
        // SAFETY: a ChunkPtr always points at an initialised header.
        unsafe { self.0.as_ref() }
    }

    fn layout(self) -> Layout {
        let h = self.header();
        layout(h.node_count as usize, h.leaf_count as usize, h.child_count as usize, h.indexed)
    }

    #[inline(always)]
    fn nodes(self) -> *mut Node {
        // SAFETY: nodes follow the header inside the allocation.
        unsafe { self.0.as_ptr().add(1) as *mut Node }
    }

    #[inline(always)]
    fn leaves(self) -> *mut u32 {
        // SAFETY: leaves follow the nodes inside the allocation.
        unsafe { self.nodes().add(self.header().node_count as usize) as *mut u32 }
    }

    #[inline(always)]
    fn children(self) -> *mut AtomicPtr<Header> {
        let leaf_words = (self.header().leaf_count as usize).next_multiple_of(2);
        // SAFETY: children follow the (8-byte padded) leaves inside the allocation.
        unsafe { self.leaves().add(leaf_words) as *mut AtomicPtr<Header> }
    }

    #[inline(always)]
    pub fn fallback(self) -> u32 {
        self.header().fallback
    }

    /// The slot holding child `n`, swapped in place when only that child changes.
    ///
    /// # Safety
    /// `n` is below the chunk's child count: it comes from one of this chunk's child codes
    /// (`CHILD_FLAG | n`), or is the position of a child the chunk was built with.
    #[inline(always)]
    pub unsafe fn child_slot(&self, n: usize) -> &AtomicPtr<Header> {
        debug_assert!(n < self.header().child_count as usize);
        // SAFETY: the caller guarantees n < child_count, so the slot lies in the child array.
        unsafe { &*self.children().add(n) }
    }

    /// Loads child `n` (Acquire: its contents were written before it was published).
    ///
    /// # Safety
    /// As [`ChunkPtr::child_slot`]: `n` is below the chunk's child count.
    #[inline(always)]
    pub unsafe fn child(self, n: usize) -> ChunkPtr {
        // SAFETY: the caller guarantees `n` is in range; child pointers are never null.
        ChunkPtr(unsafe { NonNull::new_unchecked(self.child_slot(n).load(Ordering::Acquire)) })
    }

    /// The code for an 18-bit key (higher bits are ignored): a next hop, [`NONE`], or a child
    /// reference.
    #[inline(always)]
    pub fn find(self, key: usize) -> u32 {
        let key = key & ((1 << KEY_BITS) - 1);
        if self.is_indexed() {
            // SAFETY: the header says the chunk is indexed, and the key has 18 bits.
            return unsafe { self.find_indexed(key) };
        }
        // SAFETY: the root is one of this chunk's nodes.
        unsafe { self.find_from(self.root(), key as u32) }
    }

    /// As [`find`](Self::find), for a caller that knows the chunk has a root index (and need not
    /// read the header to learn it). An answer from the index has the fallback applied.
    ///
    /// # Safety
    /// The chunk has a root index (its top-level entry says so), and `key < 2^18`: the slot read
    /// is computed from the pointer and the key alone, and lies inside the index only then.
    #[inline(always)]
    pub unsafe fn find_indexed(self, key: usize) -> u32 {
        debug_assert!(self.is_indexed() && key < 1 << KEY_BITS);
        // SAFETY: the caller guarantees an index and an 18-bit key, so the slot lies inside it.
        let code = unsafe { *self.index_slot(key as u32) };
        if code < NODE_FLAG {
            return code;
        }
        // SAFETY: a node code in the index indexes this chunk's node array.
        unsafe { self.find_from(self.below_root(code), key as u32) }
    }

    /// # Safety
    /// As [`ChunkPtr::step`]: `at` is one of this chunk's nodes.
    #[inline(always)]
    unsafe fn find_from(self, mut at: NodeAt, key: u32) -> u32 {
        loop {
            // SAFETY: `at` is the caller's node, or one a step from it continued to.
            let (is_node, next, leaf) = unsafe { self.step(at, key) };
            if !is_node {
                // SAFETY: when a step ends at a leaf, `leaf` lies inside this chunk's leaf array.
                return unsafe { *leaf };
            }
            at = next;
        }
    }

    /// Where a lookup for a key starts in a chunk without a root index.
    #[inline(always)]
    pub fn root(self) -> NodeAt {
        NodeAt { node: self.nodes(), shift: KEY_BITS - STRIDE }
    }

    /// One stride of a lookup, from node `at`: whether the key continues in a child node, that
    /// node, and the leaf holding the answer otherwise. Both outcomes are computed without a
    /// branch on which holds (batched lookups step many lanes whose outcomes differ, and a
    /// mispredicted branch costs as much as the step). Only the one that holds may be
    /// dereferenced; the other is an arbitrary address (wrapping arithmetic, never read).
    ///
    /// # Safety
    /// `at` is one of this chunk's nodes: it came from [`ChunkPtr::root`] of a chunk without an
    /// index, from [`ChunkPtr::below_root`] with a node code read from this chunk's index, or
    /// from an earlier step on this chunk that continued in a node. (A [`NodeAt::dangling`] or
    /// another chunk's node would be read as this one's.)
    #[inline(always)]
    pub unsafe fn step(self, at: NodeAt, key: u32) -> (bool, NodeAt, *const u32) {
        // SAFETY: the caller guarantees `at` points at one of this chunk's nodes.
        let node = unsafe { &*at.node };
        let bit = 1u64 << ((key >> at.shift) & 63);
        let is_node = node.vector & bit != 0;
        let child = node.base_node as usize + (node.vector & (bit - 1)).count_ones() as usize;
        let run = (node.leafvec & (bit | (bit - 1))).count_ones() as usize;
        let next =
            NodeAt { node: self.nodes().wrapping_add(child) as *const Node, shift: at.shift.wrapping_sub(STRIDE) };
        let leaf = (self.leaves() as *const u32).wrapping_add((node.base_leaf as usize + run).wrapping_sub(1));
        (is_node, next, leaf)
    }

    /// Bytes this chunk occupies (not counting its children).
    pub fn heap_bytes(self) -> usize {
        self.layout().size()
    }

    pub fn as_raw(self) -> *mut Header {
        self.0.as_ptr()
    }

    /// # Safety
    /// `raw` came from [`ChunkPtr::as_raw`] of a chunk that is still allocated.
    pub unsafe fn from_raw(raw: *mut Header) -> ChunkPtr {
        // SAFETY: guaranteed by the caller.
        ChunkPtr(unsafe { NonNull::new_unchecked(raw) })
    }

    /// Frees this chunk only.
    ///
    /// # Safety
    /// No reader can reach it any more, and it is freed once.
    pub unsafe fn free(self) {
        let layout = self.layout();
        // SAFETY: allocated with this layout in `allocate`.
        unsafe { dealloc(self.allocation(), layout) };
    }

    /// Frees this chunk and every chunk below it.
    ///
    /// # Safety
    /// As [`ChunkPtr::free`], for the whole subtree.
    pub unsafe fn free_tree(self) {
        for n in 0..self.header().child_count as usize {
            // SAFETY: n < child_count; children are owned by their parent and unreachable once
            // it is.
            unsafe { self.child(n).free_tree() };
        }
        // SAFETY: guaranteed by the caller.
        unsafe { self.free() };
    }
}

/// Lays out the poptrie nodes for `items` breadth-first, so each node's children form one
/// contiguous block.
fn build_nodes(items: &[Item]) -> (Vec<Node>, Vec<u32>) {
    let mut nodes = vec![Node::default()];
    let mut leaves = Vec::new();
    // (node index, depth, first key, item range, code inherited from covering prefixes)
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
        let mut rest = vector;
        let mut child_index = base_node;
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
            queue.push_back((child_index, depth + 1, child_base, next, end, values[position as usize]));
            child_index += 1;
            next = end;
        }

        let base_leaf = leaves.len();
        let mut leafvec = 0u64;
        let mut previous = None;
        for (position, &value) in values.iter().enumerate() {
            if vector & (1 << position) == 0 && previous != Some(value) {
                leafvec |= 1 << position;
                leaves.push(value);
                previous = Some(value);
            }
        }
        nodes[node_index] = Node { vector, leafvec, base_leaf: base_leaf as u32, base_node: base_node as u32 };
    }
    (nodes, leaves)
}

#[cfg(test)]
mod tests;
