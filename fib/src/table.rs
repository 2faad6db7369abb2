//! The table: one writer ([`Fib`]) staging changes and publishing them, any number of lock-free
//! readers ([`FibReader`]).
//!
//! Layout: a direct array indexed by the top 18 address bits. An entry is either a leaf (the best
//! match among prefixes of length <= 18) or a pointer to a chunk (see `chunk`) for the next 18
//! bits; IPv6 chunks can point to further chunks, down to /128. Prefixes of length
//! `18k+1 ..= 18k+18` live in the chunks of level `k`. For IPv4 a /24 is found in the chunk's root
//! node: three memory accesses (top entry, chunk line, leaf).
//!
//! Concurrency: readers load entries and child pointers with `Acquire` and never write. The writer
//! keeps its own mirror of every chunk's prefixes (readers never see it), builds replacement chunks
//! on [`Fib::publish`], swaps each in with one `Release` store, and hands the old one to
//! crossbeam-epoch, which frees it once every reader that could still hold it has unpinned. A
//! publish is atomic per chunk: a lookup racing with it sees, for the one chunk path it follows,
//! either the table before or after that publish.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_epoch::{self as epoch, Guard};

use crate::chunk::{prefetch, ChunkPtr, Header, LocalPrefix, NodeAt, CHILD_FLAG, MAX_NEXT_HOP, NODE_FLAG, NONE};
use crate::prefix::{net_mask, Address, Prefix, GROUP_BITS};

const TOP_SLOTS: usize = 1 << GROUP_BITS;

/// Errors from table updates.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FibError {
    #[error("next hop {0} is out of range (at most {MAX_NEXT_HOP})")]
    NextHopOutOfRange(u32),
}

/// A top-level entry: `code << 1 | 1`, or a chunk pointer (64-byte aligned, non-null) with
/// [`INDEXED`] set when the chunk has a root index.
#[inline(always)]
fn leaf_entry(code: u32) -> usize {
    ((code as usize) << 1) | 1
}

/// Top-level entry tag: the chunk has a root index (readers go there without reading the chunk).
const INDEXED: usize = 2;

fn chunk_entry(chunk: ChunkPtr) -> usize {
    chunk.as_raw() as usize | if chunk.is_indexed() { INDEXED } else { 0 }
}

/// The chunk of a top-level entry that is not a leaf.
///
/// # Safety
/// The chunk must still be allocated: the caller is pinned since before it was retired, or is
/// its owner.
#[inline(always)]
unsafe fn entry_chunk(entry: usize) -> ChunkPtr {
    // SAFETY: guaranteed by the caller.
    unsafe { ChunkPtr::from_raw((entry & !INDEXED) as *mut Header) }
}

/// What readers share: the top-level array. Dropped (with every chunk) when the writer and all
/// readers are gone.
struct Shared<A> {
    top: Box<[AtomicUsize]>,
    _family: PhantomData<A>,
}

impl<A> Drop for Shared<A> {
    fn drop(&mut self) {
        for entry in self.top.iter() {
            let e = entry.load(Ordering::Relaxed);
            if e & 1 == 0 {
                // SAFETY: no reader or writer is left, and every chunk reachable from the top
                // array is owned by it (replaced chunks were handed to the epoch collector).
                unsafe { entry_chunk(e).free_tree() };
            }
        }
    }
}

impl<A: Address> Shared<A> {
    #[inline(always)]
    fn lookup_code(&self, addr: A, _guard: &Guard) -> u32 {
        // SAFETY: group(0) < 2^18 = top.len().
        let entry = unsafe { self.top.get_unchecked(addr.group(0)) }.load(Ordering::Acquire);
        if entry & 1 != 0 {
            return (entry >> 1) as u32;
        }
        // SAFETY: a chunk stays allocated while any guard pinned before its retirement lives.
        let mut chunk = unsafe { entry_chunk(entry) };
        let mut code = if entry & INDEXED != 0 {
            // SAFETY: the entry says the chunk has an index; a group has 18 bits.
            unsafe { chunk.find_indexed(addr.group(1)) }
        } else {
            chunk.find(addr.group(1))
        };
        let mut level = 1;
        loop {
            if code & CHILD_FLAG == 0 {
                // After an index answer of NONE this reads NONE again (the index applied it).
                return if code == NONE { chunk.fallback() } else { code };
            }
            // SAFETY: a child code of this chunk indexes its child array (ChunkPtr::build).
            chunk = unsafe { chunk.child((code & !CHILD_FLAG) as usize) };
            level += 1;
            code = chunk.find(addr.group(level));
        }
    }
}

/// Lookups walking chunks at once: enough independent lookups in flight to hide memory latency.
const BATCH: usize = 32;
/// Room for lanes waiting to walk: a batch, plus what one more top-level group can add.
const POOL: usize = 2 * BATCH;

