//! What the machine was doing while a size was measured: the load average, this process's CPU
//! time (every simulated node's agent runs in it), and how late an agents' runtime wakes a
//! task that sleeps 1 ms (the floor under any ADD latency measured here: an ADD that waits for
//! its file write is woken the same way).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The 1-minute load average.
pub fn load_average() -> f64 {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    text.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
}

/// CPU seconds this process has used (user and system).
pub fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let hz = 100.0; // USER_HZ on Linux
    (ticks(11) + ticks(12)) / hz
}

/// Samples the runtime's wake-up lateness until dropped or stopped.
#[derive(Debug)]
pub struct Lateness {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Duration>>>,
}

impl Lateness {
    /// Sleeps 1 ms every 10 ms on `runtime` and keeps how much later than asked it woke.
    pub fn start(runtime: &tokio::runtime::Handle) -> Lateness {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let (stop2, samples2) = (stop.clone(), samples.clone());
        runtime.spawn(async move {
            while !stop2.load(Ordering::Relaxed) {
                let asked = Instant::now();
                tokio::time::sleep(Duration::from_millis(1)).await;
                samples2.lock().unwrap().push(asked.elapsed().saturating_sub(Duration::from_millis(1)));
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        Lateness { stop, samples }
    }

    /// Stops and returns the samples.
    pub fn finish(self) -> Vec<Duration> {
        self.stop.store(true, Ordering::Relaxed);
        std::mem::take(&mut *self.samples.lock().unwrap())
    }
}
