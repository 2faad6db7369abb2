//! `vswitchd --config FILE` (TOML). Every field has a default; with no file the daemon runs on
//! the defaults: a host port only, no uplink.
//!
//! ```toml
//! socket = "/run/vswitchd/vswitchd.sock"   # control API (mode 0600)
//! state_dir = "/var/lib/vswitchd"          # attached ports survive restarts here
//! metrics_addr = "127.0.0.1:9477"          # Prometheus text at /metrics; "" disables
//! workers = 1                               # forwarding threads (one TAP queue each)
//! gateway_ip = "169.254.1.1"               # pods' default gateway (answered by proxy-ARP)
//! gateway_mac = "02:00:a9:fe:01:01"        # its MAC; default derived from gateway_ip
//! pod_mtu = 1500
//! icmp_errors_per_second = 100             # per worker
//! icmp_burst = 50
//! forwarding = "pipeline"                  # "tap_bounce": the benchmark ceiling, no forwarding decision
//! force_udp_segmentation = false           # tests and diagnosis: cut every UDP GSO frame in vswitchd
//! gone_port_timeout_seconds = 300          # a port whose namespace vanished without a DEL: removed after this
//!
//! [host_port]
//! name = "vsw0"                             # TAP in the node's namespace
//! mtu = 1500
//! default_route = true                      # send what no other route matches to the node
//! routes = ["10.96.0.0/12"]                 # more prefixes for the node (Services, its IPs)
//! announce_on = "eth0"                      # no uplink: gratuitous ARP for new pods from this NIC
//!
//! # Optional: a NIC dedicated to pod traffic (without it, traffic leaves through the node).
//! [uplink]
//! interface = "eth1"
//! subnet = "10.10.0.0/16"                   # the VPC subnet: each host resolved with ARP
//! gateway = "10.10.0.1"                     # the VPC gateway, for everything else
//! address = "10.10.0.11"                    # source of ICMP errors sent out of it; default: the NIC's first IPv4
//! mtu = 1500
//!
//! # Optional: cluster-wide address allocation (vpc-cni's `"ipam": {"type": "vswitchd"}`).
//! [ipam]
//! node_name = "node1"                       # default: the host name
//! pools = ["10.10.0.0/16"]                  # the VPC subnet (or parts of it) for pods
//! exclude = ["10.10.0.0/24"]                # nodes, the gateway, other hosts
//! warm_target = 8                           # addresses claimed ahead of ADDs
//! sticky = ["db/*"]                         # NAMESPACE/NAME patterns that keep their address
//!
//! [ipam.etcd]                               # without it: a node-local file store
//! endpoints = ["https://10.10.0.5:2379"]
//! ca_file = "/etc/vswitchd/etcd/ca.crt"
//! cert_file = "/etc/vswitchd/etcd/client.crt"
//! key_file = "/etc/vswitchd/etcd/client.key"
//! ```
//!
//! With an uplink, `host_port.default_route` must be false: the default goes to the gateway.
//! Every key, its type, default and meaning: `docs/configuration.md` (a test keeps it in step with
//! these structs, which serialise for that reason).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use fib::{AnyPrefix, Ipv4Prefix, Ipv6Prefix, PrefixError};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use vswitch_api::defaults;

