//! Pods on an ENI past the first (AWS, host-routed): policy routing on the node, as AWS's VPC
//! CNI sets it up. When EC2 attaches an ENI, a NIC with its MAC appears in the instance; this
//! brings it up, gives it the ENI's primary address (without the main table's subnet route) and a
//! routing table of its own, [`table_of`] its device index: the subnet gateway on-link, the
//! subnet on-link and the default route via the gateway, all through that NIC. Then, per local
//! pod, two rules:
//!
//! - `to POD lookup main` at [`TO_POD_PRIORITY`] for every pod, so traffic to a pod on this node
//!   (from the node or another pod) never follows a pod's from-rule out of an ENI;
//! - `from POD lookup TABLE` at [`FROM_POD_PRIORITY`] for a pod on an ENI past the first, so
//!   its packets leave through its own ENI: EC2 (and the lab's SDN) drops a source address sent
//!   from an ENI that does not hold it.
//!
//! Rules at these two priorities are this module's: [`EniRouting::reconcile`] (every upkeep
//! round) removes those of addresses that are no pod here any more, adds those missing, and sets
//! up NICs hot-plugged since. Nothing else on the node may manage rules at these priorities
//! (AWS's own `aws-node` does: never run both).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::TryStreamExt;
use ipnet::Ipv4Net;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags};
use rtnetlink::packet_route::route::RouteScope;
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, IpVersion, LinkUnspec, RouteMessageBuilder};

use super::driver::gratuitous_arp;
use super::hostnet::HostNetError;
use crate::ipam::provider::aws::{Ec2, EniNic};
use crate::ipam::provider::ProviderError;
use crate::port::packet::PacketSocket;
use crate::port::PortQueue;
use crate::wire::MacAddr;

/// `to POD lookup main`: AWS's VPC CNI's priority for it.
pub const TO_POD_PRIORITY: u32 = 512;
/// `from POD lookup TABLE`: AWS's VPC CNI's priority for it.
pub const FROM_POD_PRIORITY: u32 = 1536;
const MAIN_TABLE: u32 = 254;

/// The routing table of the ENI at `device_index` (AWS's VPC CNI's numbering).
pub fn table_of(device_index: u32) -> u32 {
    device_index + 1
}

/// Where the AWS provider is, for the node's routing (the driver's IPAM when it runs EC2).
pub trait EniSource: Send + Sync + std::fmt::Debug {
    fn ec2(&self) -> Option<&Ec2>;
}

#[derive(Debug, thiserror::Error)]
pub enum EniError {
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
    #[error(transparent)]
    HostNet(#[from] HostNetError),
    #[error("EC2: {0}")]
    Provider(#[from] ProviderError),
    #[error("setting {path}: {source}")]
    Sysctl { path: String, source: std::io::Error },
}

/// One of our rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PodRule {
    /// `to POD lookup main`.
    To(Ipv4Addr),
    /// `from POD lookup TABLE`.
    From(Ipv4Addr, u32),
}

impl PodRule {
    /// The kernel's message for it (to add or delete it).
    pub fn message(&self) -> RuleMessage {
        let mut m = RuleMessage::default();
        m.header.family = AddressFamily::Inet;
        m.header.action = RuleAction::ToTable;
        let (priority, table) = match *self {
            PodRule::To(ip) => {
                m.header.dst_len = 32;
                m.attributes.push(RuleAttribute::Destination(ip.into()));
                (TO_POD_PRIORITY, MAIN_TABLE)
            }
            PodRule::From(ip, table) => {
                m.header.src_len = 32;
                m.attributes.push(RuleAttribute::Source(ip.into()));
                (FROM_POD_PRIORITY, table)
            }
        };
        m.header.table = u8::try_from(table).unwrap_or(0);
        m.attributes.push(RuleAttribute::Priority(priority));
        m.attributes.push(RuleAttribute::Table(table));
        m
    }

