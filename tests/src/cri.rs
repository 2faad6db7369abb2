//! A small CRI client (Kubernetes `runtime.v1`), the API kubelet drives a container runtime
//! with: gRPC over the runtime's unix socket. Sandboxes, their containers, ExecSync (exec
//! probes) and image status; what kubelet makes of a pod spec is [`crate::kubelet`]. Blocking calls, for tests: each client owns a
//! single-threaded tokio runtime. The messages come from `tests/proto/cri.proto`, only the part
//! of CRI the tests use.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// The generated messages and clients of `tests/proto/cri.proto`.
#[allow(clippy::all, missing_debug_implementations)]
pub mod api {
    tonic::include_proto!("runtime.v1");
}

use api::{image_service_client::ImageServiceClient, runtime_service_client::RuntimeServiceClient};
pub use api::{
    Container, ContainerConfig, ContainerState, ExecSyncResponse, Image, ListPodSandboxRequest, PodSandbox,
    PodSandboxConfig, PodSandboxMetadata, PodSandboxStatus, PodSandboxStatusResponse, PortMapping, Protocol,
};

/// An error from a CRI call, with the call's name.
#[derive(Debug)]
pub struct CriError {
    pub call: &'static str,
    pub status: tonic::Status,
}

impl std::fmt::Display for CriError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CRI {}: {:?}: {}", self.call, self.status.code(), self.status.message())
    }
}

impl std::error::Error for CriError {}

pub type Result<T> = std::result::Result<T, CriError>;

/// A connection to a CRI runtime's socket.
#[derive(Debug)]
pub struct Client {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
    pub socket: PathBuf,
}

/// What one verbose PodSandboxStatus says, with the parts the tests read picked out of `info`.
#[derive(Debug, Clone)]
pub struct SandboxStatus {
    pub status: PodSandboxStatus,
    /// containerd's verbose `info` (JSON): pid, netns path, the runtime spec, the CNI result.
    pub info: serde_json::Value,
}

impl SandboxStatus {
    /// The pod's primary address (empty when the sandbox has no network).
    pub fn ip(&self) -> &str {
        self.status.network.as_ref().map_or("", |n| n.ip.as_str())
    }

    /// The sandbox's network namespace path (containerd's `info.runtimeSpec` or `info.netNamespacePath`).
    pub fn netns_path(&self) -> Option<PathBuf> {
        if let Some(p) = self.info["netNamespacePath"].as_str().filter(|p| !p.is_empty()) {
            return Some(PathBuf::from(p));
        }
        self.info["runtimeSpec"]["linux"]["namespaces"]
            .as_array()?
            .iter()
            .find(|ns| ns["type"] == "network")
            .and_then(|ns| ns["path"].as_str())
            .map(PathBuf::from)
    }

    pub fn ready(&self) -> bool {
        self.status.state == api::PodSandboxState::SandboxReady as i32
    }
}

/// What one verbose ContainerStatus says.
#[derive(Debug, Clone)]
pub struct ContainerStatusInfo {
    pub status: api::ContainerStatus,
    /// containerd's verbose `info` (JSON): pid, the OCI runtime spec it gave runc.
    pub info: serde_json::Value,
}

impl ContainerStatusInfo {
    pub fn state(&self) -> ContainerState {
        ContainerState::try_from(self.status.state).unwrap_or(ContainerState::ContainerUnknown)
    }

    pub fn exited(&self) -> bool {
        self.state() == ContainerState::ContainerExited
    }

    pub fn running(&self) -> bool {
        self.state() == ContainerState::ContainerRunning
    }
}

