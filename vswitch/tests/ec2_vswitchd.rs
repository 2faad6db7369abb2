//! vswitchd with `[ipam] provider = "aws"`, against moto behind the lab's proxy (vpc_lab::ec2),
//! both in the node's namespace: pods started by the real vpc-cni as a runtime calls it get
//! secondary addresses of the instance's ENIs; a vswitchd killed with -9 between the EC2 call and
//! the answer to ADD loses no address and hands none out twice once it is back. Needs root and
//! the tests' venv with moto (tests/install-deps.sh).

use std::collections::{BTreeSet, HashSet};
use std::net::Ipv4Addr;
use std::sync::Once;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vpc_lab::ec2::{wait_for_ipam, Ec2Lab, REGION};
use vpc_lab::netns::{binary, cni_command, require_root, run_cni, Binaries, Daemon, Netns, TempDir};

fn bins() -> Binaries {
    Binaries { vswitchd: env!("CARGO_BIN_EXE_vswitchd").into(), vswitchctl: env!("CARGO_BIN_EXE_vswitchctl").into() }
}

/// vswitchd reads its EC2 credentials from the environment it inherits (the chain's first link).
fn credentials_in_env() {
    static SET: Once = Once::new();
    SET.call_once(|| {
        std::env::set_var("AWS_ACCESS_KEY_ID", "AKIDLAB");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "lab-secret");
    });
}

fn config(lab: &Ec2Lab) -> String {
    format!(
        "[ipam]\nprovider = \"aws\"\n[ipam.aws]\nregion = \"{REGION}\"\nsubnet_id = \"{}\"\ninstance_id = \"{}\"\n\
         endpoint = \"{}\"\nWARM_IP_TARGET = 1\nIP_COOLDOWN_PERIOD = 0\n\
         require_eni_interface = false\n",
        lab.subnet, lab.instances[0], lab.endpoint
    )
}

