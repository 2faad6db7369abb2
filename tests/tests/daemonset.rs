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
use vpc_lab::netns::{try_run, unique, Netns, TempDir};

// The crate root is tests/daemonset.rs, so its modules sit beside it unless told.
#[path = "daemonset/image.rs"]
mod image;

use image::build_image;

const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
const DAEMONSET: &str = "cni/deploy/vswitchd-daemonset.yaml";
const CONFLIST: &str = "cni/vpc-cni.conflist";
/// The DaemonSet's node is the lab's third (10.10.0.13); the lab itself has two.
const NODE: usize = 2;
const NODE_NAME: &str = "node3";
/// What the ConfigMap's vswitchd hands out.
const POD_POOL: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 10, 64, 0), 18);

fn repo(path: &str) -> PathBuf {
    Path::new(REPO).join(path)
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

/// The OCI runtime spec containerd gave runc for container `id`.
fn runtime_spec(node: &Node, id: &str) -> Value {
    node.containerd.cri().container_status(id).expect("ContainerStatus").info["runtimeSpec"].clone()
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array().into_iter().flatten().filter_map(|c| c.as_str().map(String::from)).collect()
}

fn in_pool(ip: Ipv4Addr) -> bool {
    u32::from(ip) >> (32 - POD_POOL.1) == u32::from(POD_POOL.0) >> (32 - POD_POOL.1)
}

/// The cluster the DaemonSet is applied to: the lab, the DaemonSet's node and its kubelet,
/// the manifest's DaemonSet and the objects it refers to.
struct Cluster<'a> {
    lab: &'a Lab,
    node: &'a Node,
    kubelet: Kubelet<'a>,
    ds: &'a Value,
    objects: &'a ApiObjects,
}