/// Lookups that continue below the top level, as parallel arrays indexed by lane. A lane's
/// fields are written before they are read; the arrays are set up once per `lookup_batch` call
/// (zeroing them per batch costs as much as a fast batch).
struct Lanes {
    /// Which address (and output slot) the lane serves.
    index: [u32; POOL],
    chunk: [*mut Header; POOL],
    at: [NodeAt; POOL],
    /// The chunk's key, computed once per chunk.
    key: [u32; POOL],
    /// The address group the lane's chunk covers.
    level: [u8; POOL],
    /// The leaf a lane reached, or the child slot it follows.
    leaf: [*const u32; POOL],
    /// The lane's `leaf` is a slot in its chunk's root index (where it starts, rather than at the
    /// root node, when the top-level entry says the chunk has one); a NONE there is final.
    from_index: [bool; POOL],
    slot: [*const AtomicPtr<Header>; POOL],
    /// A ring: lanes `head..head + pending` (mod [`POOL`]) hold lookups that left the top level
    /// and wait to walk. A ring, because moving the lanes left behind by a walk to the front
    /// costs a tenth of the lookups' time.
    head: usize,
    pending: usize,
}

impl Lanes {
    fn new() -> Lanes {
        Lanes {
            index: [0; POOL],
            chunk: [std::ptr::null_mut(); POOL],
            at: [NodeAt::dangling(); POOL],
            key: [0; POOL],
            level: [0; POOL],
            leaf: [std::ptr::null(); POOL],
            from_index: [false; POOL],
            slot: [std::ptr::null(); POOL],
            head: 0,
            pending: 0,
        }
    }
}

impl<A: Address> Shared<A> {
    /// Batched lookups in two stages. The top level answers most random addresses on its own
    /// (three in four, for a full IPv4 table); the others are queued as lanes and walk their
    /// chunks [`BATCH`] at a time, so that the chunk walks always overlap a full batch of
    /// misses, however few addresses of each group of 32 need them.
    #[inline(always)]
    fn lookup_many_portable(&self, addrs: &[A], out: &mut [Option<u32>], _guard: &Guard) {
        let mut lanes = Lanes::new();
        for (n, group) in addrs.chunks(BATCH).enumerate() {
            let base = n * BATCH;
            for addr in group {
                // SAFETY: group(0) < 2^18 = top.len().
                prefetch(unsafe { self.top.get_unchecked(addr.group(0)) } as *const AtomicUsize as *const u8);
            }
            for (i, addr) in group.iter().enumerate() {
                // SAFETY: group(0) < 2^18 = top.len().
                let entry = unsafe { self.top.get_unchecked(addr.group(0)) }.load(Ordering::Acquire);
                if entry & 1 != 0 {
                    out[base + i] = decode((entry >> 1) as u32);
                } else {
                    // SAFETY: live while the guard is pinned (see `lookup_code`).
                    let chunk = unsafe { entry_chunk(entry) };
                    let key = addr.group(1) as u32;
                    let from_index = entry & INDEXED != 0;
                    let leaf = chunk.index_slot(key);
                    prefetch(if from_index { leaf as *const u8 } else { chunk.as_raw() as *const u8 });
                    let lane = (lanes.head + lanes.pending) % POOL;
                    lanes.index[lane] = (base + i) as u32;
                    lanes.chunk[lane] = chunk.as_raw();
                    lanes.at[lane] = chunk.root();
                    lanes.leaf[lane] = leaf;
                    lanes.from_index[lane] = from_index;
                    lanes.key[lane] = key;
                    lanes.level[lane] = 1;
                    lanes.pending += 1;
                }
            }
            if lanes.pending >= BATCH {
                self.walk(addrs, out, &mut lanes, BATCH);
            }
        }
        let rest = lanes.pending;
        self.walk(addrs, out, &mut lanes, rest);
    }

