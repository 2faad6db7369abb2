//! Ports: TAP devices (one queue per worker) and an in-memory port for tests and benches.

pub mod memory;
pub use vswitch_api::netns;
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

/// The error [`PortQueue::recv`] returns for a frame longer than the buffer. The frame is gone
/// from the queue (it is never forwarded cut short); the queue may hold more behind it.
pub fn frame_too_long() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "frame longer than the buffer")
}

/// Whether a [`PortQueue::recv`] error is [`frame_too_long`]. No errno maps to `InvalidData`,
/// so the kind alone tells it from an I/O failure.
pub fn is_frame_too_long(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::InvalidData
}

/// One queue of a port, as a worker uses it: non-blocking reads and writes of whole frames,
/// each preceded by a virtio_net_hdr.
pub trait PortQueue: Send + Sync {
    /// Reads one frame into `buf`; `WouldBlock` when the queue is empty, [`frame_too_long`]
    /// when the frame did not fit (it is consumed, and the next read gets the next frame).
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
