//! What kubelet does with a pod spec on one node, through CRI, for the tests that run a shipped
//! manifest's pod the way a cluster would: the sandbox (host network or not, privileged if any
//! container is), the volumes (ConfigMap and Secret contents written as kubelet's atomic writer
//! lays them out, hostPaths checked or created by their `type` in the node's mount namespace),
//! the init containers one after another, each to a zero exit, then the containers, each with
//! its command and args (`$(VAR)` expanded from its environment), environment (downward-API
//! fields filled), mounts, security context and resources; probes run as kubelet runs them
//! (httpGet from the node's network namespace, exec through ExecSync); deletion with the grace
//! period.
//!
//! The pod spec is the API's JSON (a manifest's YAML read into [`serde_json::Value`]). What this
//! kubelet does not model it refuses with [`KubeletError::Unsupported`] rather than ignore:
//! subPath, volume `items`, other volume types, envFrom, HTTPS and gRPC probes. Left out because
//! no API server is here: service links in the environment, the service-account token volume,
//! the termination-message file; and a Secret volume is written to disk, not to a tmpfs.

mod spec;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::containerd::Containerd;
use crate::cri::{CriError, PodSandboxConfig};
pub use spec::{expand, file_mode, quantity};

/// ConfigMaps and Secrets by name: what the pod's volumes and environment refer to.
#[derive(Debug, Default, Clone)]
pub struct ApiObjects {
    pub config_maps: BTreeMap<String, BTreeMap<String, String>>,
    pub secrets: BTreeMap<String, BTreeMap<String, Vec<u8>>>,
}

/// Why a pod could not be run as its spec says.
#[derive(Debug)]
pub enum KubeletError {
    /// The spec asks for something this kubelet does not do.
    Unsupported(String),
    /// The spec is wrong: kubelet would refuse it (a missing ConfigMap, a hostPath of the wrong
    /// type, an unknown volume).
    Invalid(String),
    Cri(CriError),
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    /// The image is not on the node and the pull policy does not allow using it as it is.
    Image {
        image: String,
        reason: String,
    },
    /// An init container still ran after this long.
    InitContainerStuck {
        id: String,
        after: Duration,
    },
    InitContainerFailed {
        name: String,
        exit_code: i32,
        log: String,
    },
    ProbeNeverPassed {
        container: String,
        probe: String,
        last: String,
    },
}

impl std::fmt::Display for KubeletError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KubeletError::Unsupported(what) => write!(f, "not modelled by the test's kubelet: {what}"),
            KubeletError::Invalid(what) => write!(f, "invalid pod spec: {what}"),
            KubeletError::Cri(e) => write!(f, "{e}"),
            KubeletError::Io { path, error } => write!(f, "{}: {error}", path.display()),
            KubeletError::Image { image, reason } => write!(f, "image {image}: {reason}"),
            KubeletError::InitContainerFailed { name, exit_code, log } => {
                write!(f, "init container {name} exited {exit_code}; its log:\n{log}")
            }
            KubeletError::InitContainerStuck { id, after } => {
                write!(f, "init container {id} still runs after {after:?}")
            }
            KubeletError::ProbeNeverPassed { container, probe, last } => {
                write!(f, "{container}'s {probe} never passed; last: {last}")
            }
        }
    }
}

impl std::error::Error for KubeletError {}

impl From<CriError> for KubeletError {
    fn from(e: CriError) -> Self {
        KubeletError::Cri(e)
    }
}

pub type Result<T> = std::result::Result<T, KubeletError>;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KubeletError + '_ {
    move |error| KubeletError::Io { path: path.to_path_buf(), error }
}

/// A pod's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodMeta {
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

/// A container kubelet started.
#[derive(Debug, Clone)]
pub struct StartedContainer {
    pub name: String,
    pub id: String,
    /// When StartContainer returned.
    pub started: Instant,
    /// Its log, as this process reaches it.
    pub log: PathBuf,
}

