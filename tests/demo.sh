#!/usr/bin/env bash
# The main job, on a fresh Debian 12 machine, as root: stand up the lab VPC on this machine,
# attach pods through the real vpc-cni, show every communication path working, measure
# pod-to-pod iperf3, and take it all down.
#
# Without arguments it runs three labs, one after the other:
#   1. the VPC as a cloud runs it (--vpc ucloud, the default): an SDN that delivers only
#      addresses registered through the VPC API, pods' IPv4 addresses as secondary IPs of their
#      node's NIC, three nodes, the unregistered-address, load-balancer and sticky-move rows;
#   2. the same SDN programmed from EC2's view (--vpc aws): moto with the lab's proxy as the
#      VPC's EC2, pods' addresses as secondary private IPs of each node's ENI, three nodes, the
#      same rows (the sticky move with AllowReassignment);
#   3. a plain L2 network with the cluster's own allocator on etcd (--vpc l2 --ipam etcd),
#      dual stack: every path over IPv4 and IPv6.
# With arguments, one lab: they go to `vpc-lab demo` (e.g. --mode uplink, --vpc l2).
set -euo pipefail
cd "$(dirname "$0")/.."
tests/install-deps.sh
cargo build --release --workspace --locked
if [ "$#" -gt 0 ]; then
    exec target/release/vpc-lab demo "$@"
fi
target/release/vpc-lab demo --nodes 3
target/release/vpc-lab demo --nodes 3 --vpc aws
target/release/vpc-lab demo --vpc l2 --ipam etcd --ip-family dual
