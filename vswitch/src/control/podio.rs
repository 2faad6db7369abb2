//! The node-side I/O of pod ports, behind [`PodIo`] so the driver's whole request dispatch also
//! runs in memory ([`MemoryPodIo`], for tests and the control-request fuzz target) while vswitchd
//! uses the kernel ([`KernelPodIo`]: TAP queues opened from inside the pod's namespace, the node's
//! `POD/32 dev vsw0` routes over netlink, TAP deletion).

use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::future::BoxFuture;

use super::eni::{EniError, EniRouting};
use super::hostnet::{HostNet, HostNetError};
use super::registry::PodSpec;
use crate::datapath::PortQueues;
use crate::port::tap::{Attach, TapQueue};
use crate::port::{MemoryPort, PortQueue, TapError};

/// Why a pod's I/O failed.
#[derive(Debug, thiserror::Error)]
pub enum PodIoError {
    #[error("attaching {port}: {source}")]
    Attach { port: String, source: TapError },
    #[error(transparent)]
    HostNet(#[from] HostNetError),
    #[error("the pod's ENI routing: {0}")]
    Eni(#[from] EniError),
}

pub trait PodIo: Send + Sync + std::fmt::Debug {
    /// The identity (device, inode) of the namespace at `path`; `None` if it names none. Compared
    /// later to notice a namespace that vanished or was replaced without a DEL.
    fn netns_id(&self, path: &Path) -> Option<(u64, u64)>;
    /// One queue per worker of the pod's TAP.
    fn open_queues<'a>(&'a self, spec: &'a PodSpec, workers: usize) -> BoxFuture<'a, Result<PortQueues, PodIoError>>;
    /// The node's route to the pod (so its stack and kube-proxy's DNAT reach it).
    fn add_host_route(&self, ip: IpAddr) -> BoxFuture<'_, Result<(), PodIoError>>;
    fn remove_host_route(&self, ip: IpAddr) -> BoxFuture<'_, Result<(), PodIoError>>;
    /// Whether `ip` is announced here, by [`PodIo::add_host_route`], from the NIC that holds it
    /// (a later AWS ENI's): the driver then does not announce it from `host_port.announce_on`.
    fn announces_itself(&self, _ip: IpAddr) -> bool {
        false
    }
    /// Brings the node's routing for its pods in line (stale entries of pods gone removed).
    fn reconcile_routing(&self) -> BoxFuture<'_, Result<(), PodIoError>> {
        Box::pin(async { Ok(()) })
    }
    /// Deletes the pod's TAP in the background (the reply does not wait for the kernel).
    fn delete_device(&self, netns: PathBuf, ifname: String);
}

/// Opens one queue per worker of TAP `ifname`, on a blocking thread (the namespace switch and
/// the ioctls block).
pub async fn open_tap_queues(
    ifname: &str,
    netns: Option<PathBuf>,
    attach: Attach,
    workers: usize,
) -> Result<PortQueues, TapError> {
    let ifname = ifname.to_string();
    let opened = tokio::task::spawn_blocking(move || TapQueue::open_many(&ifname, netns.as_deref(), attach, workers))
        .await
        .map_err(|e| TapError::Namespace(std::io::Error::other(format!("attach task failed: {e}"))))??;
    Ok(opened.into_iter().map(|q| Arc::new(q) as Arc<dyn PortQueue>).collect::<Vec<_>>().into())
}

/// Queues of TAP `ifname` from descriptors an upgraded instance handed over.
pub fn tap_queues_from(fds: Vec<std::os::fd::OwnedFd>, ifname: &str) -> PortQueues {
    fds.into_iter().map(|fd| Arc::new(TapQueue::from_fd(fd, ifname)) as Arc<dyn PortQueue>).collect::<Vec<_>>().into()
}

#[derive(Debug)]
pub struct KernelPodIo {
    pub hostnet: HostNet,
    pub host_ifindex: u32,
    /// Without an uplink, the node's NIC on the VPC subnet (`host_port.announce_on`): each pod's
    /// IPv6 address gets a proxy-NDP entry there, so VPC hosts resolve it to the node.
    pub proxy_ndp_ifindex: Option<u32>,
    /// AWS, host-routed: pods on ENIs past the first leave through their own ENI's NIC.
    pub eni: Option<Arc<EniRouting>>,
    /// Queues handed over by the vswitchd this one upgrades, by port name: used instead of
    /// opening new ones (see `handover`).
    pub handed: std::sync::Mutex<std::collections::HashMap<String, Vec<std::os::fd::OwnedFd>>>,
}

impl PodIo for KernelPodIo {
    fn netns_id(&self, path: &Path) -> Option<(u64, u64)> {
        std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
    }