use crate::wire::MacAddr;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub metrics_addr: String,
    pub workers: usize,
    pub gateway_ip: Ipv4Addr,
    pub gateway_mac: Option<MacAddr>,
    pub pod_mtu: u16,
    pub icmp_errors_per_second: u64,
    pub icmp_burst: u64,
    /// `tap_bounce` measures the ceiling of any TAP switch here (benchmarks only).
    pub forwarding: crate::datapath::Forwarding,
    /// For tests and diagnosis: treat every port as unable to take UDP GSO frames whole, so
    /// vswitchd segments them itself (as it must for a port whose kernel refused USO).
    pub force_udp_segmentation: bool,
    /// A pod port whose network namespace has been gone this long without a DEL (a runtime that
    /// never sends one) is removed and its address given back.
    pub gone_port_timeout_seconds: u64,
    pub host_port: HostPortConfig,
    pub uplink: Option<UplinkConfig>,
    /// Cluster-wide address allocation; without it, vpc-cni uses its node-local ranges.
    pub ipam: Option<crate::ipam::IpamConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UplinkConfig {
    pub interface: String,
    pub subnet: ConfigPrefix<Ipv4Prefix>,
    pub gateway: Option<Ipv4Addr>,
    /// The node's own address on the VPC subnet, used as the source of ICMP errors sent out of
    /// the uplink; default: the NIC's first IPv4 address (without any, none are sent).
    pub address: Option<Ipv4Addr>,
    /// The VPC's IPv6 subnet (dual-stack): resolved with neighbour discovery.
    #[serde(default)]
    pub subnet6: Option<ConfigPrefix<Ipv6Prefix>>,
    /// The VPC router's IPv6 address: the IPv6 default route goes through it.
    #[serde(default)]
    pub gateway6: Option<Ipv6Addr>,
    /// The node's own IPv6 address on the VPC subnet, the source of ICMPv6 errors sent out of the
    /// uplink (without it none are sent; neighbour solicitations then come from the NIC MAC's
    /// link-local address).
    #[serde(default)]
    pub address6: Option<Ipv6Addr>,
    #[serde(default = "default_mtu")]
    pub mtu: u16,
}

fn default_mtu() -> u16 {
    1500
}

/// A prefix as the file writes it (`"10.96.0.0/12"`), parsed when the file is read: a bad one
/// stops the load, pointing at the line, with the reason (`'10.1.2.3/8' has host bits set`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConfigPrefix<P>(pub P);

impl<P: FromStr<Err = PrefixError>> FromStr for ConfigPrefix<P> {
    type Err = PrefixError;
    fn from_str(s: &str) -> Result<Self, PrefixError> {
        s.parse().map(ConfigPrefix)
    }
}

impl<'de, P: FromStr<Err = PrefixError>> Deserialize<'de> for ConfigPrefix<P> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl<P: std::fmt::Display> Serialize for ConfigPrefix<P> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostPortConfig {
    pub name: String,
    pub mtu: u16,
    pub default_route: bool,
    pub routes: Vec<ConfigPrefix<AnyPrefix>>,
    /// Without an uplink: the node's NIC on the VPC subnet. vswitchd announces every pod it
    /// attaches with a gratuitous ARP from this NIC (the node answers ARP for its pods by
    /// proxy-ARP), so the VPC learns at once where an address that moved between nodes lives.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub announce_on: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            socket: defaults::SOCKET.into(),
            state_dir: "/var/lib/vswitchd".into(),
            metrics_addr: "127.0.0.1:9477".into(),
            workers: 1,
            gateway_ip: defaults::GATEWAY_IP,
            gateway_mac: None,
            pod_mtu: defaults::POD_MTU,
            icmp_errors_per_second: 100,
            icmp_burst: 50,
            forwarding: Default::default(),
            force_udp_segmentation: false,
            gone_port_timeout_seconds: 300,
            host_port: HostPortConfig::default(),
            uplink: None,
            ipam: None,
        }
    }
}

