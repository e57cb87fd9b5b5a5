//! Finding the credentials a command line asks for, in this order (first match wins):
//! `--accessId`/`--accessKey` (or `--accessKeyEnv`), `--accessEC2IAM`, the access file
//! (`--accessFile`, default `~/.s3backer_passwd`), then — beyond upstream —
//! `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/`AWS_SESSION_TOKEN` and the AWS shared
//! credentials file (`AWS_SHARED_CREDENTIALS_FILE`, default `~/.aws/credentials`, profile
//! `AWS_PROFILE`); with none, requests go unsigned. Only local files and the environment are
//! read: nothing is sent.

use super::{Credentials, Keys};
use std::path::{Path, PathBuf};

/// The credential flags of the command line.
#[derive(Clone, Debug, Default)]
pub struct CredentialFlags {
    /// `--accessId`.
    pub access_id: Option<String>,
    /// `--accessKey`.
    pub access_key: Option<String>,
    /// `--accessKeyEnv`: the variable holding the secret key.
    pub access_key_env: Option<String>,
    /// `--accessFile`.
    pub access_file: Option<PathBuf>,
    /// `--accessEC2IAM`: the IAM role.
    pub ec2_iam_role: Option<String>,
    /// `--accessEC2IAM-IMDSv2`.
    pub imdsv2: bool,
}

/// Why the credentials could not be settled.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// Two ways of giving the secret key.
    #[error("--accessKey and --accessKeyEnv cannot be used together")]
    KeyTwice,
    /// IMDSv2 without a role.
    #[error("--accessEC2IAM-IMDSv2 requires --accessEC2IAM")]
    Imdsv2WithoutRole,
    /// A role and keys.
    #[error("--accessEC2IAM cannot be combined with --accessId, --accessKey or --accessKeyEnv")]
    RoleAndKeys,
    /// A role name that cannot be part of the metadata path.
    #[error("invalid --accessEC2IAM role \"{0}\"")]
    BadRole(String),
    /// `--accessKeyEnv` names an unset variable.
    #[error("--accessKeyEnv: environment variable {0} is not set")]
    EnvNotSet(String),
    /// A secret key without its id.
    #[error("--accessKey (or --accessKeyEnv) requires --accessId")]
    KeyWithoutId,
    /// The access file has no line for the id.
    #[error("no secret key for access id \"{id}\" in {}", .file.display())]
    IdNotInFile {
        /// The access id.
        id: String,
        /// The access file.
        file: PathBuf,
    },
    /// The access file given has no entry at all.
    #[error("no credentials in {}", .0.display())]
    EmptyFile(PathBuf),
    /// An access id with no secret key anywhere.
    #[error("no secret key for access id \"{0}\": give --accessKey, --accessKeyEnv or an --accessFile entry")]
    NoKey(String),
    /// A line of the access file is not `id:key`.
    #[error("{} line {line}: expected accessId:accessKey", .file.display())]
    BadLine {
        /// The access file.
        file: PathBuf,
        /// The line number, from 1.
        line: usize,
    },
    /// A credentials file could not be read.
    #[error("can't read {what} {}", .file.display())]
    Read {
        /// "access file" or "credentials file".
        what: &'static str,
        /// The file.
        file: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from)
}

/// Finds the credentials the flags ask for (see the module documentation for the order).
pub fn discover(s: &CredentialFlags) -> Result<Credentials, DiscoveryError> {
    if s.access_key.is_some() && s.access_key_env.is_some() {
        return Err(DiscoveryError::KeyTwice);
    }
    if s.imdsv2 && s.ec2_iam_role.is_none() {
        return Err(DiscoveryError::Imdsv2WithoutRole);
    }
    if let Some(role) = &s.ec2_iam_role {
        if s.access_id.is_some() || s.access_key.is_some() || s.access_key_env.is_some() {
            return Err(DiscoveryError::RoleAndKeys);
        }
        if role.is_empty() || role.contains('/') {
            return Err(DiscoveryError::BadRole(role.clone()));
        }
        return Ok(Credentials::Ec2Iam { role: role.clone(), imdsv2: s.imdsv2 });
    }
    if let Some(k) = given_keys(s)? {
        return Ok(k);
    }
    if let Some(k) = access_file(s)? {
        return Ok(Credentials::Static(k));
    }
    if let Some(id) = &s.access_id {
        return Err(DiscoveryError::NoKey(id.clone()));
    }
    aws_environment()
}

