//! AWS EC2 as a VPC provider: pod addresses are secondary private IPs of this instance's ENIs,
//! as AWS's VPC CNI does it. `AssignPrivateIpAddresses` on the first ENI with room; when every
//! attached ENI is full and the instance type allows more, `CreateNetworkInterface` (tagged with
//! the instance and its creation time) + `AttachNetworkInterface` (next device index) +
//! `ModifyNetworkInterfaceAttribute` (delete on termination). The instance's type and its limits
//! (`DescribeInstances`, `DescribeInstanceTypes`) and its ENIs (`DescribeNetworkInterfaces`) are
//! read on first use, so vswitchd starts while EC2 is unreachable.
//!
//! - [`config`]: `[ipam.aws]` and the AWS CNI's warm targets, counted as its ipamd counts them.
//! - [`query`]: the Query protocol, SigV4, typed errors. [`xml`]: the replies.
//! - [`credentials`]: environment, IRSA's web identity ([`web_identity`]: STS), the shared
//!   credentials file, then the instance profile ([`imds`]: IMDSv2, also the instance id).
//! - [`enis`]: the ENIs kept between calls, the leak rule, the `createdAt` tag.

pub mod config;
pub mod credentials;
pub mod enis;
pub mod imds;
pub mod query;
pub mod web_identity;
pub mod xml;

use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use config::AwsConfig;
use credentials::{CredentialSource, Credentials};
use enis::Node;
use query::{AwsSetupError, Params, Query};

use super::{PoolCall, PoolCounts, PoolDelta, ProviderError, SecondaryIp, VpcProvider};

/// One instance's ENIs on EC2. `Debug` leaves the credentials out.
#[derive(Debug)]
pub struct Ec2 {
    config: AwsConfig,
    query: Query,
    /// Discovered on first use; calls that change ENIs hold it, so they run one at a time.
    node: tokio::sync::Mutex<Option<Node>>,
    /// The instance id once known (the pool's "NIC").
    instance: OnceLock<String>,
    /// Secondary addresses per ENI and in all, once known (the pool's targets follow them).
    limits: Mutex<Option<(usize, usize)>>,
    /// The subnet of the ENIs this node creates (`DescribeSubnets`, once): their NICs' routes.
    subnet: OnceLock<Ipv4Net>,
}

/// An attached ENI as the node's routing needs it (host-routed mode: `control::eni` brings its
/// NIC up and routes its pods through it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EniNic {
    pub id: String,
    /// Lower case, as `/sys/class/net/*/address` has it.
    pub mac: String,
    pub device_index: u32,
    pub primary: Ipv4Addr,
}

impl EniNic {
    fn of(eni: &xml::Eni) -> Option<EniNic> {
        let (device_index, primary) = (eni.device_index?, eni.primary_ip?);
        (!eni.mac.is_empty()).then(|| EniNic { id: eni.id.clone(), mac: eni.mac.clone(), device_index, primary })
    }
}

fn v4(ip: IpAddr) -> Result<Ipv4Addr, ProviderError> {
    match ip {
        IpAddr::V4(ip) => Ok(ip),
        IpAddr::V6(_) => {
            Err(ProviderError::Other { code: 0, message: format!("{ip}: IPv6 is not served by EC2 mode") })
        }
    }
}

fn unreadable(action: &str) -> impl Fn(String) -> ProviderError + '_ {
    move |e| ProviderError::Unavailable(format!("{action}: {e}"))
}

impl Ec2 {
    /// The client for `[ipam.aws]`, with the credentials of the standard chain (its last link:
    /// the instance profile, from `imds_endpoint`).
    pub fn new(config: &AwsConfig) -> Result<Ec2, AwsSetupError> {
        Ec2::with_credential_source(config, CredentialSource::from_env(config)?)
    }

    pub fn with_credentials(config: &AwsConfig, credentials: Credentials) -> Result<Ec2, AwsSetupError> {
        Ec2::with_credential_source(config, CredentialSource::Fixed(credentials))
    }

