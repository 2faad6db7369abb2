//! Each node's vswitchd.toml: how pod traffic reaches the VPC (`[host_port]`, `[uplink]`) and
//! where pod addresses come from (`[ipam]`: the etcd pool, or the VPC's API in provider mode).

use std::fmt::Write as _;

use super::aws::LabEc2;
use super::ucloud::{LabVpc, SECONDARY_POOL};
use super::{
    node_ip, node_ip6, pools, IpamMode, LabSpec, UplinkMode, GATEWAY_IP6, IPAM_PREFIX, POD_NAMESPACE, SERVICE_RANGE6,
    VPC_SUBNET6,
};
use crate::etcd::EtcdCluster;

/// The interface that carries node `i`'s pod traffic to the VPC: the NIC whose secondary IPs the
/// pods' addresses are in provider mode.
pub(super) fn pod_nic(mode: UplinkMode) -> &'static str {
    match mode {
        UplinkMode::HostRouted => "eth0",
        UplinkMode::Uplink => "up0",
    }
}

/// The whole vswitchd.toml of node `i` (from 0). `etcd` is there with [`IpamMode::Etcd`],
/// `vpc` or `ec2` with [`IpamMode::Vpc`].
pub(super) fn vswitchd_toml(
    spec: &LabSpec,
    i: usize,
    etcd: Option<&EtcdCluster>,
    vpc: Option<&LabVpc>,
    ec2: Option<&LabEc2>,
) -> String {
    let mut config = match spec.mode {
        UplinkMode::HostRouted => match (spec.ipam, spec.family.has_v6()) {
            (IpamMode::Local, false) => String::new(),
            // Any address may come to this node from another one (a sticky pod that moved):
            // vswitchd announces each pod it attaches from the node's NIC, so the VPC forgets
            // the old node at once; and its IPv6 pods get proxy-NDP entries.
            _ => "[host_port]\nannounce_on = \"eth0\"\n".to_string(),
        },
        UplinkMode::Uplink => uplink(spec, i),
    };
    match spec.ipam {
        IpamMode::Local => {}
        IpamMode::Etcd => config.push_str(&etcd_ipam(spec, i, etcd.expect("etcd runs in IpamMode::Etcd"))),
        IpamMode::Vpc => {
            match ec2 {
                Some(ec2) => config.push_str(&super::aws::vswitchd_ipam(ec2, i)),
                None => config.push_str(&provider_ipam(spec, i, vpc.expect("the VPC API runs with --vpc ucloud"))),
            }
            // Sticky pods' records (by annotation: no `sticky` pattern here), for every node.
            config.push_str(&etcd_table(etcd.expect("etcd keeps provider mode's sticky records")));
        }
    }
    config
}

fn uplink(spec: &LabSpec, i: usize) -> String {
    let (ip, ip6) = (node_ip(i), node_ip6(i));
    let (routes6, uplink6) = if spec.family.has_v6() {
        (
            format!(", \"{ip6}/128\", \"{SERVICE_RANGE6}\""),
            format!("subnet6 = \"{VPC_SUBNET6}\"\ngateway6 = \"{GATEWAY_IP6}\"\naddress6 = \"{ip6}\"\n"),
        )
    } else {
        (String::new(), String::new())
    };
    format!(
        "[host_port]\ndefault_route = false\nroutes = [\"{ip}/32\", \"10.96.0.0/12\"{routes6}]\n\
         [uplink]\ninterface = \"up0\"\nsubnet = \"10.10.0.0/16\"\ngateway = \"10.10.0.1\"\n{uplink6}"
    )
}

/// A string as a TOML basic string (JSON's escapes are TOML's).
fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

/// `[ipam]` for node `i` on the etcd pool: the same on every node but for its name (one
/// ConfigMap).
fn etcd_ipam(spec: &LabSpec, i: usize, etcd: &EtcdCluster) -> String {
    // A small warm pool: a lab node has a few pods. The rest as in production: a released
    // address waits 120 s before reuse; a node without its lease for 10 s is quarantined.
    let pools: Vec<String> = pools(spec.family).iter().map(|p| toml_str(p)).collect();
    format!(
        "[ipam]\nnode_name = \"node{}\"\npools = [{}]\nprefix = \"{IPAM_PREFIX}\"\n\
         warm_target = 4\nwarm_max = 8\nsticky = [\"{POD_NAMESPACE}/sticky-*\"]\n{}",
        i + 1,
        pools.join(", "),
        etcd_table(etcd),
    )
}

/// `[ipam.etcd]`: the lab's etcd members, with its client certificate.
fn etcd_table(etcd: &EtcdCluster) -> String {
    let tls = etcd.tls();
    let endpoints: Vec<String> = etcd.endpoints().iter().map(|e| toml_str(e)).collect();
    format!(
        "[ipam.etcd]\nendpoints = [{}]\nca_file = {}\ncert_file = {}\nkey_file = {}\n",
        endpoints.join(", "),
        toml_str(&tls.ca.to_string_lossy()),
        toml_str(&tls.cert.to_string_lossy()),
        toml_str(&tls.key.to_string_lossy()),
    )
}

/// `[ipam] provider = "ucloud"` for node `i`: the pods' addresses are secondary IPs of the NIC
/// that carries their traffic ([`pod_nic`]), allocated through the lab's VPC API with the
/// credentials in the files a Kubernetes Secret would mount.
fn provider_ipam(spec: &LabSpec, i: usize, vpc: &LabVpc) -> String {
    let nic = vpc
        .nics
        .iter()
        .find(|n| n.node == i && n.interface == pod_nic(spec.mode))
        .unwrap_or_else(|| panic!("the VPC knows no {} of node{}", pod_nic(spec.mode), i + 1));
    // `pools` is required by `[ipam]` even though provider mode does not use it
    // (docs/configuration.md): the subnet's part the VPC hands secondary IPs from.
    let mut toml = format!(
        "[ipam]\nprovider = \"ucloud\"\nnode_name = \"node{}\"\nprefix = \"{IPAM_PREFIX}\"\npools = [{}]\n[ipam.ucloud]\n",
        i + 1,
        toml_str(SECONDARY_POOL)
    );
    let keys = [
        ("endpoint", vpc.endpoint.clone()),
        ("region", vpc.region.clone()),
        ("zone", vpc.zone.clone()),
        ("project", vpc.project_id.clone()),
        ("vpc_id", vpc.vpc_id.clone()),
        ("subnet_id", vpc.subnet_id.clone()),
        ("nic_mac", nic.mac.clone()),
        ("host_id", nic.object_id.clone()),
        ("public_key_file", vpc.public_key_file.to_string_lossy().into_owned()),
        ("private_key_file", vpc.private_key_file.to_string_lossy().into_owned()),
    ];
    for (key, value) in keys {
        let _ = writeln!(toml, "{key} = {}", toml_str(&value));
    }
    // A small warm pool, as for etcd: a lab node has a few pods.
    toml.push_str("warm_low = 3\nwarm_high = 6\n");
    toml
}
