//! The lab's VPC with `--vpc aws`: EC2 is moto's server with the lab's proxy in front of it
//! ([`crate::ec2`]), in its own namespace on the fabric at [`ENDPOINT_IP`]:80 (where an interface
//! VPC endpoint for EC2 would be: an ENI in the subnet), seeded so that EC2's view IS the lab: a
//! VPC and one subnet 10.10.0.0/16, one instance of [`INSTANCE_TYPE`] per node whose primary ENI
//! has the node's address and whose MAC the node's eth0 takes, and the other hosts as EC2 has
//! them (the VM and the etcd members as instances, the endpoint and the load balancer as bare
//! ENIs, as AWS's own endpoints and NLBs are); only the VPC router (10.10.0.1, reserved by EC2)
//! is not described. The fabric's SDN ([`super::sdn`]) is programmed from EC2's view by
//! [`super::ec2_sdn`] (`vpc-lab ec2-sdn`, a process in the endpoint's namespace).
//!
//! Each node's vswitchd runs `[ipam] provider = "aws"` with its instance id given in the config,
//! the proxy as endpoint and the credentials in a shared-credentials file (as a Secret would
//! mount it; `AWS_SHARED_CREDENTIALS_FILE`). moto checks no signature, but vswitchd signs.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::ec2_sdn::{NodeInstance, SyncConfig};
use super::vpc_api::vpc::FixedHost;
use super::{node_ip, ETCD_IPS, GATEWAY_IP, VM_IP};
use crate::ec2::{Ec2Lab, REGION};
use crate::netns::Netns;

/// Where EC2's endpoint is in the VPC (the address `--vpc ucloud`'s API has).
pub const ENDPOINT_IP: Ipv4Addr = super::ucloud::API_IP;
pub const ENDPOINT_PORT: u16 = 80;
/// 15 ENIs of 50 IPv4 addresses (49 secondary): the first ENI holds a lab node's pods, its
/// sticky pod and its pool ([`MINIMUM_IP_TARGET`]) with room for `vpc-bench ipam`'s churn and
/// bursts, so neither the demo nor the bench needs a second ENI, which the lab's nodes cannot
/// use (see `docs/testing.md`).
pub const INSTANCE_TYPE: &str = "m5.16xlarge";
/// [`INSTANCE_TYPE`]'s secondary addresses per ENI.
pub const SECONDARY_PER_ENI: usize = 49;
/// The pool as AWS advises for few pods per node (its docs/eni-and-ip-target.md):
/// `WARM_IP_TARGET` with `MINIMUM_IP_TARGET` a little above the addresses a node holds at once.
/// AWS counts an address cooling (30 s after its pod's DEL) as available, so that is its pods
/// and those cooling: `vpc-bench ipam`'s 5 pods per node, each DEL'd ~6 s after its ADD, keep
/// ~22 cooling. See docs/decisions.md.
pub const WARM_IP_TARGET: usize = 2;
pub const MINIMUM_IP_TARGET: usize = 32;
/// How often the SDN programmer reads EC2, and how long after it saw a change the fabric has it.
pub const POLL_MS: u64 = 200;
pub const PUSH_DELAY_MS: u64 = 1000;

/// A host as EC2 has it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ec2Host {
    pub instance: Option<String>,
    pub eni: String,
    pub mac: String,
}

/// What a client of the lab's EC2 needs, and where each host is in it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabEc2 {
    /// The proxy, as vswitchd's `[ipam.aws] endpoint`.
    pub endpoint: String,
    /// moto itself, reachable in [`LabEc2::netns`] only (the lab's own reads).
    pub upstream: String,
    pub netns: String,
    pub region: String,
    pub vpc_id: String,
    pub subnet_id: String,
    pub instance_type: String,
    /// `[default]` with an access key, as `~/.aws/credentials`.
    pub credentials_file: PathBuf,
    /// The SDN programmer's control socket (state, counters, push delay).
    pub control: PathBuf,
    /// By the lab's name: node1.., vm, etcd1.., endpoint, lb.
    pub hosts: BTreeMap<String, Ec2Host>,
}

impl LabEc2 {
    pub fn host(&self, name: &str) -> &Ec2Host {
        self.hosts.get(name).unwrap_or_else(|| panic!("EC2 has no lab host {name}"))
    }

    /// The MAC EC2 gave host `name`'s ENI, if EC2 has it.
    pub fn mac(&self, name: &str) -> Option<&str> {
        self.hosts.get(name).map(|h| h.mac.as_str())
    }