    /// The rule `m` is, if it is one of ours (by priority and shape).
    pub fn of(m: &RuleMessage) -> Option<PodRule> {
        let mut priority = 0;
        let mut table = u32::from(m.header.table);
        let (mut source, mut destination) = (None, None);
        for a in &m.attributes {
            match a {
                RuleAttribute::Priority(p) => priority = *p,
                RuleAttribute::Table(t) => table = *t,
                RuleAttribute::Source(IpAddr::V4(ip)) if m.header.src_len == 32 => source = Some(*ip),
                RuleAttribute::Destination(IpAddr::V4(ip)) if m.header.dst_len == 32 => destination = Some(*ip),
                _ => {}
            }
        }
        match (priority, source, destination) {
            (TO_POD_PRIORITY, None, Some(ip)) if table == MAIN_TABLE => Some(PodRule::To(ip)),
            (FROM_POD_PRIORITY, Some(ip), None) => Some(PodRule::From(ip, table)),
            _ => None,
        }
    }
}

/// The rules local pods need: a to-rule each, a from-rule for those whose ENI's table is given.
pub fn wanted_rules(pods: &BTreeMap<Ipv4Addr, Option<u32>>) -> BTreeSet<PodRule> {
    pods.iter()
        .flat_map(|(ip, table)| [Some(PodRule::To(*ip)), table.map(|t| PodRule::From(*ip, t))])
        .flatten()
        .collect()
}

/// A link of the node, as an ENI's NIC is looked for among them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Nic {
    index: u32,
    name: String,
    up: bool,
    mac: Option<MacAddr>,
    mtu: Option<u32>,
}

/// The node's link whose MAC is `mac` (EC2 gives MACs as text: parsed once, compared as bytes).
fn nic_with_mac<'a>(links: &'a [Nic], mac: &str) -> Option<&'a Nic> {
    let mac = mac.parse::<MacAddr>().ok()?;
    links.iter().find(|l| l.mac == Some(mac))
}

/// An ENI's NIC, set up: its index, and whether this call set it up.
#[derive(Debug, Clone, Copy)]
struct Ready {
    index: u32,
    fresh: bool,
}

/// The node's policy routing for ENIs past the first.
#[derive(Debug)]
pub struct EniRouting {
    handle: Handle,
    source: Arc<dyn EniSource>,
    /// The local pods' IPv4 addresses, as attached and detached: their rules are kept.
    pods: Mutex<BTreeSet<Ipv4Addr>>,
    /// Those of them on a later ENI: announced from that ENI's NIC only, never from
    /// `announce_on` (the first ENI's NIC, which does not hold them: EC2 would take the
    /// announcement as a claim for the wrong ENI, the lab's SDN drops it as spoofed).
    on_later_enis: Mutex<BTreeSet<Ipv4Addr>>,
    /// ENIs whose NIC is set up, and its index. Held by each of attach, detach and reconcile
    /// for its whole run: the kernel allows one dump at a time per netlink socket (another gets
    /// EBUSY), and a reconcile between an attach's recording of its pod and its rule's add would
    /// take the new rule for stale.
    ready: tokio::sync::Mutex<BTreeMap<String, u32>>,
}

impl EniRouting {
    /// The routing for `source`'s EC2 provider, over `handle`; `None` without one.
    pub fn new(handle: Handle, source: Arc<dyn EniSource>) -> Option<EniRouting> {
        source.ec2()?;
        Some(EniRouting {
            handle,
            source,
            pods: Mutex::default(),
            on_later_enis: Mutex::default(),
            ready: tokio::sync::Mutex::default(),
        })
    }

    fn ec2(&self) -> &Ec2 {
        self.source.ec2().expect("checked in new")
    }

    fn pods(&self) -> std::sync::MutexGuard<'_, BTreeSet<Ipv4Addr>> {
        self.pods.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn on_later_enis(&self) -> std::sync::MutexGuard<'_, BTreeSet<Ipv4Addr>> {
        self.on_later_enis.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `ip` is a local pod's on a later ENI, which [`EniRouting::pod_attached`]
    /// announces from that ENI's NIC: the driver must not announce it from `announce_on`.
    pub fn announces_itself(&self, ip: IpAddr) -> bool {
        matches!(ip, IpAddr::V4(ip) if self.on_later_enis().contains(&ip))
    }

