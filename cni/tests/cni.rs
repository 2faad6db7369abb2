//! vpc-cni called exactly as a container runtime calls it (CNI_* environment, config on stdin,
//! result or error JSON on stdout), against a real vswitchd, in real namespaces. Needs root.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};
use vpc_lab::netns::{cni_command, require_root, run_cni, Binaries, Daemon, Netns, TempDir};

const CNI: &str = env!("CARGO_BIN_EXE_vpc-cni");

struct Lab {
    daemon: Daemon,
    node: Netns,
    dir: TempDir,
    subnet: u8,
}

fn lab(subnet: u8) -> Lab {
    require_root();
    let dir = TempDir::new();
    let node = Netns::new("vtn");
    node.ip(&["addr", "add", "10.10.0.5/32", "dev", "lo"]);
    let daemon = Daemon::start(&Binaries::beside_current_exe(), &node, &dir.0, 1);
    Lab { daemon, node, dir, subnet }
}

impl Lab {
    fn conf(&self, version: &str) -> Value {
        json!({
            "cniVersion": version,
            "name": "vpc",
            "type": "vpc-cni",
            "vswitchSocket": self.daemon.socket,
            "mtu": 1500,
            "dns": {"nameservers": ["10.96.0.10"]},
            "ipam": {
                "ranges": [{"rangeStart": format!("10.10.{}.10", self.subnet), "rangeEnd": format!("10.10.{}.250", self.subnet)}],
                "dataDir": self.dir.0.join("ipam"),
            }
        })
    }

    fn ipam_state(&self) -> Value {
        std::fs::read(self.dir.0.join("ipam/vpc/state.json")).map_or(json!({}), |b| serde_json::from_slice(&b).unwrap())
    }
}

/// Runs the plugin like containerd does; returns (success, stdout JSON or Null).
fn cni(command: &str, container: &str, netns: Option<&Path>, conf: &Value) -> (bool, Value) {
    cni_env(command, &[("CNI_CONTAINERID", container), ("CNI_IFNAME", "eth0")], netns, conf)
}

fn cni_env(command: &str, vars: &[(&str, &str)], netns: Option<&Path>, conf: &Value) -> (bool, Value) {
    let mut cmd = Command::new(CNI);
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_PATH", "/opt/cni/bin:/usr/lib/cni")
        .env("CNI_ARGS", "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0")
        .envs(vars.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    if let Some(ns) = netns {
        cmd.env("CNI_NETNS", ns);
    }
    let mut child = cmd.spawn().expect("run vpc-cni");
    child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let value = if stdout.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
    };
    (out.status.success(), value)
}

