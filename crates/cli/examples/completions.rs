//! Writes the bash, zsh and fish completions of `s3backer` into the directory given (default
//! `target/completions`): `cargo run -p s3b-cli --example completions -- DIR`.

fn main() {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "target/completions".to_string());
    match s3b_cli::completions::write_all(std::path::Path::new(&dir)) {
        Ok(files) => {
            for f in files {
                println!("{}", f.display());
            }
        }
        Err(e) => {
            eprintln!("completions: can't write into {dir}: {e}");
            std::process::exit(1);
        }
    }
}
