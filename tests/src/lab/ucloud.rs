//! The lab's VPC with `--vpc ucloud`: the fabric enforces an SDN ([`super::sdn`]) that only the
//! VPC API ([`super::vpc_api`]) programs, as on UCloud. The API runs in its own namespace on the
//! fabric at [`API_IP`]:80 (a fixed host, like UCloud's in-VPC API endpoint); the gateway, the
//! VM, the etcd members and the API are fixed hosts; each node's NIC is registered with its MAC,
//! its host id and its primary address, so the nodes reach each other and the fixed hosts from
//! the start. A pod's address passes only once a provider registers it to the node's NIC
//! (`AllocateSecondaryIp`), from the subnet's pool [`SECONDARY_POOL`] or by naming it (IPv6).

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::vpc_api::vpc::{Credential, Faults, FixedHost, NicConfig, SubnetConfig, VpcConfig};
use super::vpc_api::VpcApi;
use super::{
    node_ip, node_ip6, IpamMode, LabSpec, UplinkMode, ETCD_IPS, GATEWAY_IP, GATEWAY_IP6, VM_IP, VM_IP6, VPC_SUBNET6,
};
use crate::netns::Netns;

pub const API_IP: Ipv4Addr = Ipv4Addr::new(10, 10, 0, 30);
pub const API_IP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0, 0, 0, 0, 0, 0x30);
pub const REGION: &str = "cn-lab";
pub const ZONE: &str = "cn-lab-01";
pub const PROJECT_ID: &str = "org-lab";
pub const VPC_ID: &str = "uvnet-lab";
pub const SUBNET_ID: &str = "subnet-lab";
/// What `AllocateSecondaryIp` hands out without `Ip`: the quarter of the subnet clear of every
/// fixed address (the etcd mode's pool).
pub const SECONDARY_POOL: &str = super::POD_POOL;
/// Secondary addresses per NIC (UCloud's default quota for a UHost NIC is of this order).
pub const SECONDARY_QUOTA: usize = 40;

/// Node `node`'s NIC on the VPC (its eth0): a MAC of UCloud's 52:54:00 prefix, from its address.
pub fn nic_mac(node: usize) -> String {
    let o = node_ip(node).octets();
    format!("52:54:00:{:02x}:{:02x}:{:02x}", o[1], o[2], o[3])
}

/// Node `node`'s second NIC (`--mode uplink`'s up0).
pub fn uplink_mac(node: usize) -> String {
    let o = node_ip(node).octets();
    format!("52:54:01:{:02x}:{:02x}:{:02x}", o[1], o[2], o[3])
}

/// A NIC as a provider on the node names it to the API.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabNic {
    /// From 0.
    pub node: usize,
    /// Its name in the node's namespace (eth0, up0).
    pub interface: String,
    pub mac: String,
    /// The host's id (`ObjectId`).
    pub object_id: String,
}

/// What a client of the lab's VPC API needs: where it is, the VPC's ids, the credentials (in
/// files, as a Kubernetes Secret would mount them) and each node's NICs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabVpc {
    /// The SDK's `base_url`.
    pub endpoint: String,
    pub region: String,
    pub zone: String,
    pub project_id: String,
    pub vpc_id: String,
    pub subnet_id: String,
    pub public_key_file: PathBuf,
    pub private_key_file: PathBuf,
    /// The API server's control socket (state dump, faults).
    pub control: PathBuf,
    pub nics: Vec<LabNic>,
}

fn write_secret(path: &Path, value: &str) {
    std::fs::write(path, value).expect("write a credential");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod a credential");
}

/// A fresh private key: 20 random bytes in hex, as UCloud's are 40 hex digits.
fn private_key() -> String {
    let mut bytes = [0u8; 20];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).expect("/dev/urandom");
    hex::encode(bytes)
}

/// Each node's NICs: eth0 with the node's addresses, and with `--mode uplink` up0, which has
/// none of its own; as a provider names them and as the VPC knows them.
fn lab_nics(spec: &LabSpec) -> Vec<(LabNic, NicConfig)> {
    let mut all = Vec::new();
    for node in 0..spec.nodes {
        let mut primary = vec![IpAddr::V4(node_ip(node))];
        if spec.family.has_v6() {
            primary.push(IpAddr::V6(node_ip6(node)));
        }
        let mut interfaces = vec![("eth0", nic_mac(node), "fn", primary)];
        if spec.mode == UplinkMode::Uplink {
            interfaces.push(("up0", uplink_mac(node), "fu", Vec::new()));
        }
        for (interface, mac, port, primary) in interfaces {
            let object_id = format!("uhost-node{}", node + 1);
            let lab = LabNic { node, interface: interface.into(), mac: mac.clone(), object_id: object_id.clone() };
            let vpc = NicConfig {
                mac,
                object_id,
                interface_id: Some(format!("uni-node{}-{interface}", node + 1)),
                subnet_id: SUBNET_ID.into(),
                port: format!("{port}{}", node + 1),
                primary,
            };
            all.push((lab, vpc));
        }
    }
    all
}

