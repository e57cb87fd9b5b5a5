#!/usr/bin/env python3
"""Clone benchmarks, side by side in one run (ratios, never absolute targets):

  flatten    seconds for `--flatten` of a clone of --size (default 1 GiB) of base, every block
             of it written (random data), the clone itself unwritten, so every base block is
             copied: a clone of the read-only volume on the same endpoint (server-side
             CopyObject), and a clone of a snapshot of it (its blocks are still in the live
             volume, so they are read through the snapshot's view and written: GET + PUT);
  ceiling    the raw server through the same link: the same number of objects copied with
             CopyObject by curl with 32 parallel transfers (the flatten's concurrency), and the
             same objects fetched then uploaded again (GET, then PUT), 32 in parallel;
             reported as the flatten's time over the ceiling's (1.0 = as fast as the server).

Garage on 127.0.0.1, behind s3b-netsim with --latency ms of round trip (the set-up writes go
direct). Needs the release build (cargo build --release -p s3backer -p s3b-netsim). Writes a
JSON file of results.
"""

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402  (shared server, link and shell helpers)
from harness import ACCESS, BUCKET, OURS, SECRET, sh  # noqa: E402
from snapshots import Mounted, command, flags  # noqa: E402  (our commands and mounts on Garage)

# Transfers in flight for the raw ceiling: as many as --flatten keeps.
PARALLEL = 32


def say(what):
    print(f"clones bench: {what}", file=sys.stderr, flush=True)


def flatten(port, prefix, work):
    """`--flatten` of the clone at `prefix`, its stderr kept in flatten.err; returns seconds."""
    say(f"s3backer {prefix} --flatten")
    t0 = time.time()
    sh(" ".join([OURS] + flags(port, [prefix, "--flatten"]) + [BUCKET]) + f" 2>{work}/flatten.err")
    return time.time() - t0


def curl_parallel(port, work, entries):
    """Runs curl with one transfer per entry (a block of curl config lines, each a separate
    operation with its own headers and the signing options), PARALLEL at once."""
    cfgfile = os.path.join(work, "curl.cfg")
    auth = f'aws-sigv4 = "aws:amz:us-east-1:s3"\nuser = "{ACCESS}:{SECRET}"\nfail\nsilent\n'
    with open(cfgfile, "w") as f:
        f.write("\nnext\n".join(auth + e for e in entries))
    t0 = time.time()
    sh(f"curl --parallel --parallel-max {PARALLEL} -K {cfgfile}")
    return time.time() - t0


def ceilings(port, work, blocks):
    """Seconds to copy `blocks` base objects with CopyObject, and to GET then PUT them."""
    url = f"http://127.0.0.1:{port}/{BUCKET}"
    copy = curl_parallel(port, work, [
        f'url = "{url}/rawcopy/{n:08x}"\nrequest = "PUT"\nheader = "x-amz-copy-source: /{BUCKET}/base/{n:08x}"\n'
        f'header = "x-amz-content-sha256: UNSIGNED-PAYLOAD"\noutput = "/dev/null"\n' for n in range(blocks)])
    objdir = tempfile.mkdtemp(prefix="objs-", dir=work)
    get = curl_parallel(port, work, [
        f'url = "{url}/base/{n:08x}"\nheader = "x-amz-content-sha256: UNSIGNED-PAYLOAD"\n'
        f'output = "{objdir}/{n:08x}"\n' for n in range(blocks)])
    puts = []
    for n in range(blocks):
        path = os.path.join(objdir, f"{n:08x}")
        with open(path, "rb") as f:
            sha = hashlib.sha256(f.read()).hexdigest()
        puts.append(f'url = "{url}/rawput/{n:08x}"\nupload-file = "{path}"\n'
                    f'header = "x-amz-content-sha256: {sha}"\noutput = "/dev/null"\n')
    put = curl_parallel(port, work, puts)
    return copy, get + put


def run(cfg, work):
    garage, proxy, port = harness.start_server(work, cfg.latency)
    direct = garage.port
    mnt = tempfile.mkdtemp(prefix="mnt-", dir=work)
    log = open(os.path.join(work, "s3backer.log"), "w")
    size = cfg.size_mib << 20
    bs = cfg.block_kib << 10
    blocks = size // bs
    out = {"latency_ms": cfg.latency, "size_mib": cfg.size_mib, "block_size": bs, "blocks": blocks,
           "parallel": PARALLEL}
    mounted = None
    try:
        say(f"writing {cfg.size_mib} MiB of base")
        mounted = Mounted(direct, ["--prefix=base/", f"--size={size}", f"--blockSize={bs}"], mnt, log)
        sh(f"dd if=/dev/urandom of={mnt}/file bs=1M count={cfg.size_mib} oflag=direct conv=notrunc")
        mounted.stop()
        mounted = None
        command(direct, ["--prefix=base/", "--snapshot=s"])
        for name, of in (("volume", f"{BUCKET}/base"), ("snapshot", f"{BUCKET}/base@s")):
            prefix = f"--prefix=clone-{name}/"
            mounted = Mounted(direct, [prefix, f"--cloneOf={of}"], mnt, log)
            mounted.stop()
            mounted = None
            m = harness.Measured(garage)
            out[f"flatten_{name}_s"] = round(flatten(port, prefix, work), 2)
            out[f"flatten_{name}_requests"] = m.server_requests()
            # Its own summary line: the copying alone, without holding and releasing the volume.
            out[f"flatten_{name}_summary"] = open(os.path.join(work, "flatten.err")).read().strip().splitlines()[-1]
        say("raw ceilings")
        copy, getput = ceilings(port, work, blocks)
        out["ceiling_copy_s"] = round(copy, 2)
        out["ceiling_get_put_s"] = round(getput, 2)
        out["flatten_volume_vs_copy_ceiling"] = round(out["flatten_volume_s"] / copy, 2)
        out["flatten_snapshot_vs_get_put_ceiling"] = round(out["flatten_snapshot_s"] / getput, 2)
        out["flatten_snapshot_vs_copy_ceiling"] = round(out["flatten_snapshot_s"] / copy, 2)
    finally:
        harness.stop_all(mounted, proxy, garage)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latency", type=int, default=20, help="round-trip ms added by s3b-netsim (0: none)")
    p.add_argument("--size-mib", type=int, default=1024, help="MiB of base to flatten")
    p.add_argument("--block-kib", type=int, default=1024, help="block size in KiB")
    p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "clones.json"))
    cfg = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="s3b-clonebench-") as work:
        text = json.dumps(run(cfg, work), indent=2)
    print(text)
    with open(cfg.out, "w") as out:
        out.write(text + "\n")


if __name__ == "__main__":
    main()
