//! `[ipam] provider = "aws"` and its `[ipam.aws]` table. The warm-pool knobs keep the names of
//! AWS's VPC CNI (`WARM_ENI_TARGET`, `WARM_IP_TARGET`, `MINIMUM_IP_TARGET`, `MAX_ENI`,
//! `IP_COOLDOWN_PERIOD`, `CLUSTER_NAME`): each key is snake_case and also accepted under the
//! environment variable's name, so a user moving from it recognises every knob.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ipam::provider::agent::ProviderSettings;
use crate::ipam::provider::config::ProviderConfigError;
use crate::ipam::provider::{PoolCounts, PoolDelta};

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
    /// At least this long between two upkeep rounds that unassign addresses (ipamd's
    /// `decreaseIPPoolInterval`): pods churning never unassign in consecutive rounds.
    #[serde(default = "default_decrease_interval")]
    pub decrease_ip_pool_interval_seconds: u64,
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
fn default_decrease_interval() -> u64 {
    30
}
fn default_leaked_eni_age() -> u64 {
    300
}
fn default_fabric_probe_timeout() -> u64 {
    5000
}

/// The pool's targets as AWS's VPC CNI defines them; [`WarmTargets::delta`] counts them as its
/// ipamd does (`datastoreTargetState`, `isDatastorePoolTooLow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WarmTargets {
    pub warm_eni: usize,
    pub warm_ip: Option<usize>,
    pub minimum_ip: Option<usize>,
}

