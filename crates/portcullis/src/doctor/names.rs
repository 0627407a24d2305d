//! Doctor checks: names (to be written).

use super::{Context, Entry};

/// The names findings.
pub(super) async fn check(_ctx: &Context) -> Vec<Entry> {
    Vec::new()
}
