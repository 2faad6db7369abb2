//! Real network namespaces, pods and daemons. Every name is unique per process and use, and
//! everything made here is removed on drop, also when a test fails or a tool is interrupted.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const GATEWAY_IP: &str = "169.254.1.1";
pub const GATEWAY_MAC: &str = "02:00:a9:fe:01:01";

/// Fails (never skips) when not root: these tests are part of CI, which runs as root.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root to create network namespaces and TAP devices; run the suite as root (CI does)"
    );
    for tool in ["ip", "ping", "iperf3"] {
        assert!(have_tool(tool), "this test needs `{tool}` (tests/run.sh installs it)");
    }
}

/// Whether `tool` is on the PATH.
pub fn have_tool(tool: &str) -> bool {
    Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().is_ok_and(|o| o.status.success())
}

/// What one iperf3 TCP run measured.
#[derive(Debug, Clone, Copy)]
pub struct TcpRun {
    /// At the receiver.
    pub bits_per_second: f64,
    pub bytes: f64,
    /// Segments the sender sent again.
    pub retransmits: u64,
}

impl TcpRun {
    /// Retransmitted segments per segment sent (taking full-size segments of a 1500-byte MTU).
    pub fn retransmit_ratio(&self) -> f64 {
        self.retransmits as f64 / (self.bytes / 1448.0).max(1.0)
    }
}

/// One iperf3 TCP run: a one-shot server in namespace `server` (reached at `server_ip`), the
/// client in `client`. Returns what it measured, or what iperf3 said instead.
pub fn iperf3(client: &str, server: &str, server_ip: Ipv4Addr, streams: u32, seconds: u32) -> Result<TcpRun, String> {
    iperf3_ip(client, server, server_ip.into(), streams, seconds)
}

/// The same to an address of either family.
pub fn iperf3_ip(client: &str, server: &str, server_ip: IpAddr, streams: u32, seconds: u32) -> Result<TcpRun, String> {
    iperf3_run(client, server, server_ip, 5201, &["-t", &seconds.to_string(), "-P", &streams.to_string()])
}

/// One iperf3 TCP stream of `bytes` bytes, to a one-shot server on `port`.
pub fn iperf3_bytes(client: &str, server: &str, server_ip: IpAddr, port: u16, bytes: u64) -> Result<TcpRun, String> {
    iperf3_run(client, server, server_ip, port, &["-n", &bytes.to_string()])
}

fn iperf3_run(client: &str, server: &str, server_ip: IpAddr, port: u16, what: &[&str]) -> Result<TcpRun, String> {
    let port = port.to_string();
    let mut listener = Command::new("ip")
        .args(["netns", "exec", server, "iperf3", "-s", "-1", "-p", &port])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("iperf3 server: {e}"))?;
    std::thread::sleep(Duration::from_millis(300));
    let ip = server_ip.to_string();
    let mut args = vec!["ip", "netns", "exec", client, "iperf3", "-c", &ip, "-p", &port, "-J"];
    args.extend_from_slice(what);
    let out = try_run(&args);
    let _ = listener.kill();
    let _ = listener.wait();
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("iperf3 printed no report: {e}"))?;
    let end = &report["end"];
    match (end["sum_received"]["bits_per_second"].as_f64(), end["sum_received"]["bytes"].as_f64()) {
        (Some(bits_per_second), Some(bytes)) => {
            Ok(TcpRun { bits_per_second, bytes, retransmits: end["sum_sent"]["retransmits"].as_u64().unwrap_or(0) })
        }
        _ => Err(format!("iperf3: {} {}", report["error"], end)),
    }
}

