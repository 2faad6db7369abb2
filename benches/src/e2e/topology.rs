//! The paths under test: two "pods" (network namespaces) A and B, connected by a veth pair
//! directly, through a Linux bridge, through the kernel's own router (host /32 routes and a
//! proxy-ARP gateway, as UK8S and Calico wire pods), through vswitchd, through vswitchd in its
//! `tap_bounce` mode (the same ports and workers, but frames only bounced from one pod's TAP to
//! the other's: the ceiling of any TAP-based switch on this machine), and through Open vSwitch's
//! userspace (netdev) datapath. Each topology owns what it made and removes it on drop.
//!
//! Across nodes ([`CROSS_PATHS`], IPv4 only): pod A on node 1 and pod B on node 2, two node
//! namespaces on a fabric bridge, wired the kernel's way (Calico's) or by vswitchd in either of
//! the lab's uplink modes.
//!
//! Over IPv6 ([`IpFamily::Ipv6`]) the pods are [`A6`] and [`B6`] instead: on a /64 over the veth,
//! the bridge and Open vSwitch; /128s with host /128 routes and a link-local gateway for the
//! kernel router (Calico's IPv6 wiring); IPv6-only pods attached through vpc-cni for vswitchd.

use std::any::Any;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use vpc_lab::lab::{attach, node_ip, IpamMode, Lab, LabSpec, UplinkMode, VpcMode};
use vpc_lab::netns::{cni_command, have_tool, run_cni, Binaries, Daemon, Netns, Pod, TempDir};

use super::IpFamily;

pub const A: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
pub const B: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 3);
pub const A6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 2);
pub const B6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 3);
/// The kernel router's IPv6 gateway, as Calico does it: every host-side veth has the MAC
/// ee:ee:ee:ee:ee:ee and so this link-local address (its EUI-64), and the pods route ::/0 via it.
const CALICO_MAC: &str = "ee:ee:ee:ee:ee:ee";
const CALICO_GATEWAY6: &str = "fe80::ecee:eeff:feee:eeee";

/// A and B of `family`.
pub fn endpoints(family: IpFamily) -> (IpAddr, IpAddr) {
    match family {
        IpFamily::Ipv4 => (A.into(), B.into()),
        IpFamily::Ipv6 => (A6.into(), B6.into()),
    }
}

/// Every path, in the order the report shows them.
pub const PATHS: &[&str] = &["veth", "linux_bridge", "kernel_routed", "vswitchd", "tap_bounce", "ovs_netdev"];

/// Every cross-node path, in the order the report shows them.
pub const CROSS_PATHS: &[&str] = &["kernel_routed", "vswitchd_host_routed", "vswitchd_uplink"];

/// vswitchd's configuration for the `tap_bounce` path.
const TAP_BOUNCE_CONFIG: &str = "forwarding = \"tap_bounce\"\n";

/// Two endpoints and whatever connects them.
#[allow(missing_debug_implementations)] // holds type-erased guards
pub struct Topology {
    /// Namespace names of the sender (A) and the receiver (B).
    pub a: String,
    pub b: String,
    /// B's interface, whose receive counter says what was delivered.
    pub b_dev: String,
    /// B's address in the family measured.
    pub b_ip: IpAddr,
    /// The userspace process that forwards (vswitchd, ovs-vswitchd), for CPU accounting.
    pub forwarder_pid: Option<u32>,
    /// Addresses of the idle pods attached beside A and B (the scale measurement).
    pub idle_pods: Vec<String>,
    /// Dropped in order: pods first, then daemons, then the host namespace and scratch dirs.
    _keep: Vec<Box<dyn Any>>,
}

/// Builds `path`; `workers` is vswitchd's forwarding threads. None if the path's software is
/// missing (Open vSwitch is optional).
pub fn build(path: &str, workers: usize, family: IpFamily) -> Option<Topology> {
    match path {
        "veth" => Some(veth_direct(family)),
        "linux_bridge" => Some(linux_bridge(family)),
        "kernel_routed" => Some(kernel_routed(family)),
        "vswitchd" => Some(vswitchd_with_pods(workers, 0, family)),
        "tap_bounce" => Some(vswitchd_configured(workers, 0, family, TAP_BOUNCE_CONFIG)),
        "ovs_netdev" => ovs_netdev(family),
        other => panic!("unknown path {other:?}; paths are {PATHS:?}"),
    }
}

