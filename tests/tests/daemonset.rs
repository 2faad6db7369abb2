//! The DaemonSet deployed as users deploy it, without a registry: `cni/deploy/build-image.sh`
//! builds the image (Debian's buildah), `ctr images import` puts it on a node, and the shipped
//! `cni/deploy/vswitchd-daemonset.yaml` (read here, not copied) runs on that node through
//! containerd's CRI as kubelet runs it (`vpc_lab::kubelet`): the ConfigMap and a Secret with the
//! lab etcd's client certificate as volumes, the init containers, vswitchd privileged in the
//! node's network, the readiness probe. Then pods created through the same CRI get addresses
//! from the containerised vswitchd's IPAM through the vpc-cni the init container installed, and
//! reach each other, the node and the VM; a rolling update as the manifest declares it hands
//! over without loss; removing the DaemonSet's pod leaves the pods' TAPs for the next start.
//!
//! The node is a third lab node (10.10.0.13) the test wires to the lab's fabric itself: its
//! containerd runs in the node's network namespace and in a mount namespace of its own, where
//! /opt/cni/bin, /etc/cni/net.d, /run/vswitchd, /var/lib/vswitchd, /var/lib/vpc-cni and
//! /var/log are the node's alone (`Containerd::start_node`). Needs root, containerd, buildah,
//! etcd (tests/install-deps.sh installs them); fails, never skips, without them.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use vpc_lab::containerd::{require_containerd, CniPlugin, Containerd};
use vpc_lab::cri::pod_config;
use vpc_lab::etcd::EtcdTls;
use vpc_lab::kubelet::{ApiObjects, Kubelet, PodMeta, RunningPod};
use vpc_lab::lab::{attach, node_ip, IpamMode, Lab, LabSpec, GATEWAY_IP, VM_IP};
use vpc_lab::netns::{binary_dir, have_tool, try_run, unique, Netns, TempDir};

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
const DAEMONSET: &str = "cni/deploy/vswitchd-daemonset.yaml";
const CONTAINERFILE: &str = "cni/deploy/Containerfile";
const BUILD_IMAGE: &str = "cni/deploy/build-image.sh";
const CONFLIST: &str = "cni/vpc-cni.conflist";
/// The DaemonSet's node is the lab's third (10.10.0.13); the lab itself has two.
const NODE: usize = 2;
const NODE_NAME: &str = "node3";
/// What the ConfigMap's vswitchd hands out.
const POD_POOL: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 10, 64, 0), 18);

fn repo(path: &str) -> PathBuf {
    Path::new(REPO).join(path)
}

/// The image build-image.sh made, and its archive (removed on drop).
struct BuiltImage {
    reference: String,
    archive: PathBuf,
    _dir: TempDir,
}

/// Runs `cni/deploy/build-image.sh` on the binaries this test was built with.
fn build_image() -> BuiltImage {
    for tool in ["buildah", "strip"] {
        assert!(have_tool(tool), "{tool} is missing: tests/install-deps.sh installs buildah and binutils");
    }
    let dir = TempDir::new();
    let out = Command::new(repo(BUILD_IMAGE))
        .arg("--bin-dir")
        .arg(binary_dir())
        .arg("--out")
        .arg(&dir.0)
        .output()
        .expect("run build-image.sh");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "build-image.sh failed:\n{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "build-image.sh prints the image and the archive: {stdout}");
    BuiltImage { reference: lines[0].into(), archive: lines[1].into(), _dir: dir }
}

/// The image the shipped manifest names, which cni/README.md's install has the user replace.
const SHIPPED_IMAGE: &str = "registry.example/vpc/vswitchd:latest";

/// The manifest's documents, as the API's JSON, with `image` for the shipped image as the
/// README's install replaces it (`sed 's#registry.example/...:latest#IMAGE#'`).
fn manifest(image: &str) -> Vec<Value> {
    use serde::Deserialize;
    let text = std::fs::read_to_string(repo(DAEMONSET)).expect("read the DaemonSet manifest");
    assert!(
        text.contains(SHIPPED_IMAGE),
        "{DAEMONSET} no longer names {SHIPPED_IMAGE}: update cni/README.md's install"
    );
    let text = text.replace(SHIPPED_IMAGE, image);
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).expect("the manifest is YAML"))
        .filter(|d| !d.is_null())
        .collect()
}

