//! Doctor checks: origins (to be written).

use super::{Context, Entry};

/// The origins findings.
pub(super) async fn check(_ctx: &Context) -> Vec<Entry> {
    Vec::new()
}
