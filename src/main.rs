//! The `s3backer` binary: all the work lives in the `s3b-cli` crate.

fn main() {
    tune_allocator();
    std::process::exit(s3b_cli::main());
}

/// Allocations of at least this many bytes get their own memory mapping, returned to the
/// system when freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 128 << 10;

/// Keeps the daemon's resident memory close to what it holds. The block cache allocates and
/// frees whole blocks all the time (each write of part of a block makes a new copy of it, each
/// upload and read answer one more). glibc's malloc raises its mmap threshold to the size of
/// the first such buffer freed, after which blocks come from the heaps of whichever threads
/// allocated them (session threads, runtime workers) and freed ones stay there, fragmented:
/// random 4 KiB writes over FUSE peaked at 155–168 MiB with a 64 MiB cache, against 77 MiB
/// with the threshold pinned. A fixed threshold (which also turns off the adjustment) gives
/// every block-sized buffer its own mapping, unmapped on free; smaller allocations are
/// unaffected.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc's parameters; it is called before any other thread
    // exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}
