//! Netlink link helpers shared by vswitchd and vpc-cni (the CNI plugins' `pkg/ip` in small).

use std::path::Path;

use futures::{StreamExt, TryStreamExt};
use rtnetlink::packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST};
use rtnetlink::packet_route::tc::{TcAttribute, TcHandle, TcMessage};
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::Handle;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("netlink: {0}")]
    Netlink(#[from] rtnetlink::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Runs netlink work inside the network namespace at `netns`, on a thread that entered it (so the
/// netlink socket belongs to that namespace) with its own small runtime.
pub fn in_netns<T, E, F, Fut>(netns: &Path, work: F) -> Result<T, E>
where
    T: Send,
    E: From<std::io::Error> + From<rtnetlink::Error> + Send,
    F: FnOnce(Handle) -> Fut + Send,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut result = None;
    crate::netns::run_in(Some(netns), || {
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
pub fn delete_link_in(netns: &Path, name: &str) -> Result<(), LinkError> {
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

/// Does link `name` exist in `netns`? A missing namespace means no.
pub fn exists_in(netns: &Path, name: &str) -> Result<bool, LinkError> {
    if !netns.exists() {
        return Ok(false);
    }
    in_netns(netns, move |handle: Handle| async move { Ok(link_index(&handle, name).await?.is_some()) })
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
