//! The `s3backer` binary: all the work lives in the `s3b-cli` crate.

// The root package does not take the workspace lints (its integration tests unwrap and cast
// freely); the binary itself takes the unsafe and cast discipline of the library crates.
#![warn(clippy::undocumented_unsafe_blocks, clippy::cast_possible_truncation)]

fn main() {
    tune_allocator();
    std::process::exit(s3b_cli::main());
}

/// Most malloc arenas (heaps) the daemon's threads share: two kept random writes within the
/// memory bound at no cost in CPU (docs/design-notes.md).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENA_MAX: libc::c_int = 2;

/// Keeps the daemon's resident memory within what it promises (the block cache plus 64 MiB).
/// The block cache allocates and frees whole blocks all the time, from many threads (FUSE
/// session threads, runtime workers, the blocking pool); glibc gives threads arenas of their
/// own, and block buffers freed in one arena stay there, fragmented. A few shared arenas let
/// every thread reuse what any thread freed, at no cost in CPU; the measurements, and the
/// alternative tried (an mmap threshold below the block size), are in docs/design-notes.md.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes malloc's parameters; it is called before any other thread
    // exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX);
    }
}
