//! The writer: staging inserts and removes, publishing them, describing the staged table.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_epoch as epoch;

use crate::chunk::{ChunkPtr, LocalPrefix, MAX_NEXT_HOP, NONE};
use crate::prefix::{net_mask, Address, Prefix, GROUP_BITS};

use super::lookup::{decode, FibReader};
use super::mirror::{collect_routes, group_bits, mirror_bytes, prefix_at, publish_chunk, ChunkMirror, PublishLog};
use super::{chunk_entry, leaf_entry, FibError, Shared, TOP_SLOTS};

/// The writer: a longest-prefix-match table from [`Prefix`] to a next hop (an adjacency index).
///
/// Changes are staged by [`insert`](Fib::insert) / [`remove`](Fib::remove) and become visible to
/// readers on [`publish`](Fib::publish). [`get`](Fib::get), [`len`](Fib::len) and
/// [`iter`](Fib::iter) describe the staged table; [`lookup`](Fib::lookup) the published one.
pub struct Fib<A: Address> {
    pub(super) shared: Arc<Shared<A>>,
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
pub(super) struct Placement {
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