/// `--accessId` with `--accessKey` or `--accessKeyEnv` (an empty id: unsigned requests).
fn given_keys(s: &CredentialFlags) -> Result<Option<Credentials>, DiscoveryError> {
    let env_key = match &s.access_key_env {
        Some(var) => Some(std::env::var(var).map_err(|_| DiscoveryError::EnvNotSet(var.clone()))?),
        None => None,
    };
    let secret = s.access_key.clone().or(env_key);
    if s.access_id.is_none() && secret.is_some() {
        return Err(DiscoveryError::KeyWithoutId);
    }
    if s.access_key.is_some() {
        log::warn!(
            "--accessKey on the command line is visible to other users in ps; prefer --accessFile or --accessKeyEnv"
        );
    }
    match (&s.access_id, secret) {
        (Some(id), _) if id.is_empty() => Ok(Some(Credentials::Anonymous)),
        (Some(id), Some(secret)) => Ok(Some(Credentials::Static(Keys { id: id.clone(), secret, token: None }))),
        _ => Ok(None),
    }
}

/// The access file: explicit (must exist and hold an entry) or the default (optional).
fn access_file(s: &CredentialFlags) -> Result<Option<Keys>, DiscoveryError> {
    let (file, explicit) = match &s.access_file {
        Some(f) => (Some(f.clone()), true),
        None => (home().map(|h| h.join(".s3backer_passwd")), false),
    };
    let Some(file) = file.filter(|f| explicit || f.exists()) else { return Ok(None) };
    if let Some(k) = read_access_file(&file, s.access_id.as_deref())? {
        return Ok(Some(k));
    }
    match &s.access_id {
        Some(id) => Err(DiscoveryError::IdNotInFile { id: id.clone(), file }),
        None if explicit => Err(DiscoveryError::EmptyFile(file)),
        None => Ok(None),
    }
}

/// The AWS environment variables, then the AWS shared credentials file.
fn aws_environment() -> Result<Credentials, DiscoveryError> {
    if let (Ok(id), Ok(secret)) = (std::env::var("AWS_ACCESS_KEY_ID"), std::env::var("AWS_SECRET_ACCESS_KEY"))
        && !id.is_empty()
        && !secret.is_empty()
    {
        let token = std::env::var("AWS_SESSION_TOKEN").ok().filter(|t| !t.is_empty());
        return Ok(Credentials::Static(Keys { id, secret, token }));
    }
    let aws_file = std::env::var_os("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .or_else(|| home().map(|h| h.join(".aws/credentials")));
    if let Some(f) = aws_file.filter(|f| f.exists()) {
        let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
        if let Some(k) = read_aws_credentials(&f, &profile)? {
            return Ok(Credentials::Static(k));
        }
    }
    Ok(Credentials::Anonymous)
}

/// Reads `id:key` lines; returns the entry for `id`, or the first one when no id is given.
fn read_access_file(path: &Path, id: Option<&str>) -> Result<Option<Keys>, DiscoveryError> {
    let text = std::fs::read_to_string(path).map_err(|source| DiscoveryError::Read {
        what: "access file",
        file: path.to_path_buf(),
        source,
    })?;
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path)
        && m.permissions().mode() & 0o077 != 0
    {
        log::warn!("access file {} is readable by other users; chmod 600 it", path.display());
    }
    for (i, line) in text.lines().enumerate() {
        if line.is_empty() || line.starts_with('#') || line.starts_with(char::is_whitespace) {
            continue;
        }
        let Some((lid, key)) = line.split_once(':') else {
            return Err(DiscoveryError::BadLine { file: path.to_path_buf(), line: i + 1 });
        };
        if id.is_none_or(|id| id == lid) {
            return Ok(Some(Keys { id: lid.to_string(), secret: key.trim_end().to_string(), token: None }));
        }
    }
    Ok(None)
}

