//! TAP queues with offloads: the kernel hands us whole 64 KB TSO/GSO frames with a
//! virtio_net_hdr instead of 1500-byte segments, so a TCP stream costs one read and one write
//! per ~64 KB (without this a userspace switch tops out near 2-3 Gbit/s here).
//!
//! Devices are multi-queue: each worker attaches its own queue, so no two threads share a file
//! descriptor. Attaching to an existing persistent device (created by the CNI plugin with
//! TUNSETPERSIST) is how a restarted vswitchd gets its pods back without recreating them.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Once;

use vswitch_host::tap::{self as host_tap, ioctl_with_value};

use super::{byte_count, netns, PortQueue};
use crate::wire::vnet;

// TUNSETIFF, its request and the flags are vswitch-host's (shared with the plugin, whose queues
// must match ours); the vnet header size and the offloads are vswitchd's alone.
nix::ioctl_write_ptr_bad!(tun_set_vnet_hdr_sz, libc::TUNSETVNETHDRSZ, libc::c_int);

/// What every queue asks for: checksums and TSO left to us, so TCP crosses in 64 KB frames.
const OFFLOADS: libc::c_uint = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_TSO_ECN;
/// UDP segmentation offload (Linux 6.2): a pod's UDP_SEGMENT sends (QUIC, WireGuard) reach us as
/// one GSO_UDP_L4 frame instead of one read per datagram. The kernel takes both or neither, and
/// an older one refuses the unknown bits with EINVAL.
const USO: libc::c_uint = libc::TUN_F_USO4 | libc::TUN_F_USO6;

/// What the kernel said to USO on the first TAP that asked: 0 nobody asked yet, 1 yes, 2 no.
static KERNEL_USO: AtomicU8 = AtomicU8::new(0);

/// Whether this kernel takes UDP GSO frames, as far as a TAP has found out (false until one has
/// asked). The uplink's packet socket goes by it: AF_PACKET parses its virtio-net headers with
/// the kernel function that learned GSO_UDP_L4 in the release that gave TUN its USO (6.2), and
/// the host port's TAP is opened before the uplink.
pub fn kernel_takes_udp_gso() -> bool {
    KERNEL_USO.load(Ordering::Relaxed) == 1
}

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("TAP name '{0}' is not an interface name (1 to 15 bytes; no '/', ':', whitespace or NUL)")]
    BadName(String),
    #[error("attaching to TAP '{name}': {source}")]
    Attach { name: String, source: io::Error },
    #[error("setting offloads on TAP '{name}': {source}")]
    Offload { name: String, source: io::Error },
    #[error("{0}")]
    Namespace(io::Error),
}

/// One queue of a TAP device, owning its descriptor.
#[derive(Debug)]
pub struct TapQueue {
    fd: OwnedFd,
    name: String,
    /// The kernel took USO on this device: GSO_UDP_L4 frames may be written to it whole.
    udp_gso: bool,
}

/// How to open a queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    /// The device must already exist (a pod's TAP, made by the CNI plugin).
    Existing,
    /// Create it if missing and make it persistent (the host port, the CNI plugin itself).
    CreatePersistent,
}

impl TapQueue {
    /// A queue of TAP `name` from a descriptor opened elsewhere (handed over by the vswitchd
    /// being upgraded, with its flags set). The offloads are asked for again: the instance
    /// being replaced may predate some (USO), and this one must know what the device took.
    pub fn from_fd(fd: OwnedFd, name: &str) -> TapQueue {
        let mut queue = TapQueue { fd, name: name.into(), udp_gso: false };
        match queue.set_offloads() {
            Ok(uso) => queue.udp_gso = uso,
            // It kept the offloads the old instance set (at least TSO and checksums).
            Err(e) => tracing::warn!(port = %name, error = %e, "offloads not renewed on a handed-over queue"),
        }
        queue
    }

    /// Opens one queue of TAP `name` in network namespace `netns` (`None`: this one), with
    /// IFF_VNET_HDR and TSO/USO/checksum offloads.
    pub fn open(name: &str, netns: Option<&Path>, attach: Attach) -> Result<TapQueue, TapError> {
        Ok(Self::open_many(name, netns, attach, 1)?.pop().expect("one queue"))
    }

