//! vpc-cni called exactly as a container runtime calls it (CNI_* environment, config on stdin,
//! result or error JSON on stdout), against a real vswitchd, in real namespaces. Needs root.

use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
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
            },
            "logFile": self.dir.0.join("vpc-cni.log"),
        })
    }

    fn allocations(&self) -> serde_json::Map<String, Value> {
        self.ipam_state()["allocations"].as_object().cloned().unwrap_or_default()
    }

    fn port(&self, name: &str) -> Option<Value> {
        self.daemon.ctl_json(&["ports"]).as_array().unwrap().iter().find(|p| p["name"] == name).cloned()
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
    assert!(ok && v["supportedVersions"] == json!(["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]), "{v}");
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
    old["cniVersion"] = json!("0.2.0");
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
    // STATUS: fine when up, 51 when vswitchd is down, 50 when out of addresses.
    assert!(cni_env("STATUS", &[], None, &conf).0);
    assert_eq!(code(cni_env("STATUS", &[], None, &down)), 51);
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

/// Runs the plugin with the lab's environment but `args` as CNI_ARGS.
fn cni_args(command: &str, container: &str, netns: &Path, args: &str, conf: &Value) -> (bool, Value) {
    cni_env(command, &[("CNI_CONTAINERID", container), ("CNI_IFNAME", "eth0"), ("CNI_ARGS", args)], Some(netns), conf)
}

fn code_of((ok, v): (bool, Value)) -> u64 {
    assert!(!ok, "should fail: {v}");
    v["code"].as_u64().unwrap_or_else(|| panic!("no code: {v}"))
}

fn link_field(ns: &Netns, dev: &str, field: &str) -> Value {
    let out = ns.exec(&["ip", "-j", "link", "show", dev]);
    serde_json::from_slice::<Value>(&out.stdout).unwrap()[0][field].clone()
}

#[test]
fn gc_with_both_attachment_keys_keeps_their_union() {
    let lab = lab(58);
    let conf = lab.conf("1.1.0");
    let pods: Vec<Netns> = (0..3).map(|_| Netns::new("vtp")).collect();
    for (i, ns) in pods.iter().enumerate() {
        assert!(cni("ADD", &format!("gc-{i}"), Some(&ns.path()), &conf).0);
    }
    // libcni 1.2.3+ sends both keys.
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "gc-0", "ifname": "eth0"}]);
    gc["cni.dev/attachments"] = json!([{"containerID": "gc-1", "ifname": "eth0"}]);
    let (ok, out) = cni_env("GC", &[], None, &gc);
    assert!(ok, "{out}");
    assert_eq!(lab.allocations().len(), 2);
    assert!(has_link(&pods[0], "eth0") && has_link(&pods[1], "eth0") && link_gone_soon(&pods[2], "eth0"));
    assert!(lab.port("gc-2:eth0").is_none() && lab.port("gc-0:eth0").is_some() && lab.port("gc-1:eth0").is_some());
    // GC is a 1.1.0 verb.
    let mut old = gc.clone();
    old["cniVersion"] = json!("1.0.0");
    assert_eq!(code_of(cni_env("GC", &[], None, &old)), 1);
    assert_eq!(code_of(cni_env("STATUS", &[], None, &old)), 1);
    assert_eq!(lab.allocations().len(), 2, "a refused GC removed nothing");
    for (i, ns) in pods.iter().enumerate().take(2) {
        assert!(cni("DEL", &format!("gc-{i}"), Some(&ns.path()), &conf).0);
    }
}

#[test]
fn del_and_gc_with_vswitchd_down_remove_taps_and_release_addresses() {
    let mut lab = lab(59);
    let conf = lab.conf("1.1.0");
    let pods: Vec<Netns> = (0..3).map(|_| Netns::new("vtp")).collect();
    for (i, ns) in pods.iter().enumerate() {
        assert!(cni("ADD", &format!("down-{i}"), Some(&ns.path()), &conf).0);
    }
    lab.daemon.kill9();
    // DEL never blocks the pod's removal.
    let (ok, out) = cni("DEL", "down-0", Some(&pods[0].path()), &conf);
    assert!(ok && out.is_null(), "DEL with vswitchd down: {out}");
    assert!(!has_link(&pods[0], "eth0"), "the plugin removed the TAP itself");
    assert_eq!(lab.allocations().len(), 2);
    assert!(cni("DEL", "down-0", Some(&pods[0].path()), &conf).0, "and stays idempotent");
    let log = std::fs::read_to_string(lab.dir.0.join("vpc-cni.log")).unwrap();
    assert!(log.lines().any(|l| l.contains("\"command\":\"DEL\"") && l.contains("warnings")), "{log}");
    // STATUS: not available, existing pods may have limited connectivity.
    assert_eq!(code_of(cni_env("STATUS", &[], None, &conf)), 51);
    // GC keeps going: the stale attachment's TAP (its sandbox is in the IPAM state) and address
    // go, and the error says vswitchd could not be reached.
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "down-1", "ifname": "eth0"}]);
    let (ok, err) = cni_env("GC", &[], None, &gc);
    assert!(!ok && err["code"] == 11 && err["details"].as_str().unwrap().contains("unreachable"), "{err}");
    assert!(!has_link(&pods[2], "eth0") && has_link(&pods[1], "eth0"));
    assert_eq!(lab.allocations().len(), 1);
    // A restarted vswitchd drops the ports whose TAP is gone.
    let node = &lab.node;
    lab.daemon.spawn(node, 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while lab.port("down-0:eth0").is_some() || lab.port("down-2:eth0").is_some() {
        assert!(std::time::Instant::now() < deadline, "stale ports kept: {}", lab.daemon.ctl_json(&["ports"]));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(cni("DEL", "down-1", Some(&pods[1].path()), &conf).0);
    assert!(lab.allocations().is_empty());
}

#[test]
fn environment_edges_are_refused_before_anything_happens() {
    let lab = lab(60);
    let conf = lab.conf("1.1.0");
    let pod = Netns::new("vtp");
    let run = |id: &str, ifname: &str| {
        cni_env("ADD", &[("CNI_CONTAINERID", id), ("CNI_IFNAME", ifname)], Some(&pod.path()), &conf)
    };
    for (id, ifname) in [
        ("_x", "eth0"),
        ("-x", "eth0"),
        ("x/y", "eth0"),
        ("x", "a-name-too-long!"),
        ("x", "eth:0"),
        ("x", "eth 0"),
        ("x", ".."),
        ("x", "a/b"),
    ] {
        assert_eq!(code_of(run(id, ifname)), 4, "{id:?} {ifname:?}");
    }
    assert!(!has_link(&pod, "eth0") && lab.allocations().is_empty());
    // The node's own namespace is never a pod's.
    // (/proc/1/ns/net only where this sandbox lets root stat it.)
    for node in ["/proc/self/ns/net", "/proc/1/ns/net"].into_iter().filter(|p| std::fs::metadata(p).is_ok()) {
        assert_eq!(code_of(cni("ADD", "x", Some(Path::new(node)), &conf)), 4, "ADD in {node}");
        assert_eq!(code_of(cni("DEL", "x", Some(Path::new(node)), &conf)), 4, "DEL in {node}");
    }
    assert!(lab.allocations().is_empty());
    // An interface of that name already in the namespace: refused, and left alone.
    pod.ip(&["tuntap", "add", "dev", "eth0", "mode", "tun"]); // not ours: a TUN, not a TAP
    let (ok, err) = cni("ADD", "taken", Some(&pod.path()), &conf);
    assert!(!ok && err["code"] == 101 && err["msg"].as_str().unwrap().contains("interface"), "{err}");
    assert!(has_link(&pod, "eth0"), "the existing interface was not deleted");
    assert!(lab.allocations().is_empty() && lab.port("taken:eth0").is_none());
    // A second ADD for a running pod is refused without disturbing it.
    let other = Netns::new("vtp");
    let (ok, first) = cni("ADD", "twice", Some(&other.path()), &conf);
    assert!(ok, "{first}");
    assert_eq!(code_of(cni("ADD", "twice", Some(&other.path()), &conf)), 101);
    assert!(has_link(&other, "eth0") && lab.port("twice:eth0").is_some());
    assert!(lab.allocations().contains_key(&address(&first).to_string()), "the pod kept its address");
    let mut checked = conf.clone();
    checked["prevResult"] = first;
    assert!(cni("CHECK", "twice", Some(&other.path()), &checked).0);
    assert!(cni("DEL", "twice", Some(&other.path()), &conf).0);
}

#[test]
fn capabilities_static_ip_mac_bandwidth_and_old_result_shapes() {
    let lab = lab(61);
    let conf = lab.conf("1.0.0");
    let pods: Vec<Netns> = (0..4).map(|_| Netns::new("vtp")).collect();
    let args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=shop;K8S_POD_NAME=cart-0";
    // runtimeConfig as containerd's go-cni writes it: Go field names.
    let mut caps = conf.clone();
    caps["capabilities"] = json!({"ips": true, "mac": true, "bandwidth": true});
    caps["runtimeConfig"] = json!({
        "ips": ["10.10.61.77/24"],
        "mac": "02:42:ac:11:00:77",
        "bandwidth": {"IngressRate": 10_000_000u64, "IngressBurst": 4_294_967_295u64, "EgressRate": 20_000_000u64, "EgressBurst": 3_000_000u64},
        "portMappings": [{"HostPort": 18080, "ContainerPort": 8080, "Protocol": "tcp", "HostIP": ""}],
        "io.kubernetes.cri.pod-annotations": null,
    });
    let (ok, r) = cni_args("ADD", "cap-0", &pods[0].path(), args, &caps);
    assert!(ok, "{r}");
    assert_eq!(address(&r).to_string(), "10.10.61.77");
    assert_eq!(r["interfaces"][0]["mac"], "02:42:ac:11:00:77");
    assert_eq!(link_field(&pods[0], "eth0", "address"), "02:42:ac:11:00:77");
    let port = lab.port("cap-0:eth0").unwrap();
    assert_eq!(port["mac"], "02:42:ac:11:00:77", "{port}");
    assert_eq!(port["pod"], json!({"namespace": "shop", "name": "cart-0"}));
    assert_eq!(
        port["bandwidth"],
        json!({"ingress": {"rate_bps": 10_000_000u64, "burst_bits": 1_000_000u64},
               "egress": {"rate_bps": 20_000_000u64, "burst_bits": 3_000_000u64}}),
        "{port}"
    );
    // The same address through CNI_ARGS: taken. Outside the ranges: refused. Nothing is left.
    assert_eq!(code_of(cni_args("ADD", "cap-1", &pods[1].path(), "IP=10.10.61.77", &conf)), 103);
    assert_eq!(code_of(cni_args("ADD", "cap-1", &pods[1].path(), "IP=10.10.99.1", &conf)), 7);
    assert!(!has_link(&pods[1], "eth0") && lab.allocations().len() == 1);
    let (ok, r1) = cni_args("ADD", "cap-1", &pods[1].path(), "IP=10.10.61.78;MAC=02:00:00:00:61:78", &conf);
    assert!(
        ok && address(&r1).to_string() == "10.10.61.78" && r1["interfaces"][0]["mac"] == "02:00:00:00:61:78",
        "{r1}"
    );
    // A capability vpc-cni cannot honour, declared on its own entry, is a configuration error.
    let mut wrong = conf.clone();
    wrong["capabilities"] = json!({"portMappings": true});
    let (ok, err) = cni("ADD", "cap-2", Some(&pods[2].path()), &wrong);
    assert!(!ok && err["code"] == 7 && err["msg"].as_str().unwrap().contains("portMappings"), "{err}");
    // 0.3.1 (Multus attachments): "version" per address, no interface MTU; no CHECK.
    let mut old = conf.clone();
    old["cniVersion"] = json!("0.3.1");
    let (ok, r3) = cni("ADD", "cap-3", Some(&pods[3].path()), &old);
    assert!(ok, "{r3}");
    assert_eq!((r3["cniVersion"].as_str(), r3["ips"][0]["version"].as_str()), (Some("0.3.1"), Some("4")));
    assert!(r3["interfaces"][0].get("mtu").is_none(), "{r3}");
    let mut check = old.clone();
    check["prevResult"] = r3;
    assert_eq!(code_of(cni("CHECK", "cap-3", Some(&pods[3].path()), &check)), 1);
    assert!(cni("DEL", "cap-3", Some(&pods[3].path()), &old).0);
    for (i, ns) in pods.iter().enumerate().take(2) {
        assert!(cni("DEL", &format!("cap-{i}"), Some(&ns.path()), &conf).0);
    }
    assert!(lab.allocations().is_empty());
}

#[test]
fn every_verb_is_logged_the_log_rotates_and_check_tolerates_an_mtu_change() {
    let lab = lab(62);
    let mut conf = lab.conf("1.1.0");
    let log = lab.dir.0.join("logs/vpc-cni.log");
    conf["logFile"] = json!(log);
    let pod = Netns::new("vtp");
    let (ok, r) = cni("ADD", "logged", Some(&pod.path()), &conf);
    assert!(ok, "{r}");
    // A chained plugin (tuning) changing the MTU and MAC does not fail CHECK.
    pod.ip(&["link", "set", "eth0", "mtu", "1400", "address", "02:00:00:00:00:99"]);
    let mut checked = conf.clone();
    checked["prevResult"] = r.clone();
    let (ok, out) = cni("CHECK", "logged", Some(&pod.path()), &checked);
    assert!(ok, "CHECK after an MTU change: {out}");
    assert!(cni("DEL", "logged", Some(&pod.path()), &conf).0);
    let (ok, _) = cni("CHECK", "logged", Some(&pod.path()), &checked);
    assert!(!ok, "CHECK after DEL fails");
    let lines: Vec<Value> =
        std::fs::read_to_string(&log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let commands: Vec<&str> = lines.iter().map(|l| l["command"].as_str().unwrap()).collect();
    assert_eq!(commands, ["ADD", "CHECK", "DEL", "CHECK"]);
    for line in &lines {
        assert_eq!((line["podNamespace"].as_str(), line["podName"].as_str()), (Some("default"), Some("web-0")));
        assert_eq!(line["containerID"], "logged");
        assert!(line["durationMs"].as_f64().is_some() && line["time"].is_string());
    }
    assert_eq!(lines[0]["address"], r["ips"][0]["address"].as_str().unwrap().trim_end_matches("/32"));
    assert!(lines[0]["ok"] == true && lines[3]["ok"] == false && lines[3]["code"].is_u64(), "{:?}", lines[3]);
    // Bounded: past logMaxBytes the file moves to .1.
    conf["logMaxBytes"] = json!(1000);
    for _ in 0..12 {
        cni_env("STATUS", &[], None, &conf);
    }
    let size = std::fs::metadata(&log).unwrap().len();
    let rotated = lab.dir.0.join("logs/vpc-cni.log.1");
    assert!(size <= 1000 && rotated.exists() && std::fs::metadata(&rotated).unwrap().len() <= 1000, "{size}");
    // An unwritable log never fails the verb.
    conf["logFile"] = json!("/proc/vpc-cni-cannot-log-here.log");
    assert!(cni_env("STATUS", &[], None, &conf).0);
}

#[test]
fn an_idle_ipv4_pod_sends_nothing_ipv6_is_off_on_its_interface() {
    let lab = lab(70);
    let conf = lab.conf("1.0.0");
    let pod = Netns::new("vtp");
    // The host port vsw0 is an interface of the node, whose own IPv6 chatter (router
    // solicitations, MLD) also ends up as unsupported_ethertype; silence it here so the counter
    // measures the pod.
    lab.node.exec(&["sysctl", "-qw", "net.ipv6.conf.vsw0.disable_ipv6=1"]);
    std::thread::sleep(Duration::from_millis(200));
    let before = lab.daemon.drops("unsupported_ethertype");
    let (ok, r) = cni("ADD", "ctr-quiet", Some(&pod.path()), &conf);
    assert!(ok, "{r}");
    let out = pod.exec(&["cat", "/proc/sys/net/ipv6/conf/eth0/disable_ipv6"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "1", "disable_ipv6 on the pod's eth0");
    // With IPv6 on, the pod's kernel sends MLD reports and router solicitations once eth0 is up,
    // which vswitchd drops as unsupported_ethertype.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(lab.daemon.port_counters("ctr-quiet:eth0")["rx_packets"], 0, "the idle pod sent frames");
    assert_eq!(lab.daemon.drops("unsupported_ethertype"), before, "non-IPv4 frames while idle");
    assert!(cni("DEL", "ctr-quiet", Some(&pod.path()), &conf).0);
}

impl Lab {
    /// `conf` with an IPv6 range of this lab's own next to the IPv4 one (`keep_ipv4`) or instead.
    fn conf_ipv6(&self, version: &str, keep_ipv4: bool) -> Value {
        let mut conf = self.conf(version);
        let ranges = conf["ipam"]["ranges"].as_array_mut().unwrap();
        if !keep_ipv4 {
            ranges.clear();
        }
        let (start, end) = (format!("fd00:10:{}::10", self.subnet), format!("fd00:10:{}::ffff:ffff", self.subnet));
        ranges.push(json!({"rangeStart": start, "rangeEnd": end}));
        conf
    }
}

/// `ip -j` output of a command run in `ns`.
fn ip_json(ns: &Netns, args: &[&str]) -> Vec<Value> {
    let mut full = vec!["ip", "-j"];
    full.extend_from_slice(args);
    let out = ns.exec(&full);
    assert!(out.status.success(), "{full:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Value>(&out.stdout).unwrap().as_array().cloned().unwrap_or_default()
}

fn sysctl(ns: &Netns, key: &str) -> String {
    let out = ns.exec(&["cat", &format!("/proc/sys/net/ipv6/conf/eth0/{key}")]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The IPv6 address in an ADD result.
fn address6(result: &Value) -> Ipv6Addr {
    let entry = result["ips"].as_array().unwrap().iter().find(|e| e["address"].as_str().unwrap().contains(':'));
    entry.unwrap()["address"].as_str().unwrap().trim_end_matches("/128").parse().unwrap()
}

/// The IPv6 gateway of the lab's configuration: the default gateway MAC's link-local address.
fn gateway6() -> String {
    vswitch_api::MacAddr::local_from([169, 254, 1, 1]).link_local().to_string()
}

/// What ADD promises about a pod's IPv6 once it returns: its /128 and its EUI-64 link-local
/// address both past DAD (not tentative), router advertisements, SLAAC and redirects off, and
/// the default route via the gateway MAC's link-local address, which has a permanent neighbour
/// entry; the result and vswitchd's port say the same.
fn assert_ipv6_ready(lab: &Lab, pod: &Netns, container: &str, result: &Value) {
    let ip6 = address6(result);
    let mac: vswitch_api::MacAddr = result["interfaces"][0]["mac"].as_str().unwrap().parse().unwrap();
    let addresses = ip_json(pod, &["-6", "addr", "show", "dev", "eth0"]);
    let info = addresses[0]["addr_info"].as_array().unwrap();
    for (local, prefix) in [(ip6.to_string(), 128), (mac.link_local().to_string(), 64)] {
        let entry = info.iter().find(|a| a["local"] == local).unwrap_or_else(|| panic!("no {local}: {info:?}"));
        assert_eq!(entry["prefixlen"], prefix, "{entry}");
        assert!(entry.get("tentative").is_none() && entry.get("dadfailed").is_none(), "not usable yet: {entry}");
    }
    for (key, value) in [("accept_ra", "0"), ("autoconf", "0"), ("accept_redirects", "0"), ("addr_gen_mode", "0")] {
        assert_eq!(sysctl(pod, key), value, "net.ipv6.conf.eth0.{key}");
    }
    let routes = ip_json(pod, &["-6", "route", "show", "default"]);
    assert_eq!(routes.len(), 1, "{routes:?}");
    assert_eq!((routes[0]["gateway"].as_str(), routes[0]["dev"].as_str()), (Some(gateway6().as_str()), Some("eth0")));
    let neighbours = ip_json(pod, &["-6", "neigh", "show", "dev", "eth0"]);
    let gateway = neighbours.iter().find(|n| n["dst"] == gateway6().as_str()).expect("gateway neighbour");
    assert_eq!((gateway["lladdr"].as_str(), &gateway["state"]), (Some("02:00:a9:fe:01:01"), &json!(["PERMANENT"])));
    assert!(result["routes"].as_array().unwrap().contains(&json!({"dst": "::/0", "gw": gateway6()})), "{result}");
    let port = lab.port(&format!("{container}:eth0")).unwrap();
    assert_eq!(port["ipv6"], ip6.to_string(), "vswitchd's port: {port}");
}

#[test]
fn a_dual_stack_pod_gets_both_families_ready_when_add_returns_and_check_gc_del_cover_both() {
    let lab = lab(63);
    let conf = lab.conf_ipv6("1.1.0", true);
    let (a, b) = (Netns::new("vtp"), Netns::new("vtp"));
    let (ok, ra) = cni("ADD", "dual-a", Some(&a.path()), &conf);
    assert!(ok, "{ra}");
    assert_eq!(ra["ips"].as_array().unwrap().len(), 2, "{ra}");
    assert_eq!(ra["ips"][0]["gateway"], "169.254.1.1");
    assert_eq!(
        ra["ips"][1],
        json!({"address": format!("{}/128", address6(&ra)), "gateway": gateway6(), "interface": 0})
    );
    assert_eq!(address6(&ra).to_string(), "fd00:10:63::10");
    assert_ipv6_ready(&lab, &a, "dual-a", &ra);
    // IPv4 works as before, and the port has both addresses.
    let ip4 = address(&ra).to_string();
    assert_eq!(lab.port("dual-a:eth0").unwrap()["ip"], ip4);
    assert!(a.exec(&["ping", "-c", "2", "-i", "0.2", "-W", "1", "10.10.0.5"]).status.success(), "pod to node");

    let mut checked = conf.clone();
    checked["prevResult"] = ra.clone();
    let check = || cni("CHECK", "dual-a", Some(&a.path()), &checked);
    assert!(check().0, "CHECK after ADD: {}", check().1);
    // CHECK notices the IPv6 default route gone ...
    a.ip(&["-6", "route", "del", "default"]);
    let (ok, err) = check();
    assert!(!ok && err["code"].as_u64().unwrap() >= 100 && err["details"].as_str().unwrap().contains("::"), "{err}");
    a.ip(&["-6", "route", "add", "default", "via", &gateway6(), "dev", "eth0"]);
    assert!(check().0);
    // ... the gateway's neighbour entry pointing elsewhere ...
    let neigh =
        |mac: &str| a.ip(&["-6", "neigh", "replace", &gateway6(), "lladdr", mac, "dev", "eth0", "nud", "permanent"]);
    neigh("02:00:00:00:00:01");
    let (ok, err) = check();
    assert!(!ok && err["details"].as_str().unwrap().contains("neighbour"), "{err}");
    neigh("02:00:a9:fe:01:01");
    assert!(check().0);
    // ... and router advertisements accepted again.
    a.exec(&["sysctl", "-qw", "net.ipv6.conf.eth0.accept_ra=1"]);
    let (ok, err) = check();
    assert!(!ok && err["details"].as_str().unwrap().contains("accept_ra"), "{err}");

    // GC releases both families of a stale attachment.
    let (ok, rb) = cni("ADD", "dual-b", Some(&b.path()), &conf);
    assert!(ok, "{rb}");
    assert_eq!(lab.allocations().len(), 4);
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "dual-a", "ifname": "eth0"}]);
    assert!(cni_env("GC", &[], None, &gc).0);
    let mut left: Vec<String> = lab.allocations().keys().cloned().collect();
    left.sort();
    assert_eq!(left, [ip4.clone(), address6(&ra).to_string()]);
    assert!(link_gone_soon(&b, "eth0") && lab.port("dual-b:eth0").is_none());

    // DEL releases both.
    assert!(cni("DEL", "dual-a", Some(&a.path()), &conf).0);
    assert!(link_gone_soon(&a, "eth0") && lab.port("dual-a:eth0").is_none());
    assert!(lab.allocations().is_empty());
    let released = lab.ipam_state()["released"].clone();
    assert!(released.get(&ip4).is_some() && released.get(address6(&ra).to_string()).is_some(), "{released}");
}

#[test]
fn an_ipv6_only_pod_has_no_ipv4_and_a_mac_from_its_ipv6_address() {
    let lab = lab(64);
    let conf = lab.conf_ipv6("1.0.0", false);
    let pod = Netns::new("vtp");
    let (ok, r) = cni("ADD", "v6-only", Some(&pod.path()), &conf);
    assert!(ok, "{r}");
    assert_eq!(r["ips"].as_array().unwrap().len(), 1, "{r}");
    assert_eq!(r["routes"], json!([{"dst": "::/0", "gw": gateway6()}]));
    let ip6 = address6(&r);
    let tail = &ip6.octets()[12..];
    let mac = format!("02:00:{:02x}:{:02x}:{:02x}:{:02x}", tail[0], tail[1], tail[2], tail[3]);
    assert_eq!(
        (r["interfaces"][0]["mac"].as_str(), link_field(&pod, "eth0", "address").as_str()),
        (Some(&*mac), Some(&*mac))
    );
    assert_ipv6_ready(&lab, &pod, "v6-only", &r);
    assert!(ip_json(&pod, &["-4", "addr", "show", "dev", "eth0"]).iter().all(|l| l["addr_info"] == json!([])));
    assert!(ip_json(&pod, &["-4", "route", "show"]).is_empty(), "no IPv4 routes");
    assert!(ip_json(&pod, &["-4", "neigh", "show", "dev", "eth0"]).is_empty(), "no IPv4 neighbours");
    assert!(lab.port("v6-only:eth0").unwrap().get("ip").is_none());
    let mut checked = conf.clone();
    checked["prevResult"] = r.clone();
    let (ok, out) = cni("CHECK", "v6-only", Some(&pod.path()), &checked);
    assert!(ok, "{out}");
    assert!(cni("DEL", "v6-only", Some(&pod.path()), &conf).0);
    assert!(link_gone_soon(&pod, "eth0") && lab.allocations().is_empty());
}

/// `podnet::settle` on its own, over a veth pair: DAD failing (the other end has the address
/// already) is an error at once, naming it; an address that stays tentative (no carrier) is one
/// after the timeout; a pair that is up settles in about one DAD round.
#[test]
fn settle_reports_dad_failure_and_gives_up_on_a_link_that_never_settles() {
    require_root();
    let (a, b) = (Netns::new("vtd"), Netns::new("vtd"));
    a.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "eth1", "netns", &b.name]);
    b.ip(&["link", "set", "eth1", "up"]);
    b.ip(&["addr", "add", "fd00:99::1/128", "dev", "eth1", "nodad"]);
    for ns in [&a, &b] {
        ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.router_solicitation_delay=0"]);
    }
    a.ip(&["link", "set", "eth0", "up"]);
    let wanted: Ipv6Addr = "fd00:99::2".parse().unwrap();
    a.ip(&["addr", "add", "fd00:99::2/128", "dev", "eth0"]);
    let started = std::time::Instant::now();
    cni::podnet::settle(&a.path(), "eth0", &[wanted], Duration::from_secs(10)).unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());

    a.ip(&["addr", "add", "fd00:99::1/128", "dev", "eth0"]);
    let started = std::time::Instant::now();
    let err = cni::podnet::settle(&a.path(), "eth0", &["fd00:99::1".parse().unwrap()], Duration::from_secs(10))
        .unwrap_err()
        .to_string();
    assert!(err.contains("duplicate address detection failed for fd00:99::1"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(5), "DAD failure is reported at once");

    b.ip(&["link", "set", "eth1", "down"]); // no carrier on eth0: DAD never runs
    a.ip(&["addr", "add", "fd00:99::3/128", "dev", "eth0"]);
    let err = cni::podnet::settle(&a.path(), "eth0", &["fd00:99::3".parse().unwrap()], Duration::from_secs(1))
        .unwrap_err()
        .to_string();
    assert!(err.contains("not usable after 1 s") && err.contains("fd00:99::3 (tentative)"), "{err}");
}
