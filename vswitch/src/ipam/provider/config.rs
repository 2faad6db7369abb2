//! `[ipam] provider = "ucloud"` and its `[ipam.ucloud]` table (`"aws"`: [`super::aws::config`]).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::agent::ProviderSettings;

/// Which VPC API owns the node's pod addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Ucloud,
    Aws,
}

/// `[ipam.ucloud]`: the VPC, this node's NIC and the API's credentials (read from files, never
/// logged: in a DaemonSet, a mounted Secret).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UCloudConfig {
    /// `https://HOST[:PORT]` (`http://` inside the VPC only).
    pub endpoint: String,
    /// PEM: the CA that alone signs the endpoint's certificate (else Mozilla's roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    pub region: String,
    pub zone: String,
    pub project: String,
    pub vpc_id: String,
    pub subnet_id: String,
    /// This node's NIC, whose secondary IPs the pods get; absent: the primary NIC the UHost
    /// metadata service names (`ucloud_metadata`), asked at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nic_mac: Option<String>,
    /// This node's UHost id (`ObjectId`); absent: the metadata service's `instance-id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_id: Option<String>,
    /// The UHost metadata service, asked only for what `nic_mac` and `host_id` leave out.
    #[serde(default = "default_metadata_endpoint")]
    pub metadata_endpoint: String,
    pub public_key_file: PathBuf,
    pub private_key_file: PathBuf,
    /// Below this many warm addresses the upkeep allocates more.
    #[serde(default = "default_warm_low")]
    pub warm_low: usize,
    /// Above this many warm addresses the upkeep deletes some.
    #[serde(default = "default_warm_high")]
    pub warm_high: usize,
    /// A released address rests this long before it is handed out again or deleted.
    #[serde(default = "default_cooldown")]
    pub cooldown_seconds: u64,
    /// A new address is handed out once the fabric delivers it (an ARP probe from it to the
    /// gateway is answered), or after this long with a warning.
    #[serde(default = "default_fabric_probe_timeout")]
    pub fabric_probe_timeout_ms: u64,
    /// Whom the probe asks; default: the node's IPv4 default gateway (the VPC gateway).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fabric_probe_target: Option<Ipv4Addr>,
}

fn default_metadata_endpoint() -> String {
    super::ucloud_metadata::METADATA_ENDPOINT.into()
}
fn default_warm_low() -> usize {
    4
}
fn default_warm_high() -> usize {
    8
}
fn default_cooldown() -> u64 {
    30
}
fn default_fabric_probe_timeout() -> u64 {
    5000
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProviderConfigError {
    #[error("ipam.provider = \"{0}\" needs an [ipam.{0}] table")]
    MissingTable(&'static str),
    #[error("ipam.ucloud: warm_low must be at least 1 and at most warm_high")]
    Watermarks,
    #[error("ipam.ucloud.{0} is empty")]
    Empty(&'static str),
    #[error("ipam.aws.{0} is empty")]
    AwsEmpty(&'static str),
    #[error("ipam.aws: {0}")]
    AwsTargets(&'static str),
}

impl UCloudConfig {
    pub fn settings(&self) -> Result<ProviderSettings, ProviderConfigError> {
        if self.warm_low == 0 || self.warm_high < self.warm_low {
            return Err(ProviderConfigError::Watermarks);
        }
        // Absent is fine (the metadata service tells); set but empty is a mistake.
        let fields = [
            ("endpoint", Some(&self.endpoint)),
            ("region", Some(&self.region)),
            ("zone", Some(&self.zone)),
            ("vpc_id", Some(&self.vpc_id)),
            ("subnet_id", Some(&self.subnet_id)),
            ("nic_mac", self.nic_mac.as_ref()),
            ("host_id", self.host_id.as_ref()),
            ("metadata_endpoint", Some(&self.metadata_endpoint)),
        ];
        if let Some((name, _)) = fields.iter().find(|(_, v)| v.is_some_and(String::is_empty)) {
            return Err(ProviderConfigError::Empty(name));
        }
        Ok(ProviderSettings {
            warm_low: self.warm_low,
            warm_high: self.warm_high,
            cooldown: Duration::from_secs(self.cooldown_seconds),
            fabric_probe_timeout: Duration::from_millis(self.fabric_probe_timeout_ms),
            fabric_probe_target: self.fabric_probe_target,
            ..ProviderSettings::default()
        })
    }
}
