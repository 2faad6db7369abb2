//! Per-worker counters. Each worker is the only writer of its own counters, so an increment is
//! a relaxed load and store (no locked instruction); readers sum over workers.
//!
//! Byte counters count Ethernet frames as the pod's own `ip -s link` does: the virtio-net header
//! every TAP read and write carries is not part of the traffic.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::pipeline::DropReason;
use crate::state::{PortId, MAX_PORTS};
use crate::wire::vnet;

#[derive(Debug, Default)]
pub struct PortCounters {
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Frames received from the port that the switch dropped (by any reason).
    pub rx_dropped: AtomicU64,
    /// UDP GSO frames cut into datagrams by the switch because this port could not take them
    /// whole (each datagram then counts as a frame sent).
    pub tx_segmented: AtomicU64,
}

/// A snapshot of one port's counters.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PortTotals {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_dropped: u64,
    #[serde(default)]
    pub tx_segmented: u64,
}

impl PortTotals {
    pub fn since(self, base: PortTotals) -> PortTotals {
        PortTotals {
            rx_packets: self.rx_packets.wrapping_sub(base.rx_packets),
            rx_bytes: self.rx_bytes.wrapping_sub(base.rx_bytes),
            tx_packets: self.tx_packets.wrapping_sub(base.tx_packets),
            tx_bytes: self.tx_bytes.wrapping_sub(base.tx_bytes),
            rx_dropped: self.rx_dropped.wrapping_sub(base.rx_dropped),
            tx_segmented: self.tx_segmented.wrapping_sub(base.tx_segmented),
        }
    }
}

#[inline(always)]
fn bump(counter: &AtomicU64, by: u64) {
    counter.store(counter.load(Ordering::Relaxed).wrapping_add(by), Ordering::Relaxed);
}

#[derive(Debug)]
pub struct WorkerStats {
    drops: Box<[AtomicU64]>,
    ports: Box<[PortCounters]>,
    /// Frames over a port's ingress limit held in a delay queue (sent later, not dropped).
    delayed: AtomicU64,
    /// Times a batch stopped reading a port because its egress bucket was empty.
    throttled: AtomicU64,
}

impl Default for WorkerStats {
    fn default() -> Self {
        WorkerStats {
            drops: (0..DropReason::COUNT).map(|_| AtomicU64::new(0)).collect(),
            ports: (0..MAX_PORTS).map(|_| PortCounters::default()).collect(),
            delayed: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
        }
    }
}

impl WorkerStats {
    #[inline(always)]
    pub fn dropped(&self, reason: DropReason) {
        bump(&self.drops[reason as usize], 1);
    }

    pub fn dropped_many(&self, reason: DropReason, count: u64) {
        bump(&self.drops[reason as usize], count);
    }

    #[inline(always)]
    pub fn rx(&self, port: PortId, bytes: usize) {
        let c = &self.ports[port as usize];
        bump(&c.rx_packets, 1);
        bump(&c.rx_bytes, bytes.saturating_sub(vnet::LEN) as u64);
    }

    /// Counts a write of `bytes` to `port` by its outcome: sent, dropped for a full queue
    /// (EAGAIN), or failed.
    #[inline(always)]
    pub fn sent(&self, port: PortId, bytes: usize, outcome: &std::io::Result<()>) {
        match outcome {
            Ok(()) => self.tx(port, bytes),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => self.dropped(DropReason::TxQueueFull),
            Err(_) => self.dropped(DropReason::TxError),
        }
    }

    #[inline(always)]
    pub fn tx(&self, port: PortId, bytes: usize) {
        let c = &self.ports[port as usize];
        bump(&c.tx_packets, 1);
        bump(&c.tx_bytes, bytes.saturating_sub(vnet::LEN) as u64);
    }

    /// A frame read from `port` was dropped (its reason is counted apart).
    #[inline(always)]
    pub fn dropped_from(&self, port: PortId) {
        bump(&self.ports[port as usize].rx_dropped, 1);
    }

    /// A UDP GSO frame for `port` was cut into datagrams (sent and counted one by one).
    #[inline]
    pub fn segmented(&self, port: PortId) {
        bump(&self.ports[port as usize].tx_segmented, 1);
    }

    /// A frame over its port's ingress limit was queued to be sent later.
    pub fn delayed(&self) {
        bump(&self.delayed, 1);
    }

    /// A port's egress bucket stopped a batch from reading it.
    pub fn throttled(&self) {
        bump(&self.throttled, 1);
    }

    /// Frames delayed by ingress shaping (see [`WorkerStats::delayed`]).
    pub fn delayed_frames(&self) -> u64 {
        self.delayed.load(Ordering::Relaxed)
    }

    /// Batches cut short by egress shaping (see [`WorkerStats::throttled`]).
    pub fn throttled_batches(&self) -> u64 {
        self.throttled.load(Ordering::Relaxed)
    }

    pub fn drops(&self, reason: DropReason) -> u64 {
        self.drops[reason as usize].load(Ordering::Relaxed)
    }

    pub fn port(&self, port: PortId) -> PortTotals {
        let c = &self.ports[port as usize];
        PortTotals {
            rx_packets: c.rx_packets.load(Ordering::Relaxed),
            rx_bytes: c.rx_bytes.load(Ordering::Relaxed),
            tx_packets: c.tx_packets.load(Ordering::Relaxed),
            tx_bytes: c.tx_bytes.load(Ordering::Relaxed),
            rx_dropped: c.rx_dropped.load(Ordering::Relaxed),
            tx_segmented: c.tx_segmented.load(Ordering::Relaxed),
        }
    }
}

/// Sums a port's counters over all workers.
pub fn port_totals(workers: &[std::sync::Arc<WorkerStats>], port: PortId) -> PortTotals {
    workers.iter().map(|w| w.port(port)).fold(PortTotals::default(), |a, b| PortTotals {
        rx_packets: a.rx_packets + b.rx_packets,
        rx_bytes: a.rx_bytes + b.rx_bytes,
        tx_packets: a.tx_packets + b.tx_packets,
        tx_bytes: a.tx_bytes + b.tx_bytes,
        rx_dropped: a.rx_dropped + b.rx_dropped,
        tx_segmented: a.tx_segmented + b.tx_segmented,
    })
}
