//! Doctor checks: certs (to be written).

use super::{Context, Entry};

/// The certs findings.
pub(super) async fn check(_ctx: &Context) -> Vec<Entry> {
    Vec::new()
}
