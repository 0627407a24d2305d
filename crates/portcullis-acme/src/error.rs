//! ACME failures: which step failed, the CA's problem document if there was one, and what
//! the CA said about when to try again.

use std::fmt;
use std::time::SystemTime;

/// The step of the ACME flow that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Reading the directory or creating/loading the account.
    Account,
    /// Creating the order.
    NewOrder,
    /// Fetching an authorization or choosing its challenge.
    Authorization,
    /// Telling the CA a challenge is ready.
    Challenge,
    /// Waiting for the CA to validate.
    Validation,
    /// Sending the CSR.
    Finalize,
    /// Downloading the certificate.
    Certificate,
    /// Writing the certificate to storage.
    Store,
    /// Asking for the renewal window (ARI).
    RenewalInfo,
    /// Reading or writing what the replicas share (`cluster:`).
    Cluster,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Account => "account",
            Step::NewOrder => "new-order",
            Step::Authorization => "authorization",
            Step::Challenge => "challenge",
            Step::Validation => "validation",
            Step::Finalize => "finalize",
            Step::Certificate => "certificate",
            Step::Store => "store",
            Step::RenewalInfo => "renewal-info",
            Step::Cluster => "cluster",
        })
    }
}

/// A failed ACME step.
#[derive(Debug, Clone)]
pub struct AcmeError {
    /// Where it failed.
    pub step: Step,
    /// What happened, including the CA's problem document when there is one.
    pub message: String,
    /// The problem `type` (e.g. `urn:ietf:params:acme:error:rateLimited`).
    pub problem_type: Option<String>,
    /// When the CA asked to be contacted again (`Retry-After`).
    pub retry_after: Option<SystemTime>,
}

const PROBLEM_PREFIX: &str = "urn:ietf:params:acme:error:";

impl AcmeError {
    /// An error with a message and no problem document.
    pub fn new(step: Step, message: impl Into<String>) -> Self {
        Self {
            step,
            message: message.into(),
            problem_type: None,
            retry_after: None,
        }
    }

    /// Wraps an instant-acme error, keeping the problem document's type.
    pub fn from_acme(step: Step, err: instant_acme::Error) -> Self {
        let problem_type = match &err {
            instant_acme::Error::Api(p) => p.r#type.clone(),
            _ => None,
        };
        let mut message = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        Self {
            step,
            message,
            problem_type,
            retry_after: None,
        }
    }

    /// Whether the CA's problem type is `urn:ietf:params:acme:error:<kind>`.
    pub fn is(&self, kind: &str) -> bool {
        self.problem_type
            .as_deref()
            .and_then(|t| t.strip_prefix(PROBLEM_PREFIX))
            == Some(kind)
    }

    /// The CA rejected a nonce; the whole flow can be retried at once.
    pub fn is_bad_nonce(&self) -> bool {
        self.is("badNonce")
    }

    /// The CA no longer knows the account (a test CA restarted, or it was deactivated).
    pub fn is_account_missing(&self) -> bool {
        self.is("accountDoesNotExist")
    }

    /// The CA is rate limiting.
    pub fn is_rate_limited(&self) -> bool {
        self.is("rateLimited")
    }
}

impl fmt::Display for AcmeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} step failed: {}", self.step, self.message)
    }
}

impl std::error::Error for AcmeError {}
