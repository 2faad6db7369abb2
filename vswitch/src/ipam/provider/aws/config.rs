//! `[ipam] provider = "aws"` and its `[ipam.aws]` table. The warm-pool knobs keep the names of
//! AWS's VPC CNI (`WARM_ENI_TARGET`, `WARM_IP_TARGET`, `MINIMUM_IP_TARGET`, `MAX_ENI`,
//! `IP_COOLDOWN_PERIOD`, `CLUSTER_NAME`): each key is snake_case and also accepted under the
//! environment variable's name, so a user moving from it recognises every knob.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ipam::provider::agent::ProviderSettings;
use crate::ipam::provider::config::ProviderConfigError;

/// The instance metadata service (IMDSv2) of every EC2 instance.
pub const IMDS_ENDPOINT: &str = "http://169.254.169.254";

/// `[ipam.aws]`: the subnet, this instance and the pool's targets. Credentials are not here:
/// they come from the standard chain (environment, then the shared credentials file).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AwsConfig {
    /// `us-east-1`: the SigV4 region, and the default endpoint's.
    pub region: String,
    /// The subnet new ENIs are created in.
    pub subnet_id: String,
    /// This node's instance; absent: read from the instance metadata service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    #[serde(default = "default_imds")]
    pub imds_endpoint: String,
    /// `https://HOST[:PORT]` of the EC2 API (`http://` inside the VPC only: moto, a proxy);
    /// absent: `https://ec2.REGION.amazonaws.com`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// PEM: the CA that alone signs the endpoint's certificate (else Mozilla's roots).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<std::path::PathBuf>,
    /// Security groups of new ENIs; empty: those of the instance's primary ENI.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub security_group_ids: Vec<String>,
    /// Tags new ENIs `cluster.k8s.amazonaws.com/name`; leaked ENIs of this cluster are collected too.
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "CLUSTER_NAME")]
    pub cluster_name: Option<String>,
    /// Whole ENIs' worth of free addresses kept warm (unless `warm_ip_target` is set).
    #[serde(default = "default_warm_eni_target", alias = "WARM_ENI_TARGET")]
    pub warm_eni_target: usize,
    /// Free addresses kept warm; overrides `warm_eni_target`.
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "WARM_IP_TARGET")]
    pub warm_ip_target: Option<usize>,
    /// Addresses (pods' and warm) this node holds at least.
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "MINIMUM_IP_TARGET")]
    pub minimum_ip_target: Option<usize>,
    /// At most this many ENIs (the instance type's limit otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none", alias = "MAX_ENI")]
    pub max_eni: Option<usize>,
    /// A released address rests this long before it is handed out again or unassigned.
    #[serde(default = "default_cooldown", alias = "IP_COOLDOWN_PERIOD")]
    pub ip_cooldown_period: u64,
    /// A detached ENI this node (or cluster) created is deleted once its `createdAt` tag is this old.
    #[serde(default = "default_leaked_eni_age")]
    pub leaked_eni_age_seconds: u64,
    /// Hand a new address out only once an ARP probe from it (on the ENI holding it) to the
    /// gateway is answered, as with UCloud. Off by default: on EC2 the hypervisor answers ARP for
    /// the gateway whatever the sender, so the answer proves nothing, and EC2 delivers an
    /// address once `AssignPrivateIpAddresses` has answered (AWS's VPC CNI waits for nothing
    /// either). On for a fabric that enforces ARP per address (the lab's SDN).
    #[serde(default)]
    pub fabric_probe: bool,
    /// With `fabric_probe`: the longest a new address is probed before it is used anyway.
    #[serde(default = "default_fabric_probe_timeout")]
    pub fabric_probe_timeout_ms: u64,
    /// Serve an ENI's addresses only while an interface with its MAC is up in this node (else
    /// the pod is unreachable: the instance's other ENIs do not carry it), and attach no ENI
    /// while an attached one is still missing. `false` only where vswitchd does not run on the
    /// instance itself (tests against moto from the host).
    #[serde(default = "default_true")]
    pub require_eni_interface: bool,
}

fn default_true() -> bool {
    true
}

fn default_imds() -> String {
    IMDS_ENDPOINT.into()
}
fn default_warm_eni_target() -> usize {
    1
}
fn default_cooldown() -> u64 {
    30
}
fn default_leaked_eni_age() -> u64 {
    300
}
fn default_fabric_probe_timeout() -> u64 {
    5000
}

/// The pool's targets as AWS's VPC CNI defines them; [`WarmTargets::watermarks`] maps them onto
/// the agent's low and high watermarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WarmTargets {
    pub warm_eni: usize,
    pub warm_ip: Option<usize>,
    pub minimum_ip: Option<usize>,
}