/// A pod running on the node.
#[derive(Debug, Clone)]
pub struct RunningPod {
    pub meta: PodMeta,
    /// When kubelet took the pod on: its probe workers tick from then on.
    pub admitted: Instant,
    pub sandbox_id: String,
    pub sandbox_config: PodSandboxConfig,
    /// The pod's spec (`template.spec`) with the image kubelet resolved.
    pub spec: Value,
    /// The init containers, run to completion in order.
    pub init_containers: Vec<StartedContainer>,
    pub containers: Vec<StartedContainer>,
}

impl RunningPod {
    pub fn container(&self, name: &str) -> Option<&StartedContainer> {
        self.containers.iter().find(|c| c.name == name)
    }

    fn container_spec(&self, name: &str) -> Option<&Value> {
        self.spec["containers"].as_array()?.iter().find(|c| c["name"] == name)
    }
}

/// How a container stopped when its pod was deleted.
#[derive(Debug, Clone)]
pub struct StoppedContainer {
    pub name: String,
    pub exit_code: i32,
    /// From StopContainer (SIGTERM) to its exit.
    pub took: Duration,
}

/// kubelet on one node: containerd's CRI, the node's name and address, its network namespace
/// (where kubelet's probes come from) and kubelet's root directory (its volumes).
#[derive(Debug)]
pub struct Kubelet<'a> {
    pub containerd: &'a Containerd,
    /// `spec.nodeName` of its pods.
    pub node_name: String,
    /// `status.hostIP`, and `status.podIP` of a host-network pod.
    pub node_ip: Ipv4Addr,
    pub node_netns: PathBuf,
    /// kubelet's `--root-dir` (pods' volumes), as this process reaches it.
    pub root_dir: PathBuf,
}

