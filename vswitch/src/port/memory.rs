//! An in-memory port queue: frames pushed by a test come out of `recv`, frames the switch sends
//! are collected. For unit tests, benches and fuzzing only; the end-to-end tests use real TAPs.

use std::collections::VecDeque;
use std::io;
use std::sync::Mutex;

use super::PortQueue;

#[derive(Debug, Default)]
pub struct MemoryPort {
    inbound: Mutex<VecDeque<Vec<u8>>>,
    outbound: Mutex<Vec<Vec<u8>>>,
    /// When set, every send fails with this (a full queue is `WouldBlock`).
    send_error: Mutex<Option<io::ErrorKind>>,
}

impl MemoryPort {
    pub fn push(&self, frame: Vec<u8>) {
        self.inbound.lock().expect("not poisoned").push_back(frame);
    }

    /// Makes every later send fail with `error` (`None`: succeed again).
    pub fn fail_sends(&self, error: Option<io::ErrorKind>) {
        *self.send_error.lock().expect("not poisoned") = error;
    }

    pub fn take_sent(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *self.outbound.lock().expect("not poisoned"))
    }
}

impl PortQueue for MemoryPort {
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        let frame = self.inbound.lock().expect("not poisoned").pop_front().ok_or(io::ErrorKind::WouldBlock)?;
        // As a packet socket does: a frame that does not fit is consumed and refused.
        let Some(dst) = buf.get_mut(..frame.len()) else { return Err(super::frame_too_long()) };
        dst.copy_from_slice(&frame);
        Ok(frame.len())
    }

    fn send(&self, buf: &[u8]) -> io::Result<()> {
        if let Some(kind) = *self.send_error.lock().expect("not poisoned") {
            return Err(kind.into());
        }
        self.outbound.lock().expect("not poisoned").push(buf.to_vec());
        Ok(())
    }

    fn raw_fd(&self) -> Option<std::os::fd::RawFd> {
        None
    }
}
