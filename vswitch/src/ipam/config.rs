//! `[ipam]` in vswitchd.toml: read once (prefixes and exclusions are parsed as they are read),
//! checked as a whole into [`IpamSettings`], and turned into the configured store.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vswitch_api::api::PodRef;

use super::error::{IpamError, SettingsError};
use super::pool::{Excluded, Pool, PoolPrefix};
use super::provider::aws::config::AwsConfig;
use super::provider::config::{ProviderKind, UCloudConfig};
use super::store::etcd::{EtcdConfig, EtcdStore};
use super::store::file::{FileStore, FileStoreError};
use super::store::AnyStore;

/// The node-local store's file in the state directory (a single node without etcd).
pub const FILE_STORE: &str = "ipam-store.json";
/// The node's own state in the state directory (see `node`).
pub const STATE_FILE: &str = "ipam.json";

/// `[ipam]` in vswitchd.toml. The same for every node of a cluster (one ConfigMap).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IpamConfig {
    /// This node's name in the store; default: the host name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
    /// The pool: prefixes of the VPC subnet pods get addresses from (unused in provider mode,
    /// where the VPC's subnet is the pool).
    #[serde(default)]
    pub pools: Vec<PoolPrefix>,
    /// Never handed out: nodes, the VPC gateway, other hosts (addresses or prefixes).
    #[serde(default)]
    pub exclude: Vec<Excluded>,
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
    /// Provider mode: pod addresses are secondary IPs of this node's NIC, from the VPC's API
    /// (`ucloud`, with `[ipam.ucloud]`; `aws`, with `[ipam.aws]`); none: the cluster pool above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ProviderKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ucloud: Option<UCloudConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsConfig>,
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
    pub pools: Vec<PoolPrefix>,
    pub exclude: Vec<Excluded>,
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
    pub fn settings(&self) -> Result<IpamSettings, SettingsError> {
        let node = match &self.node_name {
            Some(n) => n.clone(),
            None => nix::unistd::gethostname().map_err(SettingsError::NoHostName)?.to_string_lossy().into_owned(),
        };
        if node.is_empty() || node.contains('/') {
            return Err(SettingsError::NodeName(node));
        }
        if !self.prefix.starts_with('/') {
            return Err(SettingsError::KeyPrefix(self.prefix.clone()));
        }
        if self.warm_target == 0 || self.warm_max < self.warm_target {
            return Err(SettingsError::WarmTarget);
        }
        if self.lease_ttl_seconds < 2 {
            return Err(SettingsError::LeaseTtl);
        }
        if let Some(pattern) = self.sticky.iter().find(|p| p.split('/').count() != 2) {
            return Err(SettingsError::StickyPattern(pattern.clone()));
        }
        Ok(IpamSettings {
            node,
            pool: Pool::new(&self.pools, &self.exclude)?,
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

    /// The configured store: etcd, or the node-local file in `state_dir`, which must be absent
    /// or readable (a corrupt one stops the start; see [`FileStore::open`]).
    pub fn store(&self, state_dir: &Path) -> Result<AnyStore, IpamError> {
        match &self.etcd {
            Some(etcd) => Ok(AnyStore::Etcd(Box::new(EtcdStore::new(etcd.clone())?))),
            None => match FileStore::open(&state_dir.join(FILE_STORE)) {
                Ok(store) => Ok(AnyStore::File(store)),
                Err(FileStoreError::Corrupt { path, detail }) => {
                    Err(IpamError::StoreCorrupt { path, detail, local: state_dir.join(STATE_FILE) })
                }
                Err(FileStoreError::Unreadable { path, source }) => Err(IpamError::StoreUnreadable { path, source }),
            },
        }
    }
}

impl IpamSettings {
    pub fn is_sticky(&self, pod: &PodRef) -> bool {
        matches_sticky(&self.sticky, pod)
    }

    /// The pool's prefixes as messages and views show them: `10.0.0.0/16, fd00::/64`.
    pub fn pool_list(&self) -> String {
        self.pools.iter().map(PoolPrefix::to_string).collect::<Vec<_>>().join(", ")
    }
}

/// Does an `[ipam] sticky` pattern (`namespace/name`, `*` globs) match the pod?
pub fn matches_sticky(patterns: &[String], pod: &PodRef) -> bool {
    patterns.iter().any(|pattern| {
        let (ns, name) = pattern.split_once('/').unwrap_or((pattern, "*"));
        glob(ns, &pod.namespace) && glob(name, &pod.name)
    })
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
        assert!(matches!(bad.settings(), Err(SettingsError::StickyPattern(p)) if p == "x"));
    }

    #[test]
    fn prefixes_are_parsed_as_the_configuration_is_read_and_written_back_as_read() {
        let text =
            "node_name = \"n1\"\npools = [\"10.10.0.0/16\", \"fd00::/64\"]\nexclude = [\"10.10.0.5\", \"fd00::/80\"]";
        let config: IpamConfig = toml::from_str(text).unwrap();
        assert_eq!(config.pools[1].net(), "fd00::/64".parse().unwrap());
        assert_eq!(config.exclude[0], Excluded::Address("10.10.0.5".parse().unwrap()));
        let settings = config.settings().unwrap();
        assert_eq!(settings.pool_list(), "10.10.0.0/16, fd00::/64");
        assert!(!settings.pool.contains("10.10.0.5".parse().unwrap()));
        let json = serde_json::to_value(&config).unwrap();
        assert_eq!(json["pools"], serde_json::json!(["10.10.0.0/16", "fd00::/64"]));
        assert_eq!(json["exclude"], serde_json::json!(["10.10.0.5", "fd00::/80"]), "an address stays an address");

        // A bad prefix is refused where it stands, with what is wrong and where.
        let refused = |text: &str| toml::from_str::<IpamConfig>(text).unwrap_err().to_string();
        let host_bits = refused("pools = [\"10.10.0.1/16\"]");
        assert!(host_bits.contains("pool prefix '10.10.0.1/16' has host bits set (did you mean 10.10.0.0/16?)"));
        assert!(host_bits.contains("line 1"), "{host_bits}");
        assert!(refused("pools = [\"10.10.0.0/33\"]").contains("pool prefix '10.10.0.0/33': "));
        let exclude = refused("pools = [\"10.10.0.0/16\"]\nexclude = [\"gateway\"]");
        assert!(exclude.contains("'gateway' is neither an address nor a prefix") && exclude.contains("line 2"));
        // What only the whole list shows is refused by the settings.
        let overlap: IpamConfig =
            toml::from_str("node_name = \"n\"\npools = [\"10.0.0.0/24\", \"10.0.0.0/25\"]").unwrap();
        let e = overlap.settings().unwrap_err();
        assert_eq!(e.to_string(), "ipam: pool prefix '10.0.0.0/25' overlaps another one");
    }
}
