//! The egress of a UDP GSO frame into a port that cannot take it whole (its kernel refused USO,
//! or `force_udp_segmentation`): the frame is cut into datagrams ([`crate::wire::udp_gso`]) in
//! this worker's scratch buffer, and each goes out as any frame does: through the port's ingress
//! shaping, then staged on the worker's io_uring (one submission for the whole frame's
//! datagrams, after the batch's frames staged before them, so nothing overtakes), or written one
//! by one where there is no ring. Only such frames come here; the forwarder's path for every
//! other frame is unchanged.

use std::sync::Arc;

use super::shaper::Shaper;
use super::tx_ring::TxRing;
use super::WorkerStats;
use crate::pipeline::{DropReason, MAX_FRAME};
use crate::port::PortQueue;
use crate::state::{PortId, TokenBucket};
use crate::wire::udp_gso::{UdpGso, MAX_SEGMENTS};

/// Room for every datagram of the largest frame at once (its payload, plus headers and an empty
/// virtio-net header per datagram), so one submission carries them all.
const SCRATCH: usize = MAX_FRAME + MAX_SEGMENTS * 128;

/// Where the datagrams go: the port, its queue of this worker, and its ingress limit if any.
pub(super) struct Egress<'a> {
    pub port: PortId,
    pub queue: &'a Arc<dyn PortQueue>,
    pub ingress: Option<&'a TokenBucket>,
}

/// A worker's segmentation buffer.
pub(super) struct Segmenter {
    scratch: Box<[u8]>,
}

impl Default for Segmenter {
    fn default() -> Self {
        Segmenter::with_scratch(SCRATCH)
    }
}

impl Segmenter {
    /// With a scratch buffer of `len` bytes (at least [`MAX_FRAME`]: any one datagram fits);
    /// tests make it small to exercise the buffer filling up.
    fn with_scratch(len: usize) -> Segmenter {
        Segmenter { scratch: vec![0u8; len.max(MAX_FRAME)].into_boxed_slice() }
    }

    /// Cuts `frame` (vnet header first, a `GSO_UDP_L4` frame) into datagrams and sends them to
    /// `to`, counting each as sent (or dropped) and the frame as segmented. A frame that cannot
    /// be cut is sent nowhere: the error is the drop reason for the caller to count.
    pub fn send(
        &mut self,
        frame: &[u8],
        to: Egress<'_>,
        shaper: &mut Shaper,
        ring: &mut Option<TxRing>,
        stats: &WorkerStats,
        now_ns: u64,
    ) -> Result<(), DropReason> {
        let gso = UdpGso::parse(frame).map_err(|_| DropReason::UdpGsoMalformed)?;
        stats.segmented(to.port);
        let fd = to.queue.raw_fd();
        let mut used = 0;
        for index in 0..gso.segments() {
            if used + gso.segment_len(index) > self.scratch.len() {
                // Full: what is staged must go before its buffer is written over.
                submit(ring, stats);
                used = 0;
            }
            let len = gso.write_segment(frame, index, &mut self.scratch[used..]);
            let datagram = &self.scratch[used..used + len];
            if let Some(bucket) = to.ingress {
                if !shaper.offer(to.port, to.queue, bucket, datagram, now_ns, stats) {
                    continue;
                }
            }
            match (ring.as_mut(), fd) {
                (Some(r), Some(fd)) => {
                    // SAFETY: the datagram is in the scratch buffer, which is not written again
                    // before the ring's next submission (above and below), and `fd` belongs to a
                    // queue the caller's snapshot holds past it.
                    if let Err(e) = unsafe { r.stage(fd, datagram, to.port, stats) } {
                        tracing::error!(error = %e, "io_uring failed: one write per frame from now on");
                        *ring = None;
                        stats.sent(to.port, len, &to.queue.send(datagram));
                    }
                }
                _ => stats.sent(to.port, len, &to.queue.send(datagram)),
            }
            used += len;
        }
        submit(ring, stats);
        Ok(())
    }
}

