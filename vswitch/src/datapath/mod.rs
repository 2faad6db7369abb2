//! The datapath: worker threads, each polling one queue of every port and running the pipeline.
//!
//! The control plane publishes a [`Snapshot`] (forwarding state plus every port's queues) with
//! one atomic swap and wakes the workers; a worker picks it up between batches. Per packet there
//! is no lock, no allocation, no log line and no system call beyond the port's own read (the
//! batch's writes go out together, one io_uring submission per batch).

mod bounce;
pub mod drop_sampler;
mod forward;
mod segment;
mod shaper;
pub mod stats;
mod tx_ring;
mod worker;

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

pub use bounce::Forwarding;
pub use forward::{Batch, Forwarder, BATCH};
pub use stats::{PortTotals, WorkerStats};
pub use worker::spawn_worker;

use crate::port::PortQueue;
use crate::state::{ForwardingState, PortId};

/// A port's queues, one per worker.
pub type PortQueues = Arc<[Arc<dyn PortQueue>]>;

/// Everything a worker needs for one batch.
pub struct Snapshot {
    pub generation: u64,
    pub forwarding: ForwardingState,
    /// Indexed by port id.
    pub queues: Vec<Option<PortQueues>>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot").field("generation", &self.generation).finish_non_exhaustive()
    }
}

/// Why a packet left the fast path for the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowReason {
    /// Waiting for ARP or neighbour discovery: send out of `port` to `next_hop` once resolved.
    Resolve { port: PortId, next_hop: IpAddr },
    /// An ARP reply or announcement, or a neighbour advertisement, that arrived on `port`.
    Learn { port: PortId },
}

/// A packet for the control plane: the vnet header and frame, copied out of the worker's buffer.
#[derive(Debug)]
pub struct SlowPacket {
    pub reason: SlowReason,
    pub data: Vec<u8>,
}

/// Packets that may wait for the control plane at once; beyond this they are dropped (counted),
/// so a flood of unresolvable traffic cannot grow memory without bound.
pub const SLOW_PATH_DEPTH: usize = 1024;

/// What the control plane and the workers share.
#[derive(Debug)]
pub struct Datapath {
    pub snapshot: ArcSwap<Snapshot>,
    pub stop: AtomicBool,
    pub slow_path: tokio::sync::mpsc::Sender<SlowPacket>,
    /// The snapshot generation each worker loaded last (see [`Datapath::quiesced`]).
    loaded: Box<[AtomicU64]>,
    /// Recent drops, sampled while someone watches.
    pub drops: Arc<drop_sampler::DropSampler>,
}

impl Datapath {
    pub fn new(snapshot: Snapshot, slow_path: tokio::sync::mpsc::Sender<SlowPacket>, workers: usize) -> Datapath {
        Datapath {
            snapshot: ArcSwap::from_pointee(snapshot),
            stop: AtomicBool::new(false),
            slow_path,
            loaded: (0..workers).map(|_| AtomicU64::new(0)).collect(),
            drops: Default::default(),
        }
    }

    /// Worker `index` now forwards with `generation` (and a FIB view at least as new).
    pub fn note_loaded(&self, index: usize, generation: u64) {
        self.loaded[index].store(generation, Ordering::Release);
    }

    /// The oldest generation any worker may still be using: state retired before it can no
    /// longer be seen by any worker. `u64::MAX` without workers.
    pub fn quiesced(&self) -> u64 {
        self.loaded.iter().map(|g| g.load(Ordering::Acquire)).min().unwrap_or(u64::MAX)
    }
}
