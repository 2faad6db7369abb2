//! The CNI_* environment and CNI_ARGS, validated per command (the reference plugins' `skel`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::{parse_mac, CniError, Code, PodIps};

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
            if !vswitch_host::tap::valid_name(ifname) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use vswitch_api::api::IpFamilies;

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
}
