#!/usr/bin/env bash
# Side-by-side benchmarks: C s3backer 1.5.4 vs s3backer-rs on the same local Garage S3 server,
# at 0 ms and 20 ms added round-trip latency. Writes benches/RESULTS.md and benches/results.json.
# Run as root on Debian:  bash benches/run.sh [--quick] [harness options, see --help]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --with-s3
# The NBD benchmarks' peer, `nbdkit S3` (--systems nbdkit-s3); the tests do not need it.
if ! dpkg -s nbdkit-plugin-python python3-boto3 >/dev/null 2>&1; then
    echo "run.sh: installing nbdkit-plugin-python python3-boto3" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq nbdkit-plugin-python python3-boto3 >/dev/null
fi
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --quiet --bin s3backer
cargo build --release --quiet -p s3b-netsim
exec python3 benches/harness.py "$@"
