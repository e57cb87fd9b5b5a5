#!/usr/bin/env bash
# Builds the Debian package target/debian/s3backer-rs_<version>-1_amd64.deb: the release binary
# as /usr/bin/s3backer, the man page, bash/zsh/fish completions generated from the command-line
# definition, README, CHANGES and copyright under /usr/share/doc/s3backer-rs, and example
# systemd units. It conflicts with, replaces and provides Debian's C s3backer package.
# Needs cargo-deb (scripts/setup.sh installs it). Extra arguments go to cargo deb.
# Install with: apt install ./target/debian/s3backer-rs_*_amd64.deb
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked
cargo run --release --locked --quiet -p s3b-cli --example completions -- target/completions >/dev/null
cargo deb --no-build --strip "$@"