fn submit(ring: &mut Option<TxRing>, stats: &WorkerStats) {
    if let Some(r) = ring.as_mut() {
        if let Err(e) = r.submit(stats) {
            tracing::error!(error = %e, "io_uring failed: one write per frame from now on");
            *ring = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

    use super::*;
    use crate::port::MemoryPort;
    use crate::wire::checksum;
    use crate::wire::vnet::{self, VnetHeader};

    /// One end of a datagram socket pair as a port queue that takes no UDP GSO frames: one
    /// frame per datagram, like a TAP, with a descriptor for the ring.
    struct SocketPort(OwnedFd);

    impl PortQueue for SocketPort {
        fn recv(&self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::ErrorKind::WouldBlock.into())
        }
        fn send(&self, buf: &[u8]) -> io::Result<()> {
            // SAFETY: `buf` is valid for reads of its length.
            crate::port::byte_count(unsafe { libc::send(self.0.as_raw_fd(), buf.as_ptr().cast(), buf.len(), 0) })
                .map(drop)
        }
        fn raw_fd(&self) -> Option<RawFd> {
            Some(self.0.as_raw_fd())
        }
        fn takes_udp_gso(&self) -> bool {
            false
        }
    }

    fn socket_pair() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors socketpair writes.
        let ret =
            unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_NONBLOCK, 0, fds.as_mut_ptr()) };
        assert_eq!(ret, 0, "socketpair: {}", io::Error::last_os_error());
        // The default buffer holds fewer datagrams than a 64 KB frame makes.
        let size: libc::c_int = 4 << 20;
        for fd in fds {
            // SAFETY: `size` lives across the call and its size is passed.
            unsafe {
                libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_SNDBUF, (&size as *const libc::c_int).cast(), 4);
                libc::setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, (&size as *const libc::c_int).cast(), 4);
            }
        }
        // SAFETY: both descriptors are fresh and ours.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    /// An IPv4 GSO_UDP_L4 frame of `payload` bytes cut at `gso_size` (checksums are checked by
    /// the segmenter's own tests; here the sizes and order matter).
    fn frame(payload: usize, gso_size: u16) -> Vec<u8> {
        let l3 = vnet::LEN + 14;
        let mut f = vec![0u8; l3 + 28 + payload];
        f[vnet::LEN + 12..vnet::LEN + 14].copy_from_slice(&[0x08, 0x00]);
        let total = (28 + payload) as u16;
        f[l3..l3 + 20].copy_from_slice(&[0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2]);
        f[l3 + 2..l3 + 4].copy_from_slice(&total.to_be_bytes());
        let c = checksum::checksum(&f[l3..l3 + 20]);
        f[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
        f[l3 + 24..l3 + 26].copy_from_slice(&(total - 20).to_be_bytes());
        for (i, b) in f[l3 + 28..].iter_mut().enumerate() {
            *b = (i / 1000) as u8;
        }
        let h = VnetHeader {
            flags: vnet::FLAG_NEEDS_CSUM,
            gso_type: vnet::GSO_UDP_L4,
            hdr_len: 42,
            gso_size,
            csum_start: 34,
            csum_offset: 6,
        };
        h.write(&mut f);
        f
    }

    fn run(segmenter: &mut Segmenter, ring: &mut Option<TxRing>, frame: &[u8]) -> (WorkerStats, Vec<Vec<u8>>) {
        let (ours, theirs) = socket_pair();
        let queue: Arc<dyn PortQueue> = Arc::new(SocketPort(ours));
        let stats = WorkerStats::default();
        let to = Egress { port: 3, queue: &queue, ingress: None };
        segmenter.send(frame, to, &mut Shaper::default(), ring, &stats, 0).unwrap();
        let mut received = Vec::new();
        let mut buf = vec![0u8; MAX_FRAME];
        loop {
            // SAFETY: `buf` is valid for writes of its length.
            let n = unsafe { libc::recv(theirs.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if n < 0 {
                break;
            }
            received.push(buf[..n as usize].to_vec());
        }
        (stats, received)
    }

    fn payloads(datagrams: &[Vec<u8>]) -> Vec<u8> {
        datagrams.iter().flat_map(|d| d[vnet::LEN + 42..].to_vec()).collect()
    }

    #[test]
    fn datagrams_go_out_in_order_through_the_ring_without_it_and_when_the_scratch_fills() {
        // 47 datagrams: 67 KB with their headers, more than the smallest scratch buffer holds.
        let f = frame(65_000, 1400);
        let expected = f[vnet::LEN + 42..].to_vec();
        let segments = 65_000usize.div_ceil(1400);
        for (scratch, with_ring) in [(SCRATCH, true), (SCRATCH, false), (0, true)] {
            let mut segmenter = Segmenter::with_scratch(scratch);
            let mut ring = with_ring.then(|| TxRing::new(32).expect("io_uring"));
            let (stats, received) = run(&mut segmenter, &mut ring, &f);
            assert_eq!(received.len(), segments, "scratch {scratch}, ring {with_ring}");
            assert!(received.iter().all(|d| d.len() <= vnet::LEN + 42 + 1400));
            assert_eq!(payloads(&received), expected, "the payload in order");
            assert_eq!(stats.port(3).tx_packets, segments as u64);
            assert_eq!(stats.port(3).tx_segmented, 1);
            assert!(ring.is_some() == with_ring, "the ring kept working");
        }
    }

    #[test]
    fn a_malformed_frame_sends_nothing_and_names_its_drop() {
        let mut f = frame(5000, 1400);
        f[8] = 16; // csum_offset: TCP's
        let port = Arc::new(MemoryPort::default());
        let queue: Arc<dyn PortQueue> = port.clone();
        let stats = WorkerStats::default();
        let to = Egress { port: 1, queue: &queue, ingress: None };
        let result = Segmenter::default().send(&f, to, &mut Shaper::default(), &mut None, &stats, 0);
        assert_eq!(result, Err(DropReason::UdpGsoMalformed));
        assert!(port.take_sent().is_empty());
        assert_eq!((stats.port(1).tx_packets, stats.port(1).tx_segmented), (0, 0));
    }
}
