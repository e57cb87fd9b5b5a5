//! End to end over NBD with clients nobody here wrote (Debian's libnbd-bin, python3-libnbd,
//! qemu-utils): the real binary serving `--test` volumes on a Unix socket or TCP, checked with
//! nbdinfo (features, block sizes, the allocation map), nbdcopy through several connections with
//! a server restart in between, qemu-io (patterns, FUA, write-zeroes with and without fast zero,
//! discard, flush), ext4 through nbdfuse and through qemu-storage-daemon's FUSE export, an
//! aio-parallel-style concurrency run checked against a shadow copy, kill -9 with a cache file,
//! hostile clients, daemon mode and signals, and upstream's `--nbd BUCKET /dev/nbdN` form.
//! None of this needs the nbd kernel module. The S3 variant is in `e2e_nbd_s3.rs`.

mod common;
mod nbd_common;
use common::*;
use nbd_common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The export's allocation map as (offset, length, flags) from `nbdinfo --map`.
fn map(uri: &str) -> Vec<(u64, u64, u32)> {
    cmd("nbdinfo", &["--map", uri])
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[0].parse().unwrap(), f[1].parse().unwrap(), f[2].parse().unwrap())
        })
        .collect()
}

/// A scratch directory and a `--test` volume in it with some flags, served on `sock` in it.
struct Export {
    s: Scratch,
    sock: PathBuf,
    flags: Vec<String>,
}

impl Export {
    /// A volume in a new scratch directory with `flags`.
    fn new(flags: &[&str]) -> Export {
        Export::in_scratch(Scratch::new(), flags)
    }

    /// A volume in `s` with `flags`.
    fn in_scratch(s: Scratch, flags: &[&str]) -> Export {
        Export { sock: s.path("sock"), s, flags: strings(flags) }
    }

    /// A volume in a new scratch directory with `flags`, and its server started.
    fn serve(flags: &[&str]) -> (Export, NbdServer) {
        let e = Export::new(flags);
        let srv = e.start();
        (e, srv)
    }

    /// Starts the server (again).
    fn start(&self) -> NbdServer {
        self.start_with(&[])
    }

    /// Starts the server with `more` flags this time.
    fn start_with(&self, more: &[&str]) -> NbdServer {
        let flags: Vec<&str> = self.flags.iter().map(String::as_str).chain(more.iter().copied()).collect();
        NbdServer::start(&test_args(&self.s, &flags), &self.sock)
    }

    /// Stops `srv`, which must exit cleanly, and starts the server again.
    fn restart(&self, srv: NbdServer) -> NbdServer {
        assert_eq!(srv.stop(), 0);
        self.start()
    }
}

/// Waits for the `--listBlocks` survey so the map knows every never-written block.
fn wait_survey(uri: &str, size: u64) {
    wait_for(20, "the block survey", || map(uri).first().is_some_and(|&(o, l, f)| o == 0 && l == size && f == 3));
}

#[test]
fn nbdinfo_shows_size_block_sizes_features_and_holes() {
    let (e, srv) = Export::serve(&["--size=16m", "--blockSize=64k", "--listBlocks"]);
    let uri = srv.uri();
    // The socket is private.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&e.sock).unwrap().permissions().mode() & 0o777, 0o600);
    let info = cmd("nbdinfo", &[&uri]);
    for want in [
        "export-size: 16777216",
        "block_size_minimum: 1",
        "block_size_preferred: 65536",
        "block_size_maximum: 33554432",
        "base:allocation",
        "using structured packets",
        "is_read_only: false",
    ] {
        assert!(info.contains(want), "nbdinfo lacks {want:?}:\n{info}");
    }
    for feature in ["cache", "df", "fast-zero", "flush", "fua", "multi-conn", "trim", "zero", "structured-reply"] {
        let st = Command::new("nbdinfo").args(["--can", feature, &uri]).status().unwrap();
        assert!(st.success(), "nbdinfo --can {feature}: {st}");
    }
    wait_survey(&uri, 16 << 20);
    // Data in blocks 0, 3-4 and 200-255 (64 KiB each); then block 250 trimmed, 210 zeroed.
    let k = 65536u64;
    python(
        r#"
import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1]); k = 65536
h.pwrite(b'\x01' * 100, 10)
h.pwrite(b'\x02' * (2 * k), 3 * k, nbd.CMD_FLAG_FUA)
h.pwrite(b'\x03' * (56 * k), 200 * k)
h.trim(k, 250 * k)
h.zero(k, 210 * k, nbd.CMD_FLAG_FAST_ZERO)
h.flush()
assert h.pread(k, 250 * k) == bytes(k)
h.shutdown()
"#,
        &[&uri],
    );
    let m = map(&uri);
    let want = vec![
        (0, k, 0),
        (k, 2 * k, 3),
        (3 * k, 2 * k, 0),
        (5 * k, 195 * k, 3),
        (200 * k, 10 * k, 0),
        (210 * k, k, 3),
        (211 * k, 39 * k, 0),
        (250 * k, k, 3),
        (251 * k, 5 * k, 0),
    ];
    assert_eq!(m, want, "nbdinfo --map:\n{}", cmd("nbdinfo", &["--map", &uri]));
    assert_eq!(srv.stop(), 0);
    assert!(!e.sock.exists(), "the socket is removed at exit");
    // After a restart with --listBlocks the survey finds the same holes.
    let srv = e.start();
    wait_for(20, "the survey after restart", || map(&srv.uri()) == want);
    assert_eq!(srv.stop(), 0);
}

