//! The table: one writer ([`Fib`]) staging changes and publishing them, any number of lock-free
//! readers ([`FibReader`]).
//!
//! Layout: a direct array indexed by the top 16 address bits. An entry is either a leaf (the best
//! match among prefixes of length <= 16) or a pointer to a [`Chunk`] for the next 16 bits; IPv6
//! chunks can point to further chunks, down to /128. Prefixes of length `16k+1 ..= 16k+16` live in
//! the chunks of level `k`.
//!
//! Concurrency: readers load entries and child pointers with `Acquire` and never write. The writer
//! keeps its own mirror of every chunk's prefixes (readers never see it), builds replacement chunks
//! on [`Fib::publish`], swaps each in with one `Release` store, and hands the old one to
//! crossbeam-epoch, which frees it once every reader that could still hold it has unpinned. A
//! publish is atomic per chunk: a lookup racing with it sees, for the one chunk path it follows,
//! either the table before or after that publish.

use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_epoch::{self as epoch, Guard};

use crate::chunk::{Chunk, LocalPrefix, CHILD_FLAG, MAX_NEXT_HOP, NONE};
use crate::prefix::{net_mask, Address, Prefix};

const TOP_SLOTS: usize = 1 << 16;

/// Errors from table updates.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FibError {
    #[error("next hop {0} is out of range (at most {MAX_NEXT_HOP})")]
    NextHopOutOfRange(u32),
}

/// A top-level entry: a chunk pointer (even, non-null) or `code << 1 | 1`.
#[inline(always)]
fn leaf_entry(code: u32) -> usize {
    ((code as usize) << 1) | 1
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
                unsafe { Chunk::free_tree(e as *mut Chunk) };
            }
        }
    }
}

impl<A: Address> Shared<A> {
    #[inline(always)]
    fn lookup_code(&self, addr: A, _guard: &Guard) -> u32 {
        // SAFETY: group16(0) < 2^16 = top.len().
        let entry = unsafe { self.top.get_unchecked(addr.group16(0)) }.load(Ordering::Acquire);
        if entry & 1 != 0 {
            return (entry >> 1) as u32;
        }
        // SAFETY: a chunk stays allocated while any guard pinned before its retirement lives.
        let mut chunk = unsafe { &*(entry as *const Chunk) };
        let mut level = 1;
        loop {
            let code = chunk.find(addr.group16(level));
            if code == NONE {
                return chunk.fallback;
            }
            if code & CHILD_FLAG == 0 {
                return code;
            }
            let child = &chunk.children[(code & !CHILD_FLAG) as usize];
            // SAFETY: as above; child pointers are never null.
            chunk = unsafe { &*child.load(Ordering::Acquire) };
            level += 1;
        }
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
        decode(self.shared.lookup_code(addr, &self.guard))
    }

    pub fn lookup_batch(&self, addrs: &[A], out: &mut [Option<u32>]) {
        assert_eq!(addrs.len(), out.len(), "one output slot per address");
        for (addr, slot) in addrs.iter().zip(out.iter_mut()) {
            *slot = decode(self.shared.lookup_code(*addr, &self.guard));
        }
    }
}

/// The writer's record of one chunk: its prefixes and children, and what is published for it.
#[derive(Default)]
struct ChunkMirror {
    /// Sorted by `(bits, len)`.
    prefixes: Vec<LocalPrefix>,
    children: BTreeMap<u16, ChunkMirror>,
    published: Option<*mut Chunk>,
    published_fallback: u32,
    /// Own prefixes or the set of children changed: rebuild on publish.
    dirty: bool,
    /// Something below changed.
    dirty_below: bool,
}

/// The longest of `prefixes` (sorted by `(bits, len)`) covering `index`: among covering prefixes
/// the sort puts longer ones later.
fn best_match(prefixes: &[LocalPrefix], index: u16) -> Option<u32> {
    prefixes.iter().filter(|p| p.covers(index)).last().map(|p| p.next_hop)
}

impl ChunkMirror {
    fn is_empty(&self) -> bool {
        self.prefixes.is_empty() && self.children.is_empty()
    }
}

/// Things the publisher collects: chunks to retire once the new ones are visible, and the change
/// in published bytes.
#[derive(Default)]
struct PublishLog {
    retired: Vec<*mut Chunk>,
    bytes_added: usize,
    bytes_removed: usize,
}

impl PublishLog {
    fn install(&mut self, chunk: Chunk) -> *mut Chunk {
        self.bytes_added += chunk.heap_bytes();
        Box::into_raw(Box::new(chunk))
    }

