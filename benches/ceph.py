#!/usr/bin/env python3
"""Benchmarks on Ceph: a block device over RGW's S3 (ours, and a C s3backer build given with
--c-binary) against Ceph's own block device, RBD, on the same throw-away cluster.

The cluster is s3b-testkit's (target/release/s3b-ceph: monitor, manager, BlueStore OSDs on
sparse files, RGW on 127.0.0.1), started once for the whole run and stopped at its end. Each
run of ours or C gets a fresh bucket and goes through harness.py's standard workloads (ext4 on
a direct-I/O loop device over the FUSE file; seqwrite, seqread, randread, randwrite), with
s3b-netsim between the daemon and RGW for added latency. RBD is measured with fio's `rbd`
engine (librbd in fio's process, no kernel module) on a fresh image per run in a pool of the
same replication, with the same fio job parameters, straight on the image (there is no file
system in between: RBD's figures are what the device itself gives).

Latency for RBD: fio's librbd talks to the monitor and to every OSD on their own ports (the
addresses come from the cluster maps), so a single TCP proxy such as s3b-netsim cannot sit in
between. Instead the client delays every message it receives from an OSD with Ceph's messenger
fault injection (`ms inject delay type = osd`, `ms inject delay max = 2L`, probability 1): a
delay uniform in [0, 2L] seconds, mean L, so a request's round trip grows by L on average
(netsim adds exactly L per round trip).

For each run: the value (MB/s or IOPS), the client's CPU seconds (the s3backer daemon, or fio
for RBD, which does librbd's work in its own process), the cluster's CPU seconds over the
measured part and the flush (every Ceph daemon, RGW included) and that per GiB moved.
Writes benches/RESULTS-ceph.md and benches/results-ceph.json. Run as root:
    bash scripts/setup.sh && cargo build --release --bin s3backer -p s3b-netsim -p s3b-testkit
    python3 benches/ceph.py [--c-binary PATH] [--latency 0,20] [--data-mb 128]
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as H  # noqa: E402

S3B_CEPH = os.path.join(H.TARGET, "release/s3b-ceph")
WORKLOADS = ("seqwrite", "seqread", "randread", "randwrite")
# Stand-in pid for "the whole cluster" in harness.Measured's server CPU figure.
CLUSTER_PID = -1


class Cluster:
    """The shared cluster; `server()` gives harness a per-run handle with a fresh bucket."""

    def __init__(self, osds):
        self.proc = subprocess.Popen([S3B_CEPH, str(osds)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the Ceph cluster did not start")
        self.info = json.loads(line)
        self.port = self.info["port"]
        self.conf = self.info["conf"]
        self.pids = list(self.info["pids"].values())
        self.runs = 0
        self.ceph("osd", "pool", "create", "rbd", "8")
        subprocess.run(["rbd", "--conf", self.conf, "pool", "init", "rbd"], check=True)

    def ceph(self, *args):
        return subprocess.run(["ceph", "--conf", self.conf, *args], check=True, capture_output=True, text=True).stdout

    def cpu(self):
        return sum(ORIGINAL_PROC_CPU(p) for p in self.pids)

    def rss_mib(self):
        total = 0
        for p in self.pids:
            try:
                with open(f"/proc/{p}/status") as f:
                    total += next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
            except (OSError, StopIteration):
                pass
        return total // 1024

    def server(self):
        """A fresh bucket, made harness's BUCKET, and a handle harness can 'stop'."""
        self.runs += 1
        H.BUCKET = f"bench{self.runs:03d}"
        code = H.sh(f"curl -s -o /dev/null -w '%{{http_code}}' -X PUT --aws-sigv4 'aws:amz:us-east-1:s3' "
                    f"--user '{H.ACCESS}:{H.SECRET}' -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' "
                    f"'http://127.0.0.1:{self.port}/{H.BUCKET}'")
        if code != "200":
            raise RuntimeError(f"create bucket {H.BUCKET}: HTTP {code}")
        return types.SimpleNamespace(proc=types.SimpleNamespace(pid=CLUSTER_PID), requests=dict, stop=lambda: None,
                                     port=self.port)

    def stop(self):
        self.proc.stdin.close()
        self.proc.wait()