    /// Walks the oldest `count` waiting lanes to their answers. Each round moves every unfinished
    /// lookup one memory access on and prefetches the next, so the misses of different lookups
    /// overlap instead of queueing behind each other (as VPP and DPDK's lpm_lookupx4 do). Lanes
    /// sit in three worklists (stepping through nodes, reading a leaf or root index slot,
    /// following a child pointer) kept compact without branches on the outcome of a step.
    #[inline(always)]
    fn walk(&self, addrs: &[A], out: &mut [Option<u32>], lanes: &mut Lanes, count: usize) {
        debug_assert!(count <= BATCH);
        let (mut stepping, mut n_stepping) = ([0u8; BATCH], 0);
        let (mut at_leaf, mut n_at_leaf) = ([0u8; BATCH], 0);
        for k in 0..count {
            let i = (lanes.head + k) % POOL;
            let from_index = lanes.from_index[i];
            stepping[n_stepping] = i as u8;
            n_stepping += !from_index as usize;
            at_leaf[n_at_leaf] = i as u8;
            n_at_leaf += from_index as usize;
        }
        let (mut at_child, mut n_at_child) = ([0u8; BATCH], 0);
        let mut codes = [0u32; POOL];
        while n_stepping + n_at_leaf + n_at_child > 0 {
            // Leaves and index slots reached last round (their lines prefetched since).
            let (mut next_child, mut n_next_child) = ([0u8; BATCH], 0);
            let (mut next_node, mut n_next_node) = ([0u8; BATCH], 0);
            for &i in &at_leaf[..n_at_leaf] {
                let i = i as usize;
                // SAFETY: the lane's chunk is live under the guard; `leaf` came from a step that
                // reached a leaf, so it lies inside that chunk's leaf array, or is the lane's
                // slot in the root index of an indexed chunk.
                let (chunk, code) = unsafe { (ChunkPtr::from_raw(lanes.chunk[i]), *lanes.leaf[i]) };
                if code & CHILD_FLAG == 0 {
                    codes[i] = if code == NONE && !lanes.from_index[i] { chunk.fallback() } else { code };
                } else if code >= NODE_FLAG {
                    let at = chunk.below_root(code);
                    prefetch(at.as_ptr());
                    lanes.at[i] = at;
                    lanes.from_index[i] = false;
                    next_node[n_next_node] = i as u8;
                    n_next_node += 1;
                } else {
                    // SAFETY: a child code of this chunk indexes its child array (ChunkPtr::build).
                    let slot: *const AtomicPtr<Header> = unsafe { chunk.child_slot((code & !CHILD_FLAG) as usize) };
                    prefetch(slot as *const u8);
                    lanes.slot[i] = slot;
                    next_child[n_next_child] = i as u8;
                    n_next_child += 1;
                }
            }
            // One stride for every lane inside a chunk; compacted in place.
            let (mut kept, mut n_leaf) = (0, 0);
            for k in 0..n_stepping {
                let i = stepping[k] as usize;
                // SAFETY: the lane's chunk is live under the guard and `at` is one of its nodes.
                let chunk = unsafe { ChunkPtr::from_raw(lanes.chunk[i]) };
                // SAFETY: `at` is one of this chunk's nodes: the lane is stepping only after its
                // root, an index node code or a step that continued was stored there.
                let (is_node, next, leaf) = unsafe { chunk.step(lanes.at[i], lanes.key[i]) };
                lanes.at[i] = next;
                lanes.leaf[i] = leaf;
                prefetch(if is_node { next.as_ptr() } else { leaf as *const u8 });
                stepping[kept] = i as u8;
                kept += is_node as usize;
                at_leaf[n_leaf] = i as u8;
                n_leaf += !is_node as usize;
            }
            n_stepping = kept;
            n_at_leaf = n_leaf;
            // Lanes the index sent to a node (prefetched above) step from there next round.
            for &i in &next_node[..n_next_node] {
                stepping[n_stepping] = i;
                n_stepping += 1;
            }
            // Child pointers whose slots were prefetched last round: start in the child's root
            // next round.
            for &i in &at_child[..n_at_child] {
                let i = i as usize;
                // SAFETY: the slot lives inside a chunk kept alive by the guard; child pointers
                // are never null.
                let child = unsafe { ChunkPtr::from_raw((*lanes.slot[i]).load(Ordering::Acquire)) };
                prefetch(child.as_raw() as *const u8);
                let level = lanes.level[i] as usize + 1;
                lanes.chunk[i] = child.as_raw();
                lanes.at[i] = child.root();
                lanes.key[i] = addrs[lanes.index[i] as usize].group(level) as u32;
                lanes.level[i] = level as u8;
                stepping[n_stepping] = i as u8;
                n_stepping += 1;
            }
            at_child = next_child;
            n_at_child = n_next_child;
        }
        for k in 0..count {
            let lane = (lanes.head + k) % POOL;
            out[lanes.index[lane] as usize] = decode(codes[lane]);
        }
        lanes.head = (lanes.head + count) % POOL;
        lanes.pending -= count;
    }
}

/// Runs lookups compiled for POPCNT when the CPU has it (every x86-64 CPU of the last 15 years,
/// but not the baseline the compiler targets by default). The node steps are two population
/// counts each; in software each is a dozen instructions, and lookups are bound by that work
/// rather than by memory once the misses overlap. Elsewhere, and on CPUs without it, the
/// portable build runs.
impl<A: Address> Shared<A> {
    #[inline]
    fn lookup_one(&self, addr: A, guard: &Guard) -> u32 {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("popcnt") {
            // SAFETY: the CPU has POPCNT.
            return unsafe { self.lookup_one_popcnt(addr, guard) };
        }
        self.lookup_code(addr, guard)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "popcnt")]
    unsafe fn lookup_one_popcnt(&self, addr: A, guard: &Guard) -> u32 {
        self.lookup_code(addr, guard)
    }

    fn lookup_many(&self, addrs: &[A], out: &mut [Option<u32>], guard: &Guard) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("popcnt") {
            // SAFETY: the CPU has POPCNT.
            return unsafe { self.lookup_many_popcnt(addrs, out, guard) };
        }
        self.lookup_many_portable(addrs, out, guard)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "popcnt")]
    unsafe fn lookup_many_popcnt(&self, addrs: &[A], out: &mut [Option<u32>], guard: &Guard) {
        self.lookup_many_portable(addrs, out, guard)
    }
}

#[inline(always)]
fn decode(code: u32) -> Option<u32> {
    (code != NONE).then_some(code)
}

/// A read handle: cheap to clone, `Send`, lookups never lock or block.
pub struct FibReader<A: Address> {
    shared: Arc<Shared<A>>,
}

