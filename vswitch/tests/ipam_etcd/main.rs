//! The cluster IPAM against a real etcd cluster (3 members, TLS with client certificates) and real
//! vswitchd processes, each in its own node namespace: nodes racing for a small pool while
//! daemons are killed and etcd members stopped, a partitioned node fenced when it returns, quorum
//! loss, and a node killed in the middle of an allocation. The unit tests with a file store
//! (`src/ipam/cluster_tests/`) show the rules; these show them hold against etcd.
//!
//! ```text
//!   etcd m0 (10.77.0.11)   m1 (.12)   m2 (.13)      each in its own namespace
//!            \              |          /
//!             fabric: a Linux bridge, 10.77.0.0/24
//!            /              |          \
//!   node n0 (10.77.0.21)   n1 (.22)   n2 (.23)      vswitchd in each
//! ```
//!
//! Needs root and etcd (tests/install-deps.sh); without them every test fails with a clear message.
//! Everything (namespaces, processes, directories) is unique per run and removed on drop, also
//! when a test fails. The tests take turns (see [`lab::one_at_a_time`]): they measure how quickly
//! things happen, on machines with two cores.

mod dual_stack;
mod fencing;
mod kill;
mod lab;
mod quorum;
mod race;