fn of_kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind} in {DAEMONSET}"))
}

/// The objects the pod refers to: the manifest's ConfigMap, and the Secret a user creates with
/// `kubectl create secret generic vpc-ipam-etcd --from-file=...` from the etcd client files.
fn api_objects(docs: &[Value], tls: &EtcdTls) -> ApiObjects {
    let config_map = of_kind(docs, "ConfigMap");
    let data: BTreeMap<String, String> = serde_json::from_value(config_map["data"].clone()).expect("string data");
    let read = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let secret = [("ca.crt", &tls.ca), ("tls.crt", &tls.cert), ("tls.key", &tls.key)]
        .into_iter()
        .map(|(k, p)| (k.to_string(), read(p)))
        .collect();
    let name = config_map["metadata"]["name"].as_str().unwrap().to_string();
    ApiObjects { config_maps: [(name, data)].into(), secrets: [("vpc-ipam-etcd".to_string(), secret)].into() }
}

/// `template` with every container's image set to `image` (`kubectl set image '*=IMAGE'`).
fn with_image(template: &Value, image: &str) -> Value {
    let mut t = template.clone();
    for list in ["initContainers", "containers"] {
        for c in t["spec"][list].as_array_mut().into_iter().flatten() {
            c["image"] = image.into();
        }
    }
    t
}

/// A pod of the DaemonSet as its controller names them: NAME-xxxxx.
fn daemonset_pod(ds: &Value) -> PodMeta {
    let suffix: String = unique("").chars().rev().take(5).collect();
    PodMeta {
        name: format!("{}-{suffix}", ds["metadata"]["name"].as_str().unwrap()),
        namespace: ds["metadata"]["namespace"].as_str().unwrap_or("default").into(),
        uid: unique("uid-ds-"),
    }
}

/// The DaemonSet's node. Dropping it removes the pods with a network of their own first (their
/// DEL still reaches vswitchd), then the DaemonSet's, then containerd, then the namespace.
struct Node {
    containerd: Containerd,
    kubelet_dir: TempDir,
    ns: Netns,
}

impl Node {
    /// A namespace on the lab's fabric at node3's address, routed like the lab's host-routed
    /// nodes, with IPv4 forwarding off (the DaemonSet's init container turns it on), and
    /// containerd as its own with the reference plugins a node comes with.
    fn up(lab: &Lab) -> Node {
        let ns = Netns::new("dsn");
        let ip = node_ip(NODE);
        attach(lab.fabric(), &ns, "eth0", "fds", &format!("{ip}/16"));
        ns.ip(&["route", "add", "default", "via", &GATEWAY_IP.to_string()]);
        // The VPC's route to the node's pods, as in the lab: the node answers ARP for what it
        // routes to vsw0, at once.
        let sysctls = "echo 1 > /proc/sys/net/ipv4/conf/eth0/proxy_arp && \
                       echo 0 > /proc/sys/net/ipv4/neigh/eth0/proxy_delay && echo 0 > /proc/sys/net/ipv4/ip_forward";
        let out = ns.exec(&["sh", "-c", sysctls]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let plugins = [
            CniPlugin::linked("portmap", Path::new("/usr/lib/cni/portmap")),
            CniPlugin::linked("loopback", Path::new("/usr/lib/cni/loopback")),
        ];
        let containerd = Containerd::start_node(&ns, &plugins);
        Node { containerd, kubelet_dir: TempDir::new(), ns }
    }

    fn kubelet(&self) -> Kubelet<'_> {
        Kubelet {
            containerd: &self.containerd,
            node_name: NODE_NAME.into(),
            node_ip: node_ip(NODE),
            node_netns: self.ns.path(),
            root_dir: self.kubelet_dir.0.clone(),
        }
    }

