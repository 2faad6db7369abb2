//! The CNI specification's side of the plugin: the environment, the network configuration, the
//! result and the error, for versions 0.4.0, 1.0.0 and 1.1.0.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub const SUPPORTED_VERSIONS: &[&str] = &["0.4.0", "1.0.0", "1.1.0"];

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
    /// STATUS: the plugin cannot serve ADDs now.
    NotAvailable = 50,
    /// Ours (100+ is plugin-specific): the address pool is exhausted.
    PoolExhausted = 100,
    /// Ours: setting up the pod's interface failed.
    InterfaceSetup = 101,
    /// Ours: vswitchd refused the port.
    SwitchRefused = 102,
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
            if ifname.len() > 15
                || ifname.contains('/')
                || ifname.contains(char::is_whitespace)
                || ifname == "."
                || ifname == ".."
            {
                return Err(CniError::with_details(
                    Code::InvalidEnvironment,
                    "CNI_IFNAME is not a valid interface name",
                    ifname,
                ));
            }
        }
        if let Some(id) = &env.container_id {
            if !id.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
                return Err(CniError::with_details(
                    Code::InvalidEnvironment,
                    "CNI_CONTAINERID has characters outside [A-Za-z0-9_.-]",
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
    /// Accepted as the spec requires; this plugin has no runtime capabilities.
    #[serde(default)]
    #[allow(dead_code)]
    pub runtime_config: Option<serde_json::Value>,
    #[serde(default)]
    pub prev_result: Option<serde_json::Value>,
    /// GC: the attachments that must stay (both spellings of the 1.1 key are accepted).
    #[serde(default, rename = "cni.dev/valid-attachments", alias = "cni.dev/attachments")]
    pub valid_attachments: Option<Vec<Attachment>>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IpamConf {
    /// Address ranges of the VPC subnet given to this node.
    pub ranges: Vec<RangeConf>,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Seconds a released address stays out of use (conntrack's SYN_SENT timeout is 120 s).
    #[serde(default = "default_reuse_delay")]
    pub reuse_delay_seconds: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RangeConf {
    pub range_start: Ipv4Addr,
    pub range_end: Ipv4Addr,
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
        if self.name.is_empty() || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
            return invalid(format!("network name '{}' must be non-empty [A-Za-z0-9_.-]", self.name));
        }
        if !(576..=9000).contains(&self.mtu) {
            return invalid(format!("mtu {} is outside 576..=9000", self.mtu));
        }
        if self.ipam.ranges.is_empty() {
            return invalid("ipam.ranges is empty".into());
        }
        for r in &self.ipam.ranges {
            if u32::from(r.range_start) > u32::from(r.range_end) {
                return invalid(format!("range {}-{} is backwards", r.range_start, r.range_end));
            }
            if (u32::from(r.range_start)..=u32::from(r.range_end)).contains(&u32::from(self.gateway)) {
                return invalid(format!("the gateway {} lies inside a pod range", self.gateway));
            }
        }
        if let Some(mac) = &self.gateway_mac {
            mac.parse::<vswitch_api::MacAddr>()
                .map_err(|e| CniError::with_details(Code::InvalidConfig, "gatewayMac", e))?;
        }
        Ok(())
    }

    pub fn gateway_mac(&self) -> vswitch_api::MacAddr {
        self.gateway_mac
            .as_deref()
            .and_then(|m| m.parse().ok())
            .unwrap_or_else(|| vswitch_api::MacAddr::local_from(self.gateway.octets()))
    }

    /// Where this network's IPAM state lives.
    pub fn ipam_dir(&self) -> PathBuf {
        self.ipam.data_dir.join(&self.name)
    }
}

/// The ADD result, in the shape of the configuration's `cniVersion`.
pub fn add_result(conf: &NetConf, ifname: &str, mac: &str, sandbox: &str, ip: Ipv4Addr) -> serde_json::Value {
    let mut ip_entry =
        serde_json::json!({"address": format!("{ip}/32"), "gateway": conf.gateway.to_string(), "interface": 0});
    if conf.cni_version == "0.4.0" {
        ip_entry["version"] = serde_json::json!("4");
    }
    let mut result = serde_json::json!({
        "cniVersion": conf.cni_version,
        "interfaces": [{"name": ifname, "mac": mac, "sandbox": sandbox, "mtu": conf.mtu}],
        "ips": [ip_entry],
        "routes": [{"dst": "0.0.0.0/0", "gw": conf.gateway.to_string()}],
    });
    if conf.cni_version == "0.4.0" {
        result["interfaces"][0].as_object_mut().expect("object").remove("mtu");
    }
    if let Some(dns) = &conf.dns {
        result["dns"] = dns.clone();
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
            NetConf::parse(good.replace("1.1.0", "0.3.1").as_bytes()).unwrap_err().code,
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
        assert_eq!(NetConf::parse(gc.as_bytes()).unwrap().valid_attachments.unwrap().len(), 1);
    }

    #[test]
    fn results_follow_the_requested_version() {
        let conf = NetConf::parse(br#"{"cniVersion":"0.4.0","name":"vpc","type":"vpc-cni","dns":{"nameservers":["10.96.0.10"]},"ipam":{"ranges":[{"rangeStart":"10.10.40.10","rangeEnd":"10.10.40.20"}]}}"#).unwrap();
        let r = add_result(&conf, "eth0", "02:00:0a:0a:28:0a", "/run/netns/x", Ipv4Addr::new(10, 10, 40, 10));
        assert_eq!(r["ips"][0]["version"], "4");
        assert_eq!(r["dns"]["nameservers"][0], "10.96.0.10");
        assert!(r["interfaces"][0].get("mtu").is_none());
    }
}