impl<A: Address> Clone for FibReader<A> {
    fn clone(&self) -> Self {
        FibReader { shared: self.shared.clone() }
    }
}

impl<A: Address> std::fmt::Debug for FibReader<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FibReader").finish_non_exhaustive()
    }
}

impl<A: Address> FibReader<A> {
    /// Longest-prefix match for one address (pins the epoch for this one lookup).
    pub fn lookup(&self, addr: A) -> Option<u32> {
        self.pin().lookup(addr)
    }

    /// Looks up every address of `addrs` into `out` under one epoch pin.
    pub fn lookup_batch(&self, addrs: &[A], out: &mut [Option<u32>]) {
        self.pin().lookup_batch(addrs, out)
    }

    /// A view for many lookups under one pin: what a packet worker holds for one batch. Holding
    /// it for long delays freeing replaced chunks, nothing else.
    pub fn pin(&self) -> FibView<'_, A> {
        FibView { shared: &self.shared, guard: epoch::pin() }
    }
}

/// Lookups under one epoch pin; see [`FibReader::pin`].
pub struct FibView<'a, A: Address> {
    shared: &'a Shared<A>,
    guard: Guard,
}

impl<A: Address> std::fmt::Debug for FibView<'_, A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FibView").finish_non_exhaustive()
    }
}

impl<A: Address> FibView<'_, A> {
    #[inline]
    pub fn lookup(&self, addr: A) -> Option<u32> {
        decode(self.shared.lookup_one(addr, &self.guard))
    }

    /// Looks up many addresses, interleaving their memory accesses: several times the rate of
    /// one-at-a-time lookups on tables larger than the cache.
    pub fn lookup_batch(&self, addrs: &[A], out: &mut [Option<u32>]) {
        assert_eq!(addrs.len(), out.len(), "one output slot per address");
        self.shared.lookup_many(addrs, out, &self.guard);
    }
}

/// The writer's record of one chunk: its prefixes and children, and what is published for it.
#[derive(Default)]
struct ChunkMirror {
    /// Sorted by `(bits, len)`.
    prefixes: Vec<LocalPrefix>,
    /// The chunks below (IPv6 only). Boxed: most chunks have none, and a full IPv4 table has
    /// 69,000 mirrors.
    below: Option<Box<Below>>,
    published: Option<ChunkPtr>,
    published_fallback: u32,
    /// Own prefixes or the set of children changed: rebuild on publish.
    dirty: bool,
    /// Something below changed.
    dirty_below: bool,
    /// This mirror's key is in its parent's `dirty_children`.
    queued: bool,
}

#[derive(Default)]
struct Below {
    /// Sorted by key; a child's position here is its index in the published chunk.
    children: Vec<(u32, ChunkMirror)>,
    /// Keys of children changed since the last publish (each once: see `queued`).
    dirty_children: Vec<u32>,
}

impl ChunkMirror {
    fn is_empty(&self) -> bool {
        self.prefixes.is_empty() && self.children().is_empty()
    }

    fn children(&self) -> &[(u32, ChunkMirror)] {
        self.below.as_ref().map_or(&[], |below| &below.children)
    }

    fn children_mut(&mut self) -> &mut [(u32, ChunkMirror)] {
        self.below.as_mut().map_or(&mut [], |below| &mut below.children)
    }

    fn child_position(&self, key: u32) -> Result<usize, usize> {
        self.children().binary_search_by_key(&key, |c| c.0)
    }

    fn child(&self, key: u32) -> Option<&ChunkMirror> {
        self.child_position(key).ok().map(|at| &self.children()[at].1)
    }

    /// The child at `key`, queued for the next publish; created when `create` is set.
    fn child_for_update(&mut self, key: u32, create: bool) -> Option<&mut ChunkMirror> {
        let at = match self.child_position(key) {
            Ok(at) => at,
            Err(at) if create => {
                self.below.get_or_insert_with(Default::default).children.insert(at, (key, ChunkMirror::default()));
                self.dirty = true;
                at
            }
            Err(_) => return None,
        };
        self.dirty_below = true;
        let below = self.below.as_mut().expect("the child exists");
        let child = &mut below.children[at].1;
        if !child.queued {
            child.queued = true;
            below.dirty_children.push(key);
        }
        Some(&mut below.children[at].1)
    }
}

/// For each child key (ascending), the best match among `prefixes` (sorted by `(bits, len)`, so
/// in pre-order) or `fallback`: one sweep with a stack of nested prefixes. A prefix popped for
/// not covering a key ends before it, so it covers no later key either.
fn child_fallbacks(prefixes: &[LocalPrefix], keys: impl Iterator<Item = u32>, fallback: u32) -> Vec<u32> {
    let mut stack: Vec<&LocalPrefix> = Vec::new();
    let mut next = prefixes.iter().peekable();
    keys.map(|key| {
        while let Some(p) = next.next_if(|p| p.bits() <= key) {
            while stack.last().is_some_and(|top| !top.covers(p.bits())) {
                stack.pop();
            }
            stack.push(p);
        }
        while stack.last().is_some_and(|top| !top.covers(key)) {
            stack.pop();
        }
        stack.last().map_or(fallback, |p| p.next_hop)
    })
    .collect()
}