impl WarmTargets {
    /// `(low, high)` warm addresses with `pods` addresses held and `per_eni` secondary addresses
    /// per ENI, `capacity` in all: WARM_IP_TARGET free (and MINIMUM_IP_TARGET in all), trimmed
    /// to exactly that; else WARM_ENI_TARGET whole ENIs free, trimmed once one more ENI's worth
    /// is free. Never more than the instance can still hold.
    pub fn watermarks(&self, pods: usize, per_eni: usize, capacity: usize) -> (usize, usize) {
        let minimum = self.minimum_ip.unwrap_or(0).saturating_sub(pods);
        let (low, high) = match self.warm_ip {
            Some(ip) => {
                let low = ip.max(minimum);
                (low, low)
            }
            None => {
                let low = (self.warm_eni * per_eni).max(minimum);
                (low, low.max((self.warm_eni + 1) * per_eni))
            }
        };
        let room = capacity.saturating_sub(pods);
        (low.min(room).max(1), high.min(room).max(1))
    }
}

impl AwsConfig {
    pub fn targets(&self) -> WarmTargets {
        WarmTargets { warm_eni: self.warm_eni_target, warm_ip: self.warm_ip_target, minimum_ip: self.minimum_ip_target }
    }

    pub fn settings(&self) -> Result<ProviderSettings, ProviderConfigError> {
        let fields = [
            ("region", Some(&self.region)),
            ("subnet_id", Some(&self.subnet_id)),
            ("instance_id", self.instance_id.as_ref()),
            ("imds_endpoint", Some(&self.imds_endpoint)),
            ("endpoint", self.endpoint.as_ref()),
            ("cluster_name", self.cluster_name.as_ref()),
        ];
        if let Some((name, _)) = fields.iter().find(|(_, v)| v.is_some_and(String::is_empty)) {
            return Err(ProviderConfigError::AwsEmpty(name));
        }
        if self.warm_eni_target == 0 && self.warm_ip_target.unwrap_or(0) == 0 {
            return Err(ProviderConfigError::AwsTargets("warm_eni_target or warm_ip_target must be at least 1"));
        }
        if self.max_eni == Some(0) {
            return Err(ProviderConfigError::AwsTargets("max_eni must be at least 1"));
        }
        // The watermarks follow the instance type once the provider knows it (`watermarks`).
        let (warm_low, warm_high) = self.targets().watermarks(0, 1, usize::MAX);
        Ok(ProviderSettings {
            warm_low,
            warm_high,
            cooldown: Duration::from_secs(self.ip_cooldown_period),
            // Whether to probe at all is the provider's (`fabric_probe`, `Ec2::fabric_probe_mac`).
            fabric_probe_timeout: Duration::from_millis(self.fabric_probe_timeout_ms),
            ..ProviderSettings::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_names_are_accepted() {
        let config: AwsConfig = toml::from_str(
            r#"region = "us-east-1"
               subnet_id = "subnet-1"
               WARM_IP_TARGET = 5
               MINIMUM_IP_TARGET = 10
               IP_COOLDOWN_PERIOD = 20"#,
        )
        .unwrap();
        assert_eq!(
            (config.warm_ip_target, config.minimum_ip_target, config.ip_cooldown_period),
            (Some(5), Some(10), 20)
        );
        assert_eq!(config.warm_eni_target, 1);
        assert_eq!(config.imds_endpoint, IMDS_ENDPOINT);
        assert!(!config.fabric_probe, "EC2's ARP answers prove nothing: no probe unless asked");
        assert!(toml::from_str::<AwsConfig>("region = \"r\"\nsubnet_id = \"s\"\nWARM_POOL = 1").is_err());
    }

    #[test]
    fn targets_map_onto_watermarks() {
        let eni = WarmTargets { warm_eni: 1, warm_ip: None, minimum_ip: None };
        // t3.medium: 5 secondary addresses per ENI, 3 ENIs.
        assert_eq!(eni.watermarks(0, 5, 15), (5, 10));
        assert_eq!(eni.watermarks(12, 5, 15), (3, 3), "never more than the instance holds");
        let ip = WarmTargets { warm_eni: 1, warm_ip: Some(2), minimum_ip: Some(10) };
        assert_eq!(ip.watermarks(0, 5, 15), (10, 10), "MINIMUM_IP_TARGET in all");
        assert_eq!(ip.watermarks(9, 5, 15), (2, 2), "then WARM_IP_TARGET free");
        let min_only = WarmTargets { warm_eni: 1, warm_ip: None, minimum_ip: Some(12) };
        assert_eq!(min_only.watermarks(0, 5, 15), (12, 12));
    }

    #[test]
    fn bad_targets_are_refused() {
        let mut config: AwsConfig = toml::from_str("region = \"r\"\nsubnet_id = \"s\"").unwrap();
        config.warm_eni_target = 0;
        assert!(matches!(config.settings(), Err(ProviderConfigError::AwsTargets(_))));
        config.warm_ip_target = Some(3);
        assert_eq!(config.settings().unwrap().warm_low, 3);
        config.instance_id = Some(String::new());
        assert_eq!(config.settings().unwrap_err(), ProviderConfigError::AwsEmpty("instance_id"));
    }
}
