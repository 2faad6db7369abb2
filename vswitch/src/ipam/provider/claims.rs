//! Sticky records in provider mode: which address a sticky pod keeps and which NIC last claimed
//! it, one key per pod in the cluster store (etcd with `[ipam.etcd]`, else the node-local file:
//! sticky across restarts of one node only). UK8S keeps the same in a `VpcIpClaim` custom
//! resource per pod.
//!
//! `<prefix>/vpc-sticky/<namespace>/<name>` → `{"ip": "...", "nic": "...", "node": "..."}`
//!
//! Every write is a compare-and-swap on the version read, so a node taking a pod's address over
//! and the node releasing it after its claim policy can never both win: the VPC says which NIC
//! holds an address, this record which pod keeps it.

use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vswitch_api::api::PodRef;
use vswitch_api::sticky::{ClaimPolicy, StickyRequest};

use crate::ipam::config::matches_sticky;
use crate::ipam::store::{ClusterStore, StoreError};

/// A sticky pod's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StickyRecord {
    pub ip: IpAddr,
    /// The NIC that claimed it last (MAC, lower case).
    pub nic: String,
    /// That NIC's node, for people.
    pub node: String,
}

/// The sticky records and which pods are sticky.
#[derive(Debug)]
pub struct StickyClaims<S> {
    store: S,
    prefix: String,
    /// This node's name, written into the records.
    pub node: String,
    /// `[ipam] sticky` patterns: sticky without an annotation...
    patterns: Vec<String>,
    /// ... for this long once no pod holds the address (`[ipam] sticky_hold_seconds`).
    pattern_hold: Duration,
}

impl<S: ClusterStore> StickyClaims<S> {
    pub fn new(store: S, prefix: &str, node: &str, patterns: Vec<String>, pattern_hold: Duration) -> StickyClaims<S> {
        StickyClaims { store, prefix: prefix.trim_end_matches('/').into(), node: node.into(), patterns, pattern_hold }
    }

    /// The store, as `vswitchctl ipam` names it.
    pub fn describe(&self) -> String {
        self.store.describe()
    }

    /// How long the pod's address is kept for it once it is gone, if the pod is sticky: by its
    /// annotations, or else by an `[ipam] sticky` pattern.
    pub fn policy(&self, pod: Option<&PodRef>, asked: Option<StickyRequest>) -> Option<ClaimPolicy> {
        let pod = pod?;
        match asked {
            Some(request) => Some(request.hold),
            None if matches_sticky(&self.patterns, pod) => Some(ClaimPolicy::After(self.pattern_hold)),
            None => None,
        }
    }

    fn key(&self, pod: &PodRef) -> String {
        format!("{}/vpc-sticky/{}/{}", self.prefix, pod.namespace, pod.name)
    }

    /// The pod's record and the version to write it at (0: absent). An unreadable record is
    /// none (logged), written over at its version.
    pub async fn get(&self, pod: &PodRef) -> Result<(Option<StickyRecord>, i64), StoreError> {
        let Some(entry) = self.store.get(&self.key(pod)).await? else { return Ok((None, 0)) };
        let record = serde_json::from_slice(&entry.value)
            .inspect_err(|e| tracing::error!(key = %entry.key, error = %e, "unreadable sticky record: written over"))
            .ok();
        Ok((record, entry.version))
    }

    /// Records `ip` as the pod's, claimed by `nic`, if the record is still at `expected` (0: absent).
    /// False: someone else wrote it first.
    pub async fn claim(&self, pod: &PodRef, ip: IpAddr, nic: &str, expected: i64) -> Result<bool, StoreError> {
        let record = StickyRecord { ip, nic: nic.to_ascii_lowercase(), node: self.node.clone() };
        let value = serde_json::to_vec(&record).expect("serialisable");
        Ok(self.store.put_if(&self.key(pod), value, expected).await?.is_some())
    }

    /// Forgets the pod's address if the record is still at `expected`.
    pub async fn forget(&self, pod: &PodRef, expected: i64) -> Result<bool, StoreError> {
        self.store.delete_if(&self.key(pod), expected).await
    }
}

/// Same NIC, whatever the case of the MACs.
pub fn same_nic(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::store::file::FileStore;

    #[tokio::test]
    async fn records_are_compare_and_swap_and_patterns_or_annotations_make_a_pod_sticky() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileStore::open(&dir.path().join("s.json")).unwrap();
        let claims = StickyClaims::new(store, "/vpc-ipam/t/", "n1", vec!["db/*".into()], Duration::from_secs(900));
        let db = PodRef { namespace: "db".into(), name: "pg-0".into() };
        let web = PodRef { namespace: "web".into(), name: "w-0".into() };
        assert_eq!(claims.policy(Some(&db), None), Some(ClaimPolicy::After(Duration::from_secs(900))));
        assert_eq!(claims.policy(Some(&web), None), None);
        let asked = StickyRequest { hold: ClaimPolicy::Never };
        assert_eq!(claims.policy(Some(&web), Some(asked)), Some(ClaimPolicy::Never), "the annotation wins");
        assert_eq!(claims.policy(None, Some(asked)), None, "no pod name, nothing to keep it for");
        let ip: IpAddr = "10.0.0.9".parse().unwrap();
        assert_eq!(claims.get(&db).await.unwrap(), (None, 0));
        assert!(claims.claim(&db, ip, "52:54:00:AA:00:01", 0).await.unwrap());
        assert!(!claims.claim(&db, ip, "52:54:00:aa:00:02", 0).await.unwrap(), "created once");
        let (record, version) = claims.get(&db).await.unwrap();
        assert_eq!(record.unwrap(), StickyRecord { ip, nic: "52:54:00:aa:00:01".into(), node: "n1".into() });
        assert!(claims.claim(&db, ip, "52:54:00:aa:00:02", version).await.unwrap());
        assert!(!claims.forget(&db, version).await.unwrap(), "a stale version forgets nothing");
        let (_, version) = claims.get(&db).await.unwrap();
        assert!(claims.forget(&db, version).await.unwrap());
        assert_eq!(claims.get(&db).await.unwrap().0, None);
    }
}
