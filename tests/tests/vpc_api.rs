//! The lab VPC's API and SDN with real parts: UCloud's own Python SDK (`ucloud-sdk-python3`)
//! calling the API server across the enforcing fabric from a node's namespace, and pings
//! between namespaces on that fabric. Each test builds a small VPC of its own (10.20.0.0/24 and
//! fd00:20::/64: two node NICs, a VM, the API), uniquely named, removed on drop. Needs root, nft
//! and the SDK's venv (tests/install-deps.sh).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vpc_lab::lab::attach;
use vpc_lab::lab::vpc_api::vpc::{Credential, Faults, FixedHost, NicConfig, SubnetConfig, VpcConfig};
use vpc_lab::lab::vpc_api::{SdkClient, VpcApi};
use vpc_lab::netns::{have_tool, require_root, Netns, TempDir};

const MAC1: &str = "52:54:00:14:00:0b";
const MAC2: &str = "52:54:00:14:00:0c";
const VPC_ID: &str = "uvnet-t";
const SUBNET_ID: &str = "subnet-t";
const ZONE: &str = "cn-lab-01";

/// A VPC of two nodes and a VM; `api` first so that it dies before the fabric it programs.
struct SmallVpc {
    api: VpcApi,
    node1: Netns,
    node2: Netns,
    vm: Netns,
    _fabric: Netns,
    _dir: TempDir,
}

fn host(fabric: &Netns, prefix: &str, port: &str, mac: Option<&str>, v4: &str, v6: &str) -> Netns {
    let ns = Netns::new(prefix);
    attach(fabric, &ns, "eth0", port, &format!("{v4}/24"));
    if let Some(mac) = mac {
        ns.ip(&["link", "set", "eth0", "address", mac]);
    }
    ns.ip(&["-6", "addr", "add", &format!("{v6}/64"), "dev", "eth0", "nodad"]);
    // Neighbour solicitations every 100 ms rather than every second: what the timing
    // assertions measure is the SDN's flow-table delay, not ARP's and NDP's retries.
    for family in ["ipv4", "ipv6"] {
        let out = ns.exec(&["sysctl", "-qw", &format!("net.{family}.neigh.eth0.retrans_time_ms=100")]);
        assert!(out.status.success(), "sysctl: {}", String::from_utf8_lossy(&out.stderr));
    }
    ns
}

impl SmallVpc {
    fn new(push_delay_ms: u64) -> SmallVpc {
        require_root();
        assert!(have_tool("nft"), "this test needs nft (tests/install-deps.sh installs nftables)");
        SdkClient::require();
        let dir = TempDir::new();
        let fabric = Netns::new("vaf");
        fabric.ip(&["link", "add", "br0", "type", "bridge"]);
        fabric.ip(&["link", "set", "br0", "up"]);
        let nic = |mac: &str, n: u8| NicConfig {
            mac: mac.into(),
            object_id: format!("uhost-node{n}"),
            interface_id: None,
            subnet_id: SUBNET_ID.into(),
            port: format!("fn{n}"),
            primary: vec![format!("10.20.0.1{n}").parse().unwrap(), format!("fd00:20::1{n}").parse().unwrap()],
        };
        let fixed = |name: &str, port: &str, last: u8| FixedHost {
            name: name.into(),
            port: port.into(),
            addresses: vec![format!("10.20.0.{last}").parse().unwrap(), format!("fd00:20::{last}").parse().unwrap()],
        };
        let config = VpcConfig {
            region: "cn-lab".into(),
            zone: ZONE.into(),
            project_id: "org-lab".into(),
            vpc_id: VPC_ID.into(),
            subnets: vec![SubnetConfig {
                subnet_id: SUBNET_ID.into(),
                cidr: "10.20.0.0/24".into(),
                gateway: "10.20.0.1".parse().unwrap(),
                ipv6_cidr: Some("fd00:20::/64".into()),
                ipv6_gateway: None,
                // Two addresses to hand out: .101 and .102.
                pool: Some("10.20.0.100/30".into()),
            }],
            nics: vec![nic(MAC1, 1), nic(MAC2, 2)],
            fixed_hosts: vec![fixed("vm", "fvm", 50), fixed("vpc-api", "fapi", 30)],
            credentials: vec![Credential { public_key: "test-public".into(), private_key: "test-private".into() }],
            gateway_port: None,
            secondary_quota: 3,
            faults: Faults { push_delay_ms, ..Faults::default() },
        };
        let api = VpcApi::start("vaa", &fabric, "fapi", &["10.20.0.30/24", "fd00:20::30/64"], &config, &dir.0);
        let node1 = host(&fabric, "van", "fn1", Some(MAC1), "10.20.0.11", "fd00:20::11");
        let node2 = host(&fabric, "van", "fn2", Some(MAC2), "10.20.0.12", "fd00:20::12");
        let vm = host(&fabric, "vav", "fvm", None, "10.20.0.50", "fd00:20::50");
        SmallVpc { api, node1, node2, vm, _fabric: fabric, _dir: dir }
    }

