//! etcd v3 as the cluster store: TLS with a client certificate (what real clusters require),
//! compare-and-swap as a one-key transaction on the key's mod revision (0 for an absent key),
//! leases with etcd's own keep-alive, on one stream per lease kept open. Requests need a leader (`require_leader`), so without a
//! quorum they fail at once instead of hanging, and every request has a deadline.
//!
//! Requests go to one member at a time (the last one that answered), as etcd's own Go client
//! does, and move on to the next member when this one cannot be reached or has no leader:
//! etcd-client's balanced channel spreads requests over every endpoint, a member that is down
//! included, so with one member of three stopped some requests failed although the cluster had
//! its quorum. Only requests that certainly did not reach the member are sent again; one that
//! may have been carried out (a timeout, a connection lost mid-request) is reported as failed.
//!
//! Listings are read in pages of [`PAGE`] keys at one revision (etcd's advice for large ranges;
//! it also keeps every answer under the client's 4 MB message limit). A watch is one stream per
//! prefix with progress notifications, made on the member requests go to; it ends (and is made
//! again from the last revision seen) when that member loses its leader or the connection.

use std::collections::HashMap;
use std::error::Error as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity, KeyValue,
    LeaseKeepAliveStream, LeaseKeeper, PutOptions, TlsOptions, Txn, TxnOp, WatchOptions,
};
use serde::{Deserialize, Serialize};

use super::{Change, ClusterStore, Entry, Listing, StoreError, Watch, WatchEvent};

/// Keys per page of a listing.
const PAGE: i64 = 2000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// `https://host:2379` of each member.
    pub endpoints: Vec<String>,
    /// The CA that signed the members' certificates, and this node's client certificate and key
    /// (PEM files).
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// Deadline of each request, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_timeout_ms() -> u64 {
    2000
}

/// `[ipam.etcd]` that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum EtcdSetupError {
    #[error("ipam.etcd.endpoints is empty")]
    NoEndpoints,
    #[error("{path}: {source}")]
    Unreadable { path: PathBuf, source: std::io::Error },
}

pub struct EtcdStore {
    config: EtcdConfig,
    options: ConnectOptions,
    /// One client per member (in `config.endpoints` order), made on first use.
    clients: Vec<tokio::sync::Mutex<Option<Client>>>,
    /// The member requests go to first: the last one that answered.
    current: AtomicUsize,
    /// Each lease's keep-alive stream, kept open between keep-alives (etcd-client's stream is
    /// bound to one lease; opening one per keep-alive cost etcd a stream set-up each time).
    keepers: tokio::sync::Mutex<HashMap<i64, LeaseStream>>,
}

/// A lease's open keep-alive stream and the member it goes to.
struct LeaseStream {
    member: usize,
    keeper: LeaseKeeper,
    stream: LeaseKeepAliveStream,
}

/// What one keep-alive on an open stream came to.
enum Renewal {
    Alive,
    /// etcd answered TTL 0: the lease has expired.
    Gone,
    /// The stream ended or failed: open another.
    Broken,
    /// No answer within the deadline.
    TimedOut,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").field("endpoints", &self.config.endpoints).finish_non_exhaustive()
    }
}

fn fail(e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("etcd: {e}"))
}

/// Whether a request certainly did not reach etcd: the member could not be connected to, or it
/// refused the request for want of a leader (`require_leader`) before looking at it. Such a
/// request may go to another member; anything else (a timeout, a connection lost mid-request,
/// etcd's own "request timed out") may have been carried out, so it is not sent again.
fn undelivered(e: &etcd_client::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = match e {
        etcd_client::Error::GRpcStatus(status) if status.message() == "etcdserver: no leader" => return true,
        etcd_client::Error::GRpcStatus(status) => status.source(),
        etcd_client::Error::TransportError(e) => e.source(),
        _ => None,
    };
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind::*;
            // Only a connect fails this way: nothing was sent.
            if matches!(io.kind(), ConnectionRefused | NetworkUnreachable | HostUnreachable | AddrNotAvailable) {
                return true;
            }
        }
        source = e.source();
    }
    false
}

