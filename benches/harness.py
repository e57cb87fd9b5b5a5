#!/usr/bin/env python3
"""Side-by-side benchmark harness: C s3backer 1.5.4 (and optionally a second C build, such as a
newer upstream, picked with --c-binary) against s3backer-rs.

Both systems run with equivalent flags against one real S3 server (Garage on 127.0.0.1, started
fresh for every run so each run has a fresh bucket), optionally behind s3b-netsim, which adds
latency each way (the kernel has no netem). Workloads go through ext4 on a loop device opened
with --direct-io=on, so the daemon, not the page cache, is measured:

  seqwrite   fio 1 MiB sequential write of the data size, ending in fsync (also reported:
             the rate until unmount has flushed everything, since C 1.5.4's fsync is a no-op)
  seqread    fio 1 MiB sequential read of that file after a fresh mount and dropped caches
  randread   fio 4 KiB random read, iodepth 16, time-bounded
  randwrite  fio 4 KiB random write, iodepth 16, time-bounded, ending in fsync
  metadata   copy a generated tree of small files in, unmount, remount, read it back
  seqwrite-unaligned
             fio 1 MiB sequential write of the data size straight to the loop device, starting
             68 KiB past a block boundary, ending in fsync: every request starts and ends inside
             a block, whatever a file system would have done
  readlat    read latency under write-back, on the loop device: 4 KiB O_DIRECT reads, one at a
             time, each of a different block not in the cache, first with nothing else going on,
             then while a fio sequential write of the data size elsewhere on the device drains
             through the cache (counted once the cache is half full of dirty blocks, or 2 s into
             the write for a program whose cache never gets that full); reports the loaded
             median and p90 as ratios to the idle median, and the writer's throughput with the
             reader as a ratio to a run of the same write alone; also the server's own time per
             GET (its request-duration metric) and a plain client's GETs (curl, one kept-alive
             connection) through the same link, idle and under the same load, to tell the
             daemon's share of the loaded reads' extra time from the link's and the server's
  mkfs       mkfs.ext4 with its defaults (so it discards the whole device first) on a new volume
             of --mkfs-size (1 TiB), through the loop device: seconds and requests
  ceiling    the raw server: parallel PUT then GET of objects of the block size (curl; PUTs
             signed with the body's SHA-256 like the uploads of both s3backers)
  scale      what the cache costs at the sizes people run, on the exported file itself (no
             ext4), 64 KiB blocks, --blockCacheThreads=16, run by itself (--workloads=scale):
             write: 1.5 GiB (--scale-write-mb) written in 1 MiB pieces (fio psync, random data)
               onto the file, ending in fsync, with caches of 256, 32768 and 262144 blocks
               (--scale-caches), in memory and with --blockCacheFile: MB/s, the daemon's CPU
               seconds per GiB during the write, its peak RSS;
             restart: a cache file of --scale-file-gib (16) GiB filled (that much written and
               flushed, then unmounted), then the daemon started again on it: seconds until
               the file is mounted, RSS after, and RSS per cached block;
             hits: 4 KiB blocks; --scale-hit-entries (1M) blocks written and flushed into a
               cache of that many entries, then fio 4 KiB random reads (iodepth 16, O_DIRECT)
               of those blocks only, so all hit; beside the same with 256 entries: IOPS and
               daemon CPU microseconds per read.
             A part that needs more disk than is free is reported as an error, not shrunk.

With --cache-effect it instead compares ours with the block cache and read-ahead, with the cache
but no read-ahead, and with no cache at all, on seqwrite and seqread at 20 ms (benches/CACHE.md).

`--systems=ours,ours-nbd` compares ours over FUSE with ours over NBD (the built-in server on a
Unix socket, the file exposed by nbdfuse, then the same ext4 on a direct-I/O loop device).

For each it records MB/s or IOPS, the daemon's CPU seconds and peak RSS, and HTTP requests from
the stats file, and writes a Markdown table (ratios ours/C, % of the ceiling) and a JSON file.
With --c-binary the table gains a column for that build ("C other") and the ratio ours/C other.
Everything talks to 127.0.0.1 only.
"""

import argparse
import hashlib
import json
import math
import mmap
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
OURS = os.path.join(TARGET, "release/s3backer")
NETSIM = os.path.join(TARGET, "release/s3b-netsim")
C_S3BACKER = "/usr/bin/s3backer"
ACCESS = "GKbench0000000000000000000"
SECRET = "bench-secret-key-0123456789abcdef"
BUCKET = "bench"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sh(cmd, check=True, **kw):
    r = subprocess.run(cmd, shell=True, capture_output=True, text=True, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"command failed: {cmd}\n{r.stdout}\n{r.stderr}")
    return r.stdout


def wait_port(port, secs=15):
    end = time.time() + secs
    while time.time() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened")


def proc_cpu(pid):
    """CPU seconds (user + system) a process has used so far; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


class Garage:
    """A throw-away single-node Garage with one bucket, region us-east-1 (C 1.5.4 needs it)."""

    def __init__(self, work):
        self.dir = tempfile.mkdtemp(prefix="garage-", dir=work)
        self.port = free_port()
        self.admin = free_port()
        rpc = free_port()
        with open(os.path.join(self.dir, "garage.toml"), "w") as f:
            f.write(f"""metadata_dir = "{self.dir}/meta"