/// Things the publisher collects: chunks to retire once the new ones are visible, and the change
/// in published bytes.
#[derive(Default)]
struct PublishLog {
    retired: Vec<ChunkPtr>,
    bytes_added: usize,
    bytes_removed: usize,
}

impl PublishLog {
    fn install(&mut self, chunk: ChunkPtr) -> ChunkPtr {
        self.bytes_added += chunk.heap_bytes();
        chunk
    }

    fn retire(&mut self, chunk: ChunkPtr) {
        self.bytes_removed += chunk.heap_bytes();
        self.retired.push(chunk);
    }
}

/// The writer: a longest-prefix-match table from [`Prefix`] to a next hop (an adjacency index).
///
/// Changes are staged by [`insert`](Fib::insert) / [`remove`](Fib::remove) and become visible to
/// readers on [`publish`](Fib::publish). [`get`](Fib::get), [`len`](Fib::len) and
/// [`iter`](Fib::iter) describe the staged table; [`lookup`](Fib::lookup) the published one.
pub struct Fib<A: Address> {
    shared: Arc<Shared<A>>,
    /// Prefixes of length 0..=18, keyed by (len, top 18 bits).
    short: HashMap<(u8, u32), u32>,
    /// Per top slot: the best short match and its length (-1: none).
    short_best: Box<[(u32, i8)]>,
    slots: Box<[Option<Box<ChunkMirror>>]>,
    dirty_slots: Vec<u32>,
    dirty_mark: Box<[u64]>,
    len: usize,
    published_bytes: usize,
    _family: PhantomData<A>,
}

// SAFETY: the raw chunk pointers in the mirror are owned by this writer (or the shared top array
// it also owns); moving the writer to another thread moves that ownership with it.
unsafe impl<A: Address> Send for Fib<A> {}
// SAFETY: every `&self` method only reads the mirror (plain data) or looks up the published
// table like any reader; mutation needs `&mut self`.
unsafe impl<A: Address> Sync for Fib<A> {}

impl<A: Address> std::fmt::Debug for Fib<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fib").field("len", &self.len).finish_non_exhaustive()
    }
}

impl<A: Address> Default for Fib<A> {
    fn default() -> Self {
        Self::new()
    }
}

/// Where a prefix lives: its top slot and, past /16, the path of chunk indices below it.
struct Placement {
    slot: usize,
    /// Group keys for chunk levels 1.. down to the owning chunk (empty for len <= 18).
    path: Vec<u32>,
    local: LocalPrefix,
}

impl<A: Address> Fib<A> {
    pub fn new() -> Self {
        Fib {
            shared: Arc::new(Shared {
                top: (0..TOP_SLOTS).map(|_| AtomicUsize::new(leaf_entry(NONE))).collect(),
                _family: PhantomData,
            }),
            short: HashMap::new(),
            short_best: vec![(NONE, -1); TOP_SLOTS].into_boxed_slice(),
            slots: (0..TOP_SLOTS).map(|_| None).collect(),
            dirty_slots: Vec::new(),
            dirty_mark: vec![0; TOP_SLOTS / 64].into_boxed_slice(),
            len: 0,
            published_bytes: 0,
            _family: PhantomData,
        }
    }

    /// A read handle on the published table.
    pub fn reader(&self) -> FibReader<A> {
        FibReader { shared: self.shared.clone() }
    }