    /// A pod with `ip` is attached here: its rules, its ENI's NIC set up if it is a later ENI
    /// (and present), and a gratuitous ARP from that NIC.
    pub async fn pod_attached(&self, ip: IpAddr) -> Result<(), EniError> {
        let IpAddr::V4(ip) = ip else { return Ok(()) };
        let mut ready = self.ready.lock().await;
        self.pods().insert(ip);
        // Recorded afresh: the address may be on another ENI than when a failed ADD had it.
        self.on_later_enis().remove(&ip);
        self.add_rule(PodRule::To(ip)).await?;
        let Some(eni) = self.ec2().eni_holding(ip).await.filter(|e| e.device_index > 0) else { return Ok(()) };
        // Even while its NIC is absent: eth0's announcement would claim it for the wrong ENI.
        self.on_later_enis().insert(ip);
        let links = self.links().await?;
        let Some(nic) = self.set_up(&mut ready, &eni, &links).await? else { return Ok(()) };
        self.add_rule(PodRule::From(ip, table_of(eni.device_index))).await?;
        announce(nic.index, &eni.mac, ip);
        Ok(())
    }

    /// The pod with `ip` is gone: its rules go.
    pub async fn pod_detached(&self, ip: IpAddr) -> Result<(), EniError> {
        let IpAddr::V4(ip) = ip else { return Ok(()) };
        let _one_at_a_time = self.ready.lock().await;
        self.pods().remove(&ip);
        self.on_later_enis().remove(&ip);
        let ours: Vec<RuleMessage> = self
            .kernel_rules()
            .await?
            .into_iter()
            .filter(|(r, _)| matches!(r, PodRule::To(a) | PodRule::From(a, _) if *a == ip))
            .map(|(_, m)| m)
            .collect();
        for m in ours {
            self.delete_rule(m).await?;
        }
        Ok(())
    }

    /// Sets up the NICs of later ENIs that appeared, then makes our rules those the local pods
    /// need: stale ones (a previous vswitchd's, a pod gone while it was down) removed. Pods on
    /// an ENI whose NIC appeared only now (after their ADD) are announced from it, once their
    /// rules are in.
    pub async fn reconcile(&self) -> Result<(), EniError> {
        let mut ready = self.ready.lock().await;
        let links = self.links().await?;
        let mut fresh = BTreeMap::new();
        for eni in self.ec2().eni_nics().await?.iter().filter(|e| e.device_index > 0) {
            if let Some(nic) = self.set_up(&mut ready, eni, &links).await?.filter(|n| n.fresh) {
                fresh.insert(eni.id.clone(), nic.index);
            }
        }
        let pods: Vec<Ipv4Addr> = self.pods().iter().copied().collect();
        let mut tables = BTreeMap::new();
        let mut to_announce = Vec::new();
        for ip in pods {
            let eni = self.ec2().eni_holding(ip).await.filter(|e| e.device_index > 0 && ready.contains_key(&e.id));
            if let Some((eni, index)) = eni.as_ref().and_then(|e| Some((e, *fresh.get(&e.id)?))) {
                to_announce.push((index, eni.mac.clone(), ip));
            }
            tables.insert(ip, eni.map(|e| table_of(e.device_index)));
        }
        let wanted = wanted_rules(&tables);
        let present = self.kernel_rules().await?;
        for (rule, m) in &present {
            if !wanted.contains(rule) {
                tracing::info!(?rule, "removing a stale pod rule");
                self.delete_rule(m.clone()).await?;
            }
        }
        let have: BTreeSet<PodRule> = present.into_iter().map(|(r, _)| r).collect();
        for rule in wanted.difference(&have) {
            self.add_rule(*rule).await?;
        }
        for (index, mac, ip) in to_announce {
            tracing::info!(%ip, "announcing a pod from its ENI's NIC, which appeared after its ADD");
            announce(index, &mac, ip);
        }
        Ok(())
    }

