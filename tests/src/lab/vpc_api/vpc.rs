//! The VPC as the SDN sees it (sans I/O): one VPC, its subnets, the NICs attached to it and the
//! fixed hosts, and who owns every address. Each API action checks its parameters, changes the
//! model or refuses with UCloud's code, and hands back the fabric changes it implies (which the
//! server pushes to the fabric after the flow-table delay).
//!
//! Invariants: an address has at most one owner (a fixed host, a NIC's primary address or one
//! NIC's secondary address); a NIC holds at most `secondary_quota` secondary addresses;
//! `AllocateSecondaryIp` without `Ip` hands out the lowest free IPv4 address of the subnet's
//! allocation pool, and answers 57000 when there is none. IPv6 secondary addresses are
//! allocated by naming them (`Ip`) inside the subnet's IPv6 prefix.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::dialect::{ApiError, Params, RetCode};

/// The VPC, as the lab describes it to the API server (a JSON file).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VpcConfig {
    pub region: String,
    pub zone: String,
    pub project_id: String,
    pub vpc_id: String,
    pub subnets: Vec<SubnetConfig>,
    pub nics: Vec<NicConfig>,
    pub fixed_hosts: Vec<FixedHost>,
    pub credentials: Vec<Credential>,
    /// The fabric port of the VPC's gateway: what leaves the VPC's prefixes goes there, and
    /// only there may come in with a source outside them.
    pub gateway_port: Option<String>,
    /// Secondary addresses one NIC may hold.
    pub secondary_quota: usize,
    #[serde(default)]
    pub faults: Faults,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubnetConfig {
    pub subnet_id: String,
    /// e.g. "10.10.0.0/16".
    pub cidr: String,
    pub gateway: Ipv4Addr,
    /// e.g. "fd00:10::/64".
    #[serde(default)]
    pub ipv6_cidr: Option<String>,
    #[serde(default)]
    pub ipv6_gateway: Option<IpAddr>,
    /// The part of `cidr` that AllocateSecondaryIp hands out from when no `Ip` is named
    /// (default: all of it).
    #[serde(default)]
    pub pool: Option<String>,
}

/// A virtual NIC: its MAC is how the API names it, its fabric port where its frames enter.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NicConfig {
    pub mac: String,
    /// The host it is attached to (`ObjectId`, e.g. "uhost-node1").
    pub object_id: String,
    /// Its own id, which UK8S also passes as `ObjectId`.
    #[serde(default)]
    pub interface_id: Option<String>,
    pub subnet_id: String,
    pub port: String,
    #[serde(default)]
    pub primary: Vec<IpAddr>,
}

/// A host the VPC knows without the API (gateway, VM, databases...).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FixedHost {
    pub name: String,
    pub port: String,
    pub addresses: Vec<IpAddr>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Credential {
    pub public_key: String,
    pub private_key: String,
}

/// How the API misbehaves on purpose; changeable while it runs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct Faults {
    /// Calls per second (token bucket, burst of one second's worth); beyond: RetCode 153.
    pub rate_per_sec: Option<f64>,
    /// Added before every answer.
    pub latency_ms: u64,
    /// From an API success to the fabric delivering (the flow-table push).
    pub push_delay_ms: u64,
    /// Connections are closed unanswered, as if the API were unreachable.
    pub down: bool,
    /// The subnet's pool holds only its first this many addresses (a small subnet, to fill).
    pub pool_size: Option<usize>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults { rate_per_sec: None, latency_ms: 0, push_delay_ms: 1000, down: false, pool_size: None }
    }
}

/// One entry of the fabric's flow table: `port` owns `addr`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct FlowEntry {
    pub port: String,
    pub addr: IpAddr,
}

/// A change the fabric must make.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum FlowChange {
    Add(FlowEntry),
    Remove(FlowEntry),
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("subnet {0}: bad prefix {1:?}")]
    Prefix(String, String),
    #[error("subnet {0}: its pool {1} is not inside {2}")]
    Pool(String, String, String),
    #[error("NIC {0}: no subnet {1}")]
    NicSubnet(String, String),
    #[error("{0} is claimed twice (by {1} and {2})")]
    Duplicate(IpAddr, String, String),
    #[error("MAC {0} is given to two NICs")]
    DuplicateMac(String),
}

struct Subnet {
    config: SubnetConfig,
    cidr: Ipv4Net,
    ipv6: Option<IpNet>,
    pool: Ipv4Net,
}

