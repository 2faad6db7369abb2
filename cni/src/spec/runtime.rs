//! `runtimeConfig`: the runtime's arguments for the capabilities vpc-cni honours (`ips`,
//! `mac`, `bandwidth`, `io.kubernetes.cri.pod-annotations`; `portMappings` is counted for the
//! chained portmap plugin).

use vswitch_api::sticky::{StickyRequest, POD_ANNOTATIONS_CAPABILITY};

use super::{parse_mac, CniError, Code, PodIps};

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
    /// `io.kubernetes.cri.pod-annotations`: a sticky address asked for by UK8S's annotations.
    pub sticky: Option<StickyRequest>,
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
        // Annotation names are matched exactly, as Kubernetes keys are.
        if let Some(annotations) = lookup(object, POD_ANNOTATIONS_CAPABILITY) {
            let Some(map) = annotations.as_object() else {
                return invalid(POD_ANNOTATIONS_CAPABILITY, format!("must be an object, not {annotations}"));
            };
            let get = |key: &str| map.get(key).and_then(|v| v.as_str()).map(str::to_string);
            rc.sticky =
                StickyRequest::from_annotations(get).map_err(|e| bad(POD_ANNOTATIONS_CAPABILITY, e.to_string()))?;
        }
        // Anything else a runtime adds: not ours.
        Ok(rc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::conf::conf_with;
    use std::net::Ipv4Addr;

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
            sticky: None,
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
    fn pod_annotations_ask_for_a_sticky_address() {
        use vswitch_api::sticky::ClaimPolicy;
        let read = |annotations: serde_json::Value| {
            RuntimeConfig::from_value(&serde_json::json!({ "io.kubernetes.cri.pod-annotations": annotations }))
        };
        let sticky = read(serde_json::json!({
            "network.beta.kubernetes.io/ucloud-statefulset-static-ip": "true",
            "network.beta.kubernetes.io/ucloud-statefulset-ip-claim-policy": "300s",
            "kubernetes.io/config.source": "api",
        }));
        let hold = ClaimPolicy::After(std::time::Duration::from_secs(300));
        assert_eq!(sticky.unwrap().sticky, Some(StickyRequest { hold }));
        assert_eq!(read(serde_json::json!({"kubernetes.io/config.source": "api"})).unwrap().sticky, None);
        let bad = read(serde_json::json!({
            "network.beta.kubernetes.io/ucloud-statefulset-static-ip": "true",
            "network.beta.kubernetes.io/ucloud-statefulset-ip-claim-policy": "later",
        }))
        .unwrap_err();
        assert_eq!(bad.code, Code::InvalidConfig);
        assert!(bad.to_string().contains("claim policy 'later'"), "{bad}");
        assert_eq!(read(serde_json::json!(["x"])).unwrap_err().code, Code::InvalidConfig);
    }
}
