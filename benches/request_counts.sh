#!/usr/bin/env bash
# HTTP requests of one ext4 round trip, ours next to C s3backer 1.5.4, on a fresh Garage bucket
# each: mkfs.ext4 on a 256 MiB volume (64 KiB blocks), 200 files of random content written,
# unmounted, remounted and read back. Prints the http_* request lines of both stats files.
# Run as root: bash benches/request_counts.sh   (needs garage, /usr/bin/s3backer, a release build)
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --quiet --bin s3backer
OURS=$PWD/target/release/s3backer
[ -n "${CARGO_TARGET_DIR:-}" ] && OURS=$CARGO_TARGET_DIR/release/s3backer
work=$(mktemp -d /tmp/s3b-reqs-XXXXXX)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
rpc=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/garage.toml" <<TOML
metadata_dir = "$work/meta"
data_dir = "$work/data"
db_engine = "lmdb"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')"
[s3_api]
s3_region = "us-east-1"
api_bind_addr = "127.0.0.1:$port"
root_domain = ".s3.garage.localhost"
TOML
ID=GKs3backertest01; KEY=s3backer-test-secret-0123456789abcdef
GARAGE_DEFAULT_ACCESS_KEY=$ID GARAGE_DEFAULT_SECRET_KEY=$KEY GARAGE_DEFAULT_BUCKET=blocks RUST_LOG=warn \
    garage -c "$work/garage.toml" server --single-node --default-bucket >"$work/garage.log" 2>&1 &
gpid=$!
trap 'umount "$work/ext4" 2>/dev/null; umount "$work/mnt" 2>/dev/null; kill $gpid 2>/dev/null; rm -rf "$work"' EXIT
sleep 2
curl() { command curl -s --aws-sigv4 aws:amz:us-east-1:s3 --user "$ID:$KEY" -H x-amz-content-sha256:UNSIGNED-PAYLOAD "$@"; }
mkdir -p "$work/mnt" "$work/ext4" "$work/src"
for i in $(seq 1 200); do head -c $((RANDOM * 4)) /dev/urandom > "$work/src/f$i"; done
for sys in ours c; do
    bucket=b$sys
    curl -X PUT "http://127.0.0.1:$port/$bucket" >/dev/null
    prog=$OURS; [ $sys = c ] && prog=/usr/bin/s3backer
    total=0
    for phase in write read; do
        size=(--size=256m --blockSize=64k); [ $phase = read ] && size=()
        $prog --baseURL=http://127.0.0.1:$port/ --accessId=$ID --accessKey=$KEY "${size[@]}" $bucket "$work/mnt" 2>/dev/null
        if [ $phase = write ]; then
            mkfs.ext4 -q -F -E nodiscard "$work/mnt/file"
            mount -o loop "$work/mnt/file" "$work/ext4"; cp -r "$work/src" "$work/ext4/"; umount "$work/ext4"
        else
            mount -o loop,ro "$work/mnt/file" "$work/ext4"; cat "$work/ext4/src/"* >/dev/null; umount "$work/ext4"
        fi
        sync
        sleep 1
        echo "== $sys, $phase: $(grep -E '^http_(gets|puts|deletes) ' "$work/mnt/stats" | awk '{printf "%s=%s ", $1, $2}')"
        umount "$work/mnt"; sleep 2
    done
done
