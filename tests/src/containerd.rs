//! A containerd of the test's own (Debian's containerd 1.6 with runc), driven through CRI the
//! way kubelet drives it, with the CNI plugins and conflist the test gives it.
//!
//! Everything lives in one unique temporary directory: root, state, the gRPC socket, the runc
//! root, the CNI bin and conf dirs, the sandbox image, the log of every CNI call. containerd runs
//! in the network namespace the test gives it (its node), in the machine's mount namespace or,
//! as a node's own ([`Containerd::start_node`]), in one where the node's directories are its
//! own; either way the sandboxes' namespaces under /run/netns are visible to vswitchd and to the
//! test. Dropping
//! [`Containerd`] stops and removes every sandbox left, kills containerd, its shims and their
//! processes, unmounts what they mounted, removes the namespaces and cgroups they made and the
//! directory, also when the test failed.

mod leftovers;
mod sandbox_image;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cri;
use crate::netns::{have_tool, unique, Netns, TempDir};
pub use leftovers::{alive, cgroup_dirs, mount_points};
use leftovers::{descendants, processes_with_arg, remove_cgroups, unix_sockets_of};
pub use sandbox_image::build_sandbox_image;

/// The sandbox ("pause") image every pod runs, built from Debian's static busybox.
pub const SANDBOX_IMAGE: &str = "docker.io/vpclab/pause:1";
/// The containerd namespace CRI uses.
pub const K8S_NAMESPACE: &str = "k8s.io";

/// Fails (never skips) unless everything a containerd test needs is here: root, containerd,
/// runc, ctr, nsenter, iptables-save, Debian's busybox-static and reference CNI plugins.
pub fn require_containerd() {
    crate::netns::require_root();
    for tool in ["containerd", "containerd-shim-runc-v2", "ctr", "runc", "nsenter", "iptables-save", "tar", "sha256sum"]
    {
        assert!(have_tool(tool), "this test needs `{tool}` (tests/install-deps.sh installs containerd, runc)");
    }
    assert!(
        Command::new("dpkg").args(["-s", "busybox-static"]).output().is_ok_and(|o| o.status.success()),
        "this test needs Debian's busybox-static for its sandbox image (tests/install-deps.sh installs it)"
    );
    for plugin in ["portmap", "loopback"] {
        assert!(
            Path::new("/usr/lib/cni").join(plugin).exists(),
            "this test needs /usr/lib/cni/{plugin} (containernetworking-plugins; tests/install-deps.sh installs it)"
        );
    }
}

/// One CNI plugin in containerd's bin_dir.
#[derive(Debug, Clone)]
pub struct CniPlugin {
    pub name: String,
    pub path: PathBuf,
    /// Wrapped in a shim that records each call (see [`CniCall`]).
    pub logged: bool,
}

impl CniPlugin {
    pub fn linked(name: &str, path: &Path) -> CniPlugin {
        CniPlugin { name: name.into(), path: path.into(), logged: false }
    }

    pub fn logged(name: &str, path: &Path) -> CniPlugin {
        CniPlugin { name: name.into(), path: path.into(), logged: true }
    }
}

/// One call of a logged plugin, as containerd made it.
#[derive(Debug, Clone)]
pub struct CniCall {
    pub plugin: String,
    pub command: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
    /// The network configuration on stdin (with runtimeConfig, prevResult).
    pub stdin: Value,
    pub stdout: String,
    pub exit_code: i32,
}

impl CniCall {
    /// A `KEY=value` of CNI_ARGS.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args.split(';').find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
    }
}

/// The directories a node keeps apart from other nodes (see [`Containerd::start_node`]): its CNI
/// plugins and configuration, vswitchd's socket and state, vpc-cni's IPAM files, its logs.
pub const NODE_DIRS: [&str; 6] =
    ["/opt/cni/bin", "/etc/cni/net.d", "/run/vswitchd", "/var/lib/vswitchd", "/var/lib/vpc-cni", "/var/log"];

