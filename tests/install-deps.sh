#!/usr/bin/env bash
# What the lab and the tests need on a fresh Debian 12 machine (as root).
set -euo pipefail
cd "$(dirname "$0")/.."
# protobuf-compiler and libprotobuf-dev (google/protobuf/*.proto) build the etcd and CRI clients;
# etcd-server, etcd-client and openssl run the tests' TLS etcd clusters; prometheus (with
# promtool) and curl check the metrics endpoint as Prometheus takes it; nftables enforces the lab
# VPC's SDN (`--vpc ucloud`) and ipvsadm its load balancer (IPVS, standing in for UCloud's ULB;
# where the kernel has no IPVS the lab falls back to iptables DNAT); python3-venv holds the
# Python tools of tests/requirements.txt (UCloud's own SDK, which the VPC API tests drive the lab's API with,
# moto's EC2 server for the AWS provider's tests, and the manifest checks);
# buildah and binutils (strip) build the DaemonSet's image (cni/deploy/build-image.sh).
packages=(iproute2 iperf3 iputils-ping iptables containernetworking-plugins
    containerd runc protobuf-compiler libprotobuf-dev busybox-static
    etcd-server etcd-client openssl curl prometheus nftables ipvsadm python3-venv buildah binutils)
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# Python tools (tests/requirements.txt, pinned) in their own venv, built from Debian's python3
# so the machine's other Pythons don't matter (Debian's pip refuses system-wide installs); rebuilt
# when the requirements change. tests/src/lab/vpc_api.rs looks for the SDK at this path.
venv=/opt/vpc-lab-venv
if ! cmp -s tests/requirements.txt "$venv/requirements.txt" 2>/dev/null; then
    rm -rf "$venv"
    /usr/bin/python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r tests/requirements.txt
    cp tests/requirements.txt "$venv/requirements.txt"
fi
