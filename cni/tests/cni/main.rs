//! vpc-cni called exactly as a container runtime calls it (CNI_* environment, config on stdin,
//! result or error JSON on stdout), against a real vswitchd, in real namespaces. Needs root.

mod gc;
mod ipv6;
mod lab;
mod lifecycle;
mod options;
mod refusals;
