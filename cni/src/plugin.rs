//! The verbs: ADD, DEL, CHECK, GC, STATUS (VERSION is answered in `main`).
//!
//! Every ADD step that can fail registers how to undo it; a failure undoes them in reverse, so a
//! failed ADD leaves no TAP, no port and no address behind. DEL treats everything already gone as
//! done, so it can be repeated and works after the namespace was deleted.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vswitch_api::api::{ErrorCode, PortRole, PortSpec};
use vswitch_api::MacAddr;

use crate::client::{ClientError, Vswitch};
use crate::ipam::{Ipam, IpamError};
use crate::podnet::{self, PodInterface};
use crate::spec::{add_result, Attachment, CniError, Code, Environment, NetConf};

impl From<IpamError> for CniError {
    fn from(e: IpamError) -> Self {
        match e {
            IpamError::Exhausted(_) => CniError::with_details(Code::PoolExhausted, "no free address", e),
            IpamError::Io { .. } | IpamError::Corrupt { .. } => {
                CniError::with_details(Code::IoFailure, "IPAM state", e)
            }
        }
    }
}

impl From<ClientError> for CniError {
    fn from(e: ClientError) -> Self {
        match e {
            ClientError::Unreachable { .. } | ClientError::Protocol { .. } => {
                CniError::with_details(Code::TryAgainLater, "vswitchd is unreachable", e)
            }
            ClientError::Api(_) => CniError::with_details(Code::SwitchRefused, "vswitchd refused the request", e),
        }
    }
}

impl From<podnet::PodNetError> for CniError {
    fn from(e: podnet::PodNetError) -> Self {
        CniError::with_details(Code::InterfaceSetup, "pod interface", e)
    }
}

/// The port name in vswitchd for one attachment.
pub fn port_name(owner: &Attachment) -> String {
    format!("{}:{}", owner.container_id, owner.ifname)
}

/// The pod's MAC: locally administered, derived from its address, so it is stable across
/// re-attachments and easy to read in a capture.
pub fn pod_mac(ip: Ipv4Addr) -> MacAddr {
    MacAddr::local_from(ip.octets())
}

#[derive(Debug)]
pub struct Plugin {
    pub conf: NetConf,
    pub env: Environment,
}

impl Plugin {
    fn ipam(&self) -> Ipam {
        Ipam::new(
            &self.conf.ipam_dir(),
            self.conf.ipam.ranges.clone(),
            Duration::from_secs(self.conf.ipam.reuse_delay_seconds),
        )
    }

    fn vswitch(&self) -> Vswitch {
        Vswitch::new(&self.conf.vswitch_socket)
    }

    fn owner(&self) -> Attachment {
        Attachment {
            container_id: self.env.container_id.clone().expect("validated"),
            ifname: self.env.ifname.clone().expect("validated"),
        }
    }

    fn netns(&self) -> PathBuf {
        self.env.netns.clone().expect("validated")
    }

    fn interface<'a>(&'a self, owner: &'a Attachment, ip: Ipv4Addr) -> PodInterface<'a> {
        PodInterface {
            ifname: &owner.ifname,
            mac: pod_mac(ip),
            mtu: self.conf.mtu,
            ip,
            gateway: self.conf.gateway,
            gateway_mac: self.conf.gateway_mac(),
        }
    }

    pub fn add(&self) -> Result<serde_json::Value, CniError> {
        let owner = self.owner();
        let netns = self.netns();
        if !netns.exists() {
            return Err(CniError::with_details(
                Code::UnknownContainer,
                "network namespace does not exist",
                netns.display(),
            ));
        }
        // Fail before touching anything when the switch is down: the runtime retries later.
        self.vswitch().status()?;

        let mut undo: Vec<Box<dyn FnOnce()>> = Vec::new();
        let result = (|| {
            let ipam = self.ipam();
            let ip = ipam.allocate(&owner)?;
            {
                let (ipam, owner) = (ipam.clone(), owner.clone());
                undo.push(Box::new(move || drop(ipam.release(&owner))));
            }
            let interface = self.interface(&owner, ip);
            {
                let (netns, ifname) = (netns.clone(), owner.ifname.clone());
                undo.push(Box::new(move || drop(podnet::remove(&netns, &ifname))));
            }
            podnet::create(&netns, interface)?;
            let name = port_name(&owner);
            let spec = PortSpec {
                name: name.clone(),
                netns: netns.clone(),
                ifname: owner.ifname.clone(),
                ip,
                mac: interface.mac,
                mtu: Some(self.conf.mtu),
                pod: None,
                bandwidth: None,
            };
            // A repeated ADD (the runtime retrying) finds its port: replace it.
            match self.vswitch().add_port(spec.clone()) {
                Err(e) if e.code() == Some(ErrorCode::Exists) => {
                    self.vswitch().del_port(&name, false)?;
                    self.vswitch().add_port(spec)?;
                }
                other => drop(other?),
            }
            Ok(add_result(&self.conf, &owner.ifname, &interface.mac.to_string(), &netns.display().to_string(), ip))
        })();
        if result.is_err() {
            for step in undo.into_iter().rev() {
                step();
            }
        }
        result
    }