impl WarmTargets {
    /// How far `counts` is from the targets with `per_eni` secondary addresses per ENI and
    /// `capacity` in all. With WARM_IP_TARGET or MINIMUM_IP_TARGET: short = max(WARM_IP_TARGET -
    /// available, MINIMUM_IP_TARGET - total), over = min(available - WARM_IP_TARGET, total -
    /// MINIMUM_IP_TARGET), where available counts cooling addresses (AWS's `AvailableAddresses`).
    /// Else WARM_ENI_TARGET whole ENIs available, given back past one more ENI's worth (AWS
    /// frees whole ENIs instead; the pool gives addresses back). Short never past `capacity`.
    /// `over` is what to give back now: cooling addresses beyond the target are given back as
    /// they finish cooling, so the warm ones are the surplus beyond them.
    pub fn delta(&self, counts: PoolCounts, per_eni: usize, capacity: usize) -> PoolDelta {
        let (total, available) = (counts.total(), counts.available());
        let (short, over) = if self.warm_ip.is_some() || self.minimum_ip.is_some() {
            let (warm, minimum) = (self.warm_ip.unwrap_or(0), self.minimum_ip.unwrap_or(0));
            let short = warm.saturating_sub(available).max(minimum.saturating_sub(total));
            let over = available.saturating_sub(warm).min(total.saturating_sub(minimum));
            (short, over)
        } else {
            let low = self.warm_eni * per_eni;
            (low.saturating_sub(available), available.saturating_sub(low + per_eni))
        };
        PoolDelta { short: short.min(capacity.saturating_sub(total)), over: over.saturating_sub(counts.cooling) }
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
        // Until the provider knows the instance type (`Ec2::pool_delta`): what an empty pool is
        // short of, with single-address ENIs.
        let warm = self.targets().delta(PoolCounts::default(), 1, usize::MAX).short.max(1);
        Ok(ProviderSettings {
            warm_low: warm,
            warm_high: warm,
            cooldown: Duration::from_secs(self.ip_cooldown_period),
            decrease_interval: Duration::from_secs(self.decrease_ip_pool_interval_seconds),
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
        assert_eq!(config.settings().unwrap().decrease_interval, Duration::from_secs(30), "as ipamd paces it");
        assert_eq!(config.imds_endpoint, IMDS_ENDPOINT);
        assert!(!config.fabric_probe, "EC2's ARP answers prove nothing: no probe unless asked");
        assert!(toml::from_str::<AwsConfig>("region = \"r\"\nsubnet_id = \"s\"\nWARM_POOL = 1").is_err());
    }

    fn counts(assigned: usize, warm: usize, cooling: usize) -> PoolCounts {
        PoolCounts { assigned, warm, undeliverable: 0, cooling }
    }

    fn delta(short: usize, over: usize) -> PoolDelta {
        PoolDelta { short, over }
    }

    /// The ENI mode, t3.medium: 5 secondary addresses per ENI, 3 ENIs.
    #[test]
    fn warm_eni_target_keeps_an_enis_worth_available() {
        let eni = WarmTargets { warm_eni: 1, warm_ip: None, minimum_ip: None };
        assert_eq!(eni.delta(counts(0, 0, 0), 5, 15), delta(5, 0), "one call for a whole ENI's worth");
        assert_eq!(eni.delta(counts(3, 2, 3), 5, 15), delta(0, 0), "cooling addresses are available");
        assert_eq!(eni.delta(counts(12, 0, 0), 5, 15), delta(3, 0), "never more than the instance holds");
        assert_eq!(eni.delta(counts(0, 12, 0), 5, 15), delta(0, 2), "past one more ENI's worth");
    }

    /// AWS's table (docs/eni-and-ip-target.md) for WARM_IP_TARGET = 2, MINIMUM_IP_TARGET = 5 on
    /// a t3.small (3 per ENI, 3 ENIs): 0 pods hold 5, 5 pods hold 7, 9 pods hold 9.
    #[test]
    fn warm_ip_and_minimum_ip_targets_as_aws_counts_them() {
        let ip = WarmTargets { warm_eni: 1, warm_ip: Some(2), minimum_ip: Some(5) };
        assert_eq!(ip.delta(counts(0, 0, 0), 3, 9), delta(5, 0), "MINIMUM_IP_TARGET in one batch");
        assert_eq!(ip.delta(counts(5, 0, 0), 3, 9), delta(2, 0), "then WARM_IP_TARGET available");
        assert_eq!(ip.delta(counts(9, 0, 0), 3, 9), delta(0, 0), "never past the instance");
        assert_eq!(ip.delta(counts(1, 4, 0), 3, 9), delta(0, 0), "churn below the floor costs nothing");
        // Cooling addresses count as available (the old watermarks allocated for them, then
        // unassigned them once cooled).
        assert_eq!(ip.delta(counts(4, 0, 2), 3, 9), delta(0, 0));
        assert_eq!(ip.delta(counts(4, 3, 0), 3, 9), delta(0, 1), "one above WARM_IP_TARGET");
        // Above both: the cooling ones are given back as they cool, the warm ones beyond that now.
        assert_eq!(ip.delta(counts(2, 4, 3), 3, 9), delta(0, 1));
        assert_eq!(ip.delta(counts(2, 1, 3), 3, 9), delta(0, 0));
        let min_only = WarmTargets { warm_eni: 1, warm_ip: None, minimum_ip: Some(12) };
        assert_eq!(min_only.delta(counts(0, 0, 0), 5, 15), delta(12, 0), "MINIMUM_IP_TARGET alone: IP mode");
    }

    #[test]
    fn bad_targets_are_refused() {
        let mut config: AwsConfig = toml::from_str("region = \"r\"\nsubnet_id = \"s\"").unwrap();
        config.warm_eni_target = 0;
        assert!(matches!(config.settings(), Err(ProviderConfigError::AwsTargets(_))));
        config.warm_ip_target = Some(3);
        assert_eq!(config.settings().unwrap().warm_low, 3);
        config.minimum_ip_target = Some(10);
        assert_eq!(config.settings().unwrap().warm_low, 10);
        config.instance_id = Some(String::new());
        assert_eq!(config.settings().unwrap_err(), ProviderConfigError::AwsEmpty("instance_id"));
    }
}
