//! Addresses as the runtime writes them: a pod's (one per family), in CIDR notation, and MACs.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use vswitch_api::api::IpFamilies;
use vswitch_api::{MacAddr, MacParseError};

/// An address with an optional prefix length, as results and the runtime write them
/// (`10.10.40.77/32`, `fd00::77/64`, `0.0.0.0/0`, `10.10.40.77`); host bits are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CidrAddress {
    pub ip: IpAddr,
    pub prefix_len: Option<u8>,
}

impl CidrAddress {
    /// `ip` with its family's full length (`/32`, `/128`): how a pod holds its address here.
    pub fn host(ip: IpAddr) -> CidrAddress {
        CidrAddress { ip, prefix_len: Some(if ip.is_ipv4() { 32 } else { 128 }) }
    }
}

impl FromStr for CidrAddress {
    type Err = String;

    fn from_str(text: &str) -> Result<CidrAddress, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let ip = addr.parse::<IpAddr>().map_err(|_| format!("'{text}' is not an IP address"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix {
            None => None,
            Some(p) => match p.parse::<u8>() {
                Ok(p) if p <= max => Some(p),
                _ => return Err(format!("'{text}' has no valid prefix length")),
            },
        };
        Ok(CidrAddress { ip, prefix_len })
    }
}

impl fmt::Display for CidrAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.prefix_len {
            Some(len) => write!(f, "{}/{len}", self.ip),
            None => write!(f, "{}", self.ip),
        }
    }
}

impl Serialize for CidrAddress {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for CidrAddress {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// An address, alone or with a prefix length (`10.10.40.77`, `10.10.40.77/24`, `fd00::77/64`);
/// the prefix is checked and dropped (pods get a /32 or /128 here).
pub fn parse_ip(text: &str) -> Result<IpAddr, String> {
    text.parse::<CidrAddress>().map(|cidr| cidr.ip)
}

/// A pod's addresses: at most one per family.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PodIps {
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
}

impl PodIps {
    /// Adds `ip`; a second address of the same family is an error.
    pub fn add(&mut self, ip: IpAddr) -> Result<(), String> {
        match ip {
            IpAddr::V4(v4) if self.v4.is_none() => self.v4 = Some(v4),
            IpAddr::V6(v6) if self.v6.is_none() => self.v6 = Some(v6),
            _ => return Err(format!("{ip} is a second address of its family; a pod has one per family")),
        }
        Ok(())
    }

    pub fn from_ips(ips: impl IntoIterator<Item = IpAddr>) -> Result<PodIps, String> {
        let mut all = PodIps::default();
        for ip in ips {
            all.add(ip)?;
        }
        Ok(all)
    }

    /// Addresses as the runtime writes them ([`parse_ip`]).
    pub fn parse_list<'a>(texts: impl IntoIterator<Item = &'a str>) -> Result<PodIps, String> {
        let mut all = PodIps::default();
        for text in texts {
            all.add(parse_ip(text)?)?;
        }
        Ok(all)
    }

    /// IPv4 first.
    pub fn iter(&self) -> impl Iterator<Item = IpAddr> {
        self.v4.map(IpAddr::V4).into_iter().chain(self.v6.map(IpAddr::V6))
    }

    pub fn is_empty(&self) -> bool {
        self.v4.is_none() && self.v6.is_none()
    }

    pub fn families(&self) -> Option<IpFamilies> {
        families(self.v4.is_some(), self.v6.is_some())
    }
}

/// The families of something that has IPv4 (`ipv4`) and IPv6 (`ipv6`); `None` for neither.
pub(crate) fn families(ipv4: bool, ipv6: bool) -> Option<IpFamilies> {
    match (ipv4, ipv6) {
        (true, true) => Some(IpFamilies::Dual),
        (true, false) => Some(IpFamilies::Ipv4),
        (false, true) => Some(IpFamilies::Ipv6),
        (false, false) => None,
    }
}

/// `10.10.40.77,fd00::77` (IPv4 first); empty when there is none.
impl fmt::Display for PodIps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list: Vec<String> = self.iter().map(|ip| ip.to_string()).collect();
        f.write_str(&list.join(","))
    }
}

/// A MAC the pod may have: unicast and not all zeros.
pub fn parse_mac(text: &str) -> Result<MacAddr, String> {
    let mac: MacAddr = text.parse().map_err(|e: MacParseError| e.to_string())?;
    if mac.is_multicast() || mac == MacAddr::ZERO {
        return Err(format!("{mac} is not a unicast MAC"));
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_addresses_keep_what_was_written() {
        for text in ["10.10.40.77/32", "10.10.40.77/24", "10.10.40.77", "fd00::77/64", "0.0.0.0/0", "::/0"] {
            let cidr: CidrAddress = text.parse().unwrap();
            assert_eq!(cidr.to_string(), text);
            assert_eq!(serde_json::to_value(cidr).unwrap(), serde_json::json!(text));
        }
        assert_eq!(CidrAddress::host("fd00::a".parse().unwrap()).to_string(), "fd00::a/128");
        for bad in ["10.0.0.1/33", "fd00::1/129", "10.0.0.1/", "10.0.0.1/x", "10.0.0", ""] {
            assert!(bad.parse::<CidrAddress>().is_err(), "{bad}");
        }
    }
}
