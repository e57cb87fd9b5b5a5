#!/usr/bin/env bash
# Installs what s3backer-rs needs to build, demo and test, on Debian as root. Idempotent: a
# second run installs nothing. Usage: scripts/setup.sh [--with-s3]   (--with-s3: also the S3
# servers the tests use, Garage and s3s-fs, whose first builds take about 13 minutes, then
# reused, and Ceph's packages for the RGW tests).
set -euo pipefail
need=()
for pair in fusermount3:fuse3 mkfs.ext4:e2fsprogs e2fsck:e2fsprogs fio:fio losetup:mount \
            pkg-config:pkg-config cc:gcc curl:curl strace:strace unshare:util-linux pgrep:procps \
            /usr/bin/python3:python3 openssl:openssl mksquashfs:squashfs-tools mkfs.erofs:erofs-utils; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
[ -x /usr/bin/s3backer ] || need+=(s3backer)
# NBD tests: libnbd's tools and Python module, qemu's NBD clients, nbd-client.
for pair in nbdinfo:libnbd-bin nbdcopy:libnbd-bin nbdfuse:libnbd-bin qemu-io:qemu-utils \
            qemu-storage-daemon:qemu-utils nbd-client:nbd-client; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
[ -f /usr/lib/python3/dist-packages/nbd.py ] || need+=(python3-libnbd)
if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing ${need[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
fi
# The Debian package's tools: lintian checks it; promtool (package prometheus, about 19 MB to
# download, 96 MB installed) checks the metrics format. The Prometheus server it also brings is
# not started.
pkg=()
command -v lintian >/dev/null 2>&1 || pkg+=(lintian)
command -v promtool >/dev/null 2>&1 || pkg+=(prometheus)
if [ ${#pkg[@]} -gt 0 ]; then
    echo "setup: installing ${pkg[*]}" >&2
    [ ${#need[@]} -gt 0 ] || apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkg[@]}" >/dev/null
fi
command -v cargo >/dev/null 2>&1 || [ -x "$HOME/.cargo/bin/cargo" ] || {
    echo "setup: cargo (Rust 1.95 or newer) is required" >&2; exit 1; }
export PATH="$HOME/.cargo/bin:$PATH"
# The test command checks style with rustfmt and clippy.
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    command -v rustup >/dev/null 2>&1 && rustup component add rustfmt clippy >/dev/null
fi
# cargo-deb builds the Debian package (scripts/deb.sh); pinned, so its behaviour is the one
# tested. Its build takes about 2.5 minutes on 2 cores, once.
if ! cargo deb --version 2>/dev/null | grep -qx "cargo-deb 3.8.0"; then
    echo "setup: building cargo-deb (once, about 3 minutes)" >&2
    cargo install cargo-deb@3.8.0 --locked --quiet
fi
if [ "${1:-}" = "--with-s3" ]; then
    if ! command -v garage >/dev/null 2>&1; then
        echo "setup: building the Garage S3 server (once, about 10 minutes)" >&2
        cargo install garage@2.5.0 --locked --quiet
    fi
    if ! command -v s3s-fs >/dev/null 2>&1; then
        echo "setup: building the s3s-fs S3 server (once, about 3 minutes)" >&2
        cargo install s3s-fs@0.14.1 --features binary --locked --quiet
    fi
    # Ceph from Debian's packages: the RGW tests' cluster, and RBD for benches/ceph.py.
    ceph=()
    for p in ceph-mon ceph-osd ceph-mgr radosgw ceph-common; do
        dpkg -s "$p" >/dev/null 2>&1 || ceph+=("$p")
    done
    if [ ${#ceph[@]} -gt 0 ]; then
        echo "setup: installing ${ceph[*]} (about a minute)" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${ceph[@]}" >/dev/null
    fi
fi
# Loop devices and FUSE must be usable (CI and a root shell on Debian have both).
[ -e /dev/fuse ] || modprobe fuse 2>/dev/null || true
[ -e /dev/loop-control ] || modprobe loop 2>/dev/null || true
