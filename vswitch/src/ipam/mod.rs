//! Cluster-wide address allocation: any VPC address on any node, as a cloud's SDN hands them
//! out, with etcd (or, on a single node, a local file) as the one place that says who holds
//! which address.
//!
//! - [`pool`]: the cluster's pool (prefixes minus reserved addresses).
//! - [`record`]: what the store holds per address, and the key layout.
//! - [`store`]: the compare-and-swap store trait and its two backends (file, etcd).
//! - [`node`]: this node's agent: warm pool, ADD/DEL from local state, upkeep against the store.
//!
//! It lives in vswitchd rather than a daemon of its own: vswitchd already owns the node's
//! socket, state directory, upgrade handover and pod ports, and fencing a node that lost its
//! addresses means detaching ports, which only vswitchd can do. The short-lived `vpc-cni`
//! process only talks to vswitchd.

pub mod node;
pub mod pool;
pub mod record;
pub mod store;

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vswitch_api::api::PodRef;

pub use node::{Fenced, NodeIpam};
pub use pool::Pool;
use store::{etcd::EtcdConfig, etcd::EtcdStore, file::FileStore, AnyStore};

/// `[ipam]` in vswitchd.toml. The same for every node of a cluster (one ConfigMap).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IpamConfig {
    /// This node's name in the store; default: the host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// The pool: prefixes of the VPC subnet pods get addresses from.
    pub pools: Vec<String>,
    /// Never handed out: nodes, the VPC gateway, other hosts (addresses or prefixes).
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Where this cluster's keys live in the store.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Addresses each node keeps claimed ahead of ADDs (AWS's WARM_IP_TARGET).
    #[serde(default = "default_warm_target")]
    pub warm_target: usize,
    /// Warm addresses above this are given back.
    #[serde(default = "default_warm_max")]
    pub warm_max: usize,
    /// A released address is handed out again only after this (conntrack's SYN_SENT timeout).
    #[serde(default = "default_reuse_delay")]
    pub reuse_delay_seconds: u64,
    /// A node's lease; without renewal for this long the node counts as down.
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl_seconds: u64,
    /// How long a down node keeps its addresses before they return to the pool.
    #[serde(default = "default_quarantine")]
    pub quarantine_seconds: u64,
    /// Pods that keep their address across deletion and re-creation on any node:
    /// `namespace/name` patterns where `*` matches any run of characters (`db/*`, `*/kafka-*`).
    #[serde(default)]
    pub sticky: Vec<String>,
    /// How long a deleted sticky pod's address is held for it.
    #[serde(default = "default_sticky_hold")]
    pub sticky_hold_seconds: u64,
    /// The etcd cluster; without it, the node-local file store (one node only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<EtcdConfig>,
}

fn default_prefix() -> String {
    "/vpc-ipam/default".into()
}
fn default_warm_target() -> usize {
    8
}
fn default_warm_max() -> usize {
    16
}
fn default_reuse_delay() -> u64 {
    vswitch_api::defaults::REUSE_DELAY_SECONDS
}
fn default_lease_ttl() -> u64 {
    10
}
fn default_quarantine() -> u64 {
    60
}
fn default_sticky_hold() -> u64 {
    900
}

/// [`IpamConfig`] checked and resolved.
#[derive(Debug, Clone)]
pub struct IpamSettings {
    pub node: String,
    pub pool: Pool,
    pub pools: Vec<String>,
    pub exclude: Vec<String>,
    pub prefix: String,
    pub warm_target: usize,
    pub warm_max: usize,
    pub reuse_delay: Duration,
    pub lease_ttl: Duration,
    pub quarantine: Duration,
    pub sticky: Vec<String>,
    pub sticky_hold: Duration,
}

