//! The VPC lab on one machine: real network namespaces, pods wired by the real vpc-cni, and
//! vswitchd daemons. Used by the `vpc-lab` tool and by the end-to-end tests of every crate.
//! `cri` and `containerd` drive a real containerd through CRI, as kubelet does, and `kubelet`
//! runs a pod spec through them as kubelet would; `etcd` runs real TLS etcd clusters.

pub mod containerd;
pub mod cri;
pub mod ec2;
pub mod etcd;
pub mod kubelet;
pub mod lab;
pub mod netns;
