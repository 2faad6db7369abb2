//! Ports: TAP devices (one queue per worker) and an in-memory port for tests and benches.

pub mod memory;
pub mod netns;
pub mod packet;
pub mod tap;

pub use memory::MemoryPort;
pub use tap::{TapError, TapQueue};

use std::io;

/// The result of a read/write/recv/send system call: the byte count, or the errno.
#[inline]
pub(crate) fn byte_count(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// One queue of a port, as a worker uses it: non-blocking reads and writes of whole frames,
/// each preceded by a virtio_net_hdr.
pub trait PortQueue: Send + Sync {
    /// Reads one frame into `buf`; `WouldBlock` when the queue is empty.
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes one frame; `WouldBlock` when the queue is full.
    fn send(&self, buf: &[u8]) -> io::Result<()>;
    /// The descriptor to poll, if the queue has one.
    fn raw_fd(&self) -> Option<std::os::fd::RawFd>;
    /// Frames the kernel dropped on this queue's way in (its buffer was full) since the last
    /// call; 0 where the kernel does not say.
    fn take_kernel_drops(&self) -> u64 {
        0
    }
}