#[test]
fn read_only_export_refuses_writes_and_writes_nothing() {
    let (e, srv) = Export::serve(&["--size=4m", "--readOnly"]);
    let uri = srv.uri();
    let st = Command::new("nbdinfo").args(["--is", "read-only", &uri]).status().unwrap();
    assert!(st.success());
    let out = Command::new("qemu-io").args(["-f", "raw", "-c", "write -P 1 0 4k", &uri]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("read-only") || text.contains("Operation not permitted") || !out.status.success(), "{text}");
    assert_eq!(srv.stop(), 0);
    assert_eq!(std::fs::read_dir(e.s.store()).unwrap().count(), 0, "a read-only export wrote to the store");
}

#[test]
fn nbdcopy_in_and_out_through_several_connections_across_a_restart() {
    let e = Export::new(&["--size=32m", "--blockSize=64k", "--listBlocks"]);
    let img = e.s.path("img");
    let data = random_image(&img, 32 << 20, 1);
    let srv = e.start();
    cmd("nbdcopy", &["-C", "4", "-R", "16", "--flush", img.to_str().unwrap(), &srv.uri()]);
    let srv = e.restart(srv);
    let back = e.s.path("back");
    cmd("nbdcopy", &["-C", "4", "-R", "16", &srv.uri(), back.to_str().unwrap()]);
    assert!(std::fs::read(&back).unwrap() == data, "image read back differs");
    // The zero stretches were never stored: one object per non-zero 64 KiB block.
    let nonzero = data.chunks(65536).filter(|c| c.iter().any(|&b| b != 0)).count();
    assert_eq!(std::fs::read_dir(e.s.store()).unwrap().count(), nonzero);
    assert_eq!(srv.stop(), 0);
}

#[test]
fn qemu_io_patterns_fua_write_zeroes_discard_flush() {
    let (e, srv) = Export::serve(&["--size=8m", "--blockSize=64k"]);
    let uri = srv.uri();
    let out = cmd(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -f -P 0xcd 0 1M",
            "-c",
            "read -P 0xcd 0 1M",
            "-c",
            "write -P 0x5a 1000 3000",
            "-c",
            "read -P 0x5a 1000 3000",
            "-c",
            "write -z -n 1M 1M",
            "-c",
            "read -P 0 1M 1M",
            "-c",
            "write -P 0x11 2M 1M",
            "-c",
            "write -z 2M 4097",
            "-c",
            "read -P 0 2M 4097",
            "-c",
            "read -P 0x11 2101249 1044479",
            "-c",
            "discard 3M 1M",
            "-c",
            "read -P 0 3M 1M",
            "-c",
            "write -P 0x77 4M 512k",
            "-c",
            "flush",
            &uri,
        ],
    );
    assert!(!out.contains("failed"), "{out}");
    // qemu negotiated extended headers (32-byte requests, extended replies) and used them.
    let o = Command::new("qemu-io")
        .args([
            "-T",
            "nbd_receive_option_reply",
            "-T",
            "nbd_receive_reply_chunk_header",
            "-f",
            "raw",
            "-c",
            "write -P 0x42 5M 8k",
            "-c",
            "read -P 0x42 5M 8k",
            &uri,
        ])
        .output()
        .unwrap();
    let trace = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && trace.contains("(extended headers), type 1 (ack)"), "{trace}");
    assert!(!String::from_utf8_lossy(&o.stdout).contains("failed"));
    // A fast zero of a partial block fails quickly and changes nothing.
    let o = Command::new("qemu-io").args(["-f", "raw", "-c", "write -z -n 4096 100", &uri]).output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout).to_string() + &String::from_utf8_lossy(&o.stderr);
    assert!(text.contains("Operation not supported"), "{text}");
    // Everything persisted across a restart.
    let srv = e.restart(srv);
    let out = cmd(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-r",
            "-c",
            "read -P 0xcd 0 1000",
            "-c",
            "read -P 0x5a 1000 3000",
            "-c",
            "read -P 0xcd 4000 1044576",
            "-c",
            "read -P 0 1M 1M",
            "-c",
            "read -P 0 2M 4097",
            "-c",
            "read -P 0x11 2101249 1044479",
            "-c",
            "read -P 0 3M 1M",
            "-c",
            "read -P 0x77 4M 512k",
            "-c",
            "read -P 0x42 5M 8k",
            &srv.uri(),
        ],
    );
    assert!(!out.contains("failed") && !out.contains("Pattern verification"), "{out}");
    assert_eq!(srv.stop(), 0);
}

