//! The CNI specification's side of the plugin: the environment, the network configuration, the
//! result and the error, for versions 0.3.0, 0.3.1, 0.4.0, 1.0.0 and 1.1.0, and the runtime
//! capabilities this plugin honours (`ips`, `mac`, `bandwidth`).

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
pub use vswitch_api::api::IpFamilies;

pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// GC and STATUS exist from this version on; older configurations get code 1 for them.
pub const GC_STATUS_VERSION: &str = "1.1.0";

/// The capabilities vpc-cni honours when its own plugin entry declares them.
pub const CAPABILITIES: &[&str] = &["ips", "mac", "bandwidth"];

/// Is `version` one whose result has `"version"` per IP and no interface MTU (0.3.x, 0.4.0)?
pub fn is_pre_1_0(version: &str) -> bool {
    matches!(version, "0.3.0" | "0.3.1" | "0.4.0")
}

/// The spec's error codes this plugin returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Code {
    IncompatibleVersion = 1,
    UnknownContainer = 3,
    InvalidEnvironment = 4,
    IoFailure = 5,
    DecodeFailure = 6,
    InvalidConfig = 7,
    TryAgainLater = 11,
    /// STATUS: the plugin cannot serve ADDs now (no address to hand out).
    NotAvailable = 50,
    /// STATUS: the plugin is not available, and existing containers in the network may have
    /// limited connectivity (vswitchd is unreachable).
    LimitedConnectivity = 51,
    /// Ours (100+ is plugin-specific): the address pool is exhausted.
    PoolExhausted = 100,
    /// Ours: setting up the pod's interface failed.
    InterfaceSetup = 101,
    /// Ours: vswitchd refused the port.
    SwitchRefused = 102,
    /// Ours: the requested static address is held by another container.
    AddressTaken = 103,
}

/// A CNI error: printed as the spec's error JSON on stdout, with a non-zero exit.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{msg}{}", details.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
pub struct CniError {
    pub code: Code,
    pub msg: String,
    pub details: Option<String>,
}

impl CniError {
    pub fn new(code: Code, msg: impl Into<String>) -> CniError {
        CniError { code, msg: msg.into(), details: None }
    }

    pub fn with_details(code: Code, msg: impl Into<String>, details: impl ToString) -> CniError {
        CniError { code, msg: msg.into(), details: Some(details.to_string()) }
    }

    pub fn to_json(&self, cni_version: &str) -> serde_json::Value {
        let mut v = serde_json::json!({"cniVersion": cni_version, "code": self.code as u32, "msg": self.msg});
        if let Some(d) = &self.details {
            v["details"] = serde_json::json!(d);
        }
        v
    }
}

/// The verbs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Gc,
    Status,
}

/// The CNI_* environment, validated per command.
#[derive(Debug, Clone)]
pub struct Environment {
    pub command: Command,
    pub container_id: Option<String>,
    pub netns: Option<PathBuf>,
    pub ifname: Option<String>,
    /// Validated (unknown keys refused unless IgnoreUnknown); this plugin needs none of them.
    #[allow(dead_code)]
    pub args: CniArgs,
    /// Required by the spec for ADD, DEL and CHECK; this plugin delegates to no other plugin.
    #[allow(dead_code)]
    pub path: Vec<PathBuf>,
}

/// CNI_ARGS: `K=V;K=V`. Unknown keys are an error unless `IgnoreUnknown` is true.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    pub pod_uid: Option<String>,
    pub infra_container_id: Option<String>,
    /// `IP=10.10.40.77` (or `10.10.40.77/24`, or `10.10.40.77,fd00::77`): requested static
    /// addresses, at most one per family.
    pub ips: PodIps,
    /// `MAC=02:..`: the pod's MAC instead of the derived one.
    pub mac: Option<vswitch_api::MacAddr>,
}