    /// A pod with a network of its own (only its sandbox), as kubelet asks for one.
    fn run_pod(&self, name: &str) -> TestPod {
        let config = pod_config(name, "default", &unique("uid-"), &self.containerd.cgroup_parent, &[], vec![]);
        let (id, status) = self
            .containerd
            .run_pod(config)
            .unwrap_or_else(|e| panic!("RunPodSandbox {name}: {e}\n{}", self.vpc_cni_log()));
        let ip: Ipv4Addr = status.ip().parse().unwrap_or_else(|_| panic!("{name} has no address: {:?}", status.status));
        let netns = status.netns_path().expect("a pod's namespace path");
        let netns = netns.file_name().unwrap().to_string_lossy().into_owned();
        TestPod { name: name.into(), id, ip, netns }
    }

    /// The last lines of vpc-cni's log on the node (its `logFile`, /var/log/vpc-cni.log).
    fn vpc_cni_log(&self) -> String {
        let text = std::fs::read_to_string(self.containerd.node_path("/var/log/vpc-cni.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!("vpc-cni's log:\n{}", lines[lines.len().saturating_sub(5)..].join("\n"))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let cri = self.containerd.cri();
        let mut sandboxes = cri.list_pod_sandbox().unwrap_or_default();
        sandboxes.sort_by_key(|s| s.metadata.as_ref().is_some_and(|m| m.namespace == "kube-system"));
        for s in sandboxes {
            let _ = self.containerd.remove_pod(&s.id);
        }
    }
}

struct TestPod {
    name: String,
    id: String,
    ip: Ipv4Addr,
    /// Its network namespace's name (under /run/netns).
    netns: String,
}

/// A ping that runs until stopped (100 a second).
struct Ping(Child);

impl Ping {
    fn start(from: &str, to: Ipv4Addr) -> Ping {
        let child = Command::new("ip")
            .args(["netns", "exec", from, "ping", "-i", "0.01", "-W", "1", &to.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ping");
        Ping(child)
    }

    /// Stops it (SIGINT: ping prints its summary); returns (sent, received).
    fn stop(self) -> (u64, u64) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        // `ip netns exec` execs ping, so this is ping's pid.
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let out = self.0.wait_with_output().expect("ping ends");
        let text = String::from_utf8_lossy(&out.stdout);
        let summary = text.lines().find(|l| l.contains("packets transmitted")).unwrap_or_else(|| panic!("{text}"));
        // "N packets transmitted, M received, ..."
        let number = |part: usize| -> u64 {
            let field = summary.split(',').nth(part).and_then(|p| p.split_whitespace().next());
            field.and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("ping's summary: {summary}"))
        };
        (number(0), number(1))
    }
}

/// `ping -c 3` from namespace `from`; panics with what it said.
fn reaches(lab: &Lab, from: &str, what: &str, to: Ipv4Addr) {
    if let Err(e) = lab.ping(from, to) {
        panic!("{what} ({from} -> {to}): {e}");
    }
}

/// Runs `args` in container `id` (as `kubectl exec`); its stdout.
fn exec(node: &Node, id: &str, args: &[&str]) -> String {
    let cmd: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let r = node.containerd.cri().exec_sync(id, &cmd, Duration::from_secs(10)).expect("ExecSync");
    assert_eq!(
        r.exit_code,
        0,
        "{args:?}: {}{}",
        String::from_utf8_lossy(&r.stdout),
        String::from_utf8_lossy(&r.stderr)
    );
    String::from_utf8_lossy(&r.stdout).into_owned()
}

/// The ports the containerised vswitchd has, asked through its own vswitchctl.
fn ports(node: &Node, pod: &RunningPod) -> Vec<String> {
    let vswitchd = pod.container("vswitchd").expect("the vswitchd container");
    let json: Value = serde_json::from_str(&exec(node, &vswitchd.id, &["vswitchctl", "--json", "ports"])).unwrap();
    json.as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap().to_string()).collect()
}

/// Runs the DaemonSet's pod and waits for its readiness probe; panics with the logs on failure.
fn run_daemonset_pod(kubelet: &Kubelet, meta: &PodMeta, template: &Value, objects: &ApiObjects) -> RunningPod {
    let pod = kubelet.run_pod(meta, template, objects).unwrap_or_else(|e| panic!("running {}: {e}", meta.name));
    if let Err(e) = kubelet.wait_probe(&pod, "vswitchd", "readinessProbe", Duration::from_secs(60)) {
        panic!("{e}\nvswitchd's log:\n{}", kubelet.log(&pod, "vswitchd"));
    }
    pod
}

/// The OCI runtime spec containerd gave runc for container `id`.
fn runtime_spec(node: &Node, id: &str) -> Value {
    node.containerd.cri().container_status(id).expect("ContainerStatus").info["runtimeSpec"].clone()
}

fn capabilities(spec: &Value) -> BTreeSet<String> {
    let bounding = spec["process"]["capabilities"]["bounding"].as_array().cloned().unwrap_or_default();
    bounding.iter().filter_map(|c| c.as_str().map(String::from)).collect()
}

fn in_pool(ip: Ipv4Addr) -> bool {
    u32::from(ip) >> (32 - POD_POOL.1) == u32::from(POD_POOL.0) >> (32 - POD_POOL.1)
}

#[test]
fn the_daemonsets_pod_runs_through_cri_wires_pods_and_hands_over_without_loss() {
    require_containerd();
    let image = build_image();
    // The cluster: etcd at the ConfigMap's endpoints (10.10.0.21-23, TLS), the VM, two nodes
    // whose own pods go at once, so that only the DaemonSet's node has pods in the pool.
    let mut lab = Lab::up(LabSpec { ipam: IpamMode::Etcd, nodes: 2, pods_per_node: 1, ..LabSpec::default() }, |_| {});
    lab.delete_pods();
    let node = Node::up(&lab);
    let imported = node.containerd.import_image(&image.archive).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        node.containerd.cri().has_image(&image.reference).unwrap(),
        "{} not seen after:\n{imported}",
        image.reference
    );

