//! The defaults of the contract between vswitchd and vpc-cni, defined here once: vswitchd's
//! configuration, the plugin's network configuration and `vswitchctl doctor` all read them from
//! this module, so the two sides agree when neither file says otherwise. docs/configuration.md
//! lists them; tests compare it with the parsed defaults of both files.

use std::net::Ipv4Addr;

/// vswitchd's API socket (`socket` in vswitchd.toml, `vswitchSocket` in the conflist).
pub const SOCKET: &str = "/run/vswitchd/vswitchd.sock";

/// The pods' IPv4 gateway, answered by vswitchd's proxy-ARP (`gateway_ip`, `gateway`). Its MAC,
/// when neither side sets one, is [`crate::MacAddr::local_from`] this address on both.
pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);

/// A pod interface's MTU (`pod_mtu`, `mtu`).
pub const POD_MTU: u16 = 1500;

/// Seconds a released address stays out of use, in either IPAM (`ipam.reuse_delay_seconds`,
/// `ipam.reuseDelaySeconds`): conntrack's SYN_SENT timeout is 120 s.
pub const REUSE_DELAY_SECONDS: u64 = 120;

/// vswitchd's configuration file.
pub const CONFIG: &str = "/etc/vswitchd/vswitchd.toml";

/// Where the conflist is installed on a node.
pub const CONFLIST: &str = "/etc/cni/net.d/10-vpc.conflist";

/// The plugin's IPAM state (`ipam.dataDir`): `<dir>/<network>/state.json`.
pub const CNI_DATA_DIR: &str = "/var/lib/vpc-cni";

/// The plugin's log (`logFile`), and the size past which it is rotated (`logMaxBytes`).
pub const CNI_LOG_FILE: &str = "/var/log/vpc-cni.log";
pub const CNI_LOG_MAX_BYTES: u64 = 10 << 20;