impl CniArgs {
    pub fn parse(raw: &str) -> Result<CniArgs, CniError> {
        let mut pairs = BTreeMap::new();
        for part in raw.split(';').filter(|p| !p.is_empty()) {
            let (k, v) = part.split_once('=').ok_or_else(|| {
                CniError::with_details(Code::InvalidEnvironment, "CNI_ARGS must be K=V pairs separated by ';'", part)
            })?;
            pairs.insert(k.to_string(), v.to_string());
        }
        let ignore_unknown = pairs.get("IgnoreUnknown").is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
        let mut args = CniArgs::default();
        for (k, v) in pairs {
            match k.as_str() {
                "IgnoreUnknown" => {}
                "K8S_POD_NAMESPACE" => args.pod_namespace = Some(v),
                "K8S_POD_NAME" => args.pod_name = Some(v),
                "K8S_POD_UID" => args.pod_uid = Some(v),
                "K8S_POD_INFRA_CONTAINER_ID" => args.infra_container_id = Some(v),
                "IP" => {
                    args.ips = PodIps::parse_list(v.split(','))
                        .map_err(|e| CniError::with_details(Code::InvalidEnvironment, "CNI_ARGS IP", e))?
                }
                "MAC" => {
                    args.mac = Some(
                        parse_mac(&v)
                            .map_err(|e| CniError::with_details(Code::InvalidEnvironment, "CNI_ARGS MAC", e))?,
                    )
                }
                _ if ignore_unknown => {}
                _ => {
                    return Err(CniError::with_details(
                        Code::InvalidEnvironment,
                        "unknown CNI_ARGS key (set IgnoreUnknown=1 to allow)",
                        k,
                    ))
                }
            }
        }
        Ok(args)
    }
}

/// An address, alone or with a prefix length (`10.10.40.77`, `10.10.40.77/24`, `fd00::77/64`);
/// the prefix is checked and dropped (pods get a /32 or /128 here).
pub fn parse_ip(text: &str) -> Result<IpAddr, String> {
    let (addr, prefix) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (text, None),
    };
    let ip = addr.parse::<IpAddr>().map_err(|_| format!("'{text}' is not an IP address"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if let Some(p) = prefix {
        if !p.parse::<u8>().is_ok_and(|p| p <= max) {
            return Err(format!("'{text}' has no valid prefix length"));
        }
    }
    Ok(ip)
}

/// A pod's addresses: at most one per family.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PodIps {
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
}

impl PodIps {
    /// Adds `ip`; a second address of the same family is an error.
    pub fn add(&mut self, ip: IpAddr) -> Result<(), String> {
        match ip {
            IpAddr::V4(v4) if self.v4.is_none() => self.v4 = Some(v4),
            IpAddr::V6(v6) if self.v6.is_none() => self.v6 = Some(v6),
            _ => return Err(format!("{ip} is a second address of its family; a pod has one per family")),
        }
        Ok(())
    }

    pub fn from_ips(ips: impl IntoIterator<Item = IpAddr>) -> Result<PodIps, String> {
        let mut all = PodIps::default();
        for ip in ips {
            all.add(ip)?;
        }
        Ok(all)
    }

    /// Addresses as the runtime writes them ([`parse_ip`]).
    pub fn parse_list<'a>(texts: impl IntoIterator<Item = &'a str>) -> Result<PodIps, String> {
        let mut all = PodIps::default();
        for text in texts {
            all.add(parse_ip(text)?)?;
        }
        Ok(all)
    }

    /// IPv4 first.
    pub fn iter(&self) -> impl Iterator<Item = IpAddr> {
        self.v4.map(IpAddr::V4).into_iter().chain(self.v6.map(IpAddr::V6))
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_none() && self.v6.is_none()
    }

    pub fn families(&self) -> Option<IpFamilies> {
        families(self.v4.is_some(), self.v6.is_some())
    }
}

fn families(ipv4: bool, ipv6: bool) -> Option<IpFamilies> {
    match (ipv4, ipv6) {
        (true, true) => Some(IpFamilies::Dual),
        (true, false) => Some(IpFamilies::Ipv4),
        (false, true) => Some(IpFamilies::Ipv6),
        (false, false) => None,
    }
}

/// `10.10.40.77,fd00::77` (IPv4 first); empty when there is none.
impl fmt::Display for PodIps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list: Vec<String> = self.iter().map(|ip| ip.to_string()).collect();
        f.write_str(&list.join(","))
    }
}