    fn open_queues<'a>(&'a self, spec: &'a PodSpec, workers: usize) -> BoxFuture<'a, Result<PortQueues, PodIoError>> {
        let handed = self.handed.lock().unwrap_or_else(|e| e.into_inner()).remove(&spec.name);
        if let Some(fds) = handed.filter(|fds| fds.len() == workers) {
            let queues = tap_queues_from(fds, &spec.ifname);
            return Box::pin(async move { Ok(queues) });
        }
        Box::pin(async move {
            open_tap_queues(&spec.ifname, Some(spec.netns.clone()), Attach::Existing, workers)
                .await
                .map_err(|source| PodIoError::Attach { port: spec.name.clone(), source })
        })
    }

    fn add_host_route(&self, ip: IpAddr) -> BoxFuture<'_, Result<(), PodIoError>> {
        Box::pin(async move {
            self.hostnet.route_to_pod(ip, self.host_ifindex).await?;
            if let (IpAddr::V6(ip), Some(nic)) = (ip, self.proxy_ndp_ifindex) {
                self.hostnet.proxy_ndp(ip, nic).await?;
            }
            if let Some(eni) = &self.eni {
                eni.pod_attached(ip).await?;
            }
            Ok(())
        })
    }

    fn remove_host_route(&self, ip: IpAddr) -> BoxFuture<'_, Result<(), PodIoError>> {
        Box::pin(async move {
            if let (IpAddr::V6(ip), Some(nic)) = (ip, self.proxy_ndp_ifindex) {
                self.hostnet.remove_proxy_ndp(ip, nic).await?;
            }
            let removed = self.hostnet.remove_route_to_pod(ip, self.host_ifindex).await;
            if let Some(eni) = &self.eni {
                eni.pod_detached(ip).await?;
            }
            Ok(removed?)
        })
    }

    fn announces_itself(&self, ip: IpAddr) -> bool {
        self.eni.as_ref().is_some_and(|eni| eni.announces_itself(ip))
    }

    fn reconcile_routing(&self) -> BoxFuture<'_, Result<(), PodIoError>> {
        Box::pin(async move {
            match &self.eni {
                Some(eni) => Ok(eni.reconcile().await?),
                None => Ok(()),
            }
        })
    }

    fn delete_device(&self, netns: PathBuf, ifname: String) {
        tokio::task::spawn_blocking(move || {
            if let Err(e) = vswitch_host::link::delete_link_in(&netns, &ifname) {
                tracing::warn!(netns = %netns.display(), %ifname, error = %e, "could not delete the TAP");
            }
        });
    }
}

/// Pods in memory: every absolute namespace path exists (except under `/nonexistent`), queues are
/// [`MemoryPort`]s, routes and devices are nothing.
#[derive(Debug, Default)]
pub struct MemoryPodIo;

impl PodIo for MemoryPodIo {
    fn netns_id(&self, path: &Path) -> Option<(u64, u64)> {
        if !path.is_absolute() || path.starts_with("/nonexistent") {
            return None;
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        path.hash(&mut hasher);
        Some((0, hasher.finish()))
    }

    fn open_queues<'a>(&'a self, _: &'a PodSpec, workers: usize) -> BoxFuture<'a, Result<PortQueues, PodIoError>> {
        let queues: Vec<Arc<dyn PortQueue>> =
            (0..workers.max(1)).map(|_| Arc::new(MemoryPort::default()) as Arc<dyn PortQueue>).collect();
        Box::pin(async move { Ok(queues.into()) })
    }

    fn add_host_route(&self, _: IpAddr) -> BoxFuture<'_, Result<(), PodIoError>> {
        Box::pin(async { Ok(()) })
    }

    fn remove_host_route(&self, _: IpAddr) -> BoxFuture<'_, Result<(), PodIoError>> {
        Box::pin(async { Ok(()) })
    }

    fn delete_device(&self, _: PathBuf, _: String) {}
}