    /// Opens `count` queues of TAP `name` (one per worker) with a single visit to the namespace.
    pub fn open_many(
        name: &str,
        netns: Option<&Path>,
        attach: Attach,
        count: usize,
    ) -> Result<Vec<TapQueue>, TapError> {
        if !host_tap::valid_name(name) {
            return Err(TapError::BadName(name.into()));
        }

        let fds = netns::run_in(netns, || {
            // TUNSETIFF would create a missing device; a pod's must already exist. The lookup
            // runs on this thread, so it sees the namespace just entered.
            if attach == Attach::Existing && nix::net::if_::if_nametoindex(name).is_err() {
                return Err(io::Error::new(io::ErrorKind::NotFound, "no such device in that namespace"));
            }
            (0..count)
                .map(|_| {
                    let fd = host_tap::open_queue(name)?;
                    if attach == Attach::CreatePersistent {
                        host_tap::set_persistent(fd.as_fd(), name)?;
                    }
                    Ok(fd)
                })
                .collect::<io::Result<Vec<_>>>()
        })
        .map_err(|source| match source.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::PermissionDenied | io::ErrorKind::InvalidInput => {
                TapError::Attach { name: name.into(), source }
            }
            _ if source.raw_os_error().is_some() => TapError::Attach { name: name.into(), source },
            _ => TapError::Namespace(source),
        })?;

        fds.into_iter()
            .map(|fd| {
                let mut queue = TapQueue { fd, name: name.into(), udp_gso: false };
                queue.udp_gso = queue.set_offloads()?;
                Ok(queue)
            })
            .collect()
    }

    /// Sets the vnet header size and the offloads, USO included where the kernel takes it;
    /// returns whether it did. Without USO (EINVAL: a kernel before 6.2) the rest is set alone,
    /// and the kernel segments UDP GSO sends before we read them, as it always did.
    fn set_offloads(&self) -> Result<bool, TapError> {
        let offload_error = |source| TapError::Offload { name: self.name.clone(), source };
        let size: libc::c_int = vnet::LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads an int through the pointer, which is valid for the call.
        unsafe { tun_set_vnet_hdr_sz(self.fd.as_raw_fd(), &size) }.map_err(|e| offload_error(e.into()))?;
        let set = |offloads: libc::c_uint| {
            // SAFETY: TUNSETOFFLOAD takes the flags by value.
            unsafe { ioctl_with_value(self.fd.as_raw_fd(), libc::TUNSETOFFLOAD, offloads.into()) }
        };
        match set(OFFLOADS | USO) {
            Ok(()) => {
                KERNEL_USO.store(1, Ordering::Relaxed);
                Ok(true)
            }
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                set(OFFLOADS).map_err(offload_error)?;
                KERNEL_USO.store(2, Ordering::Relaxed);
                static SAID: Once = Once::new();
                SAID.call_once(|| {
                    tracing::info!(
                        port = %self.name,
                        "the kernel refused UDP segmentation offload (USO, Linux 6.2+): pods' UDP GSO sends are \
                         segmented before vswitchd reads them, and any UDP GSO frame for such a port is \
                         segmented by vswitchd"
                    )
                });
                Ok(false)
            }
            Err(e) => Err(offload_error(e)),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl PortQueue for TapQueue {
    #[inline]
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of its length.
        let n = byte_count(unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) })?;
        // A TAP read of a frame longer than the buffer copies what fits and returns the whole
        // length (a device whose gso_max_size was raised past 64 KB can hand one over).
        if n > buf.len() {
            return Err(super::frame_too_long());
        }
        Ok(n)
    }

    #[inline]
    fn send(&self, buf: &[u8]) -> io::Result<()> {
        // SAFETY: `buf` is valid for reads of its length.
        byte_count(unsafe { libc::write(self.fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()) }).map(drop)
    }

    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.fd.as_raw_fd())
    }

    #[inline]
    fn takes_udp_gso(&self) -> bool {
        self.udp_gso
    }
}
