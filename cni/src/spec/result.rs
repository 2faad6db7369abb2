//! Results: ADD's (and, as `prevResult`, CHECK's input), VERSION's, as typed structs in the
//! spec's JSON shape. What another plugin of the chain put in a `prevResult` and this plugin has
//! no field for is kept as it came (`other`), so extending a result never loses anything.
//!
//! main prints a result through `serde_json::Value`, whose keys are sorted: the bytes a runtime
//! reads do not depend on the order of fields here.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Deserializer, Serialize};
use vswitch_api::MacAddr;

use super::{CidrAddress, CniVersion, NetConf, PodIps};

/// Keys of a newer spec or of another plugin, kept as they came.
pub type OtherKeys = BTreeMap<String, serde_json::Value>;

/// A result (spec: "Success"). Lists a `prevResult` had as `null` read as empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CniResult {
    /// Absent in a `prevResult` is taken as the newest: ours replaces it anyway.
    #[serde(default = "newest")]
    pub cni_version: CniVersion,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, deserialize_with = "null_as_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
    #[serde(flatten)]
    pub other: OtherKeys,
}

fn newest() -> CniVersion {
    CniVersion::LATEST
}

fn null_as_empty<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Vec<T>, D::Error> {
    Ok(Option::<Vec<T>>::deserialize(d)?.unwrap_or_default())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// 1.0.0 on; u32, since another plugin's loopback may say 65536.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    #[serde(flatten)]
    pub other: OtherKeys,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    pub address: CidrAddress,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    /// 0.3.x and 0.4.0 only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<IpVersion>,
    #[serde(flatten)]
    pub other: OtherKeys,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IpVersion {
    #[serde(rename = "4")]
    V4,
    #[serde(rename = "6")]
    V6,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: CidrAddress,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    #[serde(flatten)]
    pub other: OtherKeys,
}

/// DNS settings, in a network configuration and in a result alike.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nameservers: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub search: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Vec<String>>,
    #[serde(flatten)]
    pub other: OtherKeys,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        *self == Dns::default()
    }
}

/// VERSION's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VersionResult {
    pub cni_version: CniVersion,
    pub supported_versions: [CniVersion; 5],
}

impl VersionResult {
    pub fn new(cni_version: CniVersion) -> VersionResult {
        VersionResult { cni_version, supported_versions: CniVersion::SUPPORTED }
    }
}

