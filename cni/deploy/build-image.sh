#!/usr/bin/env bash
# Builds the DaemonSet's image (vswitchd-daemonset.yaml) without a registry: Debian's buildah
# commits, from scratch, one layer holding
#   /usr/bin/vswitchd, /usr/bin/vswitchctl     the daemon and its CLI (the liveness probe)
#   /opt/cni/bin/vpc-cni                       the plugin the install-cni init container copies
#   /etc/vpc-cni/vpc-cni.conflist              the node's conflist, installed the same way
#   /bin/busybox and its applets in /bin       /bin/sh and the tools the init containers run
#   the shared libraries the binaries link     found with ldd (libc, libm, libgcc_s, ld.so)
# and writes it as an OCI archive tagged with the workspace version and the commit:
# localhost/vswitchd:0.1.0-abc1234 (with -dirty when the work tree has changes).
# cni/deploy/Containerfile builds the same layout where a registry is at hand.
#
# Usage: cni/deploy/build-image.sh [--bin-dir DIR] [--out DIR]
#   --bin-dir DIR  take vswitchd, vswitchctl and vpc-cni from DIR (default: build them with
#                  `cargo build --release --locked -p vswitch -p cni` and use target/release)
#   --out DIR      where the archive goes (default: target/image)
# Prints two lines on stdout: the image reference and the archive's path. Then, on a node:
#   ctr -n k8s.io images import ARCHIVE
# Needs buildah, busybox-static and binutils (tests/install-deps.sh installs them). Everything
# buildah stores lives in a temporary directory that is removed on exit.
set -euo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
bin_dir=""
out_dir="$repo/target/image"
while [ $# -gt 0 ]; do
    case "$1" in
        --bin-dir) bin_dir=${2:?--bin-dir needs a directory}; shift 2 ;;
        --out) out_dir=${2:?--out needs a directory}; shift 2 ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-image.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

fail() { echo "build-image.sh: $*" >&2; exit 1; }
command -v buildah >/dev/null || fail "buildah is not installed (apt-get install buildah)"
command -v strip >/dev/null || fail "strip is not installed (apt-get install binutils)"
busybox=/bin/busybox
[ -x "$busybox" ] || fail "$busybox is missing (apt-get install busybox-static)"
# A dynamic busybox (Debian's `busybox` package) would need libraries of its own.
if ldd "$busybox" >/dev/null 2>&1; then
    fail "$busybox is dynamically linked: install busybox-static"
fi

# The tag: the workspace's version and the commit the binaries were built from.
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\(.*\)"/\1/p' "$repo/Cargo.toml")
[ -n "$version" ] || fail "no [workspace.package] version in $repo/Cargo.toml"
commit=$(git -C "$repo" rev-parse --short=7 HEAD 2>/dev/null) || fail "$repo is not a git checkout"
if [ -n "$(git -C "$repo" status --porcelain --untracked-files=no)" ]; then
    commit="$commit-dirty"
fi
tag="$version-$commit"
image="localhost/vswitchd:$tag"

if [ -z "$bin_dir" ]; then
    (cd "$repo" && cargo build --release --locked -p vswitch -p cni >&2)
    bin_dir="${CARGO_TARGET_DIR:-$repo/target}/release"
fi
for b in vswitchd vswitchctl vpc-cni; do
    [ -x "$bin_dir/$b" ] || fail "$bin_dir/$b is missing"
done

work=$(mktemp -d "${TMPDIR:-/tmp}/vswitchd-image.XXXXXX")
store=(--root "$work/storage" --runroot "$work/run" --storage-driver vfs)
container=""
cleanup() {
    if [ -n "$container" ]; then buildah "${store[@]}" rm "$container" >/dev/null 2>&1 || true; fi
    # vfs leaves read-only directories behind; make them removable first.
    chmod -R u+w "$work" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# The image's root, staged as it will be in the layer. The binaries lose their debug
# sections (a fifth of the size; symbols stay for backtraces), as in the Containerfile.
root="$work/root"
install -D -m 0755 "$bin_dir/vswitchd" "$root/usr/bin/vswitchd"
install -D -m 0755 "$bin_dir/vswitchctl" "$root/usr/bin/vswitchctl"
install -D -m 0755 "$bin_dir/vpc-cni" "$root/opt/cni/bin/vpc-cni"
strip --strip-debug "$root/usr/bin/vswitchd" "$root/usr/bin/vswitchctl" "$root/opt/cni/bin/vpc-cni"
install -D -m 0644 "$repo/cni/vpc-cni.conflist" "$root/etc/vpc-cni/vpc-cni.conflist"
install -D -m 0755 "$busybox" "$root/bin/busybox"
# As `busybox --install -s /bin` makes them (the Containerfile's last step).
for applet in $("$busybox" --list); do
    [ -e "$root/bin/$applet" ] || ln -s /bin/busybox "$root/bin/$applet"
done
# Every library the binaries load, at the path ldd resolved it to, as a regular file (-L: on
# Debian, /lib64/ld-linux-x86-64.so.2 is a link into /lib/x86_64-linux-gnu).
libraries=$(ldd "$bin_dir/vswitchd" "$bin_dir/vswitchctl" "$bin_dir/vpc-cni" \
    | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// && $2 ~ /^\(0x/ { print $1 }' | sort -u)
for lib in $libraries; do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done

echo "building $image from $bin_dir" >&2
container=$(buildah "${store[@]}" from --name "vswitchd-image-$$" scratch)
buildah "${store[@]}" copy --quiet "$container" "$root/" / >/dev/null
buildah "${store[@]}" config \
    --env PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    --entrypoint '["/usr/bin/vswitchd"]' \
    --cmd '--config /etc/vswitchd/vswitchd.toml --log-json' \
    --label "org.opencontainers.image.title=vswitchd" \
    --label "org.opencontainers.image.version=$tag" \
    "$container"
mkdir -p "$out_dir"
archive="$(cd "$out_dir" && pwd)/vswitchd-$tag.oci.tar"
rm -f "$archive"
# The commit's time as the image's: the same sources give the same image.
created=$(git -C "$repo" log -1 --format=%ct)
buildah "${store[@]}" commit --quiet --format oci --timestamp "$created" --identity-label=false \
    "$container" "oci-archive:$archive:$image" >/dev/null
echo "$image"
echo "$archive"