    pub fn with_credential_source(config: &AwsConfig, credentials: CredentialSource) -> Result<Ec2, AwsSetupError> {
        let endpoint =
            config.endpoint.clone().unwrap_or_else(|| format!("https://ec2.{}.amazonaws.com", config.region));
        if crate::ipam::provider::http::split_endpoint(&config.imds_endpoint).is_none() {
            return Err(AwsSetupError::Endpoint { key: "imds_endpoint", value: config.imds_endpoint.clone() });
        }
        let instance = OnceLock::new();
        if let Some(id) = &config.instance_id {
            instance.set(id.clone()).expect("empty");
        }
        tracing::info!(credentials = %credentials.describe(), "EC2 credentials");
        Ok(Ec2 {
            query: Query::new(&endpoint, config.ca_file.as_deref(), &config.region, credentials)?,
            config: config.clone(),
            node: tokio::sync::Mutex::new(None),
            instance,
            limits: Mutex::new(None),
            subnet: OnceLock::new(),
        })
    }

    /// The instance and where the credentials come from, for `vswitchctl ipam`.
    pub fn identity(&self) -> String {
        format!("instance {}, credentials from {}", self.nic(), self.query.credentials_source())
    }

    async fn call(&self, action: &str, params: Params) -> Result<String, ProviderError> {
        self.query.call(action, &params.0).await
    }

    /// The instance's ENIs, described.
    async fn described_enis(&self, instance_id: &str) -> Result<Vec<xml::Eni>, ProviderError> {
        let params = Params::default().filter("attachment.instance-id", &[instance_id]);
        let reply = self.call("DescribeNetworkInterfaces", params).await?;
        xml::network_interfaces(&reply).map_err(unreadable("DescribeNetworkInterfaces"))
    }

    /// The instance, its limits and ENIs (read once).
    async fn discover(&self) -> Result<Node, ProviderError> {
        let instance_id = match self.instance.get() {
            Some(id) => id.clone(),
            None => imds::metadata(&self.config.imds_endpoint, "instance-id").await?,
        };
        let reply = self.call("DescribeInstances", Params::default().set("InstanceId.1", &instance_id)).await?;
        let instance_type = xml::instance_type(&reply).map_err(unreadable("DescribeInstances"))?;
        let reply = self.call("DescribeInstanceTypes", Params::default().set("InstanceType.1", &instance_type)).await?;
        let (max_enis, per_interface) = xml::interface_limits(&reply).map_err(unreadable("DescribeInstanceTypes"))?;
        let mut node = Node {
            max_enis: self.config.max_eni.map_or(max_enis, |m| m.min(max_enis)),
            per_eni: per_interface.saturating_sub(1),
            instance_id,
            instance_type,
            groups: self.config.security_group_ids.clone(),
            enis: Vec::new(),
        };
        let described = self.described_enis(&node.instance_id).await?;
        node.set_enis(described);
        if node.groups.is_empty() {
            node.groups =
                node.enis.iter().find(|e| e.device_index == Some(0)).map(|e| e.groups.clone()).unwrap_or_default();
        }
        tracing::info!(
            instance = %node.instance_id, instance_type = %node.instance_type, max_enis = node.max_enis,
            per_eni = node.per_eni, enis = node.enis.len(), "EC2 instance discovered"
        );
        let _ = self.instance.set(node.instance_id.clone());
        *self.limits.lock().unwrap_or_else(|e| e.into_inner()) = Some((node.per_eni, node.capacity()));
        Ok(node)
    }

