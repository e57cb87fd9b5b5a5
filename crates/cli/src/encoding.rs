//! The codec's configuration (compression, encryption) from the command line, including the
//! password: `--password`, the first line of `--passwordFile`, or a prompt on the terminal.
//! Resolved before the process daemonizes, so the prompt reaches the user.

use crate::config::{Config, Location};
use anyhow::{Context, Result, anyhow, bail};
use s3b_codec::{Cipher, CodecConfig, Compression, Encryption};
use std::io::{BufRead, IsTerminal, Write};
use zeroize::Zeroizing;

/// Largest `--keyLength` (OpenSSL's EVP_MAX_KEY_LENGTH, as upstream).
const MAX_KEY_LENGTH: usize = 64;

/// The key-derivation salt: `"<bucket>/<prefix>"` as upstream. A `--test` directory has no
/// stable name (it may be given relative or moved), so there the salt is `"--test/<prefix>"`.
fn salt(cfg: &Config) -> String {
    match &cfg.location {
        Location::Bucket(b) => format!("{b}/{}", cfg.prefix),
        Location::Dir(_) => format!("--test/{}", cfg.prefix),
    }
}

fn parse_level(v: &str, what: &str) -> Result<i32> {
    v.trim().parse::<i32>().map_err(|_| anyhow!("invalid {what} \"{v}\": expected a number"))
}

/// Reads a password from the terminal without echo.
fn prompt_password() -> Result<Zeroizing<String>> {
    let stdin = std::io::stdin();
    let fd = libc::STDIN_FILENO;
    // SAFETY: termios is plain data; tcgetattr/tcsetattr only read/write it for a valid fd.
    let mut term: libc::termios = unsafe { std::mem::zeroed() };
    let have_term = unsafe { libc::tcgetattr(fd, &mut term) } == 0;
    let saved = term;
    if have_term {
        term.c_lflag &= !libc::ECHO;
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &term) };
    }
    eprint!("Password: ");
    let _ = std::io::stderr().flush();
    let mut line = Zeroizing::new(String::new());
    let r = stdin.lock().read_line(&mut line);
    if have_term {
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
        eprintln!();
    }
    r.context("can't read the password")?;
    Ok(Zeroizing::new(line.trim_end_matches(['\n', '\r']).to_string()))
}

/// The codec configuration the command line asks for (may prompt for the password).
pub fn codec_config(cfg: &Config) -> Result<CodecConfig> {
    let d = &cfg.cli.codec;
    let cipher = match &d.encrypt {
        None => None,
        Some(name) => Some(Cipher::parse(name).ok_or_else(|| {
            anyhow!("unsupported cipher \"{name}\": use AES-128-CBC, AES-192-CBC, AES-256-CBC or AES-256-GCM")
        })?),
    };
    let level = d.compress_level.as_deref().map(|v| parse_level(v, "--compress-level")).transpose()?;
    let compress = match d.compress.as_deref().map(str::trim) {
        None => cipher.map(|_| Compression::Deflate(None)).filter(|_| level.is_some()),
        Some(a) if a.eq_ignore_ascii_case("deflate") => Some(Compression::Deflate(None)),
        Some(a) if a.eq_ignore_ascii_case("zstd") => Some(Compression::Zstd(None)),
        Some(a) => match a.parse::<i32>() {
            Ok(l) => Some(Compression::Deflate(Some(check_deflate_level(l)?))),
            Err(_) => bail!("invalid --compress \"{a}\": use deflate, zstd, or a deflate level"),
        },
    };
    let compress = match (compress, level) {
        (c, None) => c,
        (None, Some(_)) => bail!("--compress-level requires --compress or --encrypt"),
        (Some(Compression::Deflate(_)), Some(l)) => Some(Compression::Deflate(Some(check_deflate_level(l)?))),
        (Some(Compression::Zstd(_)), Some(l)) => {
            if !(-7..=22).contains(&l) {
                bail!("invalid --compress-level {l} for zstd: must be between -7 and 22");
            }
            Some(Compression::Zstd(Some(l)))
        }
    };
    let key_length = match d.key_length.as_deref() {
        None => None,
        Some(v) => {
            let n: usize = v.trim().parse().map_err(|_| anyhow!("invalid --keyLength \"{v}\""))?;
            let Some(c) = cipher else { bail!("--keyLength requires --encrypt") };
            if n != 0 && (n < c.key_len() || n > MAX_KEY_LENGTH) {
                bail!("invalid --keyLength {n}: must be between {} and {MAX_KEY_LENGTH} for {}", c.key_len(), c.name());
            }
            (n != 0).then_some(n)
        }
    };
    if d.password.is_some() && d.password_file.is_some() {
        bail!("--password and --passwordFile cannot be used together");
    }
    let encrypt = match cipher {
        None => {
            if d.password.is_some() || d.password_file.is_some() {
                bail!("a password was given but --encrypt was not");
            }
            None
        }
        Some(cipher) => {
            let password = if let Some(p) = &d.password {
                log::warn!("--password on the command line is visible to other users in ps; prefer --passwordFile");
                Zeroizing::new(p.clone())
            } else if let Some(f) = &d.password_file {
                let text = Zeroizing::new(
                    std::fs::read_to_string(f)
                        .map_err(|e| anyhow!("can't read password file {f}: {}", crate::io_msg(&e)))?,
                );
                Zeroizing::new(text.lines().next().unwrap_or("").to_string())
            } else if std::io::stdin().is_terminal() {
                prompt_password()?
            } else {
                bail!("--encrypt needs a password: give --passwordFile, or run on a terminal to be asked");
            };
            if password.is_empty() {
                bail!("the encryption password is empty");
            }
            Some(Encryption { cipher, password, key_length, salt: salt(cfg) })
        }
    };
    Ok(CodecConfig { compress, encrypt, default_content_encoding: d.default_content_encoding.clone() })
}

fn check_deflate_level(l: i32) -> Result<u32> {
    match l {
        -1 => Ok(6),
        0..=9 => Ok(l as u32),
        _ => bail!("invalid deflate level {l}: must be between 0 and 9 (or -1 for the default)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        for (args, needle) in [
            (&["--compress=lzma"][..], "invalid --compress"),
            (&["--compress=12"], "deflate level 12"),
            (&["--compress-level=3"], "requires --compress"),
            (&["--compress=zstd", "--compress-level=99"], "for zstd"),
            (&["--encrypt=DES", "--password=x"], "unsupported cipher"),
            (&["--encrypt", "--password=x", "--keyLength=8"], "--keyLength 8"),
            (&["--keyLength=16"], "requires --encrypt"),
            (&["--password=x"], "--encrypt was not"),
            (&["--encrypt", "--password="], "empty"),
            (&["--encrypt", "--password=x", "--passwordFile=/etc/hostname"], "cannot be used together"),
            (&["--encrypt", "--passwordFile=/nonexistent/pw"], "can't read password file"),
        ] {
            let e = cc(args).unwrap_err().to_string();
            assert!(e.contains(needle), "{args:?}: {e}");
        }
    }
}
