//! One batch through the pipeline: read up to [`BATCH`] frames from a port queue, decide each
//! one's fate, write it out. Shared by the workers (TAP and packet-socket queues) and by tests
//! and benches (in-memory queues), so both exercise the same code.

use std::io;
use std::sync::Arc;

use super::bounce::{Forwarding, Peer};
use super::drop_sampler::DropSampler;
use super::segment::{Egress, Segmenter};
use super::shaper::{egress_limit, ingress_limit, now_ns, Shaper};
use super::tx_ring::TxRing;
use super::{SlowPacket, SlowReason, Snapshot, WorkerStats};
use crate::pipeline::{DropReason, Next, NoTrace, Pipeline, MAX_FRAME};
use crate::port::PortQueue;
use crate::state::PortId;
use crate::wire::{udp_gso, vnet};

/// Frames read from one port before moving on to the next (fairness between ports).
pub const BATCH: usize = 32;

/// What a batch left behind on its port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Batch {
    /// The queue is empty: wait for it to become readable.
    Drained,
    /// The batch was full: the queue may hold more (serve it again before sleeping).
    More,
    /// The port's egress bucket is empty: frames are left where they are (the pod's queues hold
    /// them) until `until_ns`, when the bucket has room again; nothing signals that time.
    Throttled { until_ns: u64 },
}

pub struct Forwarder {
    /// Which queue of each port is ours.
    index: usize,
    stats: Arc<WorkerStats>,
    pipeline: Pipeline,
    slow_path: tokio::sync::mpsc::Sender<SlowPacket>,
    buffers: Vec<Box<[u8]>>,
    lengths: [usize; BATCH],
    /// Writes the batch's frames in one system call; `None` where io_uring is unavailable
    /// (frames then go out with a write each).
    tx_ring: Option<TxRing>,
    /// Frames over a port's ingress limit, waiting for its bucket.
    shaper: Shaper,
    /// Where drops are sampled while someone watches.
    sampler: Arc<DropSampler>,
    forwarding: Forwarding,
    /// Cuts UDP GSO frames for ports that cannot take them whole.
    segmenter: Segmenter,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder").field("index", &self.index).finish_non_exhaustive()
    }
}

impl Forwarder {
    pub fn new(
        index: usize,
        stats: Arc<WorkerStats>,
        pipeline: Pipeline,
        slow_path: tokio::sync::mpsc::Sender<SlowPacket>,
    ) -> Self {
        Forwarder {
            index,
            stats,
            pipeline,
            slow_path,
            buffers: (0..BATCH).map(|_| vec![0u8; MAX_FRAME].into_boxed_slice()).collect(),
            lengths: [0; BATCH],
            tx_ring: TxRing::new(BATCH)
                .inspect_err(|e| tracing::warn!(worker = index, error = %e, "no io_uring: one write per frame"))
                .ok(),
            shaper: Shaper::default(),
            sampler: Arc::default(),
            forwarding: Forwarding::Pipeline,
            segmenter: Segmenter::default(),
        }
    }

    /// Forwards as `forwarding` says (the pipeline unless a benchmark asks for the ceiling).
    pub fn with_forwarding(mut self, forwarding: Forwarding) -> Self {
        self.forwarding = forwarding;
        self
    }

    /// Samples drops into `sampler` (shared with the control plane) instead of a private one.
    pub fn with_drop_sampler(mut self, sampler: Arc<DropSampler>) -> Self {
        self.sampler = sampler;
        self
    }

    /// This worker's counters.
    pub fn stats(&self) -> &WorkerStats {
        &self.stats
    }

    /// Reads up to a batch from `queue` (port `port`) and forwards it, at the datapath clock's
    /// time. At most [`BATCH`] reads per call, frames too long to read included, so one port
    /// cannot hold the worker.
    pub fn forward_batch(&mut self, snapshot: &Snapshot, port: PortId, queue: &dyn PortQueue) -> Batch {
        self.forward_batch_at(snapshot, port, queue, now_ns())
    }