/// A CNI ADD as a runtime makes it: the address, or the plugin's error JSON.
fn add(container: &str, pod: &Netns, conf: &Value) -> Result<Ipv4Addr, Value> {
    let mut cmd = cni_command(&binary("vpc-cni"), "ADD", container, &pod.path());
    cmd.env("CNI_ARGS", format!("IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={container}"));
    let out = run_cni(cmd, conf);
    let result: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    if !out.status.success() {
        return Err(result);
    }
    Ok(result["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().parse().unwrap())
}

fn addresses(list: &Value) -> Vec<Ipv4Addr> {
    list.as_array().map_or(Vec::new(), |l| l.iter().map(|a| a.as_str().unwrap().parse().unwrap()).collect())
}

/// A node namespace with moto, the proxy and vswitchd in it (a t3.small instance: 3 ENIs of 3
/// secondary addresses), its warm pool filled. Fields drop in order: vswitchd first.
struct AwsNode {
    daemon: Daemon,
    lab: Ec2Lab,
    node: Netns,
    dir: TempDir,
}

fn aws_node(prefix: &str) -> AwsNode {
    require_root();
    credentials_in_env();
    let dir = TempDir::new();
    let node = Netns::new(prefix);
    let lab = Ec2Lab::start(Some(&node.name), "t3.small", 1);
    let daemon = Daemon::start_with_config(&bins(), &node, &dir.0.join("vswitchd"), 1, &config(&lab));
    wait_for_ipam(&daemon, "the warm pool filled", Duration::from_secs(30), |v| {
        v["provider"]["warm"].as_array().is_some_and(|w| w.len() == 1)
    });
    AwsNode { daemon, lab, node, dir }
}

#[test]
fn pods_started_by_vpc_cni_get_secondary_addresses_of_the_instances_enis() {
    let AwsNode { daemon, lab, node, dir } = &aws_node("vaws");
    let view = daemon.ctl_json(&["ipam"]);
    assert_eq!(view["provider"]["provider"], "aws", "{view:#}");
    assert_eq!(view["provider"]["nic"], lab.instances[0].as_str(), "{view:#}");
    assert_eq!(view["store_reachable"], true, "DescribeSubnets through the proxy: {view:#}");

    let conf = daemon.vswitchd_ipam_conf(&dir.0);
    let pods: Vec<Netns> = (0..4).map(|_| Netns::new("vawp")).collect();
    let mut ips = Vec::new();
    for (n, pod) in pods.iter().enumerate() {
        ips.push(add(&format!("aws-pod-{n}"), pod, &conf).unwrap_or_else(|e| panic!("ADD {n}: {e:#}")));
    }
    let on_enis: BTreeSet<Ipv4Addr> = lab.secondary_of(&lab.instances[0]).iter().map(|a| a.parse().unwrap()).collect();
    for ip in &ips {
        assert!(on_enis.contains(ip), "{ip} is not a secondary address of the instance: {on_enis:?}");
    }
    assert_eq!(ips.iter().collect::<HashSet<_>>().len(), ips.len(), "an address handed out twice: {ips:?}");
    // 4 pods and a warm address on 3 secondary addresses per ENI: a second ENI.
    wait_for_ipam(daemon, "the pool refilled", Duration::from_secs(30), |v| {
        v["provider"]["warm"].as_array().is_some_and(|w| w.len() == 1)
    });
    assert_eq!(lab.enis_of(&lab.instances[0]).len(), 2, "{:#?}", lab.enis());

    // The subnet full: the pool's last address still starts a pod; the next ADD is refused with
    // code 11 (retry later) and EC2's own error, which `vswitchctl ipam` and the metrics show.
    lab.faults(json!({"capacity": 0}));
    let last = Netns::new("vawp");
    add("aws-pod-last", &last, &conf).unwrap_or_else(|e| panic!("ADD from the pool: {e:#}"));
    let full = Netns::new("vawp");
    let refused = add("aws-pod-full", &full, &conf).unwrap_err();
    assert_eq!(refused["code"], 11, "{refused:#}");
    let said = refused.to_string();
    assert!(said.contains("InsufficientFreeAddressesInSubnet"), "{refused:#}");
    let view = daemon.ctl_json(&["ipam"]);
    let errors = view["provider"]["last_errors"].to_string();
    assert!(errors.contains("InsufficientFreeAddressesInSubnet"), "{view:#}");
    let metrics = node.exec(&["curl", "-sS", "http://127.0.0.1:9477/metrics"]);
    let metrics = String::from_utf8_lossy(&metrics.stdout);
    assert!(
        metrics.lines().any(|l| l.starts_with("vswitch_ipam_provider_api_calls") && l.contains("subnet_full")),
        "{metrics}"
    );
}

#[test]
fn a_kill_9_between_the_ec2_call_and_the_answer_to_add_loses_and_duplicates_nothing() {
    let AwsNode { daemon, lab, node, dir } = &mut aws_node("vawk");
    let conf = daemon.vswitchd_ipam_conf(&dir.0);

    // A storm of 3 pods on a pool of 1: two ADDs call EC2 themselves, and EC2 is slow. vswitchd
    // dies while they wait; EC2 still assigns the addresses.
    lab.faults(json!({"latency_ms": 3000}));
    let pods: Vec<Netns> = (0..3).map(|_| Netns::new("vawq")).collect();
    std::thread::scope(|s| {
        for (n, pod) in pods.iter().enumerate() {
            let conf = &conf;
            s.spawn(move || add(&format!("storm-{n}"), pod, conf));
        }
        std::thread::sleep(Duration::from_millis(1500));
        daemon.kill9();
    });
    // The proxy answers the calls it holds after the latency: wait them out.
    std::thread::sleep(Duration::from_secs(4));
    lab.faults(json!({"latency_ms": 0}));
    let before_restart = lab.secondary_of(&lab.instances[0]);
    assert!(before_restart.len() >= 2, "EC2 assigned the storm's addresses: {before_restart:?}");

    // Back: reconcile adopts what EC2 assigned and nobody recorded; the runtime cleans up the
    // failed ADDs with DEL and retries them.
    daemon.spawn(node, 1);
    let mut ips = Vec::new();
    for (n, pod) in pods.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(30);
        let ip = loop {
            let del = run_cni(cni_command(&binary("vpc-cni"), "DEL", &format!("storm-{n}"), &pod.path()), &conf);
            assert!(del.status.success(), "DEL storm-{n}: {}", String::from_utf8_lossy(&del.stdout));
            match add(&format!("storm-{n}"), pod, &conf) {
                Ok(ip) => break ip,
                Err(e) => assert!(Instant::now() < deadline, "ADD storm-{n} after the restart: {e:#}"),
            }
            std::thread::sleep(Duration::from_millis(500));
        };
        ips.push(ip);
    }
    assert_eq!(ips.iter().collect::<HashSet<_>>().len(), 3, "an address handed out twice: {ips:?}");

    // Every secondary address of the instance is a pod's or the pool's, and every pod's is on it.
    let view = wait_for_ipam(daemon, "the pool settled", Duration::from_secs(30), |v| {
        let p = &v["provider"];
        let known: BTreeSet<Ipv4Addr> = ips
            .iter()
            .copied()
            .chain(addresses(&p["warm"]))
            .chain(addresses(&p["cooling"]))
            .chain(addresses(&p["deleting"]))
            .collect();
        let on_enis: BTreeSet<Ipv4Addr> =
            lab.secondary_of(&lab.instances[0]).iter().map(|a| a.parse().unwrap()).collect();
        known == on_enis && v["this_node"]["assigned"] == 3
    });
    eprintln!("after the kill -9: pods {ips:?}, pool {}", view["provider"]);
    // The logs say where the credentials came from, never the secret.
    let logs = daemon.logs();
    assert!(logs.contains("EC2 credentials") && logs.contains("environment"), "{logs}");
    assert!(!logs.contains("lab-secret"), "the secret key is in vswitchd's log");
}