data_dir = "{self.dir}/data"
db_engine = "lmdb"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:{rpc}"
rpc_public_addr = "127.0.0.1:{rpc}"
rpc_secret = "{os.urandom(32).hex()}"
[s3_api]
s3_region = "us-east-1"
api_bind_addr = "127.0.0.1:{self.port}"
root_domain = ".s3.garage.localhost"
[admin]
api_bind_addr = "127.0.0.1:{self.admin}"
""")
        env = dict(os.environ, GARAGE_DEFAULT_ACCESS_KEY=ACCESS, GARAGE_DEFAULT_SECRET_KEY=SECRET,
                   GARAGE_DEFAULT_BUCKET=BUCKET)
        garage = shutil.which("garage") or os.path.expanduser("~/.cargo/bin/garage")
        self.log = open(os.path.join(self.dir, "server.log"), "w")
        self.proc = subprocess.Popen([garage, "-c", os.path.join(self.dir, "garage.toml"), "server",
                                      "--single-node", "--default-bucket"], env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        wait_port(self.port)
        # The bucket may take a moment after the port opens.
        end = time.time() + 15
        while time.time() < end:
            code = sh(f"curl -s -o /dev/null -w '%{{http_code}}' --aws-sigv4 'aws:amz:us-east-1:s3' "
                      f"--user '{ACCESS}:{SECRET}' -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' "
                      f"'http://127.0.0.1:{self.port}/{BUCKET}?list-type=2'", check=False)
            if code == "200":
                return
            time.sleep(0.05)
        raise RuntimeError("garage bucket not ready")

    def requests(self):
        """S3 requests the server has received, by API endpoint (its own metrics: every request,
        whatever its answer, which the clients' stats files do not all count)."""
        out = sh(f"curl -s http://127.0.0.1:{self.admin}/metrics", check=False)
        counts = {}
        for line in out.splitlines():
            if line.startswith("api_s3_request_counter{"):
                name = line.split('api_endpoint="', 1)[1].split('"', 1)[0]
                counts[name] = counts.get(name, 0) + int(float(line.rsplit(" ", 1)[1]))
        return counts

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


class Netsim:
    def __init__(self, target_port, delay_ms):
        self.port = free_port()
        self.proc = subprocess.Popen([NETSIM, str(self.port), str(target_port), str(delay_ms)])
        wait_port(self.port)

    def stop(self):
        self.proc.kill()
        self.proc.wait()


# The systems a run can compare: program and the flags that set it apart.
SYSTEMS = {
    # 1.5.4 turns its MD5 cache on by default; 2.x and ours have it off.
    "c": (C_S3BACKER, ["--md5CacheSize=0", "--md5CacheTime=0", "--minWriteDelay=0"]),
    "ours": (OURS, []),
    # For the cache benchmark (--cache-effect): ours without read-ahead, and without any cache.
    "ours-noreadahead": (OURS, ["--readAhead=0"]),
    "ours-nocache": (OURS, ["--blockCacheSize=0"]),
    # Ours over NBD: the built-in server on a Unix socket, the volume file exposed by nbdfuse
    # (several connections, as a kernel NBD client would use), the same ext4 on a loop device.
    "ours-nbd": (OURS, ["--nbd"]),
    # Raw-device runs, without ext4 (run_raw_workload): fio's nbd engine straight on ours over
    # NBD, and on nbdkit's S3 plugin as the NBD-on-S3 peer; fio on ours' FUSE file for NBD/FUSE.
    "ours-fionbd": (OURS, ["--nbd"]),
    "nbdkit-s3": ("nbdkit", []),
    "ours-fusefile": (OURS, []),
}


class Daemon:
    """One s3backer process (either implementation) in the foreground, with /proc sampling."""

    def __init__(self, system, port, mnt, cfg, logdir, size=None, more=()):
        program, extra = SYSTEMS[system]
        extra = list(extra) + list(more)
        common = [f"--baseURL=http://127.0.0.1:{port}/", f"--accessId={ACCESS}", f"--accessKey={SECRET}",
                  f"--blockSize={cfg.block_size}", f"--size={size or cfg.size}",
                  f"--blockCacheSize={cfg.cache_blocks}", f"--blockCacheThreads={cfg.threads}"]
        # A system's own flags replace the common ones of the same name.
        names = {e.split("=")[0] for e in extra}
        args = [program] + [c for c in common if c.split("=")[0] not in names] + extra
        self.nbd = "--nbd" in extra
        self.nbdfuse = None
        if self.nbd:
            self.sock, self.stats_file = mnt + ".sock", mnt + ".stats"
            args += [f"--nbdListen={self.sock}", f"--statsFileMirror={self.stats_file}",
                     "--statsFileMirrorInterval=100", "-f", BUCKET]
        else:
            args += ["-f", BUCKET, mnt]
        self.mnt = mnt
        self.err = open(os.path.join(logdir, f"{system}-{time.time_ns()}.log"), "w")
        self.proc = subprocess.Popen(args, stdout=self.err, stderr=subprocess.STDOUT)
        self.cpu = 0.0
        self.rss_kb = 0
        self.figures, self.stopped = (0.0, 0.0, {}), False
        end = time.time() + 60
        if self.nbd:
            uri = f"nbd+unix:///?socket={self.sock}"
            while subprocess.run(["nbdinfo", "--size", uri], capture_output=True).returncode != 0:
                if self.proc.poll() is not None or time.time() > end:
                    raise RuntimeError(f"{system} did not serve: {open(self.err.name).read()[-2000:]}")
                time.sleep(0.05)
            self.nbdfuse = subprocess.Popen(["nbdfuse", os.path.join(mnt, "file"), "--unix", self.sock],
                                            stdout=self.err, stderr=subprocess.STDOUT)
        while not os.path.ismount(mnt):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{system} exited: {open(self.err.name).read()[-2000:]}")
            if time.time() > end:
                raise RuntimeError(f"{system} did not mount")
            time.sleep(0.05)

    def sample(self):
        self.cpu = max(self.cpu, proc_cpu(self.proc.pid))
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        self.rss_kb = max(self.rss_kb, int(line.split()[1]))
        except (OSError, IndexError, ValueError):
            pass

    def stats(self):
        try:
            with open(self.stats_file if self.nbd else os.path.join(self.mnt, "stats")) as f:
                text = f.read()
        except OSError:
            return {}
        out = {}
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 2:
                try:
                    out[parts[0]] = float(parts[1])
                except ValueError:
                    pass
        return out

    def stop(self):
        """Unmounts (which flushes) and returns (cpu seconds, peak RSS MiB, http stats); again,
        the same figures."""
        if self.stopped:
            return self.figures
        self.stopped = True
        self.sample()
        if self.nbd:
            time.sleep(0.2)  # one more stats mirror update
        st = self.stats()
        if self.nbd:
            # Detach nbdfuse (retrying while the loop device lets go), then stop the server.
            for _ in range(100):
                if not os.path.ismount(self.mnt):
                    break
                sh(f"fusermount3 -u {self.mnt}", check=False)
                time.sleep(0.1)
            self.nbdfuse.wait()
            self.proc.send_signal(signal.SIGTERM)
        else:
            sh(f"umount {self.mnt}", check=False)
        return self.wait_exit(st)

    def wait_exit(self, st):
        """Samples while the process flushes until it exits (killed after 10 minutes); returns
        (cpu seconds, peak RSS MiB, `st`)."""
        end = time.time() + 600
        while self.proc.poll() is None and time.time() < end:
            self.sample()
            time.sleep(0.1)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.figures = (self.cpu, self.rss_kb / 1024.0, st)
        return self.figures


class Ext4:
    def __init__(self, file, mnt, mkfs):
        self.loop = sh(f"losetup --direct-io=on --show -f {file}").strip()
        if mkfs:
            sh(f"mkfs.ext4 -q -F -E nodiscard,lazy_itable_init=0,lazy_journal_init=0 {self.loop}")
        self.mnt = mnt
        sh(f"mount {self.loop} {mnt}")

    def stop(self):
        if self.loop:
            sh(f"umount {self.mnt}", check=False)
            sh(f"losetup -d {self.loop}", check=False)
            self.loop = None


class Loop:
    """The volume file as a loop device opened with --direct-io=on, without a file system."""

    def __init__(self, file):
        self.dev = sh(f"losetup --direct-io=on --show -f {file}").strip()

    def stop(self):
        if self.dev:
            sh(f"losetup -d {self.dev}", check=False)
            self.dev = None


def block_bytes(cfg):
    bs = cfg.block_size.lower()
    return int(bs[:-1]) * 1024 if bs.endswith("k") else int(bs[:-1]) << 20 if bs.endswith("m") else int(bs)


def percentile(xs, q):
    """The q-quantile of xs (nearest rank)."""
    ordered = sorted(xs)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


class DirectReader:
    """4 KiB O_DIRECT reads of a device, one at a time, each timed."""

    def __init__(self, dev):
        self.fd = os.open(dev, os.O_RDONLY | os.O_DIRECT)
        self.buf = mmap.mmap(-1, 4096)  # page-aligned, as O_DIRECT wants

    def read(self, offset):
        t = time.perf_counter()
        n = os.preadv(self.fd, [self.buf], offset)
        dt = time.perf_counter() - t
        if n != 4096:
            raise RuntimeError(f"short read at {offset}: {n} bytes")
        return dt

    def close(self):
        os.close(self.fd)


def dirty_ratio(daemon):
    return daemon.stats().get("block_cache_dirty_ratio", 0.0)


def server_get_time(garage):
    """(count, seconds) of GetObject requests the server has answered so far, from its own
    request-duration metric (the time it took to produce each answer, without the network)."""
    out = sh(f"curl -s http://127.0.0.1:{garage.admin}/metrics", check=False) if garage else ""
    n = t = 0.0
    for line in out.splitlines():
        if 'api_endpoint="GetObject"' in line:
            if line.startswith("api_s3_request_duration_count{"):
                n = float(line.rsplit(" ", 1)[1])
            elif line.startswith("api_s3_request_duration_sum{"):
                t = float(line.rsplit(" ", 1)[1])
    return n, t


def link_probe(port, n):
    """Times (ms) of `n` GETs, one after the other on one kept-alive connection, of the probe
    object (256 KiB) by curl through the same link (port) the daemon uses: what the link and
    the server alone give a plain client at that moment."""
    base = f"http://127.0.0.1:{port}/{BUCKET}/bench-link-probe"
    auth = (f"--aws-sigv4 'aws:amz:us-east-1:s3' --user '{ACCESS}:{SECRET}' "
            f"-H 'x-amz-content-sha256: UNSIGNED-PAYLOAD'")
    out = sh(f"curl -s {auth} -w '%{{time_total}}\\n' " + " ".join(f"{base} -o /dev/null" for _ in range(n)),
             check=False)
    return [1000 * float(x) for x in out.split()]


def link_probe_put(port, work):
    obj = os.path.join(work, "link-probe")
    with open(obj, "wb") as f:
        f.write(os.urandom(262144))
    sh(f"curl -s -f --aws-sigv4 'aws:amz:us-east-1:s3' --user '{ACCESS}:{SECRET}' "
       f"-H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' -T {obj} http://127.0.0.1:{port}/{BUCKET}/bench-link-probe")


def readlat(daemon, dev, cfg, result, garage=None, port=None):
    """Read latency under write-back, on a loop device of a fresh mount whose first cfg.read_mb
    MiB hold data in the store and nothing in the cache. Fills `result`. With `garage`, also the
    server's own average time per GET, idle and loaded (where the reads' extra time is spent)."""
    bs = block_bytes(cfg)
    nblocks = cfg.read_mb * 1048576 // bs
    rnd = random.Random(7)
    blocks = list(range(nblocks))
    rnd.shuffle(blocks)
    todo = iter(blocks)

    def offset():
        # A block not read before (so not in the cache), a random 4 KiB inside it.
        return next(todo) * bs + rnd.randrange(bs // 4096) * 4096

    writer_off = cfg.writer_offset_mb * 1048576
    write = (f"fio --name=writer --output-format=json --ioengine=libaio --direct=1 --refill_buffers "
             f"--rw=write --bs=1M --size={cfg.data_mb}m --offset={writer_off} --filename={dev} --end_fsync=1")
    # The writer alone.
    t0 = time.time()
    sh(write)
    alone = cfg.data_mb * 1048576 / (time.time() - t0) / 1e6
    reader = DirectReader(dev)
    try:
        sg0 = server_get_time(garage)
        idle = [reader.read(offset()) for _ in range(cfg.idle_reads)]
        sg1 = server_get_time(garage)
        # A plain client's GETs through the same link, idle and (from a thread, when the
        # backlog is there) loaded: how much of the loaded reads' extra time the link and the
        # server add whatever the client.
        probe = {}
        if port:
            link_probe_put(port, os.path.dirname(daemon.err.name))
            probe["idle"] = link_probe(port, 40)
        # The same write with the reader: reads are counted once the cache is at least half
        # full of dirty blocks (the backlog is there) until the writer has finished (its fsync
        # included, when the write-back drains).
        st0 = daemon.stats()
        t0 = time.time()
        proc = subprocess.Popen(write, shell=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        loaded, backlog, skipped, dirty_seen = [], False, 0, 0.0
        prober = None
        try:
            while proc.poll() is None:
                if not backlog:
                    dirty_seen = max(dirty_seen, dirty_ratio(daemon))
                    # A program whose writes are slower than its uploads never builds a backlog
                    # (C 1.5.4 at 20 ms): its reads count from 2 s into the write.
                    backlog = dirty_seen >= 0.5 or time.time() - t0 >= 2
                    if backlog and port:
                        prober = threading.Thread(target=lambda: probe.update(loaded=link_probe(port, 20)))
                        prober.start()
                try:
                    dt = reader.read(offset())
                except StopIteration:
                    break
                if backlog and proc.poll() is None:
                    loaded.append(dt)
                else:
                    skipped += 1
            if proc.wait() != 0:
                raise RuntimeError(f"writer failed: {proc.stderr.read()[-300:]}")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        with_reader = cfg.data_mb * 1048576 / (time.time() - t0) / 1e6
        st1 = daemon.stats()
        sg2 = server_get_time(garage)
        if prober:
            prober.join()
    finally:
        reader.close()
    if len(loaded) < 10:
        raise RuntimeError(f"only {len(loaded)} reads while the writer ran (dirty ratio seen {dirty_seen:.2f})")
    med = percentile(idle, 0.5)
    ms = lambda x: round(1000 * x, 1)  # noqa: E731
    result.update(
        value=percentile(loaded, 0.5) / med, unit="x idle median",
        idle_median_ms=ms(med), idle_p90_ms=ms(percentile(idle, 0.9)),
        loaded_median_ms=ms(percentile(loaded, 0.5)), loaded_p90_ms=ms(percentile(loaded, 0.9)),
        loaded_max_ms=ms(max(loaded)),
        median_ratio=round(percentile(loaded, 0.5) / med, 2), p90_ratio=round(percentile(loaded, 0.9) / med, 2),
        reads_idle=len(idle), reads_loaded=len(loaded), reads_skipped=skipped,
        dirty_ratio_when_counting=round(dirty_seen, 2),
        writer_alone_mbs=round(alone, 1), writer_with_reader_mbs=round(with_reader, 1),
        writer_ratio=round(with_reader / alone, 2),
        idle_ms=[ms(x) for x in idle], loaded_ms=[ms(x) for x in loaded])
    for label in ("idle", "loaded"):
        if probe.get(label):
            result[f"link_probe_median_ms_{label}"] = ms(percentile(probe[label], 0.5) / 1000)
            result[f"link_probe_p90_ms_{label}"] = ms(percentile(probe[label], 0.9) / 1000)
    for label, (a, b) in (("idle", (sg0, sg1)), ("loaded", (sg1, sg2))):
        if b[0] > a[0]:
            result[f"server_avg_get_ms_{label}"] = round(1000 * (b[1] - a[1]) / (b[0] - a[0]), 1)
    # The transport's own view of GETs during the loaded phase (ours: average GET time).
    # (The stats file gives averages since mount, so the loaded phase's average is worked out
    # from the averages and counts before and after.)
    for kind in ("get", "put"):
        n0, n1 = st0.get(f"http_{kind}s", 0), st1.get(f"http_{kind}s", 0)
        a0, a1 = st0.get(f"http_avg_{kind}_time", 0), st1.get(f"http_avg_{kind}_time", 0)
        if n1 > n0 and a1 > 0:
            result[f"loaded_avg_{kind}_ms"] = round(1000 * (a1 * n1 - a0 * n0) / (n1 - n0), 1)


def start_server(work, latency):
    """Garage, behind a link with `latency` ms of round trip if non-zero: (garage, proxy, port)."""
    garage = Garage(work)
    proxy = Netsim(garage.port, latency // 2) if latency > 0 else None
    return garage, proxy, proxy.port if proxy else garage.port


def stop_all(*things):
    """Stops what a run started, first to last (each may be None), the server last."""
    for t in things:
        if t:
            t.stop()


class Measured:
    """The measured part of a run: its start, and the server's CPU time and requests since."""

    def __init__(self, garage):
        self.garage = garage
        self.t0 = time.time()
        self.server_cpu0 = proc_cpu(garage.proc.pid)
        self.server_req0 = garage.requests()

    def secs(self):
        return time.time() - self.t0

    def server_requests(self):
        return {k: v - self.server_req0.get(k, 0) for k, v in self.garage.requests().items()
                if v - self.server_req0.get(k, 0) > 0}

    def record(self, result, daemon):
        """Stops the daemon (which flushes), then records what the server spent on the measured
        part with the flush (with the daemon's CPU it shows whether a run was bound by the
        machine's two cores), the requests it counted, and the daemon's CPU, peak RSS and HTTP
        counters."""
        cpu, rss, st = daemon.stop()
        result.update(server_cpu_s=round(proc_cpu(self.garage.proc.pid) - self.server_cpu0, 2),
                      wall_s=round(self.secs(), 2), server_requests=self.server_requests(),
                      cpu_s=round(cpu, 2), peak_rss_mib=round(rss, 1),
                      http_gets=int(st.get("http_gets", 0)), http_puts=int(st.get("http_puts", 0)),
                      http_deletes=int(st.get("http_deletes", 0)))


def failed(result, e):
    """A failed run is reported, not hidden: its first line goes in the result."""
    result.update(error=str(e).splitlines()[0][:200])


def run_device_workload(system, workload, cfg, latency, work):
    """Workloads on the loop device itself, without ext4: seqwrite-unaligned, readlat, mkfs."""
    garage, proxy, port = start_server(work, latency)
    mnt = tempfile.mkdtemp(prefix="mnt-", dir=work)
    daemon = loop = None
    result = {"system": system, "workload": workload, "latency_ms": latency}
    try:
        size = cfg.mkfs_size if workload == "mkfs" else None
        daemon = Daemon(system, port, mnt, cfg, work, size=size)
        loop = Loop(os.path.join(mnt, "file"))
        if workload == "readlat":
            # Data for the reader, in the store, then a fresh mount with nothing cached.
            fio("prep", f"--rw=write --bs=1M --size={cfg.read_mb}m --filename={loop.dev} --end_fsync=1")
            loop.stop()
            daemon.stop()
            daemon = Daemon(system, port, mnt, cfg, work)
            sh("echo 3 > /proc/sys/vm/drop_caches")
            loop = Loop(os.path.join(mnt, "file"))
        m = Measured(garage)
        if workload == "seqwrite-unaligned":
            off = cfg.unaligned_offset
            fio("seqwrite-unaligned", f"--rw=write --bs=1M --size={cfg.data_mb}m --offset={off} "
                                      f"--filename={loop.dev} --end_fsync=1")
            secs = m.secs()
            result.update(value=cfg.data_mb * 1048576 / secs / 1e6, unit="MB/s", offset=off)
        elif workload == "readlat":
            readlat(daemon, loop.dev, cfg, result, garage, port)
        elif workload == "mkfs":
            try:
                r = subprocess.run(["mkfs.ext4", "-q", "-F", loop.dev], capture_output=True, text=True,
                                   timeout=cfg.mkfs_timeout)
                if r.returncode != 0:
                    raise RuntimeError(f"mkfs.ext4 failed: {r.stderr.strip()[-200:]}")
                secs = m.secs()
                result.update(value=secs, unit="s", size=cfg.mkfs_size)
            except subprocess.TimeoutExpired:
                result.update(error=f"mkfs.ext4 not finished after {cfg.mkfs_timeout} s", size=cfg.mkfs_size,
                              requests_so_far=m.server_requests())
        loop.stop()
        m.record(result, daemon)
    except Exception as e:
        failed(result, e)
    finally:
        stop_all(loop, daemon, proxy, garage)
    return result


def scale_cfg(cfg, block_size, cache_blocks, size):
    """A copy of cfg with the scale workload's geometry."""
    c = argparse.Namespace(**vars(cfg))
    c.block_size, c.cache_blocks, c.threads, c.size = block_size, cache_blocks, 16, size
    return c


def disk_free(path):
    return shutil.disk_usage(path).free


def need_disk(work, nbytes, what):
    """Raises when `what` needs more than the free disk (with 1 GiB to spare)."""
    free = disk_free(work)
    if nbytes + (1 << 30) > free:
        raise RuntimeError(f"{what} needs {nbytes / 2**30:.1f} GiB of disk, {free / 2**30:.1f} GiB free")


def file_fio(name, path, args):
    """fio straight on the exported file (psync: one request at a time, as dd does)."""
    out = sh(f"fio --name={name} --output-format=json --filename={path} --refill_buffers --randrepeat=0 {args}")
    return json.loads(out[out.index("{"):])["jobs"][0]


def vm_rss_mib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        pass
    return 0.0


def run_scale_write(system, cfg, latency, work, cache_blocks, with_file):
    """The scale workload's write part: one daemon, one 1.5 GiB write (see the module docs)."""
    garage, proxy, port = start_server(work, latency)
    mnt = tempfile.mkdtemp(prefix="mnt-", dir=work)
    daemon = None
    result = {"system": system, "workload": "scale-write", "latency_ms": latency, "cache_blocks": cache_blocks,
              "cache_file": with_file}
    try:
        # A volume of at least the cache's size (a cache larger than the volume is clamped to it).
        c = scale_cfg(cfg, "64k", cache_blocks, f"{max(4, math.ceil(cache_blocks * 65536 / 2**30))}g")
        more = []
        if with_file:
            need_disk(work, cache_blocks * 65536 + cfg.scale_write_mb * 1048576, f"a cache file of {cache_blocks} blocks")
            more = [f"--blockCacheFile={os.path.join(work, f'cachefile-{system}-{cache_blocks}')}"]
        daemon = Daemon(system, port, mnt, c, work, more=more)
        cpu0 = proc_cpu(daemon.proc.pid)
        m = Measured(garage)
        file_fio("scale-write", os.path.join(mnt, "file"),
                 f"--ioengine=psync --rw=write --bs=1M --size={cfg.scale_write_mb}m --end_fsync=1")
        secs = m.secs()
        cpu = proc_cpu(daemon.proc.pid) - cpu0
        daemon.sample()
        gib = cfg.scale_write_mb / 1024
        result.update(value=cfg.scale_write_mb * 1048576 / secs / 1e6, unit="MB/s",
                      cpu_per_gib=round(cpu / gib, 2), write_cpu_s=round(cpu, 2))
        m.record(result, daemon)
    except Exception as e:
        failed(result, e)
    finally:
        stop_all(daemon, proxy, garage)
        for f in os.listdir(work):
            if f.startswith("cachefile-"):
                os.unlink(os.path.join(work, f))
    return result


def run_scale_restart(system, cfg, latency, work):
    """The scale workload's restart part: fill a cache file, unmount, start again on it."""
    garage, proxy, port = start_server(work, latency)
    mnt = tempfile.mkdtemp(prefix="mnt-", dir=work)
    daemon = None
    gib = cfg.scale_file_gib
    slots = int(gib * 16384)
    result = {"system": system, "workload": "scale-restart", "latency_ms": latency, "cache_blocks": slots,
              "file_gib": gib}
    path = os.path.join(work, f"cachefile-{system}-restart")
    try:
        # The file, and the same data in the store.
        need_disk(work, 2 * slots * 65536, f"a {gib} GiB cache file and its data in the store")
        c = scale_cfg(cfg, "64k", slots, f"{max(2, math.ceil(gib) + 1)}g")
        # What a mount costs without a cache file (the mount token's checks, etc.).
        t0 = time.time()
        daemon = Daemon(system, port, mnt, c, work)
        result.update(mount_s_no_file=round(time.time() - t0, 2))
        rss_no_file = vm_rss_mib(daemon.proc.pid)
        daemon.stop()
        daemon = Daemon(system, port, mnt, c, work, more=[f"--blockCacheFile={path}"])
        file_fio("scale-fill", os.path.join(mnt, "file"),
                 f"--ioengine=psync --rw=write --bs=1M --size={slots * 64 // 1024}m --end_fsync=1")
        daemon.stop()
        sh("echo 3 > /proc/sys/vm/drop_caches")
        t0 = time.time()
        daemon = Daemon(system, port, mnt, c, work, more=[f"--blockCacheFile={path}"])
        mount_secs = time.time() - t0
        daemon.sample()
        rss = vm_rss_mib(daemon.proc.pid)
        st = daemon.stats()
        cached = int(st.get("block_cache_current_size", 0))
        # Ours logs how long reading the file took (one summary line).
        scan = None
        for line in open(daemon.err.name, errors="replace"):
            if "slots hold blocks, read in " in line:
                scan = float(line.split("read in ")[1].split(" s")[0])
        result.update(value=mount_secs, unit="s to mount", rss_mib=round(rss, 1),
                      rss_mib_no_file=round(rss_no_file, 1), file_scan_s=scan,
                      cached_blocks=cached, rss_bytes_per_slot=round(rss * 1048576 / slots, 1),
                      rss_bytes_per_slot_over_no_file=round((rss - rss_no_file) * 1048576 / slots, 1),
                      bound_mib=round(64 + 64 * slots / 1048576, 1))
        stop_with_usage(daemon, result)
    except Exception as e:
        failed(result, e)
    finally:
        stop_all(daemon, proxy, garage)
        if os.path.exists(path):
            os.unlink(path)
    return result


def stop_with_usage(daemon, result):
    """Stops `daemon` and records its CPU seconds and peak RSS in `result`."""
    cpu, peak, _ = daemon.stop()
    result.update(cpu_s=round(cpu, 2), peak_rss_mib=round(peak, 1))


def run_scale_hits(system, cfg, latency, work, entries):
    """The scale workload's hits part: `entries` 4 KiB blocks written and flushed into a cache of
    that many entries, then random reads of them only."""
    garage, proxy, port = start_server(work, latency)
    mnt = tempfile.mkdtemp(prefix="mnt-", dir=work)
    daemon = None
    result = {"system": system, "workload": "scale-hits", "latency_ms": latency, "cache_blocks": entries}
    try:
        size_mb = entries * 4 // 1024 if entries >= 256 else 1
        c = scale_cfg(cfg, "4k", entries, f"{max(1, math.ceil(size_mb / 1024) + 1)}g")
        daemon = Daemon(system, port, mnt, c, work)
        f = os.path.join(mnt, "file")
        file_fio("scale-hits-fill", f, f"--ioengine=libaio --iodepth=16 --direct=1 --rw=write --bs=64k "
                                        f"--size={entries * 4}k --end_fsync=1")
        cpu0 = proc_cpu(daemon.proc.pid)
        st0 = daemon.stats()
        job = file_fio("scale-hits", f, f"--ioengine=libaio --iodepth=16 --direct=1 --rw=randread --bs=4k "
                                        f"--size={entries * 4}k --time_based --runtime={cfg.rand_secs}")
        cpu = proc_cpu(daemon.proc.pid) - cpu0
        st1 = daemon.stats()
        ios = job["read"]["total_ios"]
        misses = st1.get("block_cache_read_misses", 0) - st0.get("block_cache_read_misses", 0)
        result.update(value=job["read"]["iops"], unit="IOPS", cpu_us_per_read=round(1e6 * cpu / max(ios, 1), 1),
                      reads=ios, cache_misses=int(misses))
        stop_with_usage(daemon, result)
    except Exception as e:
        failed(result, e)
    finally:
        stop_all(daemon, proxy, garage)
    return result


def run_scale(cfg, lat, work, systems):
    """All parts of the scale workload at latency `lat`, systems side by side."""
    out = []

    def emit(r):
        print(json.dumps(r), flush=True)
        out.append(r)

    for n in cfg.scale_caches if "write" in cfg.scale_parts else ():
        for with_file in (False, True) if n in cfg.scale_file_caches else (False,):
            for system in systems:
                emit(run_scale_write(system, cfg, lat, work, n, with_file))
    if cfg.scale_file_gib > 0 and "restart" in cfg.scale_parts:
        for system in systems:
            emit(run_scale_restart(system, cfg, lat, work))
    for entries in (256, cfg.scale_hit_entries) if "hits" in cfg.scale_parts else ():
        for system in systems:
            emit(run_scale_hits(system, cfg, lat, work, entries))
    return out


def scale_table(results, cfg, name):
    """The scale workload's report (see the module docs)."""
    rs = [r for r in results if r["workload"].startswith("scale-")]
    if not rs:
        return []
    systems = [x for x in cfg.system_list if any(r["system"] == x for r in rs)]
    label = lambda x: name.get(x, x)  # noqa: E731
    lines = ["", "## The cache at scale", "",
             f"64 KiB blocks, --blockCacheThreads=16, on the exported file (no ext4). Write: "
             f"{cfg.scale_write_mb} MiB in 1 MiB pieces ending in fsync; CPU s/GiB is the daemon's CPU "
             "during the write. Targets: MB/s and CPU/GiB with 262144 blocks within 10 % of 256 blocks; "
             "≥ 1.2× C's MB/s at every size.", "",
             "| latency | cache blocks | cache file | " + " | ".join(f"{label(x)} MB/s" for x in systems)
             + " | " + " | ".join(f"{label(x)} CPU s/GiB" for x in systems)
             + " | " + " | ".join(f"{label(x)} peak RSS MiB" for x in systems) + " | ours/C MB/s |",
             "|---|---|---|" + "---|" * (3 * len(systems) + 1)]
    by = {(r["latency_ms"], r["workload"], r.get("cache_blocks"), r.get("cache_file"), r["system"]): r for r in rs}

    def cell(r, key, fmt="{:.1f}"):
        if r is None:
            return "–"
        if "error" in r:
            return f"error: {r['error']}"
        return fmt.format(r[key]) if key in r else "–"

    for lat in cfg.latencies:
        for n in cfg.scale_caches:
            for with_file in (False, True):
                row = [by.get((lat, "scale-write", n, with_file, x)) for x in systems]
                if not any(row):
                    continue
                o, others = row[-1], row[:-1]
                ratio = " / ".join(f"{o['value'] / r['value']:.2f}" for r in others
                                   if r and o and "value" in r and "value" in o) or "–"
                lines.append(f"| {lat} ms | {n} | {'yes' if with_file else 'no'} | "
                             + " | ".join(cell(r, "value") for r in row) + " | "
                             + " | ".join(cell(r, "cpu_per_gib", "{:.2f}") for r in row) + " | "
                             + " | ".join(cell(r, "peak_rss_mib") for r in row) + f" | {ratio} |")
        rr = [r for r in rs if r["workload"] == "scale-restart" and r["latency_ms"] == lat]
        if rr:
            lines += ["", f"Restart on a full cache file of {cfg.scale_file_gib} GiB (target: mounted in ≤ 2 s; "
                      "RSS ≤ 64 MiB + 64 bytes per slot):", "",
                      "| latency | system | slots | blocks reloaded | s to mount | s to mount without a cache file "
                      "| RSS MiB after mount | bytes per slot | RSS MiB without a file | bytes per slot over that "
                      "| file scan s | bound MiB |",
                      "|---|---|---|---|---|---|---|---|---|---|---|---|"]
            for r in rr:
                if "error" in r:
                    lines.append(f"| {lat} ms | {label(r['system'])} | {r['cache_blocks']} | error: {r['error']} |"
                                 + " |" * 8)
                    continue
                lines.append(f"| {lat} ms | {label(r['system'])} | {r['cache_blocks']} | {r['cached_blocks']} "
                             f"| {r['value']:.2f} | {r.get('mount_s_no_file', '–')} | {r['rss_mib']} "
                             f"| {r['rss_bytes_per_slot']} | {r.get('rss_mib_no_file', '–')} "
                             f"| {r.get('rss_bytes_per_slot_over_no_file', '–')} | {'–' if r.get('file_scan_s') is None else r['file_scan_s']} "
                             f"| {r['bound_mib']} |")
        hr = [r for r in rs if r["workload"] == "scale-hits" and r["latency_ms"] == lat]
        if hr:
            lines += ["", "Random 4 KiB reads that all hit (4 KiB blocks, O_DIRECT, iodepth 16):", "",
                      "| latency | system | cache entries | IOPS | CPU µs per read | misses | peak RSS MiB |",
                      "|---|---|---|---|---|---|---|"]
            for r in hr:
                if "error" in r:
                    lines.append(f"| {lat} ms | {label(r['system'])} | {r['cache_blocks']} | error: {r['error']} | | | |")
                    continue
                lines.append(f"| {lat} ms | {label(r['system'])} | {r['cache_blocks']} | {r['value']:.0f} "
                             f"| {r['cpu_us_per_read']} | {r['cache_misses']} | {r.get('peak_rss_mib', '–')} |")
    return lines


def fio(name, args):
    out = sh(f"fio --name={name} --output-format=json --ioengine=libaio --direct=1 --refill_buffers "
             f"--randrepeat=0 {args}")
    job = json.loads(out[out.index("{"):])["jobs"][0]
    return job


def run_workload(system, workload, cfg, latency, work):
    garage, proxy, port = start_server(work, latency)
    mnt = tempfile.mkdtemp(prefix="mnt-", dir=work)
    disk = tempfile.mkdtemp(prefix="disk-", dir=work)
    daemon = ext4 = None
    result = {"system": system, "workload": workload, "latency_ms": latency}
    try:
        daemon = Daemon(system, port, mnt, cfg, work)
        ext4 = Ext4(os.path.join(mnt, "file"), disk, mkfs=True)
        data = f"{cfg.data_mb}m"
        path = os.path.join(disk, "data")
        if workload in ("seqread", "randread", "metadata"):
            # Prepare the data, then measure it from a fresh mount with cold caches.
            if workload == "metadata":
                tree = os.path.join(work, "tree")
                if not os.path.isdir(tree):
                    rnd = random.Random(1)
                    for i in range(cfg.meta_files):
                        d = os.path.join(tree, f"d{i % 50}")
                        os.makedirs(d, exist_ok=True)
                        with open(os.path.join(d, f"f{i}"), "wb") as f:
                            f.write(rnd.randbytes(rnd.randint(100, 8000)))
                t0 = time.time()
                sh(f"cp -r {tree} {disk}/tree && sync")
                write_secs = time.time() - t0
            else:
                fio("prep", f"--rw=write --bs=1M --size={data} --filename={path} --end_fsync=1")
            ext4.stop()
            daemon.stop()
            if workload == "metadata":
                # C 1.5.4's sync is a no-op: also the time until the tree is really in S3.
                durable_write_secs = time.time() - t0
            daemon = Daemon(system, port, mnt, cfg, work)
            sh("echo 3 > /proc/sys/vm/drop_caches")
            ext4 = Ext4(os.path.join(mnt, "file"), disk, mkfs=False)
        m = Measured(garage)
        if workload == "seqwrite":
            job = fio("seqwrite", f"--rw=write --bs=1M --size={data} --filename={path} --end_fsync=1")
            secs = m.secs()
            result.update(value=cfg.data_mb * 1048576 / secs / 1e6, unit="MB/s")
        elif workload == "seqread":
            job = fio("seqread", f"--rw=read --bs=1M --size={data} --filename={path}")
            result.update(value=job["read"]["bw_bytes"] / 1e6, unit="MB/s")
        elif workload == "randread":
            job = fio("randread", f"--rw=randread --bs=4k --iodepth=16 --size={data} --filename={path} "
                                  f"--time_based --runtime={cfg.rand_secs}")
            result.update(value=job["read"]["iops"], unit="IOPS")
        elif workload == "randwrite":
            job = fio("randwrite", f"--rw=randwrite --bs=4k --iodepth=16 --size={data} --filename={path} "
                                   f"--time_based --runtime={cfg.rand_secs} --end_fsync=1")
            secs = m.secs()
            result.update(value=job["write"]["total_ios"] / secs, unit="IOPS")
        elif workload == "metadata":
            out = sh(f"find {disk}/tree -type f | xargs cat | wc -c")
            read_secs = m.secs()
            result.update(value=cfg.meta_files / (write_secs + read_secs), unit="files/s",
                          bytes_read=int(out.strip()), write_secs=round(write_secs, 2),
                          read_secs=round(read_secs, 2), durable_write_secs=round(durable_write_secs, 2),
                          durable_files_per_s=round(cfg.meta_files / (durable_write_secs + read_secs), 1))
        ext4.stop()
        m.record(result, daemon)
        if workload == "seqwrite":
            # C 1.5.4's fsync is a no-op: also report the rate until the data is really in S3,
            # i.e. including the flush at unmount.
            result.update(durable_mbs=round(cfg.data_mb * 1048576 / result["wall_s"] / 1e6, 1))
    except Exception as e:
        failed(result, e)
    finally:
        stop_all(ext4, daemon, proxy, garage)
    return result


# Raw-device runs (issue 14, item 7): the same fio workloads straight on an exported device,
# without ext4, so NBD can be compared with the FUSE file and with another NBD-on-S3 server.
#   ours-fionbd    ours --nbd on a Unix socket; fio's nbd engine (libnbd, one connection)
#   nbdkit-s3      `nbdkit S3` (Debian nbdkit-plugin-python + python3-boto3) on the same Garage
#                  bucket, one object per block (object-size = --block-size; nbdkit 1.32 refuses
#                  more than 64k), behind nbdkit's blocksize filter for requests below that;
#                  fio's nbd engine
#   ours-fusefile  ours over FUSE; fio (libaio, O_DIRECT) on the exported file
# Sequential requests are one block each (the preferred size both NBD servers advertise, and
# nbdkit S3's maximum), 16 in flight; random ones 4 KiB, 16 in flight. Reads and random writes
# run on data written before and a freshly started server (nothing cached).
RAW_SYSTEMS = ("ours-fionbd", "nbdkit-s3", "ours-fusefile")
# Systems that make main() write the NBD table (nbd_table) instead of the C-vs-ours one.
NBD_TABLE_SYSTEMS = {"ours-nbd", *RAW_SYSTEMS}


class NbdServer:
    """An NBD server process on a Unix socket: ours (--nbd, foreground) or nbdkit's S3 plugin.
    Same interface as Daemon (sample, stats, stop); `fio_target` is how fio reaches it."""

    def __init__(self, system, port, cfg, work):
        self.sock = os.path.join(work, f"{system}-{time.time_ns()}.sock")
        self.stats_file = self.sock + ".stats"
        self.err = open(os.path.join(work, f"{system}-{time.time_ns()}.log"), "w")
        self.system = system
        env = None
        if system == "nbdkit-s3":
            if block_bytes(cfg) > 65536:
                raise RuntimeError(f"nbdkit S3 refuses object-size {cfg.block_size} (at most 64k): use --block-size 64k")
            if not shutil.which("nbdkit") or not os.path.exists("/usr/lib/x86_64-linux-gnu/nbdkit/plugins/nbdkit-S3-plugin"):
                raise RuntimeError("nbdkit S3 is not installed (apt-get install nbdkit-plugin-python python3-boto3)")
            # Credentials for boto3 from the environment, nothing on the command line. PATH
            # without pyenv's directories: the plugin's embedded Python finds its prefix (and
            # Debian's boto3) through the first python3 on PATH.
            env = dict(os.environ, AWS_ACCESS_KEY_ID=ACCESS, AWS_SECRET_ACCESS_KEY=SECRET,
                       AWS_DEFAULT_REGION="us-east-1", PATH="/usr/sbin:/usr/bin:/sbin:/bin")
            # The blocksize filter (its man page's advice) lets clients send less than an object:
            # without it the plugin advertises object-size as the minimum and libnbd refuses 4k.
            args = ["nbdkit", "-f", "-U", self.sock, "--filter=blocksize", "S3", f"endpoint-url=http://127.0.0.1:{port}",
                    f"bucket={BUCKET}", "key=vol", f"size={cfg.size.upper()}", f"object-size={cfg.block_size}"]
        else:
            args = [OURS, f"--baseURL=http://127.0.0.1:{port}/", f"--accessId={ACCESS}", f"--accessKey={SECRET}",
                    f"--blockSize={cfg.block_size}", f"--size={cfg.size}", f"--blockCacheSize={cfg.cache_blocks}",
                    f"--blockCacheThreads={cfg.threads}", "--nbd", f"--nbdListen={self.sock}",
                    f"--statsFileMirror={self.stats_file}", "--statsFileMirrorInterval=100", "-f", BUCKET]
        self.proc = subprocess.Popen(args, stdout=self.err, stderr=subprocess.STDOUT, env=env)
        self.uri = f"nbd+unix:///?socket={self.sock}"
        self.fio_target = f"--ioengine=nbd --uri={self.uri}"
        self.cpu, self.rss_kb = 0.0, 0
        self.figures, self.stopped = (0.0, 0.0, {}), False
        end = time.time() + 60
        while subprocess.run(["nbdinfo", "--size", self.uri], capture_output=True).returncode != 0:
            if self.proc.poll() is not None or time.time() > end:
                raise RuntimeError(f"{system} did not serve: {open(self.err.name).read()[-2000:]}")
            time.sleep(0.05)

    sample = Daemon.sample
    wait_exit = Daemon.wait_exit

    def stats(self):
        return Daemon.stats(self) if self.system != "nbdkit-s3" else {}

    @property
    def nbd(self):
        return True

    def stop(self):
        if self.stopped:
            return self.figures
        self.stopped = True
        self.sample()
        if self.system != "nbdkit-s3":
            time.sleep(0.2)  # one more stats mirror update
        st = self.stats()
        self.proc.send_signal(signal.SIGTERM)
        return self.wait_exit(st)


def raw_server(system, port, cfg, work, mnt):
    if system == "ours-fusefile":
        d = Daemon(system, port, mnt, cfg, work)
        d.fio_target = f"--ioengine=libaio --direct=1 --filename={os.path.join(mnt, 'file')}"
        return d
    return NbdServer(system, port, cfg, work)


def raw_fio(name, srv, args):
    out = sh(f"fio --name={name} --output-format=json {srv.fio_target} --refill_buffers --randrepeat=0 {args}")
    return json.loads(out[out.index("{"):])["jobs"][0]


def run_raw_workload(system, workload, cfg, latency, work):
    """seqwrite / seqread / randread / randwrite with fio straight on the exported device."""
    garage, proxy, port = start_server(work, latency)
    mnt = tempfile.mkdtemp(prefix="mnt-", dir=work)
    srv = None
    result = {"system": system, "workload": workload, "latency_ms": latency, "block_size": cfg.block_size}
    seq = f"--bs={block_bytes(cfg)} --iodepth=16 --size={cfg.data_mb}m"
    rand = f"--bs=4k --iodepth=16 --size={cfg.data_mb}m --time_based --runtime={cfg.rand_secs}"
    try:
        srv = raw_server(system, port, cfg, work, mnt)
        if workload in ("seqread", "randread", "randwrite"):
            # The data, written and flushed, then a fresh server with nothing cached.
            raw_fio("prep", srv, f"--rw=write {seq} --end_fsync=1")
            srv.stop()
            srv = None
            srv = raw_server(system, port, cfg, work, mnt)
            sh("echo 3 > /proc/sys/vm/drop_caches")
        m = Measured(garage)
        if workload == "seqwrite":
            raw_fio("seqwrite", srv, f"--rw=write {seq} --end_fsync=1")
            result.update(value=cfg.data_mb * 1048576 / m.secs() / 1e6, unit="MB/s")
        elif workload == "seqread":
            job = raw_fio("seqread", srv, f"--rw=read {seq}")
            result.update(value=job["read"]["bw_bytes"] / 1e6, unit="MB/s")
        elif workload == "randread":
            job = raw_fio("randread", srv, f"--rw=randread {rand}")
            result.update(value=job["read"]["iops"], unit="IOPS")
        elif workload == "randwrite":
            job = raw_fio("randwrite", srv, f"--rw=randwrite {rand} --end_fsync=1")
            result.update(value=job["write"]["total_ios"] / m.secs(), unit="IOPS")
        else:
            raise RuntimeError(f"workload {workload} has no raw-device form")
        m.record(result, srv)
    except Exception as e:
        failed(result, e)
    finally:
        stop_all(srv, proxy, garage)
    return result


def nbd_table(results, cfg):
    """The NBD report: every system side by side, with the ratios NBD/FUSE (ext4 on loop, and the
    raw device) and ours/nbdkit S3, and each system's CPU, peak RSS and S3 requests."""
    name = {"ours": "FUSE (ext4)", "ours-nbd": "NBD via nbdfuse (ext4)", "ours-fusefile": "FUSE file (fio)",
            "ours-fionbd": "NBD (fio nbd)", "nbdkit-s3": "nbdkit S3 (fio nbd)"}
    systems = [x for x in ("ours", "ours-nbd", "ours-fusefile", "ours-fionbd", "nbdkit-s3") if x in cfg.system_list]
    pairs = [(a, b, label) for a, b, label in (("ours-nbd", "ours", "NBD/FUSE ext4"),
                                               ("ours-fionbd", "ours-fusefile", "NBD/FUSE raw"),
                                               ("ours-fionbd", "nbdkit-s3", "ours/nbdkit S3"))
             if a in systems and b in systems]
    per = " / ".join(name[x] for x in systems)
    lines = ["# s3backer-rs over NBD — benchmark results", "",
             f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.node()} "
             f"({os.cpu_count()} cores, {platform.platform()}), "
             + ", ".join(f"{lat} ms: " + ("one run each" if n == 1 else f"median of {n} runs each, systems alternating")
                         for lat, n in cfg.repeats.items()) + ", side by side.",
             f"Garage on 127.0.0.1 (fresh per run) behind s3b-netsim; --blockSize={cfg.block_size} --size={cfg.size} "
             f"--blockCacheSize={cfg.cache_blocks} --blockCacheThreads={cfg.threads}; data {cfg.data_mb} MiB, "
             f"random I/O {cfg.rand_secs} s.", "",
             "| latency | workload | " + " | ".join(name[x] for x in systems) + " | "
             + " | ".join(p[2] for p in pairs) + f" | CPU s {per} | peak RSS MiB {per} | S3 requests {per} |",
             "|---|---|" + "---|" * (len(systems) + len(pairs) + 3)]
    by = {(r["latency_ms"], r["workload"], r["system"]): r for r in results}
    for lat in cfg.latencies:
        for w in cfg.workloads:
            rows = {x: by.get((lat, w, x), {}) for x in systems}
            if not any(rows.values()):
                continue

            def val(r):
                return f"error: {r['error']}" if "error" in r else f"{r['value']:.1f} {r['unit']}" if "value" in r else "–"

            def ratio(a, b):
                return f"{a['value'] / b['value']:.2f}" if a.get("value") and b.get("value") else "–"

            def each(key):
                return " / ".join(str(rows[x].get(key, "–")) for x in systems)

            reqs = " / ".join(str(sum(rows[x]["server_requests"].values())) if "server_requests" in rows[x] else "–"
                              for x in systems)
            lines.append(f"| {lat} ms | {w} | " + " | ".join(val(rows[x]) for x in systems) + " | "
                         + " | ".join(ratio(rows[a], rows[b]) for a, b, _ in pairs)
                         + f" | {each('cpu_s')} | {each('peak_rss_mib')} | {reqs} |")
        ceil = by.get((lat, "ceiling", "raw"))
        if ceil:
            lines.append(f"| {lat} ms | ceiling (raw, 16 parallel) | PUT {ceil.get('put_mbs', '–')} MB/s "
                         f"| GET {ceil.get('get_mbs', '–')} MB/s |" + " |" * (len(systems) + len(pairs) + 1))
    return "\n".join(lines) + "\n"


def run_ceiling(cfg, latency, work):
    """The raw server: PUT then GET objects of the block size with 16 parallel curl transfers
    (PUTs with a signed payload hash, as both s3backers send)."""
    garage, proxy, port = start_server(work, latency)
    res = {"system": "raw", "workload": "ceiling", "latency_ms": latency}
    try:
        bs = int(cfg.block_size.rstrip("k")) * 1024 if cfg.block_size.endswith("k") else int(cfg.block_size)
        n = max(16, cfg.data_mb * 1048576 // bs // 4)
        body = os.path.join(work, "obj")
        with open(body, "wb") as f:
            f.write(os.urandom(bs))
        # Signed like the uploads of both s3backers (the body's SHA-256 in the signature, which
        # the server verifies), so the ceiling is for the same requests.
        with open(body, "rb") as f:
            body_sha = hashlib.sha256(f.read()).hexdigest()
        auth = f"--aws-sigv4 aws:amz:us-east-1:s3 --user {ACCESS}:{SECRET} -H 'x-amz-content-sha256: {body_sha}'"
        get_auth = f"--aws-sigv4 aws:amz:us-east-1:s3 --user {ACCESS}:{SECRET} -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD'"
        cfgfile = os.path.join(work, "curl.cfg")

        def transfer(curl_flags, upload):
            """n objects with 16 parallel transfers; MB/s."""
            with open(cfgfile, "w") as f:
                for i in range(n):
                    f.write(f'url = "http://127.0.0.1:{port}/{BUCKET}/ceil{i:06d}"\n{upload}output = "/dev/null"\n')
            t0 = time.time()
            sh(f"curl -s --parallel --parallel-max 16 {curl_flags} -K {cfgfile}")
            return n * bs / (time.time() - t0) / 1e6

        put = transfer(f"--fail {auth}", f'upload-file = "{body}"\n')
        get = transfer(get_auth, "")
        res.update(put_mbs=round(put, 1), get_mbs=round(get, 1))
    except Exception as e:
        failed(res, e)
    finally:
        stop_all(proxy, garage)
    return res


def median_run(runs):
    """The median of repeated runs (by value; a failed run counts as the worst), with every
    run's value kept beside it."""
    ordered = sorted(runs, key=lambda r: r.get("value", float("-inf")))
    best = dict(ordered[len(ordered) // 2])  # the middle run; the upper middle of an even count
    if len(runs) > 1:
        best["runs"] = [r.get("value") for r in runs]
    return best


def table(results, cfg):
    cs = [c for c in ("c", "c2") if c in cfg.system_list]
    name = {"c": "C 1.5.4", "c2": "C other"}
    sys_list = cs + ["ours"]
    lines = [f"# s3backer-rs vs C s3backer — benchmark results", "",
             f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.node()} "
             f"({os.cpu_count()} cores, {platform.platform()}), "
             + ", ".join(f"{lat} ms: " + ("one run each" if n == 1 else f"median of {n} runs each, systems alternating")
                         for lat, n in cfg.repeats.items())
             + ", side by side.",
             f"Server: Garage on 127.0.0.1 (fresh per run); latency added by s3b-netsim (round trip).",
             f"Flags for all: --blockSize={cfg.block_size} --size={cfg.size} --blockCacheSize={cfg.cache_blocks} "
             f"--blockCacheThreads={cfg.threads}; C also --md5CacheSize=0 (1.5.4 enables it by default).",
             f"ext4 on `losetup --direct-io=on`; data size {cfg.data_mb} MiB; random I/O {cfg.rand_secs} s; "
             f"seqwrite-unaligned: the loop device itself from byte {cfg.unaligned_offset}.",
             "CPU s: the daemon's whole life; server CPU s and S3 requests (counted by the server, every "
             "answer) cover the measured part and the flush at unmount. Ceiling PUTs are signed with the "
             "body's SHA-256, as both s3backers sign theirs."]
    if "c2" in cs:
        lines.append(f"C other: `{cfg.c_binary}` ({cfg.c_version}).")
    head = " | ".join(name[c] for c in cs)
    ratios = " | ".join(f"ours/{name[c]}" for c in cs)
    per = " / ".join(name[c] for c in cs) + " / ours"
    lines += ["", f"| latency | workload | {head} | ours | {ratios} | ours % of ceiling | CPU s {per} "
              f"| server CPU s {per} | peak RSS MiB {per} | S3 requests {per} |",
              "|---|---|" + "---|" * (2 * len(cs) + 6)]
    blank = " |" * (len(cs) + 4)
    by = {(r["latency_ms"], r["workload"], r["system"]): r for r in results}

    def val(r):
        return f"error: {r['error']}" if "error" in r else f"{r['value']:.1f} {r['unit']}"

    def req(r):
        return str(sum(r["server_requests"].values())) if "server_requests" in r else "–"

    def each(rows, f):
        return " / ".join(str(f(r)) for r in rows)

    for lat in cfg.latencies:
        ceil = by.get((lat, "ceiling", "raw"), {})
        for w in cfg.workloads:
            if w in ("readlat", "mkfs"):
                continue
            rows = [by.get((lat, w, x)) for x in sys_list]
            if not all(rows):
                continue
            o = rows[-1]
            for key, label, unit in (("durable_mbs", "seqwrite until in S3 (incl. unmount flush)", "MB/s"),
                                     ("durable_files_per_s", "metadata, writes until in S3 (incl. unmount flush)",
                                      "files/s")):
                if all(key in r for r in rows) and w in ("seqwrite", "seqwrite-unaligned", "metadata"):
                    label = label.replace("seqwrite", w)
                    pct = (f"{100 * o[key] / ceil['put_mbs']:.0f} %" if unit == "MB/s" and ceil.get("put_mbs")
                           else "–")
                    lines.append(f"| {lat} ms | {label} | " + " | ".join(f"{r[key]} {unit}" for r in rows)
                                 + " | " + " | ".join(f"{o[key] / r[key]:.2f}" if r[key] else "–" for r in rows[:-1])
                                 + f" | {pct} |" + " |" * 4)
            ratio = " | ".join(f"{o['value'] / r['value']:.2f}" if "value" in o and r.get("value") else "–"
                               for r in rows[:-1])
            pct = "–"
            if "value" in o and w in ("seqwrite", "seqwrite-unaligned", "seqread") and ceil.get("put_mbs"):
                pct = f"{100 * o['value'] / ceil['get_mbs' if w == 'seqread' else 'put_mbs']:.0f} %"
            lines.append(f"| {lat} ms | {w} | " + " | ".join(val(r) for r in rows) + f" | {ratio} | {pct} "
                         f"| {each(rows, lambda r: r.get('cpu_s', '–'))} | {each(rows, lambda r: r.get('server_cpu_s', '–'))} "
                         f"| {each(rows, lambda r: r.get('peak_rss_mib', '–'))} | {each(rows, req)} |")
        if ceil:
            lines.append(f"| {lat} ms | ceiling (raw, 16 parallel) | PUT {ceil.get('put_mbs', '–')} MB/s "
                         f"| GET {ceil.get('get_mbs', '–')} MB/s |" + " |" * (len(cs) + 5))
    # Read latency under write-back.
    rl = [(lat, x, by[(lat, "readlat", x)]) for lat in cfg.latencies for x in sys_list if (lat, "readlat", x) in by]
    if rl:
        lines += ["", "## Read latency under write-back", "",
                  f"4 KiB O_DIRECT reads of the loop device, one at a time, each of a block not in the cache: "
                  f"{cfg.idle_reads} with nothing else going on, then as many as fit while fio writes {cfg.data_mb} MiB "
                  "(1 MiB requests, ending in fsync) elsewhere on the device, counted from when the cache is half "
                  "full of dirty blocks, or 2 s into the write for a program whose cache never gets that full "
                  "(the dirty column: the dirty ratio when counting began). Ratios are to the idle median "
                  "(targets: median ≤ 1.2, p90 ≤ 1.5); the "
                  "writer's rate with the reader is compared with the same write alone (target ≥ 0.90).", "",
                  "| latency | system | idle median ms | loaded median ms | loaded p90 ms | median ratio | p90 ratio "
                  "| reads idle / loaded | dirty | writer alone MB/s | writer with reader MB/s | writer ratio | avg GET / PUT ms (loaded) | server's own GET ms idle / loaded "
                  "| curl GET through the same link, median ms idle / loaded (ratio), p90 loaded |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for lat, x, r in rl:
            label = name.get(x, x)
            if "error" in r:
                lines.append(f"| {lat} ms | {label} | error: {r['error']} |" + " |" * 13)
                continue
            lines.append(f"| {lat} ms | {label} | {r['idle_median_ms']} | {r['loaded_median_ms']} | {r['loaded_p90_ms']} "
                         f"| {r['median_ratio']} | {r['p90_ratio']} | {r['reads_idle']} / {r['reads_loaded']} "
                         f"| {r.get('dirty_ratio_when_counting', '–')} "
                         f"| {r['writer_alone_mbs']} | {r['writer_with_reader_mbs']} | {r['writer_ratio']} "
                         f"| {r.get('loaded_avg_get_ms', '–')} / {r.get('loaded_avg_put_ms', '–')} "
                         f"| {r.get('server_avg_get_ms_idle', '–')} / {r.get('server_avg_get_ms_loaded', '–')} "
                         f"| {link_probe_cell(r)} |")
    mk = [(lat, x, by[(lat, "mkfs", x)]) for lat in cfg.latencies for x in sys_list if (lat, "mkfs", x) in by]
    if mk:
        lines += ["", f"## mkfs.ext4 of a new {cfg.mkfs_size} volume", "",
                  "`mkfs.ext4 -q -F` with its defaults (it discards the whole device first) on the loop device of "
                  "a volume never written before; S3 requests counted by the server (target: ≤ 20 s at 20 ms).", "",
                  "| latency | system | seconds | S3 requests | daemon CPU s | server CPU s |", "|---|---|---|---|---|---|"]
        for lat, x, r in mk:
            reqs = r.get("server_requests") or r.get("requests_so_far") or {}
            detail = ", ".join(f"{k} {v}" for k, v in sorted(reqs.items())) or "–"
            secs = f"error: {r['error']}" if "error" in r else f"{r['value']:.1f}"
            lines.append(f"| {lat} ms | {name.get(x, x)} | {secs} | {detail} | {r.get('cpu_s', '–')} "
                         f"| {r.get('server_cpu_s', '–')} |")
    lines += scale_table(results, cfg, name)
    return "\n".join(lines) + "\n"


def link_probe_cell(r):
    """The readlat table's cell for the plain client's GETs through the same link."""
    i, l = r.get("link_probe_median_ms_idle"), r.get("link_probe_median_ms_loaded")
    if not i or not l:
        return "–"
    return f"{i} / {l} ({l / i:.2f}), {r.get('link_probe_p90_ms_loaded', '–')}"


def cache_table(results, cfg):
    """The --cache-effect report: ours with the block cache and read-ahead, without read-ahead,
    and without any cache, as ratios to the cacheless run."""
    lines = ["# s3backer-rs: what the block cache and read-ahead are worth", "",
             f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.node()} "
             f"({os.cpu_count()} cores), "
             + ", ".join(f"{lat} ms: " + ("one run each" if n == 1 else f"median of {n} runs each")
                         for lat, n in cfg.repeats.items())
             + ", side by side. Garage on 127.0.0.1 behind s3b-netsim.",
             f"ext4 on `losetup --direct-io=on`; {cfg.data_mb} MiB; --blockSize={cfg.block_size} "
             f"--blockCacheSize={cfg.cache_blocks} --blockCacheThreads={cfg.threads}; reads are cold (fresh mount, "
             "caches dropped); writes end in fsync.", "",
             "| latency | workload | no cache | cache, no read-ahead | cache + read-ahead | cache+RA / no cache | HTTP GET+PUT no cache / cache+RA |",
             "|---|---|---|---|---|---|---|"]
    by = {(r["latency_ms"], r["workload"], r["system"]): r for r in results}
    for lat in cfg.latencies:
        for w in cfg.workloads:
            row = [by.get((lat, w, s), {}) for s in ("ours-nocache", "ours-noreadahead", "ours")]
            def val(r):
                return f"error: {r['error']}" if "error" in r else (f"{r['value']:.1f} {r['unit']}" if "value" in r else "–")
            base, best = row[0], row[2]
            ratio = f"{best['value'] / base['value']:.2f}" if "value" in best and base.get("value") else "–"
            def req(r):
                return str(r.get("http_gets", 0) + r.get("http_puts", 0)) if "cpu_s" in r else "–"
            lines.append(f"| {lat} ms | {w} | {val(row[0])} | {val(row[1])} | {val(row[2])} | {ratio} | {req(base)} / {req(best)} |")
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    p.add_argument("--latency", default="0,20", help="round-trip latencies in ms, comma separated")
    p.add_argument("--workloads", default="seqwrite,seqwrite-unaligned,seqread,randread,randwrite,metadata,"
                                          "readlat,mkfs")
    p.add_argument("--systems", default="c,ours", help=f"comma separated, of: {', '.join(SYSTEMS)}")
    p.add_argument("--cache-effect", action="store_true",
                   help="instead of C vs ours: ours with and without the cache and read-ahead, "
                        "sequential write and cold read at 20 ms; writes benches/CACHE.md")
    p.add_argument("--repeat", default="3,1",
                   help="run each workload this many times per system (systems alternating) and "
                        "report the median run; one number, or one per latency (e.g. 3,1)")
    p.add_argument("--c-binary", metavar="PATH",
                   help="a second C s3backer build (e.g. a newer upstream) to run beside C 1.5.4 and ours; "
                        "adds the system c2")
    p.add_argument("--mkfs-size", default=None, help="volume size for the mkfs workload (default 1t, 64g with --quick)")
    p.add_argument("--mkfs-timeout", type=int, default=600, help="seconds before a mkfs run is given up")
    p.add_argument("--block-size", default="256k")
    p.add_argument("--cache-blocks", type=int, default=256)
    p.add_argument("--threads", type=int, default=16)
    p.add_argument("--scale-caches", default="256,32768,262144", help="scale workload: cache sizes in blocks")
    p.add_argument("--scale-file-caches", default=None,
                   help="scale workload: the cache sizes also written with --blockCacheFile (default: all)")
    p.add_argument("--scale-parts", default="write,restart,hits",
                   help="scale workload: which parts to run (write, restart, hits)")
    p.add_argument("--scale-write-mb", type=int, default=1536, help="scale workload: MiB written per cache size")
    p.add_argument("--scale-file-gib", type=float, default=16,
                   help="scale workload: size of the cache file filled and restarted on (0: skip)")
    p.add_argument("--scale-hit-entries", type=int, default=1048576,
                   help="scale workload: cache entries (4 KiB blocks) the random reads hit")
    p.add_argument("--out", default=os.path.join(ROOT, "benches/RESULTS.md"))
    p.add_argument("--json", default=os.path.join(ROOT, "benches/results.json"))
    cfg = p.parse_args()
    if cfg.cache_effect:
        cfg.systems = "ours-nocache,ours-noreadahead,ours"
        if cfg.workloads == p.get_default("workloads"):
            cfg.workloads = "seqwrite,seqread"
        if cfg.latency == p.get_default("latency"):
            cfg.latency = "20"
        if cfg.out == p.get_default("out"):
            cfg.out = os.path.join(ROOT, "benches/CACHE.md")
        if cfg.json == p.get_default("json"):
            cfg.json = os.path.join(ROOT, "benches/cache.json")
    if cfg.c_binary:
        if not os.access(cfg.c_binary, os.X_OK):
            sys.exit(f"--c-binary {cfg.c_binary}: not an executable file")
        # Flags as for 1.5.4 (all exist in 2.x too, where they are already the defaults).
        SYSTEMS["c2"] = (cfg.c_binary, SYSTEMS["c"][1])
        listed = cfg.systems.split(",")
        if "c2" not in listed and not cfg.cache_effect:
            listed.insert(listed.index("ours") if "ours" in listed else len(listed), "c2")
            cfg.systems = ",".join(listed)
        v = subprocess.run([cfg.c_binary, "--version"], capture_output=True, text=True)
        cfg.c_version = ((v.stdout + v.stderr).strip().splitlines() or ["version unknown"])[0]
    unknown = [x for x in cfg.systems.split(",") if x not in SYSTEMS]
    if unknown:
        sys.exit(f"unknown system(s) {', '.join(unknown)} (c2 needs --c-binary)")
    cfg.system_list = cfg.systems.split(",")
    cfg.latencies = [int(x) for x in cfg.latency.split(",")]
    reps = [int(x) for x in cfg.repeat.split(",")]
    cfg.repeats = {lat: reps[min(i, len(reps) - 1)] for i, lat in enumerate(cfg.latencies)}
    cfg.workloads = cfg.workloads.split(",")
    cfg.scale_caches = [int(x) for x in cfg.scale_caches.split(",")]
    cfg.scale_parts = cfg.scale_parts.split(",")
    cfg.scale_file_caches = (cfg.scale_caches if cfg.scale_file_caches is None
                             else [int(x) for x in cfg.scale_file_caches.split(",")])
    cfg.data_mb = 64 if cfg.quick else 512
    cfg.size = "1g" if cfg.quick else "4g"
    cfg.rand_secs = 5 if cfg.quick else 20
    cfg.meta_files = 1000 if cfg.quick else 10000
    cfg.mkfs_size = cfg.mkfs_size or ("64g" if cfg.quick else "1t")
    # Where the unaligned write starts: 68 KiB past a block boundary (256 KiB blocks: inside
    # block 4), so every 1 MiB request starts and ends inside a block.
    cfg.unaligned_offset = 4 * block_bytes(cfg) + 68 * 1024
    # readlat: the reader's data at the start of the device, the writer's 1 GiB (quick: 256 MiB) on.
    cfg.read_mb = 64 if cfg.quick else 256
    cfg.writer_offset_mb = 256 if cfg.quick else 1024
    cfg.idle_reads = 30 if cfg.quick else 100
    if os.geteuid() != 0:
        sys.exit("benchmarks need root (FUSE, loop devices)")
    work = tempfile.mkdtemp(prefix="s3b-bench-", dir="/tmp")
    results = []
    try:
        for lat in cfg.latencies:
            if not cfg.cache_effect and cfg.workloads != ["scale"]:
                r = run_ceiling(cfg, lat, work)
                print(json.dumps(r), flush=True)
                results.append(r)
            for w in cfg.workloads:
                if w == "scale":
                    results += run_scale(cfg, lat, work, cfg.system_list)
                    continue
                runs = {s: [] for s in cfg.systems.split(",")}
                for _ in range(cfg.repeats[lat]):
                    for system in runs:
                        if system in RAW_SYSTEMS:
                            r = run_raw_workload(system, w, cfg, lat, work)
                        elif w in ("seqwrite-unaligned", "readlat", "mkfs"):
                            r = run_device_workload(system, w, cfg, lat, work)
                        else:
                            r = run_workload(system, w, cfg, lat, work)
                        print(json.dumps(r), flush=True)
                        runs[system].append(r)
                for system, rs in runs.items():
                    results.append(median_run(rs))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    with open(cfg.json, "w") as f:
        json.dump({"config": {k: v for k, v in vars(cfg).items()}, "results": results}, f, indent=1)
    with open(cfg.out, "w") as f:
        f.write(cache_table(results, cfg) if cfg.cache_effect
                else nbd_table(results, cfg) if set(cfg.system_list) & NBD_TABLE_SYSTEMS else table(results, cfg))
    print(open(cfg.out).read())


if __name__ == "__main__":
    main()
