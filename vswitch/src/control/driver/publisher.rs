//! The registry behind its lock, and the one way its changes reach the workers: each change's
//! [`Publication`] is stored in the datapath, the FIBs released after it, the workers woken.
//!
//! The lock is only ever held for in-memory work, never across an `.await` or a system call that
//! can block (netlink, namespace threads, file syncs), so attaching a pod never stalls ARP
//! handling, the slow path or /metrics.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::control::registry::{Publication, Published, Registry};
use crate::datapath::{Datapath, Snapshot};

#[derive(Debug)]
pub struct Publisher {
    registry: Mutex<Registry>,
    datapath: Arc<Datapath>,
    wakers: Vec<Arc<mio::Waker>>,
}

impl Publisher {
    pub fn new(registry: Registry, datapath: Arc<Datapath>, wakers: Vec<Arc<mio::Waker>>) -> Publisher {
        Publisher { registry: Mutex::new(registry), datapath, wakers }
    }

    /// The registry, to read (or to change what workers never see: reservations). A change that
    /// publishes goes through [`Publisher::update`].
    pub fn registry(&self) -> MutexGuard<'_, Registry> {
        // A panic while holding the lock leaves the registry as consistent as any other
        // interrupted in-memory update; keep serving rather than poison every later request.
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `change` on the registry with the oldest generation a worker may still use (for
    /// adjacency reuse), and publishes what it returns. Publishing happens under the lock, so
    /// snapshots land in generation order; the workers are woken after it is released.
    pub fn update<P: Published>(&self, change: impl FnOnce(&mut Registry, u64) -> P) -> P::Outcome {
        let (outcome, publication) = {
            let mut registry = self.registry();
            let (outcome, publication) = change(&mut registry, self.datapath.quiesced()).split();
            let published = publication.map(|p| self.publish(&mut registry, p)).is_some();
            (outcome, published)
        };
        if publication {
            self.wake_workers();
        }
        outcome
    }

    fn publish(&self, registry: &mut Registry, publication: Publication) {
        self.datapath.snapshot.store(Arc::new(publication.snapshot));
        registry.publish_fibs();
    }

    pub fn wake_workers(&self) {
        for waker in &self.wakers {
            let _ = waker.wake();
        }
    }

    /// What the workers forward with now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.datapath.snapshot.load_full()
    }

    pub fn datapath(&self) -> &Arc<Datapath> {
        &self.datapath
    }
}
