use std::fmt;
use std::path::PathBuf;

/// One problem found in a configuration, tied to the key that caused it.
///
/// `key` is a path into the YAML document such as `sites[1].origin.mode`, so a user
/// can find the line without reading a stack trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Path of the offending key, e.g. `sites[0].tls.cert`.
    pub key: String,
    /// What is wrong, in words a user can act on.
    pub message: String,
}

impl Problem {
    /// A problem at `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration file itself could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file that was asked for.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The file was read but is not a valid configuration; every problem found is listed.
    #[error("{}", Problems(.0))]
    Invalid(Vec<Problem>),
}

impl Error {
    /// Every problem, one per key (a read failure counts as one problem with no key).
    pub fn problems(&self) -> Vec<Problem> {
        match self {
            Error::Read { .. } => vec![Problem::new("", self.to_string())],
            Error::Invalid(problems) => problems.clone(),
        }
    }
}

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

struct Problems<'a>(&'a [Problem]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// Why a value as written in a configuration (a duration, a size, an address, a host) was
/// refused. `Display` is the message a user reads after the key path; the variant says
/// which kind of value it was, so a caller need not read the text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ValueError {
    /// A duration ([`parse_duration`](crate::parse_duration)) that is empty or does not
    /// read as numbers each followed by a unit.
    #[error("{0}")]
    Duration(String),
    /// A size ([`parse_size`](crate::parse_size)) that is not a number of bytes with an
    /// optional unit.
    #[error("{0}")]
    Size(String),
    /// A listen address ([`parse_addr`](crate::parse_addr)) that is not `IP:PORT` or
    /// `:PORT`.
    #[error("{0}")]
    Address(String),
    /// A host ([`HostPattern::parse`](crate::HostPattern::parse)) that is not a DNS name,
    /// a wildcard over one or an IP address.
    #[error("{0}")]
    Host(String),
}

impl ValueError {
    /// Whether a duration was refused.
    pub fn is_duration(&self) -> bool {
        matches!(self, Self::Duration(_))
    }

    /// Whether a size was refused.
    pub fn is_size(&self) -> bool {
        matches!(self, Self::Size(_))
    }

    /// Whether an address was refused.
    pub fn is_address(&self) -> bool {
        matches!(self, Self::Address(_))
    }

    /// Whether a host was refused.
    pub fn is_host(&self) -> bool {
        matches!(self, Self::Host(_))
    }
}

/// Why the admin token file ([`AdminToken::read`](crate::AdminToken::read)) cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The token file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The file holds nothing but whitespace.
    #[error(
        "{} is empty; write a long random token into it (e.g. `openssl rand -hex 32`)",
        path.display()
    )]
    Empty {
        /// The token file.
        path: PathBuf,
    },
    /// The token has spaces or characters outside printable ASCII, which a header cannot
    /// carry.
    #[error(
        "{} must hold one token of printable ASCII characters without spaces",
        path.display()
    )]
    NotPrintable {
        /// The token file.
        path: PathBuf,
    },
}

impl TokenError {
    /// Whether the file could not be read (as opposed to holding an unusable token).
    pub fn is_read(&self) -> bool {
        matches!(self, Self::Read { .. })
    }

    /// The token file.
    pub fn path(&self) -> &std::path::Path {
        match self {
            Self::Read { path, .. } | Self::Empty { path } | Self::NotPrintable { path } => path,
        }
    }
}