    /// Our rules in the kernel.
    async fn kernel_rules(&self) -> Result<Vec<(PodRule, RuleMessage)>, EniError> {
        let all: Vec<RuleMessage> = self.handle.rule().get(IpVersion::V4).execute().try_collect().await?;
        Ok(all.into_iter().filter_map(|m| Some((PodRule::of(&m)?, m))).collect())
    }

    async fn add_rule(&self, rule: PodRule) -> Result<(), EniError> {
        let mut request = self.handle.rule().add();
        *request.message_mut() = rule.message();
        match request.execute().await {
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
            other => Ok(other?),
        }
    }

    async fn delete_rule(&self, m: RuleMessage) -> Result<(), EniError> {
        match self.handle.rule().del(m).execute().await {
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENOENT => Ok(()),
            other => Ok(other?),
        }
    }

    /// Sets `eni`'s NIC (found among `links`) up once (again if it was replaced), recording it
    /// in `ready`; `None` while the node has no NIC with its MAC.
    async fn set_up(
        &self,
        ready: &mut BTreeMap<String, u32>,
        eni: &EniNic,
        links: &[Nic],
    ) -> Result<Option<Ready>, EniError> {
        let Some(nic) = nic_with_mac(links, &eni.mac) else {
            ready.remove(&eni.id);
            return Ok(None);
        };
        if nic.up && ready.get(&eni.id) == Some(&nic.index) {
            return Ok(Some(Ready { index: nic.index, fresh: false }));
        }
        let subnet = self.ec2().subnet().await?;
        let mtu = self.first_eni_mtu(links).await?;
        self.configure(nic, eni, subnet, mtu).await?;
        tracing::info!(eni = %eni.id, nic = %nic.name, table = table_of(eni.device_index), %subnet, ?mtu, "ENI's NIC set up");
        ready.insert(eni.id.clone(), nic.index);
        Ok(Some(Ready { index: nic.index, fresh: true }))
    }

    /// The MTU of the first ENI's NIC: what the VPC carries (EC2's DHCP gives it, 9001 on
    /// most instance types), while a hot-plugged NIC comes up with its driver's default.
    async fn first_eni_mtu(&self, links: &[Nic]) -> Result<Option<u32>, EniError> {
        let enis = self.ec2().eni_nics().await?;
        let first = enis.iter().find(|e| e.device_index == 0);
        Ok(first.and_then(|e| nic_with_mac(links, &e.mac)).and_then(|nic| nic.mtu))
    }

    /// proxy ARP (the VPC asks this NIC for its pods), the first ENI's MTU, up, the ENI's primary
    /// address, the table.
    async fn configure(&self, nic: &Nic, eni: &EniNic, subnet: Ipv4Net, mtu: Option<u32>) -> Result<(), EniError> {
        for (path, value) in [
            (format!("/proc/sys/net/ipv4/conf/{}/proxy_arp", nic.name), "1"),
            (format!("/proc/sys/net/ipv4/neigh/{}/proxy_delay", nic.name), "0"),
        ] {
            std::fs::write(&path, value).map_err(|source| EniError::Sysctl { path, source })?;
        }
        let mut link = LinkUnspec::new_with_index(nic.index).up();
        if let Some(mtu) = mtu {
            link = link.mtu(mtu);
        }
        self.handle.link().set(link.build()).execute().await?;
        // Without the main table's subnet route: the subnet stays eth0's there.
        let mut address = self.handle.address().add(nic.index, eni.primary.into(), subnet.prefix_len()).replace();
        address.message_mut().attributes.push(AddressAttribute::Flags(AddressFlags::Noprefixroute));
        address.execute().await?;
        let table = table_of(eni.device_index);
        let gateway = Ipv4Addr::from(u32::from(subnet.network()) + 1);
        let on_link = |net: Ipv4Addr, len| {
            RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(net, len)
                .output_interface(nic.index)
                .scope(RouteScope::Link)
                .table_id(table)
                .build()
        };
        let default =
            RouteMessageBuilder::<Ipv4Addr>::new().gateway(gateway).output_interface(nic.index).table_id(table).build();
        for route in [on_link(gateway, 32), on_link(subnet.network(), subnet.prefix_len()), default] {
            self.handle.route().add(route).replace().execute().await?;
        }
        Ok(())
    }

