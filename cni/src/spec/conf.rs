//! The network configuration: the vpc-cni entry the runtime hands the plugin on stdin, checked
//! as a whole before any verb runs (undecodable is code 6, an unsupported version 1, anything
//! else wrong 7), and the conflist it comes from, as a node has it installed.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use vswitch_api::api::IpFamilies;
use vswitch_api::{defaults, MacAddr};

use super::pod_ips::families;
use super::{supported_versions, valid_network_name, CniError, CniResult, CniVersion, Code, Dns, RuntimeConfig};

/// The capabilities vpc-cni honours when its own plugin entry declares them.
pub const CAPABILITIES: &[&str] = &["ips", "mac", "bandwidth", vswitch_api::sticky::POD_ANNOTATIONS_CAPABILITY];

/// The network configuration this plugin reads (one entry of a conflist, with `cniVersion` and
/// `name` filled in by the runtime; [`NetConf::from_conflist`] does that filling-in for readers
/// of the installed file).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: CniVersion,
    pub name: String,
    #[serde(rename = "type")]
    pub plugin_type: String,
    /// vswitchd's API socket.
    #[serde(default = "default_socket")]
    pub vswitch_socket: PathBuf,
    /// The pods' gateway (answered by vswitchd's proxy-ARP).
    #[serde(default = "default_gateway")]
    pub gateway: Ipv4Addr,
    /// Its MAC; vswitchd's default is derived from the gateway address the same way.
    pub gateway_mac: Option<MacAddr>,
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    pub ipam: IpamConf,
    /// Passed through to the result (unless an earlier plugin in the chain set one).
    #[serde(default)]
    pub dns: Option<Dns>,
    /// What the runtime sends for the declared capabilities; read with [`RuntimeConfig::from_value`].
    #[serde(default)]
    pub runtime_config: Option<serde_json::Value>,
    /// The capabilities this plugin entry declares (`{"ips": true, ...}`); one vpc-cni cannot
    /// honour is a configuration error.
    #[serde(default)]
    pub capabilities: Option<BTreeMap<String, serde_json::Value>>,
    /// The result of the plugins before this one in the chain (ADD), or the chain's (CHECK);
    /// read with [`NetConf::previous_result`], so a DEL never fails on it.
    #[serde(default)]
    pub prev_result: Option<serde_json::Value>,
    /// GC: the attachments that must stay. libcni 1.2.3+ sends both spellings of the 1.1 key;
    /// the union is kept.
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<Attachment>>,
    #[serde(default, rename = "cni.dev/attachments")]
    pub attachments: Option<Vec<Attachment>>,
    /// One JSON line per invocation goes here; empty disables the log.
    #[serde(default = "default_log_file")]
    pub log_file: PathBuf,
    /// The log is moved to `<logFile>.1` once it is larger than this.
    #[serde(default = "default_log_max_bytes")]
    pub log_max_bytes: u64,
}

/// One attachment (container ID and interface), as CNI names it.
pub use vswitch_api::api::Attachment;

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpamConf {
    /// Where addresses come from: `local` (default: `ranges` of this node, kept in files by the
    /// plugin itself) or `vswitchd` (the cluster-wide pool vswitchd allocates from, on etcd).
    #[serde(rename = "type", default)]
    pub source: IpamSource,
    /// Address ranges of the VPC subnet given to this node (`local` only).
    #[serde(default)]
    pub ranges: Vec<RangeConf>,
    /// `vswitchd` only: the families a pod gets (`ipv4`, `ipv6`, `dual`); absent: every family
    /// the cluster's pools hold. With `local` the ranges' families are the network's.
    #[serde(default)]
    pub ip_families: Option<IpFamilies>,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Seconds a released address stays out of use (conntrack's SYN_SENT timeout is 120 s).
    #[serde(default = "default_reuse_delay")]
    pub reuse_delay_seconds: u64,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum IpamSource {
    #[default]
    Local,
    Vswitchd,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RangeConf {
    pub range_start: IpAddr,
    pub range_end: IpAddr,
}

/// An address as a number, so ranges of either family are spans of `u128`.
pub fn ip_number(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4).into(),
        IpAddr::V6(v6) => v6.into(),
    }
}

impl RangeConf {
    pub fn is_ipv6(&self) -> bool {
        self.range_start.is_ipv6()
    }

    /// First and last address as numbers (inclusive).
    pub fn span(&self) -> (u128, u128) {
        (ip_number(self.range_start), ip_number(self.range_end))
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let (start, end) = self.span();
        ip.is_ipv6() == self.is_ipv6() && (start..=end).contains(&ip_number(ip))
    }
}

impl fmt::Display for RangeConf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.range_start, self.range_end)
    }
}

