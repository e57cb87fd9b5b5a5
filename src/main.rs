//! The `s3backer` binary: all the work lives in the `s3b-cli` crate.

// The root package does not take the workspace lints (its integration tests unwrap and cast
// freely); the binary itself takes the unsafe and cast discipline of the library crates.
#![warn(clippy::undocumented_unsafe_blocks, clippy::cast_possible_truncation)]

fn main() {
    tune_allocator();
    std::process::exit(s3b_cli::main());
}

/// Most malloc arenas (heaps) the daemon's threads share.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENA_MAX: libc::c_int = 2;

/// Keeps the daemon's resident memory close to what it holds. The block cache allocates and
/// frees whole blocks all the time (each write of part of a block makes a new copy of it, each
/// upload and read answer one more), from many threads (FUSE session threads, runtime workers,
/// the blocking pool). glibc gives threads arenas of their own, up to 8 per core, and block
/// buffers freed in one arena stay there, fragmented: random 4 KiB writes over FUSE peaked at
/// 155–168 MiB with a 64 MiB cache. Two arenas keep that at about 110 MiB (under the cache +
/// 64 MiB the daemon promises). Pinning the mmap threshold below the block size instead (every
/// block its own mapping) kept it at 78 MiB but doubled the CPU per block read (a mapping,
/// page faults and an unmapping per buffer): at 0 ms random reads ran at 0.80 of C s3backer
/// 2.1.6's rate against 1.02 with two arenas.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc's parameters; it is called before any other thread
    // exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX);
    }
}
