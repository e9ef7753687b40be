//! Waiting on conditions with a deadline: never a bare sleep.

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `check` every 50 ms until it returns `Ok(Some(value))`, or fails after `timeout` naming `what` and the
/// last error `check` returned (a condition that errors is retried: servers may still be starting).
pub async fn until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> crate::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = crate::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(err) => last_error = Some(err),
        }
        if Instant::now() >= deadline {
            return Err(timed_out(what, timeout, last_error));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Blocking variant for process start-up checks outside a runtime.
pub fn until_blocking<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> crate::Result<Option<T>>,
) -> crate::Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check() {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(err) => last_error = Some(err),
        }
        if Instant::now() >= deadline {
            return Err(timed_out(what, timeout, last_error));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn timed_out(what: &str, timeout: Duration, last_error: Option<anyhow::Error>) -> anyhow::Error {
    let message = format!("timed out after {timeout:?} waiting for {what}");
    match last_error {
        Some(err) => err.context(message),
        None => anyhow::anyhow!(message),
    }
}