fn default_socket() -> PathBuf {
    defaults::SOCKET.into()
}
fn default_gateway() -> Ipv4Addr {
    defaults::GATEWAY_IP
}
fn default_mtu() -> u16 {
    defaults::POD_MTU
}
fn default_data_dir() -> PathBuf {
    defaults::CNI_DATA_DIR.into()
}
fn default_reuse_delay() -> u64 {
    defaults::REUSE_DELAY_SECONDS
}
pub fn default_log_file() -> PathBuf {
    defaults::CNI_LOG_FILE.into()
}
pub fn default_log_max_bytes() -> u64 {
    defaults::CNI_LOG_MAX_BYTES
}

impl NetConf {
    /// Parses stdin: undecodable is code 6, a bad version 1, a bad field 7.
    pub fn parse(bytes: &[u8]) -> Result<NetConf, CniError> {
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| CniError::with_details(Code::DecodeFailure, "network configuration is not JSON", e))?;
        if let Some(text) = value.get("cniVersion").and_then(|v| v.as_str()) {
            if !text.parse::<CniVersion>().is_ok_and(CniVersion::is_supported) {
                return Err(CniError::with_details(
                    Code::IncompatibleVersion,
                    format!("cniVersion {text} is not supported (supported: {})", supported_versions().join(", ")),
                    text,
                ));
            }
        }
        let conf: NetConf = serde_json::from_value(value)
            .map_err(|e| CniError::with_details(Code::InvalidConfig, "invalid network configuration", e))?;
        conf.validate()?;
        Ok(conf)
    }

    fn validate(&self) -> Result<(), CniError> {
        let invalid = |msg: String| Err(CniError::new(Code::InvalidConfig, msg));
        if self.plugin_type != "vpc-cni" {
            return invalid(format!("type is '{}', this plugin is vpc-cni", self.plugin_type));
        }
        if !valid_network_name(&self.name) {
            return invalid(format!(
                "network name '{}' must start with a letter or digit and contain only [A-Za-z0-9_.-]",
                self.name
            ));
        }
        for (capability, enabled) in self.capabilities.iter().flatten() {
            if enabled.as_bool() != Some(false) && !CAPABILITIES.contains(&capability.as_str()) {
                return Err(CniError::with_details(
                    Code::InvalidConfig,
                    format!(
                        "capability '{capability}' is declared, but vpc-cni cannot honour it (it honours {})",
                        CAPABILITIES.join(", ")
                    ),
                    capability,
                ));
            }
        }
        if let Some(rc) = &self.runtime_config {
            RuntimeConfig::from_value(rc)?;
        }
        if !(576..=9000).contains(&self.mtu) {
            return invalid(format!("mtu {} is outside 576..=9000", self.mtu));
        }
        match (self.ipam.source, self.ipam.ranges.is_empty()) {
            (IpamSource::Local, true) => return invalid("ipam.ranges is empty".into()),
            (IpamSource::Vswitchd, false) => {
                return invalid(
                    "ipam.ranges is for type local; with type vswitchd the pool is vswitchd's [ipam]".into(),
                )
            }
            _ => {}
        }
        if self.ipam.source == IpamSource::Local && self.ipam.ip_families.is_some() {
            return invalid(
                "ipam.ipFamilies is for type vswitchd; with type local the ranges' families are used".into(),
            );
        }
        for r in &self.ipam.ranges {
            if r.range_start.is_ipv4() != r.range_end.is_ipv4() {
                return invalid(format!("range {r} mixes IPv4 and IPv6"));
            }
            let (start, end) = r.span();
            if start > end {
                return invalid(format!("range {r} is backwards"));
            }
            for gateway in [IpAddr::V4(self.gateway), IpAddr::V6(self.gateway6())] {
                if r.contains(gateway) {
                    return invalid(format!("the gateway {gateway} lies inside the pod range {r}"));
                }
            }
            // A range is contiguous, so this also keeps it out of fe80::/10 and ff00::/8 whole.
            let special = |ip: IpAddr| match ip {
                IpAddr::V6(v6) => v6.is_unspecified() || v6.is_multicast() || v6.segments()[0] & 0xffc0 == 0xfe80,
                IpAddr::V4(v4) => v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast(),
            };
            if special(r.range_start) || special(r.range_end) {
                return invalid(format!("range {r} starts or ends at an address a pod cannot have"));
            }
        }
        // The IPAM's search for a free address counts on each address being in one range only.
        for (i, a) in self.ipam.ranges.iter().enumerate() {
            if let Some(b) =
                self.ipam.ranges[i + 1..].iter().find(|b| b.contains(a.range_start) || a.contains(b.range_start))
            {
                return invalid(format!("ranges {a} and {b} overlap"));
            }
        }
        Ok(())
    }

    /// The pods' IPv6 gateway: the gateway MAC's link-local address (vswitchd answers it).
    pub fn gateway6(&self) -> Ipv6Addr {
        self.gateway_mac().link_local()
    }

    /// The families a pod of this network gets: the ranges' (local), or what `ipFamilies` asks
    /// vswitchd for (None: whatever its pools hold).
    pub fn families(&self) -> Option<IpFamilies> {
        match self.ipam.source {
            IpamSource::Vswitchd => self.ipam.ip_families,
            IpamSource::Local => {
                let any = |ipv6: bool| self.ipam.ranges.iter().any(|r| r.is_ipv6() == ipv6);
                families(any(false), any(true))
            }
        }
    }

    /// The gateway's MAC: `gatewayMac`, or derived from the gateway address as vswitchd derives
    /// its default.
    pub fn gateway_mac(&self) -> MacAddr {
        self.gateway_mac.unwrap_or_else(|| MacAddr::local_from(self.gateway.octets()))
    }

    /// GC: the attachments to keep, from both keys.
    pub fn keep_attachments(&self) -> Vec<Attachment> {
        let mut keep: Vec<Attachment> =
            self.valid_attachments.iter().chain(self.attachments.iter()).flatten().cloned().collect();
        keep.sort();
        keep.dedup();
        keep
    }

    /// The runtime's capability arguments (validated in [`NetConf::parse`]).
    pub fn runtime(&self) -> Result<RuntimeConfig, CniError> {
        self.runtime_config.as_ref().map_or(Ok(RuntimeConfig::default()), RuntimeConfig::from_value)
    }

    /// `prevResult`, typed: what ADD extends and CHECK compares with. Malformed is code 7.
    pub fn previous_result(&self) -> Result<Option<CniResult>, CniError> {
        self.prev_result
            .as_ref()
            .map(|value| {
                CniResult::deserialize(value)
                    .map_err(|e| CniError::with_details(Code::InvalidConfig, "prevResult is not a CNI result", e))
            })
            .transpose()
    }

    /// Where this network's IPAM state lives.
    pub fn ipam_dir(&self) -> PathBuf {
        self.ipam.data_dir.join(&self.name)
    }
}

