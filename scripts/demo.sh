#!/usr/bin/env bash
# The s3backer-rs demo: a volume stored as block files in a local directory (--test), ext4 on it
# through a loop mount, files written and read back, the stats file, then a clean tear-down.
# Run as root on Debian: bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
echo "== building s3backer (release)"
cargo build --release --quiet
S3B=$PWD/target/release/s3backer
work=$(mktemp -d /tmp/s3backer-demo.XXXXXX)
mkdir -p "$work/blocks" "$work/mnt" "$work/disk"
cleanup() {
    mountpoint -q "$work/disk" && umount "$work/disk"
    mountpoint -q "$work/mnt" && umount "$work/mnt"
    for _ in $(seq 100); do pgrep -f "$S3B .*$work" >/dev/null || break; sleep 0.1; done
    rm -rf "$work"
}
trap cleanup EXIT
set -x
"$S3B" --test --size=256m --blockSize=64k "$work/blocks" "$work/mnt"
ls -l "$work/mnt"
mkfs.ext4 -q "$work/mnt/file"
mount -o loop "$work/mnt/file" "$work/disk"
head -c 20m /dev/urandom > "$work/random.bin"
cp "$work/random.bin" "$work/disk/"
cp -r "$PWD/crates" "$work/disk/source"
sync
umount "$work/disk"
echo 3 > /proc/sys/vm/drop_caches
mount -o loop "$work/mnt/file" "$work/disk"
cmp "$work/random.bin" "$work/disk/random.bin"
diff -r "$PWD/crates" "$work/disk/source"
df -h "$work/disk"
ls "$work/blocks" | head -5
ls "$work/blocks" | wc -l
cat "$work/mnt/stats"
umount "$work/disk"
umount "$work/mnt"
{ set +x; } 2>/dev/null
echo "== demo finished: data read back identical; the volume was unmounted and flushed"