    /// `ec2_lab.py SUBCOMMAND --endpoint <moto itself> ARGS` in EC2's namespace: what it printed.
    fn moto(&self, args: &[&str]) -> Value {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.netns, &format!("{}/bin/python", super::vpc_api::SDK_VENV)])
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/src/ec2_lab.py"))
            .args([args[0], "--endpoint", &self.upstream])
            .args(&args[1..])
            .output()
            .expect("run ec2_lab.py");
        assert!(out.status.success(), "ec2_lab.py {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Value>(&out.stdout).expect("JSON")
    }

    /// Every ENI as moto has it (`ec2_lab.py describe`: id, instance, device index, addresses).
    pub fn enis(&self) -> Vec<Value> {
        self.moto(&["describe"]).as_array().cloned().unwrap_or_default()
    }

    /// `ip` assigned on `eni` in moto itself, past the proxy's uniqueness check: a duplicate
    /// when another ENI holds it, which the SDN must refuse.
    pub fn assign_behind_the_proxy(&self, eni: &str, ip: Ipv4Addr) {
        self.moto(&["assign", "--eni", eni, "--ip", &ip.to_string()]);
    }

    /// The SDN programmer's state (`flow_table`, `duplicates`, `unplaced`, `counters`, ...).
    pub fn sdn_state(&self) -> Value {
        super::vpc_api::control(&self.control, &json!({"op": "state"})).unwrap_or_else(|e| panic!("ec2-sdn state: {e}"))
    }
}

/// EC2 and the SDN programmer, running; killed on drop (the programmer first).
#[derive(Debug)]
pub struct Ec2Vpc {
    pub ns: Netns,
    ec2: Option<Ec2Lab>,
    sync: Option<Child>,
    pub log: PathBuf,
}

impl Ec2Vpc {
    /// EC2 itself: the proxy's faults and call counts (vpc-bench).
    pub fn ec2(&self) -> &Ec2Lab {
        self.ec2.as_ref().expect("EC2 runs until detached")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Leaves everything running (`vpc-lab up`): the namespace's name and the pids.
    pub fn detach(mut self) -> (String, Vec<u32>) {
        let mut pids: Vec<u32> = self.sync.take().map(|c| c.id()).into_iter().collect();
        pids.extend(self.ec2.take().map(Ec2Lab::detach).unwrap_or_default());
        let ns = self.ns.name.clone();
        std::mem::forget(self);
        (ns, pids)
    }
}

impl Drop for Ec2Vpc {
    fn drop(&mut self) {
        if let Some(mut child) = self.sync.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.ec2.take();
    }
}

/// The hosts EC2 is seeded with: (name, address, instance or bare ENI, fabric port).
fn hosts(nodes: usize) -> Vec<(String, Ipv4Addr, &'static str, String)> {
    let mut all: Vec<(String, Ipv4Addr, &str, String)> =
        (0..nodes).map(|i| (format!("node{}", i + 1), node_ip(i), "instance", format!("fn{}", i + 1))).collect();
    all.push(("vm".into(), VM_IP, "instance", "fvm".into()));
    for (i, ip) in ETCD_IPS.iter().enumerate() {
        all.push((format!("etcd{}", i + 1), *ip, "instance", format!("fe{}", i + 1)));
    }
    all.push(("endpoint".into(), ENDPOINT_IP, "eni", "fapi".into()));
    all.push(("lb".into(), super::load_balancer::VIP, "eni", "flb".into()));
    all
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf)).expect("/dev/urandom");
    hex::encode(buf)
}