/// A running containerd with its CRI client.
#[derive(Debug)]
pub struct Containerd {
    pub socket: PathBuf,
    /// The CNI configuration directory, as this process reaches it.
    pub cni_conf_dir: PathBuf,
    /// Pods get `cgroup_parent` as their cgroup parent (see [`cri::pod_config`]), so every
    /// cgroup runc makes for them is under it and removed on drop.
    pub cgroup_parent: String,
    pub log: PathBuf,
    call_dir: PathBuf,
    child: Option<Child>,
    client: Option<cri::Client>,
    /// Network namespaces of sandboxes seen, removed on drop if containerd left them.
    netns_seen: Mutex<BTreeSet<PathBuf>>,
    created_run_containerd: bool,
    /// Directories made on the machine to mount a node's own over ([`Containerd::start_node`]),
    /// removed on drop.
    mount_points_made: Vec<PathBuf>,
    dir: TempDir,
}

impl Containerd {
    /// Starts containerd in `node`'s network namespace with `plugins` in its CNI bin_dir and
    /// `conflist` as its only CNI configuration; imports the sandbox image and waits until CRI
    /// reports its network ready.
    pub fn start(node: &Netns, plugins: &[CniPlugin], conflist: &Value) -> Containerd {
        let dir = TempDir::new();
        let (bin_dir, conf_dir) = (dir.0.join("cni-bin"), dir.0.join("cni-conf"));
        for d in [&bin_dir, &conf_dir] {
            std::fs::create_dir_all(d).unwrap();
        }
        install_plugins(&bin_dir, plugins, &dir.0.join("cni-calls"));
        std::fs::write(conf_dir.join("10-test.conflist"), serde_json::to_vec_pretty(conflist).unwrap()).unwrap();
        let c = Self::launch(dir, node, &bin_dir, &conf_dir, None);
        if let Err(e) = c.cri().wait_network_ready(Duration::from_secs(20)) {
            panic!("{e}\n{}", c.log_tail());
        }
        c
    }

    /// Starts containerd as a node's own: in `node`'s network namespace and in a mount namespace
    /// of its own in which each of [`NODE_DIRS`] is a directory of this node alone, empty at
    /// first. Everything containerd starts (shims, runc, containers, CNI plugins) sees the node's,
    /// so a hostPath volume, the plugin's socket path and its log are this node's, as on a real
    /// node. The rest of the file system, /run/netns included, is the machine's. The CNI bin_dir
    /// and conf_dir are the node's /opt/cni/bin, holding `plugins` (the reference plugins a node
    /// comes with), and /etc/cni/net.d, with no configuration until something installs one: the
    /// network is not ready until then and this does not wait for it.
    pub fn start_node(node: &Netns, plugins: &[CniPlugin]) -> Containerd {
        let dir = TempDir::new();
        let node_root = dir.0.join("node");
        for d in NODE_DIRS {
            std::fs::create_dir_all(node_root.join(d.trim_start_matches('/'))).unwrap();
        }
        install_plugins(&node_root.join("opt/cni/bin"), plugins, &dir.0.join("cni-calls"));
        Self::launch(dir, node, Path::new("/opt/cni/bin"), Path::new("/etc/cni/net.d"), Some(node_root))
    }