/// The ADD result, in the shape of the configuration's `cniVersion`. When vpc-cni is not first
/// in a chain, the `prevResult` it was given (`prev`) is kept and our interface, addresses and
/// default routes (one per family, each via its gateway) are appended to it; its DNS stays
/// unless it has none.
pub fn add_result(
    conf: &NetConf,
    prev: Option<CniResult>,
    ifname: &str,
    mac: MacAddr,
    sandbox: &Path,
    ips: PodIps,
) -> CniResult {
    let old = conf.cni_version.is_pre_1_0();
    let mut result = prev.unwrap_or_else(|| CniResult {
        cni_version: conf.cni_version,
        interfaces: Vec::new(),
        ips: Vec::new(),
        routes: Vec::new(),
        dns: None,
        other: OtherKeys::new(),
    });
    result.cni_version = conf.cni_version;
    let index = result.interfaces.len();
    result.interfaces.push(Interface {
        name: ifname.into(),
        mac: Some(mac.to_string()),
        mtu: (!old).then_some(conf.mtu.into()),
        sandbox: Some(sandbox.display().to_string()),
        other: OtherKeys::new(),
    });
    for ip in ips.iter() {
        let (gateway, version, default) = match ip {
            IpAddr::V4(_) => {
                (IpAddr::V4(conf.gateway), IpVersion::V4, CidrAddress { ip: [0u8; 4].into(), prefix_len: Some(0) })
            }
            IpAddr::V6(_) => {
                (IpAddr::V6(conf.gateway6()), IpVersion::V6, CidrAddress { ip: [0u8; 16].into(), prefix_len: Some(0) })
            }
        };
        result.ips.push(IpConfig {
            address: CidrAddress::host(ip),
            gateway: Some(gateway),
            interface: Some(index),
            version: old.then_some(version),
            other: OtherKeys::new(),
        });
        if !result.routes.iter().any(|r| r.dst == default) {
            result.routes.push(Route { dst: default, gw: Some(gateway), other: OtherKeys::new() });
        }
    }
    if let Some(dns) = &conf.dns {
        if result.dns.as_ref().is_none_or(Dns::is_empty) {
            result.dns = Some(dns.clone());
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::conf::conf_with;

    /// The result as main prints it.
    fn add_result_json(conf: &NetConf, ifname: &str, mac: &str, sandbox: &str, ips: PodIps) -> serde_json::Value {
        let prev = conf.previous_result().unwrap();
        let result = add_result(conf, prev, ifname, mac.parse().unwrap(), Path::new(sandbox), ips);
        serde_json::to_value(result).unwrap()
    }

    fn v4(ip: &str) -> PodIps {
        PodIps { v4: Some(ip.parse().unwrap()), v6: None }
    }

    #[test]
    fn dual_stack_and_ipv6_results_list_each_address_with_its_gateway_and_route() {
        let dual = PodIps { v4: Some("10.10.40.10".parse().unwrap()), v6: Some("fd00:10::a".parse().unwrap()) };
        let v6_only = PodIps { v4: None, v6: dual.v6 };
        let conf = conf_with("").unwrap();
        let r = add_result_json(&conf, "eth0", "02:00:0a:0a:28:0a", "/run/netns/x", dual);
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
        let r = add_result_json(&conf, "eth0", "02:00:00:00:00:0a", "/run/netns/x", v6_only);
        assert_eq!(r["ips"].as_array().unwrap().len(), 1);
        assert_eq!(r["ips"][0]["address"], "fd00:10::a/128");
        assert_eq!(r["routes"], serde_json::json!([{"dst": "::/0", "gw": "fe80::a9ff:fefe:101"}]));
        for version in ["0.3.0", "0.3.1", "0.4.0"] {
            let conf = NetConf { cni_version: version.parse().unwrap(), ..conf.clone() };
            let r = add_result_json(&conf, "eth0", "02:00:0a:0a:28:0a", "/run/netns/x", dual);
            assert_eq!((r["ips"][0]["version"].as_str(), r["ips"][1]["version"].as_str()), (Some("4"), Some("6")));
        }
    }

    #[test]
    fn results_follow_the_requested_version() {
        let conf = NetConf::parse(br#"{"cniVersion":"0.4.0","name":"vpc","type":"vpc-cni","dns":{"nameservers":["10.96.0.10"]},"ipam":{"ranges":[{"rangeStart":"10.10.40.10","rangeEnd":"10.10.40.20"}]}}"#).unwrap();
        let r = add_result_json(&conf, "eth0", "02:00:0a:0a:28:0a", "/run/netns/x", v4("10.10.40.10"));
        assert_eq!(r["ips"][0]["version"], "4");
        assert_eq!(r["dns"]["nameservers"][0], "10.96.0.10");
        assert!(r["interfaces"][0].get("mtu").is_none());
        for version in ["0.3.0", "0.3.1"] {
            let conf = conf_with("").map(|c| NetConf { cni_version: version.parse().unwrap(), ..c }).unwrap();
            let r = add_result_json(&conf, "eth0", "02:00:0a:0a:28:0a", "/run/netns/x", v4("10.10.40.10"));
            assert_eq!((r["cniVersion"].as_str(), r["ips"][0]["version"].as_str()), (Some(version), Some("4")));
            assert!(r["interfaces"][0].get("mtu").is_none());
        }
        let conf = conf_with("").unwrap();
        let r = add_result_json(&conf, "eth0", "02:00:0a:0a:28:0a", "/run/netns/x", v4("10.10.40.10"));
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
        let r = add_result_json(&conf, "eth0", "02:00:0a:0a:28:0a", "/run/netns/x", v4("10.10.40.10"));
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

    #[test]
    fn the_printed_bytes_are_the_ones_runtimes_have_always_read() {
        let dual = PodIps { v4: Some("10.10.40.10".parse().unwrap()), v6: Some("fd00:10::a".parse().unwrap()) };
        let conf = conf_with(r#","dns":{"nameservers":["10.96.0.10"],"search":["svc.cluster.local"]}"#).unwrap();
        assert_eq!(
            add_result_json(&conf, "eth0", "02:00:0a:0a:28:0a", "/run/netns/x", dual).to_string(),
            concat!(
                r#"{"cniVersion":"1.1.0","dns":{"nameservers":["10.96.0.10"],"search":["svc.cluster.local"]},"#,
                r#""interfaces":[{"mac":"02:00:0a:0a:28:0a","mtu":1500,"name":"eth0","sandbox":"/run/netns/x"}],"#,
                r#""ips":[{"address":"10.10.40.10/32","gateway":"169.254.1.1","interface":0},"#,
                r#"{"address":"fd00:10::a/128","gateway":"fe80::a9ff:fefe:101","interface":0}],"#,
                r#""routes":[{"dst":"0.0.0.0/0","gw":"169.254.1.1"},{"dst":"::/0","gw":"fe80::a9ff:fefe:101"}]}"#
            )
        );
        // Keys of a later spec in a prevResult survive, at every level; a route to the default
        // destination already there is not added twice.
        let conf = conf_with(
            r#","prevResult":{"cniVersion":"1.1.0","interfaces":[{"name":"lo","socketPath":"/s"}],
               "ips":[{"address":"127.0.0.1/8","interface":0,"x":1}],"routes":[{"dst":"0.0.0.0/0","table":7}],
               "dns":{},"future":true}"#,
        )
        .unwrap();
        let ipv4 = PodIps { v4: dual.v4, v6: None };
        assert_eq!(
            add_result_json(&conf, "eth0", "02:00:0a:0a:28:0a", "/run/netns/x", ipv4).to_string(),
            concat!(
                r#"{"cniVersion":"1.1.0","dns":{},"future":true,"#,
                r#""interfaces":[{"name":"lo","socketPath":"/s"},"#,
                r#"{"mac":"02:00:0a:0a:28:0a","mtu":1500,"name":"eth0","sandbox":"/run/netns/x"}],"#,
                r#""ips":[{"address":"127.0.0.1/8","interface":0,"x":1},"#,
                r#"{"address":"10.10.40.10/32","gateway":"169.254.1.1","interface":1}],"#,
                r#""routes":[{"dst":"0.0.0.0/0","table":7}]}"#
            )
        );
    }

    #[test]
    fn a_malformed_prev_result_is_invalid_config() {
        let conf = conf_with(r#","prevResult":{"ips":[{"address":"not an address"}]}"#).unwrap();
        assert_eq!(conf.previous_result().unwrap_err().code, crate::spec::Code::InvalidConfig);
        let conf = conf_with(r#","prevResult":{"interfaces":null,"ips":null}"#).unwrap();
        assert!(conf.previous_result().unwrap().unwrap().interfaces.is_empty());
    }

    #[test]
    fn version_lists_the_supported_versions() {
        assert_eq!(
            serde_json::to_value(VersionResult::new(CniVersion::V1_0_0)).unwrap(),
            serde_json::json!({"cniVersion": "1.0.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
        );
    }
}