    let docs = manifest(&image.reference);
    let objects = api_objects(&docs, lab.etcd().expect("etcd runs").tls());
    let ds = of_kind(&docs, "DaemonSet");
    let template = ds["spec"]["template"].clone();
    let kubelet = node.kubelet();

    // The DaemonSet's pod: its init containers, in order, then vswitchd until ready.
    let first = run_daemonset_pod(&kubelet, &daemonset_pod(ds), &template, &objects);
    let declared: Vec<&str> = ds["spec"]["template"]["spec"]["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    let ran: Vec<&str> = first.init_containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(ran, declared, "the init containers, each to exit 0, in order");
    let forward = node.ns.exec(&["cat", "/proc/sys/net/ipv4/ip_forward"]);
    assert_eq!(String::from_utf8_lossy(&forward.stdout).trim(), "1", "node-prerequisites turns IPv4 forwarding on");
    let plugin = node.containerd.node_path("/opt/cni/bin/vpc-cni");
    let version = Command::new(&plugin).arg("--version").output().expect("the installed vpc-cni runs");
    assert!(version.status.success(), "{}: {version:?}", plugin.display());
    let conflist =
        std::fs::read(node.containerd.node_path("/etc/cni/net.d/10-vpc.conflist")).expect("installed conflist");
    assert_eq!(conflist, std::fs::read(repo(CONFLIST)).unwrap(), "install-cni installs the shipped conflist");
    node.containerd.cri().wait_network_ready(Duration::from_secs(20)).expect("containerd loads the conflist");
    let live = first.spec["containers"][0]["livenessProbe"].clone();
    kubelet.probe_once(&first, "vswitchd", &live).unwrap_or_else(|e| panic!("the liveness probe: {e}"));

    // As runc runs them: privileges as declared, the node name from the downward API expanded
    // into the command, the Secret's files with its defaultMode.
    let vswitchd = first.container("vswitchd").unwrap();
    let spec = runtime_spec(&node, &vswitchd.id);
    let args: Vec<&str> = spec["process"]["args"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    let at = args.iter().position(|a| *a == "--node-name").expect("--node-name");
    assert_eq!(args[at + 1], NODE_NAME, "$(NODE_NAME) from spec.nodeName: {args:?}");
    assert!(capabilities(&spec).contains("CAP_NET_ADMIN") && capabilities(&spec).contains("CAP_SYS_ADMIN"));
    let install = first.init_containers.iter().find(|c| c.name == "install-cni").unwrap();
    let unprivileged = capabilities(&runtime_spec(&node, &install.id));
    assert!(!unprivileged.is_empty() && !unprivileged.contains("CAP_SYS_ADMIN"), "install-cni: {unprivileged:?}");
    let modes = exec(
        &node,
        &vswitchd.id,
        &["stat", "-L", "-c", "%a %n", "/etc/vswitchd/etcd/tls.key", "/etc/vswitchd/vswitchd.toml"],
    );
    assert_eq!(
        modes.lines().collect::<Vec<_>>(),
        ["400 /etc/vswitchd/etcd/tls.key", "644 /etc/vswitchd/vswitchd.toml"]
    );

    // Pods through the same CRI: addresses from the cluster pool, and every path.
    let pods = [node.run_pod("web-0"), node.run_pod("web-1")];
    for p in &pods {
        assert!(in_pool(p.ip), "{} got {} outside the pool", p.name, p.ip);
    }
    assert_ne!(pods[0].ip, pods[1].ip);
    let node_addr = node_ip(NODE);
    reaches(&lab, &pods[0].netns, "pod to pod", pods[1].ip);
    reaches(&lab, &pods[1].netns, "pod to pod", pods[0].ip);
    reaches(&lab, &pods[0].netns, "pod to its node", node_addr);
    reaches(&lab, &pods[0].netns, "pod to the VM", VM_IP);
    reaches(&lab, &node.ns.name, "node to pod", pods[1].ip);
    reaches(&lab, &lab.vm, "VM to pod", pods[0].ip);
    let listed = ports(&node, &first);
    for p in &pods {
        assert!(listed.contains(&format!("{}:eth0", p.id)), "vswitchd has no port for {}: {listed:?}", p.name);
    }

    // A rolling update as the manifest declares it, a newer tag of the image.
    let strategy = &ds["spec"]["updateStrategy"];
    assert_eq!(strategy["type"], "RollingUpdate");
    let rolling = &strategy["rollingUpdate"];
    assert_eq!((rolling["maxSurge"].as_u64(), rolling["maxUnavailable"].as_u64()), (Some(1), Some(0)), "{strategy}");
    let newer = format!("{}-update", image.reference);
    node.containerd.tag_image(&image.reference, &newer).unwrap_or_else(|e| panic!("{e}"));
    let updated = with_image(&ds["spec"]["template"], &newer);
    let ping = Ping::start(&pods[0].netns, pods[1].ip);
    std::thread::sleep(Duration::from_secs(1));
    let started = Instant::now();
    // maxSurge 1: the new pod beside the old; once it is ready, the controller deletes the old.
    let second = run_daemonset_pod(&kubelet, &daemonset_pod(ds), &updated, &objects);
    let old_status = node.containerd.cri().container_status(&vswitchd.id).unwrap();
    let stopped = kubelet.delete_pod(&first).expect("delete the old pod");
    let took = started.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let (sent, received) = ping.stop();
    let (new_log, old_log) = (kubelet.log(&second, "vswitchd"), kubelet.log(&first, "vswitchd"));
    assert!(new_log.contains("took over from the running vswitchd"), "the new vswitchd's log:\n{new_log}");
    assert!(old_log.contains("handed over; idle until terminated"), "the old vswitchd's log:\n{old_log}");
    // Handed over, the old container idled until deleted (an exit would restart it).
    assert!(old_status.running(), "the old container before its pod was deleted: {:?}", old_status.status);
    assert_eq!(stopped.len(), 1);
    assert_eq!(stopped[0].exit_code, 0, "the old vswitchd exits 0 on SIGTERM");
    let lost = sent - received;
    eprintln!(
        "rolling update (maxSurge 1) in {took:.1?}: {lost} of {sent} pings lost; the old container exited {} {:.1?} after SIGTERM",
        stopped[0].exit_code, stopped[0].took
    );
    assert!(sent >= 300, "the ping ran through the update: {sent} sent");
    assert!(lost * 1000 <= sent * 5, "{lost} of {sent} pings lost across the update (at most 0.5%)");
    reaches(&lab, &pods[0].netns, "pod to the VM after the update", VM_IP);

    // The DaemonSet's pod removed: the pods keep their TAPs and addresses, and forward again
    // at the next start, which finds no vswitchd to take over from.
    let stopped = kubelet.delete_pod(&second).expect("delete the DaemonSet's pod");
    assert_eq!(stopped[0].exit_code, 0);
    for p in &pods {
        let link = try_run(&["ip", "-n", &p.netns, "-d", "addr", "show", "eth0"]);
        let text = String::from_utf8_lossy(&link.stdout);
        assert!(
            text.contains("tun type tap") && text.contains(&format!("inet {}/32", p.ip)),
            "{}'s eth0: {text}",
            p.name
        );
    }
    let third = run_daemonset_pod(&kubelet, &daemonset_pod(ds), &updated, &objects);
    let log = kubelet.log(&third, "vswitchd");
    assert!(!log.contains("took over"), "a plain start:\n{log}");
    reaches(&lab, &pods[0].netns, "pod to pod after the next start", pods[1].ip);
    reaches(&lab, &pods[1].netns, "pod to the VM after the next start", VM_IP);
    let listed = ports(&node, &third);
    for p in &pods {
        assert!(listed.contains(&format!("{}:eth0", p.id)), "{}'s port was not restored: {listed:?}", p.name);
    }
}

/// What an image stage of a Containerfile makes: the paths its COPYs and RUNs create (not
/// directories) and its ENTRYPOINT, CMD and ENV.
#[derive(Debug, Default, PartialEq)]
struct Layout {
    files: BTreeSet<String>,
    entrypoint: Value,
    cmd: Value,
    env: Vec<String>,
}

/// The last stage of the Containerfile, read as podman/docker would build it. A RUN is
/// understood only as busybox's `--install -s DIR` (links to busybox for every applet).
fn containerfile_layout() -> Layout {
    let text = std::fs::read_to_string(repo(CONTAINERFILE)).expect("read the Containerfile");
    let mut instructions: Vec<String> = Vec::new();
    let mut current = String::new();
    for line in text.lines().map(str::trim).filter(|l| !l.starts_with('#')) {
        match line.strip_suffix('\\') {
            Some(part) => current += &format!("{part} "),
            None => {
                current += line;
                if !current.trim().is_empty() {
                    instructions.push(std::mem::take(&mut current));
                }
            }
        }
    }
    let stage = instructions.iter().rposition(|i| i.starts_with("FROM ")).expect("a FROM");
    let mut layout = Layout::default();
    for instruction in &instructions[stage + 1..] {
        let (op, rest) = instruction.split_once(' ').unwrap_or((instruction, ""));
        match op {
            "COPY" => {
                let words: Vec<&str> = rest.split_whitespace().filter(|w| !w.starts_with("--")).collect();
                let (dest, sources) = words.split_last().expect("COPY SRC... DEST");
                for source in sources {
                    let path = match dest.strip_suffix('/') {
                        Some(dir) => format!("{dir}/{}", Path::new(source).file_name().unwrap().to_string_lossy()),
                        None => dest.to_string(),
                    };
                    layout.files.insert(path);
                }
            }
            "RUN" => {
                let argv: Vec<String> = serde_json::from_str(rest).expect("RUN in exec form");
                let [busybox, install, symbolic, dir] = argv.as_slice() else { panic!("RUN {argv:?}") };
                assert_eq!((install.as_str(), symbolic.as_str()), ("--install", "-s"), "RUN {argv:?}");
                // The build stage's busybox is Debian's busybox-static, as this machine's.
                let applets = Command::new(busybox).arg("--list").output().expect("busybox --list");
                for applet in String::from_utf8_lossy(&applets.stdout).split_whitespace() {
                    layout.files.insert(format!("{dir}/{applet}"));
                }
            }
            "ENTRYPOINT" => layout.entrypoint = serde_json::from_str(rest).expect("ENTRYPOINT in exec form"),
            "CMD" => layout.cmd = serde_json::from_str(rest).expect("CMD in exec form"),
            "ENV" => layout.env.push(rest.to_string()),
            other => panic!("{other} in the Containerfile's image stage: teach this test what it makes"),
        }
    }
    layout
}

/// What the OCI archive holds: its one image's files (not directories) and configuration.
fn archive_layout(archive: &Path) -> Layout {
    let dir = TempDir::new();
    let oci = dir.0.join("oci");
    let rootfs = dir.0.join("rootfs");
    for d in [&oci, &rootfs] {
        std::fs::create_dir_all(d).unwrap();
    }
    let untar = |tarball: &Path, into: &Path| {
        let out = try_run(&["tar", "-xf", &tarball.to_string_lossy(), "-C", &into.to_string_lossy()]);
        assert!(out.status.success(), "untar {}: {}", tarball.display(), String::from_utf8_lossy(&out.stderr));
    };
    untar(archive, &oci);
    let blob = |digest: &Value| oci.join("blobs/sha256").join(digest.as_str().unwrap().trim_start_matches("sha256:"));
    let json = |path: PathBuf| -> Value { serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap() };
    let index = json(oci.join("index.json"));
    assert_eq!(index["manifests"].as_array().map(Vec::len), Some(1), "one image: {index}");
    let manifest = json(blob(&index["manifests"][0]["digest"]));
    for layer in manifest["layers"].as_array().unwrap() {
        untar(&blob(&layer["digest"]), &rootfs);
    }
    let mut files = BTreeSet::new();
    let mut stack = vec![rootfs.clone()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            } else {
                files.insert(format!("/{}", entry.path().strip_prefix(&rootfs).unwrap().display()));
            }
        }
    }
    let config = &json(blob(&manifest["config"]["digest"]))["config"];
    let env = config["Env"].as_array().into_iter().flatten().filter_map(|e| e.as_str().map(String::from)).collect();
    Layout { files, entrypoint: config["Entrypoint"].clone(), cmd: config["Cmd"].clone(), env }
}

