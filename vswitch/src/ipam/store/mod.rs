//! Where the cluster's allocations live, behind a small compare-and-swap interface: every write
//! names the version it expects the key to have (0: the key must not exist), so two nodes can
//! never both win an address. One key per object and one version per key is all it needs, so a
//! Kubernetes backend (one custom resource per address, `resourceVersion` as the version,
//! `coordination.k8s.io` Leases as leases) fits the same trait.
//!
//! A node learns what changes under a prefix the way a Kubernetes informer does: list once (with
//! the store's revision), then [`ClusterStore::watch`] from that revision, resuming after a
//! disconnect from the last revision seen and listing again only when the store has compacted
//! that revision away ([`mirror::Mirror`]). On Kubernetes that is list + watch with
//! `resourceVersion`, bookmarks as progress, and 410 Gone as compacted.
//!
//! - [`file::FileStore`]: a JSON file on this node, for a single node without etcd (and tests).
//! - [`etcd::EtcdStore`]: etcd v3 over TLS with client certificates.

pub mod etcd;
pub mod file;
pub mod mirror;

use std::future::Future;
use std::time::Duration;

/// The store could not answer now (unreachable, no quorum, timed out, ...): retry later.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: String,
    pub value: Vec<u8>,
    /// Changes on every write of the key (etcd: its mod revision); never 0 for a present key.
    pub version: i64,
}

/// Every key under a prefix as of one revision of the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    pub entries: Vec<Entry>,
    /// The store's revision the listing shows: a watch from here misses nothing.
    pub revision: i64,
}

/// What a watch delivers, in revision order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// Keys changed, the last of them at `revision`.
    Changed { revision: i64, changes: Vec<Change> },
    /// Nothing under the prefix changed up to `revision` (etcd's progress notification,
    /// Kubernetes' bookmark): a resume may start from there.
    Progress { revision: i64 },
    /// The revision the watch was to start from is gone (compacted): list again. The last
    /// event of its watch.
    Compacted,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Put(Entry),
    /// The key and the revision of its deletion.
    Delete {
        key: String,
        revision: i64,
    },
}

/// A watch's events; the channel closes when the watch breaks (resume from the last revision).
pub type Watch = tokio::sync::mpsc::Receiver<WatchEvent>;

pub trait ClusterStore: Send + Sync + 'static {
    /// What the store is, for logs and `vswitchctl ipam`.
    fn describe(&self) -> String;
    /// Every key under `prefix`, and the revision of the store it shows.
    fn list_at(&self, prefix: &str) -> impl Future<Output = Result<Listing, StoreError>> + Send;
    /// Every key under `prefix`.
    fn list(&self, prefix: &str) -> impl Future<Output = Result<Vec<Entry>, StoreError>> + Send {
        async move { Ok(self.list_at(prefix).await?.entries) }
    }
    /// The changes under `prefix` after revision `after`, as they happen.
    fn watch(&self, prefix: &str, after: i64) -> impl Future<Output = Result<Watch, StoreError>> + Send;
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<Entry>, StoreError>> + Send;
    /// Writes `value` if the key's version is `expected` (0: absent). `Ok(Some(version))` on
    /// success, `Ok(None)` when the key was changed by someone else.
    fn put_if(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: i64,
    ) -> impl Future<Output = Result<Option<i64>, StoreError>> + Send;
    /// [`ClusterStore::put_if`], and only while `absent` does not exist: a dead node's address is
    /// taken from it only while the node's lease key is still gone, so a node that registers
    /// again and then reconciles sees every address it lost (see `Upkeep::register`).
    fn put_if_absent(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: i64,
        absent: &str,
    ) -> impl Future<Output = Result<Option<i64>, StoreError>> + Send;
    /// Deletes the key if its version is `expected`; false when it was changed (or is gone).
    fn delete_if(&self, key: &str, expected: i64) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Writes unconditionally (hints only: the sticky index, down marks).
    fn put(&self, key: &str, value: Vec<u8>) -> impl Future<Output = Result<(), StoreError>> + Send;
    fn delete(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// A lease that ends `ttl` after the last keep-alive.
    fn grant_lease(&self, ttl: Duration) -> impl Future<Output = Result<i64, StoreError>> + Send;
    /// Renews the lease; `Ok(false)` when it has expired already (its keys are gone).
    fn keep_alive(&self, lease: i64) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Writes a key that disappears with the lease.
    fn put_leased(&self, key: &str, value: Vec<u8>, lease: i64) -> impl Future<Output = Result<(), StoreError>> + Send;
    /// Writes a key bound to the lease only if it does not exist (a leader key: whoever
    /// creates it leads until its lease ends). `Ok(Some(version))` when written, `Ok(None)`
    /// when it exists.
    fn create_leased(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: i64,
    ) -> impl Future<Output = Result<Option<i64>, StoreError>> + Send;
}

