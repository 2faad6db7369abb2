//! The cluster IPAM as the control plane serves it: the `ipam_*` requests, and the upkeep task
//! that keeps the node's lease, syncs with the store and detaches pods whose addresses were
//! given to someone else while this node was cut off.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use vswitch_api::api::{ApiError, AssignSpec, Attachment, ErrorCode, PortRole, ReleasedView, Response};

use super::config::Config;
use super::Switch;
use crate::ipam::store::AnyStore;
use crate::ipam::{node, NodeIpam};

pub type Ipam = NodeIpam<AnyStore>;

/// The node's IPAM from `[ipam]`, if configured.
pub fn open(config: &Config) -> Result<Option<Arc<Ipam>>, ApiError> {
    let Some(ipam) = &config.ipam else { return Ok(None) };
    let invalid = |e: String| ApiError::new(ErrorCode::Invalid, e);
    let settings = ipam.settings().map_err(invalid)?;
    let store = ipam.store(&config.state_dir).map_err(invalid)?;
    tracing::info!(node = %settings.node, pools = ?settings.pools, "cluster IPAM on");
    Ok(Some(Arc::new(NodeIpam::open(settings, store, &config.state_dir).map_err(invalid)?)))
}

impl Switch {
    fn ipam_or_refuse(&self) -> Result<&Arc<Ipam>, ApiError> {
        self.ipam.as_ref().ok_or_else(|| {
            ApiError::new(ErrorCode::Invalid, "this vswitchd has no [ipam] section: cluster address allocation is off")
        })
    }

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
        let ipam = self.ipam_or_refuse()?;
        ipam.settled(SETTLE_AFTER_START).await;
        match request {
            IpamRequest::Assign(spec) => ipam.assign(&spec, &self.addresses_in_use()).await.map(Response::Address),
            IpamRequest::Release(owner) => {
                ipam.release(&owner).await.map(|released| Response::Released(ReleasedView { released }))
            }
            IpamRequest::Lookup(owner) => match ipam.lookup(&owner) {
                ips if ips.is_empty() => {
                    Err(ApiError::new(ErrorCode::NotFound, format!("{} has no address here", owner.container_id)))
                }
                ips => Ok(Response::Address(vswitch_api::api::AddressView { ips, new: false })),
            },
            IpamRequest::Gc(keep) => ipam.gc(&keep).await.map(|released| Response::Released(ReleasedView { released })),
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
        ipam.adopt_ports(&ports).await;
    }

    /// One upkeep round; detaches the pods whose addresses this node lost.
    async fn ipam_tick(self: &Arc<Self>) {
        let Some(ipam) = &self.ipam else { return };
        let _in_flight = self.in_flight.read().await;
        if self.frozen.load(Ordering::Acquire) {
            return;
        }
        let names: HashSet<String> = self.list_ports().into_iter().map(|p| p.name).collect();
        for fenced in ipam.tick(|owner| names.contains(&vswitch_api::api::port_name(owner))).await {
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
            _ = ipam.kicked() => {}
        }
        switch.ipam_tick().await;
    }
}