    /// Number of prefixes in the (staged) table.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn place(prefix: &Prefix<A>, next_hop: u32) -> Placement {
        let addr = prefix.addr();
        let len = prefix.len();
        let slot = addr.group(0);
        if len as u32 <= GROUP_BITS {
            return Placement { slot, path: Vec::new(), local: LocalPrefix::new(slot as u32, len, next_hop) };
        }
        let level = (len as usize - 1) / GROUP_BITS as usize;
        let path = (1..=level).map(|l| addr.group(l) as u32).collect();
        let local_len = len - (GROUP_BITS as usize * level) as u8;
        let bits = addr.group(level) as u32;
        Placement { slot, path, local: LocalPrefix::new(bits, local_len, next_hop) }
    }

    fn mark_slot(&mut self, slot: usize) {
        let (word, bit) = (slot / 64, 1u64 << (slot % 64));
        if self.dirty_mark[word] & bit == 0 {
            self.dirty_mark[word] |= bit;
            self.dirty_slots.push(slot as u32);
        }
    }

    /// Slots covered by a short prefix (len <= 18) whose top bits are `bits`.
    fn short_span(bits: u32, len: u8) -> std::ops::Range<usize> {
        let start = bits as usize;
        start..start + (1usize << (GROUP_BITS - len as u32))
    }

    /// The best short prefix strictly shorter than `len` covering the block `bits/len`: the
    /// same for every slot of the block, so a removal computes it once.
    fn best_shorter_than(&self, bits: u32, len: u8) -> (u32, i8) {
        (0..len)
            .rev()
            .find_map(|l| {
                let covering = (net_mask(GROUP_BITS as u8, l) as u32) & bits;
                self.short.get(&(l, covering)).map(|&nh| (nh, l as i8))
            })
            .unwrap_or((NONE, -1))
    }

    /// Inserts or replaces a route; returns the previous next hop. Visible after `publish`.
    pub fn insert(&mut self, prefix: Prefix<A>, next_hop: u32) -> Result<Option<u32>, FibError> {
        if next_hop > MAX_NEXT_HOP {
            return Err(FibError::NextHopOutOfRange(next_hop));
        }
        let place = Self::place(&prefix, next_hop);
        let previous = if place.path.is_empty() {
            let (bits, len) = (place.local.bits(), place.local.len());
            let previous = self.short.insert((len, bits), next_hop);
            for slot in Self::short_span(bits, len) {
                if self.short_best[slot].1 <= len as i8 {
                    self.short_best[slot] = (next_hop, len as i8);
                    self.mark_slot(slot);
                }
            }
            previous
        } else {
            self.mark_slot(place.slot);
            let mut mirror: &mut ChunkMirror = self.slots[place.slot].get_or_insert_with(Default::default);
            for &key in &place.path[..place.path.len() - 1] {
                mirror = mirror.child_for_update(key, true).expect("created");
            }
            match mirror.prefixes.binary_search_by_key(&place.local.key(), LocalPrefix::key) {
                Ok(at) => {
                    let old = std::mem::replace(&mut mirror.prefixes[at].next_hop, next_hop);
                    mirror.dirty |= old != next_hop;
                    Some(old)
                }
                Err(at) => {
                    // Grow by an eighth rather than double: a full table's mirrors hold a
                    // million prefixes, and doubling leaves a quarter of that unused on average.
                    if mirror.prefixes.len() == mirror.prefixes.capacity() {
                        mirror.prefixes.reserve_exact(mirror.prefixes.len() / 8 + 2);
                    }
                    mirror.prefixes.insert(at, place.local);
                    mirror.dirty = true;
                    None
                }
            }
        };
        if previous.is_none() {
            self.len += 1;
        }
        Ok(previous)
    }

    /// Removes a route; returns its next hop. Visible after `publish`.
    pub fn remove(&mut self, prefix: &Prefix<A>) -> Option<u32> {
        let place = Self::place(prefix, 0);
        let removed = if place.path.is_empty() {
            let (bits, len) = (place.local.bits(), place.local.len());
            let removed = self.short.remove(&(len, bits))?;
            // Slots whose best was this prefix fall back to the best shorter one; slots with a
            // longer best keep it.
            let fallback = self.best_shorter_than(bits, len);
            for slot in Self::short_span(bits, len) {
                if self.short_best[slot].1 == len as i8 {
                    self.short_best[slot] = fallback;
                    self.mark_slot(slot);
                }
            }
            removed
        } else {
            let removed = Self::remove_below(
                self.slots[place.slot].as_mut()?,
                &place.path[..place.path.len() - 1],
                &place.local,
            )?;
            self.mark_slot(place.slot);
            removed
        };
        self.len -= 1;
        Some(removed)
    }

    /// Removes `local` from the chunk at `path` below `mirror`; empty chunks on the way are left
    /// in place (marked dirty) and dropped by `publish`, which also retires what they published.
    fn remove_below(mirror: &mut ChunkMirror, path: &[u32], local: &LocalPrefix) -> Option<u32> {
        match path.split_first() {
            None => {
                let at = mirror.prefixes.binary_search_by_key(&local.key(), LocalPrefix::key).ok()?;
                mirror.dirty = true;
                Some(mirror.prefixes.remove(at).next_hop)
            }
            Some((&key, rest)) => {
                // Queue only when something is found, so a miss leaves no trace.
                mirror.child(key)?;
                Self::remove_below(mirror.child_for_update(key, false)?, rest, local)
            }
        }
    }

    /// The next hop stored for exactly this prefix (staged table).
    pub fn get(&self, prefix: &Prefix<A>) -> Option<u32> {
        let place = Self::place(prefix, 0);
        if place.path.is_empty() {
            return self.short.get(&(place.local.len(), place.local.bits())).copied();
        }
        let mut mirror: &ChunkMirror = self.slots[place.slot].as_ref()?;
        for &key in &place.path[..place.path.len() - 1] {
            mirror = mirror.child(key)?;
        }
        let at = mirror.prefixes.binary_search_by_key(&place.local.key(), LocalPrefix::key).ok()?;
        Some(mirror.prefixes[at].next_hop)
    }

    /// Longest-prefix match on the published table (the readers' view).
    pub fn lookup(&self, addr: A) -> Option<u32> {
        decode(self.shared.lookup_one(addr, &epoch::pin()))
    }

    /// Every staged route, in address then length order.
    pub fn iter(&self) -> impl Iterator<Item = (Prefix<A>, u32)> + '_ {
        let mut routes: Vec<(Prefix<A>, u32)> =
            self.short.iter().map(|(&(len, bits), &nh)| (prefix_at::<A>(group_bits::<A>(bits, 0), len), nh)).collect();
        for (slot, mirror) in self.slots.iter().enumerate() {
            if let Some(mirror) = mirror {
                collect_routes::<A>(mirror, group_bits::<A>(slot as u32, 0), 1, &mut routes);
            }
        }
        routes.sort_unstable_by_key(|(p, _)| (p.addr(), p.len()));
        routes.into_iter()
    }

    /// Bytes used: the published lookup structure (what readers touch) and the writer's mirror.
    pub fn memory(&self) -> MemoryUse {
        let top = TOP_SLOTS * std::mem::size_of::<AtomicUsize>();
        let mut mirror = TOP_SLOTS * (size_of::<Option<Box<ChunkMirror>>>() + size_of::<(u32, i8)>())
            + self.short.capacity() * (size_of::<((u8, u32), u32)>() + 1);
        for m in self.slots.iter().flatten() {
            mirror += size_of::<ChunkMirror>() + mirror_bytes(m);
        }
        MemoryUse { lookup_bytes: top + self.published_bytes, writer_bytes: mirror }
    }

    /// Makes every staged change visible to readers.
    pub fn publish(&mut self) {
        let guard = epoch::pin();
        let mut log = PublishLog::default();
        let mut dirty = std::mem::take(&mut self.dirty_slots);
        for &slot in &dirty {
            let slot = slot as usize;
            self.dirty_mark[slot / 64] &= !(1u64 << (slot % 64));
            let fallback = self.short_best[slot].0;
            let entry = &self.shared.top[slot];
            let keep = match self.slots[slot].as_mut() {
                Some(mirror) => {
                    if let Some(new) = publish_chunk(mirror, fallback, true, &mut log) {
                        entry.store(chunk_entry(new), Ordering::Release);
                    }
                    !mirror.is_empty()
                }
                None => {
                    entry.store(leaf_entry(fallback), Ordering::Release);
                    true
                }
            };
            if !keep {
                entry.store(leaf_entry(fallback), Ordering::Release);
                if let Some(chunk) = self.slots[slot].take().and_then(|m| m.published) {
                    log.retire(chunk);
                }
            }
        }
        dirty.clear();
        self.dirty_slots = dirty;
        self.published_bytes = self.published_bytes + log.bytes_added - log.bytes_removed;
        for chunk in log.retired {
            let chunk = Retired(chunk);
            // SAFETY: every store that unlinked `chunk` happened above, before this defer; readers
            // that loaded it are pinned in an epoch the collector waits out before running this.
            // Only the chunk itself is freed: its children live on in its replacement.
            unsafe {
                guard.defer_unchecked(move || {
                    let chunk = chunk;
                    chunk.0.free();
                })
            };
        }
        guard.flush();
    }
}

