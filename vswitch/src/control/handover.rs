//! Upgrades without loss: a new vswitchd (`--upgrade`) takes the running one's ports over a unix
//! socket, `STATE_DIR/upgrade.sock`.
//!
//! 1. The new instance connects and asks; the running one stops taking changes (mutating
//!    requests get `unavailable`, so the CNI plugin retries) and sends its saved state and, for
//!    every port, the descriptors of its queues (SCM_RIGHTS): each pod's and the host port's TAP
//!    queues, the uplink's sockets. Nothing is closed or reopened.
//! 2. The new instance attaches the same queues, starts its workers, takes over the API socket
//!    and answers `ok`. For that moment both forward from the same queues with the same state;
//!    a frame is read by one of them, so none is lost.
//! 3. The old instance stops its workers and exits (leaving the API socket to the new one), and
//!    the new one takes the node lock it released. If the new instance fails before `ok`, the old
//!    one simply carries on.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, IoSlice, IoSliceMut, Read, Write};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};

use super::persist::SavedState;
use crate::wire::MacAddr;

/// Descriptors per message (the kernel takes at most 253).
const FDS_PER_MESSAGE: usize = 200;
/// How long the old instance waits for the new one's `ok`.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);
const PROTOCOL: u32 = 1;

pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("upgrade.sock")
}

/// Which descriptors a port hands over, in the order they follow the header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HandedPort {
    pub name: String,
    pub fds: usize,
}

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    protocol: u32,
    workers: usize,
    state: SavedState,
    ports: Vec<HandedPort>,
    /// The uplink's sending socket, after the ports' descriptors.
    uplink_sender: bool,
    /// The uplink's resolved neighbours (absent from older instances).
    #[serde(default)]
    neighbors: Vec<(IpAddr, MacAddr)>,
}

/// What the new instance received.
#[derive(Debug)]
pub struct Handover {
    pub state: SavedState,
    pub workers: usize,
    queues: HashMap<String, Vec<OwnedFd>>,
    pub uplink_sender: Option<OwnedFd>,
    /// The uplink's neighbours the old instance had resolved.
    pub neighbors: Vec<(IpAddr, MacAddr)>,
}

impl Handover {
    /// The queue descriptors of port `name`, if they were handed over.
    pub fn take_queues(&mut self, name: &str) -> Option<Vec<OwnedFd>> {
        self.queues.remove(name)
    }

    /// Every port's queues not taken yet.
    pub fn take_all(&mut self) -> HashMap<String, Vec<OwnedFd>> {
        std::mem::take(&mut self.queues)
    }
}

/// What the running instance hands over: state, ports with their queues' descriptors (which stay
/// open in the sender; the receiver gets its own copies).
#[derive(Debug)]
pub struct Offer {
    pub state: SavedState,
    pub workers: usize,
    pub ports: Vec<(String, Vec<RawFd>)>,
    pub uplink_sender: Option<RawFd>,
    pub neighbors: Vec<(IpAddr, MacAddr)>,
}

fn send_fds(stream: &UnixStream, fds: &[RawFd]) -> std::io::Result<()> {
    for chunk in fds.chunks(FDS_PER_MESSAGE) {
        let rights = [ControlMessage::ScmRights(chunk)];
        // One byte of data carries each batch of descriptors.
        sendmsg::<()>(stream.as_raw_fd(), &[IoSlice::new(b"f")], &rights, MsgFlags::empty(), None)?;
    }
    Ok(())
}

fn receive_fds(stream: &UnixStream, count: usize) -> std::io::Result<Vec<OwnedFd>> {
    let mut fds = Vec::with_capacity(count);
    while fds.len() < count {
        let mut byte = [0u8; 1];
        let mut iov = [IoSliceMut::new(&mut byte)];
        let mut space = nix::cmsg_space!([RawFd; FDS_PER_MESSAGE]);
        let msg = recvmsg::<()>(stream.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)?;
        if msg.bytes == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "handover cut short"));
        }
        for cmsg in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(received) = cmsg {
                // SAFETY: SCM_RIGHTS installed these descriptors in this process for us alone.
                fds.extend(received.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }));
            }
        }
    }
    if fds.len() != count {
        return Err(std::io::Error::other(format!("expected {count} descriptors, got {}", fds.len())));
    }
    Ok(fds)
}

