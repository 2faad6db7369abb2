//! The node-local store: the whole key space in one JSON file, changed under an exclusive
//! `flock` and replaced atomically, so it keeps its promises across processes and crashes on one
//! node. Leases expire by the wall clock. Like etcd, every write and deletion is a new revision,
//! and deletions are remembered (until compacted) so that a watch can resume; a watch polls the
//! file.
//!
//! A file that does not parse is never written over: it is the only record of which addresses
//! are taken. [`FileStore::open`] refuses it, and every request on it fails until an operator
//! has dealt with it.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::{Change, ClusterStore, Entry, Listing, StoreError, Watch, WatchEvent};

/// How often a watch looks at the file.
const WATCH_POLL: Duration = Duration::from_millis(200);
/// Deletions remembered for watches to resume over; past this many, the history is compacted.
const KEPT_DELETIONS: usize = 4096;

#[derive(Debug, Clone)]
pub struct FileStore {
    path: PathBuf,
}

/// The store's file cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum FileStoreError {
    #[error("{path} is corrupt: {detail}")]
    Corrupt { path: PathBuf, detail: String },
    #[error("{path}: {source}")]
    Unreadable { path: PathBuf, source: std::io::Error },
}

/// The store's data as the file holds it (empty when there is no file yet).
fn read(path: &Path) -> Result<Data, FileStoreError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| FileStoreError::Corrupt { path: path.into(), detail: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Data::default()),
        Err(source) => Err(FileStoreError::Unreadable { path: path.into(), source }),
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Data {
    revision: i64,
    keys: BTreeMap<String, Stored>,
    /// Lease id -> expiry (milliseconds since the epoch) and time to live.
    leases: BTreeMap<i64, (u64, u64)>,
    /// Deleted key -> the revision of its deletion, for watches.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    deleted: BTreeMap<String, i64>,
    /// Deletions up to this revision are forgotten: a watch from before it must list again.
    #[serde(default)]
    compacted: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    value: String,
    version: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    lease: Option<i64>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Data {
    fn expire(&mut self) -> bool {
        let now = now_ms();
        let dead: Vec<i64> = self.leases.iter().filter(|(_, (until, _))| *until <= now).map(|(id, _)| *id).collect();
        for id in &dead {
            self.leases.remove(id);
        }
        let gone: Vec<String> = self
            .keys
            .iter()
            .filter(|(_, s)| s.lease.is_some_and(|l| dead.contains(&l)))
            .map(|(k, _)| k.clone())
            .collect();
        if !gone.is_empty() {
            self.revision += 1;
            for key in gone {
                self.keys.remove(&key);
                self.deleted.insert(key, self.revision);
            }
            self.compact_if_long();
        }
        !dead.is_empty()
    }

    /// Deletes `key` as a new revision (false: it was not there).
    fn remove(&mut self, key: &str) -> bool {
        if self.keys.remove(key).is_none() {
            return false;
        }
        self.revision += 1;
        self.deleted.insert(key.to_string(), self.revision);
        self.compact_if_long();
        true
    }

    fn compact_if_long(&mut self) {
        if self.deleted.len() > KEPT_DELETIONS {
            self.compact();
        }
    }

    fn compact(&mut self) {
        self.deleted.clear();
        self.compacted = self.revision;
    }

    /// What changed under `prefix` after `after`, as one event (`None`: nothing since);
    /// `Compacted` when deletions since then are forgotten.
    fn changes_since(&self, prefix: &str, after: i64) -> Option<WatchEvent> {
        if after < self.compacted {
            return Some(WatchEvent::Compacted);
        }
        if self.revision <= after {
            return None;
        }
        let under = |k: &String| k.starts_with(prefix);
        let puts = self
            .keys
            .iter()
            .filter(|(k, s)| under(k) && s.version > after)
            .map(|(k, s)| (s.version, Change::Put(entry(k, s))));
        let deletes = self.deleted.iter().filter(|(k, r)| under(k) && **r > after);
        let deletes = deletes.map(|(k, r)| (*r, Change::Delete { key: k.clone(), revision: *r }));
        let mut changes: Vec<(i64, Change)> = puts.chain(deletes).collect();
        if changes.is_empty() {
            return Some(WatchEvent::Progress { revision: self.revision });
        }
        changes.sort_by_key(|(revision, _)| *revision);
        Some(WatchEvent::Changed { revision: self.revision, changes: changes.into_iter().map(|(_, c)| c).collect() })
    }

    fn version(&self, key: &str) -> i64 {
        self.keys.get(key).map_or(0, |s| s.version)
    }

    fn write(&mut self, key: &str, value: Vec<u8>, lease: Option<i64>) -> i64 {
        self.revision += 1;
        let value = String::from_utf8(value).unwrap_or_default();
        self.deleted.remove(key);
        self.keys.insert(key.to_string(), Stored { value, version: self.revision, lease });
        self.revision
    }
}

impl FileStore {
    /// The store in `path`, read on every request (several processes may share it).
    pub fn new(path: &Path) -> FileStore {
        FileStore { path: path.into() }
    }

    /// [`FileStore::new`], once the file is known to be absent or readable: a daemon must not
    /// start on a corrupt store (as if it were only unreachable) and hand out addresses that
    /// it may record as taken.
    pub fn open(path: &Path) -> Result<FileStore, FileStoreError> {
        read(path)?;
        Ok(FileStore::new(path))
    }

    /// Forgets the deletions so far, as etcd's compaction does: a watch from before now lists
    /// again.
    pub async fn compact(&self) -> Result<(), StoreError> {
        self.with_data(|d| {
            d.compact();
            ((), true)
        })
        .await
    }

    /// Runs `f` on the data under the lock (off the async runtime: it is file I/O), saving it
    /// when `f` says it changed.
    async fn with_data<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Data) -> (T, bool) + Send + 'static,
    ) -> Result<T, StoreError> {
        let path = self.path.clone();
        let shown = self.path.display().to_string();
        tokio::task::spawn_blocking(move || {
            let fail = |e: std::io::Error| StoreError(format!("{}: {e}", path.display()));
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(fail)?;
            }
            let lock_path = path.with_extension("lock");
            let lock = OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(fail)?;
            let _guard = Flock::lock(lock, FlockArg::LockExclusive).map_err(|(_, e)| fail(e.into()))?;
            let mut data = read(&path).map_err(|e| StoreError(e.to_string()))?;
            let expired = data.expire();
            let (value, changed) = f(&mut data);
            if changed || expired {
                let bytes = serde_json::to_vec(&data).expect("serialisable");
                vswitch_host::file::write_atomic(&path, &bytes).map_err(fail)?;
            }
            Ok(value)
        })
        .await
        .map_err(|e| StoreError(format!("{shown}: {e}")))?
    }
}

