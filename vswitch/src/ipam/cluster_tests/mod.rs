//! The node agent against the node-local file store, with several "nodes" sharing one store
//! file: the same rules etcd enforces, without a cluster. The proof against a real etcd cluster
//! is in `vswitch/tests/ipam_etcd/`.

mod dual_stack;
mod faulty_store;
mod fixture;
mod leases;
mod lost_writes;
mod sharing;
