//! Running a closure inside another network namespace.
//!
//! `setns(2)` changes the namespace of the calling thread only, so the work runs on a fresh
//! thread that enters the namespace and ends afterwards; the rest of the process is untouched
//! (the CNI plugins' `ns.Do` does the same). File descriptors opened there (a TAP queue, a
//! socket) keep working from any thread.

use std::fs::File;
use std::io;
use std::path::Path;

use nix::sched::{setns, CloneFlags};

/// Runs `work` in the network namespace at `netns` (e.g. `/run/netns/pod1` or
/// `/proc/PID/ns/net`); `None` runs it here.
pub fn run_in<T: Send>(netns: Option<&Path>, work: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    let Some(path) = netns else { return work() };
    let ns =
        File::open(path).map_err(|e| io::Error::new(e.kind(), format!("network namespace {}: {e}", path.display())))?;
    std::thread::scope(|s| {
        s.spawn(move || {
            setns(&ns, CloneFlags::CLONE_NEWNET)
                .map_err(|e| io::Error::other(format!("entering network namespace {}: {e}", path.display())))?;
            work()
        })
        .join()
        .map_err(|_| io::Error::other("namespace thread panicked"))?
    })
}
