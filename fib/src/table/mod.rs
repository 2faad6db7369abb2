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
//!
//! Files: this one holds what both sides share (the top-level entries); `lookup` the readers'
//! side, `writer` the staged table and its publishing, `mirror` the writer's record of each chunk
//! and how one is rebuilt.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::chunk::{ChunkPtr, Header, MAX_NEXT_HOP};
use crate::prefix::GROUP_BITS;

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

mod lookup;
mod mirror;
mod writer;

pub use lookup::{FibReader, FibView};
pub use writer::{Fib, MemoryUse};