/// Builds cross-node `path` (IPv4); `workers` is each vswitchd's forwarding threads.
pub fn build_cross(path: &str, workers: usize) -> Option<Topology> {
    match path {
        "kernel_routed" => Some(kernel_routed_across()),
        "vswitchd_host_routed" => Some(lab_pods(UplinkMode::HostRouted, workers)),
        "vswitchd_uplink" => Some(lab_pods(UplinkMode::Uplink, workers)),
        other => panic!("unknown cross-node path {other:?}; paths are {CROSS_PATHS:?}"),
    }
}

/// Adds `ip/prefix_len` to `dev` and sets it up. IPv6 addresses skip duplicate address detection
/// (the benchmark picks unique ones) so they are usable at once.
fn addressed(ns: &Netns, dev: &str, ip: IpAddr, prefix_len: u8) {
    match ip {
        IpAddr::V4(_) => ns.ip(&["addr", "add", &format!("{ip}/{prefix_len}"), "dev", dev]),
        IpAddr::V6(_) => ns.ip(&["-6", "addr", "add", &format!("{ip}/{prefix_len}"), "dev", dev, "nodad"]),
    };
    ns.ip(&["link", "set", dev, "up"]);
}

/// The prefix length of the shared subnet on the veth, the bridge and Open vSwitch.
fn subnet_len(family: IpFamily) -> u8 {
    match family {
        IpFamily::Ipv4 => 24,
        IpFamily::Ipv6 => 64,
    }
}

fn sysctl(ns: &Netns, key: &str, value: &str) {
    let out = ns.exec(&["sysctl", "-qw", &format!("{key}={value}")]);
    assert!(out.status.success(), "sysctl {key}={value} in {}: {}", ns.name, String::from_utf8_lossy(&out.stderr));
}

fn veth_direct(family: IpFamily) -> Topology {
    let (a, b) = (Netns::new("vba"), Netns::new("vbb"));
    let (a_ip, b_ip) = endpoints(family);
    a.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns", &b.name]);
    addressed(&a, "eth0", a_ip, subnet_len(family));
    addressed(&b, "eth0", b_ip, subnet_len(family));
    Topology {
        a: a.name.clone(),
        b: b.name.clone(),
        b_dev: "eth0".into(),
        b_ip,
        forwarder_pid: None,
        idle_pods: Vec::new(),
        _keep: vec![Box::new(a), Box::new(b)],
    }
}

fn linux_bridge(family: IpFamily) -> Topology {
    let (host, a, b) = (Netns::new("vbh"), Netns::new("vba"), Netns::new("vbb"));
    let (a_ip, b_ip) = endpoints(family);
    host.ip(&["link", "add", "br0", "type", "bridge"]);
    host.ip(&["link", "set", "br0", "up"]);
    for (ns, ip, port) in [(&a, a_ip, "va"), (&b, b_ip, "vb")] {
        ns.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", &host.name]);
        host.ip(&["link", "set", port, "master", "br0", "up"]);
        addressed(ns, "eth0", ip, subnet_len(family));
    }
    Topology {
        a: a.name.clone(),
        b: b.name.clone(),
        b_dev: "eth0".into(),
        b_ip,
        forwarder_pid: None,
        idle_pods: Vec::new(),
        _keep: vec![Box::new(a), Box::new(b), Box::new(host)],
    }
}

