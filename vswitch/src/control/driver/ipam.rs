//! The cluster IPAM as the control plane serves it: the `ipam_*` requests, adopting the pods the
//! IPAM's state may have lost, and the upkeep rounds that keep the node's lease, sync with the
//! store and detach pods whose addresses were given to someone else while this node was cut off.
//! With `[ipam] provider`, the same requests go to the provider pool (secondary IPs of this
//! node's NIC, `ipam::provider`) instead.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use vswitch_api::api::{AddressView, AssignSpec, Attachment, IpFamilies, ReleasedView, Response};

use super::errors::RequestError;
use super::ports::Ports;
use super::provider_view;
use super::publisher::Publisher;
use super::upgrade::ChangeGate;
use super::views;
use crate::control::config::Config;
use crate::control::registry::{PodAddresses, RegistryError};
use crate::ipam::error::{InvalidRequest, ProviderSetupError};
use crate::ipam::node::IpamMetrics;
use crate::ipam::pool::Family;
use crate::ipam::provider::aws::Ec2;
use crate::ipam::provider::claims::StickyClaims;
use crate::ipam::provider::config::{ProviderConfigError, ProviderKind};
use crate::ipam::provider::stats::ApiReport;
use crate::ipam::provider::ucloud::UCloud;
use crate::ipam::provider::ucloud_metadata::{self, MetadataError, NodeIdentity};
use crate::ipam::provider::{AnyProvider, ProviderIpam, VpcProvider};
use crate::ipam::store::AnyStore;
use crate::ipam::{AddressRequest, IpamConfig, IpamError, NodeIpam, SettingsError};

/// The node's IPAM: the cluster pool (etcd or the node-local file), or a VPC provider's.
#[derive(Debug)]
pub enum Ipam {
    Cluster(NodeIpam<AnyStore>),
    Provider(Box<ProviderIpam<AnyProvider>>),
}

impl crate::control::eni::EniSource for Ipam {
    fn ec2(&self) -> Option<&Ec2> {
        match self {
            Ipam::Provider(p) => match p.provider() {
                AnyProvider::Aws(ec2) => Some(ec2),
                AnyProvider::Ucloud(_) => None,
            },
            Ipam::Cluster(_) => None,
        }
    }
}

/// What vswitchd learns about its node before the IPAM opens: on UCloud, the NIC and host id
/// `[ipam.ucloud]` leaves to the UHost metadata service (asked at start, and only then).
pub async fn discover(config: &Config) -> Result<Option<NodeIdentity>, IpamError> {
    let Some(ucloud) = config.ipam.as_ref().filter(|i| i.provider == Some(ProviderKind::Ucloud)) else {
        return Ok(None);
    };
    let Some(ucloud) = &ucloud.ucloud else { return Ok(None) };
    let identity = ucloud_metadata::identity(ucloud).await.map_err(ProviderSetupError::from)?;
    tracing::info!(nic = %identity.nic_mac, host = %identity.host_id, from = %identity.source, "UCloud node identity");
    Ok(Some(identity))
}

/// The node's IPAM from `[ipam]`, if configured; `identity`: what [`discover`] found (without
/// it, `[ipam.ucloud]` must name the NIC and host itself).
pub fn open(config: &Config, identity: Option<NodeIdentity>) -> Result<Option<Arc<Ipam>>, IpamError> {
    let Some(ipam) = &config.ipam else { return Ok(None) };
    let missing = |kind| ProviderSetupError::Config(ProviderConfigError::MissingTable(kind));
    let provider = match ipam.provider {
        Some(ProviderKind::Ucloud) => {
            let ucloud = ipam.ucloud.as_ref().ok_or(missing("ucloud"))?;
            let settings = ucloud.settings().map_err(ProviderSetupError::from)?;
            let identity = identity
                .or_else(|| ucloud_metadata::configured(ucloud))
                .ok_or(ProviderSetupError::Metadata(MetadataError::NotDiscovered))?;
            let client = UCloud::new(ucloud, identity).map_err(ProviderSetupError::from)?;
            let nic = client.nic();
            tracing::info!(endpoint = %ucloud.endpoint, nic, "provider IPAM on: UCloud VPC");
            Some((AnyProvider::Ucloud(client), settings))
        }
        Some(ProviderKind::Aws) => {
            let aws = ipam.aws.as_ref().ok_or(missing("aws"))?;
            let settings = aws.settings().map_err(ProviderSetupError::from)?;
            let client = Ec2::new(aws).map_err(ProviderSetupError::from)?;
            tracing::info!(region = %aws.region, subnet = %aws.subnet_id, "provider IPAM on: AWS EC2");
            Some((AnyProvider::Aws(client), settings))
        }
        None => None,
    };
    if let Some((client, settings)) = provider {
        let claims = sticky_claims(ipam, &config.state_dir)?;
        tracing::info!(sticky_records = %claims.describe(), "provider IPAM: sticky pods' records");
        let provider = ProviderIpam::open_with(client, settings, &config.state_dir, Some(claims))?;
        return Ok(Some(Arc::new(Ipam::Provider(Box::new(provider)))));
    }
    let settings = ipam.settings()?;
    let store = ipam.store(&config.state_dir)?;
    tracing::info!(node = %settings.node, pools = %settings.pool_list(), "cluster IPAM on");
    Ok(Some(Arc::new(Ipam::Cluster(NodeIpam::open(settings, store, &config.state_dir)?))))
}

