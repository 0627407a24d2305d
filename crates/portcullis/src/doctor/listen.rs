//! Doctor checks: listen (to be written).

use super::{Context, Entry};

/// The listen findings.
pub(super) async fn check(_ctx: &Context) -> Vec<Entry> {
    Vec::new()
}
