//! The control plane: the sans-I/O [`registry`] (ports, adjacencies, routes, neighbours, the
//! snapshot to publish) and the I/O around it: the [`driver`] (the [`Switch`] and its parts), the
//! API socket, the metrics endpoint and the timers ([`server`], [`metrics`]), the node's netlink
//! plumbing ([`hostnet`], [`eni`]: later ENIs' policy routing) and pod I/O ([`podio`]), the state file ([`persist`]), the upgrade
//! handover protocol ([`handover`]), `trace`'s frames ([`trace`]) and the configuration
//! ([`config`]). The API types and client are in the `vswitch-api` crate, re-exported here as
//! [`api`].

pub mod config;
pub mod driver;
pub mod eni;
pub mod exposition;
pub mod handover;
pub mod hostnet;
pub mod metrics;
pub mod persist;
pub mod podio;
pub mod registry;
pub mod server;
pub mod trace;

pub use config::Config;
pub use driver::{ControlError, Switch};
pub use vswitch_api::api;