/// Provider mode's sticky records: in etcd with `[ipam.etcd]` (a pod finds its address from any
/// node), else in the node-local file (this node only).
fn sticky_claims(ipam: &IpamConfig, state_dir: &std::path::Path) -> Result<StickyClaims<AnyStore>, IpamError> {
    if let Some(pattern) = ipam.sticky.iter().find(|p| p.split('/').count() != 2) {
        return Err(SettingsError::StickyPattern(pattern.clone()).into());
    }
    let node = match &ipam.node_name {
        Some(n) => n.clone(),
        None => nix::unistd::gethostname().map_err(SettingsError::NoHostName)?.to_string_lossy().into_owned(),
    };
    let hold = std::time::Duration::from_secs(ipam.sticky_hold_seconds);
    Ok(StickyClaims::new(ipam.store(state_dir)?, &ipam.prefix, &node, ipam.sticky.clone(), hold))
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
        let ipam = match &*self.ipam {
            Ipam::Cluster(ipam) => ipam,
            Ipam::Provider(provider) => return self.handle_provider(provider, request).await,
        };
        let requests = ipam.requests();
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
            IpamRequest::View => Response::Ipam(Box::new(ipam.view().await)),
        })
    }

    async fn handle_provider(
        &self,
        provider: &ProviderIpam<AnyProvider>,
        request: IpamRequest,
    ) -> Result<Response, RequestError> {
        let released = |released| Response::Released(ReleasedView { released });
        Ok(match request {
            IpamRequest::Assign(spec) => {
                // IPv4 only: the lab's API (like UCloud's) hands out IPv6 secondary IPs only by name.
                if matches!(spec.families, Some(IpFamilies::Ipv6 | IpFamilies::Dual)) {
                    let pools = "the VPC subnet (provider mode: IPv4 only)".to_string();
                    return Err(IpamError::from(InvalidRequest::FamilyNotInPool { pools, family: Family::Ipv6 }).into());
                }
                // Addresses by name (runtimeConfig.ips) are not served in provider mode: sticky pods
                // get theirs by annotation or pattern.
                if let Some(ip) = spec.ips.first() {
                    return Err(IpamError::from(InvalidRequest::NotInPool(*ip)).into());
                }
                let (ip, new) =
                    provider.assign(&spec.owner, spec.pod.clone(), spec.sticky, &self.addresses_in_use()).await?;
                Response::Address(AddressView { ips: vec![ip], new })
            }
            IpamRequest::Release(owner) => released(provider.release(&owner)?),
            IpamRequest::Lookup(owner) => match provider.lookup(&owner) {
                None => return Err(IpamError::NotFound { container_id: owner.container_id }.into()),
                Some(ip) => Response::Address(AddressView { ips: vec![ip], new: false }),
            },
            IpamRequest::Gc(keep) => released(provider.gc(&keep)?),
            IpamRequest::View => {
                // A live DescribeSubnet: the view (and `vswitchctl doctor`) shows whether the
                // credentials and the endpoint work now, and the subnet's free addresses.
                let check = provider.check_api().await;
                let mut view = provider_view::view(provider);
                if let Some(p) = view.provider.as_mut() {
                    p.identity = provider.provider().identity();
                }
                match check {
                    Ok(free) => view.free = free,
                    Err(e) => {
                        view.store_reachable = false;
                        view.store_error = Some(e.to_string());
                    }
                }
                Response::Ipam(Box::new(view))
            }
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
        match &*self.ipam {
            Ipam::Cluster(ipam) => ipam.requests().adopt_ports(&ports).await,
            Ipam::Provider(provider) => {
                let ports: Vec<_> = ports.into_iter().map(|(ip, owner, pod, _)| (ip, owner, pod)).collect();
                if let Err(e) = provider.adopt_ports(&ports) {
                    tracing::error!(error = %e, "could not record the pods' addresses");
                }
            }
        }
    }

    /// Until the next upkeep round is due early (the IPAM asked for one).
    pub async fn kicked(&self) {
        match &*self.ipam {
            Ipam::Cluster(ipam) => ipam.upkeep().kicked().await,
            Ipam::Provider(provider) => provider.kicked().await,
        }
    }

    /// One upkeep round; detaches the pods whose addresses this node lost.
    pub async fn upkeep(&self) {
        let Ok(_in_flight) = self.gate.enter().await else { return };
        let ipam = match &*self.ipam {
            Ipam::Cluster(ipam) => ipam,
            Ipam::Provider(provider) => {
                if let Err(e) = provider.tick().await {
                    tracing::error!(error = %e, "provider IPAM upkeep");
                }
                self.ports.reconcile_routing().await;
                return;
            }
        };
        let names: HashSet<String> = self.publisher.registry().ports().map(|p| p.info.name.clone()).collect();
        for fenced in ipam.upkeep().tick(|owner| names.contains(&vswitch_api::api::port_name(owner))).await {
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

    /// The cluster pool's metrics (none in provider mode: see [`IpamService::provider_api`]).
    pub fn metrics(&self) -> Option<IpamMetrics> {
        match &*self.ipam {
            Ipam::Cluster(ipam) => Some(ipam.metrics()),
            Ipam::Provider(_) => None,
        }
    }

    /// The VPC API's calls in provider mode.
    pub fn provider_api(&self) -> Option<ApiReport> {
        match &*self.ipam {
            Ipam::Cluster(_) => None,
            Ipam::Provider(provider) => Some(provider.stats().report()),
        }
    }
}