/// Pods with /32 addresses and a default route via 169.254.1.1, which the host answers by
/// proxy-ARP; the host routes each pod's /32 out of its veth. Over IPv6, see [`kernel_routed6`].
fn kernel_routed(family: IpFamily) -> Topology {
    if family == IpFamily::Ipv6 {
        return kernel_routed6();
    }
    let (host, a, b) = (Netns::new("vbh"), Netns::new("vba"), Netns::new("vbb"));
    // Proxy-ARP answers only for addresses routed out of another interface: give the host a
    // default route of its own.
    host.ip(&["link", "add", "up0", "type", "veth", "peer", "name", "up1"]);
    host.ip(&["link", "set", "up1", "up"]);
    addressed(&host, "up0", Ipv4Addr::new(192, 0, 2, 1).into(), 24);
    host.ip(&["route", "add", "default", "via", "192.0.2.2"]);
    sysctl(&host, "net.ipv4.ip_forward", "1");
    routed_pod(&host, &a, A, "va");
    routed_pod(&host, &b, B, "vb");
    Topology {
        a: a.name.clone(),
        b: b.name.clone(),
        b_dev: "eth0".into(),
        b_ip: B.into(),
        forwarder_pid: None,
        idle_pods: Vec::new(),
        _keep: vec![Box::new(a), Box::new(b), Box::new(host)],
    }
}

/// Wires `pod` to `host` as Calico does: a veth (`port` on the host side) with proxy-ARP and no
/// proxy delay, the pod's /32 routed out of it, and in the pod `ip`/32 with a default route via
/// 169.254.1.1, which the host answers for (it must route that address out of another interface).
fn routed_pod(host: &Netns, pod: &Netns, ip: Ipv4Addr, port: &str) {
    pod.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", &host.name]);
    host.ip(&["link", "set", port, "up"]);
    sysctl(host, &format!("net.ipv4.conf.{port}.proxy_arp"), "1");
    sysctl(host, &format!("net.ipv4.neigh.{port}.proxy_delay"), "0");
    host.ip(&["route", "add", &format!("{ip}/32"), "dev", port]);
    addressed(pod, "eth0", ip.into(), 32);
    pod.ip(&["route", "add", "169.254.1.1", "dev", "eth0", "scope", "link"]);
    pod.ip(&["route", "add", "default", "via", "169.254.1.1", "dev", "eth0"]);
}

/// The IPv6 twin of [`kernel_routed`], wired as Calico wires IPv6 pods: pods with /128 addresses
/// (no router advertisements, no autoconfiguration) and `::/0` via fe80::ecee:eeff:feee:eeee,
/// the link-local address every host-side veth has from its MAC ee:ee:ee:ee:ee:ee, so the host
/// answers the pods' neighbour solicitations for the gateway itself; proxy-NDP is enabled on the
/// host veths as Calico does, though nothing here needs it. The host forwards, with a /128 route
/// per pod out of its veth.
fn kernel_routed6() -> Topology {
    let (host, a, b) = (Netns::new("vbh"), Netns::new("vba"), Netns::new("vbb"));
    sysctl(&host, "net.ipv6.conf.all.forwarding", "1");
    for (ns, ip, port) in [(&a, A6, "va"), (&b, B6, "vb")] {
        ns.ip(&["link", "add", "eth0", "type", "veth", "peer", "name", port, "netns", &host.name]);
        host.ip(&["link", "set", port, "address", CALICO_MAC]);
        sysctl(&host, &format!("net.ipv6.conf.{port}.proxy_ndp"), "1");
        sysctl(&host, &format!("net.ipv6.conf.{port}.accept_ra"), "0");
        addressed(&host, port, CALICO_GATEWAY6.parse::<Ipv6Addr>().expect("an address").into(), 64);
        host.ip(&["-6", "route", "add", &format!("{ip}/128"), "dev", port]);
        for key in ["accept_ra", "autoconf"] {
            sysctl(ns, &format!("net.ipv6.conf.eth0.{key}"), "0");
        }
        addressed(ns, "eth0", ip.into(), 128);
        ns.ip(&["-6", "route", "add", "default", "via", CALICO_GATEWAY6, "dev", "eth0"]);
    }
    Topology {
        a: a.name.clone(),
        b: b.name.clone(),
        b_dev: "eth0".into(),
        b_ip: B6.into(),
        forwarder_pid: None,
        idle_pods: Vec::new(),
        _keep: vec![Box::new(a), Box::new(b), Box::new(host)],
    }
}

