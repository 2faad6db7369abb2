//! Shared pieces of the benchmarks: the measurements `vpc-bench` runs (the FIB benches' route
//! data is `fib::testdata`'s).

pub mod cni_latency;
pub mod e2e;
pub mod ipam;
pub mod ipam_provider;
pub mod ipam_scale;
pub mod scale;
pub mod tap_cost;
pub mod udp_flood;
pub mod udp_gso;
