//! The cluster IPAM as the control plane serves it: the `ipam_*` requests, adopting the pods the
//! IPAM's state may have lost, and the upkeep rounds that keep the node's lease, sync with the
//! store and detach pods whose addresses were given to someone else while this node was cut off.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use vswitch_api::api::{AddressView, AssignSpec, Attachment, ReleasedView, Response};

use super::errors::RequestError;
use super::ports::Ports;
use super::publisher::Publisher;
use super::upgrade::ChangeGate;
use super::views;
use crate::control::config::Config;
use crate::control::registry::{PodAddresses, RegistryError};
use crate::ipam::node::IpamMetrics;
use crate::ipam::store::AnyStore;
use crate::ipam::{AddressRequest, IpamError, NodeIpam};

pub type Ipam = NodeIpam<AnyStore>;

/// The node's IPAM from `[ipam]`, if configured.
pub fn open(config: &Config) -> Result<Option<Arc<Ipam>>, IpamError> {
    let Some(ipam) = &config.ipam else { return Ok(None) };
    let settings = ipam.settings()?;
    let store = ipam.store(&config.state_dir)?;
    tracing::info!(node = %settings.node, pools = %settings.pool_list(), "cluster IPAM on");
    Ok(Some(Arc::new(NodeIpam::open(settings, store, &config.state_dir)?)))
}

/// The IPAM requests, split off [`vswitch_api::api::Request`].
#[derive(Debug)]
pub enum IpamRequest {
    Assign(AssignSpec),
    Release(Attachment),
    Lookup(Attachment),
    Gc(Vec<Attachment>),
    View,
}

/// The longest an IPAM request waits for the first upkeep round after vswitchd starts.
const SETTLE_AFTER_START: std::time::Duration = std::time::Duration::from_secs(3);

#[derive(Debug)]
pub struct IpamService {
    ipam: Arc<Ipam>,
    publisher: Arc<Publisher>,
    /// Detaches the pods whose addresses this node lost.
    ports: Arc<Ports>,
    gate: Arc<ChangeGate>,
}

impl IpamService {
    pub fn new(ipam: Arc<Ipam>, publisher: Arc<Publisher>, ports: Arc<Ports>, gate: Arc<ChangeGate>) -> IpamService {
        IpamService { ipam, publisher, ports, gate }
    }

    pub async fn handle(&self, request: IpamRequest) -> Result<Response, RequestError> {
        let requests = self.ipam.requests();
        requests.settled(SETTLE_AFTER_START).await;
        let released = |released| Response::Released(ReleasedView { released });
        Ok(match request {
            IpamRequest::Assign(spec) => {
                let assigned = requests
                    .assign(&AddressRequest::try_from(spec).map_err(IpamError::from)?, &self.addresses_in_use())
                    .await?;
                Response::Address(AddressView { ips: assigned.ips, new: assigned.new })
            }
            IpamRequest::Release(owner) => released(requests.release(&owner).await?),
            IpamRequest::Lookup(owner) => match requests.lookup(&owner) {
                ips if ips.is_empty() => return Err(IpamError::NotFound { container_id: owner.container_id }.into()),
                ips => Response::Address(AddressView { ips, new: false }),
            },
            IpamRequest::Gc(keep) => released(requests.gc(&keep).await?),
            IpamRequest::View => Response::Ipam(Box::new(self.ipam.view().await)),
        })
    }

    /// Addresses that ports of this node hold.
    fn addresses_in_use(&self) -> HashSet<IpAddr> {
        let registry = self.publisher.registry();
        registry.ports().filter_map(|p| PodAddresses::of_role(&p.info.role)).flat_map(|a| a.iter()).collect()
    }

    /// Pod ports the IPAM state may not know (its file lost): recorded as this node's, each of
    /// the port's addresses (IPv4 and/or IPv6) on its own.
    pub async fn adopt_ports(&self) {
        let mut ports = Vec::new();
        for p in self.publisher.registry().ports() {
            let Some(addresses) = PodAddresses::of_role(&p.info.role) else { continue };
            let (Some((container_id, ifname)), Some(netns)) = (p.info.name.rsplit_once(':'), &p.attachment.netns)
            else {
                continue;
            };
            let owner = Attachment { container_id: container_id.into(), ifname: ifname.into() };
            let pod = p.attachment.pod.as_ref().map(views::pod_ref);
            for ip in addresses.iter() {
                ports.push((ip, owner.clone(), pod.clone(), netns.clone()));
            }
        }
        self.ipam.requests().adopt_ports(&ports).await;
    }

    /// Until the next upkeep round is due early (the IPAM asked for one).
    pub async fn kicked(&self) {
        self.ipam.upkeep().kicked().await
    }

    /// One upkeep round; detaches the pods whose addresses this node lost.
    pub async fn upkeep(&self) {
        let Ok(_in_flight) = self.gate.enter().await else { return };
        let names: HashSet<String> = self.publisher.registry().ports().map(|p| p.info.name.clone()).collect();
        for fenced in self.ipam.upkeep().tick(|owner| names.contains(&vswitch_api::api::port_name(owner))).await {
            let name = vswitch_api::api::port_name(&fenced.owner);
            match self.ports.remove(&name, true).await {
                Ok(()) => {
                    tracing::error!(port = %name, ip = %fenced.ip, "pod detached: its address is owned elsewhere")
                }
                Err(RequestError::Registry(RegistryError::NoSuchPort(_))) => {}
                Err(e) => tracing::error!(port = %name, ip = %fenced.ip, error = %e, "could not detach a fenced pod"),
            }
        }
    }

    pub fn metrics(&self) -> IpamMetrics {
        self.ipam.metrics()
    }
}
