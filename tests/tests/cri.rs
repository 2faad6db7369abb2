//! vpc-cni driven by a real container runtime the way kubelet drives it: the test's own
//! containerd 1.6 (Debian's, with runc), through its CRI gRPC API, with the shipped
//! `cni/vpc-cni.conflist` (vpc-cni chained with Debian's portmap) and a real vswitchd.
//!
//! The node is a network namespace the test makes: containerd, vswitchd (host port vsw0) and
//! portmap's iptables rules all live there and go with it. Needs root; fails (never skips)
//! without it or without containerd (tests/install-deps.sh installs what it needs).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use vpc_lab::containerd::{alive, cgroup_dirs, mount_points, require_containerd, CniCall, CniPlugin, Containerd};
use vpc_lab::cri::{pod_config, tcp_port, PortMapping, SandboxStatus};
use vpc_lab::netns::{binary, iperf3, try_run, unique, Binaries, Daemon, Netns, TempDir};
use vswitch_api::sticky::{CLAIM_POLICY_ANNOTATION, POD_ANNOTATIONS_CAPABILITY, STATIC_IP_ANNOTATION};

/// The node's own address (on its loopback), what pods and hostPorts are reached at.
const NODE_IP: &str = "10.10.0.5";
const HOST_PORT: i32 = 38080;
const CONTAINER_PORT: i32 = 8080;
const SHIPPED_CONFLIST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../cni/vpc-cni.conflist");

/// A node: its namespace, vswitchd, and containerd with vpc-cni and portmap. Fields drop in
/// order: containerd first (its pods' DEL still reaches vswitchd), the namespace last.
struct Node {
    containerd: Containerd,
    daemon: Daemon,
    ns: Netns,
    /// Holds vswitchd's state and logs; removed last.
    _dir: TempDir,
}

/// The shipped conflist with only what must differ here: the vswitchd socket. Addresses come
/// from vswitchd's IPAM, as shipped (`"ipam": {"type": "vswitchd"}`).
fn shipped_conflist(socket: &Path) -> Value {
    let text = std::fs::read_to_string(SHIPPED_CONFLIST).expect("read cni/vpc-cni.conflist");
    let mut conf: Value = serde_json::from_str(&text).expect("cni/vpc-cni.conflist is JSON");
    let plugins = conf["plugins"].as_array_mut().expect("a conflist has plugins");
    let vpc = plugins.iter_mut().find(|p| p["type"] == "vpc-cni").expect("the conflist has vpc-cni");
    vpc["vswitchSocket"] = socket.to_str().unwrap().into();
    conf
}

/// A node whose vswitchd hands out 10.10.`subnet`.0/24 from its node-local store.
fn node(subnet: u8) -> Node {
    require_containerd();
    let dir = TempDir::new();
    let ns = Netns::new("vcn");
    ns.ip(&["addr", "add", &format!("{NODE_IP}/32"), "dev", "lo"]);
    let config = format!("[ipam]\nnode_name = \"cri-node\"\npools = [\"10.10.{subnet}.0/24\"]\nwarm_target = 4\n");
    let daemon = Daemon::start_with_config(&Binaries::beside_current_exe(), &ns, &dir.0.join("vswitchd"), 1, &config);
    let conflist = shipped_conflist(&daemon.socket);
    let plugins = [
        CniPlugin::logged("vpc-cni", &binary("vpc-cni")),
        CniPlugin::logged("portmap", Path::new("/usr/lib/cni/portmap")),
        CniPlugin::linked("loopback", Path::new("/usr/lib/cni/loopback")),
    ];
    let containerd = Containerd::start(&ns, &plugins, &conflist);
    Node { containerd, daemon, ns, _dir: dir }
}

impl Node {
    /// Addresses vswitchd's IPAM has handed to pods on this node.
    fn assigned_addresses(&self) -> u64 {
        self.daemon.ctl_json(&["ipam"])["this_node"]["assigned"].as_u64().expect("vswitchctl ipam")
    }

