//! The node-side plumbing of the host port, over rtnetlink: bring the TAP up, and keep one
//! `POD/32 dev vsw0` route per local pod so the node's stack (and kube-proxy's DNAT) can reach it.

use std::net::Ipv4Addr;

use futures::{StreamExt, TryStreamExt};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST};
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::tc::{TcAttribute, TcHandle, TcMessage};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

use crate::wire::MacAddr;

#[derive(Debug, thiserror::Error)]
pub enum HostNetError {
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
    #[error("netlink connection: {0}")]
    Connect(#[from] std::io::Error),
    #[error("no link named {0}")]
    NoSuchLink(String),
}

/// Runs netlink work inside the network namespace at `netns`, on a thread that entered it (so the
/// netlink socket belongs to that namespace) with its own small runtime.
pub fn in_netns<T, E, F, Fut>(netns: &std::path::Path, work: F) -> Result<T, E>
where
    T: Send,
    E: From<std::io::Error> + From<rtnetlink::Error> + Send,
    F: FnOnce(Handle) -> Fut + Send,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut result = None;
    crate::port::netns::run_in(Some(netns), || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        result = Some(runtime.block_on(async {
            let (connection, handle, _) = rtnetlink::new_connection()?;
            tokio::spawn(connection);
            work(handle).await
        }));
        Ok(())
    })?;
    result.expect("ran")
}

/// The index of link `name`, if it exists.
pub async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>, rtnetlink::Error> {
    match handle.link().get().match_name(name.to_string()).execute().try_next().await {
        Ok(link) => Ok(link.map(|l| l.header.index)),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(e) => Err(e),
    }
}

/// Deletes link `name` in `netns`; a namespace or link already gone is success.
///
/// Unregistering a device waits for RCU grace periods (tens of milliseconds on a busy node),
/// which is why vswitchd does it after replying to `del_port`.
pub fn delete_link_in(netns: &std::path::Path, name: &str) -> Result<(), HostNetError> {
    if !netns.exists() {
        return Ok(());
    }
    in_netns(netns, move |handle: Handle| async move {
        if let Some(index) = link_index(&handle, name).await? {
            match handle.link().del(index).execute().await {
                Ok(()) => {}
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    })
}

/// `tc qdisc replace dev INDEX root noqueue`, before the TAP goes up.
///
/// A multi-queue TAP has 256 TX queues; bringing it up with the default qdisc builds 256 child
/// qdiscs with 1000-slot rings each (megabytes per device), which here made a link-up cost
/// 20+ ms once a hundred pods existed. The TAP's own ring is the queue that matters, as for veth.
pub async fn set_noqueue(handle: &Handle, index: u32) -> Result<(), rtnetlink::Error> {
    let mut message = TcMessage::with_index(index as i32);
    message.header.parent = TcHandle::ROOT;
    message.attributes.push(TcAttribute::Kind("noqueue".to_string()));
    let mut request = NetlinkMessage::from(RouteNetlinkMessage::NewQueueDiscipline(message));
    request.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
    let mut responses = handle.clone().request(request)?;
    while let Some(response) = responses.next().await {
        if let NetlinkPayload::Error(e) = response.payload {
            if e.code.is_some() {
                return Err(rtnetlink::Error::NetlinkError(e));
            }
        }
    }
    Ok(())
}

#[derive(Debug, Clone)]
pub struct HostNet {
    handle: Handle,
}

impl HostNet {
    /// Opens a netlink connection in this (the node's) namespace; needs a tokio runtime.
    pub fn connect() -> Result<HostNet, HostNetError> {
        let (connection, handle, _) = rtnetlink::new_connection()?;
        tokio::spawn(connection);
        Ok(HostNet { handle })
    }

    /// Sets `name` up with `mtu`; returns its index and MAC.
    pub async fn bring_up(&self, name: &str, mtu: u16) -> Result<(u32, MacAddr), HostNetError> {
        let link = self
            .handle
            .link()
            .get()
            .match_name(name.to_string())
            .execute()
            .try_next()
            .await?
            .ok_or_else(|| HostNetError::NoSuchLink(name.into()))?;
        let index = link.header.index;
        let mac = link
            .attributes
            .iter()
            .find_map(|a| match a {
                LinkAttribute::Address(bytes) if bytes.len() == 6 => Some(MacAddr(bytes[..6].try_into().expect("6"))),
                _ => None,
            })
            .unwrap_or(MacAddr::ZERO);
        set_noqueue(&self.handle, index).await?;
        self.handle.link().set(LinkUnspec::new_with_index(index).mtu(mtu as u32).up().build()).execute().await?;
        Ok((index, mac))
    }

    fn host_route(ip: Ipv4Addr, ifindex: u32) -> rtnetlink::packet_route::route::RouteMessage {
        RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(ip, 32).output_interface(ifindex).build()
    }

    /// `ip route replace IP/32 dev IFINDEX`.
    pub async fn route_to_pod(&self, ip: Ipv4Addr, ifindex: u32) -> Result<(), HostNetError> {
        self.handle.route().add(Self::host_route(ip, ifindex)).replace().execute().await?;
        Ok(())
    }

    /// Removes that route; a route already gone is fine.
    pub async fn remove_route_to_pod(&self, ip: Ipv4Addr, ifindex: u32) -> Result<(), HostNetError> {
        match self.handle.route().del(Self::host_route(ip, ifindex)).execute().await {
            Ok(()) => Ok(()),
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}
