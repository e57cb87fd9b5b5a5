#!/usr/bin/env python3
"""Snapshot benchmarks, side by side in one run (ratios, never absolute targets):

  snapshot (unmounted)  seconds for `--snapshot` of a --size volume (default 1 TiB) with --written
                        MiB of it written, not mounted (the command holds the volume with the
                        mount-token protocol, whose settle wait is part of the time)
  snapshot (mounted)    the same volume mounted: `--snapshot` through the daemon's control
                        socket, with the block cache clean, and right after --dirty MiB of
                        writes still in the cache (the snapshot flushes them first)
  seqwrite              fio 1 MiB sequential O_DIRECT writes over the --written MiB already
                        written on the FUSE file, ending in fsync: without a snapshot, and right
                        after one taken through the socket (every block's first write copies its
                        object first); ratio after/without, on the same mount
  randwrite             the same with 4 KiB random writes at iodepth 16, time-bounded, ending in
                        fsync
  incremental           a --incr-size volume served over NBD, filled with random data, a
                        snapshot, then --changed % of its blocks rewritten: copying what changed
                        since the snapshot (the qemu:dirty-bitmap context, read with libnbd) into
                        a copy of the volume as it was, vs a full `nbdcopy` of the volume; the
                        incremental result is checked against the live volume

Each run's requests to the server are counted. Garage on 127.0.0.1, behind s3b-netsim with
--latency ms of round trip (0: direct). Needs the release build (cargo build --release -p
s3backer -p s3b-netsim) and libnbd's Python module for /usr/bin/python3. Writes a JSON file.
"""

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402  (shared server, link and shell helpers)
from harness import ACCESS, BUCKET, OURS, SECRET, sh  # noqa: E402


def flags(port, args):
    return [f"--baseURL=http://127.0.0.1:{port}/", f"--accessId={ACCESS}", f"--accessKey={SECRET}"] + args


def command(port, args, volume=BUCKET):
    """Runs one of our commands to completion on `volume`; returns seconds."""
    say(f"s3backer {' '.join(args)} {volume}")
    t0 = time.time()
    sh(" ".join([OURS] + flags(port, args) + [volume]))
    return time.time() - t0


class Mounted:
    def __init__(self, port, args, mnt, log):
        import subprocess
        self.mnt = mnt
        self.proc = subprocess.Popen([OURS] + flags(port, args) + ["-f", BUCKET, mnt], stdout=log, stderr=log)
        end = time.time() + 60
        while not os.path.ismount(mnt):
            if self.proc.poll() is not None or time.time() > end:
                raise RuntimeError("s3backer did not mount")
            time.sleep(0.05)

    def stop(self):
        sh(f"umount {self.mnt}", check=False)
        self.proc.wait(600)


class Served:
    """`s3backer --nbd` in the foreground on a Unix socket, until stopped."""

    def __init__(self, port, args, volume, sock, log):
        import subprocess
        self.sock = sock
        self.uri = f"nbd+unix:///?socket={sock}"
        self.proc = subprocess.Popen([OURS, "--nbd", "-f", f"--nbdListen={sock}"] + flags(port, args) + [volume],
                                     stdout=log, stderr=log)
        end = time.time() + 60
        while subprocess.run(["nbdinfo", "--size", self.uri], capture_output=True).returncode != 0:
            if self.proc.poll() is not None or time.time() > end:
                raise RuntimeError("s3backer --nbd did not start serving")
            time.sleep(0.05)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(600)


def say(what):
    print(f"snapshots bench: {what}", file=sys.stderr, flush=True)


def fio(file, args):
    say(f"fio {args}")
    out = sh(f"fio --name=w --output-format=json --ioengine=libaio --direct=1 --refill_buffers --randrepeat=0 "
             f"--filename={file} {args}")
    job = json.loads(out[out.index("{"):])["jobs"][0]
    return job["write"]


def speed(w):
    return {"MBps": round(w["bw_bytes"] / 1e6, 1), "iops": round(w["iops"])}


def timed(garage, what):
    """Runs `what()`; returns (seconds, the server's requests meanwhile)."""
    m = harness.Measured(garage)
    what()
    return round(m.secs(), 3), m.server_requests()


# The libnbd client of the incremental copy (run by /usr/bin/python3, which has the module):
# the extents the dirty bitmap marks (flag 1), read and written into the image at their offsets.
INCREMENTAL = r"""
import sys, nbd
uri, context, image = sys.argv[1:4]
h = nbd.NBD()
h.add_meta_context(context)
h.connect_uri(uri)
assert h.can_meta_context(context), "the server does not offer " + context
size, dirty, pos = h.get_size(), [], 0
def seen(meta, offset, entries, err):
    global pos
    if meta == context:
        for i in range(0, len(entries), 2):
            if entries[i + 1] & 1:
                dirty.append((offset, entries[i]))
            offset += entries[i]
        pos = offset
    return 0
while pos < size:
    h.block_status(min(size - pos, 1 << 31), pos, seen)
copied = 0
with open(image, "r+b") as f:
    for off, length in dirty:
        f.seek(off)
        f.write(h.pread(length, off))
        copied += length
h.shutdown()
print(copied)
"""


# Rewrites the blocks given (numbers, of the size given) with random data, then flushes.
CHANGE = r"""
import os, sys, nbd
h = nbd.NBD()
h.connect_uri(sys.argv[1])
bs = int(sys.argv[2])
for b in sys.argv[3:]:
    h.pwrite(os.urandom(bs), int(b) * bs)
h.flush()
h.shutdown()
"""


