//! The shipped deployment holds together: the DaemonSet's YAML documents parse, the ConfigMap's
//! vswitchd.toml is a valid vswitchd configuration that agrees with the shipped conflist
//! (gateway, gateway MAC, MTU, socket), Prometheus and the probes point at the metrics port, and
//! the Containerfile puts the binaries where the DaemonSet runs them.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use serde::Deserialize;
use serde_yaml::Value;
use vswitch::control::Config;

const DAEMONSET: &str = include_str!("../deploy/vswitchd-daemonset.yaml");
const CONTAINERFILE: &str = include_str!("../deploy/Containerfile");
const CONFLIST: &str = include_str!("../vpc-cni.conflist");
const WORKSPACE: &str = include_str!("../../Cargo.toml");

fn documents() -> Vec<Value> {
    serde_yaml::Deserializer::from_str(DAEMONSET).map(|d| Value::deserialize(d).expect("valid YAML")).collect()
}

fn of_kind(kind: &str) -> Value {
    documents().into_iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind} document"))
}

fn config() -> Config {
    let text =
        of_kind("ConfigMap")["data"]["vswitchd.toml"].as_str().expect("vswitchd.toml in the ConfigMap").to_string();
    let config: Config = toml::from_str(&text).expect("vswitchd.toml parses as vswitchd's Config");
    config.validate().expect("vswitchd.toml is valid");
    config
}

