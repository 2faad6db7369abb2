//! etcd v3 as the cluster store: TLS with a client certificate (what real clusters require),
//! compare-and-swap as a one-key transaction on the key's mod revision (0 for an absent key),
//! leases with etcd's own keep-alive. Requests need a leader (`require_leader`), so without a
//! quorum they fail at once instead of hanging, and every request has a deadline.

use std::path::PathBuf;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity, PutOptions, TlsOptions, Txn, TxnOp,
};
use serde::{Deserialize, Serialize};

use super::{ClusterStore, Entry, StoreError};

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

pub struct EtcdStore {
    config: EtcdConfig,
    options: ConnectOptions,
    client: tokio::sync::Mutex<Option<Client>>,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore").field("endpoints", &self.config.endpoints).finish_non_exhaustive()
    }
}

fn fail(e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("etcd: {e}"))
}

impl EtcdStore {
    /// Reads the certificates now (a missing file is a configuration error); connects on first
    /// use, so a node can start while etcd is down.
    pub fn new(config: EtcdConfig) -> Result<EtcdStore, String> {
        let read = |p: &PathBuf| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
        if config.endpoints.is_empty() {
            return Err("ipam.etcd.endpoints is empty".into());
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
        Ok(EtcdStore { config, options, client: tokio::sync::Mutex::new(None) })
    }

    async fn client(&self) -> Result<Client, StoreError> {
        let mut slot = self.client.lock().await;
        if let Some(client) = slot.as_ref() {
            return Ok(client.clone());
        }
        let connect = Client::connect(&self.config.endpoints, Some(self.options.clone()));
        let client = tokio::time::timeout(Duration::from_millis(self.config.timeout_ms), connect)
            .await
            .map_err(|_| fail("connect timed out"))?
            .map_err(fail)?;
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Runs one request with the deadline (the client's own timeout does not cover a channel
    /// that is still connecting).
    async fn call<T, F>(&self, f: impl FnOnce(Client) -> F) -> Result<T, StoreError>
    where
        F: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let client = self.client().await?;
        tokio::time::timeout(Duration::from_millis(self.config.timeout_ms), f(client))
            .await
            .map_err(|_| fail("request timed out"))?
            .map_err(fail)
    }

    async fn txn(&self, txn: Txn) -> Result<(bool, i64), StoreError> {
        let response = self.call(|mut c| async move { c.txn(txn).await }).await?;
        Ok((response.succeeded(), response.header().map_or(0, |h| h.revision())))
    }
}

impl ClusterStore for EtcdStore {
    fn describe(&self) -> String {
        format!("etcd {}", self.config.endpoints.join(","))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Entry>, StoreError> {
        let prefix = prefix.to_string();
        let response =
            self.call(|mut c| async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }).await?;
        Ok(response
            .kvs()
            .iter()
            .map(|kv| Entry {
                key: String::from_utf8_lossy(kv.key()).into_owned(),
                value: kv.value().to_vec(),
                version: kv.mod_revision(),
            })
            .collect())
    }

    async fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        let key = key.to_string();
        let response = self.call(|mut c| async move { c.get(key, None).await }).await?;
        Ok(response.kvs().first().map(|kv| Entry {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            value: kv.value().to_vec(),
            version: kv.mod_revision(),
        }))
    }

    async fn put_if(&self, key: &str, value: Vec<u8>, expected: i64) -> Result<Option<i64>, StoreError> {
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
            .and_then([TxnOp::put(key, value, None)]);
        // A one-put transaction's header revision is the key's new mod revision.
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
        self.call(|mut c| async move { c.put(key, value, None).await }).await.map(drop)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let key = key.to_string();
        self.call(|mut c| async move { c.delete(key, None).await }).await.map(drop)
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<i64, StoreError> {
        let ttl = ttl.as_secs().max(1) as i64;
        self.call(|mut c| async move { c.lease_grant(ttl, None).await }).await.map(|r| r.id())
    }

    async fn keep_alive(&self, lease: i64) -> Result<bool, StoreError> {
        self.call(|mut c| async move {
            let (mut keeper, mut stream) = c.lease_keep_alive(lease).await?;
            keeper.keep_alive().await?;
            Ok(stream.message().await?.is_some_and(|r| r.ttl() > 0))
        })
        .await
    }

    async fn put_leased(&self, key: &str, value: Vec<u8>, lease: i64) -> Result<(), StoreError> {
        let key = key.to_string();
        self.call(|mut c| async move { c.put(key, value, Some(PutOptions::new().with_lease(lease))).await })
            .await
            .map(drop)
    }
}