impl Default for HostPortConfig {
    fn default() -> Self {
        HostPortConfig { name: "vsw0".into(), mtu: 1500, default_route: true, routes: Vec::new(), announce_on: None }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        let config: Config =
            toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.into(), source })?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.workers == 0 || self.workers > 64 {
            return Err(ConfigError::Invalid(format!("workers must be 1..=64, not {}", self.workers)));
        }
        if !(576..=9000).contains(&self.pod_mtu) || !(576..=65535).contains(&self.host_port.mtu) {
            return Err(ConfigError::Invalid("MTUs must be at least 576 (pod MTU at most 9000)".into()));
        }
        if let Some(uplink) = &self.uplink {
            if uplink.gateway6.is_some() && uplink.subnet6.is_none() {
                return Err(ConfigError::Invalid("uplink.gateway6 needs uplink.subnet6".into()));
            }
            if self.host_port.announce_on.is_some() {
                return Err(ConfigError::Invalid(
                    "host_port.announce_on is for nodes without an uplink (the uplink announces pods itself)".into(),
                ));
            }
            if (uplink.gateway.is_some() || uplink.gateway6.is_some()) && self.host_port.default_route {
                return Err(ConfigError::Invalid(
                    "uplink.gateway and host_port.default_route both claim the default route; set host_port.default_route = false".into(),
                ));
            }
        }
        if let Some(ipam) = &self.ipam {
            // Provider mode checks its own table at start; the pool keys are unused there.
            if ipam.provider.is_none() {
                ipam.settings().map_err(|e| ConfigError::Invalid(e.to_string()))?;
            }
        }
        Ok(())
    }

    pub fn gateway_mac(&self) -> MacAddr {
        self.gateway_mac.unwrap_or_else(|| MacAddr::local_from(self.gateway_ip.octets()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses_and_defaults_fill_the_rest() {
        let doc: String = include_str!("config.rs")
            .lines()
            .filter_map(|l| l.strip_prefix("//! "))
            .skip_while(|l| !l.starts_with("```toml"))
            .skip(1)
            .take_while(|l| !l.starts_with("```"))
            .collect::<Vec<_>>()
            .join("\n");
        let c: Config = toml::from_str(&doc).unwrap();
        assert!(c.validate().is_err(), "the example has both default routes, which is refused");
        assert_eq!(c.uplink.as_ref().unwrap().interface, "eth1");
        assert_eq!(c.gateway_mac().to_string(), "02:00:a9:fe:01:01");
        assert_eq!(c.host_port.name, "vsw0");
        let partial: Config = toml::from_str("workers = 2").unwrap();
        assert_eq!((partial.workers, partial.pod_mtu), (2, 1500));
        assert!(toml::from_str::<Config>("wrkers = 2").is_err(), "unknown keys are errors");
        assert!(Config { workers: 0, ..Config::default() }.validate().is_err());
    }

    #[test]
    fn prefixes_are_parsed_when_the_file_is_read() {
        let c: Config = toml::from_str(
            "[host_port]\nroutes = [\"10.96.0.0/12\", \"fd00:96::/108\"]\n\
             [uplink]\ninterface = \"eth1\"\nsubnet = \"10.10.0.0/16\"\nsubnet6 = \"fd00:10::/64\"",
        )
        .unwrap();
        assert_eq!(c.host_port.routes[1].0, "fd00:96::/108".parse::<AnyPrefix>().unwrap());
        let uplink = c.uplink.unwrap();
        assert_eq!(uplink.subnet.0.to_string(), "10.10.0.0/16");
        assert_eq!(serde_json::to_value(uplink.subnet6).unwrap(), "fd00:10::/64", "written back as text");

        let dir = tempfile::tempdir().unwrap();
        for (file, key, reason) in [
            ("[host_port]\nroutes = [\"10.1.2.3/8\"]", "routes", "has host bits set (did you mean 10.0.0.0/8?)"),
            ("[host_port]\nroutes = [\"10.0.0.0/33\"]", "routes", "prefix length 33 is longer than 32 bits"),
            ("[uplink]\ninterface = \"eth1\"\nsubnet = \"fd00::/64\"", "subnet", "is not an address/length prefix"),
            (
                "[uplink]\ninterface = \"eth1\"\nsubnet = \"10.0.0.0/8\"\nsubnet6 = \"10.0.0.0/8\"",
                "subnet6",
                "'10.0.0.0/8'",
            ),
        ] {
            let path = dir.path().join("vswitchd.toml");
            std::fs::write(&path, file).unwrap();
            let e = Config::load(&path).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains(reason) && e.contains("vswitchd.toml"), "{file}: {e}");
        }
    }
}