impl Client {
    /// Connects to the CRI socket at `socket` (a unix socket path), waiting up to `timeout` for
    /// it to answer `Version`.
    pub fn connect(socket: &Path, timeout: Duration) -> std::result::Result<Client, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        let path = socket.to_path_buf();
        let deadline = Instant::now() + timeout;
        let channel = loop {
            let path = path.clone();
            // The URI is a placeholder: the connector below always dials the socket.
            let endpoint = Endpoint::from_static("http://cri.invalid").connect_timeout(Duration::from_secs(5));
            let connected = rt.block_on(endpoint.connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move { Ok::<_, std::io::Error>(TokioIo::new(tokio::net::UnixStream::connect(path).await?)) }
            })));
            match connected {
                Ok(channel) => break channel,
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("no CRI runtime at {}: {e}", socket.display()));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        };
        let client = Client {
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
            rt,
            socket: path,
        };
        loop {
            match client.version() {
                Ok(_) => return Ok(client),
                Err(e) if Instant::now() > deadline => return Err(e.to_string()),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    fn call<T, F>(&self, call: &'static str, f: F) -> Result<T>
    where
        F: std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        self.rt.block_on(f).map(tonic::Response::into_inner).map_err(|status| CriError { call, status })
    }

    pub fn version(&self) -> Result<api::VersionResponse> {
        let mut c = self.runtime.clone();
        self.call("Version", async move { c.version(api::VersionRequest { version: "v1".into() }).await })
    }

    /// The runtime's conditions by type (`RuntimeReady`, `NetworkReady`): (status, reason: message).
    pub fn conditions(&self) -> Result<HashMap<String, (bool, String)>> {
        let mut c = self.runtime.clone();
        let status = self.call("Status", async move { c.status(api::StatusRequest { verbose: false }).await })?;
        Ok(status
            .status
            .map(|s| s.conditions)
            .unwrap_or_default()
            .into_iter()
            .map(|c| (c.r#type, (c.status, format!("{}: {}", c.reason, c.message))))
            .collect())
    }

    /// Waits until the runtime says its network is ready (it has loaded a CNI configuration).
    pub fn wait_network_ready(&self, timeout: Duration) -> std::result::Result<(), String> {
        let deadline = Instant::now() + timeout;
        loop {
            let conditions = self.conditions().map_err(|e| e.to_string())?;
            match conditions.get("NetworkReady") {
                Some((true, _)) => return Ok(()),
                other if Instant::now() > deadline => return Err(format!("NetworkReady never came: {other:?}")),
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Whether the runtime has the image `reference` (CRI ImageStatus).
    pub fn has_image(&self, reference: &str) -> Result<bool> {
        Ok(self.image_status(reference)?.is_some())
    }

    /// The image `reference` as the runtime has it (its id, tags, size), if it has it.
    pub fn image_status(&self, reference: &str) -> Result<Option<Image>> {
        let mut c = self.images.clone();
        let image = Some(api::ImageSpec { image: reference.into(), ..Default::default() });
        let r = self.call("ImageStatus", async move {
            c.image_status(api::ImageStatusRequest { image, verbose: false }).await
        })?;
        Ok(r.image)
    }

    pub fn run_pod_sandbox(&self, config: PodSandboxConfig) -> Result<String> {
        let mut c = self.runtime.clone();
        let request = api::RunPodSandboxRequest { config: Some(config), runtime_handler: String::new() };
        self.call("RunPodSandbox", async move { c.run_pod_sandbox(request).await }).map(|r| r.pod_sandbox_id)
    }

    pub fn pod_sandbox_status(&self, id: &str) -> Result<SandboxStatus> {
        let mut c = self.runtime.clone();
        let request = api::PodSandboxStatusRequest { pod_sandbox_id: id.into(), verbose: true };
        let r = self.call("PodSandboxStatus", async move { c.pod_sandbox_status(request).await })?;
        let info = r.info.get("info").and_then(|s| serde_json::from_str(s).ok()).unwrap_or(serde_json::Value::Null);
        let status = r.status.ok_or_else(|| CriError {
            call: "PodSandboxStatus",
            status: tonic::Status::internal("the answer has no status"),
        })?;
        Ok(SandboxStatus { status, info })
    }

    pub fn stop_pod_sandbox(&self, id: &str) -> Result<()> {
        let mut c = self.runtime.clone();
        let request = api::StopPodSandboxRequest { pod_sandbox_id: id.into() };
        self.call("StopPodSandbox", async move { c.stop_pod_sandbox(request).await }).map(drop)
    }

    pub fn remove_pod_sandbox(&self, id: &str) -> Result<()> {
        let mut c = self.runtime.clone();
        let request = api::RemovePodSandboxRequest { pod_sandbox_id: id.into() };
        self.call("RemovePodSandbox", async move { c.remove_pod_sandbox(request).await }).map(drop)
    }

    /// Every sandbox the runtime knows, ready or not.
    pub fn list_pod_sandbox(&self) -> Result<Vec<PodSandbox>> {
        let mut c = self.runtime.clone();
        self.call("ListPodSandbox", async move { c.list_pod_sandbox(ListPodSandboxRequest { filter: None }).await })
            .map(|r| r.items)
    }

    /// CreateContainer in sandbox `sandbox_id` (created with `sandbox_config`); returns its id.
    pub fn create_container(
        &self,
        sandbox_id: &str,
        config: ContainerConfig,
        sandbox_config: PodSandboxConfig,
    ) -> Result<String> {
        let mut c = self.runtime.clone();
        let request = api::CreateContainerRequest {
            pod_sandbox_id: sandbox_id.into(),
            config: Some(config),
            sandbox_config: Some(sandbox_config),
        };
        self.call("CreateContainer", async move { c.create_container(request).await }).map(|r| r.container_id)
    }

    pub fn start_container(&self, id: &str) -> Result<()> {
        let mut c = self.runtime.clone();
        let request = api::StartContainerRequest { container_id: id.into() };
        self.call("StartContainer", async move { c.start_container(request).await }).map(drop)
    }

    /// StopContainer: SIGTERM (the image's stop signal), SIGKILL after `timeout`.
    pub fn stop_container(&self, id: &str, timeout: Duration) -> Result<()> {
        let mut c = self.runtime.clone();
        let request = api::StopContainerRequest { container_id: id.into(), timeout: timeout.as_secs() as i64 };
        self.call("StopContainer", async move { c.stop_container(request).await }).map(drop)
    }

    pub fn remove_container(&self, id: &str) -> Result<()> {
        let mut c = self.runtime.clone();
        let request = api::RemoveContainerRequest { container_id: id.into() };
        self.call("RemoveContainer", async move { c.remove_container(request).await }).map(drop)
    }

    /// A verbose ContainerStatus.
    pub fn container_status(&self, id: &str) -> Result<ContainerStatusInfo> {
        let mut c = self.runtime.clone();
        let request = api::ContainerStatusRequest { container_id: id.into(), verbose: true };
        let r = self.call("ContainerStatus", async move { c.container_status(request).await })?;
        let info = r.info.get("info").and_then(|s| serde_json::from_str(s).ok()).unwrap_or(serde_json::Value::Null);
        let status = r.status.ok_or_else(|| CriError {
            call: "ContainerStatus",
            status: tonic::Status::internal("the answer has no status"),
        })?;
        Ok(ContainerStatusInfo { status, info })
    }

    /// The containers of sandbox `sandbox_id`, in every state.
    pub fn list_containers(&self, sandbox_id: &str) -> Result<Vec<Container>> {
        let mut c = self.runtime.clone();
        let filter = Some(api::ContainerFilter { pod_sandbox_id: sandbox_id.into(), ..Default::default() });
        self.call("ListContainers", async move { c.list_containers(api::ListContainersRequest { filter }).await })
            .map(|r| r.containers)
    }

    /// ExecSync: runs `cmd` in container `id`, killed after `timeout` (as kubelet runs an exec
    /// probe).
    pub fn exec_sync(&self, id: &str, cmd: &[String], timeout: Duration) -> Result<ExecSyncResponse> {
        let mut c = self.runtime.clone();
        let request =
            api::ExecSyncRequest { container_id: id.into(), cmd: cmd.to_vec(), timeout: timeout.as_secs() as i64 };
        self.call("ExecSync", async move { c.exec_sync(request).await })
    }
}

/// A sandbox configuration as kubelet sends it for a pod: metadata (name, namespace, uid),
/// hostname, labels, and the given annotations and port mappings, in the pod cgroup `cgroup_parent`.
pub fn pod_config(
    name: &str,
    namespace: &str,
    uid: &str,
    cgroup_parent: &str,
    annotations: &[(&str, &str)],
    port_mappings: Vec<PortMapping>,
) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: uid.into(),
            namespace: namespace.into(),
            attempt: 0,
        }),
        hostname: name.into(),
        labels: [("io.kubernetes.pod.name".to_string(), name.to_string())].into(),
        annotations: annotations.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        port_mappings,
        linux: Some(api::LinuxPodSandboxConfig { cgroup_parent: cgroup_parent.into(), ..Default::default() }),
        ..Default::default()
    }
}

/// A TCP hostPort mapping: `host_port` on the node to `container_port` in the pod.
pub fn tcp_port(container_port: i32, host_port: i32) -> PortMapping {
    PortMapping { protocol: Protocol::Tcp as i32, container_port, host_port, host_ip: String::new() }
}
