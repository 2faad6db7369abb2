//! `--version` on vpc-lab prints the crate version and exits 0.

use std::process::Command;

fn version_of(binary: &str, name: &str) {
    let out = Command::new(binary).arg("--version").output().expect("run");
    assert!(out.status.success(), "{name} --version: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("{name} {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn vpc_lab_prints_its_version() {
    version_of(env!("CARGO_BIN_EXE_vpc-lab"), "vpc-lab");
}
