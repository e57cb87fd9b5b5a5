//! The mount table names the volume: type `fuse.s3backer` and the `--test` directory as the
//! source, in /proc/mounts, findmnt(8) and df(1), as other FUSE file systems show theirs.

mod common;
use common::*;

#[test]
fn proc_mounts_findmnt_and_df_show_type_and_source() {
    let s = Scratch::new();
    let m = Mount::test_dir(&s, &["--size=4m", "--blockSize=64k"]);
    let store = s.store().canonicalize().unwrap();
    let mnt = s.mnt().canonicalize().unwrap();
    let (store, mnt) = (store.to_str().unwrap(), mnt.to_str().unwrap());

    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    let line = mounts.lines().find(|l| l.split(' ').nth(1) == Some(mnt)).expect("in /proc/mounts");
    let fields: Vec<&str> = line.split(' ').collect();
    assert_eq!((fields[0], fields[2]), (store, "fuse.s3backer"), "{line}");

    let found = cmd("findmnt", &["-n", "-o", "SOURCE,FSTYPE", mnt]);
    assert_eq!(found.split_whitespace().collect::<Vec<_>>(), vec![store, "fuse.s3backer"], "{found}");

    let df = cmd("df", &["--output=source,fstype", mnt]);
    let row = df.lines().nth(1).expect("a df row");
    assert_eq!(row.split_whitespace().collect::<Vec<_>>(), vec![store, "fuse.s3backer"], "{df}");
    assert_eq!(m.unmount(), 0);
}
