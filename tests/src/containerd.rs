//! A containerd of the test's own (Debian's containerd 1.6 with runc), driven through CRI the
//! way kubelet drives it, with the CNI plugins and conflist the test gives it.
//!
//! Everything lives in one unique temporary directory: root, state, the gRPC socket, the runc
//! root, the CNI bin and conf dirs, the sandbox image, the log of every CNI call. containerd runs
//! in the network namespace the test gives it (its node), in the machine's mount namespace, so
//! the sandboxes' namespaces under /run/netns are visible to vswitchd and to the test. Dropping
//! [`Containerd`] stops and removes every sandbox left, kills containerd, its shims and their
//! processes, unmounts what they mounted, removes the namespaces and cgroups they made and the
//! directory, also when the test failed.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cri;
use crate::netns::{have_tool, run, unique, Netns, TempDir};

/// The sandbox ("pause") image every pod runs, built from Debian's static busybox.
pub const SANDBOX_IMAGE: &str = "docker.io/vpclab/pause:1";
/// The containerd namespace CRI uses.
pub const K8S_NAMESPACE: &str = "k8s.io";
const BUSYBOX: &str = "/bin/busybox";

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

/// A running containerd with its CRI client.
#[derive(Debug)]
pub struct Containerd {
    pub socket: PathBuf,
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
    dir: TempDir,
}

impl Containerd {
    /// Starts containerd in `node`'s network namespace with `plugins` in its CNI bin_dir and
    /// `conflist` as its only CNI configuration; imports the sandbox image and waits until CRI
    /// reports its network ready.
    pub fn start(node: &Netns, plugins: &[CniPlugin], conflist: &Value) -> Containerd {
        let dir = TempDir::new();
        let root = dir.0.clone();
        let (bin_dir, conf_dir, call_dir) = (root.join("cni-bin"), root.join("cni-conf"), root.join("cni-calls"));
        for d in [&bin_dir, &conf_dir, &call_dir] {
            std::fs::create_dir_all(d).unwrap();
        }
        for p in plugins {
            let target = bin_dir.join(&p.name);
            if p.logged {
                write_executable(&target, &shim_script(&p.name, &p.path, &call_dir));
            } else {
                std::os::unix::fs::symlink(&p.path, &target).unwrap();
            }
        }
        std::fs::write(conf_dir.join("10-test.conflist"), serde_json::to_vec_pretty(conflist).unwrap()).unwrap();
        let socket = root.join("containerd.sock");
        let cgroup_parent = format!("/{}", unique("vpclab-"));
        std::fs::write(root.join("config.toml"), config_toml(&root, &socket, &bin_dir, &conf_dir)).unwrap();
        let image = build_sandbox_image(&root.join("image"));

        let created_run_containerd = !Path::new("/run/containerd").exists();
        let log = root.join("containerd.log");
        let logf = std::fs::File::create(&log).unwrap();
        let child = Command::new("nsenter")
            .arg(format!("--net={}", node.path().display()))
            .arg("containerd")
            .arg("--config")
            .arg(root.join("config.toml"))
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .expect("start containerd");
        let mut c = Containerd {
            socket,
            cni_conf_dir: conf_dir,
            cgroup_parent,
            log,
            call_dir,
            child: Some(child),
            client: None,
            netns_seen: Mutex::new(BTreeSet::new()),
            created_run_containerd,
            dir,
        };
        match cri::Client::connect(&c.socket, Duration::from_secs(20)) {
            Ok(client) => c.client = Some(client),
            Err(e) => panic!("containerd did not come up: {e}\n{}", c.log_tail()),
        }
        let out = Command::new("ctr")
            .args(["-a", c.socket.to_str().unwrap(), "-n", K8S_NAMESPACE, "images", "import"])
            .args(["--snapshotter", "overlayfs"])
            .arg(&image)
            .output()
            .unwrap();
        assert!(out.status.success(), "ctr images import: {}", String::from_utf8_lossy(&out.stderr));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !c.cri().has_image(SANDBOX_IMAGE).unwrap_or(false) {
            assert!(Instant::now() < deadline, "CRI does not see {SANDBOX_IMAGE} after the import");
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Err(e) = c.cri().wait_network_ready(Duration::from_secs(20)) {
            panic!("{e}\n{}", c.log_tail());
        }
        c
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

/// Builds the sandbox image as an OCI image layout tarball in `dir`: one layer holding Debian's
/// static busybox, whose entrypoint sleeps for ever (the "pause" process). Returns the tarball.
pub fn build_sandbox_image(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    let blobs = dir.join("oci/blobs/sha256");
    for d in ["bin", "dev", "proc", "sys", "etc", "tmp", "run"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).expect("copy /bin/busybox (busybox-static)");
    for applet in ["sh", "sleep"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    for f in ["etc/hosts", "etc/hostname", "etc/resolv.conf"] {
        std::fs::write(rootfs.join(f), "").unwrap();
    }
    let layer = dir.join("layer.tar");
    run(&[
        "tar",
        "--sort=name",
        "--mtime=@0",
        "--owner=0",
        "--group=0",
        "--numeric-owner",
        "-cf",
        layer.to_str().unwrap(),
        "-C",
        rootfs.to_str().unwrap(),
        ".",
    ]);
    // Stores a file as a blob; returns its descriptor fields (digest, size).
    let blob = |path: &Path| -> (String, u64) {
        let out = run(&["sha256sum", path.to_str().unwrap()]);
        let hex = String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string();
        let size = std::fs::metadata(path).unwrap().len();
        std::fs::rename(path, blobs.join(&hex)).unwrap();
        (format!("sha256:{hex}"), size)
    };
    let blob_json = |name: &str, v: &Value| {
        let path = dir.join(name);
        std::fs::write(&path, serde_json::to_vec(v).unwrap()).unwrap();
        blob(&path)
    };
    let (layer_digest, layer_size) = blob(&layer);
    let (config_digest, config_size) = blob_json(
        "config.json",
        &json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": ["/bin/busybox", "sleep", "2147483647"]},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        }),
    );
    let (manifest_digest, manifest_size) = blob_json(
        "manifest.json",
        &json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": config_size},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer_digest, "size": layer_size}],
        }),
    );
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": {
                "io.containerd.image.name": SANDBOX_IMAGE,
                "org.opencontainers.image.ref.name": SANDBOX_IMAGE.rsplit(':').next().unwrap(),
            },
        }],
    });
    std::fs::write(dir.join("oci/index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(dir.join("oci/oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let tarball = dir.join("sandbox-image.tar");
    run(&["tar", "-cf", tarball.to_str().unwrap(), "-C", dir.join("oci").to_str().unwrap(), "."]);
    tarball
}

/// Processes whose command line has `arg` as one argument (containerd's shims get `-address SOCKET`).
fn processes_with_arg(arg: &Path) -> Vec<i32> {
    let want = arg.as_os_str().as_encoded_bytes();
    all_pids()
        .into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.split(|&b| b == 0).any(|a| a == want))
        })
        .collect()
}

fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|d| d.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ...": comm may hold spaces and parentheses; it ends at the last ')'.
    stat[stat.rfind(')')? + 1..].split_whitespace().nth(1)?.parse().ok()
}

/// Every process below `roots` (children, their children, ...).
fn descendants(roots: &[i32]) -> Vec<i32> {
    let parents: Vec<(i32, i32)> = all_pids().into_iter().filter_map(|p| Some((p, parent_of(p)?))).collect();
    let mut found: Vec<i32> = Vec::new();
    let mut frontier: HashSet<i32> = roots.iter().copied().collect();
    while !frontier.is_empty() {
        let next: HashSet<i32> = parents
            .iter()
            .filter(|(_, pp)| frontier.contains(pp))
            .map(|&(p, _)| p)
            .filter(|p| !found.contains(p))
            .collect();
        found.extend(&next);
        frontier = next;
    }
    found
}

/// Whether process `pid` is running (not gone, not a zombie).
pub fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| s.rfind(')').and_then(|i| s[i + 1..].split_whitespace().next()) != Some("Z"))
}

/// The paths of the unix sockets process `pid` holds open.
fn unix_sockets_of(pid: i32) -> Vec<PathBuf> {
    let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| {
                    let link = std::fs::read_link(e.path()).ok()?;
                    let s = link.to_str()?;
                    Some(s.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
                })
                .collect()
        })
        .unwrap_or_default();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/unix")).unwrap_or_default();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 8 && inodes.contains(f[6]) && f[7].starts_with('/')).then(|| PathBuf::from(f[7]))
        })
        .collect()
}

/// Mount points of this mount namespace, in mount order.
pub fn mount_points() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(|m| PathBuf::from(m.replace("\\040", " "))))
        .collect()
}

/// The directories of cgroup `parent` in every hierarchy that has it.
pub fn cgroup_dirs(parent: &str) -> Vec<PathBuf> {
    let rel = parent.trim_start_matches('/');
    let mut roots: Vec<PathBuf> = std::fs::read_dir("/sys/fs/cgroup")
        .map(|d| d.flatten().map(|h| h.path().join(rel)).collect())
        .unwrap_or_default();
    // cgroup v2 alone: /sys/fs/cgroup is the hierarchy itself.
    roots.push(Path::new("/sys/fs/cgroup").join(rel));
    roots.into_iter().filter(|r| r.is_dir()).collect()
}

/// Removes cgroup `parent` and everything below it in every hierarchy (deepest first).
fn remove_cgroups(parent: &str) {
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut stack = cgroup_dirs(parent);
    while let Some(d) = stack.pop() {
        if let Ok(entries) = std::fs::read_dir(&d) {
            stack.extend(entries.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()));
        }
        dirs.push(d);
    }
    dirs.sort_by_key(|d| std::cmp::Reverse(d.components().count()));
    for d in dirs {
        for _ in 0..50 {
            if std::fs::remove_dir(&d).is_ok() || !d.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