/// Starts EC2 (namespace `<lab>a`) on `fabric` for a lab of `nodes` nodes, seeds it, and starts
/// the SDN programmer; files in `dir`.
pub(super) fn start(lab: &str, fabric: &Netns, nodes: usize, dir: &Path) -> (Ec2Vpc, LabEc2) {
    std::fs::create_dir_all(dir).expect("the VPC's directory");
    let ns = Netns::new(&format!("{lab}a"));
    super::attach(fabric, &ns, "eth0", "fapi", &format!("{ENDPOINT_IP}/16"));
    let ec2 = Ec2Lab::launch(Some(&ns.name), Some(SocketAddr::new(IpAddr::V4(ENDPOINT_IP), ENDPOINT_PORT)));
    let plan = hosts(nodes);
    let spec = json!({
        "cidr": "10.10.0.0/16",
        "instance_type": INSTANCE_TYPE,
        "hosts": plan.iter().map(|(name, ip, kind, _)| json!({"name": name, "ip": ip, "kind": kind})).collect::<Vec<_>>(),
    });
    let seeded = ec2.seed(&["seed-lab", "--spec", &spec.to_string()]);
    let hosts: BTreeMap<String, Ec2Host> = serde_json::from_value(seeded["hosts"].clone()).expect("seed-lab's hosts");
    // The endpoint's own ENI MAC, as every host on the fabric gets its own.
    ns.ip(&["link", "set", "eth0", "address", &hosts["endpoint"].mac]);

    let credentials_file = dir.join("credentials");
    std::fs::write(
        &credentials_file,
        format!(
            "[default]\naws_access_key_id = AKIALAB{}\naws_secret_access_key = {}\n",
            random_hex(6),
            random_hex(20)
        ),
    )
    .expect("write the credentials");
    std::fs::set_permissions(&credentials_file, std::fs::Permissions::from_mode(0o600)).expect("chmod credentials");

    let sync = SyncConfig {
        upstream: ec2.upstream.clone(),
        fabric: fabric.name.clone(),
        ports: plan.iter().map(|(name, _, _, port)| (hosts[name].mac.to_ascii_lowercase(), port.clone())).collect(),
        fixed_hosts: vec![FixedHost {
            name: "VPC router".into(),
            port: "fgw".into(),
            addresses: vec![IpAddr::V4(GATEWAY_IP)],
        }],
        gateway_port: Some("fgw".into()),
        prefixes: vec!["10.10.0.0/16".into()],
        poll_ms: POLL_MS,
        push_delay_ms: PUSH_DELAY_MS,
        nodes: (0..nodes)
            .map(|i| {
                let host = &hosts[&format!("node{}", i + 1)];
                NodeInstance {
                    instance: host.instance.clone().expect("a node is an instance"),
                    mac: host.mac.to_ascii_lowercase(),
                    port: format!("fn{}", i + 1),
                }
            })
            .collect(),
        node_netns_prefix: format!("{lab}n"),
    };
    let config = dir.join("ec2-sdn.json");
    std::fs::write(&config, serde_json::to_vec_pretty(&sync).expect("serialisable")).expect("write ec2-sdn.json");
    let control = dir.join("ec2-sdn.sock");
    let log = dir.join("ec2-sdn.log");
    let args = ["ec2-sdn".as_ref(), "--config".as_ref(), config.as_os_str()];
    let child = super::vpc_api::start_server(&ns.name, &args, &control, &log, Duration::from_secs(20));
    let info = LabEc2 {
        endpoint: ec2.endpoint.clone(),
        upstream: ec2.upstream.clone(),
        netns: ns.name.clone(),
        region: REGION.into(),
        vpc_id: seeded["vpc"].as_str().unwrap_or_default().into(),
        subnet_id: seeded["subnet"].as_str().unwrap_or_default().into(),
        instance_type: INSTANCE_TYPE.into(),
        credentials_file,
        control,
        hosts,
    };
    (Ec2Vpc { ns, ec2: Some(ec2), sync: Some(child), log }, info)
}

/// Node `i`'s `[ipam] provider = "aws"`. With the fabric probe on: the lab's SDN, unlike EC2's
/// hypervisor, answers ARP only for an address it delivers, so the probe proves delivery and the
/// first packet after an ADD is not lost to the SDN's sync delay.
pub(super) fn vswitchd_ipam(ec2: &LabEc2, i: usize) -> String {
    let node = format!("node{}", i + 1);
    let instance = ec2.host(&node).instance.clone().expect("a node is an instance");
    // `pools` is required by `[ipam]` though provider mode does not use it: the subnet.
    format!(
        "[ipam]\nprovider = \"aws\"\nnode_name = \"{node}\"\nprefix = \"{}\"\npools = [\"10.10.0.0/16\"]\n\
         [ipam.aws]\nregion = \"{}\"\nsubnet_id = \"{}\"\ninstance_id = \"{instance}\"\nendpoint = \"{}\"\n\
         WARM_IP_TARGET = {WARM_IP_TARGET}\nMINIMUM_IP_TARGET = {MINIMUM_IP_TARGET}\nfabric_probe = true\n",
        super::IPAM_PREFIX,
        ec2.region,
        ec2.subnet_id,
        ec2.endpoint,
    )
}

/// vswitchd's environment: where its credentials are.
pub(super) fn vswitchd_env(ec2: &LabEc2) -> Vec<(String, String)> {
    vec![("AWS_SHARED_CREDENTIALS_FILE".into(), ec2.credentials_file.to_string_lossy().into_owned())]
}