/// A network configuration list (`plugins: [...]`), as libcni reads it from /etc/cni/net.d.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfList {
    name: Option<String>,
    cni_version: Option<String>,
    /// libcni 1.2+: the versions the list may be run with; the newest one both sides speak wins.
    #[serde(default)]
    cni_versions: Vec<String>,
    plugins: Vec<serde_json::Map<String, serde_json::Value>>,
}

impl NetConf {
    /// The vpc-cni entry of an installed conflist (or of a single network configuration), with
    /// `name` and `cniVersion` filled in from the list as the runtime fills them in, then
    /// checked by [`NetConf::parse`]: what the plugin will be given, and whether it accepts it.
    /// The version is the newest of `cniVersions` vpc-cni speaks, else `cniVersion`.
    pub fn from_conflist(bytes: &[u8]) -> Result<NetConf, CniError> {
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| CniError::with_details(Code::DecodeFailure, "the conflist is not JSON", e))?;
        if value.get("plugins").is_none() {
            return NetConf::parse(bytes);
        }
        let list = ConfList::deserialize(&value)
            .map_err(|e| CniError::with_details(Code::InvalidConfig, "invalid conflist", e))?;
        let name = list.name.ok_or_else(|| CniError::new(Code::InvalidConfig, "the conflist has no \"name\""))?;
        let mut entry = list
            .plugins
            .into_iter()
            .find(|p| p.get("type").and_then(|t| t.as_str()) == Some("vpc-cni"))
            .ok_or_else(|| CniError::new(Code::InvalidConfig, "no plugin of type vpc-cni in the conflist"))?;
        let newest_common = list
            .cni_versions
            .iter()
            .filter_map(|v| v.parse::<CniVersion>().ok())
            .filter(|v| v.is_supported())
            .max()
            .map(|v| v.to_string());
        if let Some(version) = newest_common.or(list.cni_version) {
            entry.insert("cniVersion".into(), version.into());
        }
        entry.insert("name".into(), name.into());
        NetConf::parse(&serde_json::to_vec(&entry).expect("a JSON object serialises"))
    }
}

