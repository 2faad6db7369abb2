#!/usr/bin/env bash
# The whole test suite, on a fresh Debian 12 machine, as root (the namespace tests need it).
# Installs what the tests use, builds every binary, runs every test. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
tests/install-deps.sh
# Habits the whole workspace holds: rustfmt's layout and no clippy warnings.
cargo fmt --all --check
# The shipped manifests against Kubernetes' schemas and yamllint.
tests/manifests.sh
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --release --workspace --locked
cargo test --release --workspace --locked
tests/fuzz.sh
