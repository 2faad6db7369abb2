//! TAP queues with offloads: the kernel hands us whole 64 KB TSO/GSO frames with a
//! virtio_net_hdr instead of 1500-byte segments, so a TCP stream costs one read and one write
//! per ~64 KB (without this a userspace switch tops out near 2-3 Gbit/s here).
//!
//! Devices are multi-queue: each worker attaches its own queue, so no two threads share a file
//! descriptor. Attaching to an existing persistent device (created by the CNI plugin with
//! TUNSETPERSIST) is how a restarted vswitchd gets its pods back without recreating them.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use super::{byte_count, netns, PortQueue};
use crate::wire::vnet;

// From <linux/if_tun.h>.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const TUN_F_CSUM: libc::c_uint = 0x01;
const TUN_F_TSO4: libc::c_uint = 0x02;
const TUN_F_TSO6: libc::c_uint = 0x04;
const TUN_F_TSO_ECN: libc::c_uint = 0x08;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("TAP name '{0}' is empty, too long (max 15) or contains a NUL")]
    BadName(String),
    #[error("attaching to TAP '{name}': {source}")]
    Attach { name: String, source: io::Error },
    #[error("setting offloads on TAP '{name}': {source}")]
    Offload { name: String, source: io::Error },
    #[error("{0}")]
    Namespace(io::Error),
}

#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// One queue of a TAP device, owning its descriptor.
#[derive(Debug)]
pub struct TapQueue {
    fd: OwnedFd,
    name: String,
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
    /// Opens one queue of TAP `name` in network namespace `netns` (`None`: this one), with
    /// IFF_VNET_HDR and TSO/checksum offloads.
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
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE,
            _pad: [0; 22],
        };
        let c_name = CString::new(name).map_err(|_| TapError::BadName(name.into()))?;
        let bytes = c_name.as_bytes();
        if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ {
            return Err(TapError::BadName(name.into()));
        }
        req.name[..bytes.len()].copy_from_slice(bytes);

        let fds = netns::run_in(netns, || {
            // TUNSETIFF would create a missing device; a pod's must already exist. The lookup
            // runs on this thread, so it sees the namespace just entered.
            if attach == Attach::Existing && nix::net::if_::if_nametoindex(name).is_err() {
                return Err(io::Error::new(io::ErrorKind::NotFound, "no such device in that namespace"));
            }
            (0..count)
                .map(|_| {
                    let file = OpenOptions::new()
                        .read(true)
                        .write(true)
                        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
                        .open("/dev/net/tun")?;
                    let fd: OwnedFd = file.into();
                    // SAFETY: `req` is a valid, initialised ifreq that outlives the call.
                    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) } < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    if attach == Attach::CreatePersistent {
                        // SAFETY: TUNSETPERSIST takes an integer argument.
                        if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
                            return Err(io::Error::last_os_error());
                        }
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
                let queue = TapQueue { fd, name: name.into() };
                queue.set_offloads()?;
                Ok(queue)
            })
            .collect()
    }

    fn set_offloads(&self) -> Result<(), TapError> {
        let size: libc::c_int = vnet::LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads an int through the pointer, which is valid for the call.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), TUNSETVNETHDRSZ, &size as *const libc::c_int) } < 0 {
            return Err(TapError::Offload { name: self.name.clone(), source: io::Error::last_os_error() });
        }
        let offloads = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN;
        // SAFETY: TUNSETOFFLOAD takes the flags as an integer argument.
        if unsafe { libc::ioctl(self.fd.as_raw_fd(), TUNSETOFFLOAD, offloads as libc::c_ulong) } < 0 {
            return Err(TapError::Offload { name: self.name.clone(), source: io::Error::last_os_error() });
        }
        Ok(())
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
}