#[test]
fn build_image_sh_lays_out_what_the_containerfile_does_and_tags_the_version() {
    let image = build_image();
    let commit = try_run(&["git", "-C", REPO, "rev-parse", "--short=7", "HEAD"]);
    let commit = String::from_utf8_lossy(&commit.stdout).trim().to_string();
    let tag = format!("localhost/vswitchd:{}-{commit}", env!("CARGO_PKG_VERSION"));
    assert!(
        image.reference == tag || image.reference == format!("{tag}-dirty"),
        "{} is not the workspace version and commit ({tag})",
        image.reference
    );
    let built = archive_layout(&image.archive);
    let declared = containerfile_layout();
    let only_built: Vec<&String> = built.files.difference(&declared.files).collect();
    let only_declared: Vec<&String> = declared.files.difference(&built.files).collect();
    assert!(
        only_built.is_empty() && only_declared.is_empty(),
        "build-image.sh and the Containerfile disagree:\n  only in the archive: {only_built:?}\n  only in the Containerfile: {only_declared:?}"
    );
    assert_eq!((&built.entrypoint, &built.cmd, &built.env), (&declared.entrypoint, &declared.cmd, &declared.env));
    // What the init containers' scripts and the probes run.
    for f in [
        "/usr/bin/vswitchd",
        "/usr/bin/vswitchctl",
        "/opt/cni/bin/vpc-cni",
        "/bin/sh",
        "/bin/cp",
        "/bin/chmod",
        "/bin/mv",
    ] {
        assert!(built.files.contains(f), "{f} is not in the image");
    }
    eprintln!(
        "{}: {} files, {} MB archive",
        image.reference,
        built.files.len(),
        std::fs::metadata(&image.archive).unwrap().len() >> 20
    );
}