/// Runs vpc-cni ADD for `container` in `sandbox` with `conf`; returns the first address of the
/// result.
fn cni_add(plugin: &Path, conf: &serde_json::Value, container: &str, sandbox: &Netns) -> IpAddr {
    let out = run_cni(cni_command(plugin, "ADD", container, &sandbox.path()), conf);
    assert!(out.status.success(), "vpc-cni ADD for {container}: {}", String::from_utf8_lossy(&out.stdout));
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).expect("a CNI result");
    let address = result["ips"][0]["address"].as_str().expect("an address in the result");
    address.split('/').next().unwrap_or(address).parse().expect("an IP address")
}

/// vswitchd with pods A and B, plus `extra` more pods attached through vpc-cni (called the way
/// a container runtime calls it) and left idle: the scale measurement.
///
/// Over IPv4, A and B are the test toolkit's pods (a multi-queue TAP addressed as vpc-cni
/// addresses it) attached with `vswitchctl add-port`. Over IPv6 they are attached through
/// vpc-cni itself on an IPv6-only network (`fd00:77::2`-`fd00:77::ff`): the pod gets its `/128`,
/// `::/0` via the gateway's link-local address with a permanent neighbour entry, no router
/// advertisements, and the ADD returns once duplicate address detection is done.
pub fn vswitchd_with_pods(workers: usize, extra: usize, family: IpFamily) -> Topology {
    vswitchd_configured(workers, extra, family, "")
}

/// [`vswitchd_with_pods`] with `config` as vswitchd's configuration file.
fn vswitchd_configured(workers: usize, extra: usize, family: IpFamily, config: &str) -> Topology {
    let dir = TempDir::new();
    let node = Netns::new("vbn");
    let bins = Binaries::beside_current_exe();
    // Daemon panics if vswitchd never comes up; say why before the scratch dir with its log goes.
    let daemon = std::panic::catch_unwind(|| Daemon::start_with_config(&bins, &node, &dir.0, workers, config))
        .unwrap_or_else(|_| panic!("vswitchd with configuration {config:?} did not start: {}", logs(&dir.0)));
    let plugin = bins.vswitchd.with_file_name("vpc-cni");
    let (na, nb, b_ip, pods): (String, String, IpAddr, Box<dyn Any>) = match family {
        IpFamily::Ipv4 => {
            let (a, b) = (Pod::new(A), Pod::new(B));
            daemon.attach("a", &a);
            daemon.attach("b", &b);
            (a.ns.name.clone(), b.ns.name.clone(), B.into(), Box::new((a, b)))
        }
        IpFamily::Ipv6 => {
            let conf6 = serde_json::json!({
                "cniVersion": "1.0.0", "name": "vpc6", "type": "vpc-cni", "vswitchSocket": daemon.socket,
                "ipam": {"ranges": [{"rangeStart": A6, "rangeEnd": "fd00:77::ff"}], "dataDir": dir.0.join("ipam")}
            });
            let (a, b) = (Netns::new("vba"), Netns::new("vbb"));
            cni_add(&plugin, &conf6, "pod-a", &a);
            let b_ip = cni_add(&plugin, &conf6, "pod-b", &b);
            (a.name.clone(), b.name.clone(), b_ip, Box::new((a, b)))
        }
    };
    let conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "vpc", "type": "vpc-cni", "vswitchSocket": daemon.socket,
        "ipam": {"ranges": [{"rangeStart": "10.77.1.1", "rangeEnd": "10.77.31.250"}], "dataDir": dir.0.join("ipam")}
    });
    let (mut idle, mut idle_pods) = (Vec::with_capacity(extra), Vec::with_capacity(extra));
    for i in 0..extra {
        let sandbox = Netns::new("vbp");
        idle_pods.push(cni_add(&plugin, &conf, &format!("idle-{i}"), &sandbox).to_string());
        idle.push(sandbox);
    }
    // `ip netns exec` execs the daemon, so the child's pid is vswitchd's.
    let pid = daemon.child.as_ref().map(|c| c.id());
    Topology {
        a: na,
        b: nb,
        b_dev: "eth0".into(),
        b_ip,
        forwarder_pid: pid,
        idle_pods,
        _keep: vec![pods, Box::new(idle), Box::new(daemon), Box::new(node), Box::new(dir)],
    }
}