    fn port_names(&self) -> Vec<String> {
        self.daemon
            .ctl_json(&["ports"])
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect()
    }

    fn iptables_nat(&self) -> String {
        String::from_utf8_lossy(&self.ns.exec(&["iptables-save", "-t", "nat"]).stdout).into_owned()
    }

    /// Runs a pod sandbox, with a clear failure (the plugins' errors, containerd's log).
    fn run_pod(&self, pod: &Pod, annotations: &[(&str, &str)], ports: Vec<PortMapping>) -> (String, SandboxStatus) {
        let config =
            pod_config(&pod.name, &pod.namespace, &pod.uid, &self.containerd.cgroup_parent, annotations, ports);
        self.containerd
            .run_pod(config)
            .unwrap_or_else(|e| panic!("RunPodSandbox {}: {e}\n{}", pod.name, self.containerd.log_tail()))
    }
}

struct Pod {
    name: String,
    namespace: String,
    uid: String,
}

impl Pod {
    fn new(name: &str) -> Pod {
        Pod { name: name.into(), namespace: "cri-test".into(), uid: unique(&format!("uid-{name}-")) }
    }
}

/// Runs `args` in the network namespace at `netns` (nsenter: only the network namespace changes).
fn in_netns(netns: &Path, args: &[&str]) -> Output {
    let net = format!("--net={}", netns.display());
    let mut full = vec!["nsenter", &net];
    full.extend_from_slice(args);
    try_run(&full)
}

fn ping(netns: &Path, to: &str) -> bool {
    in_netns(netns, &["ping", "-c", "2", "-i", "0.2", "-W", "1", to]).status.success()
}

/// Runs `f` on a thread that has entered the network namespace at `netns`.
fn on_netns_thread<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let file = std::fs::File::open(netns).unwrap_or_else(|e| panic!("open {}: {e}", netns.display()));
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

/// `key` of a JSON object, matched case-insensitively (as Go's encoding/json does).
fn field<'a>(v: &'a Value, key: &str) -> &'a Value {
    v.as_object()
        .and_then(|o| o.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v))
        .unwrap_or(&Value::Null)
}

fn calls_for<'a>(calls: &'a [CniCall], plugin: &str, command: &str, sandbox: &str) -> Vec<&'a CniCall> {
    calls.iter().filter(|c| c.plugin == plugin && c.command == command && c.container_id == sandbox).collect()
}