impl EtcdStore {
    /// Reads the certificates now (a missing file is a configuration error); connects on first
    /// use, so a node can start while etcd is down.
    pub fn new(config: EtcdConfig) -> Result<EtcdStore, EtcdSetupError> {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|source| EtcdSetupError::Unreadable { path: path.clone(), source })
        };
        if config.endpoints.is_empty() {
            return Err(EtcdSetupError::NoEndpoints);
        }
        let tls = TlsOptions::new()
            .ca_certificate(Certificate::from_pem(read(&config.ca_file)?))
            .identity(Identity::from_pem(read(&config.cert_file)?, read(&config.key_file)?));
        let timeout = Duration::from_millis(config.timeout_ms);
        let options = ConnectOptions::new()
            .with_tls(tls)
            .with_timeout(timeout)
            .with_connect_timeout(timeout)
            .with_keep_alive(Duration::from_secs(2), timeout)
            .with_require_leader(true);
        let clients = config.endpoints.iter().map(|_| tokio::sync::Mutex::new(None)).collect();
        Ok(EtcdStore { config, options, clients, current: AtomicUsize::new(0), keepers: Default::default() })
    }

    /// The client of member `i` (connecting is lazy: the first request makes the connection).
    async fn client(&self, i: usize) -> Result<Client, etcd_client::Error> {
        let mut slot = self.clients[i].lock().await;
        if let Some(client) = slot.as_ref() {
            return Ok(client.clone());
        }
        let client = Client::connect([&self.config.endpoints[i]], Some(self.options.clone())).await?;
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Runs one request with the deadline (the client's own timeout does not cover a channel
    /// that is still connecting), on the current member and, while it certainly did not get
    /// there, on the next ones.
    async fn call<T, F>(&self, f: impl Fn(Client) -> F) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(self.config.timeout_ms);
        let members = self.clients.len();
        let first = self.current.load(Ordering::Relaxed) % members;
        let mut failures = Vec::new();
        for i in (first..members).chain(0..first) {
            let attempt = async { f(self.client(i).await?).await };
            match tokio::time::timeout_at(deadline, attempt).await {
                Ok(Ok(value)) => {
                    self.current.store(i, Ordering::Relaxed);
                    return Ok(value);
                }
                Ok(Err(e)) if undelivered(&e) => failures.push(format!("{}: {e}", self.config.endpoints[i])),
                Ok(Err(e)) => return Err(fail(format!("{}: {e}", self.config.endpoints[i]))),
                Err(_) => {
                    // The member may be cut off: the next request starts with the next one.
                    self.current.store((i + 1) % members, Ordering::Relaxed);
                    failures.push(format!("{}: request timed out", self.config.endpoints[i]));
                    break;
                }
            }
        }
        Err(fail(failures.join("; ")))
    }

    /// One keep-alive on the lease's open stream: a request sent, its answer read (one
    /// outstanding at a time, so the answer is this request's).
    async fn renew_on(&self, open: &mut LeaseStream) -> Renewal {
        let timeout = Duration::from_millis(self.config.timeout_ms);
        let round = async {
            open.keeper.keep_alive().await?;
            open.stream.message().await
        };
        match tokio::time::timeout(timeout, round).await {
            Ok(Ok(Some(answer))) if answer.ttl() > 0 => Renewal::Alive,
            Ok(Ok(Some(_))) => Renewal::Gone,
            Ok(Ok(None) | Err(_)) => Renewal::Broken,
            Err(_) => Renewal::TimedOut,
        }
    }

    async fn txn(&self, txn: Txn) -> Result<(bool, i64), StoreError> {
        let response = self.call(|mut c| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        });
        let response = response.await?;
        Ok((response.succeeded(), response.header().map_or(0, |h| h.revision())))
    }
}

fn entry(kv: &KeyValue) -> Entry {
    Entry {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        version: kv.mod_revision(),
    }
}

