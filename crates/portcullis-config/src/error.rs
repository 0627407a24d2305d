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