    /// The node's links (one dump: a reconcile round looks every ENI up in it).
    async fn links(&self) -> Result<Vec<Nic>, EniError> {
        let links: Vec<_> = self.handle.link().get().execute().try_collect().await?;
        Ok(links
            .into_iter()
            .filter_map(|link| {
                let (mut name, mut mac, mut mtu) = (None, None, None);
                for a in &link.attributes {
                    match a {
                        LinkAttribute::IfName(n) => name = Some(n.clone()),
                        LinkAttribute::Address(b) => mac = <[u8; 6]>::try_from(&b[..]).ok().map(MacAddr),
                        LinkAttribute::Mtu(m) => mtu = Some(*m),
                        _ => {}
                    }
                }
                let up = link.header.flags.contains(LinkFlags::Up);
                Some(Nic { index: link.header.index, name: name?, up, mac, mtu })
            })
            .collect())
    }
}

/// How many gratuitous ARPs announce a pod from its ENI's NIC, and how far apart: a NIC set up
/// a moment ago may drop the first (its carrier not up yet), as `arping -U -c 3` allows for.
const ANNOUNCEMENTS: u32 = 3;
const ANNOUNCE_EVERY: Duration = Duration::from_millis(300);

/// Gratuitous ARPs for `ip` from the NIC at `index` (in the background), so hosts that knew the
/// address elsewhere learn it is behind this NIC now (the driver skips these: see
/// [`EniRouting::announces_itself`]).
fn announce(index: u32, mac: &str, ip: Ipv4Addr) {
    let Ok(mac) = mac.parse::<MacAddr>() else { return };
    let frame = gratuitous_arp(mac, ip);
    let warn = move |e: std::io::Error| tracing::warn!(%ip, error = %e, "could not announce the pod from its ENI");
    let socket = match PacketSocket::open_sender(index) {
        Ok(socket) => socket,
        Err(e) => return warn(e),
    };
    tokio::spawn(async move {
        for n in 0..ANNOUNCEMENTS {
            if n > 0 {
                tokio::time::sleep(ANNOUNCE_EVERY).await;
            }
            if let Err(e) = socket.send(&frame) {
                return warn(e);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pod_gets_a_to_rule_and_a_later_enis_pod_a_from_rule_too() {
        let (a, b) = (Ipv4Addr::new(10, 10, 64, 1), Ipv4Addr::new(10, 10, 64, 2));
        let wanted = wanted_rules(&[(a, None), (b, Some(2))].into());
        assert_eq!(wanted, [PodRule::To(a), PodRule::To(b), PodRule::From(b, 2)].into());
        assert_eq!(table_of(1), 2, "AWS's numbering: device index + 1");
    }

    #[test]
    fn our_rules_are_recognised_by_priority_and_shape() {
        let ip = Ipv4Addr::new(10, 10, 64, 9);
        for rule in [PodRule::To(ip), PodRule::From(ip, 2), PodRule::From(ip, 300)] {
            assert_eq!(PodRule::of(&rule.message()), Some(rule), "{rule:?}");
        }
        // Someone else's: another priority, or a /24.
        let mut other = PodRule::From(ip, 2).message();
        other.attributes.retain(|a| !matches!(a, RuleAttribute::Priority(_)));
        other.attributes.push(RuleAttribute::Priority(1000));
        assert_eq!(PodRule::of(&other), None);
        let mut prefix = PodRule::To(ip).message();
        prefix.header.dst_len = 24;
        assert_eq!(PodRule::of(&prefix), None);
        // `to POD` at our priority but into another table than main: not ours either.
        let mut elsewhere = PodRule::To(ip).message();
        elsewhere.attributes.retain(|a| !matches!(a, RuleAttribute::Table(_)));
        elsewhere.header.table = 7;
        assert_eq!(PodRule::of(&elsewhere), None);
    }
}
