//! One worker: an epoll loop (mio) over its queue of every port.

use std::collections::HashMap;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use super::shaper::now_ns;
use super::{Batch, Datapath, Forwarder, Forwarding, Snapshot, WorkerStats};
use crate::pipeline::{DropReason, IcmpLimiter, Pipeline};
use crate::port::PortQueue;
use crate::state::PortId;

const WAKE: Token = Token(usize::MAX);
/// How often a worker asks the kernel what it dropped on the way into its queues.
const KERNEL_DROPS_EVERY: Duration = Duration::from_millis(500);
/// The longest a worker sleeps with nothing to do (it checks for a new snapshot, and stop).
const IDLE_POLL: Duration = Duration::from_millis(200);

struct Worker {
    index: usize,
    datapath: Arc<Datapath>,
    forwarder: Forwarder,
    poll: Poll,
    /// What this worker has registered: port -> (fd, the queue, kept alive until deregistered).
    registered: HashMap<PortId, (RawFd, Arc<dyn PortQueue>)>,
    generation: u64,
    kernel_drops_read: Instant,
}

/// Starts worker `index`; returns its waker (to call after publishing a snapshot) and handle.
pub fn spawn_worker(
    index: usize,
    datapath: Arc<Datapath>,
    stats: Arc<WorkerStats>,
    icmp: IcmpLimiter,
    forwarding: Forwarding,
) -> io::Result<(Arc<Waker>, std::thread::JoinHandle<()>)> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
    let forwarder = Forwarder::new(index, stats, Pipeline::new(icmp), datapath.slow_path.clone())
        .with_drop_sampler(datapath.drops.clone())
        .with_forwarding(forwarding);
    let mut worker = Worker {
        index,
        datapath,
        forwarder,
        poll,
        registered: HashMap::new(),
        generation: u64::MAX,
        kernel_drops_read: Instant::now(),
    };
    let handle = std::thread::Builder::new().name(format!("vsw-worker-{index}")).spawn(move || worker.run())?;
    Ok((waker, handle))
}

impl Worker {
    fn run(&mut self) {
        let mut events = Events::with_capacity(256);
        // Ports with frames left after a full batch: served again before sleeping.
        let mut busy: Vec<PortId> = Vec::new();
        // Ports whose egress bucket stopped a batch, with the time (datapath clock, ns) it has
        // room again: served then, as no event says so.
        let mut throttled: Vec<(PortId, u64)> = Vec::new();
        while !self.datapath.stop.load(Ordering::Relaxed) {
            let snapshot = self.datapath.snapshot.load_full();
            self.datapath.note_loaded(self.index, snapshot.generation);
            if snapshot.generation != self.generation {
                self.sync_registrations(&snapshot);
                // Edge-triggered: frames that arrived before registration raise no event. Serve
                // every port once so none is left waiting.
                for &port in self.registered.keys() {
                    if !busy.contains(&port) {
                        busy.push(port);
                    }
                }
            }
            // Shaping: frames due out of the delay queues go now, throttled ports due are served.
            let now = now_ns();
            let mut wake_at = self.forwarder.release_delayed(&snapshot, now);
            throttled.retain(|&(port, at)| {
                if at <= now {
                    if !busy.contains(&port) {
                        busy.push(port);
                    }
                    return false;
                }
                wake_at = Some(wake_at.map_or(at, |w| w.min(at)));
                true
            });
            let timeout = if busy.is_empty() {
                wake_at.map_or(IDLE_POLL, |at| Duration::from_nanos(at.saturating_sub(now)).min(IDLE_POLL))
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    tracing::error!(worker = self.index, error = %e, "poll failed");
                }
                continue;
            }
            for event in events.iter() {
                if event.token() != WAKE {
                    let port = event.token().0 as PortId;
                    if !busy.contains(&port) {
                        busy.push(port);
                    }
                }
            }
            // In place: no allocation per loop.
            busy.retain(|&port| match self.serve(&snapshot, port) {
                Batch::Drained => false,
                Batch::More => true,
                Batch::Throttled { until_ns } => {
                    match throttled.iter_mut().find(|(p, _)| *p == port) {
                        Some(entry) => entry.1 = until_ns,
                        None => throttled.push((port, until_ns)),
                    }
                    false
                }
            });
            if self.kernel_drops_read.elapsed() >= KERNEL_DROPS_EVERY {
                self.count_kernel_drops();
            }
        }
    }

    /// Adds what the kernel dropped on the way into this worker's queues to its counters.
    fn count_kernel_drops(&mut self) {
        self.kernel_drops_read = Instant::now();
        for (_, queue) in self.registered.values() {
            let dropped = queue.take_kernel_drops();
            if dropped > 0 {
                self.forwarder.stats().dropped_many(DropReason::RxOverflow, dropped);
            }
        }
    }

    /// Registers new ports' queues and forgets removed ones.
    fn sync_registrations(&mut self, snapshot: &Snapshot) {
        let registry = self.poll.registry();
        let mut wanted: HashMap<PortId, Arc<dyn PortQueue>> = HashMap::new();
        for (id, queues) in snapshot.queues.iter().enumerate() {
            if let Some(queue) = queues.as_ref().and_then(|q| q.get(self.index)) {
                wanted.insert(id as PortId, queue.clone());
            }
        }
        self.registered.retain(|port, (fd, queue)| {
            let keep = wanted.get(port).is_some_and(|w| Arc::ptr_eq(w, queue));
            if !keep {
                // The queue is still open (we hold it), so deregistering cannot hit a reused fd.
                let _ = registry.deregister(&mut SourceFd(fd));
            }
            keep
        });
        for (port, queue) in wanted {
            if self.registered.contains_key(&port) {
                continue;
            }
            let Some(fd) = queue.raw_fd() else { continue };
            match registry.register(&mut SourceFd(&fd), Token(port as usize), Interest::READABLE) {
                Ok(()) => {
                    self.registered.insert(port, (fd, queue));
                }
                Err(e) => tracing::error!(worker = self.index, port, error = %e, "cannot poll port"),
            }
        }
        self.generation = snapshot.generation;
    }

    fn serve(&mut self, snapshot: &Snapshot, port: PortId) -> Batch {
        let Some((_, queue)) = self.registered.get(&port) else { return Batch::Drained };
        let queue = queue.clone();
        self.forwarder.forward_batch(snapshot, port, &*queue)
    }
}
