//! The codec's configuration for the stack: the settings checked in [`crate::config::codec`],
//! plus the password, read here from `--password`, the first line of `--passwordFile`, or a
//! prompt on the terminal. Run before the process daemonizes, so the prompt reaches the user.

use crate::config::codec::Password;
use crate::config::{Config, Location};
use anyhow::{Context, Result, bail};
use s3b_codec::{CodecConfig, Encryption};
use std::io::{BufRead, IsTerminal, Write};
use zeroize::Zeroizing;

/// The key-derivation salt: `"<bucket>/<prefix>"` as upstream. A `--test` directory has no
/// stable name (it may be given relative or moved), so there the salt is `"--test/<prefix>"`.
fn salt(cfg: &Config) -> String {
    match &cfg.location {
        Location::Bucket(b) => format!("{b}/{}", cfg.prefix),
        Location::Dir(_) => format!("--test/{}", cfg.prefix),
    }
}

/// Reads a password from the terminal without echo.
fn prompt_password() -> Result<Zeroizing<String>> {
    let stdin = std::io::stdin();
    let fd = libc::STDIN_FILENO;
    // SAFETY: termios is plain data, for which all zeros is a valid value.
    let mut term: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: tcgetattr only writes the termios it is given; a bad fd is an error return.
    let have_term = unsafe { libc::tcgetattr(fd, &mut term) } == 0;
    let saved = term;
    if have_term {
        term.c_lflag &= !libc::ECHO;
        // SAFETY: tcsetattr only reads the termios it is given, filled by tcgetattr above.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &term) };
    }
    eprint!("Password: ");
    let _ = std::io::stderr().flush();
    let mut line = Zeroizing::new(String::new());
    let r = stdin.lock().read_line(&mut line);
    if have_term {
        // SAFETY: as above; `saved` is the settings tcgetattr returned.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
        eprintln!();
    }
    r.context("can't read the password")?;
    Ok(Zeroizing::new(line.trim_end_matches(['\n', '\r']).to_string()))
}

/// The codec configuration the command line asks for (may prompt for the password).
pub fn codec_config(cfg: &Config) -> Result<CodecConfig> {
    let d = &cfg.codec;
    let encrypt = match &d.encrypt {
        None => None,
        Some(e) => {
            let password = match &e.password {
                Password::Given(p) => p.clone(),
                Password::File(f) => {
                    let text = Zeroizing::new(
                        std::fs::read_to_string(f)
                            .with_context(|| format!("can't read password file {}", f.display()))?,
                    );
                    Zeroizing::new(text.lines().next().unwrap_or("").to_string())
                }
                Password::Ask if std::io::stdin().is_terminal() => prompt_password()?,
                Password::Ask => {
                    bail!("--encrypt needs a password: give --passwordFile, or run on a terminal to be asked")
                }
            };
            if password.is_empty() {
                bail!("the encryption password is empty");
            }
            Some(Encryption { cipher: e.cipher, password, key_length: e.key_length, salt: salt(cfg) })
        }
    };
    Ok(CodecConfig { compress: d.compress, encrypt, default_content_encoding: d.default_content_encoding.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use s3b_codec::{Cipher, Compression};

    fn cc(args: &[&str]) -> Result<CodecConfig> {
        let mut a: Vec<String> = vec!["--test".into(), "--size=1m".into()];
        a.extend(args.iter().map(|s| s.to_string()));
        a.extend(["/tmp/d".to_string(), "/tmp/m".to_string()]);
        codec_config(&crate::config::validate(crate::args::parse(&a)?)?)
    }

    #[test]
    fn parses_upstream_spellings() {
        assert_eq!(cc(&["--compress"]).unwrap().compress, Some(Compression::Deflate(None)));
        assert_eq!(cc(&["--compress=9"]).unwrap().compress, Some(Compression::Deflate(Some(9))));
        assert_eq!(
            cc(&["--compress=ZSTD", "--compress-level=19"]).unwrap().compress,
            Some(Compression::Zstd(Some(19)))
        );
        let c = cc(&["--encrypt", "--password=x"]).unwrap();
        let e = c.encrypt.unwrap();
        assert_eq!((e.cipher, e.salt.as_str()), (Cipher::Aes128Cbc, "--test/"));
        assert_eq!(
            cc(&["--encrypt=aes-256-cbc", "--password=x", "--keyLength=48"]).unwrap().encrypt.unwrap().key_length,
            Some(48)
        );
    }

    #[test]
    fn bad_values_are_named() {
        crate::config::assert_refused(
            cc,
            &[
                ("--compress=lzma", "invalid --compress"),
                ("--compress=12", "deflate level 12"),
                ("--compress-level=3", "requires --compress"),
                ("--compress=zstd --compress-level=99", "for zstd"),
                ("--encrypt=DES --password=x", "unsupported cipher"),
                ("--encrypt --password=x --keyLength=8", "--keyLength 8"),
                ("--keyLength=16", "requires --encrypt"),
                ("--password=x", "--encrypt was not"),
                ("--encrypt --password=", "empty"),
                ("--encrypt --password=x --passwordFile=/etc/hostname", "cannot be used together"),
                ("--encrypt --passwordFile=/nonexistent/pw", "can't read password file"),
            ],
        );
    }
}
