//! The control plane's I/O driver around the sans-I/O registry: a [`Switch`] made of parts, each
//! with one reason to change, wired together in `switch.rs`:
//!
//! - `publisher`: the registry behind its lock; stores each change's publication in the
//!   datapath and wakes the workers;
//! - `workers`: the forwarding threads, their counters and their health;
//! - `ports`: pod ports attached, detached and marked gone (their I/O through `podio`);
//! - `saver`: the state file written after every change;
//! - `uplink`: ARP, neighbour discovery and pod announcements sent on the VPC subnet;
//! - `slow_path`: neighbour resolution driven by what the workers hand up and by timers;
//! - `inspect`: `trace` and drop sampling, on the live state without changing it;
//! - `upgrade`: changes held off while an upgrade takes the state and queues over;
//! - `ipam`: the cluster IPAM's requests and upkeep;
//! - `startup`: the host port, the uplink and the saved state at start;
//! - `views` and `errors`: the edge, where the core's types and errors become the API's.
//!
//! Locking: the registry's mutex is only held for in-memory work. An attach reserves its name
//! and address, does its I/O unlocked, then commits.

mod errors;
mod inspect;
mod ipam;
mod ipam_errors;
mod ports;
mod provider_view;
mod publisher;
mod saver;
mod slow_path;
mod startup;
mod switch;
mod upgrade;
mod uplink;
mod views;
mod workers;

pub use errors::{ControlError, RequestError};
pub use ipam::IpamService;
pub use saver::SaveError;
pub use switch::Switch;
pub(crate) use uplink::gratuitous_arp;
pub use workers::Health;
