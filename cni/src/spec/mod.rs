//! The CNI specification's side of the plugin, for versions 0.3.0, 0.3.1, 0.4.0, 1.0.0 and
//! 1.1.0, one concern a file:
//!
//! - [`version`]: [`CniVersion`], parsed and ordered.
//! - [`env`]: the CNI_* environment and CNI_ARGS, validated per command.
//! - [`conf`]: the network configuration (and the conflist it comes from), with the runtime
//!   capabilities this plugin honours (`ips`, `mac`, `bandwidth`) read by [`runtime`].
//! - [`result`]: the typed results ADD and VERSION print; [`error`]: the spec's error.
//! - [`pod_ips`]: a pod's addresses, CIDR notation, MACs.

pub mod conf;
pub mod env;
pub mod error;
pub mod pod_ips;
pub mod result;
pub mod runtime;
pub mod version;

pub use conf::{
    default_log_file, default_log_max_bytes, ip_number, Attachment, IpamConf, IpamSource, NetConf, RangeConf,
    CAPABILITIES,
};
pub use env::{valid_container_id, valid_network_name, CniArgs, Command, Environment};
pub use error::{CniError, Code, ErrorReply};
pub use pod_ips::{parse_ip, parse_mac, CidrAddress, PodIps};
pub use result::{add_result, CniResult, Dns, Interface, IpConfig, IpVersion, Route, VersionResult};
pub use runtime::{default_burst_bits, RuntimeConfig};
pub use version::{supported_versions, CniVersion, VersionParseError};
pub use vswitch_api::api::IpFamilies;