fn address(result: &Value) -> Ipv4Addr {
    result["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().parse().unwrap()
}

fn has_link(ns: &Netns, name: &str) -> bool {
    ns.exec(&["ip", "link", "show", name]).status.success()
}

/// vswitchd deletes a detached pod's TAP right after answering DEL; give it a moment.
fn link_gone_soon(ns: &Netns, name: &str) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while has_link(ns, name) {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

#[test]
fn add_check_del_cycles_and_a_second_del() {
    let lab = lab(51);
    let (a, b) = (Netns::new("vtp"), Netns::new("vtp"));
    let conf = lab.conf("1.1.0");
    let (ok, ra) = cni("ADD", "ctr-a", Some(&a.path()), &conf);
    assert!(ok, "{ra}");
    let (ok, rb) = cni("ADD", "ctr-b", Some(&b.path()), &conf);
    assert!(ok, "{rb}");
    assert_eq!(ra["cniVersion"], "1.1.0");
    assert_eq!(ra["interfaces"][0]["sandbox"], a.path().display().to_string());
    assert_eq!(ra["routes"][0]["gw"], "169.254.1.1");
    assert_eq!(ra["dns"]["nameservers"][0], "10.96.0.10");
    let (ip_a, ip_b) = (address(&ra), address(&rb));
    assert_ne!(ip_a, ip_b);

    // The pods can talk, to each other and to the node.
    assert!(a.exec(&["ping", "-c", "2", "-i", "0.2", "-W", "1", &ip_b.to_string()]).status.success(), "pod to pod");
    assert!(a.exec(&["ping", "-c", "2", "-i", "0.2", "-W", "1", "10.10.0.5"]).status.success(), "pod to node");

    let mut checked = conf.clone();
    checked["prevResult"] = ra.clone();
    assert!(cni("CHECK", "ctr-a", Some(&a.path()), &checked).0, "CHECK after ADD");
    // CHECK notices a broken pod: its default route removed.
    a.ip(&["route", "del", "default"]);
    let (ok, err) = cni("CHECK", "ctr-a", Some(&a.path()), &checked);
    assert!(!ok && err["code"].as_u64().unwrap() >= 100, "{err}");

    assert!(cni("DEL", "ctr-a", Some(&a.path()), &conf).0);
    assert!(link_gone_soon(&a, "eth0"), "DEL removed the TAP");
    assert!(lab.daemon.ctl_json(&["ports"]).as_array().unwrap().iter().all(|p| p["name"] != "ctr-a:eth0"));
    assert!(!lab.ipam_state()["allocations"].as_object().unwrap().contains_key(&ip_a.to_string()));
    let (ok, out) = cni("DEL", "ctr-a", Some(&a.path()), &conf);
    assert!(ok && out.is_null(), "a second DEL succeeds quietly: {out}");
    // The released address is held back; a new pod gets another one.
    let c = Netns::new("vtp");
    let (ok, rc) = cni("ADD", "ctr-c", Some(&c.path()), &conf);
    assert!(ok && address(&rc) != ip_a, "{rc}");
    for (id, ns) in [("ctr-b", &b), ("ctr-c", &c)] {
        assert!(cni("DEL", id, Some(&ns.path()), &conf).0);
    }
    let _ = &lab.node;
}

#[test]
fn del_after_the_namespace_is_gone_still_releases_port_and_address() {
    let lab = lab(52);
    let conf = lab.conf("1.0.0");
    let pod = Netns::new("vtp");
    let path = pod.path();
    let (ok, r) = cni("ADD", "ctr-gone", Some(&path), &conf);
    assert!(ok, "{r}");
    drop(pod); // the runtime deleted the sandbox first
    assert!(cni("DEL", "ctr-gone", Some(&path), &conf).0, "DEL with a stale netns path");
    assert!(cni("DEL", "ctr-gone", None, &conf).0, "DEL without CNI_NETNS");
    assert!(lab.daemon.ctl_json(&["ports"]).as_array().unwrap().len() == 1, "only the host port is left");
    assert!(lab.ipam_state()["allocations"].as_object().unwrap().is_empty());
}

#[test]
fn fifty_concurrent_adds_give_fifty_distinct_working_addresses() {
    let lab = lab(53);
    let conf = lab.conf("1.1.0");
    let pods: Vec<Netns> = (0..50).map(|_| Netns::new("vtp")).collect();
    let results: Vec<(bool, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                let conf = &conf;
                s.spawn(move || cni("ADD", &format!("ctr-{i}"), Some(&ns.path()), conf))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut addresses: Vec<Ipv4Addr> = results
        .iter()
        .map(|(ok, r)| {
            assert!(ok, "{r}");
            address(r)
        })
        .collect();
    addresses.sort();
    addresses.dedup();
    assert_eq!(addresses.len(), 50);
    // Every one works: each pod pings the next.
    let failures: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = pods
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                let to = address(&results[(i + 1) % 50].1).to_string();
                s.spawn(move || (ns.exec(&["ping", "-c", "1", "-W", "2", &to]).status.success(), to))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).filter(|(ok, _)| !ok).map(|(_, to)| to).collect()
    });
    assert!(failures.is_empty(), "unreachable: {failures:?}");
    for (i, ns) in pods.iter().enumerate() {
        assert!(cni("DEL", &format!("ctr-{i}"), Some(&ns.path()), &conf).0);
    }
    assert!(lab.ipam_state()["allocations"].as_object().unwrap().is_empty());
}

