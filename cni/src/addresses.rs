//! Where a pod's addresses come from: this node's own ranges, kept in files by the plugin
//! (`"ipam": {"type": "local"}`, the default), or the cluster-wide pool vswitchd allocates from
//! (`"ipam": {"type": "vswitchd"}`, on etcd). The verbs ask this, never a store directly.

use std::net::IpAddr;
use std::path::Path;

use vswitch_api::api::{AssignSpec, ErrorCode, IpFamilies, PodRef};

use crate::client::{ClientError, Vswitch};
use crate::ipam::Ipam;
use crate::spec::{Attachment, CniError, Code, PodIps};

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

/// vswitchd's addresses as a pod's: one per family.
fn pod_ips(ips: Vec<IpAddr>) -> Result<PodIps, CniError> {
    PodIps::from_ips(ips).map_err(|e| CniError::with_details(Code::SwitchRefused, "vswitchd's addresses", e))
}

impl Addresses {
    /// The addresses for `owner` (the ones it has, the requested ones, or new ones; one per
    /// family of the network), and whether this call assigned them (false: undoing a failed ADD
    /// must not release them).
    pub fn assign(
        &self,
        owner: &Attachment,
        requested: PodIps,
        families: Option<IpFamilies>,
        netns: &Path,
        pod: Option<PodRef>,
    ) -> Result<(PodIps, bool), CniError> {
        let (ips, new) = match self {
            Addresses::Local(ipam) => ipam.allocate_for(owner, requested, Some(netns))?,
            Addresses::Cluster(vswitch) => {
                let ips = requested.iter().collect();
                let spec = AssignSpec { owner: owner.clone(), netns: netns.into(), pod, ips, families, sticky: None };
                let view = vswitch.ipam_assign(spec).map_err(cluster_error)?;
                (pod_ips(view.ips)?, view.new)
            }
        };
        if ips.is_empty() {
            return Err(CniError::new(Code::InvalidConfig, "the network has no address family to assign from"));
        }
        Ok((ips, new))
    }

    /// Gives `owner`'s addresses back (releasing twice is fine).
    pub fn release(&self, owner: &Attachment) -> Result<PodIps, CniError> {
        match self {
            Addresses::Local(ipam) => Ok(ipam.release(owner)?),
            Addresses::Cluster(vswitch) => pod_ips(vswitch.ipam_release(owner).map_err(cluster_error)?.released),
        }
    }

    /// `owner`'s addresses (none: it has no allocation).
    pub fn lookup(&self, owner: &Attachment) -> Result<PodIps, CniError> {
        match self {
            Addresses::Local(ipam) => Ok(ipam.lookup(owner)?),
            Addresses::Cluster(vswitch) => match vswitch.ipam_lookup(owner) {
                Ok(view) => pod_ips(view.ips),
                Err(e) if e.code() == Some(ErrorCode::NotFound) => Ok(PodIps::default()),
                Err(e) => Err(cluster_error(e)),
            },
        }
    }

    /// Could an ADD get its addresses now?
    pub fn can_assign(&self) -> Result<bool, CniError> {
        match self {
            Addresses::Local(ipam) => Ok(ipam.can_allocate()?),
            Addresses::Cluster(vswitch) => {
                let view = vswitch.ipam().map_err(cluster_error)?;
                Ok(view.this_node.warm > 0 || (view.store_reachable && view.free > 0))
            }
        }
    }
}
