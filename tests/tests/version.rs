//! `--version` on every binary of the workspace prints its name and the workspace version and
//! exits 0 (vpc-cni's own, which must not read stdin, is tested in cni/tests/version.rs). The
//! binaries are the built ones beside this test (`cargo build --release --workspace` first).

use std::process::Command;

use vpc_lab::netns::binary;

#[test]
fn every_binary_prints_its_version() {
    for name in ["vswitchd", "vswitchctl", "vpc-lab", "vpc-bench", "fib"] {
        let out = Command::new(binary(name)).arg("--version").output().expect("run");
        assert!(out.status.success(), "{name} --version: {}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), format!("{name} {}", env!("CARGO_PKG_VERSION")));
    }
}