/// Who holds an address.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Owner {
    Fixed(String),
    Primary(String),
    /// A NIC (by MAC) holds it as a secondary address.
    Secondary(String),
}

/// The VPC's state.
pub struct Vpc {
    config: VpcConfig,
    subnets: Vec<Subnet>,
    /// NICs by lower-case MAC.
    nics: BTreeMap<String, NicConfig>,
    owners: BTreeMap<IpAddr, Owner>,
    /// [`Faults::pool_size`].
    pool_size: Option<usize>,
}

impl std::fmt::Debug for Vpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vpc").field("vpc_id", &self.config.vpc_id).field("addresses", &self.owners.len()).finish()
    }
}

fn mac_key(mac: &str) -> String {
    mac.trim().to_ascii_lowercase()
}

impl Vpc {
    pub fn new(config: VpcConfig) -> Result<Vpc, ConfigError> {
        let mut subnets = Vec::new();
        for s in &config.subnets {
            let bad = |p: &str| ConfigError::Prefix(s.subnet_id.clone(), p.to_string());
            let cidr: Ipv4Net = s.cidr.parse().map_err(|_| bad(&s.cidr))?;
            let ipv6 = match &s.ipv6_cidr {
                Some(p) => Some(p.parse::<IpNet>().ok().filter(|n| matches!(n, IpNet::V6(_))).ok_or_else(|| bad(p))?),
                None => None,
            };
            let pool: Ipv4Net = match &s.pool {
                Some(p) => p.parse().map_err(|_| bad(p))?,
                None => cidr,
            };
            if !cidr.contains(&pool) {
                return Err(ConfigError::Pool(s.subnet_id.clone(), pool.to_string(), cidr.to_string()));
            }
            subnets.push(Subnet { config: s.clone(), cidr, ipv6, pool });
        }
        let mut vpc =
            Vpc { config: config.clone(), subnets, nics: BTreeMap::new(), owners: BTreeMap::new(), pool_size: None };
        for s in &config.subnets {
            vpc.claim(IpAddr::V4(s.gateway), Owner::Fixed(format!("gateway of {}", s.subnet_id)))?;
        }
        for host in &config.fixed_hosts {
            for &addr in &host.addresses {
                // A host may be a subnet's gateway too (the lab's gateway is).
                if vpc.owners.get(&addr).is_some_and(|o| matches!(o, Owner::Fixed(n) if n.starts_with("gateway of "))) {
                    vpc.owners.insert(addr, Owner::Fixed(host.name.clone()));
                    continue;
                }
                vpc.claim(addr, Owner::Fixed(host.name.clone()))?;
            }
        }
        for nic in &config.nics {
            if !vpc.subnets.iter().any(|s| s.config.subnet_id == nic.subnet_id) {
                return Err(ConfigError::NicSubnet(nic.mac.clone(), nic.subnet_id.clone()));
            }
            if vpc.nics.insert(mac_key(&nic.mac), nic.clone()).is_some() {
                return Err(ConfigError::DuplicateMac(nic.mac.clone()));
            }
            for &addr in &nic.primary {
                vpc.claim(addr, Owner::Primary(mac_key(&nic.mac)))?;
            }
        }
        Ok(vpc)
    }

    fn claim(&mut self, addr: IpAddr, owner: Owner) -> Result<(), ConfigError> {
        if let Some(old) = self.owners.get(&addr) {
            return Err(ConfigError::Duplicate(addr, format!("{old:?}"), format!("{owner:?}")));
        }
        self.owners.insert(addr, owner);
        Ok(())
    }

    pub fn config(&self) -> &VpcConfig {
        &self.config
    }

    /// The private key of `public_key`, if it is a user's.
    pub fn private_key(&self, public_key: &str) -> Option<&str> {
        self.config.credentials.iter().find(|c| c.public_key == public_key).map(|c| c.private_key.as_str())
    }

    /// Everything the fabric holds before any API call: fixed hosts and primary addresses.
    pub fn fixed_entries(&self) -> Vec<FlowEntry> {
        let mut entries: Vec<FlowEntry> = self
            .config
            .fixed_hosts
            .iter()
            .flat_map(|h| h.addresses.iter().map(|&addr| FlowEntry { port: h.port.clone(), addr }))
            .collect();
        entries.extend(
            self.nics.values().flat_map(|n| n.primary.iter().map(|&addr| FlowEntry { port: n.port.clone(), addr })),
        );
        entries.sort();
        entries
    }

