//! One worker: an epoll loop (mio) over its queue of every port.

use std::collections::HashMap;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use super::{Datapath, SlowPacket, SlowReason, Snapshot, WorkerStats};
use crate::pipeline::{DropReason, IcmpLimiter, Next, NoTrace, Pipeline, MAX_FRAME};
use crate::port::PortQueue;
use crate::state::PortId;

/// Frames read from one port before moving on to the next (fairness between ports).
const BATCH: usize = 32;
const WAKE: Token = Token(usize::MAX);

struct Worker {
    index: usize,
    datapath: Arc<Datapath>,
    stats: Arc<WorkerStats>,
    pipeline: Pipeline,
    poll: Poll,
    /// What this worker has registered: port -> (fd, the queue, kept alive until deregistered).
    registered: HashMap<PortId, (RawFd, Arc<dyn PortQueue>)>,
    generation: u64,
    buffers: Vec<Box<[u8]>>,
    lengths: [usize; BATCH],
    started: Instant,
}

/// Starts worker `index`; returns its waker (to call after publishing a snapshot) and handle.
pub fn spawn_worker(
    index: usize,
    datapath: Arc<Datapath>,
    stats: Arc<WorkerStats>,
    icmp: IcmpLimiter,
) -> io::Result<(Arc<Waker>, std::thread::JoinHandle<()>)> {
    let poll = Poll::new()?;
    let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
    let mut worker = Worker {
        index,
        datapath,
        stats,
        pipeline: Pipeline::new(icmp),
        poll,
        registered: HashMap::new(),
        generation: u64::MAX,
        buffers: (0..BATCH).map(|_| vec![0u8; MAX_FRAME].into_boxed_slice()).collect(),
        lengths: [0; BATCH],
        started: Instant::now(),
    };
    let handle = std::thread::Builder::new().name(format!("vsw-worker-{index}")).spawn(move || worker.run())?;
    Ok((waker, handle))
}

impl Worker {
    fn run(&mut self) {
        let mut events = Events::with_capacity(256);
        // Ports with frames left after a full batch: served again before sleeping.
        let mut busy: Vec<PortId> = Vec::new();
        while !self.datapath.stop.load(Ordering::Relaxed) {
            let snapshot = self.datapath.snapshot.load_full();
            if snapshot.generation != self.generation {
                self.sync_registrations(&snapshot);
            }
            let timeout = if busy.is_empty() { Some(Duration::from_millis(200)) } else { Some(Duration::ZERO) };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
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
            let mut still_busy = Vec::new();
            for &port in &busy {
                if self.serve(&snapshot, port) {
                    still_busy.push(port);
                }
            }
            busy = still_busy;
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
        // Edge-triggered: frames that arrived before registration raise no event. Serve every
        // port once so none is left waiting.
        for port in self.registered.keys().copied().collect::<Vec<_>>() {
            self.serve(snapshot, port);
        }
    }

    /// Reads up to a batch from `port` and forwards it; true if the queue may hold more.
    fn serve(&mut self, snapshot: &Snapshot, port: PortId) -> bool {
        let Some((_, queue)) = self.registered.get(&port) else { return false };
        let queue = queue.clone();
        let mut count = 0;
        let mut drained = false;
        while count < BATCH {
            match queue.recv(&mut self.buffers[count]) {
                Ok(n) => {
                    self.lengths[count] = n;
                    self.stats.rx(port, n);
                    count += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    drained = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    // EIO/EBADFD while a device goes away: the next snapshot removes the port.
                    drained = true;
                    break;
                }
            }
        }
        if count == 0 {
            return false;
        }
        let now_ns = self.started.elapsed().as_nanos() as u64;
        let fib = snapshot.forwarding.fib.pin();
        for i in 0..count {
            let buf = &mut self.buffers[i];
            let next = self.pipeline.process(&snapshot.forwarding, &fib, port, buf, self.lengths[i], now_ns, &mut NoTrace);
            let (out_port, len) = match next {
                Next::Tx { port, len } => (port, len),
                Next::Drop(reason) => {
                    self.stats.dropped(reason);
                    continue;
                }
                Next::Respond { reason, port, len } => {
                    self.stats.dropped(reason);
                    (port, len)
                }
                Next::Resolve { port: out, next_hop, len } => {
                    to_control(&self.datapath, &self.stats, SlowReason::Resolve { port: out, next_hop }, &buf[..len]);
                    continue;
                }
                Next::ToControl { len } => {
                    to_control(&self.datapath, &self.stats, SlowReason::Arp { port }, &buf[..len]);
                    continue;
                }
            };
            let Some(out) = snapshot.queues.get(out_port as usize).and_then(|q| q.as_ref()).and_then(|q| q.get(self.index)) else {
                self.stats.dropped(DropReason::PortDown);
                continue;
            };
            match out.send(&buf[..len]) {
                Ok(()) => self.stats.tx(out_port, len),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.stats.dropped(DropReason::TxQueueFull),
                Err(_) => self.stats.dropped(DropReason::TxError),
            }
        }
        !drained
    }
}

/// Copies a packet to the control plane (the slow path: ARP only, never steady traffic).
fn to_control(datapath: &Datapath, stats: &WorkerStats, reason: SlowReason, data: &[u8]) {
    let packet = SlowPacket { reason, data: data.to_vec() };
    if datapath.slow_path.try_send(packet).is_err() {
        stats.dropped(DropReason::SlowPathFull);
    }
}
