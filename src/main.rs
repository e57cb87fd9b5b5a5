//! The `s3backer` binary: all the work lives in the `s3b-cli` crate.

fn main() {
    std::process::exit(s3b_cli::main());
}
