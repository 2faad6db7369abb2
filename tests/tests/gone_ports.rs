//! A pod whose runtime never sends DEL (issue 24, item 4): containerd 1.6's `ctr run --cni`
//! (Debian's) sets the container up through vpc-cni but removes its task without a CNI DEL. The
//! port's namespace vanishes; vswitchd shows the port `gone`, removes it after
//! `gone_port_timeout_seconds`, gives its address back through the cluster IPAM's reuse delay,
//! counts it and logs it at warn; a DEL that comes late still succeeds.
//!
//! The node is a network namespace with vswitchd (cluster IPAM on the single-node file store) and
//! a containerd of its own whose /etc/cni/net.d and /opt/cni/bin are the node's alone: `ctr run
//! --cni` reads those fixed paths, so it runs in containerd's mount namespace. Needs root and
//! containerd; fails (never skips) without them (tests/install-deps.sh installs them).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vpc_lab::containerd::{require_containerd, CniPlugin, Containerd, K8S_NAMESPACE, SANDBOX_IMAGE};
use vpc_lab::netns::{binary, cni_command, run_cni, unique, Binaries, Daemon, Netns, TempDir};

/// Short, so the test waits seconds, not the default five minutes.
const GONE_TIMEOUT: Duration = Duration::from_secs(3);
const POOL: &str = "10.10.72.0/24";

/// `ctr -n k8s.io ARGS` against `containerd`, in the node's network and mount namespaces.
fn ctr(node: &Netns, containerd: &Containerd, args: &[&str]) -> Output {
    Command::new("nsenter")
        .arg(format!("--net={}", node.path().display()))
        .arg(format!("--mount={}", containerd.mount_namespace().display()))
        .args(["ctr", "-a", containerd.socket.to_str().unwrap(), "-n", K8S_NAMESPACE])
        .args(args)
        .output()
        .expect("run ctr")
}

fn ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// vpc-cni's own configuration (as it gets it from the conflist) with addresses from vswitchd.
fn vpc_cni_conf(socket: &Path, log: &Path) -> Value {
    json!({
        "cniVersion": "1.0.0",
        "name": "vpc",
        "type": "vpc-cni",
        "vswitchSocket": socket,
        "gateway": "169.254.1.1",
        "mtu": 1500,
        "ipam": { "type": "vswitchd" },
        "logFile": log,
    })
}

/// The one pod port vswitchd lists for `container_id`, if any.
fn port_of(daemon: &Daemon, container_id: &str) -> Option<Value> {
    let ports = daemon.ctl_json(&["ports"]);
    ports.as_array().unwrap().iter().find(|p| p["name"].as_str().is_some_and(|n| n.starts_with(container_id))).cloned()
}

fn wait_until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `vswitch_gone_ports_removed_total` from vswitchd's /metrics inside the node.
fn gone_ports_removed_metric(node: &Netns) -> u64 {
    let out = node.exec(&["curl", "-sS", "--max-time", "5", "http://127.0.0.1:9477/metrics"]);
    ok("GET /metrics", &out);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.lines()
        .find_map(|l| l.strip_prefix("vswitch_gone_ports_removed_total "))
        .unwrap_or_else(|| panic!("no vswitch_gone_ports_removed_total in /metrics:\n{text}"))
        .trim()
        .parse()
        .expect("a count")
}

/// Everything vswitchd logged (each instance writes its own file in its directory).
fn daemon_logs(daemon: &Daemon) -> String {
    let mut text = String::new();
    for entry in std::fs::read_dir(&daemon.dir).unwrap().flatten() {
        if entry.file_name().to_string_lossy().ends_with(".log") {
            text += &std::fs::read_to_string(entry.path()).unwrap_or_default();
        }
    }
    text
}

/// Removes the test's container however far it got, so containerd's drop finds nothing running.
struct CtrContainer<'a> {
    node: &'a Netns,
    containerd: &'a Containerd,
    id: String,
}

impl Drop for CtrContainer<'_> {
    fn drop(&mut self) {
        let _ = ctr(self.node, self.containerd, &["task", "kill", "-s", "SIGKILL", &self.id]);
        let _ = ctr(self.node, self.containerd, &["task", "rm", "-f", &self.id]);
        let _ = ctr(self.node, self.containerd, &["containers", "rm", &self.id]);
    }
}