/// A MAC the pod may have: unicast and not all zeros.
pub fn parse_mac(text: &str) -> Result<vswitch_api::MacAddr, String> {
    let mac: vswitch_api::MacAddr = text.parse().map_err(|e: vswitch_api::MacParseError| e.to_string())?;
    if mac.is_multicast() || mac == vswitch_api::MacAddr::ZERO {
        return Err(format!("{mac} is not a unicast MAC"));
    }
    Ok(mac)
}

/// The spec's rule for container IDs: alphanumeric first, then alphanumerics, `_`, `.`, `-`.
pub fn valid_container_id(id: &str) -> bool {
    id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
}

/// The spec's rule for network names (same alphabet as container IDs, so also a safe file name).
pub fn valid_network_name(name: &str) -> bool {
    valid_container_id(name)
}

impl Environment {
    /// Reads and checks the environment for the command it names.
    pub fn from_env(get: impl Fn(&str) -> Option<String>) -> Result<Environment, CniError> {
        let missing =
            |name: &str| CniError::new(Code::InvalidEnvironment, format!("{name} is required for this command"));
        let command = match get("CNI_COMMAND").as_deref() {
            Some("ADD") => Command::Add,
            Some("DEL") => Command::Del,
            Some("CHECK") => Command::Check,
            Some("VERSION") => Command::Version,
            Some("GC") => Command::Gc,
            Some("STATUS") => Command::Status,
            Some(other) => return Err(CniError::with_details(Code::InvalidEnvironment, "unknown CNI_COMMAND", other)),
            None => return Err(missing("CNI_COMMAND")),
        };
        let non_empty = |name: &str| get(name).filter(|v| !v.is_empty());
        let env = Environment {
            command,
            container_id: non_empty("CNI_CONTAINERID"),
            netns: non_empty("CNI_NETNS").map(PathBuf::from),
            ifname: non_empty("CNI_IFNAME"),
            args: CniArgs::parse(&get("CNI_ARGS").unwrap_or_default())?,
            path: get("CNI_PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default(),
        };
        let needs: &[&str] = match command {
            Command::Add | Command::Check => &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"],
            // DEL may come after the namespace is gone.
            Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"],
            Command::Version | Command::Gc | Command::Status => &[],
        };
        for name in needs {
            if non_empty(name).is_none() {
                return Err(missing(name));
            }
        }
        if let Some(ifname) = &env.ifname {
            if !vswitch_api::tap::valid_name(ifname) {
                return Err(CniError::with_details(
                    Code::InvalidEnvironment,
                    "CNI_IFNAME is not a valid interface name (1-15 bytes, no '/', ':' or whitespace, not '.' or '..')",
                    ifname,
                ));
            }
        }
        if let Some(id) = &env.container_id {
            if !valid_container_id(id) {
                return Err(CniError::with_details(
                    Code::InvalidEnvironment,
                    "CNI_CONTAINERID must start with a letter or digit and contain only [A-Za-z0-9_.-]",
                    id,
                ));
            }
        }
        Ok(env)
    }
}

/// The network configuration this plugin reads (one entry of a conflist, with `cniVersion` and
/// `name` filled in by the runtime).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
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
    pub gateway_mac: Option<String>,
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    pub ipam: IpamConf,
    #[serde(default)]
    pub dns: Option<serde_json::Value>,
    /// What the runtime sends for the declared capabilities; read with [`RuntimeConfig::from_value`].
    #[serde(default)]
    pub runtime_config: Option<serde_json::Value>,
    /// The capabilities this plugin entry declares (`{"ips": true, ...}`); one vpc-cni cannot
    /// honour is a configuration error.
    #[serde(default)]
    pub capabilities: Option<BTreeMap<String, serde_json::Value>>,
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
    "/run/vswitchd/vswitchd.sock".into()
}
fn default_gateway() -> Ipv4Addr {
    Ipv4Addr::new(169, 254, 1, 1)
}
fn default_mtu() -> u16 {
    1500
}
fn default_data_dir() -> PathBuf {
    "/var/lib/vpc-cni".into()
}
fn default_reuse_delay() -> u64 {
    120
}
pub fn default_log_file() -> PathBuf {
    "/var/log/vpc-cni.log".into()
}
pub fn default_log_max_bytes() -> u64 {
    10 << 20
}