impl Kubelet<'_> {
    /// Runs pod `meta` of `template` (an object's `spec.template`: metadata and spec) as kubelet
    /// does once the scheduler bound it to this node: sandbox, volumes, init containers in order
    /// (each to exit 0), then the containers. Does not wait for readiness ([`Kubelet::wait_ready`]).
    pub fn run_pod(&self, meta: &PodMeta, template: &Value, objects: &ApiObjects) -> Result<RunningPod> {
        let admitted = Instant::now();
        let spec = &template["spec"];
        let sandbox_config = spec::sandbox_config(meta, template, &self.containerd.cgroup_parent)?;
        let log_dir = self.containerd.node_path(&sandbox_config.log_directory);
        std::fs::create_dir_all(&log_dir).map_err(io(&log_dir))?;
        let volumes = self.prepare_volumes(meta, spec, objects)?;
        let sandbox_id = self.containerd.cri().run_pod_sandbox(sandbox_config.clone())?;
        let mut pod = RunningPod {
            meta: meta.clone(),
            admitted,
            sandbox_id,
            sandbox_config,
            spec: spec.clone(),
            init_containers: Vec::new(),
            containers: Vec::new(),
        };
        for container in spec["initContainers"].as_array().into_iter().flatten() {
            let started = self.start_container(&pod, container, &volumes, objects)?;
            let status = self.wait_exited(&started.id, Duration::from_secs(120))?;
            if status != 0 {
                let log = std::fs::read_to_string(&started.log).unwrap_or_default();
                return Err(KubeletError::InitContainerFailed { name: started.name, exit_code: status, log });
            }
            pod.init_containers.push(started);
        }
        for container in spec["containers"].as_array().into_iter().flatten() {
            let started = self.start_container(&pod, container, &volumes, objects)?;
            pod.containers.push(started);
        }
        Ok(pod)
    }

    /// Runs `probe` (readinessProbe, livenessProbe, startupProbe) of container `name` as
    /// kubelet's probe worker does: it ticks every periodSeconds from the pod's admission, and
    /// probes at the ticks once the container has run initialDelaySeconds, until the probe
    /// passed successThreshold times in a row or `timeout` (from now) is over. Returns how long
    /// after the container's start it passed.
    pub fn wait_probe(&self, pod: &RunningPod, name: &str, probe: &str, timeout: Duration) -> Result<Duration> {
        let spec = pod.container_spec(name).ok_or_else(|| KubeletError::Invalid(format!("no container {name}")))?;
        let started =
            pod.container(name).ok_or_else(|| KubeletError::Invalid(format!("{name} is not running")))?.started;
        let declared = &spec[probe];
        if declared.is_null() {
            return Err(KubeletError::Invalid(format!("{name} declares no {probe}")));
        }
        let seconds = |key: &str, default: u64| Duration::from_secs(declared[key].as_u64().unwrap_or(default));
        let (delay, period) = (seconds("initialDelaySeconds", 0), seconds("periodSeconds", 10));
        let needed = declared["successThreshold"].as_u64().unwrap_or(1);
        let deadline = Instant::now() + timeout;
        let mut tick = pod.admitted;
        let (mut passes, mut last) = (0, String::new());
        loop {
            while tick < started + delay || tick < Instant::now() {
                tick += period;
            }
            if tick > deadline {
                return Err(KubeletError::ProbeNeverPassed { container: name.into(), probe: probe.into(), last });
            }
            std::thread::sleep(tick.saturating_duration_since(Instant::now()));
            match self.probe_once(pod, name, declared) {
                Ok(()) => passes += 1,
                Err(e) => (passes, last) = (0, e),
            }
            if passes >= needed {
                return Ok(started.elapsed());
            }
        }
    }

    /// Runs a probe of container `name` once: Ok if it passed, else what failed.
    pub fn probe_once(&self, pod: &RunningPod, name: &str, probe: &Value) -> std::result::Result<(), String> {
        let timeout = Duration::from_secs(probe["timeoutSeconds"].as_u64().unwrap_or(1));
        let spec = pod.container_spec(name).ok_or_else(|| format!("no container {name}"))?;
        let port_of = |port: &Value| -> std::result::Result<u16, String> {
            match port {
                Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()).ok_or(format!("port {n}")),
                Value::String(named) => spec["ports"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|p| p["name"] == *named.as_str())
                    .and_then(|p| p["containerPort"].as_u64())
                    .and_then(|n| u16::try_from(n).ok())
                    .ok_or(format!("no port named {named} in {name}")),
                other => Err(format!("port {other}")),
            }
        };
        if let Some(http) = probe.get("httpGet") {
            if http["scheme"].as_str().is_some_and(|s| s != "HTTP") {
                return Err(format!("scheme {} is not modelled", http["scheme"]));
            }
            let host = self.probe_host(pod, &http["host"])?;
            let path = http["path"].as_str().unwrap_or("/").to_string();
            let headers: Vec<(String, String)> = http["httpHeaders"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|h| (h["name"].as_str().unwrap_or("").into(), h["value"].as_str().unwrap_or("").into()))
                .collect();
            let to = SocketAddr::from((host, port_of(&http["port"])?));
            let status = in_netns(&self.node_netns, move || http_get(to, &path, &headers, timeout))?;
            // kubelet: 200-399 passes.
            return if (200..400).contains(&status) { Ok(()) } else { Err(format!("GET {to}: HTTP {status}")) };
        }
        if let Some(exec) = probe.get("exec") {
            let id = &pod.container(name).ok_or_else(|| format!("{name} is not running"))?.id;
            let command: Vec<String> =
                exec["command"].as_array().into_iter().flatten().filter_map(|a| a.as_str().map(String::from)).collect();
            let r = self.containerd.cri().exec_sync(id, &command, timeout).map_err(|e| e.to_string())?;
            return if r.exit_code == 0 {
                Ok(())
            } else {
                Err(format!(
                    "{command:?} exited {}: {}{}",
                    r.exit_code,
                    String::from_utf8_lossy(&r.stdout),
                    String::from_utf8_lossy(&r.stderr)
                ))
            };
        }
        if let Some(tcp) = probe.get("tcpSocket") {
            let host = self.probe_host(pod, &tcp["host"])?;
            let to = SocketAddr::from((host, port_of(&tcp["port"])?));
            return in_netns(&self.node_netns, move || {
                TcpStream::connect_timeout(&to, timeout).map(drop).map_err(|e| format!("connect {to}: {e}"))
            });
        }
        Err(format!("probe {probe} is not modelled (httpGet, exec and tcpSocket are)"))
    }

    /// Deletes the pod as kubelet does when its object goes: StopContainer with the grace
    /// period (SIGTERM, SIGKILL when it runs out) for each container, then StopPodSandbox,
    /// RemovePodSandbox and the pod's volumes.
    pub fn delete_pod(&self, pod: &RunningPod) -> Result<Vec<StoppedContainer>> {
        let grace = Duration::from_secs(pod.spec["terminationGracePeriodSeconds"].as_u64().unwrap_or(30));
        let cri = self.containerd.cri();
        let mut stopped = Vec::new();
        for c in &pod.containers {
            let start = Instant::now();
            cri.stop_container(&c.id, grace)?;
            let took = start.elapsed();
            let exit_code = cri.container_status(&c.id)?.status.exit_code;
            stopped.push(StoppedContainer { name: c.name.clone(), exit_code, took });
        }
        cri.stop_pod_sandbox(&pod.sandbox_id)?;
        cri.remove_pod_sandbox(&pod.sandbox_id)?;
        let dir = self.pod_dir(&pod.meta);
        std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
        Ok(stopped)
    }

    /// What container `name` of `pod` wrote (CRI's log format: time, stream, tag, line).
    pub fn log(&self, pod: &RunningPod, name: &str) -> String {
        let c = pod.containers.iter().chain(&pod.init_containers).find(|c| c.name == name);
        c.and_then(|c| std::fs::read_to_string(&c.log).ok()).unwrap_or_default()
    }

    /// Where a probe connects: its `host`, else the pod's address.
    fn probe_host(&self, pod: &RunningPod, host: &Value) -> std::result::Result<Ipv4Addr, String> {
        match host.as_str() {
            Some(h) => h.parse().map_err(|_| format!("host {h}")),
            None => self.pod_ip(pod),
        }
    }

    /// The pod's address: the node's for a host-network pod, else its sandbox's.
    fn pod_ip(&self, pod: &RunningPod) -> std::result::Result<Ipv4Addr, String> {
        if pod.spec["hostNetwork"] == true {
            return Ok(self.node_ip);
        }
        let status = self.containerd.cri().pod_sandbox_status(&pod.sandbox_id).map_err(|e| e.to_string())?;
        status.ip().parse().map_err(|_| format!("the sandbox has no address: {:?}", status.status.network))
    }

    fn pod_dir(&self, meta: &PodMeta) -> PathBuf {
        self.root_dir.join("pods").join(&meta.uid)
    }

    /// Sets up every volume of the pod; returns, by name, where each is on the node and whether
    /// kubelet mounts it read-only whatever the container asks (ConfigMaps and Secrets).
    fn prepare_volumes(
        &self,
        meta: &PodMeta,
        spec: &Value,
        objects: &ApiObjects,
    ) -> Result<BTreeMap<String, (PathBuf, bool)>> {
        let mut volumes = BTreeMap::new();
        for volume in spec["volumes"].as_array().into_iter().flatten() {
            let name = volume["name"].as_str().ok_or_else(|| KubeletError::Invalid("a volume has no name".into()))?;
            let (kind, source) = ["hostPath", "configMap", "secret"]
                .into_iter()
                .find_map(|k| volume.get(k).map(|s| (k, s)))
                .ok_or_else(|| KubeletError::Unsupported(format!("volume {name}: {volume}")))?;
            let prepared = match kind {
                "hostPath" => (self.host_path(name, source)?, false),
                _ => (self.atomic_volume(meta, spec, name, kind, source, objects)?, true),
            };
            volumes.insert(name.to_string(), prepared);
        }
        Ok(volumes)
    }

    /// A hostPath volume: its path on the node, checked (or made) as its `type` says.
    fn host_path(&self, name: &str, source: &Value) -> Result<PathBuf> {
        use std::os::unix::fs::FileTypeExt;
        let path = PathBuf::from(source["path"].as_str().unwrap_or_default());
        let on_node = self.containerd.node_path(&path);
        let kind = source["type"].as_str().unwrap_or("");
        let meta = std::fs::metadata(&on_node);
        let wrong = |what: &str| KubeletError::Invalid(format!("volume {name}: {} is not {what}", path.display()));
        match kind {
            "" => {}
            "DirectoryOrCreate" if meta.is_err() => {
                std::fs::create_dir_all(&on_node).map_err(io(&on_node))?;
                std::fs::set_permissions(&on_node, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                    .map_err(io(&on_node))?;
            }
            "FileOrCreate" if meta.is_err() => {
                std::fs::File::create(&on_node).map_err(io(&on_node))?;
            }
            "Directory" | "DirectoryOrCreate" if !meta.as_ref().is_ok_and(|m| m.is_dir()) => {
                return Err(wrong("a directory"))
            }
            "File" | "FileOrCreate" if !meta.as_ref().is_ok_and(|m| m.is_file()) => return Err(wrong("a file")),
            "CharDevice" if !meta.as_ref().is_ok_and(|m| m.file_type().is_char_device()) => {
                return Err(wrong("a character device"))
            }
            "BlockDevice" if !meta.as_ref().is_ok_and(|m| m.file_type().is_block_device()) => {
                return Err(wrong("a block device"))
            }
            "Socket" if !meta.as_ref().is_ok_and(|m| m.file_type().is_socket()) => return Err(wrong("a socket")),
            "Directory" | "DirectoryOrCreate" | "File" | "FileOrCreate" | "CharDevice" | "BlockDevice" | "Socket" => {}
            other => return Err(KubeletError::Invalid(format!("volume {name}: hostPath type {other}"))),
        }
        Ok(path)
    }

    /// A ConfigMap or Secret volume as kubelet's atomic writer lays it out: the keys' files in a
    /// timestamped directory, `..data` linking to it, and a link per key into `..data`; then
    /// the directories other volumes are mounted on inside this one (kubelet's
    /// MakeNestedMountpoints: the volume is mounted read-only, so runc could not make them).
    fn atomic_volume(
        &self,
        meta: &PodMeta,
        spec: &Value,
        name: &str,
        kind: &str,
        source: &Value,
        objects: &ApiObjects,
    ) -> Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        if source.get("items").is_some() {
            return Err(KubeletError::Unsupported(format!("volume {name}: items")));
        }
        let (object, files, default_mode): (&str, BTreeMap<String, Vec<u8>>, u32) = if kind == "configMap" {
            let object = source["name"].as_str().unwrap_or_default();
            let data = objects.config_maps.get(object).map(|d| {
                d.iter().map(|(k, v)| (k.clone(), v.clone().into_bytes())).collect::<BTreeMap<String, Vec<u8>>>()
            });
            (object, data.unwrap_or_default(), 0o644)
        } else {
            let object = source["secretName"].as_str().unwrap_or_default();
            (object, objects.secrets.get(object).cloned().unwrap_or_default(), 0o644)
        };
        let exists = if kind == "configMap" {
            objects.config_maps.contains_key(object)
        } else {
            objects.secrets.contains_key(object)
        };
        if !exists && source["optional"] != true {
            return Err(KubeletError::Invalid(format!("volume {name}: {kind} {object} does not exist")));
        }
        let mode = match source.get("defaultMode") {
            Some(v) => file_mode(v).map_err(|e| KubeletError::Invalid(format!("volume {name}: defaultMode {e}")))?,
            None => default_mode,
        };
        let plugin = if kind == "configMap" { "kubernetes.io~configmap" } else { "kubernetes.io~secret" };
        let dir = self.pod_dir(meta).join("volumes").join(plugin).join(name);
        let stamp = format!("..{}", crate::netns::unique("data_"));
        let data = dir.join(&stamp);
        std::fs::create_dir_all(&data).map_err(io(&data))?;
        for (key, bytes) in &files {
            let file = data.join(key);
            std::fs::write(&file, bytes).map_err(io(&file))?;
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).map_err(io(&file))?;
        }
        let link = |target: &str, at: &Path| std::os::unix::fs::symlink(target, at).map_err(io(at));
        link(&stamp, &dir.join("..data"))?;
        for key in files.keys() {
            link(&format!("..data/{key}"), &dir.join(key))?;
        }
        for nested in spec::nested_mount_points(spec, name) {
            let d = dir.join(&nested);
            std::fs::create_dir_all(&d).map_err(io(&d))?;
        }
        Ok(dir)
    }

    /// CreateContainer and StartContainer for one container of the pod spec.
    fn start_container(
        &self,
        pod: &RunningPod,
        container: &Value,
        volumes: &BTreeMap<String, (PathBuf, bool)>,
        objects: &ApiObjects,
    ) -> Result<StartedContainer> {
        let name = container["name"].as_str().unwrap_or_default().to_string();
        let image = container["image"].as_str().unwrap_or_default();
        let image_id = self.ensure_image(image, container)?;
        let fields = spec::Downward {
            meta: &pod.meta,
            labels: &pod.sandbox_config.labels,
            annotations: &pod.sandbox_config.annotations,
            node_name: &self.node_name,
            node_ip: self.node_ip,
            pod_ip: if pod.spec["hostNetwork"] == true { Some(self.node_ip) } else { None },
            service_account: pod.spec["serviceAccountName"].as_str().unwrap_or("default"),
        };
        let config = spec::container_config(&pod.spec, container, &image_id, volumes, objects, &fields)?;
        let log = self.containerd.node_path(Path::new(&pod.sandbox_config.log_directory).join(&config.log_path));
        if let Some(dir) = log.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let cri = self.containerd.cri();
        let id = cri.create_container(&pod.sandbox_id, config, pod.sandbox_config.clone())?;
        cri.start_container(&id)?;
        Ok(StartedContainer { name, id, started: Instant::now(), log })
    }

    /// The image's id if the node has it and the pull policy lets kubelet use it; this node
    /// reaches no registry, so a pull is an error.
    fn ensure_image(&self, image: &str, container: &Value) -> Result<String> {
        let tag = image.rsplit_once('/').map_or(image, |(_, last)| last);
        let latest = !tag.contains(':') || tag.ends_with(":latest");
        let policy = container["imagePullPolicy"].as_str().unwrap_or(if latest { "Always" } else { "IfNotPresent" });
        let have = self.containerd.cri().image_status(image)?;
        match (policy, have) {
            ("Always", _) => Err(KubeletError::Image {
                image: image.into(),
                reason: "imagePullPolicy Always (the default for :latest) pulls, and no registry is reachable".into(),
            }),
            (_, Some(found)) => Ok(found.id),
            (_, None) => Err(KubeletError::Image { image: image.into(), reason: "not on the node".into() }),
        }
    }

    /// Waits until container `id` has exited; returns its exit code.
    fn wait_exited(&self, id: &str, timeout: Duration) -> Result<i32> {
        let deadline = Instant::now() + timeout;
        loop {
            let status = self.containerd.cri().container_status(id)?;
            if status.exited() {
                return Ok(status.status.exit_code);
            }
            if Instant::now() > deadline {
                return Err(KubeletError::InitContainerStuck { id: id.into(), after: timeout });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Runs `f` on a thread in the network namespace at `netns` (setns is per thread).
fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> std::result::Result<T, String> + Send + 'static,
) -> std::result::Result<T, String> {
    let file = std::fs::File::open(netns).map_err(|e| format!("{}: {e}", netns.display()))?;
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns: {e}"))?;
        f()
    })
    .join()
    .map_err(|_| "the probe's thread panicked".to_string())?
}

/// `GET path` to `to` as kubelet's prober sends it; returns the status code.
fn http_get(
    to: SocketAddr,
    path: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> std::result::Result<u16, String> {
    let mut s = TcpStream::connect_timeout(&to, timeout).map_err(|e| format!("connect {to}: {e}"))?;
    s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {to}\r\nUser-Agent: kube-probe/1.31\r\nAccept: */*\r\nConnection: close\r\n"
    );
    for (k, v) in headers {
        request += &format!("{k}: {v}\r\n");
    }
    request += "\r\n";
    s.write_all(request.as_bytes()).map_err(|e| format!("GET {to}{path}: {e}"))?;
    let mut answer = Vec::new();
    let _ = s.take(4096).read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    let status = text.split_whitespace().nth(1).and_then(|c| c.parse().ok());
    status.ok_or_else(|| format!("GET {to}{path}: no HTTP status in {text:?}"))
}