/// The running instance's side, after the new one asked: sends the offer, then waits for `ok`.
/// Returns whether the new instance took over.
pub fn offer(stream: &UnixStream, offer: &Offer) -> std::io::Result<bool> {
    let header = Header {
        protocol: PROTOCOL,
        workers: offer.workers,
        state: offer.state.clone(),
        ports: offer.ports.iter().map(|(name, fds)| HandedPort { name: name.clone(), fds: fds.len() }).collect(),
        uplink_sender: offer.uplink_sender.is_some(),
        neighbors: offer.neighbors.clone(),
    };
    let bytes = serde_json::to_vec(&header).expect("header serialises");
    let mut w = stream;
    w.write_all(&(bytes.len() as u32).to_be_bytes())?;
    w.write_all(&bytes)?;
    let mut all: Vec<RawFd> = offer.ports.iter().flat_map(|(_, fds)| fds.iter().copied()).collect();
    all.extend(offer.uplink_sender);
    send_fds(stream, &all)?;
    stream.set_read_timeout(Some(CONFIRM_TIMEOUT))?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    Ok(answer.trim() == "ok")
}

/// The new instance's side: asks the instance listening at `path` for its ports. `None` when no
/// instance listens there (a plain start).
pub fn request(path: &Path) -> std::io::Result<Option<(Handover, UnixStream)>> {
    let stream = match UnixStream::connect(path) {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) => {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    stream.set_read_timeout(Some(CONFIRM_TIMEOUT))?;
    (&stream).write_all(b"handover\n")?;
    let mut len = [0u8; 4];
    (&stream).read_exact(&mut len)?;
    let mut bytes = vec![0u8; u32::from_be_bytes(len) as usize];
    (&stream).read_exact(&mut bytes)?;
    let header: Header = serde_json::from_slice(&bytes).map_err(std::io::Error::other)?;
    if header.protocol != PROTOCOL {
        return Err(std::io::Error::other(format!(
            "handover protocol {} (this one speaks {PROTOCOL})",
            header.protocol
        )));
    }
    let total = header.ports.iter().map(|p| p.fds).sum::<usize>() + usize::from(header.uplink_sender);
    let mut fds = receive_fds(&stream, total)?.into_iter();
    let mut queues = HashMap::new();
    for port in &header.ports {
        queues.insert(port.name.clone(), fds.by_ref().take(port.fds).collect());
    }
    let uplink_sender = if header.uplink_sender { fds.next() } else { None };
    let handover =
        Handover { state: header.state, workers: header.workers, queues, uplink_sender, neighbors: header.neighbors };
    Ok(Some((handover, stream)))
}

/// The new instance took over: tells the old one to go.
pub fn confirm(stream: &UnixStream) -> std::io::Result<()> {
    let mut w = stream;
    w.write_all(b"ok\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn state_and_descriptors_cross_and_the_answer_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_path(dir.path());
        let listener = UnixListener::bind(&path).unwrap();
        // Real descriptors: pipes whose write ends we keep, to prove the copies are the same files.
        let pipes: Vec<(OwnedFd, OwnedFd)> = (0..205).map(|_| nix::unistd::pipe().unwrap()).collect();
        let offered = Offer {
            state: SavedState { format: crate::control::persist::FORMAT, ..Default::default() },
            workers: 2,
            ports: vec![
                ("vsw0".into(), vec![pipes[0].0.as_raw_fd(), pipes[1].0.as_raw_fd()]),
                ("big".into(), pipes[2..204].iter().map(|p| p.0.as_raw_fd()).collect()),
            ],
            uplink_sender: Some(pipes[204].0.as_raw_fd()),
            neighbors: vec![("10.10.0.50".parse().unwrap(), MacAddr([2, 0, 0, 0, 0, 0x50]))],
        };
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line).unwrap();
            assert_eq!(line, "handover\n");
            offer(&stream, &offered).unwrap()
        });
        let (mut handover, stream) = request(&path).unwrap().expect("someone listens");
        assert_eq!(handover.workers, 2);
        let vsw0 = handover.take_queues("vsw0").unwrap();
        let big = handover.take_queues("big").unwrap();
        assert_eq!((vsw0.len(), big.len()), (2, 202));
        // The received read end of pipe 3 reads what is written into pipe 3.
        nix::unistd::write(&pipes[3].1, b"x").unwrap();
        let mut byte = [0u8; 1];
        assert_eq!(nix::unistd::read(big[1].as_raw_fd(), &mut byte).unwrap(), 1);
        assert!(handover.uplink_sender.is_some());
        assert_eq!(handover.neighbors, [("10.10.0.50".parse().unwrap(), MacAddr([2, 0, 0, 0, 0, 0x50]))]);
        confirm(&stream).unwrap();
        assert!(server.join().unwrap(), "the old instance saw the ok");
        assert!(request(&dir.path().join("nobody.sock")).unwrap().is_none());
    }
}
