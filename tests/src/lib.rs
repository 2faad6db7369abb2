//! The VPC lab on one machine: real network namespaces, pods wired like vpc-cni wires them, and
//! vswitchd daemons. Used by the end-to-end tests of every crate.

pub mod netns;