/// A short unique name: `prefix` + pid + a per-process counter.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}{:x}{}", std::process::id() & 0xffff, NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Runs a command and returns its output; panics with its stderr if it fails.
pub fn run(args: &[&str]) -> Output {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{}: {e}", args[0]));
    assert!(
        out.status.success(),
        "{:?} failed: {}{}",
        args,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn try_run(args: &[&str]) -> Output {
    Command::new(args[0]).args(&args[1..]).output().unwrap_or_else(|e| panic!("{}: {e}", args[0]))
}

/// The processes running in namespace `name` (`ip netns pids`); none if it does not exist.
pub fn pids_in(name: &str) -> Vec<u32> {
    let out = try_run(&["ip", "netns", "pids", name]);
    String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect()
}

/// A network namespace, deleted (with every device in it) on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(prefix: &str) -> Netns {
        let name = unique(prefix);
        run(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    pub fn ip(&self, args: &[&str]) -> Output {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        run(&full)
    }

    /// The interface index of `dev` in this namespace.
    pub fn ifindex(&self, dev: &str) -> u32 {
        let out = self.exec(&["cat", &format!("/sys/class/net/{dev}/ifindex")]);
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim().parse().unwrap_or_else(|_| panic!("{dev} in {}: no ifindex ({text})", self.name))
    }

    pub fn exec(&self, args: &[&str]) -> Output {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        try_run(&full)
    }

    /// Leaves the namespace in place and returns its name (who keeps the name removes it).
    pub fn keep(self) -> String {
        let name = self.name.clone();
        std::mem::forget(self);
        name
    }

    pub fn spawn(&self, args: &[&str]) -> Child {
        Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn in namespace")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// A pod: a namespace whose eth0 is a persistent multi-queue TAP, addressed the way vpc-cni does.
#[derive(Debug)]
pub struct Pod {
    pub ns: Netns,
    pub ip: Ipv4Addr,
    pub mac: String,
    /// Set by [`Pod::with_ipv6`].
    pub ipv6: Option<Ipv6Addr>,
}

impl Pod {
    pub fn new(ip: Ipv4Addr) -> Pod {
        Pod::in_netns(Netns::new("vtp"), ip)
    }

    /// The same in a namespace made beforehand (when the address comes from an IPAM that wants
    /// the namespace first).
    pub fn in_netns(ns: Netns, ip: Ipv4Addr) -> Pod {
        let o = ip.octets();
        let mac = format!("02:00:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3]);
        ns.ip(&["tuntap", "add", "dev", "eth0", "mode", "tap", "multi_queue", "vnet_hdr"]);
        ns.ip(&["link", "set", "eth0", "address", &mac, "mtu", "1500", "up"]);
        ns.ip(&["addr", "add", &format!("{ip}/32"), "dev", "eth0"]);
        ns.ip(&["route", "add", GATEWAY_IP, "dev", "eth0", "scope", "link"]);
        ns.ip(&["route", "add", "default", "via", GATEWAY_IP, "dev", "eth0"]);
        ns.ip(&["neigh", "add", GATEWAY_IP, "lladdr", GATEWAY_MAC, "dev", "eth0", "nud", "permanent"]);
        Pod { ns, ip, mac, ipv6: None }
    }

    /// Adds an IPv6 address the way vpc-cni does: no autoconfiguration from router
    /// advertisements, `ADDR/128`, the default route via the gateway's link-local address
    /// (resolved by neighbour discovery through vswitchd). No duplicate address detection: the
    /// test picks unique addresses, and vpc-cni's own tests prove DAD.
    pub fn with_ipv6(mut self, ipv6: Ipv6Addr) -> Pod {
        for (key, value) in [("accept_ra", "0"), ("autoconf", "0"), ("accept_dad", "0")] {
            let out = self.ns.exec(&["sysctl", "-qw", &format!("net.ipv6.conf.eth0.{key}={value}")]);
            assert!(out.status.success(), "sysctl {key}: {}", String::from_utf8_lossy(&out.stderr));
        }
        self.ns.ip(&["-6", "addr", "add", &format!("{ipv6}/128"), "dev", "eth0", "nodad"]);
        let gateway: vswitch_api::MacAddr = GATEWAY_MAC.parse().expect("a MAC");
        self.ns.ip(&["-6", "route", "add", "default", "via", &gateway.link_local().to_string(), "dev", "eth0"]);
        self.ipv6 = Some(ipv6);
        self
    }

    pub fn ifindex(&self) -> u32 {
        self.ns.ifindex("eth0")
    }

    /// Pings `to` `count` times; true if every reply came back.
    pub fn ping(&self, to: &str, count: u32) -> bool {
        self.ns.exec(&["ping", "-c", &count.to_string(), "-i", "0.2", "-W", "1", to]).status.success()
    }
}

/// vswitchd running in a node namespace, killed on drop.
#[derive(Debug)]
pub struct Daemon {
    pub child: Option<Child>,
    pub socket: PathBuf,
    pub dir: PathBuf,
    pub host_port: String,
    bins: Binaries,
    /// Set in vswitchd's environment (`--vpc aws`: where its EC2 credentials file is).
    env: Vec<(String, String)>,
}

/// Where the project's binaries are (tests get them from Cargo, tools from their own folder).
#[derive(Debug, Clone)]
pub struct Binaries {
    pub vswitchd: PathBuf,
    pub vswitchctl: PathBuf,
}

/// The directory of the project's built binaries, seen from the running executable
/// (`target/release/` for the tools, its `deps/` for tests).
pub fn binary_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let mut dir = exe.parent().expect("exe dir").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// A built binary of the project; fails clearly if it was not built.
pub fn binary(name: &str) -> PathBuf {
    let path = binary_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (cargo build --release --workspace)",
        path.display()
    );
    path
}

impl Binaries {
    /// The binaries next to the running executable (`target/release/` for the tools, the parent
    /// of `target/release/deps/` for tests); fails clearly if they were not built.
    pub fn beside_current_exe() -> Binaries {
        Binaries { vswitchd: binary("vswitchd"), vswitchctl: binary("vswitchctl") }
    }
}

impl Daemon {
    /// The conflist entry a node with this vswitchd gives vpc-cni when the daemon hands out the
    /// addresses (`"ipam": {"type": "vswitchd"}`), the plugin's log in `log_dir`.
    pub fn vswitchd_ipam_conf(&self, log_dir: &Path) -> serde_json::Value {
        serde_json::json!({
            "cniVersion": "1.1.0",
            "name": "vpc",
            "type": "vpc-cni",
            "vswitchSocket": self.socket,
            "ipam": {"type": "vswitchd"},
            "logFile": log_dir.join("vpc-cni.log"),
        })
    }

    pub fn start(bins: &Binaries, node: &Netns, dir: &Path, workers: usize) -> Daemon {
        Self::start_with_config(bins, node, dir, workers, "")
    }

    /// Starts with `config` (TOML) as the configuration file.
    pub fn start_with_config(bins: &Binaries, node: &Netns, dir: &Path, workers: usize, config: &str) -> Daemon {
        Daemon::start_with_config_env(bins, node, dir, workers, config, &[])
    }

    /// [`Daemon::start_with_config`] with `env` in vswitchd's environment (also on restarts).
    pub fn start_with_config_env(
        bins: &Binaries,
        node: &Netns,
        dir: &Path,
        workers: usize,
        config: &str,
        env: &[(String, String)],
    ) -> Daemon {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("vswitchd.toml"), config).unwrap();
        let socket = dir.join("vswitchd.sock");
        let host_port = "vsw0".to_string();
        let mut d = Daemon { child: None, socket, dir: dir.into(), host_port, bins: bins.clone(), env: env.to_vec() };
        d.spawn(node, workers);
        d
    }

    pub fn spawn(&mut self, node: &Netns, workers: usize) {
        self.child = Some(self.start_process(node, workers, &[]));
        self.wait_ready();
    }

    /// Starts `vswitchd --upgrade` next to the running one and waits until the old one has
    /// handed over and exited; the new one is this daemon from then on.
    pub fn upgrade(&mut self, node: &Netns, workers: usize) {
        let new = self.start_process(node, workers, &["--upgrade"]);
        let mut old = self.child.replace(new).expect("a running vswitchd to upgrade");
        let deadline = Instant::now() + Duration::from_secs(10);
        while old.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the old vswitchd did not exit; logs in {}", self.dir.display());
            std::thread::sleep(Duration::from_millis(20));
        }
        self.wait_ready();
    }

    fn start_process(&self, node: &Netns, workers: usize, extra: &[&str]) -> Child {
        let log = std::fs::File::create(self.dir.join(format!("vswitchd-{}.log", unique("")))).unwrap();
        Command::new("ip")
            .args(["netns", "exec", &node.name])
            .arg(&self.bins.vswitchd)
            .args(extra)
            .args(["--config", self.dir.join("vswitchd.toml").to_str().unwrap()])
            .args(["--socket", self.socket.to_str().unwrap(), "--state-dir", self.dir.join("state").to_str().unwrap()])
            .args([
                "--metrics-addr",
                "127.0.0.1:9477",
                "--host-port",
                &self.host_port,
                "--workers",
                &workers.to_string(),
            ])
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start vswitchd")
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.ctl(&["ports"]).status.success() {
            assert!(Instant::now() < deadline, "vswitchd did not come up; logs in {}", self.dir.display());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything this daemon's processes logged (one `vswitchd-*.log` per start, in order).
    pub fn logs(&self) -> String {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("vswitchd-")))
            .collect();
        files.sort();
        files.iter().map(|f| std::fs::read_to_string(f).unwrap_or_default()).collect()
    }

    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(&self.bins.vswitchctl)
            .args(["--socket", self.socket.to_str().unwrap()])
            .args(args)
            .output()
            .expect("run vswitchctl")
    }

    pub fn ctl_json(&self, args: &[&str]) -> serde_json::Value {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        let out = self.ctl(&full);
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("vswitchctl {args:?}: {e}: {}", String::from_utf8_lossy(&out.stderr)))
    }

    pub fn attach(&self, name: &str, pod: &Pod) {
        let out = self.ctl(
            &[
                "add-port",
                name,
                "--netns",
                pod.ns.path().to_str().unwrap(),
                "--ip",
                &pod.ip.to_string(),
                "--mac",
                &pod.mac,
            ]
            .into_iter()
            .chain(pod.ipv6.as_ref().map(|_| "--ipv6"))
            .chain(pod.ipv6.map(|ip| ip.to_string()).as_deref())
            .collect::<Vec<_>>(),
        );
        assert!(out.status.success(), "add-port {name}: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = child.wait();
        }
    }

    /// A port's counters from `vswitchctl ports --json`.
    pub fn port_counters(&self, name: &str) -> serde_json::Value {
        let ports = self.ctl_json(&["ports"]);
        ports.as_array().unwrap().iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("no port {name}"))
            ["counters"]
            .clone()
    }

    pub fn drops(&self, reason: &str) -> u64 {
        let c = self.ctl_json(&["counters"]);
        c["drops"].as_array().unwrap().iter().find(|d| d[0] == reason).map_or(0, |d| d[1].as_u64().unwrap())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A CNI plugin invocation as a container runtime makes it: a clean environment with the CNI_*
/// variables (interface eth0), stdin and stdout piped for the configuration and the result.
pub fn cni_command(plugin: &Path, command: &str, container: &str, netns: &Path) -> Command {
    let mut cmd = Command::new(plugin);
    cmd.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", "/opt/cni/bin:/usr/lib/cni")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    cmd
}

/// Runs a prepared plugin command with `conf` on stdin; returns its output.
pub fn run_cni(mut command: Command, conf: &serde_json::Value) -> Output {
    let mut child = command.spawn().expect("start the CNI plugin");
    child.stdin.take().expect("stdin").write_all(conf.to_string().as_bytes()).expect("write the configuration");
    child.wait_with_output().expect("CNI plugin ran")
}

/// A scratch directory removed on drop.
#[derive(Debug)]
pub struct TempDir(pub PathBuf);

impl Default for TempDir {
    fn default() -> Self {
        Self::new()
    }
}

impl TempDir {
    pub fn new() -> TempDir {
        let dir = std::env::temp_dir().join(unique("vswitch-test-"));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