    pub fn del(&self) -> Result<(), CniError> {
        let owner = self.owner();
        self.detach(&owner, self.env.netns.as_deref())
    }

    /// Removes the port, the TAP (if the namespace is known and still there) and the address.
    ///
    /// vswitchd deletes the TAP of a port it knows right after detaching it, without making DEL
    /// wait for the kernel to unregister the device (tens of milliseconds on a busy node); a TAP
    /// vswitchd never knew (an ADD that died half-way) is deleted here.
    fn detach(&self, owner: &Attachment, netns: Option<&Path>) -> Result<(), CniError> {
        let known = match self.vswitch().del_port(&port_name(owner), true) {
            Ok(()) => true,
            Err(e) if e.code() == Some(ErrorCode::NotFound) => false,
            Err(e) => return Err(e.into()),
        };
        if let (false, Some(netns)) = (known, netns) {
            podnet::remove(netns, &owner.ifname)?;
        }
        self.ipam().release(owner)?;
        Ok(())
    }

    pub fn check(&self) -> Result<(), CniError> {
        let owner = self.owner();
        let prev = self
            .conf
            .prev_result
            .as_ref()
            .ok_or_else(|| CniError::new(Code::InvalidConfig, "CHECK needs prevResult"))?;
        let expected: Option<Ipv4Addr> =
            prev["ips"][0]["address"].as_str().and_then(|a| a.split('/').next()).and_then(|a| a.parse().ok());
        let ip = self
            .ipam()
            .lookup(&owner)?
            .ok_or_else(|| CniError::new(Code::UnknownContainer, "no address is reserved for this container"))?;
        if expected != Some(ip) {
            return Err(CniError::with_details(
                Code::InvalidConfig,
                "prevResult's address is not the reserved one",
                format!("{expected:?} vs {ip}"),
            ));
        }
        podnet::check(&self.netns(), self.interface(&owner, ip))?;
        let name = port_name(&owner);
        let ports = self.vswitch().ports()?;
        let port = ports
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| CniError::new(Code::SwitchRefused, format!("vswitchd has no port {name}")))?;
        let matches = matches!(port.role, PortRole::Pod { ip: pip, mac } if pip == ip && mac == pod_mac(ip));
        if !matches {
            return Err(CniError::new(
                Code::SwitchRefused,
                format!("vswitchd's port {name} has another address or MAC"),
            ));
        }
        Ok(())
    }

    /// Removes every attachment of this network that is not in the valid list.
    pub fn gc(&self) -> Result<(), CniError> {
        let valid = self.conf.valid_attachments.clone().unwrap_or_default();
        let ports = self.vswitch().ports()?;
        for (_, owner) in self.ipam().allocations()? {
            if valid.contains(&owner) {
                continue;
            }
            let name = port_name(&owner);
            let netns = ports.iter().find(|p| p.name == name).and_then(|p| p.netns.clone());
            self.detach(&owner, netns.as_deref())?;
        }
        Ok(())
    }

    /// Ready for ADDs: vswitchd answers and the pool has an address.
    pub fn status(&self) -> Result<(), CniError> {
        self.vswitch()
            .status()
            .map_err(|e| CniError::with_details(Code::NotAvailable, "vswitchd is unreachable", e))?;
        if self.ipam().free()? == 0 {
            return Err(CniError::new(Code::NotAvailable, "the address pool is empty"));
        }
        Ok(())
    }
}
