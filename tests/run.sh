#!/usr/bin/env bash
# The whole test suite, on a fresh Debian 12 machine, as root (the namespace tests need it).
# Installs what the tests use, builds every binary, runs every test. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(iproute2 iperf3 iputils-ping containernetworking-plugins)
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

cargo build --release --workspace --locked
cargo test --release --workspace --locked
