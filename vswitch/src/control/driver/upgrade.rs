//! The running side of an upgrade (`handover` has the protocol): changes are held off while the
//! state and the queues are handed over, so the state handed over stays the state.

use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::errors::RequestError;
use crate::control::registry::Registry;

/// Lets changes through, or holds them off while handing over.
#[derive(Debug, Default)]
pub struct ChangeGate {
    /// Set while handing over to a new instance: changes are refused (retryable).
    frozen: AtomicBool,
    /// Held (shared) by every request that changes state and by the IPAM's upkeep, for their
    /// whole run; freezing takes it exclusively, so the state handed over includes every change
    /// that was already answered, and none lands after.
    in_flight: RwLock<()>,
}

impl ChangeGate {
    /// Waits for a freeze in progress to settle; refused while frozen. Hold the guard for the
    /// whole change.
    pub async fn enter(&self) -> Result<RwLockReadGuard<'_, ()>, RequestError> {
        let guard = self.in_flight.read().await;
        if self.is_frozen() {
            return Err(RequestError::Frozen);
        }
        Ok(guard)
    }

    pub fn is_frozen(&self) -> bool {
        self.frozen.load(Ordering::Acquire)
    }

    /// Stops taking changes; returns once the changes in flight are done (blocks: call it off
    /// the async runtime). Frozen until [`ChangeGate::thaw`].
    pub fn freeze(&self) -> RwLockWriteGuard<'_, ()> {
        self.frozen.store(true, Ordering::Release);
        self.in_flight.blocking_write()
    }

    /// The upgrade did not take over: take changes again.
    pub fn thaw(&self) {
        self.frozen.store(false, Ordering::Release);
    }
}

/// Every port's queue descriptors, by port name, as an upgrade takes them over (they stay open
/// here until this process exits).
pub fn offered_queues(registry: &Registry) -> Vec<(String, Vec<RawFd>)> {
    registry
        .ports()
        .filter_map(|p| {
            let fds: Vec<RawFd> = p.queues.as_ref()?.iter().filter_map(|q| q.raw_fd()).collect();
            Some((p.info.name.clone(), fds))
        })
        .collect()
}
