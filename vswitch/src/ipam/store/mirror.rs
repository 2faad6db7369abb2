//! A prefix's keys kept up to date by one watch, as etcd recommends for watch-driven clients
//! (and as a Kubernetes reflector does): listed once, then watched from the listing's revision;
//! after a disconnect the watch resumes from the last revision seen (an event's, or a progress
//! notification's), and only when the store has compacted that revision away is the prefix
//! listed again. Nothing here waits for the store unless the watch has to be (re)made: a
//! [`Mirror::refresh`] with nothing new costs no request.

use std::collections::BTreeMap;

use tokio::sync::mpsc::error::TryRecvError;

use super::{Change, ClusterStore, Entry, StoreError, Watch, WatchEvent};

#[derive(Debug)]
pub struct Mirror {
    prefix: String,
    entries: BTreeMap<String, Entry>,
    /// Everything up to this revision is in `entries`.
    revision: i64,
    /// False before the first listing, and once the store compacted `revision` away.
    listed: bool,
    watch: Option<Watch>,
    /// Listings made (the first, and one per compaction), for tests and logs.
    listings: u64,
}

impl Mirror {
    pub fn new(prefix: &str) -> Mirror {
        Mirror {
            prefix: prefix.to_string(),
            entries: BTreeMap::new(),
            revision: 0,
            listed: false,
            watch: None,
            listings: 0,
        }
    }

    /// Brings the mirror up to date with what the watch has delivered: lists first if it never
    /// did (or the store compacted the revision it was at), and makes the watch again if it
    /// broke. Returns whether anything changed.
    pub async fn refresh<S: ClusterStore>(&mut self, store: &S) -> Result<bool, StoreError> {
        let mut changed = false;
        // At most: list, watch, read; then (compacted) list, watch, read again.
        for _ in 0..2 {
            if !self.listed {
                self.watch = None;
                let listing = store.list_at(&self.prefix).await?;
                let listed: BTreeMap<String, Entry> = listing.entries.into_iter().map(|e| (e.key.clone(), e)).collect();
                changed |= listed != self.entries;
                self.entries = listed;
                self.revision = listing.revision;
                self.listed = true;
                self.listings += 1;
            }
            let watch = match &mut self.watch {
                Some(watch) => watch,
                None => self.watch.insert(store.watch(&self.prefix, self.revision).await?),
            };
            loop {
                match watch.try_recv() {
                    Ok(WatchEvent::Changed { revision, changes }) => {
                        for change in changes {
                            changed |= apply(&mut self.entries, change);
                        }
                        self.revision = self.revision.max(revision);
                    }
                    Ok(WatchEvent::Progress { revision }) => self.revision = self.revision.max(revision),
                    Ok(WatchEvent::Compacted) => {
                        tracing::info!(prefix = %self.prefix, revision = self.revision,
                            "the store compacted the revision this watch resumes from: listing again");
                        self.listed = false;
                        break;
                    }
                    Err(TryRecvError::Empty) => return Ok(changed),
                    Err(TryRecvError::Disconnected) => {
                        // Made again on the next refresh, from the last revision seen.
                        self.watch = None;
                        return Ok(changed);
                    }
                }
            }
        }
        Ok(changed)
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The revision everything in the mirror is as of.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    pub fn listings(&self) -> u64 {
        self.listings
    }

    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.entries.get(key)
    }

    pub fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries.values()
    }

    /// The keys as (the rest of the key after the prefix, entry).
    pub fn named(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries.iter().filter_map(|(k, e)| Some((k.strip_prefix(&self.prefix)?, e)))
    }

    /// Takes in this client's own write (its version as the store answered) before the watch
    /// delivers it, so the next look does not act on the old state again. The watch's event
    /// for it, or any later one, replaces it.
    pub fn wrote(&mut self, entry: Entry) {
        apply(&mut self.entries, Change::Put(entry));
    }

    /// Takes in this client's own deletion before the watch delivers it.
    pub fn deleted(&mut self, key: &str) {
        self.entries.remove(key);
    }
}

/// One change, unless the mirror holds something newer already; returns whether it changed.
fn apply(entries: &mut BTreeMap<String, Entry>, change: Change) -> bool {
    match change {
        Change::Put(entry) => {
            if entries.get(&entry.key).is_some_and(|held| held.version >= entry.version) {
                return false;
            }
            entries.insert(entry.key.clone(), entry);
            true
        }
        Change::Delete { key, revision } => {
            if entries.get(&key).is_some_and(|held| held.version > revision) {
                return false;
            }
            entries.remove(&key).is_some()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::store::file::FileStore;
    use std::time::Duration;

    /// Refreshes until `done` holds (the file store's watch polls the file).
    async fn until(mirror: &mut Mirror, store: &FileStore, done: impl Fn(&Mirror) -> bool) {
        for _ in 0..50 {
            mirror.refresh(store).await.unwrap();
            if done(mirror) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the mirror of {} never got there: {:?}", mirror.prefix(), mirror.entries);
    }

    fn keys(mirror: &Mirror) -> Vec<&str> {
        mirror.named().map(|(k, _)| k).collect()
    }

    #[tokio::test]
    async fn follows_puts_deletes_and_lease_expiry_resumes_and_lists_again_only_after_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::new(&dir.path().join("store.json"));
        store.put("/p/node/a", b"1".to_vec()).await.unwrap();
        store.put("/p/other", b"x".to_vec()).await.unwrap();
        let mut mirror = Mirror::new("/p/node/");
        assert!(mirror.refresh(&store).await.unwrap());
        assert_eq!(keys(&mirror), ["a"]);

        let lease = store.grant_lease(Duration::from_millis(300)).await.unwrap();
        store.put_leased("/p/node/b", b"2".to_vec(), lease).await.unwrap();
        store.delete("/p/node/a").await.unwrap();
        store.put("/p/other", b"y".to_vec()).await.unwrap();
        until(&mut mirror, &store, |m| keys(m) == ["b"]).await;
        until(&mut mirror, &store, |m| keys(m).is_empty()).await;
        assert_eq!(mirror.listings(), 1, "followed by the watch alone");

        // A broken watch resumes from the last revision: nothing missed, nothing listed.
        mirror.watch = None;
        store.put("/p/node/c", b"3".to_vec()).await.unwrap();
        until(&mut mirror, &store, |m| keys(m) == ["c"]).await;
        assert_eq!(mirror.listings(), 1);

        // Broken again, and the history it would resume from compacted away meanwhile: one
        // listing, which sees the change the watch could not give.
        mirror.watch = None;
        store.delete("/p/node/c").await.unwrap();
        store.put("/p/node/d", b"4".to_vec()).await.unwrap();
        store.compact().await.unwrap();
        until(&mut mirror, &store, |m| keys(m) == ["d"]).await;
        assert_eq!(mirror.listings(), 2, "listed again after the compaction");
    }

    #[test]
    fn an_older_event_never_replaces_a_newer_write() {
        let mut entries = BTreeMap::new();
        let entry = |version| Entry { key: "k".into(), value: vec![version as u8], version };
        assert!(apply(&mut entries, Change::Put(entry(5))));
        assert!(!apply(&mut entries, Change::Put(entry(4))));
        assert!(!apply(&mut entries, Change::Delete { key: "k".into(), revision: 3 }));
        assert!(apply(&mut entries, Change::Delete { key: "k".into(), revision: 6 }));
        assert!(entries.is_empty());
    }
}
