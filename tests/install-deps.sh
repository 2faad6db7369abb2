#!/usr/bin/env bash
# What the lab and the tests need on a fresh Debian 12 machine (as root).
set -euo pipefail
# protobuf-compiler and libprotobuf-dev (google/protobuf/*.proto) build the etcd and CRI clients;
# etcd-server, etcd-client and openssl run the tests' TLS etcd clusters.
packages=(iproute2 iperf3 iputils-ping iptables containernetworking-plugins
    containerd runc protobuf-compiler libprotobuf-dev busybox-static
    etcd-server etcd-client openssl)
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
