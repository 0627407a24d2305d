//! What the manager is asked to keep certified, shared by the manager and the fleet.

/// A site whose certificate ACME manages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeSite {
    /// The site's name (certificates are published under it).
    pub name: String,
    /// The DNS names the certificate must cover.
    pub names: Vec<String>,
}
