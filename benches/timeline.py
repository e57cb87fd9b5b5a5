#!/usr/bin/env python3
"""Request timelines of ours for the readlat and metadata workloads: where a read's time goes.

    python3 benches/timeline.py readlat [--latency 20]
    python3 benches/timeline.py metadata [--latency 20]

Runs the harness's workload (benches/harness.py, same setup: Garage on 127.0.0.1 behind
s3b-netsim) with ours started with --debug-http, which logs every S3 request with its duration,
each log line stamped with the wall clock as it arrives. Nothing else differs from a harness run.

readlat: every 4 KiB read of the reader is matched with the GET of its block, and split into
the time before the GET was sent (FUSE, cache, signing: the daemon), the GET itself (from
sending to the last byte of the answer: the link, the server and the HTTP client) and the time
after (checking, copying, the reply to the kernel); idle and loaded medians, beside the plain
client's (curl) GETs that the harness sends through the same link, also during the load.

metadata: the read-back after the remount (the harness's measured part): how long at least one
GET is in flight and how long none is (ext4, the kernel, find and cat), and how many GETs are
sent into an empty link, i.e. the dependent steps (each waits for what an earlier one brought).
"""

import argparse
import os
import re
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

# The harness's default --block-size (256k), which these runs keep.
BLOCK_BYTES = 256 * 1024
LINE = re.compile(r"(\d+\.\d+) s3backer: HTTP (GET|PUT|HEAD|DELETE) (\S+) -> (\d+) \((\d+) ms\)")


class Marks:
    """What the run noted, with wall-clock times: reads, curl probes, the measured part."""

    def __init__(self):
        self.reads, self.probes, self.measured = [], [], []


def instrument(marks, tracedir):
    """Adds the traced system to the harness and wraps the functions whose times we need."""
    wrapper = os.path.join(tracedir, "ours-trace")
    with open(wrapper, "w") as f:
        f.write("#!/bin/bash\n"
                f'log={tracedir}/trace-$(date +%s%N).log\n'
                f'exec {harness.OURS} --debug-http "$@" 2> >(while IFS= read -r l; do '
                'printf "%s %s\\n" "$EPOCHREALTIME" "$l"; done > "$log")\n')
    os.chmod(wrapper, 0o755)
    harness.SYSTEMS["ours-trace"] = (wrapper, [])

    read = harness.DirectReader.read

    def timed_read(self, offset):
        t0 = time.time()
        dt = read(self, offset)
        marks.reads.append((t0, offset, dt * 1000))
        return dt

    harness.DirectReader.read = timed_read
    probe = harness.link_probe

    def timed_probe(port, n):
        t0 = time.time()
        out = probe(port, n)
        marks.probes.append((t0, time.time(), out))
        return out

    harness.link_probe = timed_probe

    class Measured(harness.Measured):
        def __init__(self, *a, **k):
            marks.measured.append([time.time(), None])
            super().__init__(*a, **k)

        def secs(self):
            out = super().secs()
            if marks.measured[-1][1] is None:
                marks.measured[-1][1] = time.time()
            return out

    harness.Measured = Measured


def requests(tracedir):
    """Every logged request of every traced daemon: (method, key, sent, answered, file)."""
    out = []
    for name in sorted(os.listdir(tracedir)):
        if not name.startswith("trace-"):
            continue
        for line in open(os.path.join(tracedir, name)):
            m = LINE.match(line)
            if m:
                end = float(m[1])
                out.append((m[2], m[3].rsplit("/", 1)[-1], end - int(m[5]) / 1000, end, name))
    return out


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def readlat_report(marks, reqs, block_bytes):
    gets = {}
    for meth, key, s, e, _ in reqs:
        if meth == "GET":
            try:
                gets.setdefault(int(key, 16), []).append((s, e))
            except ValueError:
                pass
    puts = [(s, e) for meth, _, s, e, _ in reqs if meth == "PUT"]

    def uploads_at(t):
        return sum(1 for s, e in puts if s <= t <= e)

    rows = []
    for t0, off, dt in marks.reads:
        match = [g for g in gets.get(off // block_bytes, []) if t0 - 0.005 <= g[0] and g[1] <= t0 + dt / 1000 + 0.005]
        if match:
            s, e = match[0]
            rows.append((t0, dt, (s - t0) * 1000, (e - s) * 1000, dt - (e - t0) * 1000, uploads_at(s)))

    def line(name, rs):
        if not rs:
            return f"{name}: no reads"
        return (f"{name}: {len(rs)} reads, median {med([r[1] for r in rs]):.1f} ms = before the GET "
                f"{med([r[2] for r in rs]):.1f} + GET {med([r[3] for r in rs]):.1f} + after "
                f"{med([r[4] for r in rs]):.1f} ms; uploads in flight when sent: median {med([r[5] for r in rs])}")

    print(line("idle", [r for r in rows if r[5] == 0]))
    print(line("loaded", [r for r in rows if r[5] > 0]))
    for a, b, xs in marks.probes:
        print(f"curl, {len(xs)} GETs from {a:.1f}: median {med(xs):.1f} ms, uploads in flight {uploads_at((a + b) / 2)}")
        print("  " + line("ours' reads meanwhile", [r for r in rows if a <= r[0] <= b]))


def metadata_report(marks, reqs):
    t0, t1 = marks.measured[-1]
    gets = sorted((s, e) for meth, _, s, e, _ in reqs if meth == "GET" and t0 <= s <= t1)
    busy, steps, end, gaps = 0.0, 0, None, []
    for s, e in gets:
        if end is None or s > end:
            steps += 1
            if end is not None:
                gaps.append(s - end)
            busy += e - s
            end = e
        elif e > end:
            busy += e - end
            end = e
    sent_with = [sum(1 for s2, e2 in gets if s2 <= s < e2) for s, _ in gets]
    print(f"read-back {t1 - t0:.2f} s: {len(gets)} GETs, median {med([(e - s) * 1000 for s, e in gets]):.1f} ms; "
          f"{busy:.2f} s with a GET in flight, {t1 - t0 - busy:.2f} s with none; {steps} dependent steps "
          f"(GETs sent into an empty link), median gap between steps {med(gaps) * 1000:.1f} ms")
    print("GETs in flight when one is sent (itself included): "
          + ", ".join(f"{k}: {sent_with.count(k)}" for k in sorted(set(sent_with))))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workload", choices=["readlat", "metadata"])
    p.add_argument("--latency", default="20")
    a = p.parse_args()
    tracedir = tempfile.mkdtemp(prefix="s3b-timeline-", dir="/tmp")
    marks = Marks()
    instrument(marks, tracedir)
    sys.argv = ["harness.py", "--systems", "ours-trace", "--workloads", a.workload, "--latency", a.latency,
                "--repeat", "1", "--out", os.path.join(tracedir, "run.md"), "--json", os.path.join(tracedir, "run.json")]
    harness.main()
    reqs = requests(tracedir)
    print(f"\n{len(reqs)} requests traced (logs in {tracedir})")
    if a.workload == "readlat":
        readlat_report(marks, reqs, BLOCK_BYTES)
    else:
        metadata_report(marks, reqs)


if __name__ == "__main__":
    main()