impl IpamConfig {
    pub fn settings(&self) -> Result<IpamSettings, String> {
        let node = match &self.node_name {
            Some(n) => n.clone(),
            None => nix::unistd::gethostname()
                .map_err(|e| format!("ipam.node_name is not set and the host name is unreadable: {e}"))?
                .to_string_lossy()
                .into_owned(),
        };
        if node.is_empty() || node.contains('/') {
            return Err(format!("ipam.node_name '{node}' must be non-empty and without '/'"));
        }
        if !self.prefix.starts_with('/') {
            return Err(format!("ipam.prefix '{}' must start with '/'", self.prefix));
        }
        if self.warm_target == 0 || self.warm_max < self.warm_target {
            return Err("ipam.warm_target must be at least 1 and at most warm_max".into());
        }
        if self.lease_ttl_seconds < 2 {
            return Err("ipam.lease_ttl_seconds must be at least 2".into());
        }
        for pattern in &self.sticky {
            if pattern.split('/').count() != 2 {
                return Err(format!("ipam.sticky pattern '{pattern}' must be NAMESPACE/NAME"));
            }
        }
        Ok(IpamSettings {
            node,
            pool: Pool::parse(&self.pools, &self.exclude).map_err(|e| format!("ipam: {e}"))?,
            pools: self.pools.clone(),
            exclude: self.exclude.clone(),
            prefix: self.prefix.clone(),
            warm_target: self.warm_target,
            warm_max: self.warm_max,
            reuse_delay: Duration::from_secs(self.reuse_delay_seconds),
            lease_ttl: Duration::from_secs(self.lease_ttl_seconds),
            quarantine: Duration::from_secs(self.quarantine_seconds),
            sticky: self.sticky.clone(),
            sticky_hold: Duration::from_secs(self.sticky_hold_seconds),
        })
    }

    /// The configured store: etcd, or the node-local file in `state_dir`.
    pub fn store(&self, state_dir: &Path) -> Result<AnyStore, String> {
        match &self.etcd {
            Some(etcd) => {
                EtcdStore::new(etcd.clone()).map(|s| AnyStore::Etcd(Box::new(s))).map_err(|e| format!("ipam.etcd: {e}"))
            }
            None => Ok(AnyStore::File(FileStore::new(&state_dir.join("ipam-store.json")))),
        }
    }
}

impl IpamSettings {
    pub fn is_sticky(&self, pod: &PodRef) -> bool {
        self.sticky.iter().any(|pattern| {
            let (ns, name) = pattern.split_once('/').unwrap_or((pattern, "*"));
            glob(ns, &pod.namespace) && glob(name, &pod.name)
        })
    }
}

/// `*` matches any run of characters; everything else matches itself.
fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else { return false };
    let parts: Vec<&str> = parts.collect();
    for (i, part) in parts.iter().enumerate() {
        if i == parts.len() - 1 {
            return rest.ends_with(part);
        }
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sticky_patterns() {
        assert!(glob("*", "anything") && glob("db", "db") && !glob("db", "dbx"));
        assert!(glob("kafka-*", "kafka-0") && !glob("kafka-*", "zk-0") && glob("*-0", "kafka-0"));
        assert!(glob("a*b*c", "aXbYc") && !glob("a*b*c", "aXbY"));
        let config: IpamConfig = toml::from_str(
            r#"node_name = "n1"
               pools = ["10.10.0.0/16"]
               sticky = ["db/*", "*/kafka-*"]"#,
        )
        .unwrap();
        let s = config.settings().unwrap();
        let pod = |ns: &str, name: &str| PodRef { namespace: ns.into(), name: name.into() };
        assert!(s.is_sticky(&pod("db", "pg-0")) && s.is_sticky(&pod("prod", "kafka-2")));
        assert!(!s.is_sticky(&pod("prod", "web-1")));
        let bad: IpamConfig =
            toml::from_str("node_name = \"n1\"\npools = [\"10.10.0.0/16\"]\nsticky = [\"x\"]").unwrap();
        assert!(bad.settings().is_err());
    }
}

#[cfg(test)]
mod cluster_tests;