ORIGINAL_PROC_CPU = H.proc_cpu
CLUSTER = None


def proc_cpu(pid):
    """harness's proc_cpu, with CLUSTER_PID meaning every daemon of the cluster."""
    return CLUSTER.cpu() if pid == CLUSTER_PID else ORIGINAL_PROC_CPU(pid)


def start_server(work, latency):
    """harness's start_server on the cluster: (server, proxy, port)."""
    srv = CLUSTER.server()
    proxy = H.Netsim(srv.port, latency // 2) if latency > 0 else None
    return srv, proxy, proxy.port if proxy else srv.port


def rbd_fio(name, conf, image, args):
    env = dict(os.environ, CEPH_CONF=conf)
    out = subprocess.run(f"fio --name={name} --output-format=json --ioengine=rbd --clientname=admin --pool=rbd "
                         f"--rbdname={image} --refill_buffers --randrepeat=0 {args}", shell=True, check=True,
                         capture_output=True, text=True, env=env).stdout
    job = json.loads(out[out.index("{"):])["jobs"][0]
    return job, (job["usr_cpu"] + job["sys_cpu"]) / 100 * job["job_runtime"] / 1000


def delayed_conf(work, latency):
    """The cluster's configuration plus, for the client, OSD replies delayed by `latency` ms on
    average (uniform in [0, 2 x latency])."""
    if latency == 0:
        return CLUSTER.conf
    path = os.path.join(work, f"ceph-delay-{latency}.conf")
    with open(CLUSTER.conf) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text + f"\n[client.admin]\nms inject delay type = osd\nms inject delay max = {2 * latency / 1000}\n"
                       "ms inject delay probability = 1\n")
    return path


def run_rbd(workload, cfg, latency, work):
    result = {"system": "rbd", "workload": workload, "latency_ms": latency}
    CLUSTER.runs += 1
    image = f"img{CLUSTER.runs:03d}"
    try:
        subprocess.run(["rbd", "--conf", CLUSTER.conf, "create", "--size", cfg.size.upper(), f"rbd/{image}"],
                       check=True)
        conf = delayed_conf(work, latency)
        data = f"--size={cfg.data_mb}m"
        if workload in ("seqread", "randread"):
            rbd_fio("prep", CLUSTER.conf, image, f"--rw=write --bs=1M {data} --end_fsync=1")
        cpu0, t0 = CLUSTER.cpu(), time.time()
        if workload == "seqwrite":
            job, client = rbd_fio(workload, conf, image, f"--rw=write --bs=1M {data} --end_fsync=1")
            result.update(value=cfg.data_mb * 1048576 / (time.time() - t0) / 1e6, unit="MB/s")
        elif workload == "seqread":
            job, client = rbd_fio(workload, conf, image, f"--rw=read --bs=1M {data}")
            result.update(value=job["read"]["bw_bytes"] / 1e6, unit="MB/s")
        elif workload == "randread":
            job, client = rbd_fio(workload, conf, image, f"--rw=randread --bs=4k --iodepth=16 {data} "
                                                         f"--time_based --runtime={cfg.rand_secs}")
            result.update(value=job["read"]["iops"], unit="IOPS")
        else:
            job, client = rbd_fio(workload, conf, image, f"--rw=randwrite --bs=4k --iodepth=16 {data} "
                                                         f"--time_based --runtime={cfg.rand_secs} --end_fsync=1")
            result.update(value=job["write"]["total_ios"] / (time.time() - t0), unit="IOPS")
        result.update(server_cpu_s=round(CLUSTER.cpu() - cpu0, 2), cpu_s=round(client, 2),
                      wall_s=round(time.time() - t0, 2))
    except Exception as e:
        H.failed(result, e)
    finally:
        subprocess.run(["rbd", "--conf", CLUSTER.conf, "rm", "--no-progress", f"rbd/{image}"], capture_output=True)
    return result