    /// The VPC's prefixes (the SDN routes everything else to the gateway).
    pub fn prefixes(&self) -> Vec<IpNet> {
        let mut all: Vec<IpNet> = self.subnets.iter().map(|s| IpNet::V4(s.cidr)).collect();
        all.extend(self.subnets.iter().filter_map(|s| s.ipv6));
        all
    }

    /// Runs one action. `Ok(None)` for an action this VPC does not serve.
    pub fn call(&mut self, action: &str, p: &Params) -> Option<Result<(Value, Vec<FlowChange>), ApiError>> {
        let result = match action {
            "AllocateSecondaryIp" => self.allocate(p),
            "DeleteSecondaryIp" => self.delete(p),
            "DescribeSecondaryIp" => self.describe_secondary(p).map(|v| (v, Vec::new())),
            "MoveSecondaryIPMac" => self.move_mac(p),
            "DescribeSubnet" => self.describe_subnet(p).map(|v| (v, Vec::new())),
            _ => return None,
        };
        Some(result)
    }

    /// Region always; `ProjectId` when given; `Zone` when `zone_required`.
    fn check_scope(&self, p: &Params, zone_required: bool) -> Result<(), ApiError> {
        if p.get("Region") != Some(&self.config.region) {
            return Err(ApiError::param("Region"));
        }
        if p.get("ProjectId").is_some_and(|id| *id != self.config.project_id) {
            return Err(ApiError::new(RetCode::NoSuchProject, "Project not exists"));
        }
        if zone_required && p.get("Zone") != Some(&self.config.zone) {
            return Err(ApiError::param("Zone"));
        }
        if p.get("VPCId").is_some_and(|id| *id != self.config.vpc_id) {
            return Err(ApiError::new(RetCode::NoSuchSubnet, format!("VPC {} not found", p["VPCId"])));
        }
        Ok(())
    }

    fn subnet(&self, id: &str) -> Result<&Subnet, ApiError> {
        self.subnets
            .iter()
            .find(|s| s.config.subnet_id == id)
            .ok_or_else(|| ApiError::new(RetCode::NoSuchSubnet, format!("subnet {id} not found")))
    }

    fn nic(&self, mac: &str) -> Result<&NicConfig, ApiError> {
        self.nics.get(&mac_key(mac)).ok_or_else(|| {
            ApiError::new(RetCode::NoSuchNic, format!("no NIC with MAC {mac} in {}", self.config.vpc_id))
        })
    }

