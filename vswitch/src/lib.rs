//! The per-node userspace switch.
//!
//! - [`wire`]: zero-copy header views; knows no ports.
//! - [`pipeline`]: what happens to one frame; knows no file descriptors or clocks.
//! - [`state`]: the forwarding snapshot (ports, adjacencies, FIB) workers read.
//! - `port`, `datapath`: TAP devices and the worker poll loops: the only code touching the OS
//!   on the packet path.
//! - [`ipam`]: cluster-wide address allocation (etcd or a node-local file).
//! - `control`: the control plane: API socket, port registry, persistence, metrics.

pub mod control;
pub mod datapath;
pub mod ipam;
pub mod neighbor;
pub mod pipeline;
pub mod port;
pub mod state;
pub mod wire;
