//! The cluster IPAM as the control plane serves it: the `ipam_*` requests, and the upkeep task
//! that keeps the node's lease, syncs with the store and detaches pods whose addresses were
//! given to someone else while this node was cut off.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use vswitch_api::api::{AddressView, ApiError, AssignSpec, Attachment, ErrorCode, PortRole, ReleasedView, Response};

use super::config::Config;
use super::ipam_errors::api_error;
use super::Switch;
use crate::ipam::store::AnyStore;
use crate::ipam::{node, AddressRequest, IpamError, NodeIpam};

pub type Ipam = NodeIpam<AnyStore>;

/// The node's IPAM from `[ipam]`, if configured.
pub fn open(config: &Config) -> Result<Option<Arc<Ipam>>, ApiError> {
    let Some(ipam) = &config.ipam else { return Ok(None) };
    let open = || {
        let settings = ipam.settings()?;
        let store = ipam.store(&config.state_dir)?;
        tracing::info!(node = %settings.node, pools = %settings.pool_list(), "cluster IPAM on");
        NodeIpam::open(settings, store, &config.state_dir)
    };
    open().map(|ipam| Some(Arc::new(ipam))).map_err(api_error)
}

impl Switch {
    /// Addresses that ports of this node hold.
    fn addresses_in_use(&self) -> HashSet<IpAddr> {
        self.list_ports()
            .into_iter()
            .flat_map(|p| match p.role {
                PortRole::Pod { ip, ipv6, .. } => [ip.map(IpAddr::V4), ipv6.map(IpAddr::V6)],
                _ => [None, None],
            })
            .flatten()
            .collect()
    }

    pub(super) async fn handle_ipam(self: &Arc<Self>, request: IpamRequest) -> Result<Response, ApiError> {
        self.ipam_request(request).await.map_err(api_error)
    }

    async fn ipam_request(self: &Arc<Self>, request: IpamRequest) -> Result<Response, IpamError> {
        let ipam = self.ipam.as_ref().ok_or(IpamError::Off)?;
        let requests = ipam.requests();
        requests.settled(SETTLE_AFTER_START).await;
        match request {
            IpamRequest::Assign(spec) => {
                let assigned = requests.assign(&AddressRequest::try_from(spec)?, &self.addresses_in_use()).await?;
                Ok(Response::Address(AddressView { ips: assigned.ips, new: assigned.new }))
            }
            IpamRequest::Release(owner) => {
                Ok(Response::Released(ReleasedView { released: requests.release(&owner).await? }))
            }
            IpamRequest::Lookup(owner) => match requests.lookup(&owner) {
                ips if ips.is_empty() => Err(IpamError::NotFound { container_id: owner.container_id }),
                ips => Ok(Response::Address(AddressView { ips, new: false })),
            },
            IpamRequest::Gc(keep) => Ok(Response::Released(ReleasedView { released: requests.gc(&keep).await? })),
            IpamRequest::View => Ok(Response::Ipam(Box::new(ipam.view().await))),
        }
    }

    /// Pod ports the IPAM state may not know (its file lost): recorded as this node's, each of
    /// the port's addresses (IPv4 and/or IPv6) on its own.
    pub(super) async fn adopt_ports_into_ipam(&self) {
        let Some(ipam) = &self.ipam else { return };
        let mut ports = Vec::new();
        for p in self.list_ports() {
            let PortRole::Pod { ip, ipv6, .. } = p.role else { continue };
            let (Some((container_id, ifname)), Some(netns)) = (p.name.rsplit_once(':'), p.netns.clone()) else {
                continue;
            };
            let owner = Attachment { container_id: container_id.into(), ifname: ifname.into() };
            for ip in [ip.map(IpAddr::V4), ipv6.map(IpAddr::V6)].into_iter().flatten() {
                ports.push((ip, owner.clone(), p.pod.clone(), netns.clone()));
            }
        }
        ipam.requests().adopt_ports(&ports).await;
    }

    /// One upkeep round; detaches the pods whose addresses this node lost.
    async fn ipam_tick(self: &Arc<Self>) {
        let Some(ipam) = &self.ipam else { return };
        let _in_flight = self.in_flight.read().await;
        if self.frozen.load(Ordering::Acquire) {
            return;
        }
        let names: HashSet<String> = self.list_ports().into_iter().map(|p| p.name).collect();
        for fenced in ipam.upkeep().tick(|owner| names.contains(&vswitch_api::api::port_name(owner))).await {
            let name = vswitch_api::api::port_name(&fenced.owner);
            match self.del_port(&name, true).await {
                Ok(()) => {
                    tracing::error!(port = %name, ip = %fenced.ip, "pod detached: its address is owned elsewhere")
                }
                Err(e) if e.code == ErrorCode::NotFound => {}
                Err(e) => tracing::error!(port = %name, ip = %fenced.ip, error = %e, "could not detach a fenced pod"),
            }
        }
    }
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

/// Runs the upkeep every [`node::TICK`].
pub async fn serve_ipam(switch: Arc<Switch>) {
    let Some(ipam) = switch.ipam.clone() else { return };
    let mut tick = tokio::time::interval(node::TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = ipam.upkeep().kicked() => {}
        }
        switch.ipam_tick().await;
    }
}
