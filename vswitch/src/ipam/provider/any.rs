//! The provider vswitchd runs with, chosen by `[ipam] provider`.

use std::net::IpAddr;

use super::aws::Ec2;
use super::ucloud::UCloud;
use super::{PoolCall, PoolCounts, PoolDelta, ProviderError, SecondaryIp, VpcProvider};

// One per vswitchd, inside the boxed pool: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum AnyProvider {
    Ucloud(UCloud),
    Aws(Ec2),
}

impl AnyProvider {
    /// Who this node is to the VPC API and where that was learnt, for `vswitchctl ipam`.
    pub fn identity(&self) -> Option<String> {
        match self {
            AnyProvider::Ucloud(p) => {
                let i = p.identity();
                Some(format!("host {}, NIC {} ({})", i.host_id, i.nic_mac, i.source))
            }
            AnyProvider::Aws(p) => Some(p.identity()),
        }
    }
}

/// `$call` on whichever provider this is.
macro_rules! each {
    ($self:ident, $p:ident => $call:expr) => {
        match $self {
            AnyProvider::Ucloud($p) => $call,
            AnyProvider::Aws($p) => $call,
        }
    };
}

impl VpcProvider for AnyProvider {
    fn name(&self) -> &'static str {
        each!(self, p => p.name())
    }

    fn nic(&self) -> &str {
        each!(self, p => p.nic())
    }

    async fn allocate(&self, ip: Option<IpAddr>) -> Result<IpAddr, ProviderError> {
        each!(self, p => p.allocate(ip).await)
    }

    async fn delete(&self, ip: IpAddr) -> Result<(), ProviderError> {
        each!(self, p => p.delete(ip).await)
    }

    async fn describe(&self) -> Result<Vec<IpAddr>, ProviderError> {
        each!(self, p => p.describe().await)
    }

    async fn locate(&self, ip: IpAddr) -> Result<Option<SecondaryIp>, ProviderError> {
        each!(self, p => p.locate(ip).await)
    }

    async fn move_here(&self, ip: IpAddr, from: &str) -> Result<(), ProviderError> {
        each!(self, p => p.move_here(ip, from).await)
    }

    async fn subnet_free(&self) -> Result<u64, ProviderError> {
        each!(self, p => p.subnet_free().await)
    }

    fn call_name(&self, call: PoolCall) -> &'static str {
        each!(self, p => p.call_name(call))
    }

    async fn allocate_batch(&self, count: usize) -> Result<Vec<IpAddr>, ProviderError> {
        each!(self, p => p.allocate_batch(count).await)
    }

    async fn delete_batch(&self, ips: &[IpAddr]) -> Result<Vec<IpAddr>, ProviderError> {
        each!(self, p => p.delete_batch(ips).await)
    }

    fn pool_delta(&self, counts: PoolCounts) -> Option<PoolDelta> {
        each!(self, p => p.pool_delta(counts))
    }

    fn collects_leaked_nics(&self) -> bool {
        each!(self, p => p.collects_leaked_nics())
    }

    async fn collect_leaked_nics(&self) -> Result<usize, ProviderError> {
        each!(self, p => p.collect_leaked_nics().await)
    }

    async fn fabric_probe_mac(&self, ip: IpAddr) -> Option<String> {
        each!(self, p => p.fabric_probe_mac(ip).await)
    }
}
