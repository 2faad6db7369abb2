#!/usr/bin/env bash
# What the lab and the tests need on a fresh Debian 12 machine (as root).
set -euo pipefail
# protobuf-compiler and libprotobuf-dev (google/protobuf/*.proto) build the etcd and CRI clients;
# etcd-server, etcd-client and openssl run the tests' TLS etcd clusters; nftables enforces the
# lab VPC's SDN (`--vpc ucloud`); python3-venv holds UCloud's own Python SDK, which the VPC API
# tests drive the lab's API with.
packages=(iproute2 iperf3 iputils-ping iptables containernetworking-plugins
    containerd runc protobuf-compiler libprotobuf-dev busybox-static
    etcd-server etcd-client openssl nftables python3-venv)
missing=()
for p in "${packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# UCloud's Python SDK, pinned, in a venv of its own (Debian's pip refuses system-wide installs);
# tests/src/lab/vpc_api.rs looks for it at this path.
venv=/opt/vpc-lab-venv
sdk=ucloud-sdk-python3==0.11.150
if ! "$venv/bin/python" -c 'import ucloud.services.vpc' >/dev/null 2>&1 \
    || [ "$("$venv/bin/pip" show ucloud-sdk-python3 2>/dev/null | sed -n 's/^Version: //p')" != "${sdk#*==}" ]; then
    /usr/bin/python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$sdk"
fi
