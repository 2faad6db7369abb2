//! Opening TAP devices: `TUNSETIFF` on `/dev/net/tun` with the flags every queue of a pod's
//! device must share (multi-queue, virtio-net header, no packet info), and creating the
//! persistent device the CNI plugin leaves in a pod's namespace for vswitchd to attach to.
//!
//! Both sides open queues of the same device, and the kernel refuses a queue whose flags differ
//! from the device's, so there is one [`TAP_FLAGS`] and one [`ifreq`] builder. vswitchd sets its
//! offloads on the queues it opens (`vswitch::port::tap`); the plugin's queue is closed at once.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

/// The flags of every queue: all queues of a multi-queue device must agree on them.
pub const TAP_FLAGS: libc::c_int = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_MULTI_QUEUE | libc::IFF_VNET_HDR;

// <linux/if_tun.h>, from libc, whose request numbers are right on every architecture (the
// direction bits of _IOW differ on mips, powerpc and sparc).
//
// TUNSETIFF is declared _IOW, but the kernel writes the ifreq back (with the name it chose), so
// the wrapper takes a mutable pointer: declared write-only, the kernel would write through a
// pointer Rust believes is read-only.
nix::ioctl_readwrite_bad!(tun_set_iff, libc::TUNSETIFF, libc::ifreq);

/// An ioctl whose argument is a value, not a pointer (TUNSETPERSIST, TUNSETOFFLOAD). The kernel
/// reads it as an unsigned long: passed as one, since a C int in a variadic call leaves the
/// register's upper half undefined (nix's `ioctl_write_int_bad!` passes an int).
///
/// # Safety
/// `request` takes its argument by value (reads no memory through it).
pub unsafe fn ioctl_with_value(fd: RawFd, request: libc::Ioctl, value: libc::c_ulong) -> io::Result<()> {
    // SAFETY: the caller guarantees the request reads no memory through its argument.
    if unsafe { libc::ioctl(fd, request, value) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("'{0}' is not an interface name (1 to 15 bytes; no '/', ':', whitespace or NUL; not '.' or '..')")]
    BadName(String),
    #[error("opening /dev/net/tun: {0}")]
    OpenTun(#[source] io::Error),
    #[error("TUNSETIFF on TAP '{name}': {source}")]
    SetIff { name: String, source: io::Error },
    #[error("TUNSETPERSIST on TAP '{name}': {source}")]
    Persist { name: String, source: io::Error },
}

/// The OS error itself (its errno intact, for callers that decide by it), or `InvalidInput` for
/// a bad name.
impl From<TapError> for io::Error {
    fn from(e: TapError) -> io::Error {
        match e {
            TapError::BadName(_) => io::Error::new(io::ErrorKind::InvalidInput, e),
            TapError::OpenTun(source) | TapError::SetIff { source, .. } | TapError::Persist { source, .. } => source,
        }
    }
}

/// Is `name` a valid interface name, by the kernel's rules (`dev_valid_name`): 1 to 15 bytes,
/// no `/`, `:`, whitespace or NUL, not `.` or `..`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
}

/// The request `TUNSETIFF` takes for TAP `name`: the name (NUL-terminated, it fits by
/// [`valid_name`]) and [`TAP_FLAGS`].
pub fn ifreq(name: &str) -> Result<libc::ifreq, TapError> {
    if !valid_name(name) {
        return Err(TapError::BadName(name.chars().take(40).collect()));
    }
    // SAFETY: ifreq is plain data (a name and a union of integers, addresses and a pointer
    // nobody reads here); all zeroes is a valid value of it.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &src) in request.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = src as libc::c_char;
    }
    request.ifr_ifru.ifru_flags = TAP_FLAGS as libc::c_short;
    Ok(request)
}

/// Opens one queue of TAP `name` in the calling thread's namespace, non-blocking and
/// close-on-exec, creating the device if it does not exist (the kernel creates on `TUNSETIFF`
/// unless the name is taken by another kind of device).
pub fn open_queue(name: &str) -> Result<OwnedFd, TapError> {
    let mut request = ifreq(name)?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(TapError::OpenTun)?;
    // SAFETY: the fd is open, and `request` is an initialised ifreq that outlives the call.
    unsafe { tun_set_iff(file.as_raw_fd(), &mut request) }
        .map_err(|e| TapError::SetIff { name: name.into(), source: e.into() })?;
    Ok(file.into())
}

/// Makes the device of `queue` persistent: it outlives its queues, so the plugin can create it
/// and exit, and vswitchd attach its own queues later (or again after a restart).
pub fn set_persistent(queue: BorrowedFd<'_>, name: &str) -> Result<(), TapError> {
    // SAFETY: the fd is a TAP queue; TUNSETPERSIST takes its flag by value.
    unsafe { ioctl_with_value(queue.as_raw_fd(), libc::TUNSETPERSIST, 1) }
        .map_err(|source| TapError::Persist { name: name.into(), source })
}

/// Creates TAP `name` (or finds it) in the calling thread's namespace and makes it persistent.
/// The queue opened for that is closed again.
pub fn create_persistent(name: &str) -> Result<(), TapError> {
    let queue = open_queue(name)?;
    set_persistent(queue.as_fd(), name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_kernels_rules() {
        for good in ["eth0", "a", "fifteen-bytes-x", "net1.5"] {
            assert!(valid_name(good), "{good}");
        }
        for bad in ["", ".", "..", "a/b", "a:b", "a b", "a\tb", "a\0b", "sixteen-bytes-xx"] {
            assert!(!valid_name(bad), "{bad:?}");
            assert!(matches!(ifreq(bad), Err(TapError::BadName(_))), "{bad:?}");
        }
    }

    #[test]
    fn the_request_carries_the_name_nul_terminated_and_the_tap_flags() {
        let request = ifreq("fifteen-bytes-x").unwrap();
        let name: Vec<u8> = request.ifr_name.iter().map(|&c| c as u8).collect();
        assert_eq!(&name[..15], b"fifteen-bytes-x");
        assert_eq!(name[15], 0);
        // SAFETY: ifreq() wrote the flags member of the union.
        let flags = unsafe { request.ifr_ifru.ifru_flags };
        assert_eq!(flags as libc::c_int, libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_MULTI_QUEUE | libc::IFF_VNET_HDR);
    }

    #[test]
    fn os_errors_keep_their_errno_through_io_error() {
        let e = TapError::SetIff { name: "eth0".into(), source: io::Error::from_raw_os_error(libc::EBUSY) };
        assert_eq!(io::Error::from(e).raw_os_error(), Some(libc::EBUSY));
        assert_eq!(io::Error::from(TapError::BadName("a/b".into())).kind(), io::ErrorKind::InvalidInput);
    }

    /// Root only (skipped otherwise): in a network namespace of its own, which the kernel
    /// removes with its TAPs when the thread that made it ends, so nothing is left behind.
    #[test]
    fn a_persistent_tap_outlives_its_queue_and_takes_more_queues() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root (a network namespace and /dev/net/tun)");
            return;
        }
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare a network namespace");
            create_persistent("tap-host-t0").unwrap();
            let index = nix::net::if_::if_nametoindex("tap-host-t0").expect("the device outlived its queue");
            // Two more queues of the same device: multi-queue, flags agreeing.
            let queues = [open_queue("tap-host-t0").unwrap(), open_queue("tap-host-t0").unwrap()];
            assert_eq!(nix::net::if_::if_nametoindex("tap-host-t0").unwrap(), index);
            drop(queues);
            assert!(nix::net::if_::if_nametoindex("tap-host-t0").is_ok(), "still persistent");
        })
        .join()
        .unwrap();
    }
}
