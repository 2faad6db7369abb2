//! An in-memory VPC for the pool's tests: one subnet, NICs by name, the faults the lab API has.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};

use super::agent::ProviderSettings;
use super::aws::config::WarmTargets;
use super::{PoolCall, PoolCounts, PoolDelta, ProviderError, SecondaryIp, VpcProvider};

/// Small watermarks, no waiting: what the pool's tests run with.
pub fn quick_settings() -> ProviderSettings {
    ProviderSettings {
        warm_low: 2,
        warm_high: 3,
        cooldown: std::time::Duration::ZERO,
        decrease_interval: std::time::Duration::ZERO,
        fabric_probe_timeout: std::time::Duration::from_secs(5),
        fabric_probe_target: None,
        backoff_min: std::time::Duration::from_millis(1),
        backoff_max: std::time::Duration::from_millis(2),
        reconcile_every: std::time::Duration::ZERO,
    }
}

#[derive(Debug, Default)]
pub struct FakeVpc {
    /// Address → NIC.
    pub owners: BTreeMap<IpAddr, String>,
    /// Addresses the subnet hands out, lowest first.
    pub free: BTreeSet<IpAddr>,
    pub down: bool,
    pub throttled: bool,
    pub calls: u64,
    /// Addresses on a NIC the node does not have (as an ENI attached but not in the instance).
    pub absent: BTreeSet<IpAddr>,
    /// AWS's warm targets instead of the configured watermarks.
    pub targets: Option<WarmTargets>,
    /// Several addresses allocated or deleted in one call, as EC2 does.
    pub batches: bool,
    /// Refills refused because the only NIC with room is not in the node (AWS: an ENI attached
    /// but absent), saying this.
    pub nic_absent: Option<String>,
}

impl FakeVpc {
    /// A subnet of `size` addresses from 10.0.0.10.
    pub fn new(size: u8) -> Arc<Mutex<FakeVpc>> {
        let free = (0..size).map(|i| IpAddr::V4(Ipv4Addr::new(10, 0, 0, 10 + i))).collect();
        Arc::new(Mutex::new(FakeVpc { free, ..FakeVpc::default() }))
    }

    pub fn on(&self, nic: &str) -> BTreeSet<IpAddr> {
        self.owners.iter().filter(|(_, n)| *n == nic).map(|(ip, _)| *ip).collect()
    }
}

/// One node's NIC on a [`FakeVpc`].
#[derive(Debug, Clone)]
pub struct FakeNic {
    pub vpc: Arc<Mutex<FakeVpc>>,
    pub nic: String,
}

impl FakeNic {
    fn enter(&self) -> Result<std::sync::MutexGuard<'_, FakeVpc>, ProviderError> {
        let mut vpc = self.vpc.lock().unwrap();
        vpc.calls += 1;
        if vpc.down {
            return Err(ProviderError::Unavailable("connection refused".into()));
        }
        if vpc.throttled {
            return Err(ProviderError::Throttled("API 请求被限流".into()));
        }
        Ok(vpc)
    }
}

impl VpcProvider for FakeNic {
    fn name(&self) -> &'static str {
        "fake"
    }

    fn nic(&self) -> &str {
        &self.nic
    }

    /// UCloud's names: the pool's tests read them.
    fn call_name(&self, call: PoolCall) -> &'static str {
        super::ucloud::call_name(call)
    }

    async fn allocate(&self, ip: Option<IpAddr>) -> Result<IpAddr, ProviderError> {
        let mut vpc = self.enter()?;
        let ip = match ip {
            Some(ip) if vpc.free.remove(&ip) => ip,
            Some(ip) => {
                return Err(ProviderError::Other { code: 58222, message: format!("IP {ip} is already in use") })
            }
            None => vpc.free.pop_first().ok_or_else(|| ProviderError::SubnetFull("no free IP in subnet-t".into()))?,
        };
        vpc.owners.insert(ip, self.nic.clone());
        Ok(ip)
    }

    async fn delete(&self, ip: IpAddr) -> Result<(), ProviderError> {
        let mut vpc = self.enter()?;
        if vpc.owners.get(&ip) != Some(&self.nic) {
            return Err(ProviderError::AddressGone(format!("secondary IP {ip} not exists")));
        }
        vpc.owners.remove(&ip);
        vpc.free.insert(ip);
        Ok(())
    }

    /// All `count` in one call with `batches`, else one.
    async fn allocate_batch(&self, count: usize) -> Result<Vec<IpAddr>, ProviderError> {
        let mut vpc = self.enter()?;
        if let Some(why) = &vpc.nic_absent {
            return Err(ProviderError::NicAbsent(why.clone()));
        }
        let count = if vpc.batches { count.min(vpc.free.len()) } else { 1 };
        let ips: Vec<IpAddr> = (0..count).filter_map(|_| vpc.free.pop_first()).collect();
        if ips.is_empty() {
            return Err(ProviderError::SubnetFull("no free IP in subnet-t".into()));
        }
        vpc.owners.extend(ips.iter().map(|ip| (*ip, self.nic.clone())));
        Ok(ips)
    }

    /// Every one of `ips` on this NIC in one call with `batches`, else the first.
    async fn delete_batch(&self, ips: &[IpAddr]) -> Result<Vec<IpAddr>, ProviderError> {
        let batches = self.vpc.lock().unwrap().batches;
        if !batches {
            return self.delete(ips[0]).await.map(|()| vec![ips[0]]);
        }
        let mut vpc = self.enter()?;
        let mine: Vec<IpAddr> = ips.iter().filter(|ip| vpc.owners.get(ip) == Some(&self.nic)).copied().collect();
        for ip in &mine {
            vpc.owners.remove(ip);
            vpc.free.insert(*ip);
        }
        Ok(mine)
    }

    async fn describe(&self) -> Result<Vec<IpAddr>, ProviderError> {
        Ok(self.enter()?.on(&self.nic).into_iter().collect())
    }

    async fn locate(&self, ip: IpAddr) -> Result<Option<SecondaryIp>, ProviderError> {
        Ok(self.enter()?.owners.get(&ip).map(|nic| SecondaryIp { ip, nic: nic.clone() }))
    }

    async fn move_here(&self, ip: IpAddr, from: &str) -> Result<(), ProviderError> {
        let mut vpc = self.enter()?;
        if vpc.owners.get(&ip).map(String::as_str) != Some(from) {
            return Err(ProviderError::AddressGone(format!("secondary IP {ip} not exists on {from}")));
        }
        vpc.owners.insert(ip, self.nic.clone());
        Ok(())
    }

    async fn subnet_free(&self) -> Result<u64, ProviderError> {
        Ok(self.enter()?.free.len() as u64)
    }

    /// With `targets`: an instance of 100 addresses on one ENI.
    fn pool_delta(&self, counts: PoolCounts) -> Option<PoolDelta> {
        self.vpc.lock().unwrap().targets.map(|t| t.delta(counts, 100, 100))
    }

    async fn undeliverable(&self, ip: IpAddr) -> Option<String> {
        let absent = self.vpc.lock().unwrap().absent.contains(&ip);
        absent.then(|| format!("eni-2 attached but not present in this node: it holds {ip}"))
    }
}
