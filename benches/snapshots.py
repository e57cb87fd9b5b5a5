#!/usr/bin/env python3
"""Snapshot benchmarks, side by side in one run (ratios, never absolute targets):

  snapshot   seconds for `--snapshot` of a --size volume (default 1 TiB) with --written MiB of it
             written, unmounted (the command holds the volume with the mount-token protocol,
             whose settle wait is part of the time; the requests it sends are counted)
  seqwrite   fio 1 MiB sequential O_DIRECT writes over the --written MiB already written on the
             FUSE file, ending in fsync: on a volume without snapshots, and right after a
             snapshot (every block's first write copies its object first); ratio after/without
  randwrite  the same with 4 KiB random writes at iodepth 16, time-bounded, ending in fsync

Garage on 127.0.0.1, behind s3b-netsim with --latency ms of round trip (0: direct). Needs the
release build (cargo build --release -p s3backer -p s3b-netsim). Writes a JSON file of results.
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


def command(port, args):
    """Runs one of our commands to completion; returns seconds."""
    say(f"s3backer {' '.join(args)}")
    t0 = time.time()
    sh(" ".join([OURS] + flags(port, args) + [BUCKET]))
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


def say(what):
    print(f"snapshots bench: {what}", file=sys.stderr, flush=True)


def fio(file, args):
    say(f"fio {args}")
    out = sh(f"fio --name=w --output-format=json --ioengine=libaio --direct=1 --refill_buffers --randrepeat=0 "
             f"--filename={file} {args}")
    job = json.loads(out[out.index("{"):])["jobs"][0]
    return job["write"]


def run(cfg, work):
    garage, proxy, port = harness.start_server(work, cfg.latency)
    mnt = tempfile.mkdtemp(prefix="mnt-", dir=work)
    log = open(os.path.join(work, "s3backer.log"), "w")
    geometry = [f"--size={cfg.size}", f"--blockSize={cfg.block_size}"]
    out = {"latency_ms": cfg.latency, "size": cfg.size, "block_size": cfg.block_size, "written_mib": cfg.written}
    mounted = None
    try:
        file = os.path.join(mnt, "file")
        seq = f"--rw=write --bs=1m --size={cfg.written}m --end_fsync=1"
        rnd = (f"--rw=randwrite --bs=4k --iodepth=16 --size={cfg.written}m --time_based "
               f"--runtime={cfg.runtime} --end_fsync=1")
        mounted = Mounted(port, geometry, mnt, log)
        fio(file, seq)  # the data a snapshot will preserve
        for name, job in (("seqwrite", seq), ("randwrite", rnd)):
            w = fio(file, job)
            out[f"{name}_without"] = {"MBps": round(w["bw_bytes"] / 1e6, 1), "iops": round(w["iops"])}
        mounted.stop()
        mounted = None
        m = harness.Measured(garage)
        out["snapshot_s"] = round(command(port, ["--snapshot=bench1"]), 3)
        out["snapshot_requests"] = m.server_requests()
        for i, (name, job) in enumerate((("seqwrite", seq), ("randwrite", rnd))):
            if i:
                command(port, [f"--snapshot=bench{i + 1}"])
            mounted = Mounted(port, [], mnt, log)
            w = fio(file, job)
            mounted.stop()
            mounted = None
            after = {"MBps": round(w["bw_bytes"] / 1e6, 1), "iops": round(w["iops"])}
            out[f"{name}_after_snapshot"] = after
            out[f"{name}_ratio"] = round(after["MBps"] / max(out[f"{name}_without"]["MBps"], 1e-9), 2)
    finally:
        if mounted:
            mounted.stop()
        harness.stop_all(proxy, garage)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latency", type=int, default=20, help="round-trip ms added by s3b-netsim (0: none)")
    p.add_argument("--size", default="1t", help="volume size")
    p.add_argument("--block-size", default="1m")
    p.add_argument("--written", type=int, default=512, help="MiB written before the snapshot")
    p.add_argument("--runtime", type=int, default=20, help="seconds of each randwrite run")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "snapshots.json"))
    cfg = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="s3b-snapbench-") as work:
        result = run(cfg, work)
    print(json.dumps(result, indent=2))
    with open(cfg.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