impl NetConf {
    /// Parses stdin: undecodable is code 6, a bad version 1, a bad field 7.
    pub fn parse(bytes: &[u8]) -> Result<NetConf, CniError> {
        let value: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| CniError::with_details(Code::DecodeFailure, "network configuration is not JSON", e))?;
        if let Some(v) = value.get("cniVersion").and_then(|v| v.as_str()) {
            if !SUPPORTED_VERSIONS.contains(&v) {
                return Err(CniError::with_details(
                    Code::IncompatibleVersion,
                    format!("cniVersion {v} is not supported (supported: {})", SUPPORTED_VERSIONS.join(", ")),
                    v,
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
        if let Some(mac) = &self.gateway_mac {
            mac.parse::<vswitch_api::MacAddr>()
                .map_err(|e| CniError::with_details(Code::InvalidConfig, "gatewayMac", e))?;
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

    pub fn gateway_mac(&self) -> vswitch_api::MacAddr {
        self.gateway_mac
            .as_deref()
            .and_then(|m| m.parse().ok())
            .unwrap_or_else(|| vswitch_api::MacAddr::local_from(self.gateway.octets()))
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

    /// Where this network's IPAM state lives.
    pub fn ipam_dir(&self) -> PathBuf {
        self.ipam.data_dir.join(&self.name)
    }
}

/// The runtime's arguments for the capabilities vpc-cni honours, from `runtimeConfig`.
///
/// Keys are matched case-insensitively: CONVENTIONS.md spells them camelCase (`ingressRate`),
/// containerd's go-cni writes Go field names (`IngressRate`, `HostPort`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// `ips`: the requested static addresses (one per family; a prefix length is accepted).
    pub ips: PodIps,
    /// `mac`: the pod's MAC.
    pub mac: Option<vswitch_api::MacAddr>,
    /// `bandwidth`: limits for vswitchd (None when no direction is limited).
    pub bandwidth: Option<vswitch_api::api::Bandwidth>,
    /// `portMappings`: the chained portmap plugin's business; counted, not acted on.
    pub port_mappings: usize,
}

/// The burst used when the runtime gives none (0, or go-cni's MaxUint32 for "unset"): 100 ms
/// worth of the rate, and at least 64 KiB (so one TSO-sized burst always passes).
pub fn default_burst_bits(rate_bps: u64) -> u64 {
    (rate_bps / 10).max(8 * 64 * 1024)
}

fn lookup<'a>(object: &'a serde_json::Map<String, serde_json::Value>, key: &str) -> Option<&'a serde_json::Value> {
    object.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v).filter(|v| !v.is_null())
}

impl RuntimeConfig {
    pub fn from_value(value: &serde_json::Value) -> Result<RuntimeConfig, CniError> {
        let bad = |what: &str, detail: String| {
            CniError::with_details(Code::InvalidConfig, format!("runtimeConfig.{what}"), detail)
        };
        let invalid = |what: &str, detail: String| Err(bad(what, detail));
        let mut rc = RuntimeConfig::default();
        let object = match value {
            serde_json::Value::Null => return Ok(rc),
            serde_json::Value::Object(o) => o,
            other => return invalid("", format!("must be an object, not {other}")),
        };
        if let Some(ips) = lookup(object, "ips") {
            let Some(list) = ips.as_array() else { return invalid("ips", format!("must be a list, not {ips}")) };
            let mut texts = Vec::new();
            for entry in list {
                let Some(text) = entry.as_str() else { return invalid("ips", format!("{entry} is not a string")) };
                texts.push(text);
            }
            rc.ips = PodIps::parse_list(texts).map_err(|e| bad("ips", e))?;
        }
        if let Some(mac) = lookup(object, "mac") {
            let Some(text) = mac.as_str() else { return invalid("mac", format!("{mac} is not a string")) };
            rc.mac = Some(parse_mac(text).map_err(|e| bad("mac", e))?);
        }
        if let Some(bw) = lookup(object, "bandwidth") {
            let Some(bw) = bw.as_object() else { return invalid("bandwidth", format!("must be an object, not {bw}")) };
            let number = |key: &str| -> Result<u64, CniError> {
                match lookup(bw, key) {
                    None => Ok(0),
                    Some(v) => v.as_u64().ok_or_else(|| bad("bandwidth", format!("{key} is {v}, not a count"))),
                }
            };
            let limit = |rate: &str, burst: &str| -> Result<Option<vswitch_api::api::RateLimit>, CniError> {
                let rate_bps = number(rate)?;
                let burst = number(burst)?;
                if rate_bps == 0 {
                    return Ok(None);
                }
                let burst_bits =
                    if burst == 0 || burst == u64::from(u32::MAX) { default_burst_bits(rate_bps) } else { burst };
                Ok(Some(vswitch_api::api::RateLimit { rate_bps, burst_bits }))
            };
            let ingress = limit("ingressRate", "ingressBurst")?;
            let egress = limit("egressRate", "egressBurst")?;
            if ingress.is_some() || egress.is_some() {
                rc.bandwidth = Some(vswitch_api::api::Bandwidth { ingress, egress });
            }
        }
        if let Some(pm) = lookup(object, "portMappings") {
            let Some(list) = pm.as_array() else { return invalid("portMappings", format!("must be a list, not {pm}")) };
            rc.port_mappings = list.len();
        }
        // io.kubernetes.cri.pod-annotations and anything else a runtime adds: not ours.
        Ok(rc)
    }
}

/// The ADD result, in the shape of the configuration's `cniVersion`. When vpc-cni is not first
/// in a chain, the `prevResult` it was given is kept and our interface, addresses and default
/// routes (one per family, each via its gateway) are appended to it.
pub fn add_result(conf: &NetConf, ifname: &str, mac: &str, sandbox: &str, ips: PodIps) -> serde_json::Value {
    let old = is_pre_1_0(&conf.cni_version);
    let mut result = match &conf.prev_result {
        Some(serde_json::Value::Object(prev)) => serde_json::Value::Object(prev.clone()),
        _ => serde_json::json!({}),
    };
    result["cniVersion"] = serde_json::json!(conf.cni_version);
    let mut interface = serde_json::json!({"name": ifname, "mac": mac, "sandbox": sandbox});
    if !old {
        interface["mtu"] = serde_json::json!(conf.mtu);
    }
    let array = |result: &mut serde_json::Value, key: &str| -> usize {
        if !result.get(key).is_some_and(|v| v.is_array()) {
            result[key] = serde_json::json!([]);
        }
        result[key].as_array().map_or(0, |a| a.len())
    };
    let index = array(&mut result, "interfaces");
    result["interfaces"].as_array_mut().expect("array").push(interface);
    array(&mut result, "ips");
    array(&mut result, "routes");
    for ip in ips.iter() {
        let (prefix, gateway, version, default) = match ip {
            IpAddr::V4(_) => (32, IpAddr::V4(conf.gateway), "4", "0.0.0.0/0"),
            IpAddr::V6(_) => (128, IpAddr::V6(conf.gateway6()), "6", "::/0"),
        };
        let mut ip_entry =
            serde_json::json!({"address": format!("{ip}/{prefix}"), "gateway": gateway, "interface": index});
        if old {
            ip_entry["version"] = serde_json::json!(version);
        }
        result["ips"].as_array_mut().expect("array").push(ip_entry);
        let routes = result["routes"].as_array_mut().expect("array");
        if !routes.iter().any(|r| r["dst"] == default) {
            routes.push(serde_json::json!({"dst": default, "gw": gateway}));
        }
    }
    if let Some(dns) = &conf.dns {
        if result.get("dns").is_none_or(|d| d.is_null() || d.as_object().is_some_and(|o| o.is_empty())) {
            result["dns"] = dns.clone();
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<Environment, CniError> {
        let map: BTreeMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Environment::from_env(|k| map.get(k).cloned())
    }

    #[test]
    fn each_command_needs_its_variables() {
        let full = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_PATH", "/opt/cni/bin"),
        ];
        assert!(env(&full).is_ok());
        for skip in 1..full.len() {
            let partial: Vec<_> = full.iter().enumerate().filter(|(i, _)| *i != skip).map(|(_, p)| *p).collect();
            assert_eq!(env(&partial).unwrap_err().code, Code::InvalidEnvironment, "without {}", full[skip].0);
        }
        // DEL works without the namespace.
        assert!(env(&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "abc"), ("CNI_IFNAME", "eth0"), ("CNI_PATH", "/x")])
            .is_ok());
        assert!(env(&[("CNI_COMMAND", "VERSION")]).is_ok());
        assert_eq!(env(&[("CNI_COMMAND", "FROB")]).unwrap_err().code, Code::InvalidEnvironment);
        assert_eq!(env(&[]).unwrap_err().code, Code::InvalidEnvironment);
        let mut bad_if = full;
        bad_if[3] = ("CNI_IFNAME", "a-name-far-too-long");
        assert_eq!(env(&bad_if).unwrap_err().code, Code::InvalidEnvironment);
    }

    #[test]
    fn cni_args_know_kubernetes_keys_and_refuse_others_unless_told() {
        let a = CniArgs::parse("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;FOO=bar").unwrap();
        assert_eq!((a.pod_namespace.as_deref(), a.pod_name.as_deref()), (Some("default"), Some("web-0")));
        assert_eq!(CniArgs::parse("FOO=bar").unwrap_err().code, Code::InvalidEnvironment);
        assert_eq!(CniArgs::parse("FOO").unwrap_err().code, Code::InvalidEnvironment);
        assert!(CniArgs::parse("").is_ok());
    }

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
        for version in SUPPORTED_VERSIONS {
            assert!(NetConf::parse(good.replace("1.1.0", version).as_bytes()).is_ok(), "{version}");
        }
    }