/// A valid configuration with one IPv4 range and `extra` spliced in (`,"key":value`).
#[cfg(test)]
pub(crate) fn conf_with(extra: &str) -> Result<NetConf, CniError> {
    let text = format!(
        r#"{{"cniVersion":"1.1.0","name":"vpc","type":"vpc-cni","ipam":{{"ranges":[{{"rangeStart":"10.10.40.10","rangeEnd":"10.10.40.20"}}]}}{extra}}}"#
    );
    NetConf::parse(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_are_checked_with_the_right_codes() {
        let good = r#"{"cniVersion":"1.1.0","name":"vpc","type":"vpc-cni","ipam":{"ranges":[{"rangeStart":"10.10.40.10","rangeEnd":"10.10.40.20"}]}}"#;
        assert!(NetConf::parse(good.as_bytes()).is_ok());
        assert_eq!(NetConf::parse(b"{nope").unwrap_err().code, Code::DecodeFailure);
        assert_eq!(
            NetConf::parse(good.replace("1.1.0", "0.2.0").as_bytes()).unwrap_err().code,
            Code::IncompatibleVersion
        );
        assert_eq!(NetConf::parse(good.replace("vpc-cni", "bridge").as_bytes()).unwrap_err().code, Code::InvalidConfig);
        assert_eq!(
            NetConf::parse(good.replace("10.10.40.20", "10.10.40.1").as_bytes()).unwrap_err().code,
            Code::InvalidConfig
        );
        assert_eq!(
            NetConf::parse(good.replace(r#""ipam""#, r#""ipam2""#).as_bytes()).unwrap_err().code,
            Code::InvalidConfig
        );
        let gc = r#"{"cniVersion":"1.1.0","name":"vpc","type":"vpc-cni","ipam":{"ranges":[{"rangeStart":"10.10.40.10","rangeEnd":"10.10.40.20"}]},"cni.dev/attachments":[{"containerID":"a","ifname":"eth0"}]}"#;
        assert_eq!(NetConf::parse(gc.as_bytes()).unwrap().keep_attachments().len(), 1);
        for name in ["", "-vpc", ".vpc", "vpc/x", "vpc net"] {
            let bad = good.replace(r#""name":"vpc""#, &format!(r#""name":"{name}""#));
            assert_eq!(NetConf::parse(bad.as_bytes()).unwrap_err().code, Code::InvalidConfig, "name {name:?}");
        }
        for version in CniVersion::SUPPORTED.map(|v| v.to_string()) {
            assert!(NetConf::parse(good.replace("1.1.0", &version).as_bytes()).is_ok(), "{version}");
        }
    }

    #[test]
    fn gc_takes_the_union_of_both_attachment_keys() {
        // libcni 1.2.3+ sends both; this used to be a "duplicate field" error.
        let conf = conf_with(
            r#","cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"},{"containerID":"b","ifname":"eth0"}],
               "cni.dev/attachments":[{"containerID":"b","ifname":"eth0"},{"containerID":"c","ifname":"net1"}]"#,
        )
        .unwrap();
        let keep: Vec<String> =
            conf.keep_attachments().iter().map(|a| format!("{}:{}", a.container_id, a.ifname)).collect();
        assert_eq!(keep, ["a:eth0", "b:eth0", "c:net1"]);
    }

    #[test]
    fn capabilities_vpc_cni_cannot_honour_are_refused() {
        assert!(conf_with(r#","capabilities":{"ips":true,"mac":true,"bandwidth":true}"#).is_ok());
        assert!(conf_with(r#","capabilities":{"portMappings":false}"#).is_ok(), "declared off");
        let err = conf_with(r#","capabilities":{"ips":true,"portMappings":true}"#).unwrap_err();
        assert_eq!(err.code, Code::InvalidConfig);
        assert!(err.msg.contains("portMappings"), "{err}");
        assert_eq!(conf_with(r#","capabilities":{"infinibandGUID":true}"#).unwrap_err().code, Code::InvalidConfig);
    }

    fn conf_ranges(ranges: &str, extra: &str) -> Result<NetConf, CniError> {
        let text = format!(r#"{{"cniVersion":"1.1.0","name":"vpc","type":"vpc-cni","ipam":{{{ranges}}}{extra}}}"#);
        NetConf::parse(text.as_bytes())
    }

    #[test]
    fn ranges_of_either_family_make_the_networks_families() {
        let v4 = r#"{"rangeStart":"10.10.40.10","rangeEnd":"10.10.40.20"}"#;
        let v6 = r#"{"rangeStart":"fd00:10::a","rangeEnd":"fd00:10::ffff:ffff:ffff:ffff"}"#;
        let families = |ranges: &str| conf_ranges(&format!(r#""ranges":[{ranges}]"#), "").unwrap().families();
        assert_eq!(families(v4), Some(IpFamilies::Ipv4));
        assert_eq!(families(v6), Some(IpFamilies::Ipv6));
        assert_eq!(families(&format!("{v6},{v4}")), Some(IpFamilies::Dual));
        // vswitchd's IPAM: what ipFamilies asks for, or whatever its pools hold.
        let cluster = |extra: &str| conf_ranges(&format!(r#""type":"vswitchd"{extra}"#), "");
        assert_eq!(cluster("").unwrap().families(), None);
        assert_eq!(cluster(r#","ipFamilies":"dual""#).unwrap().families(), Some(IpFamilies::Dual));
        assert_eq!(cluster(r#","ipFamilies":"ipv6""#).unwrap().families(), Some(IpFamilies::Ipv6));
        assert_eq!(cluster(r#","ipFamilies":"both""#).unwrap_err().code, Code::InvalidConfig);
        // The IPv6 gateway is the gateway MAC's link-local address.
        let conf = conf_ranges(&format!(r#""ranges":[{v6}]"#), "").unwrap();
        assert_eq!(conf.gateway6().to_string(), "fe80::a9ff:fefe:101");
    }

    #[test]
    fn bad_ranges_are_invalid_config_with_a_reason() {
        for (ranges, extra, reason) in [
            (r#""ranges":[{"rangeStart":"10.10.40.10","rangeEnd":"fd00::20"}]"#, "", "mixes"),
            (r#""ranges":[{"rangeStart":"fd00::20","rangeEnd":"fd00::10"}]"#, "", "backwards"),
            (r#""ranges":[{"rangeStart":"169.254.1.0","rangeEnd":"169.254.1.9"}]"#, "", "gateway"),
            (r#""ranges":[{"rangeStart":"fe80::1","rangeEnd":"fe80::ffff"}]"#, "", "cannot have"),
            (r#""ranges":[{"rangeStart":"ff00::1","rangeEnd":"ff02::1"}]"#, "", "cannot have"),
            (
                r#""ranges":[{"rangeStart":"fe80::","rangeEnd":"fe80::a9ff:fefe:101"}]"#,
                r#","gatewayMac":"02:00:a9:fe:01:01""#,
                "gateway",
            ),
            (
                r#""ranges":[{"rangeStart":"fd00::1","rangeEnd":"fd00::9"},{"rangeStart":"fd00::9","rangeEnd":"fd00::f"}]"#,
                "",
                "overlap",
            ),
            (r#""ranges":[{"rangeStart":"fd00::1","rangeEnd":"fd00::9"}],"ipFamilies":"dual""#, "", "ipFamilies"),
            (r#""ranges":[{"rangeStart":"fd00::1"}]"#, "", "rangeEnd"),
        ] {
            let err = conf_ranges(ranges, extra).unwrap_err();
            assert_eq!(err.code, Code::InvalidConfig, "{ranges}");
            assert!(err.to_string().contains(reason), "{ranges}: {err}");
        }
    }

    #[test]
    fn a_conflist_gives_its_vpc_cni_entry_the_lists_name_and_version() {
        let list = |top: &str, entry: &str| {
            format!(
                r#"{{{top}"name":"vpc","plugins":[{{"type":"portmap"}},{{"type":"vpc-cni",{entry}"ipam":{{"ranges":[
                   {{"rangeStart":"10.10.40.1","rangeEnd":"10.10.40.20"}},{{"rangeStart":"fd00:10::1","rangeEnd":"fd00:10::ff"}}]}}}}]}}"#
            )
        };
        let conf = NetConf::from_conflist(list(r#""cniVersion":"1.0.0","#, "").as_bytes()).unwrap();
        assert_eq!((conf.name.as_str(), conf.cni_version), ("vpc", CniVersion::V1_0_0));
        assert_eq!(conf.families(), Some(IpFamilies::Dual));
        assert_eq!(conf.vswitch_socket, PathBuf::from(defaults::SOCKET));
        // libcni 1.2+ runs the newest version both sides speak.
        let newest = list(r#""cniVersion":"1.0.0","cniVersions":["0.4.0","1.1.0","9.0.0"],"#, "");
        assert_eq!(NetConf::from_conflist(newest.as_bytes()).unwrap().cni_version, CniVersion::V1_1_0);
        // A single configuration is read as it is.
        let single = r#"{"cniVersion":"0.4.0","name":"n","type":"vpc-cni","ipam":{"type":"vswitchd"}}"#;
        assert_eq!(NetConf::from_conflist(single.as_bytes()).unwrap().ipam.source, IpamSource::Vswitchd);
        // What the plugin would refuse, the reader refuses, for the same reason.
        for (text, code, reason) in [
            (list("", ""), Code::InvalidConfig, "cniVersion"),
            (list(r#""cniVersion":"0.2.0","#, ""), Code::IncompatibleVersion, "0.2.0"),
            (list(r#""cniVersion":"1.0.0","#, r#""mtu":100,"#), Code::InvalidConfig, "mtu"),
            (
                r#"{"name":"vpc","plugins":[{"type":"bridge"}]}"#.into(),
                Code::InvalidConfig,
                "no plugin of type vpc-cni",
            ),
            (r#"{"plugins":[{"type":"vpc-cni"}]}"#.into(), Code::InvalidConfig, "name"),
            ("{".into(), Code::DecodeFailure, "JSON"),
        ] {
            let err = NetConf::from_conflist(text.as_bytes()).unwrap_err();
            assert_eq!(err.code, code, "{text}: {err}");
            assert!(err.to_string().contains(reason), "{text}: {err}");
        }
    }

    #[test]
    fn defaults_are_the_shared_ones() {
        let conf = conf_with("").unwrap();
        assert_eq!(conf.vswitch_socket, PathBuf::from(defaults::SOCKET));
        assert_eq!((conf.gateway, conf.mtu), (defaults::GATEWAY_IP, defaults::POD_MTU));
        assert_eq!(conf.gateway_mac(), MacAddr::local_from(defaults::GATEWAY_IP.octets()));
        assert_eq!(conf.ipam.data_dir, PathBuf::from(defaults::CNI_DATA_DIR));
        assert_eq!(conf.ipam.reuse_delay_seconds, defaults::REUSE_DELAY_SECONDS);
        assert_eq!(conf.log_file, PathBuf::from(defaults::CNI_LOG_FILE));
    }
}
