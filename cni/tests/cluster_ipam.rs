//! vpc-cni with `"ipam": {"type": "vswitchd"}`: addresses come from vswitchd's cluster IPAM (here
//! with its node-local file store; the etcd cluster is exercised in vswitch/tests/ipam_etcd/
//! and the lab). Called as a runtime calls it, in real namespaces. Needs root.

use std::net::Ipv4Addr;
use std::path::Path;

use serde_json::{json, Value};
use vpc_lab::netns::{cni_command, require_root, run_cni, Binaries, Daemon, Netns, TempDir};

const CNI: &str = env!("CARGO_BIN_EXE_vpc-cni");

fn daemon(node: &Netns, dir: &TempDir, pool: &str) -> Daemon {
    let config = format!(
        "[ipam]\nnode_name = \"node-a\"\npools = [\"{pool}\"]\nwarm_target = 2\nwarm_max = 4\nsticky = [\"db/*\"]\n"
    );
    Daemon::start_with_config(&Binaries::beside_current_exe(), node, &dir.0, 1, &config)
}

/// Runs the plugin as a runtime does (no CNI_NETNS for GC and STATUS), with the pod's name in
/// CNI_ARGS; returns (success, stdout JSON or Null).
fn cni(command: &str, container: &str, pod: &str, netns: Option<&Path>, conf: &Value) -> (bool, Value) {
    let mut cmd = cni_command(Path::new(CNI), command, container, netns.unwrap_or(Path::new("")));
    if netns.is_none() {
        cmd.env_remove("CNI_NETNS");
    }
    let (namespace, name) = pod.split_once('/').expect("NAMESPACE/NAME");
    cmd.env("CNI_ARGS", format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}"));
    let out = run_cni(cmd, conf);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let value = if stdout.trim().is_empty() { Value::Null } else { serde_json::from_str(&stdout).unwrap() };
    (out.status.success(), value)
}

