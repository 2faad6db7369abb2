//! Where a pod's address comes from: this node's own ranges, kept in files by the plugin
//! (`"ipam": {"type": "local"}`, the default), or the cluster-wide pool vswitchd allocates from
//! (`"ipam": {"type": "vswitchd"}`, on etcd). The verbs ask this, never a store directly.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use vswitch_api::api::{AssignSpec, ErrorCode, PodRef};

use crate::client::{ClientError, Vswitch};
use crate::ipam::Ipam;
use crate::spec::{Attachment, CniError, Code};

#[derive(Debug)]
pub enum Addresses {
    Local(Ipam),
    Cluster(Vswitch),
}

/// vswitchd's IPAM answers, by error code: the pool is empty (100), the address is someone
/// else's (103), the request is wrong (7), or try again later (11: the store is unreachable and
/// the warm pool empty, a sticky pod's address is still held elsewhere, vswitchd is down).
fn cluster_error(e: ClientError) -> CniError {
    match e.code() {
        Some(ErrorCode::Exhausted) => CniError::with_details(Code::PoolExhausted, "no free address", e),
        Some(ErrorCode::Conflict) => {
            CniError::with_details(Code::AddressTaken, "the requested address is not available", e)
        }
        Some(ErrorCode::Invalid) => {
            CniError::with_details(Code::InvalidConfig, "vswitchd refused the address request", e)
        }
        _ => e.into(),
    }
}

fn ipv4(ip: IpAddr) -> Result<Ipv4Addr, CniError> {
    match ip {
        IpAddr::V4(v4) => Ok(v4),
        IpAddr::V6(v6) => Err(CniError::new(
            Code::InvalidConfig,
            format!("vswitchd handed out {v6}: IPv6 pods are not supported yet"),
        )),
    }
}

impl Addresses {
    /// The address for `owner` (the one it has, the requested one, or a new one), and whether
    /// this call assigned it (false: undoing a failed ADD must not release it).
    pub fn assign(
        &self,
        owner: &Attachment,
        requested: Option<Ipv4Addr>,
        netns: &Path,
        pod: Option<PodRef>,
    ) -> Result<(Ipv4Addr, bool), CniError> {
        match self {
            Addresses::Local(ipam) => Ok(ipam.allocate_for(owner, requested, Some(netns))?),
            Addresses::Cluster(vswitch) => {
                let spec = AssignSpec {
                    owner: owner.clone(),
                    netns: netns.into(),
                    pod,
                    ips: requested.map(IpAddr::V4).into_iter().collect(),
                    families: None,
                };
                let view = vswitch.ipam_assign(spec).map_err(cluster_error)?;
                Ok((ipv4(view.ips[0])?, view.new))
            }
        }
    }

    /// Gives `owner`'s address back (releasing twice is fine).
    pub fn release(&self, owner: &Attachment) -> Result<Option<Ipv4Addr>, CniError> {
        match self {
            Addresses::Local(ipam) => Ok(ipam.release(owner)?),
            Addresses::Cluster(vswitch) => {
                let released = vswitch.ipam_release(owner).map_err(cluster_error)?;
                Ok(released.released.into_iter().find_map(|ip| ipv4(ip).ok()))
            }
        }
    }

    pub fn lookup(&self, owner: &Attachment) -> Result<Option<Ipv4Addr>, CniError> {
        match self {
            Addresses::Local(ipam) => Ok(ipam.lookup(owner)?),
            Addresses::Cluster(vswitch) => match vswitch.ipam_lookup(owner) {
                Ok(view) => Ok(Some(ipv4(view.ips[0])?)),
                Err(e) if e.code() == Some(ErrorCode::NotFound) => Ok(None),
                Err(e) => Err(cluster_error(e)),
            },
        }
    }

    /// Could an ADD get an address now?
    pub fn can_assign(&self) -> Result<bool, CniError> {
        match self {
            Addresses::Local(ipam) => Ok(ipam.free()? > 0),
            Addresses::Cluster(vswitch) => {
                let view = vswitch.ipam().map_err(cluster_error)?;
                Ok(view.this_node.warm > 0 || (view.store_reachable && view.free > 0))
            }
        }
    }
}
