//! Doctor checks: mixed (to be written).

use super::{Context, Entry};

/// The mixed findings.
pub(super) async fn check(_ctx: &Context) -> Vec<Entry> {
    Vec::new()
}