def rbd_probe(latency, work):
    """Mean latency (ms) of 4 KiB random reads, one at a time, for 3 s on a small RBD image, with
    the delay for `latency` in place: what the injection really adds."""
    CLUSTER.runs += 1
    image = f"probe{CLUSTER.runs:03d}"
    subprocess.run(["rbd", "--conf", CLUSTER.conf, "create", "--size", "64M", f"rbd/{image}"], check=True)
    try:
        rbd_fio("prep", CLUSTER.conf, image, "--rw=write --bs=1M --size=16m")
        job, _ = rbd_fio("probe", delayed_conf(work, latency), image,
                         "--rw=randread --bs=4k --iodepth=1 --size=16m --time_based --runtime=3")
        return round(job["read"]["lat_ns"]["mean"] / 1e6, 2)
    finally:
        subprocess.run(["rbd", "--conf", CLUSTER.conf, "rm", "--no-progress", f"rbd/{image}"], capture_output=True)


def gib_moved(r, cfg):
    """GiB the measured part moved: the data size, or IOPS x seconds x 4 KiB."""
    if r["workload"].startswith("seq"):
        return cfg.data_mb / 1024
    return r["value"] * cfg.rand_secs * 4096 / 2**30


def table(results, cfg):
    names = {"ours": "ours", "c2": "C 2.1.6", "rbd": "RBD"}
    systems = [s for s in ("ours", "c2", "rbd") if s in cfg.systems]
    by = {(r["latency_ms"], r["workload"], r["system"]): r for r in results}
    lines = ["# s3backer-rs on Ceph: over RGW vs RBD, the cluster's own block device", "",
             f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.node()} "
             f"({os.cpu_count()} cores), one run each, systems alternating, side by side on one cluster: "
             f"Ceph 16.2.15 (Debian 12), {cfg.osds} BlueStore OSD(s) on sparse files, pools of size {min(cfg.osds, 3)}; "
             f"the cluster started in {CLUSTER.info['startup_s']} s, its daemons' RSS {CLUSTER.info['rss_mib']} MiB "
             f"at start, {CLUSTER.rss_mib()} MiB at the end.",
             f"ours and C: `--blockSize={cfg.block_size} --size={cfg.size} --blockCacheSize={cfg.cache_blocks} "
             f"--blockCacheThreads={cfg.threads}` over RGW, ext4 on a direct-I/O loop device, latency added by "
             "s3b-netsim between the daemon and RGW. RBD: fio's rbd engine on an image of the same size, same "
             "fio jobs, no file system; latency added by delaying each OSD reply at the client, uniform in "
             "[0, 2L] (mean L; fio's librbd reaches the monitor and each OSD on their own ports, so no single "
             "proxy can carry it).",
             "RBD's mean 4 KiB read latency, one at a time: "
             + ", ".join(f"{v} ms with {lat} ms added" for lat, v in cfg.probes.items()) + ".",
             f"Data size {cfg.data_mb} MiB, random I/O {cfg.rand_secs} s (4 KiB, iodepth 16). Client CPU: the "
             "s3backer daemon's whole life, or fio's (librbd runs in it). Cluster CPU: every Ceph daemon over "
             "the measured part and the flush."]
    if "c2" in systems:
        lines.append(f"C 2.1.6: `{cfg.c_binary}` ({cfg.c_version}), built from upstream's source for this run only.")
    per = " / ".join(names[s] for s in systems)
    ratios = [("ours", "rbd"), ("ours", "c2")]
    ratios = [(a, b) for a, b in ratios if a in systems and b in systems]
    lines += ["", f"| latency | workload | {' | '.join(names[s] for s in systems)} | "
              + " | ".join(f"{names[a]}/{names[b]}" for a, b in ratios)
              + f" | client CPU s {per} | cluster CPU s {per} | cluster CPU s per GiB {per} |",
              "|---|---|" + "---|" * (len(systems) + len(ratios) + 3)]
    for lat in cfg.latencies:
        for w in cfg.workloads:
            rows = [by.get((lat, w, s), {}) for s in systems]
            vals = [f"error: {r['error']}" if "error" in r else f"{r['value']:.1f} {r['unit']}" if "value" in r
                    else "–" for r in rows]
            rr = []
            for a, b in ratios:
                ra, rb = by.get((lat, w, a), {}), by.get((lat, w, b), {})
                rr.append(f"{ra['value'] / rb['value']:.2f}" if ra.get("value") and rb.get("value") else "–")
            client = " / ".join(str(r.get("cpu_s", "–")) for r in rows)
            cluster = " / ".join(str(r.get("server_cpu_s", "–")) for r in rows)
            per_gib = " / ".join(f"{r['server_cpu_s'] / gib_moved(r, cfg):.1f}" if r.get("value") and "server_cpu_s" in r
                                 else "–" for r in rows)
            lines.append(f"| {lat} ms | {w} | " + " | ".join(vals) + " | " + " | ".join(rr)
                         + f" | {client} | {cluster} | {per_gib} |")
    return "\n".join(lines) + "\n"