/// The lab's VPC: fixed hosts, the nodes' NICs, the subnet with its pool.
fn config(spec: &LabSpec, credential: Credential) -> VpcConfig {
    let v6 = spec.family.has_v6();
    let both = |v4: Ipv4Addr, v6addr: Ipv6Addr| {
        let mut all = vec![IpAddr::V4(v4)];
        if v6 {
            all.push(IpAddr::V6(v6addr));
        }
        all
    };
    let mut fixed_hosts = vec![
        FixedHost { name: "gateway".into(), port: "fgw".into(), addresses: both(GATEWAY_IP, GATEWAY_IP6) },
        FixedHost { name: "vm".into(), port: "fvm".into(), addresses: both(VM_IP, VM_IP6) },
        FixedHost { name: "vpc-api".into(), port: "fapi".into(), addresses: both(API_IP, API_IP6) },
        // The load balancer standing in for UCloud's ULB (super::load_balancer).
        FixedHost { name: "ulb".into(), port: "flb".into(), addresses: vec![IpAddr::V4(super::load_balancer::VIP)] },
    ];
    if spec.ipam == IpamMode::Etcd {
        for (i, ip) in ETCD_IPS.iter().enumerate() {
            fixed_hosts.push(FixedHost {
                name: format!("etcd{}", i + 1),
                port: format!("fe{}", i + 1),
                addresses: vec![IpAddr::V4(*ip)],
            });
        }
    }
    let nics = lab_nics(spec).into_iter().map(|(_, nic)| nic).collect();
    VpcConfig {
        region: REGION.into(),
        zone: ZONE.into(),
        project_id: PROJECT_ID.into(),
        vpc_id: VPC_ID.into(),
        subnets: vec![SubnetConfig {
            subnet_id: SUBNET_ID.into(),
            cidr: "10.10.0.0/16".into(),
            gateway: GATEWAY_IP,
            ipv6_cidr: v6.then(|| VPC_SUBNET6.to_string()),
            ipv6_gateway: v6.then_some(IpAddr::V6(GATEWAY_IP6)),
            pool: Some(SECONDARY_POOL.into()),
        }],
        nics,
        fixed_hosts,
        credentials: vec![credential],
        gateway_port: Some("fgw".into()),
        secondary_quota: SECONDARY_QUOTA,
        faults: Faults::default(),
    }
}

/// Starts the lab's VPC API (namespace `<lab>a`) on `fabric`, with its files in `dir`.
pub(super) fn start(lab: &str, fabric: &Netns, spec: &LabSpec, dir: &Path) -> (VpcApi, LabVpc) {
    std::fs::create_dir_all(dir).expect("the VPC's directory");
    let credential = Credential { public_key: format!("lab-{lab}"), private_key: private_key() };
    let (public_key_file, private_key_file) = (dir.join("public_key"), dir.join("private_key"));
    write_secret(&public_key_file, &credential.public_key);
    write_secret(&private_key_file, &credential.private_key);
    let config = config(spec, credential);
    let mut addrs = vec![format!("{API_IP}/16")];
    if spec.family.has_v6() {
        addrs.push(format!("{API_IP6}/64"));
    }
    let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let api = VpcApi::start(&format!("{lab}a"), fabric, "fapi", &addrs, &config, dir);
    let nics = lab_nics(spec).into_iter().map(|(nic, _)| nic).collect();
    let info = LabVpc {
        endpoint: api.endpoint.clone(),
        region: REGION.into(),
        zone: ZONE.into(),
        project_id: PROJECT_ID.into(),
        vpc_id: VPC_ID.into(),
        subnet_id: SUBNET_ID.into(),
        public_key_file,
        private_key_file,
        control: api.control.clone(),
        nics,
    };
    (api, info)
}

impl LabVpc {
    /// UCloud's SDK run in namespace `netns` with the lab's credentials (read from their files).
    pub fn sdk(&self, netns: &str) -> super::vpc_api::SdkClient {
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        super::vpc_api::SdkClient {
            netns: netns.to_string(),
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            project_id: self.project_id.clone(),
            public_key: read(&self.public_key_file),
            private_key: read(&self.private_key_file),
        }
    }
}