/// The tail of the vswitchd logs in `dir`.
fn logs(dir: &Path) -> String {
    let mut text = String::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_name().to_string_lossy().starts_with("vswitchd-") {
            text.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
        }
    }
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(5)..].join("\n")
}

/// Pods on different nodes through the kernel's router, wired as Calico wires them (see
/// [`routed_pod`]): node i (the lab's address [`node_ip`]) on a fabric bridge, its pod at
/// 10.10.i.10 from the pod block 10.10.i.0/24, and each node routing the other's block via the
/// other node's fabric address. No kube-proxy rules, so no conntrack: a baseline in the kernel's
/// favour.
fn kernel_routed_across() -> Topology {
    let fabric = Netns::new("vbf");
    fabric.ip(&["link", "add", "br0", "type", "bridge"]);
    fabric.ip(&["link", "set", "br0", "up"]);
    let (nodes, pods) = ([Netns::new("vbn"), Netns::new("vbn")], [Netns::new("vba"), Netns::new("vbb")]);
    let pod_ip = |i: usize| Ipv4Addr::new(10, 10, i as u8 + 1, 10);
    for (i, (node, pod)) in nodes.iter().zip(&pods).enumerate() {
        attach(&fabric, node, "eth0", &format!("fn{}", i + 1), &format!("{}/16", node_ip(i)));
        // Where proxy-ARP sees 169.254.1.1 routed (out of eth0, not the pod's veth).
        node.ip(&["route", "add", "default", "via", "10.10.0.1"]);
        sysctl(node, "net.ipv4.ip_forward", "1");
        routed_pod(node, pod, pod_ip(i), "cali0");
        let other = 1 - i;
        node.ip(&["route", "add", &format!("10.10.{}.0/24", other + 1), "via", &node_ip(other).to_string()]);
    }
    let [a, b] = pods;
    Topology {
        a: a.name.clone(),
        b: b.name.clone(),
        b_dev: "eth0".into(),
        b_ip: pod_ip(1).into(),
        forwarder_pid: None,
        idle_pods: Vec::new(),
        _keep: vec![Box::new(a), Box::new(b), Box::new(nodes), Box::new(fabric)],
    }
}

/// Pods on different nodes through vswitchd: the lab with 2 nodes of one pod each (pods through
/// vpc-cni, a kube-proxy Service on each node), in uplink mode `mode`, on the enforcing VPC
/// (`--vpc ucloud`: the SDN's nftables checks every frame, and the pods' addresses are
/// secondary IPs from the VPC API, as on a real VPC). Two daemons forward, so no single
/// process's CPU is counted.
fn lab_pods(mode: UplinkMode, workers: usize) -> Topology {
    let spec = LabSpec {
        mode,
        nodes: 2,
        pods_per_node: 1,
        workers,
        vpc: VpcMode::Ucloud,
        ipam: IpamMode::Vpc,
        ..LabSpec::default()
    };
    let lab = Lab::up(spec, |_| {});
    let (a, b) = (&lab.pods[0], &lab.pods[1]);
    assert!(a.node == 0 && b.node == 1, "one pod on each node: {:?}", lab.pods);
    Topology {
        a: a.netns.clone(),
        b: b.netns.clone(),
        b_dev: "eth0".into(),
        b_ip: b.ip4().into(),
        forwarder_pid: None,
        idle_pods: Vec::new(),
        _keep: vec![Box::new(lab)],
    }
}

/// ovsdb-server and ovs-vswitchd started by hand (no systemd, no kernel module) in their own run
/// directory, inside a host namespace of their own; killed on drop.
struct OvsDaemons {
    dir: TempDir,
}

impl OvsDaemons {
    fn vsctl(&self, args: &[&str]) -> Result<(), String> {
        let db = format!("unix:{}", self.dir.0.join("db.sock").display());
        let out = ovs_command("ovs-vsctl", &self.dir.0)
            .arg(format!("--db={db}"))
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!("ovs-vsctl {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
        }
    }

    fn pid(&self, name: &str) -> Option<u32> {
        std::fs::read_to_string(self.dir.0.join(name)).ok()?.trim().parse().ok()
    }
}