    /// The node, discovered if it was not yet.
    async fn node(&self) -> Result<tokio::sync::MutexGuard<'_, Option<Node>>, ProviderError> {
        let mut guard = self.node.lock().await;
        if guard.is_none() {
            *guard = Some(self.discover().await?);
        }
        Ok(guard)
    }

    /// A new ENI, tagged as AWS's VPC CNI tags it, attached at the next device index and deleted
    /// with the instance. An ENI that could not be attached is deleted again (else it leaks until
    /// the leak collection).
    async fn attach_new_eni(&self, node: &mut Node) -> Result<usize, ProviderError> {
        let mut params = Params::default()
            .set("SubnetId", &self.config.subnet_id)
            .set("Description", format!("{}{}", enis::DESCRIPTION_PREFIX, node.instance_id))
            .set("TagSpecification.1.ResourceType", "network-interface");
        let mut tags = vec![
            (enis::INSTANCE_TAG, node.instance_id.clone()),
            (enis::CREATED_AT_TAG, enis::rfc3339(SystemTime::now())),
        ];
        tags.extend(self.config.cluster_name.as_ref().map(|c| (enis::CLUSTER_TAG, c.clone())));
        for (i, (key, value)) in tags.into_iter().enumerate() {
            params = params.set(&format!("TagSpecification.1.Tag.{}.Key", i + 1), key);
            params = params.set(&format!("TagSpecification.1.Tag.{}.Value", i + 1), value);
        }
        for (i, group) in node.groups.iter().enumerate() {
            params = params.set(&format!("SecurityGroupId.{}", i + 1), group);
        }
        let reply = self.call("CreateNetworkInterface", params).await?;
        let mut eni = xml::created_interface(&reply).map_err(unreadable("CreateNetworkInterface"))?;
        let index = node.next_device_index();
        let attach = Params::default()
            .set("NetworkInterfaceId", &eni.id)
            .set("InstanceId", &node.instance_id)
            .set("DeviceIndex", index.to_string());
        let attached = match self.call("AttachNetworkInterface", attach).await {
            Ok(reply) => reply,
            Err(e) => {
                let delete = Params::default().set("NetworkInterfaceId", &eni.id);
                if let Err(d) = self.call("DeleteNetworkInterface", delete).await {
                    tracing::warn!(eni = %eni.id, error = %d, "an ENI that failed to attach is left for the leak collection");
                }
                return Err(e);
            }
        };
        let attachment_id = xml::parse(&attached)
            .ok()
            .and_then(|doc| xml::first_text(&doc, "attachmentId").map(String::from))
            .ok_or_else(|| ProviderError::Unavailable("AttachNetworkInterface: no attachmentId in the reply".into()))?;
        let keep = Params::default()
            .set("NetworkInterfaceId", &eni.id)
            .set("Attachment.AttachmentId", &attachment_id)
            .set("Attachment.DeleteOnTermination", "true");
        if let Err(e) = self.call("ModifyNetworkInterfaceAttribute", keep).await {
            tracing::warn!(eni = %eni.id, error = %e, "the new ENI is not deleted with the instance");
        }
        tracing::info!(eni = %eni.id, device_index = index, "attached a new ENI: the attached ones are full");
        eni.secondary.clear();
        eni.status = "in-use".into();
        eni.instance_id = Some(node.instance_id.clone());
        eni.device_index = Some(index);
        eni.attachment_id = Some(attachment_id);
        node.enis.push(eni);
        Ok(node.enis.len() - 1)
    }

    /// Why the node cannot deliver `eni`'s addresses: no interface with its MAC is up in it
    /// (with `require_eni_interface`); `None`: it can.
    fn absent(&self, eni: &xml::Eni) -> Option<String> {
        let present =
            !self.config.require_eni_interface || eni.mac.is_empty() || super::probe::interface_up_with_mac(&eni.mac);
        (!present).then(|| {
            format!(
                "{} attached but not present in this node: no interface with its MAC {} is up (device index {})",
                eni.id,
                eni.mac,
                eni.device_index.map_or("?".into(), |i| i.to_string())
            )
        })
    }

    /// The ENI the next address goes to: the first present one with room, else a new one. No
    /// ENI is attached while an attached one is absent from the node (the new one would be too).
    async fn eni_with_room(&self, node: &mut Node) -> Result<usize, ProviderError> {
        let full = |e: &xml::Eni| e.secondary.len() >= node.per_eni;
        if let Some(at) = node.enis.iter().position(|e| !full(e) && self.absent(e).is_none()) {
            return Ok(at);
        }
        if let Some(why) = node.enis.iter().find_map(|e| self.absent(e)) {
            return Err(ProviderError::NicAbsent(why));
        }
        if !node.may_attach() {
            return Err(ProviderError::Quota(format!(
                "instance {} ({}): its {} ENIs hold {} secondary addresses each and all are assigned",
                node.instance_id, node.instance_type, node.max_enis, node.per_eni
            )));
        }
        let at = self.attach_new_eni(node).await?;
        // On EC2 the new NIC shows up in the instance a few seconds later: until then, no address.
        match self.absent(&node.enis[at]) {
            Some(why) => Err(ProviderError::NicAbsent(why)),
            None => Ok(at),
        }
    }

    /// `AssignPrivateIpAddresses` on the ENI at `at`: `ip` (taken from wherever it is with
    /// `reassign`), else up to `count` new addresses (as many as the ENI has room for).
    async fn assign(
        &self,
        node: &mut Node,
        at: usize,
        ip: Option<Ipv4Addr>,
        count: usize,
        reassign: bool,
    ) -> Result<Vec<Ipv4Addr>, ProviderError> {
        let room = node.per_eni.saturating_sub(node.enis[at].secondary.len()).max(1);
        let eni = &mut node.enis[at];
        let mut params = Params::default().set("NetworkInterfaceId", &eni.id);
        params = match ip {
            Some(ip) => params.set("PrivateIpAddress.1", ip.to_string()),
            None => params.set("SecondaryPrivateIpAddressCount", count.clamp(1, room).to_string()),
        };
        if reassign {
            params = params.set("AllowReassignment", "true");
        }
        let reply = match self.call("AssignPrivateIpAddresses", params).await {
            Err(ProviderError::Quota(m)) => {
                // EC2 knows better than the cache: the ENI is full.
                tracing::warn!(eni = %eni.id, "EC2 says the ENI is full: {m}");
                while eni.secondary.len() < node.per_eni {
                    eni.secondary.push(Ipv4Addr::UNSPECIFIED);
                }
                return Err(ProviderError::Quota(m));
            }
            other => other?,
        };
        let assigned = xml::assigned_addresses(&reply).map_err(unreadable("AssignPrivateIpAddresses"))?;
        let new: Vec<Ipv4Addr> = match ip {
            Some(ip) => vec![ip],
            None => assigned.into_iter().filter(|a| !eni.secondary.contains(a) && Some(*a) != eni.primary_ip).collect(),
        };
        if new.is_empty() {
            return Err(ProviderError::Unavailable("AssignPrivateIpAddresses: no new address in the reply".into()));
        }
        eni.secondary.extend(&new);
        Ok(new)
    }

    /// New addresses on this instance: `ip` (`reassign`: even from another ENI), else up to
    /// `count` on the first ENI with room.
    async fn add_addresses(
        &self,
        ip: Option<Ipv4Addr>,
        count: usize,
        reassign: bool,
    ) -> Result<Vec<Ipv4Addr>, ProviderError> {
        let mut guard = self.node().await?;
        let node = guard.as_mut().expect("discovered");
        loop {
            let at = self.eni_with_room(node).await?;
            match self.assign(node, at, ip, count, reassign).await {
                // That ENI was full after all: the next one, or a new one.
                Err(ProviderError::Quota(_)) if node.with_room().is_some() || node.may_attach() => continue,
                other => return other,
            }
        }
    }

    /// The instance's attached ENIs as known (discovered first if they are not yet; no other
    /// EC2 call): the provider's own attachments are in it as soon as they are made.
    pub async fn eni_nics(&self) -> Result<Vec<EniNic>, ProviderError> {
        let guard = self.node().await?;
        Ok(guard.as_ref().expect("discovered").enis.iter().filter_map(EniNic::of).collect())
    }

    /// The ENI holding `ip` as a secondary address, from what is known (no EC2 call).
    pub async fn eni_holding(&self, ip: Ipv4Addr) -> Option<EniNic> {
        let guard = self.node.lock().await;
        let node = guard.as_ref()?;
        node.holding(ip).and_then(|at| EniNic::of(&node.enis[at]))
    }

    /// The subnet the ENIs are in (`subnet_id`'s CIDR block, asked once).
    pub async fn subnet(&self) -> Result<Ipv4Net, ProviderError> {
        if let Some(subnet) = self.subnet.get() {
            return Ok(*subnet);
        }
        let subnet = self.subnet_field("cidrBlock").await?;
        Ok(*self.subnet.get_or_init(|| subnet))
    }

    /// `field` of `subnet_id` in `DescribeSubnets`, parsed.
    async fn subnet_field<T: std::str::FromStr>(&self, field: &str) -> Result<T, ProviderError> {
        let reply = self.call("DescribeSubnets", Params::default().set("SubnetId.1", &self.config.subnet_id)).await?;
        let doc = xml::parse(&reply).map_err(unreadable("DescribeSubnets"))?;
        xml::first_text(&doc, field).and_then(|n| n.parse().ok()).ok_or_else(|| ProviderError::Other {
            code: 0,
            message: format!("DescribeSubnets: no {field} of subnet {} in the reply", self.config.subnet_id),
        })
    }

    /// `ip` on this instance (`reassign`: even from another ENI).
    async fn add_address(&self, ip: Ipv4Addr, reassign: bool) -> Result<Ipv4Addr, ProviderError> {
        Ok(self.add_addresses(Some(ip), 1, reassign).await?[0])
    }

    /// Deletes the detached ENIs this instance (or cluster) created that are older than the
    /// configured age, as AWS's VPC CNI's leak collection does; how many.
    async fn delete_leaked_enis(&self) -> Result<usize, ProviderError> {
        let instance_id = self.node().await?.as_ref().expect("discovered").instance_id.clone();
        let mut params = Params::default().filter("tag-key", &[enis::INSTANCE_TAG]);
        if let Some(cluster) = &self.config.cluster_name {
            params = Params::default().filter(&format!("tag:{}", enis::CLUSTER_TAG), &[cluster]);
        }
        let reply = self.call("DescribeNetworkInterfaces", params).await?;
        let described = xml::network_interfaces(&reply).map_err(unreadable("DescribeNetworkInterfaces"))?;
        let age = Duration::from_secs(self.config.leaked_eni_age_seconds);
        let cluster = self.config.cluster_name.as_deref();
        let now = SystemTime::now();
        let mut deleted = 0;
        for eni in described.iter().filter(|e| enis::is_leaked(e, &instance_id, cluster, age, now)) {
            match self.call("DeleteNetworkInterface", Params::default().set("NetworkInterfaceId", &eni.id)).await {
                Ok(_) => {
                    tracing::info!(eni = %eni.id, "deleted a leaked ENI");
                    deleted += 1;
                }
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => tracing::warn!(eni = %eni.id, error = %e, "could not delete a leaked ENI"),
            }
        }
        Ok(deleted)
    }
}

