//! The control plane: the sans-I/O [`registry`] (ports, adjacencies, routes, neighbours, the
//! published snapshot) and the I/O around it: the [`switch`] driver, the API socket and the
//! metrics endpoint ([`server`], [`metrics`]), the node's netlink plumbing ([`hostnet`]) and pod I/O ([`podio`]), the
//! state file ([`persist`]) and the configuration ([`config`]). The API types and client are in
//! the `vswitch-api` crate, re-exported here as [`api`].

pub mod config;
pub mod exposition;
pub mod handover;
pub mod hostnet;
pub mod ipam;
pub mod ipam_errors;
pub mod metrics;
pub mod persist;
pub mod podio;
pub mod registry;
pub mod server;
pub mod switch;
pub mod trace;

pub use config::Config;
pub use switch::{ControlError, Switch};
pub use vswitch_api::api;
