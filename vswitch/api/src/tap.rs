//! Opening TAP devices: `TUNSETIFF` on `/dev/net/tun` with the flags every queue of a pod's
//! device must share (multi-queue, virtio-net header, no packet info), and creating the
//! persistent device the CNI plugin leaves in a pod's namespace for vswitchd to attach to.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

/// The flags of every queue: all queues of a multi-queue device must agree on them.
pub const TAP_FLAGS: libc::c_int = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_MULTI_QUEUE | libc::IFF_VNET_HDR;

nix::ioctl_write_ptr_bad!(tun_set_iff, libc::TUNSETIFF, libc::ifreq);
nix::ioctl_write_int_bad!(tun_set_persist, libc::TUNSETPERSIST);

/// Is `name` a valid interface name, by the kernel's rules (`dev_valid_name`): 1 to 15 bytes,
/// no `/`, `:`, whitespace or NUL, not `.` or `..`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name.chars().any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
}

/// Opens one queue of TAP `name` in the calling thread's namespace, creating the device if it
/// does not exist (the kernel creates on `TUNSETIFF` unless the name is taken by another kind).
pub fn open_queue(name: &str) -> io::Result<OwnedFd> {
    if !valid_name(name) {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("'{name}' is not an interface name")));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(|e| io::Error::new(e.kind(), format!("/dev/net/tun: {e}")))?;
    // SAFETY: ifreq is plain data; all-zero is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in request.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    request.ifr_ifru.ifru_flags = TAP_FLAGS as libc::c_short;
    // SAFETY: the fd is open, and TUNSETIFF reads an ifreq that outlives the call.
    unsafe { tun_set_iff(file.as_raw_fd(), &request) }.map_err(io::Error::from)?;
    Ok(file.into())
}

/// Creates TAP `name` (or finds it) in the calling thread's namespace and makes it persistent,
/// so it outlives this process and vswitchd can attach its own queues.
pub fn create_persistent(name: &str) -> io::Result<()> {
    let queue = open_queue(name)?;
    // SAFETY: the fd is a TAP queue; TUNSETPERSIST takes an int argument.
    unsafe { tun_set_persist(queue.as_raw_fd(), 1) }.map_err(io::Error::from)?;
    Ok(())
}