/// An nbdfuse process exposing an export as a file; unmounted and reaped on drop.
struct NbdFuse {
    child: Option<Child>,
    file: PathBuf,
}

impl NbdFuse {
    fn start(file: &Path, sock: &Path, size: u64) -> NbdFuse {
        let child = Command::new("nbdfuse")
            .arg(file)
            .arg("--unix")
            .arg(sock)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let f = NbdFuse { child: Some(child), file: file.to_path_buf() };
        wait_for(30, "nbdfuse's file", || std::fs::metadata(file).is_ok_and(|m| m.len() == size));
        f
    }
}

impl Drop for NbdFuse {
    fn drop(&mut self) {
        let Some(mut c) = self.child.take() else { return };
        // The loop device just detached may hold the file for a moment: retry the unmount.
        let dir = self.file.parent().unwrap().to_path_buf();
        for _ in 0..200 {
            if !is_mounted(&dir) {
                break;
            }
            let _ = Command::new("fusermount3").arg("-u").arg(&dir).stderr(Stdio::null()).status();
            std::thread::sleep(Duration::from_millis(50));
        }
        for _ in 0..500 {
            if c.try_wait().unwrap().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        let _ = Command::new("umount").arg("-l").arg(&dir).status();
    }
}

/// ext4 on `file`, which is served from the export while the guard `expose` returns lives: a
/// tree written, then its directory `gone` deleted and trimmed (both front ends used here turn
/// punch-hole into TRIM); after a server restart, fsck is clean and the rest of the tree reads
/// back.
fn ext4_survives_a_restart<G>(e: &Export, file: &Path, seed: u64, gone: &str, expose: impl Fn() -> G) {
    let ext4 = e.s.ext4();
    let srv = e.start();
    let tree = {
        let _exposed = expose();
        sh(&format!("mkfs.ext4 -q -F {}", file.display()));
        let fs = Ext4::mount(file, &ext4);
        let tree = write_tree(&ext4, 60, seed);
        // Deleting files makes ext4 discard on fstrim.
        std::fs::remove_dir_all(ext4.join(gone)).unwrap();
        sh(&format!("fstrim {}", ext4.display()));
        fs.unmount();
        fsck_clean(file);
        tree
    };
    let srv = e.restart(srv);
    {
        let _exposed = expose();
        fsck_clean(file);
        let fs = Ext4::mount(file, &ext4);
        let prefix = format!("{gone}/");
        check_tree(&ext4, &tree.into_iter().filter(|(p, _)| !p.starts_with(&prefix)).collect::<Vec<_>>());
        fs.unmount();
    }
    assert_eq!(srv.stop(), 0);
}

#[test]
fn ext4_through_nbdfuse_survives_a_restart() {
    let e = Export::new(&["--size=64m", "--blockSize=64k"]);
    // nbdfuse mounts the directory holding the file: an empty one of its own.
    let file = e.s.mnt().join("disk.img");
    ext4_survives_a_restart(&e, &file, 7, "d6", || NbdFuse::start(&file, &e.sock, 64 << 20));
}

/// A qemu-storage-daemon FUSE export of an NBD export; killed (which unmounts) on drop.
struct QsdFuse {
    pid: i32,
    file: PathBuf,
}

impl QsdFuse {
    fn start(file: &Path, sock: &Path, dir: &Path) -> QsdFuse {
        std::fs::write(file, b"").unwrap();
        let pidfile = dir.join("qsd.pid");
        let _ = std::fs::remove_file(&pidfile);
        cmd(
            "qemu-storage-daemon",
            &[
                "--daemonize",
                "--pidfile",
                pidfile.to_str().unwrap(),
                "--blockdev",
                &format!("driver=nbd,node-name=n0,server.type=unix,server.path={},discard=unmap", sock.display()),
                "--export",
                &format!("type=fuse,id=e0,node-name=n0,mountpoint={},writable=on", file.display()),
            ],
        );
        let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
        wait_for(10, "the qemu FUSE export", || is_mounted(file));
        QsdFuse { pid, file: file.to_path_buf() }
    }
}

impl Drop for QsdFuse {
    fn drop(&mut self) {
        // SAFETY: signalling the daemon we started.
        unsafe { libc::kill(self.pid, libc::SIGTERM) };
        for _ in 0..500 {
            // SAFETY: probing whether it still runs.
            if unsafe { libc::kill(self.pid, 0) } != 0 && !is_mounted(&self.file) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("umount").arg("-l").arg(&self.file).status();
    }
}

#[test]
fn ext4_through_qemu_storage_daemon_survives_a_restart() {
    let e = Export::new(&["--size=64m", "--blockSize=64k"]);
    let file = e.s.path("qsd.img");
    ext4_survives_a_restart(&e, &file, 8, "d5", || QsdFuse::start(&file, &e.sock, e.s.dir.path()));
}

/// Our aio-parallel-style checker: CONNS connections, each owning a slice of the export, keep
/// DEPTH random reads and writes in flight (never two overlapping at once) for SECS seconds;
/// every read is compared with a shadow copy; the final shadow is written to OUT.
const AIO_PARALLEL: &str = r#"
import nbd, os, random, sys, threading, time
uri, img, out = sys.argv[1], sys.argv[2], sys.argv[3]
secs, conns, depth = float(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
shadow = bytearray(open(img, 'rb').read())
size = len(shadow)
piece = size // conns
counts = [0] * conns
errors = []

def worker(i):
    try:
        rnd = random.Random(i)
        h = nbd.NBD()
        h.connect_uri(uri)
        lo = i * piece
        inflight = {}
        end = time.time() + secs
        while time.time() < end or inflight:
            while time.time() < end and len(inflight) < depth:
                n = rnd.randrange(1, 65) * 512
                off = lo + rnd.randrange(0, (piece - n) // 512 + 1) * 512
                if any(off < o + l and o < off + n for (_, o, l, _) in inflight.values()):
                    break
                if rnd.random() < 0.5:
                    buf = nbd.Buffer(n)
                    c = h.aio_pread(buf, off)
                    inflight[c] = ('r', off, n, buf)
                else:
                    data = bytearray(rnd.randbytes(n))
                    shadow[off:off + n] = data
                    flags = nbd.CMD_FLAG_FUA if rnd.random() < 0.05 else 0
                    c = h.aio_pwrite(nbd.Buffer.from_bytearray(data), off, flags=flags)
                    inflight[c] = ('w', off, n, None)
            if inflight:
                h.poll(-1)
            for c in list(inflight):
                if h.aio_command_completed(c):
                    kind, off, n, buf = inflight.pop(c)
                    if kind == 'r' and buf.to_bytearray() != shadow[off:off + n]:
                        raise Exception('connection %d: read of %d bytes at %d differs from the shadow copy' % (i, n, off))
                    counts[i] += 1
        h.flush()
        h.shutdown()
    except Exception as e:
        errors.append(repr(e))

threads = [threading.Thread(target=worker, args=(i,)) for i in range(conns)]
start = time.time()
for t in threads: t.start()
for t in threads: t.join()
took = time.time() - start
if errors:
    print('\n'.join(errors)); sys.exit(1)
open(out, 'wb').write(shadow)
print(sum(counts), min(counts), '%.0f' % (sum(counts) / took))
"#;

#[test]
fn aio_parallel_style_concurrency_checked_against_a_shadow_copy() {
    // Without a block cache (reads racing writes of the same block reach the zero-block cache
    // and the store directly: this found a zero-cache race), then with one.
    for cache in ["--blockCacheSize=0", "--blockCacheSize=1000"] {
        let e = Export::new(&["--size=16m", "--blockSize=4k", cache]);
        let img = e.s.path("img");
        random_image(&img, 16 << 20, 3);
        let srv = e.start();
        cmd("nbdcopy", &["--flush", img.to_str().unwrap(), &srv.uri()]);
        let shadow = e.s.path("shadow");
        let out = python(AIO_PARALLEL, &[&srv.uri(), img.to_str().unwrap(), shadow.to_str().unwrap(), "2", "8", "64"]);
        let nums: Vec<u64> = out.split_whitespace().map(|v| v.parse().unwrap()).collect();
        eprintln!(
            "aio-parallel {cache}: {} requests, fewest on one connection {}, {} per second",
            nums[0], nums[1], nums[2]
        );
        assert!(nums[1] >= 64, "a connection made too little progress: {out}");
        // The whole export equals the shadow after a restart.
        let srv = e.restart(srv);
        let back = e.s.path("back");
        cmd("nbdcopy", &[&srv.uri(), back.to_str().unwrap()]);
        assert!(
            std::fs::read(&back).unwrap() == std::fs::read(&shadow).unwrap(),
            "export differs from the shadow copy"
        );
        assert_eq!(srv.stop(), 0);
    }
}

#[test]
fn kill9_with_a_cache_file_keeps_every_flushed_and_fua_byte() {
    let s = Scratch::new();
    let (_, cache_flag) = s.cache_file();
    let e = Export::in_scratch(
        s,
        &["--size=8m", "--blockSize=4k", "--blockCacheSize=2000", "--blockCacheWriteDelay=60000", &cache_flag],
    );
    let srv = e.start();
    python(
        r#"
import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1])
h.pwrite(b'A' * 100000, 0)
h.flush()
h.pwrite(b'B' * 50000, 200000, nbd.CMD_FLAG_FUA)
h2 = nbd.NBD(); h2.connect_uri(sys.argv[1])
h2.pwrite(b'C' * 30000, 400000)
h.flush()                       # covers the write on the other connection (multi-conn)
h2.pwrite(b'D' * 7000, 600000)  # never flushed
h.shutdown(); h2.shutdown()
"#,
        &[&srv.uri()],
    );
    srv.kill9();
    assert!(!e.sock.exists() || std::os::unix::net::UnixStream::connect(&e.sock).is_err());
    let srv = e.start_with(&["--blockCacheRecoverDirtyBlocks"]);
    python(
        r#"
import nbd, sys
h = nbd.NBD(); h.connect_uri(sys.argv[1])
assert h.pread(100000, 0) == b'A' * 100000
assert h.pread(50000, 200000) == b'B' * 50000
assert h.pread(30000, 400000) == b'C' * 30000
d = h.pread(7000, 600000)
assert d in (b'D' * 7000, bytes(7000)) or set(d) <= {0, 68}, 'unflushed data is old or new, never garbage'
h.shutdown()
"#,
        &[&srv.uri()],
    );
    assert_eq!(srv.stop(), 0);
}

#[test]
fn hostile_clients_get_errors_or_a_closed_connection_and_others_carry_on() {
    let (e, srv) = Export::serve(&["--size=4m", "--blockSize=4k"]);
    let out = python(
        r#"
import nbd, socket, struct, sys
sock = sys.argv[1]
uri = 'nbd+unix:///?socket=' + sock
good = nbd.NBD(); good.connect_uri(uri)
good.pwrite(b'G' * 8192, 4096)

def raw():
    s = socket.socket(socket.AF_UNIX); s.connect(sock); s.settimeout(10)
    assert s.recv(18)[:8] == b'NBDMAGIC'
    return s

def closed(s):
    try:
        return s.recv(1) == b''
    except ConnectionResetError:
        return True

# Garbage instead of the client flags and options.
s = raw(); s.sendall(b'\x00\x00\x00\x01' + b'garbage' * 10); assert closed(s)
# An option of 4 GiB.
s = raw(); s.sendall(struct.pack('>IQII', 1, 0x49484156454F5054, 7, 0xffffffff)); assert closed(s)
# Transmission: export-name, then a write claiming 4 GiB of payload.
s = raw(); s.sendall(struct.pack('>IQII', 3, 0x49484156454F5054, 1, 0)); s.recv(10)
s.sendall(struct.pack('>IHHQQI', 0x25609513, 0, 1, 1, 0, 0xffffffff)); assert closed(s)
# A client vanishing in the middle of a write payload.
s = raw(); s.sendall(struct.pack('>IQII', 3, 0x49484156454F5054, 1, 0)); s.recv(10)
s.sendall(struct.pack('>IHHQQI', 0x25609513, 0, 1, 1, 0, 65536) + b'X' * 1000); s.close()

# With strict mode off, libnbd sends what it is told; the server answers with errors.
h = nbd.NBD(); h.set_strict_mode(0); h.connect_uri(uri)
size = h.get_size()
for what, f in [('read past the end', lambda: h.pread(10, size - 5)),
                ('write past the end', lambda: h.pwrite(b'x' * 10, size - 5)),
                ('trim past the end', lambda: h.trim(4096, size)),
                ('unknown flag', lambda: h.pread(10, 0, flags=1 << 9)),
                ('oversize read', lambda: h.pread(64 << 20, 0))]:
    try:
        f(); print('accepted:', what); sys.exit(1)
    except nbd.Error as e:
        print(what, '->', e.errno, '|', e.string)
assert h.pread(4, 0) == bytes(4), 'nothing was written at 0'
h.shutdown()
assert good.pread(8192, 4096) == b'G' * 8192
good.shutdown()
"#,
        &[e.sock.to_str().unwrap()],
    );
    for want in [
        "read past the end -> EINVAL",
        "write past the end -> ENOSPC",
        "trim past the end -> EINVAL",
        "unknown flag -> EINVAL",
    ] {
        assert!(out.contains(want), "{want}: {out}");
    }
    eprintln!("{out}");
    assert_eq!(srv.stop(), 0);
}

#[test]
fn daemon_mode_tcp_stats_mirror_and_signals() {
    let s = Scratch::new();
    let sock = s.path("sock");
    let mirror = s.path("stats.txt");
    let store = s.store();
    // Daemon: returns 0 once listening.
    let out = run(&[
        "--nbd",
        "--test",
        "--size=4m",
        &format!("--nbdListen={}", sock.display()),
        &format!("--statsFileMirror={}", mirror.display()),
        "--nbd-flag=--verbose",
        "--nbd-param=foo=bar",
        store.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(err.lines().filter(|l| l.contains("--nbd-flag and --nbd-param are ignored")).count(), 1, "{err}");
    let pids = daemon_pids(sock.to_str().unwrap());
    assert_eq!(pids.len(), 1);
    let uri = unix_uri(&sock);
    cmd("qemu-io", &["-f", "raw", "-c", "write -P 9 0 64k", "-c", "flush", &uri]);
    wait_for(10, "the stats mirror", || std::fs::read_to_string(&mirror).is_ok_and(|t| t.contains("zero_block_cache")));
    // SIGTERM: flushed, socket removed, process gone.
    // SAFETY: signalling the daemon this test started.
    unsafe { libc::kill(pids[0], libc::SIGTERM) };
    wait_for(30, "the daemon to exit", || daemon_pids(sock.to_str().unwrap()).is_empty());
    assert!(!sock.exists());
    assert_eq!(std::fs::read_dir(&store).unwrap().count(), 16, "64 KiB of 4 KiB blocks stored");

    // TCP on loopback, foreground, SIGINT.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr = format!("127.0.0.1:{port}");
    let a = vec![
        "--nbd".to_string(),
        "-f".into(),
        format!("--nbdListen={addr}"),
        "--test".into(),
        "--size=4m".into(),
        store.to_string_lossy().into_owned(),
    ];
    let srv = NbdServer::spawn(a, s.path("tcp"), Some(addr));
    cmd("qemu-io", &["-f", "raw", "-r", "-c", "read -P 9 0 64k", &srv.uri()]);
    // SAFETY: signalling our child.
    unsafe { libc::kill(srv.pid(), libc::SIGINT) };
    assert_eq!(srv.stop(), 0);
}

#[test]
fn upstream_device_form_runs_nbd_client_or_says_why_not() {
    let s = Scratch::new();
    let store = s.store();
    // No such device (no nbd kernel module): one clear line before anything is touched.
    let out = run(&["--nbd", "--test", "--size=4m", store.to_str().unwrap(), "/dev/nbd-absent"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("does not exist") && err.contains("modprobe nbd"), "{err}");
    // A device, but no nbd-client.
    let dev = s.path("nbd7");
    std::fs::write(&dev, b"").unwrap();
    let out = Command::new(bin())
        .args(["--nbd", "--test", "--size=4m", store.to_str().unwrap(), dev.to_str().unwrap()])
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("nbd-client not found"), "{err}");
    // The real nbd-client on a device that is not an NBD device: its error, exit 1, cleaned up.
    let out = run(&["--nbd", "--test", "--size=4m", "-f", store.to_str().unwrap(), dev.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("nbd-client failed"), "{err}");
    assert_eq!(std::fs::read_dir(&store).unwrap().count(), 0);
    // A stand-in nbd-client records its command line and proves the socket serves the volume.
    let bindir = s.path("bin");
    std::fs::create_dir(&bindir).unwrap();
    let log = s.path("nbd-client.log");
    let script = format!(
        "#!/bin/sh\necho \"$@\" >> {log}\nif [ \"$1\" = -unix ]; then nbdinfo --size \"nbd+unix:///?socket=$2\" >> {log} || exit 1; fi\n",
        log = log.display()
    );
    let fake = bindir.join("nbd-client");
    std::fs::write(&fake, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bindir.display(), std::env::var("PATH").unwrap());
    let out = Command::new(bin())
        .args(["--nbd", "--test", "--size=4m", "--readOnly", store.to_str().unwrap(), dev.to_str().unwrap()])
        .env("PATH", &path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let pids = daemon_pids(dev.to_str().unwrap());
    assert_eq!(pids.len(), 1);
    let text = std::fs::read_to_string(&log).unwrap();
    let first: Vec<&str> = text.lines().next().unwrap().split(' ').collect();
    assert_eq!(first[0], "-unix");
    assert!(first[1].ends_with(".sock"));
    assert_eq!(&first[2..], &[dev.to_str().unwrap(), "-b", "4096", "-readonly"]);
    assert_eq!(text.lines().nth(1), Some("4194304"));
    // SAFETY: signalling the daemon this test started.
    unsafe { libc::kill(pids[0], libc::SIGTERM) };
    wait_for(30, "the daemon to exit", || daemon_pids(dev.to_str().unwrap()).is_empty());
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.lines().last(), Some(format!("-d {}", dev.display()).as_str()), "detached at exit:\n{text}");
    assert!(!Path::new(first[1]).exists(), "private socket removed");
}

#[test]
fn tls_is_required_when_configured_and_carries_the_data() {
    let s = Scratch::new();
    let sock = s.path("sock");
    let tls = s.path("tls");
    std::fs::create_dir(&tls).unwrap();
    let (cert, key) = (tls.join("server-cert.pem"), tls.join("server-key.pem"));
    cmd(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-keyout",
            key.to_str().unwrap(),
            "-out",
            cert.to_str().unwrap(),
        ],
    );
    // libnbd verifies the server against ca-cert.pem in its certificates directory.
    std::fs::copy(&cert, tls.join("ca-cert.pem")).unwrap();
    let args = test_args(
        &s,
        &[
            "--size=8m",
            "--blockSize=64k",
            &format!("--nbdTlsCert={}", cert.display()),
            &format!("--nbdTlsKey={}", key.display()),
        ],
    );
    let srv = NbdServer::spawn(
        [vec!["--nbd".to_string(), "-f".into(), format!("--nbdListen={}", sock.display())], args].concat(),
        sock.clone(),
        Some(String::new()),
    );
    let uri = format!("nbds+unix:///?socket={}&tls-certificates={}", sock.display(), tls.display());
    let info = cmd("nbdinfo", &[&uri]);
    assert!(info.contains("with TLS"), "{info}");
    let img = s.path("img");
    let data = random_image(&img, 8 << 20, 5);
    cmd("nbdcopy", &["-C", "2", "--flush", img.to_str().unwrap(), &uri]);
    let back = s.path("back");
    cmd("nbdcopy", &[&uri, back.to_str().unwrap()]);
    assert!(std::fs::read(&back).unwrap() == data);
    // Without TLS: refused before anything about the export is said.
    let plain = Command::new("nbdinfo").arg(unix_uri(&sock)).output().unwrap();
    assert!(!plain.status.success());
    assert!(!String::from_utf8_lossy(&plain.stdout).contains("export-size"));
    assert_eq!(srv.stop(), 0);
}