#[test]
fn three_pods_through_cri_get_addresses_talk_map_a_host_port_and_leave_nothing() {
    let node = node(61);
    let pods: Vec<Pod> = ["web-0", "web-1", "web-2"].iter().map(|n| Pod::new(n)).collect();
    let mut sandboxes: Vec<(String, SandboxStatus, PathBuf)> = Vec::new();
    // web-1 asks for a sticky address as a UK8S StatefulSet pod does.
    let sticky = [(STATIC_IP_ANNOTATION, "true"), (CLAIM_POLICY_ANNOTATION, "300s")];
    for (i, pod) in pods.iter().enumerate() {
        let ports = if i == 0 { vec![tcp_port(CONTAINER_PORT, HOST_PORT)] } else { vec![] };
        let annotations: &[(&str, &str)] = if i == 1 { &sticky } else { &[] };
        let (id, status) = node.run_pod(pod, annotations, ports);
        assert!(status.ready(), "{} is not ready: {:?}", pod.name, status.status);
        let netns =
            status.netns_path().unwrap_or_else(|| panic!("no netns path in the verbose status: {}", status.info));
        sandboxes.push((id, status, netns));
    }

    // Distinct addresses from this node's range, and a TAP in each sandbox's namespace.
    let ips: Vec<Ipv4Addr> = sandboxes
        .iter()
        .map(|(_, s, _)| s.ip().parse().unwrap_or_else(|_| panic!("PodSandboxStatus has no IP: {:?}", s.status)))
        .collect();
    for ip in &ips {
        assert_eq!(&ip.octets()[..3], &[10, 10, 61], "{ip} is not from the node's range");
    }
    let mut distinct = ips.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "addresses: {ips:?}");
    for (id, _, netns) in &sandboxes {
        let link = in_netns(netns, &["ip", "-d", "link", "show", "eth0"]);
        let text = String::from_utf8_lossy(&link.stdout);
        assert!(link.status.success() && text.contains("tun type tap"), "no TAP eth0 in {id}'s namespace: {text}");
    }
    let ports = node.port_names();
    for (id, _, _) in &sandboxes {
        assert!(ports.contains(&format!("{id}:eth0")), "vswitchd has no port for {id}: {ports:?}");
    }

    // The pods reach each other and the node, and the node reaches them.
    for (i, (_, _, netns)) in sandboxes.iter().enumerate() {
        let next = ips[(i + 1) % 3].to_string();
        assert!(ping(netns, &next), "pod {i} -> {next}");
        assert!(ping(netns, NODE_IP), "pod {i} -> the node {NODE_IP}");
        assert!(ping(&node.ns.path(), &ips[i].to_string()), "the node -> pod {i} {}", ips[i]);
    }

    // hostPort: the node's HOST_PORT reaches CONTAINER_PORT in web-0, through portmap's DNAT.
    let nat = node.iptables_nat();
    assert!(
        nat.contains(&format!("--dport {HOST_PORT}")) && nat.contains(&ips[0].to_string()),
        "portmap made no DNAT rule for {HOST_PORT} -> {}:\n{nat}",
        ips[0]
    );
    let listener = on_netns_thread(&sandboxes[0].2, || -> Result<[u8; 4], String> {
        let l = TcpListener::bind(("0.0.0.0", CONTAINER_PORT as u16)).map_err(|e| format!("listen in the pod: {e}"))?;
        l.set_nonblocking(true).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let (mut s, peer) = loop {
            match l.accept() {
                Ok(conn) => break conn,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => return Err(format!("accept in the pod: {e}")),
            }
        };
        s.set_nonblocking(false).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).map_err(|e| e.to_string())?;
        s.write_all(format!("pod saw {peer}").as_bytes()).map_err(|e| e.to_string())?;
        Ok(buf)
    });
    std::thread::sleep(Duration::from_millis(200));
    let client = on_netns_thread(&node.ns.path(), move || -> Result<String, String> {
        let to: SocketAddr = format!("{NODE_IP}:{HOST_PORT}").parse().unwrap();
        let mut s =
            TcpStream::connect_timeout(&to, Duration::from_secs(5)).map_err(|e| format!("connect {to}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"ping").map_err(|e| e.to_string())?;
        let mut answer = String::new();
        s.read_to_string(&mut answer).map_err(|e| e.to_string())?;
        Ok(answer)
    });
    let (answer, heard) = (client.join().unwrap(), listener.join().unwrap());
    let what = format!("hostPort {NODE_IP}:{HOST_PORT} -> {}:{CONTAINER_PORT}", ips[0]);
    let answer = answer.unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(heard.unwrap_or_else(|e| panic!("{what}: {e}")), *b"ping", "{what}");
    // The node connected from its own address; portmap does not masquerade that.
    assert!(answer.starts_with(&format!("pod saw {NODE_IP}:")), "{what}: {answer}");
    eprintln!("{what}: {answer}");

    // What the plugins were given on ADD.
    let calls = node.containerd.cni_calls();
    for (pod, (id, _, netns)) in pods.iter().zip(&sandboxes) {
        let adds = calls_for(&calls, "vpc-cni", "ADD", id);
        assert_eq!(adds.len(), 1, "vpc-cni ADDs for {id}: {adds:#?}");
        let add = adds[0];
        assert_eq!(add.exit_code, 0, "{}", add.stdout);
        assert_eq!(Path::new(&add.netns), netns.as_path());
        assert_eq!(add.ifname, "eth0");
        assert_eq!(add.arg("K8S_POD_NAMESPACE"), Some(pod.namespace.as_str()), "CNI_ARGS {}", add.args);
        assert_eq!(add.arg("K8S_POD_NAME"), Some(pod.name.as_str()), "CNI_ARGS {}", add.args);
        assert_eq!(add.arg("K8S_POD_INFRA_CONTAINER_ID"), Some(id.as_str()), "CNI_ARGS {}", add.args);
        assert_eq!(add.arg("K8S_POD_UID"), Some(pod.uid.as_str()), "CNI_ARGS {}", add.args);
        assert_eq!(add.arg("IgnoreUnknown"), Some("1"), "CNI_ARGS {}", add.args);
        assert_eq!(add.stdin["type"], "vpc-cni");
        let portmap = calls_for(&calls, "portmap", "ADD", id);
        assert_eq!(portmap.len(), 1, "portmap ADDs for {id}");
        assert_eq!(portmap[0].stdin["prevResult"]["ips"], serde_json::from_str::<Value>(&add.stdout).unwrap()["ips"]);
    }
    // containerd 1.6 (go-cni) writes the mapping with Go's field names ("HostPort"), not the
    // conventions' ("hostPort"); Go plugins decode either, as JSON keys match case-insensitively.
    let mapped = &calls_for(&calls, "portmap", "ADD", &sandboxes[0].0)[0].stdin["runtimeConfig"]["portMappings"];
    assert_eq!(field(&mapped[0], "hostPort"), &Value::from(HOST_PORT), "portmap's runtimeConfig: {mapped}");
    assert_eq!(field(&mapped[0], "containerPort"), &Value::from(CONTAINER_PORT), "portmap's runtimeConfig: {mapped}");
    assert_eq!(field(&mapped[0], "protocol"), "tcp", "portmap's runtimeConfig: {mapped}");
    eprintln!(
        "portmap's runtimeConfig from containerd: {}",
        calls_for(&calls, "portmap", "ADD", &sandboxes[0].0)[0].stdin["runtimeConfig"]
    );
    // containerd 1.6 passes the pod's annotations to vpc-cni, which the shipped conflist
    // declares the capability for (without the declaration it sends none).
    let add = calls_for(&calls, "vpc-cni", "ADD", &sandboxes[1].0)[0];
    let annotations = &add.stdin["runtimeConfig"][POD_ANNOTATIONS_CAPABILITY];
    assert_eq!(annotations[STATIC_IP_ANNOTATION], "true", "vpc-cni's runtimeConfig: {}", add.stdin["runtimeConfig"]);
    assert_eq!(annotations[CLAIM_POLICY_ANNOTATION], "300s", "vpc-cni's runtimeConfig: {}", add.stdin["runtimeConfig"]);
    let plain = calls_for(&calls, "vpc-cni", "ADD", &sandboxes[0].0)[0];
    assert!(plain.stdin["runtimeConfig"][POD_ANNOTATIONS_CAPABILITY].get(STATIC_IP_ANNOTATION).is_none());

    // StopPodSandbox reclaims the network: no TAP, no port, no address, no portmap rule.
    let dels = |calls: &[CniCall]| calls.iter().filter(|c| c.plugin == "vpc-cni" && c.command == "DEL").count();
    let before_stop = dels(&node.containerd.cni_calls());
    for (id, _, _) in &sandboxes {
        let stopped = node.containerd.cri().stop_pod_sandbox(id);
        stopped.unwrap_or_else(|e| panic!("{e}\n{}", node.containerd.cni_failures()));
    }
    let at_stop = dels(&node.containerd.cni_calls()) - before_stop;
    for (id, _, netns) in &sandboxes {
        assert!(
            !netns.exists() || !in_netns(netns, &["ip", "link", "show", "eth0"]).status.success(),
            "{id}'s TAP is still there"
        );
    }
    assert_eq!(node.port_names(), ["vsw0"], "vswitchd still has pod ports");
    let ipam = String::from_utf8_lossy(&node.daemon.ctl(&["ipam"]).stdout).to_string();
    assert_eq!(node.assigned_addresses(), 0, "addresses still assigned:\n{ipam}");
    let nat = node.iptables_nat();
    assert!(!nat.contains(&format!("--dport {HOST_PORT}")), "portmap's rule for {HOST_PORT} is still there:\n{nat}");
    for (id, _, _) in &sandboxes {
        assert!(!nat.contains(id.as_str()), "iptables still mention {id}:\n{nat}");
    }
    // RemovePodSandbox: containerd forgets them, and nothing it ran is left.
    for (id, _, _) in &sandboxes {
        let removed = node.containerd.cri().remove_pod_sandbox(id);
        removed.unwrap_or_else(|e| panic!("{e}\n{}", node.containerd.cni_failures()));
    }
    let at_remove = dels(&node.containerd.cni_calls()) - before_stop - at_stop;
    eprintln!("vpc-cni DELs: {at_stop} during StopPodSandbox, {at_remove} during RemovePodSandbox (3 pods)");
    let left = node.containerd.cri().list_pod_sandbox().unwrap();
    assert!(left.is_empty(), "containerd still has sandboxes: {left:?}");
    assert!(node.containerd.processes().is_empty(), "processes left: {:?}", node.containerd.processes());
    for (id, _, netns) in &sandboxes {
        assert!(!netns.exists(), "{id}'s namespace {} is still there", netns.display());
    }

    // The DELs containerd sent vpc-cni: every one succeeded; each pod got at least one with its
    // namespace and the ADD's result as prevResult.
    let calls = node.containerd.cni_calls();
    for (id, _, netns) in &sandboxes {
        let dels = calls_for(&calls, "vpc-cni", "DEL", id);
        assert!(!dels.is_empty(), "no DEL for {id}");
        for d in &dels {
            assert_eq!(d.exit_code, 0, "DEL {id} failed: {}", d.stdout);
            assert!(d.arg("K8S_POD_INFRA_CONTAINER_ID") == Some(id.as_str()), "DEL CNI_ARGS {}", d.args);
        }
        assert!(
            dels.iter().any(|d| Path::new(&d.netns) == netns.as_path() && d.stdin["prevResult"].is_object()),
            "no DEL of {id} with its namespace and prevResult: {dels:#?}"
        );
        let shapes: Vec<String> = dels
            .iter()
            .map(|d| {
                format!(
                    "netns={} prevResult={} runtimeConfig={}",
                    if d.netns.is_empty() { "-" } else { &d.netns },
                    d.stdin["prevResult"].is_object(),
                    d.stdin["runtimeConfig"]
                )
            })
            .collect();
        eprintln!("vpc-cni DELs for {id}: {}", shapes.join(" | "));
    }
    if let Some(c) = calls.iter().find(|c| c.plugin == "vpc-cni" && c.command == "ADD") {
        eprintln!("CNI_ARGS as containerd sends them: {}", c.args);
    }
}

#[test]
fn ingress_bandwidth_annotation_limits_traffic_into_the_pod_to_10_mbit() {
    bandwidth_limits_a_tcp_stream_to_10_mbit(62, "ingress");
}

#[test]
fn egress_bandwidth_annotation_limits_traffic_out_of_the_pod_to_10_mbit() {
    bandwidth_limits_a_tcp_stream_to_10_mbit(65, "egress");
}

/// A pod with `kubernetes.io/<direction>-bandwidth: 10M`: one TCP stream (iperf3, 5 s) into it
/// from the node (ingress) or out of it to the node (egress) gets 9-11 Mbit/s, as with the
/// reference bandwidth plugin's tbf: the switch shapes (delays ingress, stops reading egress)
/// rather than dropping 64 KB GSO frames, which left TCP at half the rate.
fn bandwidth_limits_a_tcp_stream_to_10_mbit(subnet: u8, direction: &str) {
    let node = node(subnet);
    let pod = Pod::new("shaped");
    let annotation = format!("kubernetes.io/{direction}-bandwidth");
    let (id, status) = node.run_pod(&pod, &[(&annotation, "10M")], vec![]);
    let netns = status.netns_path().expect("netns path");
    let ns_name = netns.file_name().unwrap().to_str().unwrap().to_string();
    let ip: Ipv4Addr = status.ip().parse().expect("pod IP");
    // containerd passes the annotation on only to a plugin whose conflist entry declares
    // `"capabilities": {"bandwidth": true}`, as runtimeConfig.bandwidth.
    let calls = node.containerd.cni_calls();
    let add = calls_for(&calls, "vpc-cni", "ADD", &id)[0];
    eprintln!("vpc-cni's runtimeConfig from containerd: {}", add.stdin["runtimeConfig"]);
    // Seen with the capability declared: {"bandwidth":{"EgressBurst":0,"EgressRate":0,
    // "IngressBurst":4294967295,"IngressRate":10000000}} (Go's field names, bits per second).
    let bandwidth = field(&add.stdin["runtimeConfig"], "bandwidth");
    assert_eq!(
        field(bandwidth, &format!("{direction}Rate")),
        &Value::from(10_000_000),
        "vpc-cni got no runtimeConfig.bandwidth (does cni/vpc-cni.conflist declare the bandwidth capability?): {}",
        add.stdin
    );
    let run = if direction == "ingress" {
        // Into the pod: the node sends, the pod receives.
        iperf3(&node.ns.name, &ns_name, ip, 1, 5).expect("iperf3 node -> pod")
    } else {
        // Out of the pod: the pod sends to the node.
        iperf3(&ns_name, &node.ns.name, NODE_IP.parse().unwrap(), 1, 5).expect("iperf3 pod -> node")
    };
    let mbit = run.bits_per_second / 1e6;
    let (from, to) = if direction == "ingress" { ("node", "pod") } else { ("pod", "node") };
    eprintln!("{from} -> {to} with {direction}-bandwidth 10M: {mbit:.2} Mbit/s, {} retransmits", run.retransmits);
    node.containerd.remove_pod(&id).unwrap();
    assert!((9.0..=11.0).contains(&mbit), "{direction}-bandwidth 10M, measured {mbit:.2} Mbit/s");
}

/// What a failing test leaves when it panics with pods running: dropping the node (containerd
/// first) must remove every sandbox process, mount, namespace, cgroup and directory, also when
/// containerd itself died first and so never ran the plugins' DEL.
#[test]
fn dropping_a_node_with_pods_running_leaves_nothing_even_after_containerd_crashed() {
    for (crashed, subnet) in [(false, 63), (true, 64)] {
        let mut node = node(subnet);
        let mut netns = Vec::new();
        for (i, name) in ["left-0", "left-1"].into_iter().enumerate() {
            let ports = if i == 0 { vec![tcp_port(CONTAINER_PORT, HOST_PORT)] } else { vec![] };
            let (_, status) = node.run_pod(&Pod::new(name), &[], ports);
            netns.push(status.netns_path().expect("netns path").canonicalize().unwrap());
        }
        let pids = node.containerd.processes();
        assert!(pids.len() >= 4, "two shims and two sandbox processes: {pids:?}");
        let dir = node.containerd.dir().to_path_buf();
        let cgroup = node.containerd.cgroup_parent.clone();
        assert!(!cgroup_dirs(&cgroup).is_empty(), "runc made no cgroup under {cgroup}");
        if crashed {
            node.containerd.kill_containerd();
        }
        drop(node);
        let case = if crashed { "after containerd was killed" } else { "with containerd up" };
        let running: Vec<i32> = pids.into_iter().filter(|&p| alive(p)).collect();
        assert!(running.is_empty(), "{case}: processes left: {running:?}");
        for ns in &netns {
            assert!(!ns.exists(), "{case}: {} is left", ns.display());
        }
        let mounts: Vec<PathBuf> =
            mount_points().into_iter().filter(|m| m.starts_with(&dir) || netns.contains(m)).collect();
        assert!(mounts.is_empty(), "{case}: mounts left: {mounts:?}");
        assert!(!dir.exists(), "{case}: {} is left", dir.display());
        assert!(cgroup_dirs(&cgroup).is_empty(), "{case}: cgroups left: {:?}", cgroup_dirs(&cgroup));
    }
}