    /// The SDK, run on node1 (the API is reached across the SDN, as from a real node).
    fn sdk(&self) -> SdkClient {
        SdkClient::new(&self.api, &self.node1.name)
    }
}

fn allocate(sdk: &SdkClient, mac: &str, node: u8, ip: Option<&str>) -> vpc_lab::lab::vpc_api::SdkReply {
    let mut p = json!({"Zone": ZONE, "VPCId": VPC_ID, "SubnetId": SUBNET_ID, "Mac": mac, "ObjectId": format!("uhost-node{node}")});
    if let Some(ip) = ip {
        p["Ip"] = ip.into();
    }
    sdk.call("AllocateSecondaryIp", p)
}

fn delete(sdk: &SdkClient, mac: &str, ip: &str) -> vpc_lab::lab::vpc_api::SdkReply {
    sdk.call("DeleteSecondaryIp", json!({"Zone": ZONE, "VPCId": VPC_ID, "SubnetId": SUBNET_ID, "Mac": mac, "Ip": ip}))
}

fn move_mac(sdk: &SdkClient, ip: &str, old: &str, new: &str) -> vpc_lab::lab::vpc_api::SdkReply {
    sdk.call("MoveSecondaryIPMac", json!({"Ip": ip, "OldMac": old, "NewMac": new, "SubnetId": SUBNET_ID}))
}

fn describe(sdk: &SdkClient, ip: &str) -> Vec<Value> {
    let reply =
        sdk.call("DescribeSecondaryIp", json!({"Zone": ZONE, "VPCId": VPC_ID, "SubnetId": SUBNET_ID, "Ip": ip}));
    assert_eq!(reply.ret_code, 0, "DescribeSecondaryIp: {}", reply.message);
    reply.response["DataSet"].as_array().cloned().unwrap_or_default()
}

fn available(sdk: &SdkClient) -> u64 {
    let reply = sdk.call("DescribeSubnet", json!({"SubnetId": SUBNET_ID, "ShowAvailableIPs": true}));
    assert_eq!(reply.ret_code, 0, "DescribeSubnet: {}", reply.message);
    let subnet = &reply.response["DataSet"][0];
    assert_eq!((subnet["Subnet"].as_str(), subnet["Netmask"].as_str()), (Some("10.20.0.0"), Some("24")), "{subnet}");
    subnet["AvailableIPs"].as_u64().expect("AvailableIPs")
}

