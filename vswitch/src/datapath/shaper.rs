//! The datapath's clock and its shaping of rate-limited ports (the buckets themselves are
//! [`crate::state::TokenBucket`]s, carried in each port's [`crate::state::PortInfo`]).
//!
//! Egress (out of a pod) is shaped by the forwarder as it reads: a port is read only while its
//! bucket has room ([`egress_limit`]). Ingress (into a pod) is shaped here, by a worker's delay
//! queues: when a port's ingress bucket refuses a frame, the frame (vnet header included, already
//! rewritten by the pipeline) is copied into this worker's delay queue for the port instead of
//! being dropped; while that queue holds anything, later frames for the port join it at the
//! back, so none overtakes. The worker releases queued frames as the bucket admits them (each
//! loop iteration, and it sleeps no longer than the next release time). Beyond the queue's bound
//! a frame is dropped as `rate_limited`. Only a port over its limit ever has a queue (and costs
//! an allocation per frame queued); the list of queues is empty otherwise.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use super::{Snapshot, WorkerStats};
use crate::pipeline::DropReason;
use crate::port::PortQueue;
use crate::state::{ForwardingState, PortId, TokenBucket};
use crate::wire::vnet;

/// The datapath's clock: nanoseconds since its first reading, one origin for every worker (they
/// share the rate-limit buckets, which compare their times).
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// The ingress bucket of `port`, if it has one: for a port without, the cost is this lookup.
#[inline(always)]
pub(super) fn ingress_limit(state: &ForwardingState, port: PortId) -> Option<&TokenBucket> {
    state.port(port)?.rate_limit.as_deref()?.ingress.as_ref()
}

/// The egress bucket of `port`, if it has one.
#[inline(always)]
pub(super) fn egress_limit(state: &ForwardingState, port: PortId) -> Option<&TokenBucket> {
    state.port(port)?.rate_limit.as_deref()?.egress.as_ref()
}

/// A delay queue holds at least this many bytes (four 64 KB GSO frames)...
const MIN_QUEUE_BYTES: usize = 256 * 1024;
/// ...or this much of the port's rate, whichever is more.
const QUEUE_TIME_MS: u64 = 50;

/// How many bytes a port's delay queue may hold, per worker.
pub fn queue_bound(bucket: &TokenBucket) -> usize {
    let of_rate = bucket.bits_per_second() / 8 * QUEUE_TIME_MS / 1000;
    MIN_QUEUE_BYTES.max(usize::try_from(of_rate).unwrap_or(usize::MAX))
}

struct DelayQueue {
    port: PortId,
    /// The queue the frames were forwarded to: if the snapshot no longer has it, they are not
    /// sent (to the port's replacement) but dropped as `port_down`.
    out: Arc<dyn PortQueue>,
    /// Frames, each with its vnet header, oldest first; never empty (an emptied queue goes).
    frames: VecDeque<Box<[u8]>>,
    bytes: usize,
}

/// One worker's delay queues, one per port that has frames waiting.
#[derive(Default)]
pub struct Shaper {
    queues: Vec<DelayQueue>,
}

impl std::fmt::Debug for Shaper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ports: Vec<_> = self.queues.iter().map(|q| (q.port, q.frames.len(), q.bytes)).collect();
        f.debug_struct("Shaper").field("queues (port, frames, bytes)", &ports).finish()
    }
}

impl Shaper {
    /// Decides about `frame` (vnet header and frame) for `port`, whose ingress is limited by
    /// `bucket`, at `now_ns`: true to send it now; false if it was queued (counted as delayed)
    /// or dropped (`rate_limited`, its queue being full).
    #[inline]
    pub fn offer(
        &mut self,
        port: PortId,
        out: &Arc<dyn PortQueue>,
        bucket: &TokenBucket,
        frame: &[u8],
        now_ns: u64,
        stats: &WorkerStats,
    ) -> bool {
        let index = match self.queues.iter().position(|q| q.port == port) {
            Some(index) => index,
            None => {
                if bucket.admit(now_ns, frame.len().saturating_sub(vnet::LEN)) {
                    return true;
                }
                self.queues.push(DelayQueue { port, out: out.clone(), frames: VecDeque::new(), bytes: 0 });
                self.queues.len() - 1
            }
        };
        let queue = &mut self.queues[index];
        if queue.bytes + frame.len() > queue_bound(bucket) && !queue.frames.is_empty() {
            stats.dropped(DropReason::RateLimited);
            return false;
        }
        queue.frames.push_back(frame.into());
        queue.bytes += frame.len();
        stats.delayed();
        false
    }

    /// Sends the queued frames that `snapshot`'s buckets admit at `now_ns`, through this
    /// worker's queues (worker `index`); returns when the next one will be due, if any waits.
    /// A port gone from the snapshot (or replaced) loses its frames (`port_down`); a port whose
    /// limit was removed gets them all at once.
    pub fn release(&mut self, snapshot: &Snapshot, index: usize, now_ns: u64, stats: &WorkerStats) -> Option<u64> {
        let mut next: Option<u64> = None;
        self.queues.retain_mut(|queue| {
            let current = snapshot.queues.get(queue.port as usize).and_then(|q| q.as_ref()).and_then(|q| q.get(index));
            if !current.is_some_and(|c| Arc::ptr_eq(c, &queue.out)) {
                stats.dropped_many(DropReason::PortDown, queue.frames.len() as u64);
                return false;
            }
            let bucket = ingress_limit(&snapshot.forwarding, queue.port);
            while let Some(frame) = queue.frames.front() {
                if let Some(bucket) = bucket {
                    if !bucket.admit(now_ns, frame.len().saturating_sub(vnet::LEN)) {
                        let due = bucket.admits_at_ns(frame.len().saturating_sub(vnet::LEN)).max(now_ns + 1);
                        next = Some(next.map_or(due, |n| n.min(due)));
                        return true;
                    }
                }
                stats.sent(queue.port, frame.len(), &queue.out.send(frame));
                queue.bytes -= frame.len();
                queue.frames.pop_front();
            }
            false
        });
        next
    }

    /// Frames waiting, over all ports.
    pub fn queued_frames(&self) -> usize {
        self.queues.iter().map(|q| q.frames.len()).sum()
    }
}