impl Cluster<'_> {
    /// Runs a pod of the DaemonSet from `template` as kubelet does once the controller made it,
    /// and waits for its readiness probe; panics with vswitchd's log on failure.
    fn run_daemonset_pod(&self, template: &Value) -> RunningPod {
        let ds = self.ds;
        let suffix: String = unique("").chars().rev().take(5).collect();
        let meta = PodMeta {
            name: format!("{}-{suffix}", ds["metadata"]["name"].as_str().unwrap()),
            namespace: ds["metadata"]["namespace"].as_str().unwrap_or("default").into(),
            uid: unique("uid-ds-"),
        };
        let pod = self.kubelet.run_pod(&meta, template, self.objects).unwrap_or_else(|e| panic!("{}: {e}", meta.name));
        match self.kubelet.wait_probe(&pod, "vswitchd", "readinessProbe", Duration::from_secs(60)) {
            Ok(after) => eprintln!("{} ready {after:.1?} after vswitchd started", meta.name),
            Err(e) => panic!("{e}\nvswitchd's log:\n{}", self.kubelet.log(&pod, "vswitchd")),
        }
        pod
    }

    /// `ping` from namespace `from`; panics with what it said.
    fn reaches(&self, from: &str, what: &str, to: Ipv4Addr) {
        if let Err(e) = self.lab.ping(from, to) {
            panic!("{what} ({from} -> {to}): {e}");
        }
    }

    /// What the init containers left on the node: IPv4 forwarding on, the plugin and the
    /// shipped conflist installed (and loaded by containerd); and the liveness probe passes.
    fn assert_node_prepared(&self, pod: &RunningPod) {
        let declared: Vec<&str> = self.ds["spec"]["template"]["spec"]["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        let ran: Vec<&str> = pod.init_containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(ran, declared, "the init containers, each to exit 0, in order");
        let node = self.node;
        let forward = node.ns.exec(&["cat", "/proc/sys/net/ipv4/ip_forward"]);
        assert_eq!(String::from_utf8_lossy(&forward.stdout).trim(), "1", "IPv4 forwarding on the node");
        let plugin = node.containerd.node_path("/opt/cni/bin/vpc-cni");
        let version = Command::new(&plugin).arg("--version").output().expect("the installed vpc-cni runs");
        assert!(version.status.success(), "{}: {version:?}", plugin.display());
        let conflist = node.containerd.node_path("/etc/cni/net.d/10-vpc.conflist");
        let conflist = std::fs::read(&conflist).unwrap_or_else(|e| panic!("{}: {e}", conflist.display()));
        assert_eq!(conflist, std::fs::read(repo(CONFLIST)).unwrap(), "install-cni installs the shipped conflist");
        node.containerd.cri().wait_network_ready(Duration::from_secs(20)).expect("containerd loads the conflist");
        let live = pod.spec["containers"][0]["livenessProbe"].clone();
        self.kubelet.probe_once(pod, "vswitchd", &live).unwrap_or_else(|e| panic!("the liveness probe: {e}"));
    }

    /// Every container as runc ran it, against the manifest: a privileged one with every
    /// capability, the others with containerd's defaults (no CAP_SYS_ADMIN, no CAP_NET_ADMIN)
    /// and what they add; each volume where declared, read-only where declared and for
    /// ConfigMaps and Secrets, `rslave` for HostToContainer. And vswitchd's command with the
    /// node's name from the downward API, its files with the volumes' modes.
    fn assert_runs_as_declared(&self, pod: &RunningPod) {
        let node = self.node;
        let volumes = pod.spec["volumes"].as_array().unwrap();
        let kind = |name: &str| volumes.iter().find(|v| v["name"] == name).map(|v| v.as_object().unwrap().keys());
        for (started, declared) in pod.init_containers.iter().chain(&pod.containers).map(|c| {
            let all =
                pod.spec["initContainers"].as_array().unwrap().iter().chain(pod.spec["containers"].as_array().unwrap());
            (c, all.clone().find(|d| d["name"] == c.name.as_str()).unwrap())
        }) {
            let spec = runtime_spec(node, &started.id);
            let caps = strings(&spec["process"]["capabilities"]["bounding"]);
            let name = &started.name;
            if declared["securityContext"]["privileged"] == true {
                assert!(caps.contains("CAP_SYS_ADMIN") && caps.contains("CAP_NET_ADMIN"), "{name}: {caps:?}");
            } else {
                assert!(
                    !caps.is_empty() && !caps.contains("CAP_SYS_ADMIN") && !caps.contains("CAP_NET_ADMIN"),
                    "{name}: {caps:?}"
                );
                for add in strings(&declared["securityContext"]["capabilities"]["add"]) {
                    assert!(caps.contains(&format!("CAP_{add}")), "{name} lacks {add}: {caps:?}");
                }
            }
            let mounts = spec["mounts"].as_array().unwrap();
            for m in declared["volumeMounts"].as_array().into_iter().flatten() {
                let path = m["mountPath"].as_str().unwrap();
                let found = mounts.iter().find(|r| r["destination"] == path);
                let options = strings(&found.unwrap_or_else(|| panic!("{name}: nothing at {path}"))["options"]);
                let atomic =
                    kind(m["name"].as_str().unwrap()).is_some_and(|mut k| k.any(|k| k == "configMap" || k == "secret"));
                assert_eq!(options.contains("ro"), m["readOnly"] == true || atomic, "{name} {path}: {options:?}");
                let rslave = m["mountPropagation"] == "HostToContainer";
                assert_eq!(options.contains("rslave"), rslave, "{name} {path}: {options:?}");
            }
        }
        let vswitchd = pod.container("vswitchd").unwrap();
        let spec = runtime_spec(node, &vswitchd.id);
        let args: Vec<&str> = spec["process"]["args"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
        let at = args.iter().position(|a| *a == "--node-name").expect("--node-name");
        assert_eq!(args[at + 1], NODE_NAME, "$(NODE_NAME) from spec.nodeName: {args:?}");
        let files = ["/etc/vswitchd/etcd/tls.key", "/etc/vswitchd/vswitchd.toml"];
        let modes = exec(node, &vswitchd.id, &["stat", "-L", "-c", "%a %n", files[0], files[1]]);
        let modes: Vec<&str> = modes.lines().collect();
        assert_eq!(modes, ["400 /etc/vswitchd/etcd/tls.key", "644 /etc/vswitchd/vswitchd.toml"], "defaultMode");
    }

    /// Pods through the same CRI get addresses from the pool, reach each other, the node and
    /// the VM, and are reached from both; vswitchd has their ports.
    fn assert_pods_wired(&self, pods: &[TestPod], vswitchd: &RunningPod) {
        for p in pods {
            assert!(in_pool(p.ip), "{} got {} outside the pool", p.name, p.ip);
        }
        assert_ne!(pods[0].ip, pods[1].ip);
        self.reaches(&pods[0].netns, "pod to pod", pods[1].ip);
        self.reaches(&pods[1].netns, "pod to pod", pods[0].ip);
        self.reaches(&pods[0].netns, "pod to its node", node_ip(NODE));
        self.reaches(&pods[0].netns, "pod to the VM", VM_IP);
        self.reaches(&self.node.ns.name, "node to pod", pods[1].ip);
        self.reaches(&self.lab.vm, "VM to pod", pods[0].ip);
        self.assert_ports(vswitchd, pods);
    }

    /// The containerised vswitchd has the pods' ports (asked through its own vswitchctl).
    fn assert_ports(&self, pod: &RunningPod, pods: &[TestPod]) {
        let vswitchd = pod.container("vswitchd").expect("the vswitchd container");
        let text = exec(self.node, &vswitchd.id, &["vswitchctl", "--json", "ports"]);
        let json: Value = serde_json::from_str(&text).unwrap();
        let listed: Vec<&str> = json.as_array().unwrap().iter().filter_map(|p| p["name"].as_str()).collect();
        for p in pods {
            assert!(listed.contains(&format!("{}:eth0", p.id).as_str()), "no port for {}: {listed:?}", p.name);
        }
    }

    /// The rolling update the manifest declares (maxSurge 1, maxUnavailable 0) to `image`: the
    /// new pod beside the old, which its vswitchd takes over from; once it is ready the
    /// controller deletes the old pod, whose container, idle since the handover, exits 0. At
    /// most 0.5% of a 100/s ping between two pods is lost across it. Returns the new pod.
    fn rolling_update(&self, old: &RunningPod, image: &str, pods: &[TestPod]) -> RunningPod {
        let strategy = &self.ds["spec"]["updateStrategy"];
        assert_eq!(strategy["type"], "RollingUpdate");
        let rolling = &strategy["rollingUpdate"];
        assert_eq!((rolling["maxSurge"].as_u64(), rolling["maxUnavailable"].as_u64()), (Some(1), Some(0)));
        let updated = with_image(&self.ds["spec"]["template"], image);
        let old_vswitchd = old.container("vswitchd").unwrap();
        let ping = Ping::start(&pods[0].netns, pods[1].ip);
        std::thread::sleep(Duration::from_secs(1));
        let started = Instant::now();
        let new = self.run_daemonset_pod(&updated);
        let idle = self.node.containerd.cri().container_status(&old_vswitchd.id).unwrap();
        let stopped = self.kubelet.delete_pod(old).expect("delete the old pod");
        let took = started.elapsed();
        std::thread::sleep(Duration::from_secs(1));
        let (sent, received) = ping.stop();
        let (new_log, old_log) = (self.kubelet.log(&new, "vswitchd"), self.kubelet.log(old, "vswitchd"));
        assert!(new_log.contains("took over from the running vswitchd"), "the new vswitchd's log:\n{new_log}");
        assert!(old_log.contains("handed over; idle until terminated"), "the old vswitchd's log:\n{old_log}");
        // An exit would have restarted the container, which would have taken over again.
        assert!(idle.running(), "the old container before its pod was deleted: {:?}", idle.status);
        assert_eq!(stopped.len(), 1);
        assert_eq!(stopped[0].exit_code, 0, "the old vswitchd exits 0 on SIGTERM");
        let lost = sent - received;
        eprintln!(
            "rolling update in {took:.1?}: {lost} of {sent} pings lost; the old container exited {:.1?} after SIGTERM",
            stopped[0].took
        );
        assert!(sent >= 300, "the ping ran through the update: {sent} sent");
        assert!(lost * 1000 <= sent * 5, "{lost} of {sent} pings lost across the update (at most 0.5%)");
        self.reaches(&pods[0].netns, "pod to the VM after the update", VM_IP);
        new
    }

    /// The DaemonSet's pod deleted: vswitchd exits 0, the pods keep their TAPs and addresses;
    /// the next pod of the DaemonSet, finding no vswitchd to take over from, starts plainly
    /// and the pods forward again, their ports restored.
    fn removal_keeps_the_pods(&self, pod: &RunningPod, template: &Value, pods: &[TestPod]) {
        let stopped = self.kubelet.delete_pod(pod).expect("delete the DaemonSet's pod");
        assert_eq!(stopped[0].exit_code, 0);
        for p in pods {
            let link = try_run(&["ip", "-n", &p.netns, "-d", "addr", "show", "eth0"]);
            let text = String::from_utf8_lossy(&link.stdout);
            let kept = text.contains("tun type tap") && text.contains(&format!("inet {}/32", p.ip));
            assert!(kept, "{}'s eth0 after vswitchd went: {text}", p.name);
        }
        let next = self.run_daemonset_pod(template);
        let log = self.kubelet.log(&next, "vswitchd");
        assert!(!log.contains("took over"), "a plain start:\n{log}");
        self.reaches(&pods[0].netns, "pod to pod after the next start", pods[1].ip);
        self.reaches(&pods[1].netns, "pod to the VM after the next start", VM_IP);
        self.assert_ports(&next, pods);
    }
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
    let found = node.containerd.cri().has_image(&image.reference).unwrap();
    assert!(found, "{} not seen after:\n{imported}", image.reference);
    let docs = manifest(&image.reference);
    let objects = api_objects(&docs, lab.etcd().expect("etcd runs").tls());
    let ds = of_kind(&docs, "DaemonSet");
    let cluster = Cluster { lab: &lab, node: &node, kubelet: node.kubelet(), ds, objects: &objects };

    let first = cluster.run_daemonset_pod(&ds["spec"]["template"]);
    cluster.assert_node_prepared(&first);
    cluster.assert_runs_as_declared(&first);
    let pods = [node.run_pod("web-0"), node.run_pod("web-1")];
    cluster.assert_pods_wired(&pods, &first);
    // A newer tag of the image, as a new build would bring.
    let newer = format!("{}-update", image.reference);
    node.containerd.tag_image(&image.reference, &newer).unwrap_or_else(|e| panic!("{e}"));
    let second = cluster.rolling_update(&first, &newer, &pods);
    cluster.removal_keeps_the_pods(&second, &with_image(&ds["spec"]["template"], &newer), &pods);
}
