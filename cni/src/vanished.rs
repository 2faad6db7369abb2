//! Node-local addresses of sandboxes that vanished without a DEL (containerd's state wiped, a
//! node crash): CNI GC would release them, but a runtime that never sends GC (containerd 1.6)
//! leaves them allocated for ever, and vswitchd leaves the plugin's file alone. Every ADD with the
//! node-local ranges first releases them, as a DEL would, when all of this holds:
//!
//! - the allocation recorded its sandbox, at a path that does not move (`/run/netns/...`, not a
//!   `/proc/PID` path another process may own now), and that path no longer exists;
//! - vswitchd has no port of the attachment, nor any port with one of its addresses: vswitchd
//!   marks a port whose namespace vanished `gone` and removes it after
//!   `gone_port_timeout_seconds` (300 s), its grace for late DELs; a namespace unmounted while a
//!   process still holds it looks vanished too, so the plugin never shortens that grace.
//!
//! A live pod has its namespace mounted and its port in vswitchd, so neither is ever true of it.
//! The released addresses wait out the reuse delay, as after a DEL.

use std::net::IpAddr;

use vswitch_api::api::{PortRole, PortView};

use crate::client::Vswitch;
use crate::ipam::{Allocation, Ipam, IpamError};
use crate::plugin::{port_name, stable_netns_path};

/// What a sweep released, for the ADD's log line.
#[derive(Debug, Default)]
pub struct Swept {
    pub released: Vec<Allocation>,
    /// Allocations of vanished sandboxes that could not be released (vswitchd unreachable, the
    /// state unwritable).
    pub problems: Vec<String>,
}

/// Allocations whose recorded sandbox path is stable and gone (no vswitchd call: the common
/// case, nothing vanished, costs one read of the state and a `stat` per pod).
fn candidates(ipam: &Ipam) -> Result<Vec<Allocation>, IpamError> {
    let all = ipam.allocations_with_sandbox()?;
    Ok(all.into_iter().filter(|a| a.netns.as_deref().is_some_and(|ns| stable_netns_path(ns) && !ns.exists())).collect())
}

/// Whether a pod port carries `ip`.
fn carries(port: &PortView, ip: IpAddr) -> bool {
    match (&port.role, ip) {
        (PortRole::Pod { ip: v4, .. }, IpAddr::V4(ip)) => *v4 == Some(ip),
        (PortRole::Pod { ipv6, .. }, IpAddr::V6(ip)) => *ipv6 == Some(ip),
        _ => false,
    }
}

/// Whether vswitchd has a port (live or `gone`) of the attachment or with one of its addresses.
fn has_port(ports: &[PortView], allocation: &Allocation) -> bool {
    let name = port_name(&allocation.owner);
    ports.iter().any(|p| p.name == name || allocation.ips.iter().any(|ip| carries(p, ip)))
}

/// Releases the allocations of vanished sandboxes (see the module's rules).
pub fn sweep(ipam: &Ipam, vswitch: &Vswitch) -> Result<Swept, IpamError> {
    let mut swept = Swept::default();
    let candidates = candidates(ipam)?;
    if candidates.is_empty() {
        return Ok(swept);
    }
    let ports = match vswitch.ports() {
        Ok(ports) => ports,
        Err(e) => {
            swept.problems.push(format!("listing vswitchd's ports: {e}"));
            return Ok(swept);
        }
    };
    for allocation in candidates {
        // vswitchd's grace is running (it logged the port gone): not ours to cut short.
        if has_port(&ports, &allocation) {
            continue;
        }
        let netns = allocation.netns.as_deref().expect("a candidate has a sandbox");
        match ipam.release_if_sandbox_gone(&allocation.owner, netns) {
            Ok(ips) if !ips.is_empty() => swept.released.push(allocation),
            Ok(_) => {}
            Err(e) => {
                swept.problems.push(format!("{}: releasing {}: {e}", port_name(&allocation.owner), allocation.ips))
            }
        }
    }
    Ok(swept)
}
