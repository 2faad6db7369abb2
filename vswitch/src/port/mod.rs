//! Ports: TAP devices (one queue per worker) and an in-memory port for tests and benches.

pub mod memory;
pub use vswitch_host::netns;
pub mod packet;
pub mod tap;

pub use memory::MemoryPort;
pub use tap::{TapError, TapQueue};

use std::os::fd::RawFd;
use std::sync::Arc;

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
    fn raw_fd(&self) -> Option<RawFd>;
    /// Whether a UDP GSO super-frame (virtio-net `GSO_UDP_L4`) may be written to this queue
    /// whole: false where the kernel side refused USO, and the worker then cuts such frames into
    /// datagrams itself (`wire::udp_gso`). Read per GSO frame only, so it must be cheap.
    fn takes_udp_gso(&self) -> bool {
        true
    }
    /// Frames the kernel dropped on this queue's way in (its buffer was full) since the last
    /// call; 0 where the kernel does not say.
    fn take_kernel_drops(&self) -> u64 {
        0
    }
}

/// A queue that says it takes no UDP GSO frames, whatever the one it wraps says: vswitchd's
/// `force_udp_segmentation` (for tests and diagnosis) puts every port's queues in one, so the
/// worker's software segmentation runs on a kernel that would take the frames whole.
pub struct NoUdpGso(pub Arc<dyn PortQueue>);

impl std::fmt::Debug for NoUdpGso {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("NoUdpGso").field(&self.0.raw_fd()).finish()
    }
}

impl PortQueue for NoUdpGso {
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.recv(buf)
    }

    fn send(&self, buf: &[u8]) -> io::Result<()> {
        self.0.send(buf)
    }

    fn raw_fd(&self) -> Option<RawFd> {
        self.0.raw_fd()
    }

    fn takes_udp_gso(&self) -> bool {
        false
    }

    fn take_kernel_drops(&self) -> u64 {
        self.0.take_kernel_drops()
    }
}
