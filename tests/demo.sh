#!/usr/bin/env bash
# The main job, on a fresh Debian 12 machine, as root: stand up the lab VPC on this machine,
# attach pods through the real vpc-cni, show every communication path working, measure
# pod-to-pod iperf3, and take it all down. Arguments go to `vpc-lab demo` (e.g. --mode uplink).
set -euo pipefail
cd "$(dirname "$0")/.."
tests/install-deps.sh
cargo build --release --workspace --locked
exec target/release/vpc-lab demo "$@"
