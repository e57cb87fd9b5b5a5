//! The fstab check, shared by the fstab test and the Debian package test (which runs it with
//! the binary extracted from the package). Mounting through mount(8), exactly as an /etc/fstab
//! entry does, in both of its forms: `s3backer#BUCKET /mnt fuse OPTIONS` and
//! `BUCKET /mnt fuse.s3backer OPTIONS`. mount(8) runs
//! mount.fuse3, which runs `s3backer BUCKET /mnt -o OPTIONS` found in the standard PATH, with
//! the words mount(8) adds (`rw`, `dev`, `suid`, `_netdev`, …) and the FUSE options of
//! libfuse 2 and 3 that fstab lines written for C s3backer carry.
//!
//! The binary is "installed" as /usr/local/bin/s3backer inside a private mount namespace (a
//! bind mount over /usr/local/bin), so the test changes nothing on the machine.

#![allow(dead_code)]

use super::common::*;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

/// Mounts a `--test` volume through mount(8) in both fstab forms with `program` as the
/// installed s3backer, writes through one and reads back through the other.
pub fn fstab_entries_in_both_forms(program: &Path) {
    let s = Scratch::new();
    let bindir = s.path("bin");
    std::fs::create_dir(&bindir).unwrap();
    std::os::unix::fs::symlink(program, bindir.join("s3backer")).unwrap();
    let store = s.store();
    let mnt = s.mnt();
    let opts = "_netdev,nofail,test,size=16m,blockSize=64k,kernel_cache,auto_cache,entry_timeout=1,attr_timeout=0,\
                negative_timeout=0,max_background=32,congestion_threshold=24,sync_read,fsname=pubvol,subtype=s3backer";
    let script = format!(
        r#"set -e
mount --bind {bindir} /usr/local/bin
wait_exit() {{ while pgrep -f "^[^ ]*s3backer {store} " >/dev/null; do sleep 0.05; done; }}
# The fuse.s3backer form: the type names the program.
mount -t fuse.s3backer {store} {mnt} -o {opts}
grep " {mnt} " /proc/mounts
echo "exe: $(readlink -f /proc/$(pgrep -f "^[^ ]*s3backer {store} ")/exe)"
head -c 3000000 /dev/urandom > {pattern}
dd if={pattern} of={mnt}/file bs=64k conv=notrunc,fsync status=none
umount {mnt}
wait_exit
# The s3backer#bucket form.
mount -t fuse "s3backer#{store}" {mnt} -o {opts},ro
cmp -n 3000000 {pattern} {mnt}/file
umount {mnt}
wait_exit
echo done
"#,
        bindir = bindir.display(),
        store = store.display(),
        mnt = mnt.display(),
        pattern = s.path("pattern").display(),
    );
    let mut child = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-s"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stdout.ends_with("done\n"), "stdout:\n{stdout}\nstderr:\n{stderr}");
    // Mounted by our program (not another s3backer in the PATH), with the fsname asked for.
    let ours = std::fs::canonicalize(program).unwrap();
    assert!(stdout.contains(&format!("exe: {}\n", ours.display())), "{stdout}");
    assert!(stdout.starts_with(&format!("pubvol {} fuse", mnt.display())), "{stdout}");
}
