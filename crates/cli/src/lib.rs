//! s3backer command line (placeholder while the skeleton is laid down).

/// Runs the program and returns the exit code.
pub fn main() -> i32 {
    0
}