    fn conf_with(extra: &str) -> Result<NetConf, CniError> {
        let text = format!(
            r#"{{"cniVersion":"1.1.0","name":"vpc","type":"vpc-cni","ipam":{{"ranges":[{{"rangeStart":"10.10.40.10","rangeEnd":"10.10.40.20"}}]}}{extra}}}"#
        );
        NetConf::parse(text.as_bytes())
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
    fn container_ids_and_interface_names_follow_the_spec() {
        let with = |id: &str, ifname: &str| {
            env(&[
                ("CNI_COMMAND", "ADD"),
                ("CNI_CONTAINERID", id),
                ("CNI_NETNS", "/run/netns/x"),
                ("CNI_IFNAME", ifname),
                ("CNI_PATH", "/opt/cni/bin"),
            ])
        };
        for id in ["abc", "0abc", "a_b.c-d", "A"] {
            assert!(with(id, "eth0").is_ok(), "{id}");
        }
        for id in ["", "_abc", ".abc", "-abc", "a/b", "a b", "a:b", "é"] {
            assert_eq!(with(id, "eth0").unwrap_err().code, Code::InvalidEnvironment, "{id:?}");
        }
        for ifname in ["eth0", "net1", "a", "fifteen-bytes-x"] {
            assert!(with("abc", ifname).is_ok(), "{ifname}");
        }
        for ifname in ["", ".", "..", "a/b", "a:b", "a b", "a\tb", "sixteen-bytes-xx"] {
            assert_eq!(with("abc", ifname).unwrap_err().code, Code::InvalidEnvironment, "{ifname:?}");
        }
    }

    #[test]
    fn cni_args_carry_a_static_ip_and_mac() {
        let a = CniArgs::parse("IP=10.10.40.77;MAC=02:00:00:00:00:77").unwrap();
        assert_eq!(a.ips, PodIps { v4: Some(Ipv4Addr::new(10, 10, 40, 77)), v6: None });
        assert_eq!(a.mac.unwrap().to_string(), "02:00:00:00:00:77");
        assert_eq!(CniArgs::parse("IP=10.10.40.77/24").unwrap().ips.v4, Some(Ipv4Addr::new(10, 10, 40, 77)));
        let dual = CniArgs::parse("IP=10.10.40.77/24,fd00::77/64").unwrap().ips;
        assert_eq!(dual.to_string(), "10.10.40.77,fd00::77");
        assert_eq!(CniArgs::parse("IP=fd00::77").unwrap().ips.families(), Some(IpFamilies::Ipv6));
        for bad in [
            "IP=10.10.40.300",
            "IP=10.0.0.1,10.0.0.2",
            "IP=fd00::1,fd00::2",
            "IP=fd00::1/129",
            "IP=10.0.0.1/33",
            "MAC=01:00:5e:00:00:01",
            "MAC=00:00:00:00:00:00",
            "MAC=zz",
        ] {
            assert_eq!(CniArgs::parse(bad).unwrap_err().code, Code::InvalidEnvironment, "{bad}");
        }
    }

    #[test]
    fn runtime_config_is_read_in_go_and_camel_case_spelling() {
        let go = serde_json::json!({
            "portMappings": [{"HostPort": 18080, "ContainerPort": 8080, "Protocol": "tcp", "HostIP": ""}],
            "bandwidth": {"IngressRate": 10_000_000u64, "IngressBurst": 4_294_967_295u64, "EgressRate": 0, "EgressBurst": 0},
            "io.kubernetes.cri.pod-annotations": null,
            "IPs": ["10.10.40.77/24"],
            "Mac": "02:00:00:00:00:77",
        });
        let camel = serde_json::json!({
            "portMappings": [{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}],
            "bandwidth": {"ingressRate": 10_000_000u64, "ingressBurst": 0, "egressRate": 0, "egressBurst": 0},
            "io.kubernetes.cri.pod-annotations": {"a": "b"},
            "ips": ["10.10.40.77"],
            "mac": "02:00:00:00:00:77",
        });
        let expected = RuntimeConfig {
            ips: PodIps { v4: Some(Ipv4Addr::new(10, 10, 40, 77)), v6: None },
            mac: Some("02:00:00:00:00:77".parse().unwrap()),
            bandwidth: Some(vswitch_api::api::Bandwidth {
                ingress: Some(vswitch_api::api::RateLimit { rate_bps: 10_000_000, burst_bits: 1_000_000 }),
                egress: None,
            }),
            port_mappings: 1,
        };
        assert_eq!(RuntimeConfig::from_value(&go).unwrap(), expected);
        assert_eq!(RuntimeConfig::from_value(&camel).unwrap(), expected);
        // An explicit burst is kept; a small rate gets the 64 KiB floor.
        let explicit =
            RuntimeConfig::from_value(&serde_json::json!({"bandwidth": {"egressRate": 1000, "egressBurst": 5000}}))
                .unwrap();
        assert_eq!(explicit.bandwidth.unwrap().egress.unwrap().burst_bits, 5000);
        assert_eq!(default_burst_bits(1000), 8 * 64 * 1024);
        assert_eq!(RuntimeConfig::from_value(&serde_json::json!({"bandwidth": {}})).unwrap().bandwidth, None);
        for bad in [
            serde_json::json!({"ips": ["fd00::1", "fd00::2/64"]}),
            serde_json::json!({"ips": ["10.0.0.1", "10.0.0.2"]}),
            serde_json::json!({"ips": ["10.0.0.1", "fe80::1/200"]}),
            serde_json::json!({"ips": "10.0.0.1"}),
            serde_json::json!({"mac": "ff:ff:ff:ff:ff:ff"}),
            serde_json::json!({"bandwidth": {"ingressRate": -1}}),
            serde_json::json!([]),
        ] {
            assert_eq!(RuntimeConfig::from_value(&bad).unwrap_err().code, Code::InvalidConfig, "{bad}");
        }
        // Checked at parse time too.
        assert_eq!(conf_with(r#","runtimeConfig":{"mac":"01:00:00:00:00:00"}"#).unwrap_err().code, Code::InvalidConfig);
        assert!(conf_with(r#","runtimeConfig":{"ips":["10.10.40.15"]}"#).unwrap().runtime().unwrap().ips.v4.is_some());
        let dual = RuntimeConfig::from_value(&serde_json::json!({"ips": ["fd00::15/64", "10.10.40.15/24"]})).unwrap();
        assert_eq!(dual.ips.to_string(), "10.10.40.15,fd00::15");
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

    fn v4(ip: &str) -> PodIps {
        PodIps { v4: Some(ip.parse().unwrap()), v6: None }
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
    fn dual_stack_and_ipv6_results_list_each_address_with_its_gateway_and_route() {
        let dual = PodIps { v4: Some("10.10.40.10".parse().unwrap()), v6: Some("fd00:10::a".parse().unwrap()) };
        let v6_only = PodIps { v4: None, v6: dual.v6 };
        let conf = conf_with("").unwrap();
        let r = add_result(&conf, "eth0", "02:00:0a:0a:28:0a", "/run/netns/x", dual);
        assert_eq!(
            r["ips"],
            serde_json::json!([
                {"address": "10.10.40.10/32", "gateway": "169.254.1.1", "interface": 0},
                {"address": "fd00:10::a/128", "gateway": "fe80::a9ff:fefe:101", "interface": 0},
            ])
        );
        assert_eq!(
            r["routes"],
            serde_json::json!([{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}, {"dst": "::/0", "gw": "fe80::a9ff:fefe:101"}])
        );
        let r = add_result(&conf, "eth0", "02:00:00:00:00:0a", "/run/netns/x", v6_only);
        assert_eq!(r["ips"].as_array().unwrap().len(), 1);
        assert_eq!(r["ips"][0]["address"], "fd00:10::a/128");
        assert_eq!(r["routes"], serde_json::json!([{"dst": "::/0", "gw": "fe80::a9ff:fefe:101"}]));
        for version in ["0.3.0", "0.3.1", "0.4.0"] {
            let conf = NetConf { cni_version: version.into(), ..conf.clone() };
            let r = add_result(&conf, "eth0", "02:00:0a:0a:28:0a", "/run/netns/x", dual);
            assert_eq!((r["ips"][0]["version"].as_str(), r["ips"][1]["version"].as_str()), (Some("4"), Some("6")));
        }
    }

    #[test]
    fn results_follow_the_requested_version() {
        let conf = NetConf::parse(br#"{"cniVersion":"0.4.0","name":"vpc","type":"vpc-cni","dns":{"nameservers":["10.96.0.10"]},"ipam":{"ranges":[{"rangeStart":"10.10.40.10","rangeEnd":"10.10.40.20"}]}}"#).unwrap();
        let r = add_result(&conf, "eth0", "02:00:0a:0a:28:0a", "/run/netns/x", v4("10.10.40.10"));
        assert_eq!(r["ips"][0]["version"], "4");
        assert_eq!(r["dns"]["nameservers"][0], "10.96.0.10");
        assert!(r["interfaces"][0].get("mtu").is_none());
        for version in ["0.3.0", "0.3.1"] {
            let conf = conf_with("").map(|c| NetConf { cni_version: version.into(), ..c }).unwrap();
            let r = add_result(&conf, "eth0", "02:00:0a:0a:28:0a", "/run/netns/x", v4("10.10.40.10"));
            assert_eq!((r["cniVersion"].as_str(), r["ips"][0]["version"].as_str()), (Some(version), Some("4")));
            assert!(r["interfaces"][0].get("mtu").is_none());
        }
        let conf = conf_with("").unwrap();
        let r = add_result(&conf, "eth0", "02:00:0a:0a:28:0a", "/run/netns/x", v4("10.10.40.10"));
        assert!(r["ips"][0].get("version").is_none());
        assert_eq!(r["interfaces"][0]["mtu"], 1500);
    }

    #[test]
    fn a_prev_result_is_kept_and_extended() {
        let conf = conf_with(
            r#","dns":{"nameservers":["10.96.0.10"]},"prevResult":{"cniVersion":"1.1.0",
               "interfaces":[{"name":"lo","sandbox":"/run/netns/x"}],"ips":[{"address":"127.0.0.1/8","interface":0}],
               "dns":{"nameservers":["1.1.1.1"]}}"#,
        )
        .unwrap();
        let r = add_result(&conf, "eth0", "02:00:0a:0a:28:0a", "/run/netns/x", v4("10.10.40.10"));
        assert_eq!(r["interfaces"].as_array().unwrap().len(), 2);
        assert_eq!(r["interfaces"][1]["name"], "eth0");
        assert_eq!(
            r["ips"][1],
            serde_json::json!({"address": "10.10.40.10/32", "gateway": "169.254.1.1", "interface": 1})
        );
        assert_eq!(r["ips"][0]["address"], "127.0.0.1/8");
        assert_eq!(r["routes"][0]["dst"], "0.0.0.0/0");
        assert_eq!(r["dns"]["nameservers"][0], "1.1.1.1", "an earlier plugin's DNS stays");
    }
}