struct Retired(ChunkPtr);
// SAFETY: a retired chunk is no longer reachable; whichever thread runs the destructor owns it.
unsafe impl Send for Retired {}

/// Brings the published chunk for `mirror` up to date; returns the new pointer if it changed.
/// Children left empty are dropped here (their chunks retired); a mirror that is itself empty
/// publishes nothing, and its parent drops it. Only chunks hung from the top level may get a
/// root index (`may_index`): the tag that tells readers so lives in the top-level entry.
fn publish_chunk(mirror: &mut ChunkMirror, fallback: u32, may_index: bool, log: &mut PublishLog) -> Option<ChunkPtr> {
    let own_changed = mirror.dirty || mirror.published.is_none();
    let fallback_changed = mirror.published_fallback != fallback;
    let dirty_children =
        mirror.below.as_mut().map(|below| std::mem::take(&mut below.dirty_children)).unwrap_or_default();
    // Unless the parent is rebuilt from the mirror, a replaced child is swapped into it in place.
    let in_place = if own_changed { None } else { mirror.published };
    let mut emptied = false;
    if own_changed || fallback_changed {
        // Every child's fallback may have moved.
        let fallbacks = child_fallbacks(&mirror.prefixes, mirror.children().iter().map(|c| c.0), fallback);
        for (position, ((_, child), child_fallback)) in mirror.children_mut().iter_mut().zip(fallbacks).enumerate() {
            emptied |= refresh_child(child, child_fallback, position, in_place, log);
        }
    } else {
        // Only queued children changed, and their fallbacks did not.
        for key in dirty_children {
            let position = mirror.child_position(key).expect("children are removed only here");
            let child = &mut mirror.children_mut()[position].1;
            let child_fallback = child.published_fallback;
            emptied |= refresh_child(child, child_fallback, position, in_place, log);
        }
    }
    if emptied {
        let below = mirror.below.as_mut().expect("a child emptied");
        below.children.retain(|(_, child)| {
            if child.is_empty() {
                if let Some(chunk) = child.published {
                    log.retire(chunk);
                }
            }
            !child.is_empty()
        });
        if below.children.is_empty() {
            mirror.below = None;
        }
        mirror.dirty = true;
    }
    mirror.dirty_below = false;
    if mirror.is_empty() {
        return None;
    }

    let rebuild = mirror.dirty || mirror.published.is_none();
    if !rebuild && !fallback_changed {
        return None;
    }
    let chunk = match mirror.published {
        Some(current) if !rebuild => current.with_fallback(fallback),
        _ => {
            let children: Vec<(u32, ChunkPtr)> =
                mirror.children().iter().map(|(i, c)| (*i, c.published.expect("children publish first"))).collect();
            if mirror.prefixes.capacity() > mirror.prefixes.len() * 5 / 4 + 4 {
                mirror.prefixes.shrink_to_fit(); // bulk loads leave Vec growth slack behind
            }
            ChunkPtr::build(&mirror.prefixes, &children, fallback, may_index)
        }
    };
    let new = log.install(chunk);
    if let Some(old) = mirror.published.replace(new) {
        log.retire(old);
    }
    mirror.published_fallback = fallback;
    mirror.dirty = false;
    Some(new)
}

