//! Waiting for a condition in tests.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often [`eventually`] looks.
pub const POLL: Duration = Duration::from_millis(20);

/// Polls `check` every [`POLL`] until it gives `Some`, and returns that. Test support: panics naming `what`
/// when `timeout` passes first.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out ({timeout:?}) waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}
