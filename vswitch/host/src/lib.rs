//! The host side of the contract between vswitchd and vpc-cni: both open the same TAP devices
//! and enter the same namespaces, so both do it with this code (cloud-hypervisor's `net_util`
//! and the CNI plugins' `pkg/ns` and `pkg/ip` are the models).
//!
//! - [`tap`]: `TUNSETIFF` with the flags every queue of a pod's TAP shares, interface-name
//!   validation, persistent creation.
//! - [`netns`]: running a closure inside another network namespace, on a thread of its own.
//! - [`link`]: netlink link helpers (look up, delete, `noqueue`), run inside a namespace.
//! - [`file`]: crash-safe file replacement.
//!
//! Nothing here knows the API or the datapath; the daemon adds its offloads to the queues it
//! opens (`vswitch::port::tap`).

pub mod file;
pub mod link;
pub mod netns;
pub mod tap;
