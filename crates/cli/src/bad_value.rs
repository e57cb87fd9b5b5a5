//! The error of a refused command-line value: what the value parsers (and the size parser)
//! return, and what [`crate::args::parse`] hands to the user as one line.
//!
//! It promises a message that names the flag (or what the value is) and the problem, and no
//! cause to print after it. It is a leaf module (it imports nothing of this crate), so the
//! size parser and the flag parsers can both return it without importing each other.

/// A flag value its parser refused; the message names the flag (or what the value is) and the
/// problem.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BadValue {
    /// Not a number or size at all.
    #[error("invalid {what} \"{value}\"")]
    Invalid {
        /// The flag, or what the value is (`file size`).
        what: String,
        /// The value as given.
        value: String,
    },
    /// A number too big for its type.
    #[error("{what} \"{value}\" is too big")]
    TooBig {
        /// What the value is.
        what: String,
        /// The value as given.
        value: String,
    },
    /// A value the flag's rule refuses.
    #[error("invalid {flag} \"{value}\": {rule}")]
    Breaks {
        /// The flag.
        flag: String,
        /// The value as given.
        value: String,
        /// What the flag takes.
        rule: &'static str,
    },
    /// A word that is not one of the flag's choices.
    #[error("invalid {flag} \"{value}\": must be one of {}", .choices.join(", "))]
    NotOneOf {
        /// The flag.
        flag: String,
        /// The value as given.
        value: String,
        /// The words the flag takes.
        choices: &'static [&'static str],
    },
    /// `--ipTOS` neither a number up to 255 nor a name.
    #[error("invalid {flag} value \"{value}\": expected 0..255 or lowdelay, throughput, reliability, lowcost, mincost")]
    IpTos {
        /// The flag.
        flag: String,
        /// The value as given.
        value: String,
    },
    /// Signature version 2.
    #[error("{flag}=aws2 is not supported (AWS signature version 2 is deprecated); use aws4")]
    Aws2 {
        /// The flag.
        flag: String,
    },
    /// A cipher we do not implement.
    #[error("unsupported cipher \"{0}\": use AES-128-CBC, AES-192-CBC, AES-256-CBC or AES-256-GCM")]
    Cipher(String),
    /// A deflate level out of range.
    #[error("invalid deflate level {0}: must be between 0 and 9 (or -1 for the default)")]
    DeflateLevel(i32),
    /// A block size that is not a power of two.
    #[error("block size must be a power of 2")]
    NotPowerOfTwo,
    /// A block size over 2 GiB (as the user wrote it, or with the largest suffix).
    #[error("block size {0} is too big (at most 2g)")]
    BlockSizeTooBig(String),
    /// A size's problem, with the flag named in front.
    #[error("{flag}: {inner}")]
    OfFlag {
        /// The flag.
        flag: String,
        /// The size's problem.
        inner: Box<BadValue>,
    },
}

impl BadValue {
    /// `value` breaks `flag`'s rule.
    pub(crate) fn breaks(flag: &str, value: &str, rule: &'static str) -> BadValue {
        BadValue::Breaks { flag: flag.into(), value: value.into(), rule }
    }

    /// This problem, with `flag` named in front.
    pub(crate) fn of_flag(self, flag: &str) -> BadValue {
        BadValue::OfFlag { flag: flag.into(), inner: Box::new(self) }
    }
}
