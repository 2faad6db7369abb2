//! What vswitchd and its clients share, kept small so the CNI plugin (a short-lived process run
//! for every pod) does not link the daemon's datapath.
//!
//! - [`api`]: the control protocol: one JSON request per line on a unix socket, one reply per
//!   line, typed on both sides, errors with a machine-readable [`api::ErrorCode`].
//! - [`client`]: the one blocking client (connect and read timeouts) used by vpc-cni and
//!   vswitchctl.
//! - [`netns`], [`link`], [`tap`]: entering a network namespace, netlink link helpers, and
//!   creating the persistent multi-queue TAP a pod's eth0 is.
//! - [`MacAddr`].

pub mod api;
pub mod client;
pub mod file;
pub mod link;
mod mac;
pub mod netns;
pub mod tap;

pub use mac::{MacAddr, MacParseError};