    fn secondaries(&self, mac: &str) -> impl Iterator<Item = IpAddr> + '_ {
        let key = mac_key(mac);
        self.owners.iter().filter(move |(_, o)| **o == Owner::Secondary(key.clone())).map(|(a, _)| *a)
    }

    fn ip_info(&self, addr: IpAddr, mac: &str, subnet: &Subnet) -> Value {
        let (mask, gateway) = match addr {
            IpAddr::V4(_) => (subnet.cidr.netmask().to_string(), subnet.config.gateway.to_string()),
            IpAddr::V6(_) => (
                subnet.ipv6.map_or(String::new(), |n| n.prefix_len().to_string()),
                subnet.config.ipv6_gateway.map_or(String::new(), |g| g.to_string()),
            ),
        };
        json!({"Ip": addr.to_string(), "Mac": mac_key(mac), "Mask": mask, "Gateway": gateway,
               "SubnetId": subnet.config.subnet_id, "VPCId": self.config.vpc_id})
    }

    fn allocate(&mut self, p: &Params) -> Result<(Value, Vec<FlowChange>), ApiError> {
        self.check_scope(p, true)?;
        let mac = required(p, "Mac")?;
        let object = required(p, "ObjectId")?;
        let nic = self.nic(mac)?.clone();
        if nic.object_id != object && nic.interface_id.as_deref() != Some(object) {
            return Err(ApiError::new(RetCode::NoSuchNic, format!("MAC {mac} is not attached to {object}")));
        }
        let subnet_id = p.get("SubnetId").cloned().unwrap_or_else(|| nic.subnet_id.clone());
        let subnet = self.subnet(&subnet_id)?;
        if self.secondaries(mac).count() >= self.config.secondary_quota {
            return Err(ApiError::new(
                RetCode::QuotaExceeded,
                format!("NIC {mac} already holds {} secondary IPs (its quota)", self.config.secondary_quota),
            ));
        }
        let addr = match p.get("Ip") {
            Some(ip) => {
                let addr: IpAddr = ip.parse().map_err(|_| ApiError::param("Ip"))?;
                let inside = match addr {
                    IpAddr::V4(v4) => {
                        subnet.cidr.contains(&v4) && v4 != subnet.cidr.network() && v4 != subnet.cidr.broadcast()
                    }
                    IpAddr::V6(_) => subnet.ipv6.is_some_and(|n| n.contains(&addr)),
                };
                if !inside {
                    return Err(ApiError::new(
                        RetCode::BadParams,
                        format!("Params [Ip] not available: {ip} is not in {subnet_id}"),
                    ));
                }
                if self.owners.contains_key(&addr) {
                    return Err(ApiError::new(RetCode::IpInUse, format!("IP {ip} is already in use")));
                }
                addr
            }
            None => IpAddr::V4(
                self.lowest_free(subnet)
                    .ok_or_else(|| ApiError::new(RetCode::SubnetFull, format!("no free IP in subnet {subnet_id}")))?,
            ),
        };
        let info = self.ip_info(addr, mac, subnet);
        self.owners.insert(addr, Owner::Secondary(mac_key(mac)));
        Ok((json!({"IpInfo": info}), vec![FlowChange::Add(FlowEntry { port: nic.port, addr })]))
    }

    /// The pool's addresses nobody holds, lowest first.
    fn free<'a>(&'a self, subnet: &'a Subnet) -> impl Iterator<Item = Ipv4Addr> + 'a {
        let pool = subnet.pool.hosts().filter(|a| *a != subnet.cidr.network());
        pool.take(self.pool_size.unwrap_or(usize::MAX)).filter(|a| !self.owners.contains_key(&IpAddr::V4(*a)))
    }

    /// Sets [`Faults::pool_size`].
    pub fn set_pool_size(&mut self, size: Option<usize>) {
        self.pool_size = size;
    }

    fn lowest_free(&self, subnet: &Subnet) -> Option<Ipv4Addr> {
        self.free(subnet).next()
    }

    fn free_in_pool(&self, subnet: &Subnet) -> u64 {
        self.free(subnet).count() as u64
    }

    fn delete(&mut self, p: &Params) -> Result<(Value, Vec<FlowChange>), ApiError> {
        self.check_scope(p, true)?;
        let ip = required(p, "Ip")?;
        let mac = required(p, "Mac")?;
        self.subnet(required(p, "SubnetId")?)?;
        let addr: IpAddr = ip.parse().map_err(|_| ApiError::param("Ip"))?;
        let nic = self.nic(mac)?.clone();
        match self.owners.get(&addr) {
            Some(Owner::Secondary(owner)) if *owner == mac_key(mac) => {
                self.owners.remove(&addr);
                Ok((json!({}), vec![FlowChange::Remove(FlowEntry { port: nic.port, addr })]))
            }
            // Gone, or moved to another NIC since: either way not this NIC's to delete.
            _ => Err(ApiError::new(RetCode::IpNotFound, format!("secondary IP {ip} not exists on {mac}"))),
        }
    }

    fn describe_secondary(&self, p: &Params) -> Result<Value, ApiError> {
        self.check_scope(p, true)?;
        let subnet = self.subnet(required(p, "SubnetId")?)?;
        required(p, "VPCId")?;
        let ip: Option<IpAddr> = match p.get("Ip") {
            Some(ip) => Some(ip.parse().map_err(|_| ApiError::param("Ip"))?),
            None => None,
        };
        let mac = p.get("Mac").map(|m| mac_key(m));
        let set: Vec<Value> = self
            .owners
            .iter()
            .filter_map(|(addr, owner)| match owner {
                Owner::Secondary(m) => Some((*addr, m)),
                _ => None,
            })
            .filter(|(addr, m)| {
                ip.is_none_or(|i| i == *addr)
                    && mac.as_ref().is_none_or(|want| want == *m)
                    && self.nics.get(*m).is_some_and(|n| n.subnet_id == subnet.config.subnet_id)
            })
            .map(|(addr, m)| self.ip_info(addr, m, subnet))
            .collect();
        Ok(json!({"TotalCount": set.len(), "DataSet": set}))
    }

    fn move_mac(&mut self, p: &Params) -> Result<(Value, Vec<FlowChange>), ApiError> {
        self.check_scope(p, false)?;
        let ip = required(p, "Ip")?;
        let (old, new) = (required(p, "OldMac")?, required(p, "NewMac")?);
        let subnet_id = required(p, "SubnetId")?;
        self.subnet(subnet_id)?;
        let addr: IpAddr = ip.parse().map_err(|_| ApiError::param("Ip"))?;
        let (old_nic, new_nic) = (self.nic(old)?.clone(), self.nic(new)?.clone());
        if old_nic.subnet_id != subnet_id || new_nic.subnet_id != subnet_id {
            return Err(ApiError::new(
                RetCode::BadParams,
                "Params [SubnetId] not available: Ip, OldMac and NewMac must share it",
            ));
        }
        if self.owners.get(&addr) != Some(&Owner::Secondary(mac_key(old))) {
            return Err(ApiError::new(RetCode::IpNotFound, format!("secondary IP {ip} not exists on {old}")));
        }
        if mac_key(old) == mac_key(new) {
            return Ok((json!({}), Vec::new()));
        }
        if self.secondaries(new).count() >= self.config.secondary_quota {
            return Err(ApiError::new(
                RetCode::QuotaExceeded,
                format!("NIC {new} already holds its quota of secondary IPs"),
            ));
        }
        self.owners.insert(addr, Owner::Secondary(mac_key(new)));
        let changes = vec![
            FlowChange::Remove(FlowEntry { port: old_nic.port, addr }),
            FlowChange::Add(FlowEntry { port: new_nic.port, addr }),
        ];
        Ok((json!({}), changes))
    }

    fn describe_subnet(&self, p: &Params) -> Result<Value, ApiError> {
        self.check_scope(p, false)?;
        let mut wanted: Vec<&String> = p.iter().filter(|(k, _)| k.starts_with("SubnetIds.")).map(|(_, v)| v).collect();
        wanted.extend(p.get("SubnetId"));
        let set: Vec<Value> = self
            .subnets
            .iter()
            .filter(|s| wanted.is_empty() || wanted.contains(&&s.config.subnet_id))
            .map(|s| {
                let v6_used = self.owners.keys().filter(|a| s.ipv6.is_some_and(|n| n.contains(*a))).count() as u64;
                let v6_free = s.ipv6.map_or(0, |n| {
                    let bits = 128 - u32::from(n.prefix_len());
                    (if bits >= 63 { u64::MAX / 2 } else { 1u64 << bits }).saturating_sub(v6_used)
                });
                json!({
                    "SubnetId": s.config.subnet_id, "VPCId": self.config.vpc_id, "Zone": self.config.zone,
                    "Subnet": s.cidr.network().to_string(), "Netmask": s.cidr.prefix_len().to_string(),
                    "Gateway": s.config.gateway.to_string(),
                    "IPv6Network": s.ipv6.map_or(String::new(), |n| n.to_string()),
                    "AvailableIPs": self.free_in_pool(s), "AvailableIPv6Count": v6_free,
                    "SubnetName": s.config.subnet_id, "SubnetType": 2, "Tag": "Default",
                })
            })
            .collect();
        Ok(json!({"TotalCount": set.len(), "DataSet": set}))
    }

    /// The model as tests and `vpc-lab` read it.
    pub fn snapshot(&self) -> Value {
        let subnets: Vec<Value> = self
            .subnets
            .iter()
            .map(|s| {
                json!({"subnet_id": s.config.subnet_id, "cidr": s.cidr.to_string(), "pool": s.pool.to_string(),
                            "ipv6_cidr": s.ipv6.map(|n| n.to_string()), "available_ips": self.free_in_pool(s)})
            })
            .collect();
        let nics: Vec<Value> = self
            .nics
            .iter()
            .map(|(mac, n)| {
                let secondary: Vec<String> = self.secondaries(mac).map(|a| a.to_string()).collect();
                json!({"mac": mac, "object_id": n.object_id, "port": n.port, "primary": n.primary, "secondary": secondary})
            })
            .collect();
        json!({"region": self.config.region, "zone": self.config.zone, "vpc_id": self.config.vpc_id,
               "subnets": subnets, "nics": nics, "fixed_hosts": self.config.fixed_hosts})
    }
}

fn required<'a>(p: &'a Params, name: &str) -> Result<&'a str, ApiError> {
    p.get(name).map(String::as_str).filter(|v| !v.is_empty()).ok_or_else(|| ApiError::param(name))
}

#[cfg(test)]
mod tests;