fn str_of(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

#[test]
fn the_configmap_is_a_valid_vswitchd_config_that_agrees_with_the_shipped_conflist() {
    let config = config();
    let conflist: serde_json::Value = serde_json::from_str(CONFLIST).unwrap();
    let plugins = conflist["plugins"].as_array().unwrap();
    let entry = plugins.iter().find(|p| p["type"] == "vpc-cni").expect("a vpc-cni entry");
    // vpc-cni's own parser, with its defaults, reads the entry as a runtime would pass it.
    let mut conf = entry.clone();
    conf["cniVersion"] = conflist["cniVersion"].clone();
    conf["name"] = conflist["name"].clone();
    let net = cni::spec::NetConf::parse(conf.to_string().as_bytes()).expect("the shipped entry parses");
    assert_eq!(net.gateway, config.gateway_ip, "gateway vs gateway_ip");
    assert_eq!(net.gateway_mac(), config.gateway_mac(), "gatewayMac vs gateway_mac");
    assert_eq!(net.mtu, config.pod_mtu, "mtu vs pod_mtu");
    assert_eq!(net.vswitch_socket, config.socket, "vswitchSocket vs socket");
    // The liveness probe runs vswitchctl without --socket: the config must use the default.
    assert_eq!(config.socket, PathBuf::from(vswitch_api::defaults::SOCKET));
    assert_eq!(config.gateway_ip, Ipv4Addr::new(169, 254, 1, 1));
}

#[test]
fn prometheus_the_probes_the_init_containers_and_the_update_strategy() {
    let config = config();
    let metrics: SocketAddr = config.metrics_addr.parse().expect("metrics_addr is an address");
    assert!(metrics.ip().is_unspecified(), "Prometheus scrapes from outside the node: {metrics}");
    assert_eq!(metrics.port(), 9477);

    let ds = of_kind("DaemonSet");
    let spec = &ds["spec"];
    assert_eq!(spec["updateStrategy"]["type"], "RollingUpdate");
    // Upgrades run the new pod next to the old one, which hands its ports over.
    assert_eq!(spec["updateStrategy"]["rollingUpdate"]["maxSurge"], 1);
    assert_eq!(spec["updateStrategy"]["rollingUpdate"]["maxUnavailable"], 0);
    let pod = &spec["template"];
    let annotations = &pod["metadata"]["annotations"];
    assert_eq!(annotations["prometheus.io/scrape"], "true");
    assert_eq!(annotations["prometheus.io/port"], metrics.port().to_string().as_str());
    assert_eq!(pod["spec"]["hostNetwork"], true);

    let containers = pod["spec"]["containers"].as_sequence().unwrap();
    let vswitchd = containers.iter().find(|c| c["name"] == "vswitchd").expect("the vswitchd container");
    // A declared port would be a hostPort (hostNetwork), which forbids the upgrade's surge pod.
    assert!(vswitchd.get("ports").is_none(), "no hostPort: {:?}", vswitchd.get("ports"));
    let ready = &vswitchd["readinessProbe"]["httpGet"];
    assert_eq!((str_of(&ready["path"]), ready["port"].as_u64()), ("/healthz", Some(9477)));
    let live: Vec<&str> =
        vswitchd["livenessProbe"]["exec"]["command"].as_sequence().unwrap().iter().map(str_of).collect();
    assert_eq!(live, ["/usr/bin/vswitchctl", "status"]);
    let command: Vec<&str> = vswitchd["command"].as_sequence().unwrap().iter().map(str_of).collect();
    assert_eq!(&command[..3], ["/usr/bin/vswitchd", "--config", "/etc/vswitchd/vswitchd.toml"]);
    assert!(command.contains(&"--upgrade") && command.contains(&"--idle-after-handover"), "{command:?}");

    let inits = pod["spec"]["initContainers"].as_sequence().unwrap();
    let script = |c: &Value| c["args"].as_sequence().map(|a| a.iter().map(str_of).collect::<Vec<_>>().join(" "));
    assert!(
        inits.iter().filter_map(script).any(|s| s.contains("/proc/sys/net/ipv4/ip_forward") && s.contains("exit 1")),
        "an init container sets ip_forward or refuses to start"
    );
    assert!(inits.iter().filter_map(script).any(|s| s.contains("/opt/cni/bin/vpc-cni")), "vpc-cni is installed");

    // Every volume mounted exists.
    let volumes: Vec<&str> = pod["spec"]["volumes"].as_sequence().unwrap().iter().map(|v| str_of(&v["name"])).collect();
    for c in containers.iter().chain(inits) {
        for m in c["volumeMounts"].as_sequence().into_iter().flatten() {
            assert!(volumes.contains(&str_of(&m["name"])), "{} mounts an undefined volume {:?}", str_of(&c["name"]), m);
        }
    }
}

/// Addresses are allocated cluster-wide: the conflist (the same on every node) carries no range,
/// vswitchd's [ipam] names the etcd cluster, its client certificate comes from a Secret mounted
/// where the config says, and each node registers under its Kubernetes node name.
#[test]
fn every_node_allocates_from_the_cluster_pool_on_etcd_with_a_client_certificate() {
    let config = config();
    let conflist: serde_json::Value = serde_json::from_str(CONFLIST).unwrap();
    let entry = conflist["plugins"].as_array().unwrap().iter().find(|p| p["type"] == "vpc-cni").unwrap();
    assert_eq!(entry["ipam"], serde_json::json!({"type": "vswitchd"}), "no node carries a hand-written range");
    let ipam = config.ipam.as_ref().expect("[ipam] in the ConfigMap");
    assert!(ipam.node_name.is_none(), "the node name comes from the node, not the shared ConfigMap");
    let settings = ipam.clone().settings().expect("valid [ipam]");
    assert!(!settings.pools.is_empty());
    let etcd = ipam.etcd.as_ref().expect("[ipam.etcd]");
    assert!(
        etcd.endpoints.len() >= 3 && etcd.endpoints.iter().all(|e| e.starts_with("https://")),
        "{:?}",
        etcd.endpoints
    );

    let pod = &of_kind("DaemonSet")["spec"]["template"];
    let vswitchd = &pod["spec"]["containers"].as_sequence().unwrap()[0];
    let mount = vswitchd["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "etcd-client")
        .expect("the etcd client certificate is mounted");
    let dir = PathBuf::from(str_of(&mount["mountPath"]));
    for file in [&etcd.ca_file, &etcd.cert_file, &etcd.key_file] {
        assert_eq!(file.parent(), Some(dir.as_path()), "{} is not in the Secret's mount", file.display());
    }
    let volume = pod["spec"]["volumes"].as_sequence().unwrap().iter().find(|v| v["name"] == "etcd-client").unwrap();
    assert!(volume["secret"]["secretName"].as_str().is_some(), "the certificate is a Secret: {volume:?}");
    let command: Vec<&str> = vswitchd["command"].as_sequence().unwrap().iter().map(str_of).collect();
    let at = command.iter().position(|a| *a == "--node-name").expect("--node-name");
    assert_eq!(command[at + 1], "$(NODE_NAME)");
    let env = vswitchd["env"].as_sequence().unwrap().iter().find(|e| e["name"] == "NODE_NAME").expect("NODE_NAME");
    assert_eq!(env["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
}

#[test]
fn the_containerfile_builds_what_the_daemonset_runs() {
    for needed in [
        "cargo build --release --locked -p vswitch -p cni",
        "/usr/bin/",
        "/opt/cni/bin/vpc-cni",
        "COPY cni/vpc-cni.conflist /etc/vpc-cni/vpc-cni.conflist",
        // The image holds the binaries, what they link and busybox's shell and tools, as
        // build-image.sh makes it (tests/tests/daemonset.rs compares the two).
        "FROM scratch",
        "busybox-static",
    ] {
        assert!(CONTAINERFILE.contains(needed), "Containerfile lacks {needed:?}");
    }
    for binary in ["vswitchd", "vswitchctl"] {
        assert!(CONTAINERFILE.contains(&format!("/src/target/release/{binary}")), "{binary} is not copied");
        assert!(DAEMONSET.contains(&format!("/usr/bin/{binary}")));
    }
    // cargo reads every member's manifest: each must be copied into the build stage.
    let workspace: toml::Value = toml::from_str(WORKSPACE).unwrap();
    for member in workspace["workspace"]["members"].as_array().unwrap() {
        let dir = member.as_str().unwrap().split('/').next().unwrap();
        assert!(CONTAINERFILE.contains(&format!("COPY {dir} {dir}")), "member {dir} is not copied");
    }
}
