//! What an ADD asks of the IPAM and what it gets, as the IPAM's own types: the API's
//! `AssignSpec` and `AddressView` are their wire form, converted at the edge.
//!
//! The identifiers are the API's: an [`Attachment`] (CNI's container ID and interface) and a
//! [`PodRef`] (namespace and name) are plain keys, and the store's records are written with them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use vswitch_api::api::{AssignSpec, Attachment, IpFamilies, PodRef};

use super::error::InvalidRequest;
use super::pool::Family;

/// An ADD's request for addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressRequest {
    pub owner: Attachment,
    /// The sandbox's namespace: an address whose namespace is gone and that no port uses is
    /// released (its DEL never came).
    pub netns: PathBuf,
    pub pod: Option<PodRef>,
    /// The families wanted; `None`: every family the pool holds.
    pub families: Option<IpFamilies>,
    /// The address asked for by name (a static IP), per family.
    pub ipv4: Option<Ipv4Addr>,
    pub ipv6: Option<Ipv6Addr>,
}

impl AddressRequest {
    /// A request for the pool's families and no address in particular.
    pub fn new(owner: Attachment, netns: PathBuf, pod: Option<PodRef>) -> AddressRequest {
        AddressRequest { owner, netns, pod, families: None, ipv4: None, ipv6: None }
    }

    /// The address asked for by name of `family`.
    pub fn specific(&self, family: Family) -> Option<IpAddr> {
        match family {
            Family::Ipv4 => self.ipv4.map(IpAddr::V4),
            Family::Ipv6 => self.ipv6.map(IpAddr::V6),
        }
    }

    /// Does it ask for `family` (given the families the pool holds when it names none)?
    pub fn asks_for(&self, family: Family, pool_families: &[Family]) -> bool {
        match (self.families, family) {
            (None, _) => pool_families.contains(&family),
            (Some(families), Family::Ipv4) => families.has_ipv4(),
            (Some(families), Family::Ipv6) => families.has_ipv6(),
        }
    }
}

/// The wire form: at most one specific address per family.
impl TryFrom<AssignSpec> for AddressRequest {
    type Error = InvalidRequest;
    fn try_from(spec: AssignSpec) -> Result<AddressRequest, InvalidRequest> {
        let mut request =
            AddressRequest { families: spec.families, ..AddressRequest::new(spec.owner, spec.netns, spec.pod) };
        for ip in spec.ips {
            let taken = match ip {
                IpAddr::V4(v4) => request.ipv4.replace(v4).is_some(),
                IpAddr::V6(v6) => request.ipv6.replace(v6).is_some(),
            };
            if taken {
                return Err(InvalidRequest::TwoOfFamily(Family::of(&ip)));
            }
        }
        Ok(request)
    }
}

/// The addresses an ADD got, one per family it asked for, IPv4 first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assigned {
    pub ips: Vec<IpAddr>,
    /// False when the attachment had them already (a repeated ADD).
    pub new: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wire_form_converts_with_one_address_per_family() {
        let owner = Attachment { container_id: "c1".into(), ifname: "eth0".into() };
        let spec = |ips: &[&str]| AssignSpec {
            owner: owner.clone(),
            netns: "/run/netns/c1".into(),
            pod: None,
            ips: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
            families: Some(IpFamilies::Dual),
            sticky: None,
        };
        let request = AddressRequest::try_from(spec(&["fd00::5", "10.0.0.5"])).unwrap();
        assert_eq!(request.specific(Family::Ipv4), Some("10.0.0.5".parse().unwrap()));
        assert_eq!(request.specific(Family::Ipv6), Some("fd00::5".parse().unwrap()));
        assert!(request.asks_for(Family::Ipv6, &[]), "dual asks for both whatever the pool");
        let two = AddressRequest::try_from(spec(&["fd00::1", "fd00::2"])).unwrap_err();
        assert_eq!(two.to_string(), "at most one IPv6 address may be asked for");
        let any = AddressRequest::new(owner, "/x".into(), None);
        assert!(any.asks_for(Family::Ipv4, &[Family::Ipv4]) && !any.asks_for(Family::Ipv6, &[Family::Ipv4]));
    }
}