/// The end of the key range holding every key that starts with `prefix` (etcd's rule).
fn range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// One watch response as an event (`None`: nothing to pass on, such as the creation answer).
fn event_of(response: &etcd_client::WatchResponse) -> Option<WatchEvent> {
    let events = response.events();
    if events.is_empty() {
        // A progress notification: every change up to the header's revision was sent.
        let revision = response.header().map_or(0, |h| h.revision());
        return (!response.created() && revision > 0).then_some(WatchEvent::Progress { revision });
    }
    let changes: Vec<Change> = events
        .iter()
        .filter_map(|e| {
            let kv = e.kv()?;
            Some(match e.event_type() {
                EventType::Put => Change::Put(entry(kv)),
                EventType::Delete => {
                    Change::Delete { key: String::from_utf8_lossy(kv.key()).into_owned(), revision: kv.mod_revision() }
                }
            })
        })
        .collect();
    let revision = events.iter().filter_map(|e| Some(e.kv()?.mod_revision())).max().unwrap_or(0);
    Some(WatchEvent::Changed { revision, changes })
}

impl ClusterStore for EtcdStore {
    fn describe(&self) -> String {
        format!("etcd {}", self.config.endpoints.join(","))
    }

    async fn list_at(&self, prefix: &str) -> Result<Listing, StoreError> {
        let end = range_end(prefix.as_bytes());
        let mut listing = Listing::default();
        let mut from = prefix.as_bytes().to_vec();
        loop {
            // Every page after the first at the first one's revision: one consistent listing.
            let options = GetOptions::new().with_range(end.clone()).with_limit(PAGE).with_revision(listing.revision);
            let response = self
                .call(|mut c| {
                    let (from, options) = (from.clone(), options.clone());
                    async move { c.get(from, Some(options)).await }
                })
                .await?;
            if listing.revision == 0 {
                listing.revision = response.header().map_or(0, |h| h.revision());
            }
            listing.entries.extend(response.kvs().iter().map(entry));
            match response.kvs().last() {
                Some(last) if response.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok(listing),
            }
        }
    }