    /// Writes the configuration and the sandbox image, starts containerd (in a mount namespace
    /// of its own with `node_root`'s directories over the machine's when given), connects and
    /// imports the sandbox image.
    fn launch(dir: TempDir, node: &Netns, bin_dir: &Path, conf_dir: &Path, node_root: Option<PathBuf>) -> Containerd {
        let root = dir.0.clone();
        let call_dir = root.join("cni-calls");
        std::fs::create_dir_all(&call_dir).unwrap();
        let socket = root.join("containerd.sock");
        let cgroup_parent = format!("/{}", unique("vpclab-"));
        let config = root.join("config.toml");
        std::fs::write(&config, config_toml(&root, &socket, bin_dir, conf_dir)).unwrap();
        let image = build_sandbox_image(&root.join("image"));

        let created_run_containerd = !Path::new("/run/containerd").exists();
        let log = root.join("containerd.log");
        let logf = std::fs::File::create(&log).unwrap();
        let mut command = Command::new("nsenter");
        command.arg(format!("--net={}", node.path().display()));
        let mut mount_points_made = Vec::new();
        match &node_root {
            None => {
                command.arg("containerd").arg("--config").arg(&config);
            }
            Some(node_root) => {
                mount_points_made = make_mount_points(&NODE_DIRS);
                let script = node_mounts_script(node_root, &config);
                command.args(["unshare", "--mount", "--propagation", "unchanged", "--", "sh", "-c", &script]);
            }
        }
        let child = command
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .expect("start containerd");
        let cni_conf_dir = match &node_root {
            Some(node_root) => node_root.join(conf_dir.strip_prefix("/").unwrap_or(conf_dir)),
            None => conf_dir.to_path_buf(),
        };
        let mut c = Containerd {
            socket,
            cni_conf_dir,
            cgroup_parent,
            log,
            call_dir,
            child: Some(child),
            client: None,
            netns_seen: Mutex::new(BTreeSet::new()),
            created_run_containerd,
            mount_points_made,
            dir,
        };
        match cri::Client::connect(&c.socket, Duration::from_secs(20)) {
            Ok(client) => c.client = Some(client),
            Err(e) => panic!("containerd did not come up: {e}\n{}", c.log_tail()),
        }
        if let Err(e) = c.import_image(&image) {
            panic!("{e}");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !c.cri().has_image(SANDBOX_IMAGE).unwrap_or(false) {
            assert!(Instant::now() < deadline, "CRI does not see {SANDBOX_IMAGE} after the import");
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    /// Imports the images of an OCI or Docker archive into the CRI namespace, as a node's
    /// operator does (`ctr -n k8s.io images import`); returns what ctr printed.
    pub fn import_image(&self, archive: &Path) -> Result<String, String> {
        self.ctr(&["images", "import", "--snapshotter", "overlayfs", &archive.to_string_lossy()])
    }

    /// Gives image `from` the name `to` as well (`ctr images tag`).
    pub fn tag_image(&self, from: &str, to: &str) -> Result<String, String> {
        self.ctr(&["images", "tag", from, to])
    }

    /// Runs `ctr` against this containerd in the CRI namespace.
    fn ctr(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("ctr")
            .args(["-a", &self.socket.to_string_lossy(), "-n", K8S_NAMESPACE])
            .args(args)
            .output()
            .map_err(|e| format!("ctr: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            Ok(text)
        } else {
            Err(format!("ctr {}: {text}", args.join(" ")))
        }
    }

    /// `path` on containerd's node, as this process reaches it: through containerd's own root
    /// (`/proc/PID/root`), so in its mount namespace (see [`Containerd::start_node`]).
    pub fn node_path(&self, path: impl AsRef<Path>) -> PathBuf {
        let pid = self.child.as_ref().map_or(0, Child::id);
        let path = path.as_ref();
        Path::new(&format!("/proc/{pid}/root")).join(path.strip_prefix("/").unwrap_or(path))
    }

    /// containerd's mount namespace (the node's own after [`Containerd::start_node`]), for a tool
    /// that must see the node's directories, as `ctr run --cni` reads /etc/cni/net.d.
    pub fn mount_namespace(&self) -> PathBuf {
        let pid = self.child.as_ref().map_or(0, Child::id);
        PathBuf::from(format!("/proc/{pid}/ns/mnt"))
    }

    /// The CRI client.
    pub fn cri(&self) -> &cri::Client {
        self.client.as_ref().expect("connected")
    }

    /// RunPodSandbox, then a verbose PodSandboxStatus; remembers the sandbox's namespace so it
    /// is removed on drop whatever happens.
    pub fn run_pod(&self, config: cri::PodSandboxConfig) -> Result<(String, cri::SandboxStatus), String> {
        let id = self.cri().run_pod_sandbox(config).map_err(|e| format!("{e}\n{}", self.cni_failures()))?;
        let status = self.status(&id).map_err(|e| e.to_string())?;
        Ok((id, status))
    }

    /// A verbose PodSandboxStatus (remembers the namespace path).
    pub fn status(&self, id: &str) -> cri::Result<cri::SandboxStatus> {
        let status = self.cri().pod_sandbox_status(id)?;
        if let Some(path) = status.netns_path() {
            // containerd says /var/run/netns/..., mountinfo /run/netns/...: keep the real path.
            let real = match (path.parent().and_then(|p| p.canonicalize().ok()), path.file_name()) {
                (Some(dir), Some(name)) => dir.join(name),
                _ => path,
            };
            self.netns_seen.lock().unwrap().insert(real);
        }
        Ok(status)
    }

    /// StopPodSandbox then RemovePodSandbox.
    pub fn remove_pod(&self, id: &str) -> cri::Result<()> {
        self.cri().stop_pod_sandbox(id)?;
        self.cri().remove_pod_sandbox(id)
    }

    /// Every call of the logged plugins so far, in order.
    pub fn cni_calls(&self) -> Vec<CniCall> {
        let mut dirs: Vec<PathBuf> =
            std::fs::read_dir(&self.call_dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
        dirs.sort();
        dirs.iter().filter_map(|d| read_call(d)).collect()
    }

    /// The failed plugin calls, for a failure message.
    pub fn cni_failures(&self) -> String {
        let failed: Vec<String> = self
            .cni_calls()
            .into_iter()
            .filter(|c| c.exit_code != 0)
            .map(|c| format!("{} {} {} exited {}: {}", c.plugin, c.command, c.container_id, c.exit_code, c.stdout))
            .collect();
        if failed.is_empty() {
            String::new()
        } else {
            format!("failed CNI calls:\n{}", failed.join("\n"))
        }
    }

    /// The last lines of containerd's log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        format!("containerd log ({}):\n{}", self.log.display(), lines[lines.len().saturating_sub(30)..].join("\n"))
    }

    /// Kills containerd with SIGKILL (its shims and sandboxes stay), as a crash would.
    pub fn kill_containerd(&mut self) {
        self.client = None;
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Processes containerd started that are still running: its shims and everything under them.
    pub fn processes(&self) -> Vec<i32> {
        let shims = processes_with_arg(&self.socket);
        let mut all = descendants(&shims);
        all.extend(&shims);
        all.retain(|&p| alive(p));
        all
    }

    /// Namespaces of this containerd's sandboxes that were seen (see [`Containerd::status`]).
    pub fn netns_seen(&self) -> Vec<PathBuf> {
        self.netns_seen.lock().unwrap().iter().cloned().collect()
    }

    /// The directory everything of this containerd is in.
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }

    fn teardown(&mut self) {
        // What a test left: stop and remove through CRI, so the plugins' DEL runs (portmap
        // removes its iptables rules, vpc-cni its port and address) and containerd unmounts.
        if let Some(client) = &self.client {
            for sandbox in client.list_pod_sandbox().unwrap_or_default() {
                let _ = self.status(&sandbox.id);
                let _ = client.stop_pod_sandbox(&sandbox.id);
                let _ = client.remove_pod_sandbox(&sandbox.id);
            }
        }
        self.client = None;
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // Shims are started by containerd and outlive it: find ours by the address they were
        // given, note their sockets, and kill them with every process under them.
        let shims = processes_with_arg(&self.socket);
        let shim_sockets: Vec<PathBuf> = shims.iter().flat_map(|&pid| unix_sockets_of(pid)).collect();
        let victims = self.processes();
        for &pid in &victims {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while victims.iter().any(|&pid| alive(pid)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        for socket in shim_sockets.iter().filter(|s| s.starts_with("/run/containerd")) {
            let _ = std::fs::remove_file(socket);
        }
        // Mounts: rootfs and shm under our directory, sandbox namespaces under /run/netns.
        let netns: Vec<PathBuf> = self.netns_seen.lock().unwrap().iter().cloned().collect();
        for _ in 0..3 {
            let mounts: Vec<PathBuf> =
                mount_points().into_iter().filter(|m| m.starts_with(&self.dir.0) || netns.contains(m)).collect();
            if mounts.is_empty() {
                break;
            }
            for m in mounts.iter().rev() {
                let _ = Command::new("umount").arg("--lazy").arg(m).stderr(Stdio::null()).status();
            }
        }
        for ns in &netns {
            let _ = std::fs::remove_file(ns);
        }
        remove_cgroups(&self.cgroup_parent);
        // Deepest first, and only while empty: nothing of the node was ever written to them.
        for d in self.mount_points_made.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
        if self.created_run_containerd {
            // Only if empty: another containerd may be using them.
            let _ = std::fs::remove_dir("/run/containerd/s");
            let _ = std::fs::remove_dir("/run/containerd");
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.teardown();
        // self.dir (a TempDir) is removed after this, with nothing mounted in it any more.
    }
}

/// containerd's config.toml (version 2): everything under `root`, CRI with our sandbox image,
/// runc (cgroupfs, its state under `root`), overlayfs, and our CNI directories.
fn config_toml(root: &Path, socket: &Path, bin_dir: &Path, conf_dir: &Path) -> String {
    let d = root.display();
    format!(
        r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = [
  "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[grpc]
  address = "{socket}"

[ttrpc]
  address = "{socket}.ttrpc"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{SANDBOX_IMAGE}"
  disable_apparmor = true
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{d}/runc"
        SystemdCgroup = false

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{conf}"
    max_conf_num = 1
"#,
        socket = socket.display(),
        bin = bin_dir.display(),
        conf = conf_dir.display(),
    )
}

/// Puts `plugins` in `bin_dir`: logged ones as a shim recording each call in `call_dir`.
fn install_plugins(bin_dir: &Path, plugins: &[CniPlugin], call_dir: &Path) {
    std::fs::create_dir_all(call_dir).unwrap();
    for p in plugins {
        let target = bin_dir.join(&p.name);
        if p.logged {
            write_executable(&target, &shim_script(&p.name, &p.path, call_dir));
        } else {
            std::os::unix::fs::symlink(&p.path, &target).unwrap();
        }
    }
}

/// Makes the directories of `dirs` the machine lacks (a node's directories are mounted over
/// them); returns those it made, parents first.
fn make_mount_points(dirs: &[&str]) -> Vec<PathBuf> {
    let mut made = Vec::new();
    for d in dirs {
        let missing: Vec<PathBuf> = Path::new(d).ancestors().filter(|a| !a.exists()).map(Path::to_path_buf).collect();
        std::fs::create_dir_all(d).unwrap_or_else(|e| panic!("mkdir {d}: {e}"));
        made.extend(missing.into_iter().rev());
    }
    made
}

/// The shell script that starts containerd in its new mount namespace: each of [`NODE_DIRS`]
/// bound from `node_root`, then containerd. The mounts holding those directories are made
/// private first (those mounts only, in this namespace), so the binds stay here even where the
/// machine's mounts are shared (systemd makes them so); then shared again, in a peer group of
/// this namespace alone, as on a systemd node (containerd wants a HostToContainer volume's mount
/// shared or slave). /run/netns, a mount of its own left as it is, still carries the sandboxes'
/// namespaces both ways.
fn node_mounts_script(node_root: &Path, config: &Path) -> String {
    let quote = |p: &Path| format!("'{}'", p.display().to_string().replace('\'', r"'\''"));
    let mut script = String::from("set -e\nset --\n");
    script +=
        &format!("for d in {}; do set -- \"$@\" \"$(findmnt -n -o TARGET -T \"$d\")\"; done\n", NODE_DIRS.join(" "));
    script += "for p in \"$@\"; do mount --make-private \"$p\"; done\n";
    for d in NODE_DIRS {
        script += &format!("mount --bind {} {d}\n", quote(&node_root.join(d.trim_start_matches('/'))));
    }
    script += "for p in \"$@\"; do mount --make-shared \"$p\"; done\n";
    script += &format!("exec containerd --config {}\n", quote(config));
    script
}

/// A shim that records one call (environment, stdin, stdout, exit code) in its own directory
/// under `call_dir`, named so that the calls sort in order, around the real plugin.
fn shim_script(name: &str, real: &Path, call_dir: &Path) -> String {
    format!(
        r#"#!/bin/sh
# Records this CNI call, then runs the real plugin with the same stdin and passes its output on.
d="{calls}/$(date +%s%N)-$$"
mkdir -p "$d"
echo "{name}" > "$d/plugin"
env | grep '^CNI_' > "$d/env"
cat > "$d/stdin"
"{real}" < "$d/stdin" > "$d/stdout"
rc=$?
echo "$rc" > "$d/rc"
cat "$d/stdout"
exit "$rc"
"#,
        calls = call_dir.display(),
        real = real.display(),
    )
}

fn write_executable(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn read_call(dir: &Path) -> Option<CniCall> {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).ok();
    let env = read("env")?;
    let var = |k: &str| {
        env.lines().find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix('='))).unwrap_or("").to_string()
    };
    let stdin = read("stdin").unwrap_or_default();
    Some(CniCall {
        plugin: read("plugin").unwrap_or_default().trim().to_string(),
        command: var("CNI_COMMAND"),
        container_id: var("CNI_CONTAINERID"),
        netns: var("CNI_NETNS"),
        ifname: var("CNI_IFNAME"),
        args: var("CNI_ARGS"),
        stdin: serde_json::from_str(&stdin).unwrap_or(Value::String(stdin)),
        stdout: read("stdout").unwrap_or_default(),
        // A call still running (or killed) has no exit code yet.
        exit_code: read("rc").and_then(|s| s.trim().parse().ok()).unwrap_or(-1),
    })
}