fn address(result: &Value) -> Ipv4Addr {
    result["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().parse().unwrap()
}

fn assigned(daemon: &Daemon) -> Vec<(String, String)> {
    let view = daemon.ctl_json(&["ipam"]);
    view["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|n| n["assigned"].as_array().unwrap().clone())
        .map(|a| {
            (
                a["ip"].as_str().unwrap().to_string(),
                format!(
                    "{}/{}",
                    a["pod"]["namespace"].as_str().unwrap_or("-"),
                    a["pod"]["name"].as_str().unwrap_or("-")
                ),
            )
        })
        .collect()
}

/// Waits for the daemon's upkeep (1 s rounds) to write its changes to the store.
fn synced(daemon: &Daemon) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while daemon.ctl_json(&["ipam"])["this_node"]["pending_sync"] != 0 {
        assert!(std::time::Instant::now() < deadline, "vswitchd did not sync its IPAM changes");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

#[test]
fn pods_get_addresses_from_vswitchd_and_give_them_back() {
    require_root();
    let dir = TempDir::new();
    let node = Netns::new("vcn");
    let daemon = daemon(&node, &dir, "10.61.0.0/28");
    let conf = daemon.vswitchd_ipam_conf(&dir.0);
    let (a, b) = (Netns::new("vcp"), Netns::new("vcp"));
    let (ok, ra) = cni("ADD", "ctr-a", "default/web-0", Some(&a.path()), &conf);
    assert!(ok, "{ra}");
    let (ok, rb) = cni("ADD", "ctr-b", "db/pg-0", Some(&b.path()), &conf);
    assert!(ok, "{rb}");
    let (ip_a, ip_b) = (address(&ra), address(&rb));
    assert_ne!(ip_a, ip_b);
    assert!(ip_a.octets()[..3] == [10, 61, 0] && ip_b.octets()[..3] == [10, 61, 0], "{ip_a} {ip_b}");
    assert!(a.exec(&["ping", "-c", "2", "-i", "0.2", "-W", "1", &ip_b.to_string()]).status.success(), "pod to pod");
    synced(&daemon);
    let mut held = assigned(&daemon);
    held.sort();
    let mut expected = vec![(ip_a.to_string(), "default/web-0".to_string()), (ip_b.to_string(), "db/pg-0".to_string())];
    expected.sort();
    assert_eq!(held, expected, "vswitchctl ipam names every pod");

    // A repeated ADD for the same container is refused (its eth0 exists), and keeps the address.
    assert!(!cni("ADD", "ctr-a", "default/web-0", Some(&a.path()), &conf).0);
    let mut checked = conf.clone();
    checked["prevResult"] = ra.clone();
    assert!(cni("CHECK", "ctr-a", "default/web-0", Some(&a.path()), &checked).0, "CHECK");

    // DEL: the address cools down cluster-wide; the sticky pod's is held for it.
    assert!(cni("DEL", "ctr-a", "default/web-0", Some(&a.path()), &conf).0);
    assert!(cni("DEL", "ctr-a", "default/web-0", Some(&a.path()), &conf).0, "a second DEL is fine");
    assert!(cni("DEL", "ctr-b", "db/pg-0", Some(&b.path()), &conf).0);
    synced(&daemon);
    let view = daemon.ctl_json(&["ipam"]);
    assert_eq!(view["cooling"][0]["ip"], ip_a.to_string(), "{view}");
    assert_eq!(view["sticky"][0]["ip"], ip_b.to_string(), "{view}");
    assert_eq!(view["sticky"][0]["pod"]["name"], "pg-0", "{view}");
    // The sticky pod comes back: same address.
    let b2 = Netns::new("vcp");
    let (ok, rb2) = cni("ADD", "ctr-b2", "db/pg-0", Some(&b2.path()), &conf);
    assert!(ok, "{rb2}");
    assert_eq!(address(&rb2), ip_b, "the sticky pod keeps its address");

    // GC keeps only what the runtime lists: ctr-b2 goes, port and address.
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    assert!(cni("GC", "", "x/y", None, &gc).0);
    assert!(daemon.ctl_json(&["ports"]).as_array().unwrap().iter().all(|p| p["name"] != "ctr-b2:eth0"));
    synced(&daemon);
    assert!(assigned(&daemon).is_empty());
    assert!(cni("STATUS", "", "x/y", None, &conf).0);
}

#[test]
fn cluster_ipam_errors_carry_the_right_cni_codes() {
    require_root();
    let dir = TempDir::new();
    let node = Netns::new("vcn");
    // Six usable addresses.
    let daemon = daemon(&node, &dir, "10.62.0.0/29");
    let conf = daemon.vswitchd_ipam_conf(&dir.0);
    let pods: Vec<Netns> = (0..7).map(|_| Netns::new("vcp")).collect();
    for (i, pod) in pods.iter().enumerate().take(6) {
        let (ok, r) = cni("ADD", &format!("c{i}"), &format!("default/p{i}"), Some(&pod.path()), &conf);
        assert!(ok, "{r}");
    }
    let (ok, r) = cni("ADD", "c6", "default/p6", Some(&pods[6].path()), &conf);
    assert!(!ok);
    assert_eq!(r["code"], 100, "pool exhausted: {r}");
    assert!(!pods[6].exec(&["ip", "link", "show", "eth0"]).status.success(), "nothing left behind");

    // Ranges with type vswitchd: a configuration error.
    let mut wrong = conf.clone();
    wrong["ipam"]["ranges"] = json!([{"rangeStart": "10.62.0.1", "rangeEnd": "10.62.0.2"}]);
    assert_eq!(cni("ADD", "cx", "default/x", Some(&pods[6].path()), &wrong).1["code"], 7);

    // A vswitchd without [ipam]: invalid configuration, not a retry.
    let plain_dir = TempDir::new();
    let plain_node = Netns::new("vcn");
    let plain = Daemon::start(&Binaries::beside_current_exe(), &plain_node, &plain_dir.0, 1);
    let r = cni("ADD", "cy", "default/y", Some(&pods[6].path()), &plain.vswitchd_ipam_conf(&plain_dir.0)).1;
    assert_eq!(r["code"], 7, "{r}");

    // vswitchd down: ADD is 11; DEL still removes the pod's interface and succeeds.
    drop(daemon);
    let (ok, r) = cni("ADD", "cz", "default/z", Some(&pods[6].path()), &conf);
    assert!(!ok && r["code"] == 11, "{r}");
    let (ok, r) = cni("DEL", "c0", "default/p0", Some(&pods[0].path()), &conf);
    assert!(ok, "{r}");
    assert!(!pods[0].exec(&["ip", "link", "show", "eth0"]).status.success());
}
