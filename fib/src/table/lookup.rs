//! The readers' side: lookups on the published table, one at a time or interleaved in batches.

use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::Arc;

use crossbeam_epoch::{self as epoch, Guard};

use crate::chunk::{prefetch, ChunkPtr, Header, NodeAt, CHILD_FLAG, NODE_FLAG, NONE};
use crate::prefix::Address;

use super::{entry_chunk, Shared, INDEXED};

impl<A: Address> Shared<A> {
    #[inline(always)]
    pub(super) fn lookup_code(&self, addr: A, _guard: &Guard) -> u32 {
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
pub(super) const BATCH: usize = 32;
/// Room for lanes waiting to walk: a batch, plus what one more top-level group can add.
pub(super) const POOL: usize = 2 * BATCH;

/// Lookups that continue below the top level, as parallel arrays indexed by lane. A lane's
/// fields are written before they are read; the arrays are set up once per `lookup_batch` call
/// (zeroing them per batch costs as much as a fast batch).
pub(super) struct Lanes {
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
    pub(super) fn new() -> Lanes {
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
    pub(super) fn lookup_many_portable(&self, addrs: &[A], out: &mut [Option<u32>], _guard: &Guard) {
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
    pub(super) fn walk(&self, addrs: &[A], out: &mut [Option<u32>], lanes: &mut Lanes, count: usize) {
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
    pub(super) fn lookup_one(&self, addr: A, guard: &Guard) -> u32 {
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

    pub(super) fn lookup_many(&self, addrs: &[A], out: &mut [Option<u32>], guard: &Guard) {
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
pub(super) fn decode(code: u32) -> Option<u32> {
    (code != NONE).then_some(code)
}

/// A read handle: cheap to clone, `Send`, lookups never lock or block.
pub struct FibReader<A: Address> {
    pub(super) shared: Arc<Shared<A>>,
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

#[cfg(test)]
mod tests {
    use std::net::Ipv6Addr;

    use super::*;
    use crate::compare::{addresses_in_prefixes, uniform_addresses};
    use crate::prefix::Prefix;
    use crate::table::Fib;

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