impl VpcProvider for Ec2 {
    fn name(&self) -> &'static str {
        "aws"
    }

    fn nic(&self) -> &str {
        self.instance.get().map_or("(instance not yet known)", String::as_str)
    }

    async fn allocate(&self, ip: Option<IpAddr>) -> Result<IpAddr, ProviderError> {
        match ip {
            Some(ip) => self.add_address(v4(ip)?, false).await.map(IpAddr::V4),
            None => Ok(IpAddr::V4(self.add_addresses(None, 1, false).await?[0])),
        }
    }

    /// One `AssignPrivateIpAddresses` with `SecondaryPrivateIpAddressCount`, as AWS's ipamd
    /// assigns what it is short of (`tryAssignIPs`): up to `count`, as many as the ENI has room for.
    async fn allocate_batch(&self, count: usize) -> Result<Vec<IpAddr>, ProviderError> {
        Ok(self.add_addresses(None, count, false).await?.into_iter().map(IpAddr::V4).collect())
    }

    async fn delete(&self, ip: IpAddr) -> Result<(), ProviderError> {
        self.delete_batch(&[ip]).await.map(drop)
    }

    /// One `UnassignPrivateIpAddresses` for every one of `ips` on the first one's ENI, as AWS's
    /// ipamd gives back what it is over (`DeallocIPAddresses`).
    async fn delete_batch(&self, ips: &[IpAddr]) -> Result<Vec<IpAddr>, ProviderError> {
        let first = v4(ips[0])?;
        let mut guard = self.node().await?;
        let node = guard.as_mut().expect("discovered");
        if node.holding(first).is_none() {
            let described = self.described_enis(&node.instance_id).await?;
            node.set_enis(described);
        }
        let Some(at) = node.holding(first) else {
            return Err(ProviderError::AddressGone(format!("{first} is on none of {}'s ENIs", node.instance_id)));
        };
        let batch: Vec<Ipv4Addr> =
            ips.iter().filter_map(|ip| v4(*ip).ok()).filter(|ip| node.holding(*ip) == Some(at)).collect();
        let eni_id = node.enis[at].id.clone();
        let mut params = Params::default().set("NetworkInterfaceId", &eni_id);
        for (i, ip) in batch.iter().enumerate() {
            params = params.set(&format!("PrivateIpAddress.{}", i + 1), ip.to_string());
        }
        match self.call("UnassignPrivateIpAddresses", params).await {
            Ok(_) => {}
            // "Some of the specified addresses are not assigned to interface ...": EC2 unassigned
            // none of them. Those EC2 no longer has are done; the others are tried again.
            Err(ProviderError::Other { message, .. }) if message.contains("not assigned") => {
                let described = self.described_enis(&node.instance_id).await?;
                node.set_enis(described);
                let on_eni = |ip: &Ipv4Addr| node.holding(*ip).is_some_and(|k| node.enis[k].id == eni_id);
                let gone: Vec<IpAddr> = batch.iter().filter(|ip| !on_eni(ip)).map(|ip| IpAddr::V4(*ip)).collect();
                return match gone.len() {
                    0 => Err(ProviderError::Other { code: 0, message }),
                    // One address asked for and gone: as `delete` says it.
                    _ if batch.len() == 1 => Err(ProviderError::AddressGone(message)),
                    _ => Ok(gone),
                };
            }
            Err(e) => return Err(e),
        }
        node.enis[at].secondary.retain(|a| !batch.contains(a));
        Ok(batch.into_iter().map(IpAddr::V4).collect())
    }

    async fn describe(&self) -> Result<Vec<IpAddr>, ProviderError> {
        let mut guard = self.node().await?;
        let node = guard.as_mut().expect("discovered");
        let described = self.described_enis(&node.instance_id).await?;
        node.set_enis(described);
        Ok(node.enis.iter().flat_map(|e| e.secondary.iter().map(|ip| IpAddr::V4(*ip))).collect())
    }

    async fn locate(&self, ip: IpAddr) -> Result<Option<SecondaryIp>, ProviderError> {
        let wanted = v4(ip)?;
        // By subnet, not `addresses.private-ip-address`: moto matches that filter on primary addresses only.
        let params = Params::default().filter("subnet-id", &[&self.config.subnet_id]);
        let reply = self.call("DescribeNetworkInterfaces", params).await?;
        let described = xml::network_interfaces(&reply).map_err(unreadable("DescribeNetworkInterfaces"))?;
        Ok(described.into_iter().find(|e| e.secondary.contains(&wanted)).map(|e| SecondaryIp { ip, nic: e.id }))
    }

    /// EC2 moves an address by assigning it with `AllowReassignment`.
    async fn move_here(&self, ip: IpAddr, _from: &str) -> Result<(), ProviderError> {
        self.add_address(v4(ip)?, true).await.map(drop)
    }

    async fn subnet_free(&self) -> Result<u64, ProviderError> {
        self.subnet_field("availableIpAddressCount").await
    }

    fn call_name(&self, call: PoolCall) -> &'static str {
        match call {
            PoolCall::Allocate | PoolCall::Move => "AssignPrivateIpAddresses",
            PoolCall::Delete => "UnassignPrivateIpAddresses",
            // Leaked ENIs are found by describing the tagged ones (then each deleted).
            PoolCall::Describe | PoolCall::Locate | PoolCall::CollectLeakedNics => "DescribeNetworkInterfaces",
            PoolCall::SubnetFree => "DescribeSubnets",
        }
    }

    fn pool_delta(&self, counts: PoolCounts) -> Option<PoolDelta> {
        let limits = *self.limits.lock().unwrap_or_else(|e| e.into_inner());
        limits.map(|(per_eni, capacity)| self.config.targets().delta(counts, per_eni, capacity))
    }

    fn collects_leaked_nics(&self) -> bool {
        true
    }

    async fn collect_leaked_nics(&self) -> Result<usize, ProviderError> {
        self.delete_leaked_enis().await
    }

    /// An address of an ENI no interface of this node has (with `require_eni_interface`).
    async fn undeliverable(&self, ip: IpAddr) -> Option<String> {
        let IpAddr::V4(ip) = ip else { return None };
        let guard = self.node.lock().await;
        let node = guard.as_ref()?;
        node.holding(ip).and_then(|at| self.absent(&node.enis[at]))
    }

    /// The MAC of the ENI holding `ip` (`[ipam.aws] fabric_probe` only). An address of an ENI
    /// no interface of the node has is not served ([`VpcProvider::undeliverable`]); its probe
    /// fails at once, and the pool does not use it either.
    async fn fabric_probe_mac(&self, ip: IpAddr) -> Option<String> {
        if !self.config.fabric_probe {
            return None;
        }
        let IpAddr::V4(ip) = ip else { return None };
        let guard = self.node.lock().await;
        let node = guard.as_ref()?;
        node.holding(ip).map(|at| node.enis[at].mac.clone()).filter(|m| !m.is_empty())
    }
}
