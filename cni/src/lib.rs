//! vpc-cni as a library: the plugin binary is a thin `main` over these modules, and the fuzz
//! targets reach the input parsers (`spec`) through it.

pub mod addresses;
pub mod client;
pub mod ipam;
pub mod log;
pub mod plugin;
pub mod podnet;
pub mod spec;
pub mod vanished;