def script(work, name, text):
    path = os.path.join(work, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def fuse_part(cfg, work, garage, port, log, out):
    mnt = tempfile.mkdtemp(prefix="mnt-", dir=work)
    geometry = [f"--size={cfg.size}", f"--blockSize={cfg.block_size}"]
    file = os.path.join(mnt, "file")
    seq = f"--rw=write --bs=1m --size={cfg.written}m --end_fsync=1"
    rnd = (f"--rw=randwrite --bs=4k --iodepth=16 --size={cfg.written}m --time_based "
           f"--runtime={cfg.runtime} --end_fsync=1")
    mounted = Mounted(port, geometry, mnt, log)
    try:
        fio(file, seq)  # the data a snapshot will preserve
        for name, job in (("seqwrite", seq), ("randwrite", rnd)):
            out[f"{name}_without"] = speed(fio(file, job))
        mounted.stop()
        mounted = None
        out["snapshot_unmounted_s"], out["snapshot_unmounted_requests"] = timed(
            garage, lambda: command(port, ["--snapshot=unmounted"]))
        mounted = Mounted(port, [], mnt, log)
        for i, (name, job) in enumerate((("seqwrite", seq), ("randwrite", rnd))):
            if i == 0:
                out["snapshot_mounted_s"], out["snapshot_mounted_requests"] = timed(
                    garage, lambda: command(port, ["--snapshot=mounted1"]))
            else:
                # Writes still in the block cache when the snapshot is asked for.
                sh(f"dd if=/dev/urandom of={file} bs=1M count={cfg.dirty} conv=notrunc status=none")
                out["snapshot_mounted_dirty_s"], out["snapshot_mounted_dirty_requests"] = timed(
                    garage, lambda: command(port, ["--snapshot=mounted2"]))
            after = speed(fio(file, job))
            out[f"{name}_after_snapshot"] = after
            out[f"{name}_ratio"] = round(after["MBps"] / max(out[f"{name}_without"]["MBps"], 1e-9), 2)
    finally:
        if mounted:
            mounted.stop()


def incremental_part(cfg, work, garage, port, log, out):
    sock = os.path.join(work, "nbd.sock")
    image = os.path.join(work, "copy.img")
    volume = f"{BUCKET}/incremental"
    served = Served(port, [f"--size={cfg.incr_size}", f"--blockSize={cfg.block_size}"], volume, sock, log)
    try:
        size = int(sh(f"nbdinfo --size '{served.uri}'").strip())
        say(f"filling {size} bytes over NBD")
        sh(f"head -c {size} /dev/urandom | nbdcopy --flush - '{served.uri}'")
        command(port, ["--snapshot=base"], volume)
        full, full_req = timed(garage, lambda: sh(f"nbdcopy '{served.uri}' {image}"))
        out["incremental_volume_bytes"] = size
        out["full_copy_s"], out["full_copy_requests"] = full, full_req
        # Rewrite --changed % of the blocks, scattered, 1 MiB each.
        bs = harness_size(cfg.block_size)
        blocks = size // bs
        rnd = __import__("random").Random(7)
        changed = sorted(rnd.sample(range(blocks), max(1, blocks * cfg.changed // 100)))
        change = script(work, "change.py", CHANGE)
        sh(f"/usr/bin/python3 {change} '{served.uri}' {bs} {' '.join(map(str, changed))}")
        out["incremental_changed_blocks"] = len(changed)
        copy = script(work, "incremental.py", INCREMENTAL)
        copied = []
        incr, incr_req = timed(garage, lambda: copied.append(int(sh(
            f"/usr/bin/python3 {copy} '{served.uri}' qemu:dirty-bitmap:base {image}").strip())))
        out["incremental_copy_s"], out["incremental_copy_requests"] = incr, incr_req
        out["incremental_copied_bytes"] = copied[0]
        out["incremental_speedup"] = round(full / max(incr, 1e-9), 1)
        want = sh(f"nbdcopy '{served.uri}' - | sha256sum").split()[0]
        got = sh(f"sha256sum {image}").split()[0]
        out["incremental_result_matches"] = want == got
        if want != got:
            raise RuntimeError("the incremental copy differs from the live volume")
    finally:
        served.stop()
        if os.path.exists(image):
            os.remove(image)


def harness_size(text):
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
    t = text.lower()
    return int(t[:-1]) * units[t[-1]] if t[-1] in units else int(t)


def run(cfg, work):
    garage, proxy, port = harness.start_server(work, cfg.latency)
    log = open(os.path.join(work, "s3backer.log"), "w")
    out = {"latency_ms": cfg.latency, "size": cfg.size, "block_size": cfg.block_size, "written_mib": cfg.written,
           "dirty_mib": cfg.dirty, "incremental_size": cfg.incr_size, "changed_percent": cfg.changed}
    try:
        if "fuse" in cfg.parts:
            fuse_part(cfg, work, garage, port, log, out)
        if "incremental" in cfg.parts:
            incremental_part(cfg, work, garage, port, log, out)
    finally:
        harness.stop_all(proxy, garage)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latency", type=int, default=20, help="round-trip ms added by s3b-netsim (0: none)")
    p.add_argument("--size", default="1t", help="volume size")
    p.add_argument("--block-size", default="1m")
    p.add_argument("--written", type=int, default=512, help="MiB written before the snapshot")
    p.add_argument("--runtime", type=int, default=20, help="seconds of each randwrite run")
    p.add_argument("--dirty", type=int, default=64, help="MiB in the block cache at the second mounted snapshot")
    p.add_argument("--incr-size", default="4g", help="volume size of the incremental copy")
    p.add_argument("--changed", type=int, default=1, help="percent of its blocks changed after the snapshot")
    p.add_argument("--parts", default="fuse,incremental", help="which parts to run (fuse, incremental)")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "snapshots.json"))
    cfg = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="s3b-snapbench-") as work:
        result = run(cfg, work)
    print(json.dumps(result, indent=2))
    with open(cfg.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