/// Reads one profile of an AWS shared credentials file.
fn read_aws_credentials(path: &Path, profile: &str) -> Result<Option<Keys>, DiscoveryError> {
    let text = std::fs::read_to_string(path).map_err(|source| DiscoveryError::Read {
        what: "credentials file",
        file: path.to_path_buf(),
        source,
    })?;
    let mut in_profile = false;
    let (mut id, mut secret, mut token) = (None, None, None);
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') && line.ends_with(']') {
            in_profile = line[1..line.len() - 1].trim() == profile;
            continue;
        }
        if !in_profile {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().to_string();
            match k.trim() {
                "aws_access_key_id" => id = Some(v),
                "aws_secret_access_key" => secret = Some(v),
                "aws_session_token" => token = Some(v),
                _ => {}
            }
        }
    }
    Ok(match (id, secret) {
        (Some(id), Some(secret)) => Some(Keys { id, secret, token }),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_file_lookup() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("pw");
        std::fs::write(&f, "# comment\n\n  indented:ignored\nid1:key1\nid2:key2\n").unwrap();
        assert_eq!(read_access_file(&f, None).unwrap().unwrap().secret, "key1");
        assert_eq!(read_access_file(&f, Some("id2")).unwrap().unwrap().secret, "key2");
        assert!(read_access_file(&f, Some("id3")).unwrap().is_none());
        std::fs::write(&f, "no colon here\n").unwrap();
        assert!(read_access_file(&f, None).unwrap_err().to_string().contains("line 1"));
    }

    #[test]
    fn aws_credentials_profiles() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("credentials");
        std::fs::write(&f, "[default]\naws_access_key_id = A\naws_secret_access_key = B\n[other]\naws_access_key_id=C\naws_secret_access_key=D\naws_session_token=T\n").unwrap();
        assert_eq!(read_aws_credentials(&f, "default").unwrap().unwrap().id, "A");
        let o = read_aws_credentials(&f, "other").unwrap().unwrap();
        assert_eq!((o.secret.as_str(), o.token.as_deref()), ("D", Some("T")));
        assert!(read_aws_credentials(&f, "none").unwrap().is_none());
    }

    #[test]
    fn flags_first_then_files() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("pw");
        std::fs::write(&f, "id1:key1\n").unwrap();
        let flags = |id: Option<&str>, key: Option<&str>| CredentialFlags {
            access_id: id.map(String::from),
            access_key: key.map(String::from),
            access_file: Some(f.clone()),
            ..Default::default()
        };
        let Credentials::Static(k) = discover(&flags(Some("a"), Some("b"))).unwrap() else { panic!() };
        assert_eq!((k.id.as_str(), k.secret.as_str()), ("a", "b"));
        let Credentials::Static(k) = discover(&flags(None, None)).unwrap() else { panic!() };
        assert_eq!(k.secret, "key1");
        let e = discover(&flags(Some("other"), None)).unwrap_err().to_string();
        assert_eq!(e, format!("no secret key for access id \"other\" in {}", f.display()));
        assert!(matches!(discover(&flags(None, Some("b"))), Err(DiscoveryError::KeyWithoutId)));
        assert!(matches!(discover(&flags(Some(""), None)), Ok(Credentials::Anonymous)));
        let missing = CredentialFlags { access_file: Some(d.path().join("none")), ..Default::default() };
        let e = discover(&missing).unwrap_err();
        assert!(e.to_string().starts_with("can't read access file"), "{e}");
        assert!(std::error::Error::source(&e).is_some(), "the I/O error is kept as the cause");
        let role = CredentialFlags { ec2_iam_role: Some("r".into()), imdsv2: true, ..Default::default() };
        assert!(matches!(discover(&role), Ok(Credentials::Ec2Iam { imdsv2: true, .. })));
        let both =
            CredentialFlags { ec2_iam_role: Some("r".into()), access_id: Some("a".into()), ..Default::default() };
        assert!(matches!(discover(&both), Err(DiscoveryError::RoleAndKeys)));
    }
}
