//! Running a closure inside another network namespace.
//!
//! `setns(2)` changes the namespace of the calling thread only, so the work runs on a fresh
//! thread that enters the namespace and ends afterwards; the rest of the process is untouched
//! (the CNI plugins' `ns.Do` does the same). File descriptors opened there (a TAP queue, a
//! socket) keep working from any thread.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {}: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("entering network namespace {}: {source}", path.display())]
    Enter { path: PathBuf, source: nix::Error },
    #[error("namespace thread panicked")]
    Panicked,
}

impl NetnsError {
    /// As the `io::Error` the work fails with: the kind of the open error is kept (a namespace
    /// that is gone is `NotFound`), the rest is `Other`; this error is its inner error.
    fn into_io(self) -> io::Error {
        let kind = match &self {
            NetnsError::Open { source, .. } => source.kind(),
            NetnsError::Enter { .. } | NetnsError::Panicked => io::ErrorKind::Other,
        };
        io::Error::new(kind, self)
    }
}

/// Runs `work` in the network namespace at `netns` (e.g. `/run/netns/pod1` or
/// `/proc/PID/ns/net`); `None` runs it here. Failing to get there is a [`NetnsError`] inside
/// the returned `io::Error` (the work's own errors are I/O too: sockets, TAP queues, netlink).
pub fn run_in<T: Send>(netns: Option<&Path>, work: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    let Some(path) = netns else { return work() };
    let ns = File::open(path).map_err(|source| NetnsError::Open { path: path.into(), source }.into_io())?;
    std::thread::scope(|s| {
        s.spawn(move || {
            setns(&ns, CloneFlags::CLONE_NEWNET)
                .map_err(|source| NetnsError::Enter { path: path.into(), source }.into_io())?;
            work()
        })
        .join()
        .map_err(|_| NetnsError::Panicked.into_io())?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_namespace_is_not_found() {
        let e = run_in(Some(Path::new("/nonexistent/netns")), || Ok(())).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(matches!(e.get_ref().and_then(|e| e.downcast_ref()), Some(NetnsError::Open { .. })), "{e:?}");
        assert!(e.to_string().contains("/nonexistent/netns"), "{e}");
    }

    #[test]
    fn none_runs_here_and_a_namespace_runs_on_another_thread() {
        let here = std::thread::current().id();
        assert_eq!(run_in(None, || Ok(std::thread::current().id())).unwrap(), here);
        // Our own namespace, entered again: needs CAP_SYS_ADMIN.
        if nix::unistd::geteuid().is_root() {
            let there = run_in(Some(Path::new("/proc/self/ns/net")), || Ok(std::thread::current().id()));
            assert_ne!(there.unwrap(), here);
        }
    }
}
