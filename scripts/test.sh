#!/usr/bin/env bash
# Runs the whole s3backer-rs test suite: unit, property and end-to-end tests (real FUSE mounts,
# ext4 on loop devices, C s3backer 1.5.4 interop, a real S3 server on 127.0.0.1).
# Run as root on Debian: bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --with-s3
export PATH="$HOME/.cargo/bin:$PATH"
# Leftovers from an interrupted earlier run would make mounts fail.
for m in $(tac /proc/mounts | awk '$2 ~ /^\/tmp\/s3b-test-/ {print $2}'); do
    umount -l "$m" 2>/dev/null || true
done
# Style first: the tree is formatted with rustfmt.toml.
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# Every doc link resolves (the crates' docs describe the stack).
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --quiet
cargo test --workspace --no-fail-fast 2>&1 | tee /tmp/s3backer-test.log
