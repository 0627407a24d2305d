//! Doctor checks: http (to be written).

use super::{Context, Entry};

/// The http findings.
pub(super) async fn check(_ctx: &Context) -> Vec<Entry> {
    Vec::new()
}