    fn retire(&mut self, chunk: *mut Chunk) {
        // SAFETY: `chunk` is a live published chunk; only the writer frees chunks.
        self.bytes_removed += unsafe { (*chunk).heap_bytes() };
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
    /// Prefixes of length 0..=16, keyed by (len, top 16 bits).
    short: HashMap<(u8, u16), u32>,
    /// Per top slot: the best short match and its length (-1: none).
    short_best: Box<[(u32, i8)]>,
    slots: Box<[Option<ChunkMirror>]>,
    dirty_slots: Vec<u16>,
    dirty_mark: Box<[u64]>,
    len: usize,
    published_bytes: usize,
    _family: PhantomData<A>,
}

// SAFETY: the raw chunk pointers in the mirror are owned by this writer (or the shared top array
// it also owns); moving the writer to another thread moves that ownership with it.
unsafe impl<A: Address> Send for Fib<A> {}

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
    /// 16-bit indices for chunk levels 1.. down to the owning chunk (empty for len <= 16).
    path: Vec<u16>,
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
        let slot = addr.group16(0);
        if len <= 16 {
            return Placement { slot, path: Vec::new(), local: LocalPrefix { bits: slot as u16, len, next_hop } };
        }
        let level = (len as usize - 1) / 16;
        let path = (1..=level).map(|l| addr.group16(l) as u16).collect();
        let local_len = len - 16 * level as u8;
        let bits = addr.group16(level) as u16;
        Placement { slot, path, local: LocalPrefix { bits, len: local_len, next_hop } }
    }

    fn mark_slot(&mut self, slot: usize) {
        let (word, bit) = (slot / 64, 1u64 << (slot % 64));
        if self.dirty_mark[word] & bit == 0 {
            self.dirty_mark[word] |= bit;
            self.dirty_slots.push(slot as u16);
        }
    }

    /// Slots covered by a short prefix (len <= 16) whose top bits are `bits`.
    fn short_span(bits: u16, len: u8) -> std::ops::Range<usize> {
        let start = bits as usize;
        start..start + (1usize << (16 - len))
    }

    fn recompute_short_best(&self, slot: usize) -> (u32, i8) {
        (0..=16u8)
            .rev()
            .find_map(|len| {
                let bits = (net_mask(16, len) as usize & slot) as u16;
                self.short.get(&(len, bits)).map(|&nh| (nh, len as i8))
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
            let LocalPrefix { bits, len, .. } = place.local;
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
            let mut mirror = self.slots[place.slot].get_or_insert_with(ChunkMirror::default);
            for &index in &place.path[..place.path.len() - 1] {
                mirror.dirty_below = true;
                let known = mirror.children.contains_key(&index);
                mirror.dirty |= !known;
                mirror = mirror.children.entry(index).or_default();
            }
            let key = (place.local.bits, place.local.len);
            match mirror.prefixes.binary_search_by_key(&key, |p| (p.bits, p.len)) {
                Ok(at) => {
                    let old = std::mem::replace(&mut mirror.prefixes[at].next_hop, next_hop);
                    mirror.dirty |= old != next_hop;
                    Some(old)
                }
                Err(at) => {
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
            let LocalPrefix { bits, len, .. } = place.local;
            let removed = self.short.remove(&(len, bits))?;
            for slot in Self::short_span(bits, len) {
                if self.short_best[slot].1 == len as i8 {
                    self.short_best[slot] = self.recompute_short_best(slot);
                    self.mark_slot(slot);
                }
            }
            removed
        } else {
            let removed = Self::remove_below(self.slots[place.slot].as_mut()?, &place.path[..place.path.len() - 1], &place.local)?;
            self.mark_slot(place.slot);
            removed
        };
        self.len -= 1;
        Some(removed)
    }

    /// Removes `local` from the chunk at `path` below `mirror`; empty chunks on the way are left
    /// in place (marked dirty) and dropped by `publish`, which also retires what they published.
    fn remove_below(mirror: &mut ChunkMirror, path: &[u16], local: &LocalPrefix) -> Option<u32> {
        match path.split_first() {
            None => {
                let at = mirror.prefixes.binary_search_by_key(&(local.bits, local.len), |p| (p.bits, p.len)).ok()?;
                mirror.dirty = true;
                Some(mirror.prefixes.remove(at).next_hop)
            }
            Some((index, rest)) => {
                let removed = Self::remove_below(mirror.children.get_mut(index)?, rest, local)?;
                mirror.dirty_below = true;
                Some(removed)
            }
        }
    }

    /// The next hop stored for exactly this prefix (staged table).
    pub fn get(&self, prefix: &Prefix<A>) -> Option<u32> {
        let place = Self::place(prefix, 0);
        if place.path.is_empty() {
            return self.short.get(&(place.local.len, place.local.bits)).copied();
        }
        let mut mirror = self.slots[place.slot].as_ref()?;
        for index in &place.path[..place.path.len() - 1] {
            mirror = mirror.children.get(index)?;
        }
        let at = mirror.prefixes.binary_search_by_key(&(place.local.bits, place.local.len), |p| (p.bits, p.len)).ok()?;
        Some(mirror.prefixes[at].next_hop)
    }

    /// Longest-prefix match on the published table (the readers' view).
    pub fn lookup(&self, addr: A) -> Option<u32> {
        decode(self.shared.lookup_code(addr, &epoch::pin()))
    }

    /// Every staged route, in address then length order.
    pub fn iter(&self) -> impl Iterator<Item = (Prefix<A>, u32)> + '_ {
        let mut routes: Vec<(Prefix<A>, u32)> = self
            .short
            .iter()
            .map(|(&(len, bits), &nh)| (prefix_at::<A>((bits as u128) << (A::BITS - 16), len), nh))
            .collect();
        for (slot, mirror) in self.slots.iter().enumerate() {
            if let Some(mirror) = mirror {
                collect_routes::<A>(mirror, (slot as u128) << (A::BITS - 16), 1, &mut routes);
            }
        }
        routes.sort_unstable_by_key(|(p, _)| (p.addr(), p.len()));
        routes.into_iter()
    }

    /// Bytes used: the published lookup structure (what readers touch) and the writer's mirror.
    pub fn memory(&self) -> MemoryUse {
        let top = TOP_SLOTS * std::mem::size_of::<AtomicUsize>();
        let mut mirror = TOP_SLOTS * (std::mem::size_of::<Option<ChunkMirror>>() + std::mem::size_of::<(u32, i8)>())
            + self.short.capacity() * (std::mem::size_of::<((u8, u16), u32)>() + 1);
        for m in self.slots.iter().flatten() {
            mirror += mirror_bytes(m);
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
                    if let Some(new) = publish_chunk(mirror, fallback, &mut log) {
                        entry.store(new as usize, Ordering::Release);
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
            let chunk = SendPtr(chunk);
            // SAFETY: every store that unlinked `chunk` happened above, before this defer; readers
            // that loaded it are pinned in an epoch the collector waits out before running this.
            unsafe {
                guard.defer_unchecked(move || {
                    let chunk = chunk;
                    drop(Box::from_raw(chunk.0));
                })
            };
        }
        guard.flush();
    }
}

struct SendPtr(*mut Chunk);
// SAFETY: a retired chunk is no longer reachable; whichever thread runs the destructor owns it.
unsafe impl Send for SendPtr {}

/// Brings the published chunk for `mirror` up to date; returns the new pointer if it changed.
/// Children left empty are dropped here (their chunks retired); a mirror that is itself empty
/// publishes nothing, and its parent drops it.
fn publish_chunk(mirror: &mut ChunkMirror, fallback: u32, log: &mut PublishLog) -> Option<*mut Chunk> {
    let own_changed = mirror.dirty || mirror.published.is_none();
    let fallback_changed = mirror.published_fallback != fallback;

    if mirror.dirty_below || own_changed || fallback_changed {
        let mut emptied = Vec::new();
        let ChunkMirror { prefixes, children, published, .. } = &mut *mirror;
        for (position, (&index, child)) in children.iter_mut().enumerate() {
            let child_fallback = best_match(prefixes, index).unwrap_or(fallback);
            let stale = child.dirty || child.dirty_below || child.published.is_none();
            if !stale && child.published_fallback == child_fallback {
                continue;
            }
            let new = publish_chunk(child, child_fallback, log);
            if child.is_empty() {
                emptied.push(index);
            } else if let (Some(new), Some(current), false) = (new, *published, own_changed) {
                // The parent's shape is unchanged: swap the child in place.
                // SAFETY: `current` is this mirror's live published chunk.
                unsafe { (*current).children[position].store(new, Ordering::Release) };
            }
        }
        if !emptied.is_empty() {
            for index in emptied {
                if let Some(chunk) = mirror.children.remove(&index).and_then(|c| c.published) {
                    log.retire(chunk);
                }
            }
            mirror.dirty = true;
        }
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
        // SAFETY: the live published chunk of this mirror.
        Some(current) if !rebuild => unsafe { (*current).with_fallback(fallback) },
        _ => {
            let children: Vec<(u16, *mut Chunk)> =
                mirror.children.iter().map(|(&i, c)| (i, c.published.expect("children publish first"))).collect();
            Chunk::build(&mirror.prefixes, &children, fallback)
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

fn prefix_at<A: Address>(bits: u128, len: u8) -> Prefix<A> {
    Prefix::new_masked(A::from_u128(bits), len).expect("length within family")
}

fn collect_routes<A: Address>(mirror: &ChunkMirror, base: u128, level: u32, out: &mut Vec<(Prefix<A>, u32)>) {
    let shift = A::BITS as u32 - 16 * (level + 1);
    for p in &mirror.prefixes {
        out.push((prefix_at(base | ((p.bits as u128) << shift), 16 * level as u8 + p.len), p.next_hop));
    }
    for (&index, child) in &mirror.children {
        collect_routes(child, base | ((index as u128) << shift), level + 1, out);
    }
}

fn mirror_bytes(m: &ChunkMirror) -> usize {
    let own = m.prefixes.capacity() * std::mem::size_of::<LocalPrefix>();
    // A BTreeMap entry costs roughly its key and value plus node overhead.
    let kids: usize = m.children.values().map(|c| mirror_bytes(c) + std::mem::size_of::<(u16, ChunkMirror)>() + 16).sum();
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