#[test]
fn kill_9_during_add_leaves_nothing_once_del_has_run() {
    let lab = lab(54);
    let conf = lab.conf("1.1.0");
    for (i, delay_ms) in [0u64, 2, 5, 10, 20, 40].into_iter().enumerate() {
        let pod = Netns::new("vtp");
        let id = format!("ctr-kill-{i}");
        let mut child = cni_command(Path::new(CNI), "ADD", &id, &pod.path()).stdout(Stdio::null()).spawn().unwrap();
        child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        let _ = child.kill();
        let _ = child.wait();
        assert!(cni("DEL", &id, Some(&pod.path()), &conf).0, "DEL after a killed ADD ({delay_ms} ms)");
        assert!(link_gone_soon(&pod, "eth0"), "TAP left behind ({delay_ms} ms)");
        let ports = lab.daemon.ctl_json(&["ports"]);
        assert!(
            ports.as_array().unwrap().iter().all(|p| p["name"] != format!("{id}:eth0")),
            "port left behind: {ports}"
        );
        assert!(
            lab.ipam_state()["allocations"].as_object().is_none_or(|a| a.is_empty()),
            "address left behind ({delay_ms} ms)"
        );
    }
}

#[test]
fn bad_input_gets_the_specs_error_codes() {
    let lab = lab(55);
    let conf = lab.conf("1.1.0");
    let pod = Netns::new("vtp");
    let code = |(ok, v): (bool, Value)| {
        assert!(!ok, "should fail: {v}");
        v["code"].as_u64().unwrap()
    };
    // VERSION.
    let (ok, v) = cni_env("VERSION", &[], None, &json!({"cniVersion": "1.0.0"}));
    assert!(ok && v["supportedVersions"] == json!(["0.4.0", "1.0.0", "1.1.0"]), "{v}");
    // Environment.
    assert_eq!(code(cni_env("ADD", &[("CNI_IFNAME", "eth0")], Some(&pod.path()), &conf)), 4, "no container id");
    assert_eq!(code(cni_env("FROB", &[], None, &conf)), 4);
    let (ok, v) = {
        let mut cmd = Command::new(CNI);
        cmd.env_clear()
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", "x")
            .env("CNI_IFNAME", "eth0")
            .env("CNI_NETNS", pod.path())
            .env("CNI_PATH", "/x")
            .env("CNI_ARGS", "FOO=bar");
        let out = cmd.stdin(Stdio::null()).output().unwrap();
        (out.status.success(), serde_json::from_slice::<Value>(&out.stdout).unwrap())
    };
    assert!(!ok && v["code"] == 4, "unknown CNI_ARGS key: {v}");
    // Configuration.
    let mut cmd = Command::new(CNI);
    let out = cmd
        .env_clear()
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "x")
        .env("CNI_IFNAME", "eth0")
        .env("CNI_NETNS", pod.path())
        .env("CNI_PATH", "/x")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(b"{not json")?;
            c.wait_with_output()
        })
        .unwrap();
    assert_eq!(serde_json::from_slice::<Value>(&out.stdout).unwrap()["code"], 6);
    let mut old = conf.clone();
    old["cniVersion"] = json!("0.3.1");
    assert_eq!(code(cni("ADD", "x", Some(&pod.path()), &old)), 1);
    let mut wrong = conf.clone();
    wrong["ipam"]["ranges"] = json!([]);
    assert_eq!(code(cni("ADD", "x", Some(&pod.path()), &wrong)), 7);
    // A namespace that does not exist.
    assert_eq!(code(cni("ADD", "x", Some(Path::new("/run/netns/does-not-exist")), &conf)), 3);
    // vswitchd unreachable: try again later, and nothing was allocated or created.
    let mut down = conf.clone();
    down["vswitchSocket"] = json!(lab.dir.0.join("nobody-here.sock"));
    assert_eq!(code(cni("ADD", "x", Some(&pod.path()), &down)), 11);
    assert!(!has_link(&pod, "eth0"));
    assert!(lab.ipam_state()["allocations"].as_object().is_none_or(|a| a.is_empty()));
    // STATUS: fine when up, 50 when down or out of addresses.
    assert!(cni_env("STATUS", &[], None, &conf).0);
    assert_eq!(code(cni_env("STATUS", &[], None, &down)), 50);
    let mut tiny = conf.clone();
    tiny["ipam"]["ranges"] = json!([{"rangeStart": "10.10.55.200", "rangeEnd": "10.10.55.200"}]);
    tiny["name"] = json!("tiny");
    assert!(cni("ADD", "only", Some(&pod.path()), &tiny).0);
    assert_eq!(code(cni_env("STATUS", &[], None, &tiny)), 50);
    let other = Netns::new("vtp");
    assert_eq!(code(cni("ADD", "second", Some(&other.path()), &tiny)), 100, "pool exhausted");
    assert!(!has_link(&other, "eth0"), "the failed ADD was rolled back");
    assert!(cni("DEL", "only", Some(&pod.path()), &tiny).0);
}