    async fn watch(&self, prefix: &str, after: i64) -> Result<Watch, StoreError> {
        let prefix = prefix.to_string();
        let options = WatchOptions::new().with_prefix().with_start_revision(after + 1).with_progress_notify();
        let mut stream = self
            .call(|mut c| {
                let (prefix, options) = (prefix.clone(), options.clone());
                async move { c.watch(prefix, Some(options)).await }
            })
            .await?;
        let (events, watch) = tokio::sync::mpsc::channel(256);
        tokio::spawn(async move {
            loop {
                let response = tokio::select! {
                    response = stream.message() => response,
                    // Nobody listens any more: dropping the stream cancels the watch.
                    () = events.closed() => return,
                };
                // An error or the end: the channel closes, and the watcher resumes elsewhere.
                let Ok(Some(response)) = response else { return };
                if response.canceled() {
                    if response.compact_revision() > 0 {
                        let _ = events.send(WatchEvent::Compacted).await;
                    }
                    return;
                }
                if let Some(event) = event_of(&response) {
                    if events.send(event).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(watch)
    }

    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let key = key.to_string();
        let response = self
            .call(|mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await?;
        Ok(response.kvs().first().map(entry))
    }

    async fn put_if(&self, key: &str, value: Vec<u8>, expected: i64) -> Result<Option<i64>, StoreError> {
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
            .and_then([TxnOp::put(key, value, None)]);
        // A one-put transaction's header revision is the key's new mod revision.
        let (succeeded, revision) = self.txn(txn).await?;
        Ok(succeeded.then_some(revision))
    }

    async fn put_if_absent(
        &self,
        key: &str,
        value: Vec<u8>,
        expected: i64,
        absent: &str,
    ) -> Result<Option<i64>, StoreError> {
        // A missing key's version is 0.
        let txn = Txn::new()
            .when([
                Compare::mod_revision(key, CompareOp::Equal, expected),
                Compare::version(absent, CompareOp::Equal, 0),
            ])
            .and_then([TxnOp::put(key, value, None)]);
        let (succeeded, revision) = self.txn(txn).await?;
        Ok(succeeded.then_some(revision))
    }

    async fn delete_if(&self, key: &str, expected: i64) -> Result<bool, StoreError> {
        if expected == 0 {
            return Ok(false);
        }
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
            .and_then([TxnOp::delete(key, None)]);
        Ok(self.txn(txn).await?.0)
    }

    async fn put(&self, key: &str, value: Vec<u8>) -> Result<(), StoreError> {
        let key = key.to_string();
        self.call(|mut c| {
            let (key, value) = (key.clone(), value.clone());
            async move { c.put(key, value, None).await }
        })
        .await
        .map(drop)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let key = key.to_string();
        self.call(|mut c| {
            let key = key.clone();
            async move { c.delete(key, None).await }
        })
        .await
        .map(drop)
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<i64, StoreError> {
        let ttl = ttl.as_secs().max(1) as i64;
        self.call(|mut c| async move { c.lease_grant(ttl, None).await }).await.map(|r| r.id())
    }

    async fn keep_alive(&self, lease: i64) -> Result<bool, StoreError> {
        // The lease's stream, out of the map while in use (one keep-alive per lease at a time).
        let open = self.keepers.lock().await.remove(&lease);
        if let Some(mut open) = open {
            match self.renew_on(&mut open).await {
                Renewal::Alive => {
                    self.keepers.lock().await.insert(lease, open);
                    return Ok(true);
                }
                Renewal::Gone => return Ok(false),
                Renewal::TimedOut => {
                    // The member may be cut off: the next stream and request go to the next one.
                    let next = (open.member + 1) % self.clients.len();
                    let _ = self.current.compare_exchange(open.member, next, Ordering::Relaxed, Ordering::Relaxed);
                    return Err(fail(format!(
                        "{}: keep-alive of lease {lease:x} timed out",
                        self.config.endpoints[open.member]
                    )));
                }
                // The stream ended or broke (its member lost its leader, the connection went):
                // a new one below, on whichever member answers.
                Renewal::Broken => {}
            }
        }
        // etcd-client sends the first keep-alive itself and reports a lease that has expired
        // (etcd answers with TTL 0) as this error: the lease is gone, which is an answer, not a
        // failure (the node must re-register, and learn what it lost meanwhile).
        let opened = self
            .call(|mut c| async move {
                match c.lease_keep_alive(lease).await {
                    Ok((keeper, stream)) => Ok(Some((keeper, stream))),
                    Err(etcd_client::Error::LeaseKeepAliveError(_)) => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .await?;
        let Some((keeper, stream)) = opened else { return Ok(false) };
        let member = self.current.load(Ordering::Relaxed) % self.clients.len();
        self.keepers.lock().await.insert(lease, LeaseStream { member, keeper, stream });
        Ok(true)
    }

    async fn put_leased(&self, key: &str, value: Vec<u8>, lease: i64) -> Result<(), StoreError> {
        let key = key.to_string();
        self.call(|mut c| {
            let (key, value) = (key.clone(), value.clone());
            async move { c.put(key, value, Some(PutOptions::new().with_lease(lease))).await }
        })
        .await
        .map(drop)
    }

    async fn create_leased(&self, key: &str, value: Vec<u8>, lease: i64) -> Result<Option<i64>, StoreError> {
        let txn = Txn::new().when([Compare::version(key, CompareOp::Equal, 0)]).and_then([TxnOp::put(
            key,
            value,
            Some(PutOptions::new().with_lease(lease)),
        )]);
        let (succeeded, revision) = self.txn(txn).await?;
        Ok(succeeded.then_some(revision))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_prefix_range_ends_after_its_last_key() {
        assert_eq!(super::range_end(b"/a/ip/"), b"/a/ip0");
        assert_eq!(super::range_end(b"a\xff"), b"b");
        assert_eq!(super::range_end(b"\xff\xff"), [0]);
    }
}
