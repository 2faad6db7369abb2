//! What vswitchd and its clients share, kept small so the CNI plugin (a short-lived process run
//! for every pod) does not link the daemon's datapath.
//!
//! - [`api`]: the control protocol: one JSON request per line on a unix socket, one reply per
//!   line, typed on both sides, errors with a machine-readable [`api::ErrorCode`].
//! - [`client`]: the one blocking client (connect and read timeouts) used by vpc-cni and
//!   vswitchctl.
//! - [`defaults`]: the values vswitchd.toml and the conflist must agree on, when neither says.
//! - [`sticky`]: a pod's request for a sticky address, from its annotations.
//! - [`MacAddr`].
//!
//! What both sides do to the host (TAPs, namespaces, links, files) is `vswitch-host`.

pub mod api;
pub mod client;
pub mod defaults;
mod mac;
pub mod sticky;

pub use mac::{MacAddr, MacParseError};