#[test]
fn gc_removes_every_attachment_not_in_the_valid_list() {
    let lab = lab(56);
    let conf = lab.conf("1.1.0");
    let pods: Vec<Netns> = (0..3).map(|_| Netns::new("vtp")).collect();
    for (i, ns) in pods.iter().enumerate() {
        assert!(cni("ADD", &format!("gc-{i}"), Some(&ns.path()), &conf).0);
    }
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "gc-1", "ifname": "eth0"}]);
    assert!(cni_env("GC", &[], None, &gc).0);
    let allocations = lab.ipam_state()["allocations"].clone();
    assert_eq!(allocations.as_object().unwrap().len(), 1, "{allocations}");
    assert!(link_gone_soon(&pods[0], "eth0") && has_link(&pods[1], "eth0") && link_gone_soon(&pods[2], "eth0"));
    let names: Vec<String> = lab
        .daemon
        .ctl_json(&["ports"])
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, ["vsw0", "gc-1:eth0"]);
    // The other spelling of the key works too.
    let mut gc = conf.clone();
    gc["cni.dev/attachments"] = json!([]);
    assert!(cni_env("GC", &[], None, &gc).0);
    assert!(lab.ipam_state()["allocations"].as_object().unwrap().is_empty());
}

#[test]
fn a_chained_reference_plugin_runs_after_vpc_cni() {
    let lab = lab(57);
    let tuning = PathBuf::from("/usr/lib/cni/tuning");
    assert!(tuning.exists(), "needs Debian's containernetworking-plugins (tests/run.sh installs it)");
    let pod = Netns::new("vtp");
    // The conflist the runtime would run: vpc-cni, then tuning with vpc-cni's result.
    let conf = lab.conf("1.0.0");
    let (ok, result) = cni("ADD", "chain", Some(&pod.path()), &conf);
    assert!(ok, "{result}");
    let tuning_conf = json!({"cniVersion": "1.0.0", "name": "vpc", "type": "tuning",
        "sysctl": {"net.ipv4.conf.eth0.rp_filter": "2"}, "prevResult": result});
    let run_tuning = |command: &str| run_cni(cni_command(&tuning, command, "chain", &pod.path()), &tuning_conf);
    let out = run_tuning("ADD");
    assert!(out.status.success(), "tuning ADD: {}", String::from_utf8_lossy(&out.stdout));
    let chained: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(chained["ips"], result["ips"], "the chain keeps vpc-cni's addresses");
    let sysctl = pod.exec(&["cat", "/proc/sys/net/ipv4/conf/eth0/rp_filter"]);
    assert_eq!(String::from_utf8_lossy(&sysctl.stdout).trim(), "2");
    assert!(run_tuning("DEL").status.success());
    assert!(cni("DEL", "chain", Some(&pod.path()), &conf).0);
}