/// The store a daemon runs with (chosen by configuration).
#[derive(Debug)]
pub enum AnyStore {
    File(file::FileStore),
    Etcd(Box<etcd::EtcdStore>),
}

macro_rules! dispatch {
    ($self:ident, $store:ident => $call:expr) => {
        match $self {
            AnyStore::File($store) => $call,
            AnyStore::Etcd($store) => $call,
        }
    };
}

impl ClusterStore for AnyStore {
    fn describe(&self) -> String {
        dispatch!(self, s => s.describe())
    }
    async fn list_at(&self, prefix: &str) -> Result<Listing, StoreError> {
        dispatch!(self, s => s.list_at(prefix).await)
    }
    async fn watch(&self, prefix: &str, after: i64) -> Result<Watch, StoreError> {
        dispatch!(self, s => s.watch(prefix, after).await)
    }
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        dispatch!(self, s => s.get(key).await)
    }
    async fn put_if(&self, key: &str, value: Vec<u8>, expected: i64) -> Result<Option<i64>, StoreError> {
        dispatch!(self, s => s.put_if(key, value, expected).await)
    }
    async fn put_if_absent(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: i64,
        absent: &str,
    ) -> Result<Option<i64>, StoreError> {
        dispatch!(self, s => s.put_if_absent(key, value, expected, absent).await)
    }
    async fn delete_if(&self, key: &str, expected: i64) -> Result<bool, StoreError> {
        dispatch!(self, s => s.delete_if(key, expected).await)
    }
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), StoreError> {
        dispatch!(self, s => s.put(key, value).await)
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        dispatch!(self, s => s.delete(key).await)
    }
    async fn grant_lease(&self, ttl: Duration) -> Result<i64, StoreError> {
        dispatch!(self, s => s.grant_lease(ttl).await)
    }
    async fn keep_alive(&self, lease: i64) -> Result<bool, StoreError> {
        dispatch!(self, s => s.keep_alive(lease).await)
    }
    async fn put_leased(&self, key: &str, value: Vec<u8>, lease: i64) -> Result<(), StoreError> {
        dispatch!(self, s => s.put_leased(key, value, lease).await)
    }
    async fn create_leased(&self, key: &str, value: Vec<u8>, lease: i64) -> Result<Option<i64>, StoreError> {
        dispatch!(self, s => s.create_leased(key, value, lease).await)
    }
}

/// One store shared by several agents in one process (the scale simulation runs many nodes
/// over a few connections, as a node's processes would share one).
impl<S: ClusterStore> ClusterStore for std::sync::Arc<S> {
    fn describe(&self) -> String {
        (**self).describe()
    }
    async fn list_at(&self, prefix: &str) -> Result<Listing, StoreError> {
        (**self).list_at(prefix).await
    }
    async fn watch(&self, prefix: &str, after: i64) -> Result<Watch, StoreError> {
        (**self).watch(prefix, after).await
    }
    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        (**self).get(key).await
    }
    async fn put_if(&self, key: &str, value: Vec<u8>, expected: i64) -> Result<Option<i64>, StoreError> {
        (**self).put_if(key, value, expected).await
    }
    async fn put_if_absent(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: i64,
        absent: &str,
    ) -> Result<Option<i64>, StoreError> {
        (**self).put_if_absent(key, value, expected, absent).await
    }
    async fn delete_if(&self, key: &str, expected: i64) -> Result<bool, StoreError> {
        (**self).delete_if(key, expected).await
    }
    async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), StoreError> {
        (**self).put(key, value).await
    }
    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        (**self).delete(key).await
    }
    async fn grant_lease(&self, ttl: Duration) -> Result<i64, StoreError> {
        (**self).grant_lease(ttl).await
    }
    async fn keep_alive(&self, lease: i64) -> Result<bool, StoreError> {
        (**self).keep_alive(lease).await
    }
    async fn put_leased(&self, key: &str, value: Vec<u8>, lease: i64) -> Result<(), StoreError> {
        (**self).put_leased(key, value, lease).await
    }
    async fn create_leased(&self, key: &str, value: Vec<u8>, lease: i64) -> Result<Option<i64>, StoreError> {
        (**self).create_leased(key, value, lease).await
    }
}
