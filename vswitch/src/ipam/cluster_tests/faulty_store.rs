//! The file store with faults a test switches on: unreachable lists, lost replies, a reclaim
//! held at a gate.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::fixture::{config, records};
use crate::ipam::record::AddressRecord;
use crate::ipam::store::file::FileStore;
use crate::ipam::store::{ClusterStore, Entry, Listing, StoreError, Watch};
use crate::ipam::NodeIpam;

/// What [`Faulty`] does wrong, switched by the test.
#[derive(Debug, Default)]
pub struct Faults {
    /// `list` fails: the store became unreachable half-way through a round.
    pub lists: AtomicBool,
    /// The next `put_if` / `delete_if` is carried out, but its reply is lost (a timeout, an
    /// etcd member killed mid-request): the caller cannot tell whether it happened.
    pub lose_put_if: AtomicBool,
    pub lose_delete_if: AtomicBool,
    /// While `gated`, `put_if_absent` (a reclaim's write) waits for `gate`, which the test
    /// holds; `at_gate` says one is waiting.
    pub gated: AtomicBool,
    pub gate: tokio::sync::Mutex<()>,
    pub at_gate: AtomicBool,
    /// While `put_if_gated`, an address record's `put_if` waits for `gate` too;
    /// `at_put_if_gate` counts those that got there.
    pub put_if_gated: AtomicBool,
    pub at_put_if_gate: AtomicUsize,
}

/// The file store with [`Faults`].
#[derive(Debug)]
pub struct Faulty {
    pub inner: FileStore,
    pub faults: Arc<Faults>,
}

pub fn lost() -> StoreError {
    StoreError("the reply was lost".into())
}

impl ClusterStore for Faulty {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn list_at(&self, prefix: &str) -> Result<Listing, StoreError> {
        if self.faults.lists.load(Ordering::Relaxed) {
            return Err(StoreError("unreachable".into()));
        }
        self.inner.list_at(prefix).await
    }
    async fn watch(&self, prefix: &str, after: i64) -> Result<Watch, StoreError> {
        self.inner.watch(prefix, after).await
    }
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        self.inner.get(key).await
    }
    async fn put_if(&self, key: &str, value: Vec<u8>, expected: i64) -> Result<Option<i64>, StoreError> {
        if key.contains("/ip/") && self.faults.put_if_gated.load(Ordering::Relaxed) {
            self.faults.at_put_if_gate.fetch_add(1, Ordering::Relaxed);
            let _wait = self.faults.gate.lock().await;
        }
        let result = self.inner.put_if(key, value, expected).await?;
        // (Address records only: the pool's key is written with a CAS at registration too.)
        if key.contains("/ip/") && self.faults.lose_put_if.swap(false, Ordering::Relaxed) {
            return Err(lost());
        }
        Ok(result)
    }
    async fn put_if_absent(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: i64,
        absent: &str,
    ) -> Result<Option<i64>, StoreError> {
        if self.faults.gated.load(Ordering::Relaxed) {
            self.faults.at_gate.store(true, Ordering::Relaxed);
            let _wait = self.faults.gate.lock().await;
        }
        self.inner.put_if_absent(key, value, expected, absent).await
    }
    async fn delete_if(&self, key: &str, expected: i64) -> Result<bool, StoreError> {
        let result = self.inner.delete_if(key, expected).await?;
        if self.faults.lose_delete_if.swap(false, Ordering::Relaxed) {
            return Err(lost());
        }
        Ok(result)
    }
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), StoreError> {
        self.inner.put(key, value).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(key).await
    }
    async fn grant_lease(&self, ttl: Duration) -> Result<i64, StoreError> {
        self.inner.grant_lease(ttl).await
    }
    async fn keep_alive(&self, lease: i64) -> Result<bool, StoreError> {
        self.inner.keep_alive(lease).await
    }
    async fn put_leased(&self, key: &str, value: Vec<u8>, lease: i64) -> Result<(), StoreError> {
        self.inner.put_leased(key, value, lease).await
    }
    async fn create_leased(&self, key: &str, value: Vec<u8>, lease: i64) -> Result<Option<i64>, StoreError> {
        self.inner.create_leased(key, value, lease).await
    }
}

pub fn faulty_node(dir: &Path, name: &str, pool: &str, extra: &str, faults: &Arc<Faults>) -> Arc<NodeIpam<Faulty>> {
    let state = dir.join(name);
    std::fs::create_dir_all(&state).unwrap();
    let settings = config(name, pool, extra).settings().unwrap();
    let store = Faulty { inner: FileStore::new(&dir.join("store.json")), faults: faults.clone() };
    Arc::new(NodeIpam::open(settings, store, &state).unwrap())
}

/// Warm addresses the store gives `node`.
pub async fn warm_in_store(dir: &Path, node: &str) -> u64 {
    records(dir).await.iter().filter(|(_, r)| matches!(r, AddressRecord::Warm { node: n, .. } if n == node)).count()
        as u64
}