fn entry(key: &str, s: &Stored) -> Entry {
    Entry { key: key.to_string(), value: s.value.clone().into_bytes(), version: s.version }
}

impl ClusterStore for FileStore {
    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }

    async fn list_at(&self, prefix: &str) -> Result<Listing, StoreError> {
        let prefix = prefix.to_string();
        self.with_data(move |d| {
            let under = d.keys.range(prefix.clone()..).take_while(|(k, _)| k.starts_with(&prefix));
            (Listing { entries: under.map(|(k, s)| entry(k, s)).collect(), revision: d.revision }, false)
        })
        .await
    }

    async fn watch(&self, prefix: &str, after: i64) -> Result<Watch, StoreError> {
        let (events, watch) = tokio::sync::mpsc::channel(64);
        let (store, prefix) = (self.clone(), prefix.to_string());
        tokio::spawn(async move {
            let mut after = after;
            while !events.is_closed() {
                let prefix = prefix.clone();
                // A failed look ends the watch (its channel closes); the watcher makes it again.
                let Ok(event) = store.with_data(move |d| (d.changes_since(&prefix, after), false)).await else {
                    return;
                };
                match event {
                    Some(WatchEvent::Compacted) => {
                        let _ = events.send(WatchEvent::Compacted).await;
                        return;
                    }
                    Some(event) => {
                        if let WatchEvent::Changed { revision, .. } | WatchEvent::Progress { revision } = &event {
                            after = *revision;
                        }
                        if events.send(event).await.is_err() {
                            return;
                        }
                    }
                    None => {}
                }
                tokio::time::sleep(WATCH_POLL).await;
            }
        });
        Ok(watch)
    }

    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let key = key.to_string();
        self.with_data(move |d| (d.keys.get(&key).map(|s| entry(&key, s)), false)).await
    }

    async fn put_if(&self, key: &str, value: Vec<u8>, expected: i64) -> Result<Option<i64>, StoreError> {
        let key = key.to_string();
        self.with_data(move |d| {
            if d.version(&key) != expected {
                return (None, false);
            }
            (Some(d.write(&key, value, None)), true)
        })
        .await
    }

    async fn put_if_absent(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: i64,
        absent: &str,
    ) -> Result<Option<i64>, StoreError> {
        let (key, absent) = (key.to_string(), absent.to_string());
        self.with_data(move |d| {
            if d.version(&key) != expected || d.keys.contains_key(&absent) {
                return (None, false);
            }
            (Some(d.write(&key, value, None)), true)
        })
        .await
    }

    async fn delete_if(&self, key: &str, expected: i64) -> Result<bool, StoreError> {
        let key = key.to_string();
        self.with_data(move |d| {
            let matches = expected != 0 && d.version(&key) == expected;
            if matches {
                d.remove(&key);
            }
            (matches, matches)
        })
        .await
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), StoreError> {
        let key = key.to_string();
        self.with_data(move |d| {
            d.write(&key, value, None);
            ((), true)
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let key = key.to_string();
        self.with_data(move |d| ((), d.remove(&key))).await
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<i64, StoreError> {
        let ttl = ttl.as_millis() as u64;
        self.with_data(move |d| {
            d.revision += 1;
            let id = d.revision;
            d.leases.insert(id, (now_ms() + ttl, ttl));
            (id, true)
        })
        .await
    }

    async fn keep_alive(&self, lease: i64) -> Result<bool, StoreError> {
        self.with_data(move |d| match d.leases.get_mut(&lease) {
            Some((until, ttl)) => {
                *until = now_ms() + *ttl;
                (true, true)
            }
            None => (false, false),
        })
        .await
    }

    async fn put_leased(&self, key: &str, value: Vec<u8>, lease: i64) -> Result<(), StoreError> {
        let key = key.to_string();
        self.with_data(move |d| {
            if !d.leases.contains_key(&lease) {
                return (Err(StoreError(format!("lease {lease} has expired"))), false);
            }
            d.write(&key, value, Some(lease));
            (Ok(()), true)
        })
        .await?
    }

    async fn create_leased(&self, key: &str, value: Vec<u8>, lease: i64) -> Result<Option<i64>, StoreError> {
        let key = key.to_string();
        self.with_data(move |d| {
            if !d.leases.contains_key(&lease) {
                return (Err(StoreError(format!("lease {lease} has expired"))), false);
            }
            if d.keys.contains_key(&key) {
                return (Ok(None), false);
            }
            (Ok(Some(d.write(&key, value, Some(lease)))), true)
        })
        .await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn compare_and_swap_and_leases() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(&dir.path().join("store.json"));
        let v1 = store.put_if("/a/ip/1", b"x".to_vec(), 0).await.unwrap().expect("created");
        assert_eq!(store.put_if("/a/ip/1", b"y".to_vec(), 0).await.unwrap(), None, "exists already");
        let v2 = store.put_if("/a/ip/1", b"y".to_vec(), v1).await.unwrap().expect("updated");
        assert!(v2 > v1);
        assert_eq!(store.put_if("/a/ip/1", b"z".to_vec(), v1).await.unwrap(), None, "stale version");
        assert!(!store.delete_if("/a/ip/1", v1).await.unwrap());
        store.put("/a/node/n1", b"{}".to_vec()).await.unwrap();
        assert_eq!(store.put_if_absent("/a/ip/1", b"w".to_vec(), v2, "/a/node/n1").await.unwrap(), None);
        store.delete("/a/node/n1").await.unwrap();
        assert_eq!(store.put_if_absent("/a/ip/1", b"w".to_vec(), v1, "/a/node/n1").await.unwrap(), None);
        let v2 = store.put_if_absent("/a/ip/1", b"y".to_vec(), v2, "/a/node/n1").await.unwrap().expect("updated");
        store.put("/a/ip/2", b"w".to_vec()).await.unwrap();
        store.put("/b", b"other".to_vec()).await.unwrap();
        let listed: Vec<String> = store.list("/a/").await.unwrap().into_iter().map(|e| e.key).collect();
        assert_eq!(listed, ["/a/ip/1", "/a/ip/2"]);
        assert!(store.delete_if("/a/ip/1", v2).await.unwrap());
        assert_eq!(store.get("/a/ip/1").await.unwrap(), None);

        let lease = store.grant_lease(Duration::from_millis(200)).await.unwrap();
        store.put_leased("/a/node/n1", b"{}".to_vec(), lease).await.unwrap();
        assert!(store.keep_alive(lease).await.unwrap());
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(store.get("/a/node/n1").await.unwrap(), None, "the key went with its lease");
        assert!(!store.keep_alive(lease).await.unwrap());
        assert!(store.put_leased("/a/node/n1", b"{}".to_vec(), lease).await.is_err());
    }

    #[tokio::test]
    async fn a_truncated_file_is_refused_and_never_written_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ipam-store.json");
        assert!(FileStore::open(&path).is_ok(), "no file yet: an empty store");
        let store = FileStore::new(&path);
        for i in 0..20 {
            store.put(&format!("/a/ip/10.0.0.{i}"), b"{\"state\":\"cooling\"}".to_vec()).await.unwrap();
        }
        let whole = std::fs::read(&path).unwrap();
        let truncated = &whole[..whole.len() / 2];
        std::fs::write(&path, truncated).unwrap();

        let refused = FileStore::open(&path).unwrap_err();
        assert!(matches!(&refused, FileStoreError::Corrupt { path: p, .. } if *p == path), "{refused:?}");
        assert!(refused.to_string().starts_with(&format!("{} is corrupt: ", path.display())), "{refused}");
        // A store opened before the damage fails every request, writes included, and leaves
        // the file as it found it.
        assert!(store.get("/a/ip/10.0.0.1").await.unwrap_err().0.contains("is corrupt"));
        assert!(store.put("/a/ip/10.0.0.99", b"x".to_vec()).await.is_err());
        assert!(store.grant_lease(Duration::from_secs(5)).await.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), truncated);
        std::fs::write(&path, b"").unwrap();
        assert!(matches!(FileStore::open(&path), Err(FileStoreError::Corrupt { .. })), "empty is corrupt too");
        assert!(matches!(FileStore::open(dir.path()), Err(FileStoreError::Unreadable { .. })), "a directory");
    }
}
