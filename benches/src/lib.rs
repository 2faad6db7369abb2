//! Shared pieces of the benchmarks: route data for the FIB benches, and the measurements
//! `vpc-bench` runs.

use std::path::PathBuf;

pub mod cni_latency;
pub mod e2e;
pub mod ipam;
pub mod scale;
pub mod tap_cost;
pub mod udp_flood;
pub mod udp_gso;

/// A file of the RIS route data set in `shared/data/routes` beside the repository.
pub fn route_data(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/routes").join(name);
    assert!(path.exists(), "{} is missing: the benchmarks need the RIS tables", path.display());
    path
}
