//! Shared helpers for the benchmarks.

use std::path::PathBuf;

/// A file of the RIS route data set in `shared/data/routes` beside the repository.
pub fn route_data(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/routes").join(name);
    assert!(path.exists(), "{} is missing: the benchmarks need the RIS tables", path.display());
    path
}