    /// [`Forwarder::forward_batch`] at `now_ns` (the clock of the rate-limit buckets).
    ///
    /// A port with an egress limit is read only while its bucket has room, and each frame read
    /// is charged in full (a GSO frame may leave the bucket in debt): what is read is never
    /// dropped for the limit. A frame into a port with an ingress limit that its bucket refuses
    /// waits in this worker's delay queue (see [`Forwarder::release_delayed`]).
    pub fn forward_batch_at(&mut self, snapshot: &Snapshot, port: PortId, queue: &dyn PortQueue, now_ns: u64) -> Batch {
        let mut count = 0;
        let mut drained = false;
        let mut throttled = false;
        let mut reads = 0;
        // What leaves the pod is shaped as it is read: this batch's port, looked up once.
        let egress = egress_limit(&snapshot.forwarding, port);
        while reads < BATCH {
            if let Some(bucket) = egress {
                if !bucket.has_room(now_ns) {
                    throttled = true;
                    break;
                }
            }
            reads += 1;
            match queue.recv(&mut self.buffers[count]) {
                Ok(n) => {
                    self.lengths[count] = n;
                    self.stats.rx(port, n);
                    if let Some(bucket) = egress {
                        bucket.charge(now_ns, n.saturating_sub(vnet::LEN));
                    }
                    count += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    drained = true;
                    break;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // One frame was refused, not the queue: the rest must still be read now, since
                // an edge-triggered poll raises no new event for frames already waiting.
                Err(e) if crate::port::is_frame_too_long(&e) => self.stats.dropped(DropReason::FrameTooLong),
                Err(_) => {
                    // EIO/EBADFD while a device goes away: the next snapshot removes the port.
                    drained = true;
                    break;
                }
            }
        }
        let outcome = match (throttled, egress) {
            (true, Some(bucket)) => {
                self.stats.throttled();
                Batch::Throttled { until_ns: bucket.room_at_ns().max(now_ns + 1) }
            }
            _ if drained => Batch::Drained,
            _ => Batch::More,
        };
        if count == 0 {
            return outcome;
        }
        let fibs = snapshot.forwarding.pin();
        let bounce_to = match self.forwarding {
            Forwarding::Pipeline => None,
            Forwarding::TapBounce => Peer::of(&snapshot.forwarding, port),
        };
        for i in 0..count {
            let buf = &mut self.buffers[i];
            let len = self.lengths[i];
            let next = match bounce_to.as_ref().and_then(|peer| peer.bounce(buf, len)) {
                Some(next) => next,
                None => self.pipeline.process(&snapshot.forwarding, &fibs, port, buf, len, now_ns, &mut NoTrace),
            };
            let (out_port, len) = match next {
                Next::Tx { port, len } => (port, len),
                Next::Drop(reason) => {
                    self.stats.dropped(reason);
                    self.stats.dropped_from(port);
                    self.sampler.sample(port, reason, &buf[..self.lengths[i]]);
                    continue;
                }
                Next::Respond { reason, port: back, len } => {
                    self.stats.dropped(reason);
                    self.stats.dropped_from(port);
                    self.sampler.sample(port, reason, &buf[..len]);
                    (back, len)
                }
                Next::Resolve { port: out, next_hop, len } => {
                    to_control(&self.slow_path, &self.stats, SlowReason::Resolve { port: out, next_hop }, &buf[..len]);
                    continue;
                }
                Next::ToControl { len } => {
                    to_control(&self.slow_path, &self.stats, SlowReason::Learn { port }, &buf[..len]);
                    continue;
                }
            };
            let Some(out) =
                snapshot.queues.get(out_port as usize).and_then(|q| q.as_ref()).and_then(|q| q.get(self.index))
            else {
                self.stats.dropped(DropReason::PortDown);
                continue;
            };
            // A UDP GSO frame the port cannot take whole leaves as datagrams, each shaped and
            // sent as below; every other frame is only looked at for its GSO type.
            if udp_gso::is_udp_gso(buf) && !out.takes_udp_gso() {
                let to = Egress { port: out_port, queue: out, ingress: ingress_limit(&snapshot.forwarding, out_port) };
                let frame = &buf[..len];
                let sent = self.segmenter.send(frame, to, &mut self.shaper, &mut self.tx_ring, &self.stats, now_ns);
                if let Err(reason) = sent {
                    self.stats.dropped(reason);
                    self.stats.dropped_from(port);
                    self.sampler.sample(port, reason, frame);
                }
                continue;
            }
            // What enters a pod is shaped as it is written: sent, delayed, or (over the delay
            // queue's bound) dropped.
            if let Some(bucket) = ingress_limit(&snapshot.forwarding, out_port) {
                if !self.shaper.offer(out_port, out, bucket, &buf[..len], now_ns, &self.stats) {
                    continue;
                }
            }
            match (self.tx_ring.as_mut(), out.raw_fd()) {
                (Some(ring), Some(fd)) => {
                    // SAFETY: the frame is in this batch's buffer and `fd` belongs to a queue the
                    // snapshot holds; both outlive the submission below, which completes every
                    // write before the buffers are read into again.
                    if let Err(e) = unsafe { ring.stage(fd, &buf[..len], out_port, &self.stats) } {
                        tracing::error!(worker = self.index, error = %e, "io_uring failed: one write per frame from now on");
                        self.tx_ring = None;
                        self.stats.sent(out_port, len, &out.send(&buf[..len]));
                    }
                }
                _ => self.stats.sent(out_port, len, &out.send(&buf[..len])),
            }
        }
        if let Some(ring) = self.tx_ring.as_mut() {
            if let Err(e) = ring.submit(&self.stats) {
                tracing::error!(worker = self.index, error = %e, "io_uring failed: one write per frame from now on");
                self.tx_ring = None;
            }
        }
        let suppressed = self.pipeline.take_icmp_suppressed();
        if suppressed > 0 {
            self.stats.dropped_many(DropReason::IcmpRateLimited, suppressed);
        }
        outcome
    }

    /// Sends the delayed frames that their ports' ingress buckets admit at `now_ns`; returns
    /// when the next one is due (the worker sleeps no longer), `None` if none waits.
    pub fn release_delayed(&mut self, snapshot: &Snapshot, now_ns: u64) -> Option<u64> {
        self.shaper.release(snapshot, self.index, now_ns, &self.stats)
    }

    /// Frames waiting in this worker's delay queues.
    pub fn delayed_frames(&self) -> usize {
        self.shaper.queued_frames()
    }
}

/// Copies a packet to the control plane (the slow path: ARP only, never steady traffic).
fn to_control(slow_path: &tokio::sync::mpsc::Sender<SlowPacket>, stats: &WorkerStats, reason: SlowReason, data: &[u8]) {
    let packet = SlowPacket { reason, data: data.to_vec() };
    if slow_path.try_send(packet).is_err() {
        stats.dropped(DropReason::SlowPathFull);
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::pipeline::IcmpLimiter;
    use crate::port::MemoryPort;
    use crate::state::{Fibs, ForwardingStateBuilder, PortRateLimit};
    use crate::wire::captured::ICMP_ECHO_REQUEST;
    use crate::wire::VnetHeader;
    use crate::wire::{vnet, MacAddr};

    /// Two pods on in-memory ports: 10.0.0.1 (port 0) and 10.0.0.2 (port 1), as in the capture.
    fn setup() -> (Snapshot, Vec<Arc<MemoryPort>>, Fibs, Forwarder, tokio::sync::mpsc::Receiver<SlowPacket>) {
        let gw: MacAddr = "02:42:ac:11:00:03".parse().unwrap(); // the capture's destination MAC
        let (forwarding, fib) = ForwardingStateBuilder::new(Ipv4Addr::new(169, 254, 1, 1), gw)
            .pod(Ipv4Addr::new(10, 0, 0, 1), "02:42:ac:11:00:02".parse().unwrap(), 1500)
            .pod(Ipv4Addr::new(10, 0, 0, 2), "02:00:00:00:00:22".parse().unwrap(), 1500)
            .build();
        let memory: Vec<Arc<MemoryPort>> = (0..2).map(|_| Arc::new(MemoryPort::default())).collect();
        let queues = memory.iter().map(|m| Some(Arc::from(vec![m.clone() as Arc<dyn PortQueue>]))).collect();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let stats = Arc::new(WorkerStats::default());
        let forwarder = Forwarder::new(0, stats, Pipeline::new(IcmpLimiter::new(10, 10)), tx);
        (Snapshot { generation: 1, forwarding, queues }, memory, fib, forwarder, rx)
    }

    fn with_vnet(frame: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; vnet::LEN];
        buf.extend_from_slice(frame);
        buf
    }

    #[test]
    fn a_batch_is_forwarded_counted_and_drops_are_named() {
        let (snapshot, ports, _fib, mut forwarder, _rx) = setup();
        for _ in 0..3 {
            ports[0].push(with_vnet(&ICMP_ECHO_REQUEST));
        }
        let mut bad = with_vnet(&ICMP_ECHO_REQUEST);
        bad[vnet::LEN + 24] ^= 0xff; // header checksum
        ports[0].push(bad);
        assert_eq!(forwarder.forward_batch(&snapshot, 0, &*ports[0]), Batch::Drained, "queue drained");
        let sent = ports[1].take_sent();
        assert_eq!(sent.len(), 3);
        assert_eq!(sent[0][vnet::LEN + 22], 63, "TTL decremented");
        assert_eq!(forwarder.stats.port(0).rx_packets, 4);
        assert_eq!(forwarder.stats.port(1).tx_packets, 3);
        assert_eq!(forwarder.stats.drops(DropReason::Ipv4BadChecksum), 1);
    }

    #[test]
    fn a_frame_too_long_is_counted_and_the_queue_still_drained() {
        let (snapshot, ports, _fib, mut forwarder, _rx) = setup();
        ports[0].push(vec![0u8; MAX_FRAME + 1]);
        for _ in 0..3 {
            ports[0].push(with_vnet(&ICMP_ECHO_REQUEST));
        }
        assert_eq!(forwarder.forward_batch(&snapshot, 0, &*ports[0]), Batch::Drained, "queue drained");
        assert_eq!(ports[1].take_sent().len(), 3, "the frames behind it go out in the same batch");
        assert_eq!(forwarder.stats.drops(DropReason::FrameTooLong), 1);
        // A batch of nothing but refused frames still says there may be more.
        for _ in 0..BATCH {
            ports[0].push(vec![0u8; MAX_FRAME + 1]);
        }
        ports[0].push(with_vnet(&ICMP_ECHO_REQUEST));
        assert_eq!(forwarder.forward_batch(&snapshot, 0, &*ports[0]), Batch::More, "more to read");
        assert_eq!(forwarder.forward_batch(&snapshot, 0, &*ports[0]), Batch::Drained);
        assert_eq!(ports[1].take_sent().len(), 1);
        assert_eq!(forwarder.stats.drops(DropReason::FrameTooLong), 1 + BATCH as u64);
    }

    /// The echo request with its last payload byte set to `mark`, to tell frames apart.
    fn marked(mark: u8) -> Vec<u8> {
        let mut frame = with_vnet(&ICMP_ECHO_REQUEST);
        *frame.last_mut().unwrap() = mark;
        frame
    }

    fn marks(sent: &[Vec<u8>]) -> Vec<u8> {
        sent.iter().map(|f| *f.last().unwrap()).collect()
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn ingress_over_the_limit_is_delayed_then_delivered_in_order() {
        let (mut snapshot, ports, _fib, mut forwarder, _rx) = setup();
        let frame_bits = ICMP_ECHO_REQUEST.len() as u64 * 8;
        // Into pod 1: 8 Mbit/s (a byte per us: a frame per T), a burst of three frames.
        const T: u64 = ICMP_ECHO_REQUEST.len() as u64 * 1000;
        let into_b = Arc::new(PortRateLimit::new(Some(8_000_000), None, 3 * frame_bits));
        snapshot.forwarding.ports[1].as_mut().unwrap().rate_limit = Some(into_b);
        for mark in 0..5 {
            ports[0].push(marked(mark));
        }
        assert_eq!(forwarder.forward_batch_at(&snapshot, 0, &*ports[0], 0), Batch::Drained);
        assert_eq!(marks(&ports[1].take_sent()), [0, 1, 2], "the burst");
        assert_eq!((forwarder.delayed_frames(), forwarder.stats.delayed_frames()), (2, 2));
        assert_eq!(forwarder.release_delayed(&snapshot, 0), Some(T), "the next is due in a frame's time");
        assert_eq!(forwarder.release_delayed(&snapshot, T - 1), Some(T));
        assert!(ports[1].take_sent().is_empty());
        assert_eq!(forwarder.release_delayed(&snapshot, T), Some(2 * T));
        assert_eq!(marks(&ports[1].take_sent()), [3]);
        // The next snapshot carries the same bucket and queue on. After 10 frames' time the bucket is full
        // again, yet a new frame waits behind the one still queued: none overtakes.
        let next = Snapshot { generation: 2, forwarding: snapshot.forwarding.clone(), queues: snapshot.queues.clone() };
        ports[0].push(marked(5));
        forwarder.forward_batch_at(&next, 0, &*ports[0], 10 * T);
        assert!(ports[1].take_sent().is_empty());
        assert_eq!(forwarder.release_delayed(&next, 10 * T), None, "all sent");
        assert_eq!(marks(&ports[1].take_sent()), [4, 5]);
        assert_eq!(forwarder.stats.drops(DropReason::RateLimited), 0);
        assert_eq!(forwarder.stats.port(1).tx_packets, 6);
        assert_eq!(forwarder.stats.delayed_frames(), 3);
    }

    #[test]
    fn beyond_the_delay_bound_frames_are_dropped_and_a_lifted_limit_frees_the_rest() {
        let (mut snapshot, ports, _fib, mut forwarder, _rx) = setup();
        // 1 bit/s: nothing refills while the test runs.
        let into_b = Arc::new(PortRateLimit::new(Some(1), None, 8));
        snapshot.forwarding.ports[1].as_mut().unwrap().rate_limit = Some(into_b);
        let frame = with_vnet(&ICMP_ECHO_REQUEST);
        let total = 300 * 1024 / frame.len() + 100;
        for _ in 0..total {
            ports[0].push(frame.clone());
        }
        while forwarder.forward_batch_at(&snapshot, 0, &*ports[0], 0) == Batch::More {}
        // The first passes (a full bucket admits any frame), 256 KiB wait, the rest are dropped.
        let queued = 256 * 1024 / frame.len();
        assert_eq!(ports[1].take_sent().len(), 1);
        assert_eq!(forwarder.delayed_frames(), queued);
        assert_eq!(forwarder.stats.drops(DropReason::RateLimited), (total - 1 - queued) as u64);
        assert!(forwarder.release_delayed(&snapshot, 0).is_some());
        // The limit removed: the queue goes out at once.
        snapshot.forwarding.ports[1].as_mut().unwrap().rate_limit = None;
        assert_eq!(forwarder.release_delayed(&snapshot, 0), None);
        assert_eq!(ports[1].take_sent().len(), queued);
        // The port gone (its queue replaced): what waited is dropped as port_down, never sent.
        snapshot.forwarding.ports[1].as_mut().unwrap().rate_limit =
            Some(Arc::new(PortRateLimit::new(Some(1), None, 8)));
        for _ in 0..3 {
            ports[0].push(frame.clone());
        }
        forwarder.forward_batch_at(&snapshot, 0, &*ports[0], 0);
        assert_eq!(forwarder.delayed_frames(), 2);
        snapshot.queues[1] = Some(Arc::from(vec![Arc::new(MemoryPort::default()) as Arc<dyn PortQueue>]));
        assert_eq!(forwarder.release_delayed(&snapshot, 0), None);
        assert_eq!(forwarder.stats.drops(DropReason::PortDown), 2);
        assert_eq!(ports[1].take_sent().len(), 1);
    }

    #[test]
    fn egress_over_the_limit_is_left_in_the_port_until_the_bucket_has_room() {
        let (mut snapshot, ports, _fib, mut forwarder, _rx) = setup();
        let frame_bits = ICMP_ECHO_REQUEST.len() as u64 * 8;
        // Out of pod 0: 8 Mbit/s (a byte per us: a frame per T), a burst of two frames.
        const T: u64 = ICMP_ECHO_REQUEST.len() as u64 * 1000;
        let from_a = Arc::new(PortRateLimit::new(None, Some(8_000_000), 2 * frame_bits));
        snapshot.forwarding.ports[0].as_mut().unwrap().rate_limit = Some(from_a);
        for mark in 0..5 {
            ports[0].push(marked(mark));
        }
        // The burst is read; then nothing, until the bucket has room.
        let Batch::Throttled { until_ns } = forwarder.forward_batch_at(&snapshot, 0, &*ports[0], 0) else {
            panic!("not throttled")
        };
        assert_eq!(marks(&ports[1].take_sent()), [0, 1]);
        assert_eq!(forwarder.stats.port(0).rx_packets, 2, "the rest are left in the port");
        assert!(until_ns > 0 && until_ns <= T, "room again at {until_ns} ns");
        assert_eq!(forwarder.forward_batch_at(&snapshot, 0, &*ports[0], until_ns - 1), Batch::Throttled { until_ns });
        assert_eq!(forwarder.stats.port(0).rx_packets, 2);
        // A frame read on a token's fraction leaves the bucket in debt: one frame per T.
        let Batch::Throttled { until_ns: next } = forwarder.forward_batch_at(&snapshot, 0, &*ports[0], until_ns) else {
            panic!("not throttled")
        };
        assert_eq!(marks(&ports[1].take_sent()), [2]);
        assert_eq!(next, until_ns + T);
        // Later, a burst again: the rest; the bucket is then empty, the port drained.
        assert!(matches!(forwarder.forward_batch_at(&snapshot, 0, &*ports[0], 100 * T), Batch::Throttled { .. }));
        assert_eq!(marks(&ports[1].take_sent()), [3, 4]);
        assert_eq!(forwarder.forward_batch_at(&snapshot, 0, &*ports[0], 200 * T), Batch::Drained);
        assert_eq!(forwarder.stats.drops(DropReason::RateLimited), 0, "what is read is never dropped");
        assert_eq!(forwarder.stats.port(0).rx_packets, 5);
        assert_eq!(forwarder.stats.throttled_batches(), 4);
    }

    #[test]
    fn a_gso_frame_costs_its_whole_size() {
        let (mut snapshot, ports, _fib, mut forwarder, _rx) = setup();
        // 1000 bit/s, a bucket of 10 000 bytes: one 9000-byte frame passes, a second waits for
        // the tokens of 8000 bytes more: 64 s.
        let into_b = Arc::new(PortRateLimit::new(Some(1000), None, 80_000));
        snapshot.forwarding.ports[1].as_mut().unwrap().rate_limit = Some(into_b);
        let mut big = with_vnet(&ICMP_ECHO_REQUEST);
        let ip_len = 9000 - 14;
        big.resize(vnet::LEN + 9000, 0);
        big[vnet::LEN + 16..vnet::LEN + 18].copy_from_slice(&(ip_len as u16).to_be_bytes());
        big[vnet::LEN + 24..vnet::LEN + 26].fill(0);
        let c = crate::wire::checksum::checksum(&big[vnet::LEN + 14..vnet::LEN + 34]);
        big[vnet::LEN + 24..vnet::LEN + 26].copy_from_slice(&c.to_be_bytes());
        // Segments of 1400 bytes fit the MTU; the frame is still charged 9000.
        VnetHeader { gso_type: vnet::GSO_UDP_L4, gso_size: 1400, ..Default::default() }.write(&mut big);
        ports[0].push(big.clone());
        ports[0].push(big.clone());
        forwarder.forward_batch_at(&snapshot, 0, &*ports[0], 0);
        assert_eq!(ports[1].take_sent().len(), 1);
        assert_eq!(forwarder.delayed_frames(), 1);
        assert_eq!(forwarder.release_delayed(&snapshot, 0), Some(64_000 * MS));
        assert_eq!(forwarder.release_delayed(&snapshot, 64_000 * MS), None);
        assert_eq!(ports[1].take_sent().len(), 1);
        assert_eq!(forwarder.stats.drops(DropReason::RateLimited), 0);

        // Out of a pod, the same: the frame is read whole and its 9000 bytes leave the bucket in
        // debt (72 s of tokens against a bucket of 80 s, then 72 s more).
        snapshot.forwarding.ports[1].as_mut().unwrap().rate_limit = None;
        snapshot.forwarding.ports[0].as_mut().unwrap().rate_limit =
            Some(Arc::new(PortRateLimit::new(None, Some(1000), 80_000)));
        for _ in 0..3 {
            ports[0].push(big.clone());
        }
        let batch = forwarder.forward_batch_at(&snapshot, 0, &*ports[0], 0);
        assert_eq!(batch, Batch::Throttled { until_ns: 64_000 * MS + 1 });
        assert_eq!(ports[1].take_sent().len(), 2);
    }

    #[test]
    fn a_full_batch_reports_more_to_read() {
        let (snapshot, ports, _fib, mut forwarder, _rx) = setup();
        for _ in 0..BATCH + 1 {
            ports[0].push(with_vnet(&ICMP_ECHO_REQUEST));
        }
        assert_eq!(forwarder.forward_batch(&snapshot, 0, &*ports[0]), Batch::More);
        assert_eq!(forwarder.forward_batch(&snapshot, 0, &*ports[0]), Batch::Drained);
        assert_eq!(ports[1].take_sent().len(), BATCH + 1);
    }
}
