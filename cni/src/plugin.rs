//! The verbs: ADD, DEL, CHECK, GC, STATUS (VERSION is answered in `main`).
//!
//! Every ADD step that can fail registers how to undo it; a failure undoes them in reverse, so a
//! failed ADD leaves no TAP, no port and no address behind (and never touches what it did not
//! make: an interface already in the namespace is refused, an address the container already had
//! is kept). DEL treats everything already gone as done, so it can be repeated and works after
//! the namespace was deleted, and it never blocks a pod's removal on vswitchd: unreachable, the
//! plugin removes the TAP itself and releases the address. GC keeps going past failures and
//! reports them at the end. The plugin decides on vswitchd's answers by their error code only.

use std::cell::RefCell;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vswitch_api::api::{ErrorCode, PodRef, PortRole, PortSpec};
use vswitch_api::MacAddr;

use crate::addresses::Addresses;
use crate::client::{ClientError, Vswitch};
use crate::ipam::{Ipam, IpamError};
use crate::podnet::{self, PodInterface, PodNetError};
use crate::spec::{
    add_result, Attachment, CniError, CniResult, Code, Environment, IpConfig, IpamSource, NetConf, PodIps,
};

impl From<IpamError> for CniError {
    fn from(e: IpamError) -> Self {
        match e {
            IpamError::Exhausted(_) => CniError::with_details(Code::PoolExhausted, "no free address", e),
            IpamError::Taken { .. } | IpamError::OwnerHasAnother { .. } => {
                CniError::with_details(Code::AddressTaken, "the requested address is not available", e)
            }
            IpamError::OutOfRange { .. } => {
                CniError::with_details(Code::InvalidConfig, "the requested address is not in this network", e)
            }
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
            // Busy for a moment (handing over to an upgrade, a netlink hiccup): the runtime retries.
            ClientError::Api(ref api) if api.code == ErrorCode::Unavailable => {
                CniError::with_details(Code::TryAgainLater, "vswitchd is busy", e)
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

pub use vswitch_api::api::port_name;

/// The pod's MAC: locally administered, derived from its IPv4 address (an IPv6-only pod's: the
/// last four bytes of its IPv6 address), so it is stable across re-attachments and easy to read
/// in a capture.
pub fn pod_mac(ips: PodIps) -> MacAddr {
    let v6_tail = |v6: std::net::Ipv6Addr| v6.octets()[12..].try_into().expect("four bytes");
    MacAddr::local_from(ips.v4.map(|v4| v4.octets()).or_else(|| ips.v6.map(v6_tail)).unwrap_or_default())
}

/// What an invocation did, for the log line.
#[derive(Debug, Default, Clone)]
pub struct Notes {
    /// The pod's addresses (assigned, checked or released).
    pub addresses: PodIps,
    /// Things done differently than usual (vswitchd unreachable, ...).
    pub warnings: Vec<String>,
}

#[derive(Debug)]
pub struct Plugin {
    pub conf: NetConf,
    pub env: Environment,
    pub notes: RefCell<Notes>,
}

/// Is `ns` a path GC may trust to still name the sandbox it was recorded for? `/proc/PID/ns/net`
/// may name another process's namespace once the PID is reused; bind mounts (`/run/netns/...`,
/// what Kubernetes runtimes use) do not move.
pub(crate) fn stable_netns_path(ns: &Path) -> bool {
    !ns.starts_with("/proc")
}

impl Plugin {
    pub fn new(conf: NetConf, env: Environment) -> Plugin {
        Plugin { conf, env, notes: RefCell::default() }
    }

    /// The node-local store (`ipam.type` local).
    fn ipam(&self) -> Ipam {
        Ipam::new(
            &self.conf.ipam_dir(),
            self.conf.ipam.ranges.clone(),
            Duration::from_secs(self.conf.ipam.reuse_delay_seconds),
        )
    }

    fn addresses(&self) -> Addresses {
        match self.conf.ipam.source {
            IpamSource::Local => Addresses::Local(self.ipam()),
            IpamSource::Vswitchd => Addresses::Cluster(self.vswitch()),
        }
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

    fn warn(&self, warning: String) {
        self.notes.borrow_mut().warnings.push(warning);
    }

    fn note_addresses(&self, ips: PodIps) {
        if !ips.is_empty() {
            self.notes.borrow_mut().addresses = ips;
        }
    }

    /// The sandbox must exist (code 3) and must not be the node's own namespace (code 4).
    fn check_sandbox(&self, netns: &Path) -> Result<(), CniError> {
        match std::fs::metadata(netns) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(CniError::with_details(Code::UnknownContainer, "network namespace does not exist", netns.display()))
            }
            Err(e) => Err(CniError::with_details(Code::IoFailure, format!("network namespace {}", netns.display()), e)),
            Ok(_) => self.refuse_node_netns(netns),
        }
    }

    fn refuse_node_netns(&self, netns: &Path) -> Result<(), CniError> {
        if podnet::is_node_netns(netns).unwrap_or(false) {
            return Err(CniError::with_details(
                Code::InvalidEnvironment,
                "CNI_NETNS is the node's own network namespace, not a pod's",
                netns.display(),
            ));
        }
        Ok(())
    }

    fn interface<'a>(&'a self, owner: &'a Attachment, ips: PodIps, mac: MacAddr) -> PodInterface<'a> {
        PodInterface {
            ifname: &owner.ifname,
            mac,
            mtu: self.conf.mtu,
            ips,
            gateway: self.conf.gateway,
            gateway6: self.conf.gateway6(),
            gateway_mac: self.conf.gateway_mac(),
        }
    }

    /// The static addresses asked for by `runtimeConfig.ips` or `CNI_ARGS IP=` (they must agree).
    fn requested_ips(&self, from_runtime: PodIps) -> Result<PodIps, CniError> {
        match (from_runtime, self.env.args.ips) {
            (a, b) if !a.is_empty() && !b.is_empty() && a != b => Err(CniError::new(
                Code::InvalidConfig,
                format!("runtimeConfig.ips asks for {a} but CNI_ARGS IP= for {b}"),
            )),
            (a, b) if a.is_empty() => Ok(b),
            (a, _) => Ok(a),
        }
    }

    fn requested_mac(&self, from_runtime: Option<MacAddr>) -> Result<Option<MacAddr>, CniError> {
        match (from_runtime, self.env.args.mac) {
            (Some(a), Some(b)) if a != b => Err(CniError::new(
                Code::InvalidConfig,
                format!("runtimeConfig.mac asks for {a} but CNI_ARGS MAC= for {b}"),
            )),
            (a, b) => Ok(a.or(b)),
        }
    }

    fn pod_ref(&self) -> Option<PodRef> {
        match (&self.env.args.pod_namespace, &self.env.args.pod_name) {
            (Some(namespace), Some(name)) => Some(PodRef { namespace: namespace.clone(), name: name.clone() }),
            _ => None,
        }
    }

    pub fn add(&self) -> Result<CniResult, CniError> {
        let owner = self.owner();
        let netns = self.netns();
        self.check_sandbox(&netns)?;
        let runtime = self.conf.runtime()?;
        let prev = self.conf.previous_result()?;
        let requested_ips = self.requested_ips(runtime.ips)?;
        let requested_mac = self.requested_mac(runtime.mac)?;
        // Fail before touching anything when the switch is down: the runtime retries later.
        self.vswitch().status()?;
        // An interface of that name is not ours to replace or delete (the runtime calls ADD
        // once per container and interface; a failed ADD of ours leaves nothing behind).
        if vswitch_host::link::exists_in(&netns, &owner.ifname).map_err(PodNetError::from)? {
            return Err(PodNetError::Exists(owner.ifname.clone()).into());
        }

        if self.conf.ipam.source == IpamSource::Local {
            self.release_vanished_sandboxes()?;
        }

        let mut undo: Vec<Box<dyn FnOnce()>> = Vec::new();
        let result = (|| {
            let addresses = self.addresses();
            let (ips, new) = addresses.assign(
                &owner,
                requested_ips,
                self.conf.families(),
                &netns,
                self.pod_ref(),
                runtime.sticky,
            )?;
            if new {
                let owner = owner.clone();
                undo.push(Box::new(move || drop(addresses.release(&owner))));
            }
            let mac = requested_mac.unwrap_or_else(|| pod_mac(ips));
            let interface = self.interface(&owner, ips, mac);
            match podnet::create(&netns, interface) {
                // Appeared since the check above: still not ours.
                Err(e @ PodNetError::Exists(_)) => return Err(e.into()),
                created => {
                    let (netns, ifname) = (netns.clone(), owner.ifname.clone());
                    undo.push(Box::new(move || drop(podnet::remove(&netns, &ifname))));
                    created?;
                }
            }
            let name = port_name(&owner);
            let spec = PortSpec {
                name: name.clone(),
                netns: netns.clone(),
                ifname: owner.ifname.clone(),
                ip: ips.v4,
                ipv6: ips.v6,
                mac,
                mtu: Some(self.conf.mtu),
                pod: self.pod_ref(),
                bandwidth: runtime.bandwidth,
            };
            // The port outlived its TAP (deleted behind our back): replace it.
            match self.vswitch().add_port(spec.clone()) {
                Err(e) if e.code() == Some(ErrorCode::Exists) => {
                    self.vswitch().del_port(&name, false)?;
                    self.vswitch().add_port(spec)?;
                }
                other => drop(other?),
            }
            let vswitch = self.vswitch();
            undo.push(Box::new(move || drop(vswitch.del_port(&name, true))));
            // A tentative IPv6 address cannot be used yet; DAD only starts once vswitchd has
            // attached the TAP (carrier up), so this waits here.
            if let Some(v6) = ips.v6 {
                podnet::settle(&netns, &owner.ifname, &[v6, mac.link_local()], podnet::SETTLE_TIMEOUT)?;
            }
            self.note_addresses(ips);
            Ok(add_result(&self.conf, prev, &owner.ifname, mac, &netns, ips))
        })();
        if result.is_err() {
            for step in undo.into_iter().rev() {
                step();
            }
        }
        result
    }

    /// The node-local ranges: first give back the addresses of sandboxes that vanished without
    /// a DEL (`vanished`), so that a runtime that never sends GC does not leak them for ever.
    fn release_vanished_sandboxes(&self) -> Result<(), CniError> {
        let swept = crate::vanished::sweep(&self.ipam(), &self.vswitch())?;
        for gone in &swept.released {
            let sandbox = gone.netns.as_deref().map_or_else(String::new, |ns| ns.display().to_string());
            self.warn(format!(
                "released {} of {}: its sandbox {sandbox} vanished without a DEL",
                gone.ips, gone.owner.container_id
            ));
        }
        for problem in swept.problems {
            self.warn(problem);
        }
        Ok(())
    }

    pub fn del(&self) -> Result<(), CniError> {
        let owner = self.owner();
        let netns = self.env.netns.as_deref();
        if let Some(ns) = netns {
            self.refuse_node_netns(ns)?;
        }
        self.detach(&owner, netns)
    }

    /// Removes the port, the TAP (if the namespace is known and still there) and the address.
    ///
    /// vswitchd deletes the TAP of a port it knows right after detaching it, without making DEL
    /// wait for the kernel to unregister the device (tens of milliseconds on a busy node); a TAP
    /// vswitchd never knew (an ADD that died half-way), or any TAP while vswitchd is
    /// unreachable, is deleted here. Unreachable, the port stays in vswitchd until it notices
    /// the TAP is gone (running) or drops it at restore (restarting).
    fn detach(&self, owner: &Attachment, netns: Option<&Path>) -> Result<(), CniError> {
        let name = port_name(owner);
        let device_removed = match self.vswitch().del_port(&name, true) {
            Ok(()) => true,
            Err(e) if e.code() == Some(ErrorCode::NotFound) => false,
            Err(e) if e.code().is_none() => {
                self.warn(format!(
                    "{e}; removed the TAP and released the address without it: vswitchd drops the stale port {name} \
                     once it sees the TAP gone (or on restart)"
                ));
                false
            }
            Err(e) => return Err(e.into()),
        };
        let removal = match (device_removed, netns) {
            (false, Some(ns)) => podnet::remove(ns, &owner.ifname),
            _ => Ok(()),
        };
        let released = match self.addresses().release(owner) {
            // vswitchd holds the cluster's addresses: unreachable, it releases this one itself
            // once the sandbox is gone (a DEL never waits on vswitchd).
            Err(e) if e.code == Code::TryAgainLater && self.conf.ipam.source == IpamSource::Vswitchd => {
                self.warn(format!("{e}; vswitchd releases the address once it sees the sandbox gone"));
                PodIps::default()
            }
            other => other?,
        };
        self.note_addresses(released);
        removal?;
        Ok(())
    }

    pub fn check(&self) -> Result<(), CniError> {
        let owner = self.owner();
        let netns = self.netns();
        self.check_sandbox(&netns)?;
        let prev =
            self.conf.previous_result()?.ok_or_else(|| CniError::new(Code::InvalidConfig, "CHECK needs prevResult"))?;
        // Our address in prevResult: the IP entry pointing at our interface (by name in this
        // sandbox), or the first one when the result has no interface indexes.
        let ours = prev.interfaces.iter().position(|i| {
            i.name == owner.ifname && i.sandbox.as_deref().is_none_or(|s| s.is_empty() || Path::new(s) == netns)
        });
        let pick = |keep: &dyn Fn(&IpConfig) -> bool| -> Vec<IpAddr> {
            prev.ips.iter().filter(|e| keep(e)).map(|e| e.address.ip).collect()
        };
        let mut addresses = pick(&|e| ours.is_some_and(|i| e.interface == Some(i)));
        if addresses.is_empty() {
            addresses = pick(&|e| e.interface.is_none());
        }
        if addresses.is_empty() {
            addresses = pick(&|_| true).into_iter().take(1).collect();
        }
        let expected = PodIps::from_ips(addresses)
            .map_err(|e| CniError::with_details(Code::InvalidConfig, "prevResult's addresses", e))?;
        let ips = self.addresses().lookup(&owner)?;
        if ips.is_empty() {
            return Err(CniError::new(Code::UnknownContainer, "no address is reserved for this container"));
        }
        self.note_addresses(ips);
        if expected != ips {
            return Err(CniError::with_details(
                Code::InvalidConfig,
                "prevResult's addresses are not the reserved ones",
                format!("{expected} vs {ips}"),
            ));
        }
        // MAC and MTU are not compared: a chained plugin (tuning) may have changed them.
        let mac = self.requested_mac(self.conf.runtime()?.mac)?.unwrap_or_else(|| pod_mac(ips));
        podnet::check(&netns, self.interface(&owner, ips, mac))?;
        let name = port_name(&owner);
        let ports = self.vswitch().ports()?;
        let port = ports
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| CniError::new(Code::SwitchRefused, format!("vswitchd has no port {name}")))?;
        if !matches!(port.role, PortRole::Pod { ip, ipv6, .. } if ip == ips.v4 && ipv6 == ips.v6) {
            return Err(CniError::new(Code::SwitchRefused, format!("vswitchd's port {name} has other addresses")));
        }
        if port.link != vswitch_api::api::LinkState::Up {
            return Err(CniError::new(Code::SwitchRefused, format!("vswitchd's port {name} lost its TAP")));
        }
        Ok(())
    }

    /// Removes every attachment of this network that is not in the valid lists (both keys).
    ///
    /// Keeps going past failures: each stale attachment loses its port (vswitchd deletes the
    /// TAP), or, with vswitchd unreachable, its TAP (removed here, where the sandbox is known)
    /// and in any case its address, except when vswitchd answered and refused to drop the port
    /// (the address stays with the port then). What could not be done is reported at the end.
    pub fn gc(&self) -> Result<(), CniError> {
        if self.conf.ipam.source == IpamSource::Vswitchd {
            return self.gc_cluster();
        }
        let keep = self.conf.keep_attachments();
        let mut failures = Vec::new();
        let mut unreachable = false;
        let ports = match self.vswitch().ports() {
            Ok(ports) => Some(ports),
            Err(e) => {
                unreachable = true;
                failures.push(format!("listing ports: {e}"));
                None
            }
        };
        let allocations = self.ipam().allocations_with_sandbox()?;
        let stale: Vec<_> = allocations.into_iter().filter(|a| !keep.contains(&a.owner)).collect();
        for allocation in &stale {
            let owner = &allocation.owner;
            let name = port_name(owner);
            let known = ports.as_ref().and_then(|ps| ps.iter().find(|p| p.name == name));
            let netns = known.and_then(|p| p.netns.clone()).or_else(|| allocation.netns.clone());
            let mut device_removed = false;
            if ports.is_some() {
                match self.vswitch().del_port(&name, true) {
                    Ok(()) => device_removed = true,
                    Err(e) if e.code() == Some(ErrorCode::NotFound) => {}
                    Err(e) if e.code().is_none() => {
                        unreachable = true;
                        failures.push(format!("{name}: {e}"));
                    }
                    Err(e) => {
                        failures
                            .push(format!("{name}: vswitchd kept the port, so {} stays reserved: {e}", allocation.ips));
                        continue;
                    }
                }
            }
            if !device_removed {
                match netns {
                    Some(ns) if stable_netns_path(&ns) && !podnet::is_node_netns(&ns).unwrap_or(false) => {
                        if let Err(e) = podnet::remove(&ns, &owner.ifname) {
                            failures.push(format!("{name}: removing {} in {}: {e}", owner.ifname, ns.display()));
                        }
                    }
                    Some(ns) => failures.push(format!(
                        "{name}: its TAP in {} is left alone (a /proc path may name another sandbox now)",
                        ns.display()
                    )),
                    None if ports.is_none() => {
                        failures.push(format!("{name}: its sandbox is unknown, so its TAP is left for vswitchd"))
                    }
                    None => {}
                }
            }
            if let Err(e) = self.ipam().release(owner) {
                failures.push(format!("{name}: releasing {}: {e}", allocation.ips));
            }
        }
        if failures.is_empty() {
            return Ok(());
        }
        let code = if unreachable { Code::TryAgainLater } else { Code::SwitchRefused };
        Err(CniError::with_details(
            code,
            format!("GC removed what it could of {} stale attachments; {} problems", stale.len(), failures.len()),
            failures.join("; "),
        ))
    }

    /// GC with vswitchd's IPAM: vswitchd knows every port and address of this node, so it is
    /// asked to drop the stale ports (and their TAPs) and then the stale addresses.
    fn gc_cluster(&self) -> Result<(), CniError> {
        let keep = self.conf.keep_attachments();
        let vswitch = self.vswitch();
        let mut failures = Vec::new();
        for port in vswitch.ports()? {
            if !matches!(port.role, PortRole::Pod { .. }) {
                continue;
            }
            let Some((container_id, ifname)) = port.name.rsplit_once(':') else { continue };
            let owner = Attachment { container_id: container_id.into(), ifname: ifname.into() };
            if keep.contains(&owner) {
                continue;
            }
            match vswitch.del_port(&port.name, true) {
                Ok(()) => {}
                Err(e) if e.code() == Some(ErrorCode::NotFound) => {}
                Err(e) => failures.push(format!("{}: {e}", port.name)),
            }
        }
        match vswitch.ipam_gc(keep) {
            Ok(released) => {
                // The log line names one address per family; GC may have released many.
                let mut first = PodIps::default();
                for ip in released.released {
                    let _ = first.add(ip);
                }
                self.note_addresses(first);
            }
            Err(e) => failures.push(format!("releasing stale addresses: {e}")),
        }
        if failures.is_empty() {
            return Ok(());
        }
        Err(CniError::with_details(Code::SwitchRefused, "GC could not remove everything", failures.join("; ")))
    }

    /// Ready for ADDs: vswitchd answers (51 otherwise: existing pods may have limited
    /// connectivity) and the pool has an address (50 otherwise).
    pub fn status(&self) -> Result<(), CniError> {
        self.vswitch().status().map_err(|e| {
            CniError::with_details(
                Code::LimitedConnectivity,
                "vswitchd is unreachable: no new pods, and existing ones may have limited connectivity",
                e,
            )
        })?;
        if !self.addresses().can_assign()? {
            return Err(CniError::new(Code::NotAvailable, "the address pool is empty"));
        }
        Ok(())
    }
}