impl Drop for OvsDaemons {
    fn drop(&mut self) {
        for pidfile in ["vswitchd.pid", "ovsdb.pid"] {
            if let Some(pid) = self.pid(pidfile) {
                let _ =
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
}

fn ovs_command(program: &str, dir: &Path) -> Command {
    let mut command = Command::new(program);
    for var in ["OVS_RUNDIR", "OVS_LOGDIR", "OVS_DBDIR", "OVS_SYSCONFDIR"] {
        command.env(var, dir);
    }
    command
}

fn run_ok(mut command: Command) -> Result<(), String> {
    let out = command.output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{command:?}: {}", String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Open vSwitch 3.x userspace datapath with userspace TSO, `internal` (tap) ports moved into the
/// pods: Open vSwitch as vswitchd's peer, in its fastest userspace setup (without userspace TSO
/// it forwards TCP several times slower). None if Open vSwitch is not installed.
fn ovs_netdev(family: IpFamily) -> Option<Topology> {
    if !have_tool("ovs-vswitchd") {
        eprintln!("  ovs_netdev: not measured (openvswitch-switch is not installed)");
        return None;
    }
    let host = Netns::new("vbh");
    let ovs = OvsDaemons { dir: TempDir::new() };
    let d = ovs.dir.0.clone();
    let db = d.join("conf.db");
    let started = (|| -> Result<(), String> {
        let mut create = ovs_command("ovsdb-tool", &d);
        create.args(["create", db.to_str().unwrap(), "/usr/share/openvswitch/vswitch.ovsschema"]);
        run_ok(create)?;
        let mut server = ovs_command("ip", &d);
        server.args(["netns", "exec", &host.name, "ovsdb-server", db.to_str().unwrap()]);
        server.arg(format!("--remote=punix:{}", d.join("db.sock").display()));
        server.arg(format!("--pidfile={}", d.join("ovsdb.pid").display()));
        server.arg(format!("--log-file={}", d.join("ovsdb.log").display())).arg("--detach");
        run_ok(server)?;
        ovs.vsctl(&["--no-wait", "init"])?;
        // Read once at start-up: must be set before ovs-vswitchd starts.
        ovs.vsctl(&["--no-wait", "set", "Open_vSwitch", ".", "other_config:userspace-tso-enable=true"])?;
        let mut switch = ovs_command("ip", &d);
        switch.args(["netns", "exec", &host.name, "ovs-vswitchd", &format!("unix:{}", d.join("db.sock").display())]);
        switch.arg(format!("--pidfile={}", d.join("vswitchd.pid").display()));
        switch.arg(format!("--log-file={}", d.join("vswitchd.log").display())).arg("--detach");
        run_ok(switch)?;
        ovs.vsctl(&["add-br", "br0", "--", "set", "bridge", "br0", "datapath_type=netdev"])?;
        for port in ["pa", "pb"] {
            ovs.vsctl(&["add-port", "br0", port, "--", "set", "Interface", port, "type=internal"])?;
        }
        Ok(())
    })();
    if let Err(e) = started {
        eprintln!("  ovs_netdev: not measured, Open vSwitch did not start: {e}");
        return None;
    }
    let (a, b) = (Netns::new("vba"), Netns::new("vbb"));
    let (a_ip, b_ip) = endpoints(family);
    for (ns, ip, port) in [(&a, a_ip, "pa"), (&b, b_ip, "pb")] {
        wait_for_link(&host, port);
        host.ip(&["link", "set", port, "netns", &ns.name]);
        addressed(ns, port, ip, subnet_len(family));
    }
    let pid = ovs.pid("vswitchd.pid");
    Some(Topology {
        a: a.name.clone(),
        b: b.name.clone(),
        b_dev: "pb".into(),
        b_ip,
        forwarder_pid: pid,
        idle_pods: Vec::new(),
        _keep: vec![Box::new(a), Box::new(b), Box::new(ovs), Box::new(host)],
    })
}

fn wait_for_link(ns: &Netns, name: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ns.exec(&["ip", "link", "show", name]).status.success() {
        assert!(Instant::now() < deadline, "Open vSwitch did not create {name}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