/// Publishes `child` if it is stale; returns whether it is now empty (for its parent to drop).
fn refresh_child(
    child: &mut ChunkMirror,
    fallback: u32,
    position: usize,
    in_place: Option<ChunkPtr>,
    log: &mut PublishLog,
) -> bool {
    child.queued = false;
    let stale = child.dirty || child.dirty_below || child.published.is_none();
    if !stale && child.published_fallback == fallback {
        return false;
    }
    let new = publish_chunk(child, fallback, false, log);
    if child.is_empty() {
        return true;
    }
    if let (Some(new), Some(parent)) = (new, in_place) {
        // SAFETY: `in_place` is the parent as published from this mirror, given only when the
        // mirror has not changed since (`publish_chunk`), so it has a child at each of the
        // mirror's positions, `position` among them.
        unsafe { parent.child_slot(position) }.store(new.as_raw(), Ordering::Release);
    }
    false
}

fn prefix_at<A: Address>(bits: u128, len: u8) -> Prefix<A> {
    Prefix::new_masked(A::from_u128(bits), len).expect("length within family")
}

/// The address bits of 18-bit group `key` at `level` (inverse of [`Address::group`]).
fn group_bits<A: Address>(key: u32, level: u32) -> u128 {
    let end = GROUP_BITS * (level + 1);
    let bits = A::BITS as u32;
    if end <= bits {
        (key as u128) << (bits - end)
    } else {
        (key as u128) >> (end - bits)
    }
}

fn collect_routes<A: Address>(mirror: &ChunkMirror, base: u128, level: u32, out: &mut Vec<(Prefix<A>, u32)>) {
    for p in &mirror.prefixes {
        out.push((
            prefix_at(base | group_bits::<A>(p.bits(), level), (GROUP_BITS * level) as u8 + p.len()),
            p.next_hop,
        ));
    }
    for (key, child) in mirror.children() {
        collect_routes(child, base | group_bits::<A>(*key, level), level + 1, out);
    }
}

fn mirror_bytes(m: &ChunkMirror) -> usize {
    let own = m.prefixes.capacity() * size_of::<LocalPrefix>();
    let kids: usize = m.children().iter().map(|(_, c)| mirror_bytes(c)).sum::<usize>()
        + m.below.as_ref().map_or(0, |below| {
            size_of::<Below>()
                + below.children.capacity() * size_of::<(u32, ChunkMirror)>()
                + below.dirty_children.capacity() * size_of::<u32>()
        });
    own + kids
}

/// Memory used by a table, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryUse {
    /// The published structure readers use: top array and chunks.
    pub lookup_bytes: usize,
    /// The writer's mirror of every prefix, used to rebuild chunks.
    pub writer_bytes: usize,
}

impl MemoryUse {
    pub fn total(&self) -> usize {
        self.lookup_bytes + self.writer_bytes
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;
    use crate::compare::{addresses_in_prefixes, uniform_addresses};

    /// The CPU-specific build of the lookups (POPCNT, where there is one) and the portable one
    /// answer alike; the property tests only reach whichever this CPU dispatches to.
    #[test]
    fn portable_and_dispatched_lookups_agree() {
        let mut fib = Fib::<Ipv6Addr>::new();
        let mut routes = Vec::new();
        for (i, p) in
            ["::/0", "2001:db8::/32", "2001:db8:1::/48", "2001:db8:1:2::/64", "2001:db8:1:2:3:4:5:6/128", "2400::/12"]
                .iter()
                .enumerate()
        {
            let prefix: Prefix<Ipv6Addr> = p.parse().unwrap();
            fib.insert(prefix, i as u32).unwrap();
            routes.push((prefix, i as u32));
        }
        fib.publish();
        let mut addrs = addresses_in_prefixes(&routes, 2000, 9);
        addrs.extend(uniform_addresses::<Ipv6Addr>(2000, 10));
        let guard = epoch::pin();
        let (mut portable, mut dispatched) = (vec![None; addrs.len()], vec![None; addrs.len()]);
        fib.shared.lookup_many_portable(&addrs, &mut portable, &guard);
        fib.shared.lookup_many(&addrs, &mut dispatched, &guard);
        assert_eq!(portable, dispatched);
        for (a, got) in addrs.iter().zip(&portable) {
            assert_eq!(*got, decode(fib.shared.lookup_code(*a, &guard)), "{a}");
            assert_eq!(*got, decode(fib.shared.lookup_one(*a, &guard)), "{a}");
        }
        assert!(portable.contains(&Some(4)), "the /128 is reached");
    }
}