/// Allocate, describe, move, delete, a full subnet (57000), an address already gone (58221), the
/// quota, and refused signatures, through UCloud's SDK; then the rate limit (153) and latency.
#[test]
fn ucloud_sdk_drives_the_vpc_api() {
    let vpc = SmallVpc::new(1000);
    let sdk = vpc.sdk();
    assert_eq!(available(&sdk), 2);

    let a = allocate(&sdk, MAC1, 1, None);
    assert_eq!(a.ret_code, 0, "AllocateSecondaryIp: {}", a.message);
    let info = &a.response["IpInfo"];
    assert_eq!(
        (info["Ip"].as_str(), info["Mac"].as_str(), info["Mask"].as_str(), info["Gateway"].as_str()),
        (Some("10.20.0.101"), Some(MAC1), Some("255.255.255.0"), Some("10.20.0.1"))
    );
    assert_eq!(describe(&sdk, "10.20.0.101")[0]["Mac"], MAC1);
    assert_eq!(allocate(&sdk, MAC2, 2, None).response["IpInfo"]["Ip"], "10.20.0.102");
    let full = allocate(&sdk, MAC1, 1, None);
    assert_eq!(full.ret_code, 57000, "a full subnet: {}", full.message);
    assert_eq!(available(&sdk), 0);

    let moved = move_mac(&sdk, "10.20.0.101", MAC1, MAC2);
    assert_eq!(moved.ret_code, 0, "MoveSecondaryIPMac: {}", moved.message);
    assert_eq!(describe(&sdk, "10.20.0.101")[0]["Mac"], MAC2);
    // The old NIC's stale delete does not take it from the new one.
    assert_eq!(delete(&sdk, MAC1, "10.20.0.101").ret_code, 58221);
    assert_eq!(delete(&sdk, MAC2, "10.20.0.101").ret_code, 0);
    let gone = delete(&sdk, MAC2, "10.20.0.101");
    assert_eq!(gone.ret_code, 58221, "deleting an address already gone: {}", gone.message);
    assert!(describe(&sdk, "10.20.0.101").is_empty());
    assert_eq!(available(&sdk), 1);

    // The quota (3 per NIC): node2 holds .102, then two named ones, then no more.
    for ip in ["10.20.0.200", "fd00:20::64:1"] {
        assert_eq!(allocate(&sdk, MAC2, 2, Some(ip)).ret_code, 0, "{ip}");
    }
    assert_eq!(allocate(&sdk, MAC2, 2, Some("10.20.0.201")).ret_code, 58223, "over the quota");
    assert_eq!(allocate(&sdk, MAC1, 1, Some("10.20.0.50")).ret_code, 58222, "the VM's address");
    assert_eq!(allocate(&sdk, MAC1, 1, Some("10.20.0.200")).ret_code, 58222, "node2's address");

    let wrong_key = SdkClient { private_key: "not-the-key".into(), ..sdk.clone() };
    let refused = wrong_key.call("DescribeSubnet", json!({}));
    assert_eq!((refused.ret_code, refused.message.as_str()), (171, "Signature VerifyAC Error"));
    let stranger = SdkClient { public_key: "nobody".into(), ..sdk.clone() };
    assert_eq!(stranger.call("DescribeSubnet", json!({})).ret_code, 172);
    let refused_alloc = SdkClient { private_key: "not-the-key".into(), ..sdk.clone() };
    assert_eq!(allocate(&refused_alloc, MAC1, 1, Some("10.20.0.210")).ret_code, 171);
    assert!(describe(&sdk, "10.20.0.210").is_empty(), "a refused call changed the VPC");

    // The server's own account of it: every call counted by action and RetCode.
    let state = vpc.api.state();
    let count = |action: &str, code: u64| {
        state["calls"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["action"] == action && c["ret_code"] == code)
            .map_or(0, |c| c["count"].as_u64().unwrap())
    };
    assert_eq!(
        (count("AllocateSecondaryIp", 57000), count("DescribeSubnet", 171), count("DescribeSubnet", 172)),
        (1, 1, 1),
        "{state}"
    );
    let nic2 = state["vpc"]["nics"].as_array().unwrap().iter().find(|n| n["mac"] == MAC2).unwrap().clone();
    assert_eq!(nic2["secondary"], json!(["10.20.0.102", "10.20.0.200", "fd00:20::64:1"]));

    // One call a second: back-to-back calls (each a Python process, ~0.2 s) are throttled.
    vpc.api.set_faults(json!({"rate_per_sec": 1.0}));
    let codes: Vec<i64> = (0..3).map(|_| sdk.call("DescribeSubnet", json!({})).ret_code).collect();
    assert!(codes.contains(&153) && codes.contains(&0), "rate limit of 1/s: {codes:?}");
    vpc.api.set_faults(json!({"rate_per_sec": null, "latency_ms": 1000}));
    let slow = sdk.call("DescribeSubnet", json!({}));
    assert!(slow.ret_code == 0 && slow.elapsed >= Duration::from_millis(1000), "latency 1 s: {slow:?}");
    vpc.api.set_faults(json!({"latency_ms": 0, "down": true}));
    let down = sdk.call("DescribeSubnet", json!({}));
    assert_eq!(down.ret_code, -1, "the API down: {down:?}");
}

/// Whether `from` gets a ping reply from `to` (0.2 s).
fn reaches(from: &Netns, to: &str, source: Option<&str>) -> bool {
    let mut args = vec!["ping", "-c1", "-W0.2"];
    if let Some(source) = source {
        args.extend(["-I", source]);
    }
    args.push(to);
    from.exec(&args).status.success()
}