#[test]
fn a_port_whose_namespace_is_gone_without_del_is_removed_and_its_address_cools() {
    require_containerd();
    let dir = TempDir::new();
    let node = Netns::new("vgp");
    let config = format!(
        "gone_port_timeout_seconds = {}\n[ipam]\nnode_name = \"gone-node\"\npools = [\"{POOL}\"]\nwarm_target = 2\n",
        GONE_TIMEOUT.as_secs()
    );
    let daemon = Daemon::start_with_config(&Binaries::beside_current_exe(), &node, &dir.0.join("vswitchd"), 1, &config);
    let plugin_log = dir.0.join("vpc-cni.log");
    let conf = vpc_cni_conf(&daemon.socket, &plugin_log);
    let containerd = Containerd::start_node(
        &node,
        &[
            CniPlugin::logged("vpc-cni", &binary("vpc-cni")),
            CniPlugin::linked("loopback", Path::new("/usr/lib/cni/loopback")),
        ],
    );
    let mut plugin = conf.clone();
    plugin.as_object_mut().unwrap().retain(|k, _| k != "cniVersion" && k != "name");
    let conflist = json!({ "cniVersion": "1.0.0", "name": "vpc", "plugins": [plugin] });
    std::fs::write(
        containerd.node_path("/etc/cni/net.d/10-vpc.conflist"),
        serde_json::to_vec_pretty(&conflist).unwrap(),
    )
    .unwrap();

    // A container through `ctr run --cni`, detached: ctr sets its network up and exits.
    let id = unique("gone-");
    let container = CtrContainer { node: &node, containerd: &containerd, id: id.clone() };
    let cgroup = format!("{}/{id}", containerd.cgroup_parent);
    let out = ctr(&node, &containerd, &["run", "--cni", "-d", "--cgroup", &cgroup, SANDBOX_IMAGE, &id]);
    assert!(
        out.status.success(),
        "ctr run --cni: {}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        containerd.cni_failures(),
        containerd.log_tail()
    );
    // ctr names the CNI attachment `<namespace>-<id>` and uses the task's /proc/PID/ns/net.
    let container_id = format!("{K8S_NAMESPACE}-{id}");
    let adds: Vec<_> =
        containerd.cni_calls().into_iter().filter(|c| c.command == "ADD" && c.container_id == container_id).collect();
    assert_eq!(adds.len(), 1, "one CNI ADD for {container_id}: {:?}", containerd.cni_calls());
    let netns = PathBuf::from(&adds[0].netns);
    let port = port_of(&daemon, &container_id).unwrap_or_else(|| panic!("no port for {container_id}"));
    assert_eq!(port["link"], "up", "{port}");
    let port_name = port["name"].as_str().unwrap().to_string();
    let view = daemon.ctl_json(&["ipam"]);
    let assigned = &view["nodes"][0]["assigned"];
    assert_eq!(assigned.as_array().map(Vec::len), Some(1), "{view}");
    assert_eq!(assigned[0]["owner"]["containerID"], container_id.as_str(), "{view}");
    let ip = assigned[0]["ip"].as_str().unwrap().to_string();
    assert_eq!(gone_ports_removed_metric(&node), 0);

    // The task and container go; ctr 1.6 calls no DEL.
    ok("ctr task kill", &ctr(&node, &containerd, &["task", "kill", "-s", "SIGKILL", &id]));
    wait_until("the task to stop", Duration::from_secs(10), || {
        let out = ctr(&node, &containerd, &["task", "rm", &id]);
        out.status.success().then_some(())
    });
    ok("ctr containers rm", &ctr(&node, &containerd, &["containers", "rm", &id]));
    let dels = containerd.cni_calls().into_iter().filter(|c| c.command == "DEL").count();
    assert_eq!(dels, 0, "ctr 1.6 sends no DEL (what this test is about)");

    // `gone` first, while the timeout runs; then removed, not before the timeout.
    let gone_at = wait_until("the port to show gone", Duration::from_secs(10), || {
        port_of(&daemon, &container_id).filter(|p| p["link"] == "gone").map(|_| Instant::now())
    });
    let removed_at = wait_until("the gone port to be removed", GONE_TIMEOUT + Duration::from_secs(10), || {
        port_of(&daemon, &container_id).is_none().then(Instant::now)
    });
    let gone_for = removed_at - gone_at;
    eprintln!("port {port_name} gone, removed {gone_for:?} later (timeout {GONE_TIMEOUT:?})");
    // The poll that saw it gone may lag vswitchd's own first sighting by up to a second or so.
    assert!(gone_for + Duration::from_millis(1500) >= GONE_TIMEOUT, "removed after {gone_for:?}, before the timeout");

    // Its address cools down (the reuse delay), held by nobody. vswitchd releases it just after
    // the port goes, and the release reaches the store after that: read the view once it has.
    let view = wait_until("the address to be released in the store", Duration::from_secs(5), || {
        let view = daemon.ctl_json(&["ipam"]);
        view["nodes"][0]["assigned"].as_array().is_some_and(|a| a.is_empty()).then_some(view)
    });
    let cooling: Vec<&str> = view["cooling"].as_array().unwrap().iter().filter_map(|c| c["ip"].as_str()).collect();
    assert_eq!(cooling, [ip.as_str()], "{view}");
    assert_eq!(view["nodes"][0]["assigned"].as_array().map(Vec::len), Some(0), "{view}");
    assert_eq!(gone_ports_removed_metric(&node), 1);

    // The warn line names the attachment (ctr gives no pod name: its identity is the container id).
    let logs = daemon_logs(&daemon);
    let line = logs
        .lines()
        .find(|l| l.contains("port removed: its network namespace was gone"))
        .unwrap_or_else(|| panic!("no removal line in vswitchd's logs:\n{logs}"));
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains(&container_id), "{line}");
    assert!(line.contains(&ip), "{line}");

    // A DEL that comes late (a runtime catching up) still succeeds, and changes nothing.
    let out = run_cni(cni_command(&binary("vpc-cni"), "DEL", &container_id, &netns), &conf);
    assert!(out.status.success(), "late DEL: {}", String::from_utf8_lossy(&out.stdout));
    let view = daemon.ctl_json(&["ipam"]);
    assert_eq!(view["cooling"][0]["ip"], ip.as_str(), "{view}");
    drop(container);
}
