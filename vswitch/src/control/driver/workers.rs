//! The forwarding threads as the control plane sees them: started, stopped, checked for health,
//! and the counters they keep (with the control plane's own, for what it sends and drops).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::control::config::Config;
use crate::datapath::{spawn_worker, stats, Datapath, PortTotals, WorkerStats};
use crate::pipeline::{DropReason, IcmpLimiter};
use crate::state::PortId;

/// Every worker's counters, and the control plane's own last.
#[derive(Debug)]
pub struct Counters {
    all: Vec<Arc<WorkerStats>>,
    control: Arc<WorkerStats>,
}

impl Counters {
    fn new(mut workers: Vec<Arc<WorkerStats>>) -> Counters {
        let control = Arc::new(WorkerStats::default());
        workers.push(control.clone());
        Counters { all: workers, control }
    }

    /// What the control plane counts itself: frames it sends on the uplink, and its drops.
    pub fn control(&self) -> &WorkerStats {
        &self.control
    }

    pub fn port_totals(&self, port: PortId) -> PortTotals {
        stats::port_totals(&self.all, port)
    }

    /// Every drop reason with its count over all workers and the control plane.
    pub fn drops(&self) -> Vec<(DropReason, u64)> {
        DropReason::ALL.iter().map(|&r| (r, self.all.iter().map(|s| s.drops(r)).sum())).collect()
    }

    /// Frames held back for ingress limits, and batches egress limits stopped reading.
    pub fn shaping(&self) -> (u64, u64) {
        (self.all.iter().map(|s| s.delayed_frames()).sum(), self.all.iter().map(|s| s.throttled_batches()).sum())
    }
}

/// What /healthz reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub generation: u64,
    pub workers: usize,
    /// Empty when healthy.
    pub problems: Vec<String>,
}

#[derive(Debug)]
pub struct Workers {
    count: usize,
    handles: Mutex<Vec<JoinHandle<()>>>,
    /// Since when some worker has been behind the latest state (for `health`).
    behind_since: Mutex<Option<Instant>>,
}

impl Workers {
    /// Starts `config.workers` threads forwarding with `datapath`; returns them, what wakes each,
    /// and their counters.
    pub fn spawn(
        config: &Config,
        datapath: &Arc<Datapath>,
    ) -> std::io::Result<(Workers, Vec<Arc<mio::Waker>>, Counters)> {
        let mut wakers = Vec::new();
        let mut handles = Vec::new();
        let mut stats = Vec::new();
        for index in 0..config.workers {
            let s = Arc::new(WorkerStats::default());
            let icmp = IcmpLimiter::new(config.icmp_errors_per_second, config.icmp_burst);
            let (waker, handle) = spawn_worker(index, datapath.clone(), s.clone(), icmp, config.forwarding)?;
            wakers.push(waker);
            handles.push(handle);
            stats.push(s);
        }
        Ok((Workers::with(config.workers, handles), wakers, Counters::new(stats)))
    }

    /// No threads (an in-memory switch): only the control plane's counters.
    pub fn none(count: usize) -> (Workers, Counters) {
        (Workers::with(count, Vec::new()), Counters::new(Vec::new()))
    }

    fn with(count: usize, handles: Vec<JoinHandle<()>>) -> Workers {
        Workers { count, handles: Mutex::new(handles), behind_since: Mutex::new(None) }
    }

    pub fn count(&self) -> usize {
        self.count
    }

    /// Is the datapath sound: every worker thread alive, and every worker forwarding with the
    /// latest published state (`generation`; the oldest any worker uses is `quiesced`). An idle
    /// worker takes it up within its 200 ms poll timeout, so one still behind after
    /// `STALE_AFTER` is stuck.
    pub fn health(&self, generation: u64, quiesced: u64) -> Health {
        const STALE_AFTER: Duration = Duration::from_secs(2);
        let dead = self.handles.lock().unwrap_or_else(|e| e.into_inner()).iter().filter(|w| w.is_finished()).count();
        let mut behind = self.behind_since.lock().unwrap_or_else(|e| e.into_inner());
        let stuck_for = if quiesced >= generation {
            *behind = None;
            Duration::ZERO
        } else {
            behind.get_or_insert_with(Instant::now).elapsed()
        };
        let mut problems = Vec::new();
        if dead > 0 {
            problems.push(format!("{dead} of {} workers died", self.count));
        }
        if stuck_for > STALE_AFTER {
            problems.push(format!("a worker has not taken up state {generation} for {stuck_for:?}"));
        }
        Health { generation, workers: self.count, problems }
    }

    /// Stops the threads (woken by `wake`) and waits for them.
    pub fn stop(&self, datapath: &Datapath, wake: impl FnOnce()) {
        datapath.stop.store(true, Ordering::Relaxed);
        wake();
        let handles = std::mem::take(&mut *self.handles.lock().unwrap_or_else(|e| e.into_inner()));
        for handle in handles {
            let _ = handle.join();
        }
    }
}