def main():
    global CLUSTER
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--latency", default="0,20", help="round-trip latencies in ms, comma separated")
    p.add_argument("--workloads", default=",".join(WORKLOADS))
    p.add_argument("--systems", default="ours,c2,rbd", help="of: ours, c2 (needs --c-binary), rbd")
    p.add_argument("--c-binary", metavar="PATH", help="a C s3backer build (2.1.6) to compare as c2")
    p.add_argument("--osds", type=int, default=1)
    p.add_argument("--data-mb", type=int, default=128)
    p.add_argument("--rand-secs", type=int, default=10)
    p.add_argument("--size", default="1g")
    p.add_argument("--block-size", default="256k")
    p.add_argument("--cache-blocks", type=int, default=256)
    p.add_argument("--threads", type=int, default=16)
    p.add_argument("--out", default=os.path.join(H.ROOT, "benches/RESULTS-ceph.md"))
    p.add_argument("--json", default=os.path.join(H.ROOT, "benches/results-ceph.json"))
    cfg = p.parse_args()
    cfg.systems = cfg.systems.split(",")
    if "c2" in cfg.systems:
        if not cfg.c_binary or not os.access(cfg.c_binary, os.X_OK):
            sys.exit("c2 needs --c-binary PATH of an executable C s3backer")
        H.SYSTEMS["c2"] = (cfg.c_binary, H.SYSTEMS["c"][1])
        v = subprocess.run([cfg.c_binary, "--version"], capture_output=True, text=True)
        cfg.c_version = ((v.stdout + v.stderr).strip().splitlines() or ["version unknown"])[0]
    cfg.latencies = [int(x) for x in cfg.latency.split(",")]
    cfg.workloads = cfg.workloads.split(",")
    if os.geteuid() != 0:
        sys.exit("benchmarks need root (FUSE, loop devices)")
    # The cluster's S3 user has the test keys; harness's server hooks go to the cluster.
    from_testkit = ("GKs3backertest01", "s3backer-test-secret-0123456789abcdef")
    H.ACCESS, H.SECRET = from_testkit
    H.proc_cpu, H.start_server = proc_cpu, start_server
    work = tempfile.mkdtemp(prefix="s3b-bench-ceph-", dir="/tmp")
    CLUSTER = Cluster(cfg.osds)
    results = []
    cfg.probes = {}
    try:
        if "rbd" in cfg.systems:
            cfg.probes = {lat: rbd_probe(lat, work) for lat in cfg.latencies}
            print(json.dumps({"rbd_probe_ms": cfg.probes}), flush=True)
        for lat in cfg.latencies:
            for w in cfg.workloads:
                for system in cfg.systems:
                    r = run_rbd(w, cfg, lat, work) if system == "rbd" else H.run_workload(system, w, cfg, lat, work)
                    print(json.dumps(r), flush=True)
                    results.append(r)
    finally:
        text = table(results, cfg)
        CLUSTER.stop()
        H.shutil.rmtree(work, ignore_errors=True)
    with open(cfg.json, "w") as f:
        json.dump({"config": {k: v for k, v in vars(cfg).items()}, "results": results}, f, indent=1)
    with open(cfg.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