/// Polls `reaches` until it equals `want`; returns how long after `since` it did (None: not
/// within `limit` of `since`).
fn until(since: Instant, limit: Duration, want: bool, mut probe: impl FnMut() -> bool) -> Option<Duration> {
    loop {
        if probe() == want {
            return Some(since.elapsed());
        }
        if since.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The SDN drops traffic to and from an address no NIC holds, whatever ARP says; delivers it
/// within the flow-table delay (+ a margin) after AllocateSecondaryIp, not before; follows a
/// MoveSecondaryIPMac to the new NIC and stops at the old one; stops after DeleteSecondaryIp.
#[test]
fn the_sdn_delivers_only_what_the_api_registered() {
    const DELAY: Duration = Duration::from_millis(1000);
    const MARGIN: Duration = Duration::from_millis(600);
    let vpc = SmallVpc::new(DELAY.as_millis() as u64);
    let sdk = vpc.sdk();
    let (x, x6) = ("10.20.0.150", "fd00:20::150");
    // Node1 claims both addresses on its NIC and the VM believes it (static neighbour entries):
    // on a bridge that would be enough.
    vpc.node1.ip(&["addr", "add", &format!("{x}/32"), "dev", "eth0"]);
    vpc.node1.ip(&["-6", "addr", "add", &format!("{x6}/128"), "dev", "eth0", "nodad"]);
    vpc.vm.ip(&["neigh", "replace", x, "lladdr", MAC1, "dev", "eth0", "nud", "permanent"]);
    let vm_mac =
        String::from_utf8_lossy(&vpc.vm.exec(&["cat", "/sys/class/net/eth0/address"]).stdout).trim().to_string();
    vpc.node1.ip(&["neigh", "replace", "10.20.0.50", "lladdr", &vm_mac, "dev", "eth0", "nud", "permanent"]);
    assert!(reaches(&vpc.vm, "10.20.0.11", None) && reaches(&vpc.vm, "fd00:20::11", None), "registered hosts talk");

    let before = (vpc.api.counter("dst4_unregistered"), vpc.api.counter("src4_unregistered"));
    assert!(!reaches(&vpc.vm, x, None), "{x} answered before the API registered it");
    assert!(!reaches(&vpc.node1, "10.20.0.50", Some(x)), "node1 sent from {x} before the API registered it");
    assert!(!reaches(&vpc.vm, x6, None), "{x6} answered before the API registered it");
    let after = (vpc.api.counter("dst4_unregistered"), vpc.api.counter("src4_unregistered"));
    assert!(after.0 > before.0 && after.1 > before.1, "the drops are counted: {before:?} -> {after:?}");

    // AllocateSecondaryIp: delivered after the flow-table delay, not before.
    let asked = Instant::now();
    assert_eq!(allocate(&sdk, MAC1, 1, Some(x)).ret_code, 0);
    let answered = asked.elapsed();
    let delivered = until(asked, DELAY + answered + MARGIN, true, || reaches(&vpc.vm, x, None))
        .unwrap_or_else(|| panic!("{x} not delivered within {:?} of AllocateSecondaryIp", DELAY + MARGIN));
    eprintln!("AllocateSecondaryIp answered in {answered:?}; {x} delivered {delivered:?} after the call");
    assert!(
        delivered >= DELAY - Duration::from_millis(100),
        "{x} delivered {delivered:?} after the call, before the push"
    );
    assert!(reaches(&vpc.node1, "10.20.0.50", Some(x)), "node1 sends from {x}");
    // Neighbour discovery works for what is registered: dynamic ARP and NDP.
    vpc.vm.ip(&["neigh", "del", x, "dev", "eth0"]);
    assert!(until(Instant::now(), MARGIN, true, || reaches(&vpc.vm, x, None)).is_some(), "ARP for {x}");
    let asked = Instant::now();
    assert_eq!(allocate(&sdk, MAC1, 1, Some(x6)).ret_code, 0);
    let delivered = until(asked, DELAY + asked.elapsed() + MARGIN, true, || reaches(&vpc.vm, x6, None))
        .unwrap_or_else(|| panic!("{x6} not delivered (NDP) within {:?} of AllocateSecondaryIp", DELAY + MARGIN));
    assert!(
        delivered >= DELAY - Duration::from_millis(100),
        "{x6} delivered {delivered:?} after the call, before the push"
    );

    // MoveSecondaryIPMac to node2: the old NIC stops receiving and sending it, the new one starts.
    vpc.node2.ip(&["addr", "add", &format!("{x}/32"), "dev", "eth0"]);
    vpc.vm.ip(&["neigh", "replace", x, "lladdr", MAC1, "dev", "eth0", "nud", "permanent"]);
    let stale_before = vpc.api.counter("dst4_other_port");
    let asked = Instant::now();
    assert_eq!(move_mac(&sdk, x, MAC1, MAC2).ret_code, 0);
    let stopped = until(asked, DELAY + MARGIN + asked.elapsed(), false, || reaches(&vpc.vm, x, None))
        .unwrap_or_else(|| panic!("{x} still delivered to node1 {:?} after the move", DELAY + MARGIN));
    assert!(
        stopped >= DELAY - Duration::from_millis(100),
        "delivery stopped {stopped:?} after the move, before the push"
    );
    assert!(vpc.api.counter("dst4_other_port") > stale_before, "the stale neighbour entry's drops are counted");
    assert!(!reaches(&vpc.node1, "10.20.0.50", Some(x)), "node1 still sends from the moved {x}");
    vpc.vm.ip(&["neigh", "replace", x, "lladdr", MAC2, "dev", "eth0", "nud", "permanent"]);
    assert!(reaches(&vpc.vm, x, None), "{x} not delivered to node2 after the move");

    // DeleteSecondaryIp: delivery stops.
    let asked = Instant::now();
    assert_eq!(delete(&sdk, MAC2, x).ret_code, 0);
    let stopped = until(asked, DELAY + MARGIN + asked.elapsed(), false, || reaches(&vpc.vm, x, None))
        .unwrap_or_else(|| panic!("{x} still delivered {:?} after DeleteSecondaryIp", DELAY + MARGIN));
    eprintln!("move: stopped at node1 after the push; delete: stopped {stopped:?} after the call");
    let state = vpc.api.state();
    assert_eq!(state["pending_pushes"], 0, "{state}");
    let table: Vec<IpAddr> =
        state["flow_table"].as_array().unwrap().iter().map(|e| e["addr"].as_str().unwrap().parse().unwrap()).collect();
    assert!(!table.contains(&x.parse().unwrap()) && table.contains(&x6.parse().unwrap()), "flow table: {table:?}");
    assert_eq!(state["last_push_error"], Value::Null);
}

/// `--vpc ucloud`: the lab's nodes, VM and gateway reach each other from the start (their NICs
/// and hosts are registered), a pod does not until its address is registered to its node's NIC
/// through the API, and then does, within the flow-table delay.
#[test]
fn a_ucloud_lab_registers_its_hosts_and_not_its_pods() {
    use vpc_lab::lab::{ucloud, Lab, LabSpec, VpcMode};
    require_root();
    SdkClient::require();
    let lab = Lab::up(LabSpec { vpc: VpcMode::Ucloud, pods_per_node: 1, ..LabSpec::default() }, |_| {});
    let info = lab.vpc.clone().expect("the lab's VPC API");
    for (from, to) in [(&lab.nodes[0], "10.10.0.12"), (&lab.vm, "10.10.0.11"), (&lab.nodes[1], "172.16.50.10")] {
        assert!(lab.ping(from, to.parse::<IpAddr>().unwrap()).is_ok(), "{from} -> {to} on the SDN");
    }
    let pod = lab.pod("n1a").expect("pod n1a").clone();
    let ip = pod.ip4().to_string();
    assert!(lab.ping(&lab.vm, pod.ip4()).is_err(), "an unregistered pod answered the VM");
    let sdk = info.sdk(&lab.nodes[0]);
    let asked = Instant::now();
    let reply = sdk.call(
        "AllocateSecondaryIp",
        json!({"Zone": info.zone, "VPCId": info.vpc_id, "SubnetId": info.subnet_id, "Mac": ucloud::nic_mac(0),
               "ObjectId": "uhost-node1", "Ip": ip}),
    );
    assert_eq!(reply.ret_code, 0, "AllocateSecondaryIp {ip}: {}", reply.message);
    let delivered = until(asked, Duration::from_secs(3), true, || lab.ping(&lab.vm, pod.ip4()).is_ok());
    assert!(delivered.is_some(), "the registered pod {ip} did not answer the VM");
    eprintln!("pod {ip} answered the VM {delivered:?} after AllocateSecondaryIp");
    let state = vpc_lab::lab::vpc_api::control(&info.control, &json!({"op": "state"})).unwrap();
    // Before the push, the VM's ARP requests for the pod did not even reach node1.
    assert!(state["counters"]["arp_unknown_target"]["packets"].as_u64().unwrap() > 0, "{state}");
}
