//! Polling with a deadline, instead of sleeping; and a deadline on anything awaited, so a
//! test fails naming what never came instead of hanging.

use std::future::Future;
use std::time::{Duration, Instant};

/// How long [`within`] waits: far longer than any answer on loopback takes.
pub const ANSWER: Duration = Duration::from_secs(10);

/// Polls `check` every 20 ms until it returns `Some`, panicking with `what` after `limit`.
pub async fn until<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Awaits `fut`, panicking with `what` if it takes longer than [`ANSWER`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    within_for(ANSWER, what, fut).await
}

/// Awaits `fut`, panicking with `what` if it takes longer than `limit`.
pub async fn within_for<T>(limit: Duration, what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| panic!("no answer within {limit:?}: {what}"))
}
