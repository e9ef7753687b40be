//! The services' fault policy in one place: an attempt that fails with a transient fault (the broker or a database
//! away or restarting) is started again after a backoff — 0.5 s doubling to 30 s, back to 0.5 s after an attempt
//! that ran a minute (a new incident) — and a definite fault ends the service. A shutdown ends any wait at once.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// An attempt that ran this long before failing is a new incident: the backoff starts over.
const NEW_INCIDENT: Duration = Duration::from_secs(60);

/// The backoff between attempts, for loops that cannot be written as [`until_definite`] (apply keeps state across
/// sessions).
#[derive(Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: FIRST_BACKOFF }
    }
}

impl Backoff {
    /// The wait before the next attempt, given how long the failed one ran (a long run is a new incident).
    pub fn next_wait(&mut self, attempt_ran: Duration) -> Duration {
        if attempt_ran > NEW_INCIDENT {
            self.next = FIRST_BACKOFF;
        }
        let wait = self.next;
        self.next = (self.next * 2).min(MAX_BACKOFF);
        wait
    }

    /// Starts over, after an attempt that made progress.
    pub fn reset(&mut self) {
        self.next = FIRST_BACKOFF;
    }

    /// Sleeps `wait`; false when `shutdown` fired first.
    pub async fn sleep(wait: Duration, shutdown: &CancellationToken) -> bool {
        tokio::select! {
            _ = shutdown.cancelled() => false,
            _ = tokio::time::sleep(wait) => true,
        }
    }
}

/// Runs `attempt` until it returns `Ok`, fails with an error `is_transient` rejects, or `shutdown` fires during a
/// backoff (then `Ok`). `warn` is told each transient error and the wait before the next attempt.
pub async fn until_definite<E, Fut>(
    shutdown: &CancellationToken,
    mut attempt: impl FnMut() -> Fut,
    is_transient: impl Fn(&E) -> bool,
    mut warn: impl FnMut(&E, Duration),
) -> Result<(), E>
where
    Fut: Future<Output = Result<(), E>>,
{
    let mut backoff = Backoff::default();
    loop {
        let started = Instant::now();
        match attempt().await {
            Err(error) if is_transient(&error) && !shutdown.is_cancelled() => {
                let wait = backoff.next_wait(started.elapsed());
                warn(&error, wait);
                if !Backoff::sleep(wait, shutdown).await {
                    return Ok(());
                }
            }
            other => return other,
        }
    }
}

/// Like [`until_definite`] for an attempt that yields a value and has nothing in flight (a check, a connection, a
/// slot made): a shutdown also ends a running attempt, dropping it. `Ok(None)` when stopped.
pub async fn until_value<T, E, Fut>(
    shutdown: &CancellationToken,
    mut attempt: impl FnMut() -> Fut,
    is_transient: impl Fn(&E) -> bool,
    mut warn: impl FnMut(&E, Duration),
) -> Result<Option<T>, E>
where
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = Backoff::default();
    loop {
        let started = Instant::now();
        let result = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(None),
            result = attempt() => result,
        };
        match result {
            Ok(value) => return Ok(Some(value)),
            Err(error) if is_transient(&error) => {
                let wait = backoff.next_wait(started.elapsed());
                warn(&error, wait);
                if !Backoff::sleep(wait, shutdown).await {
                    return Ok(None);
                }
            }
            Err(error) => return Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn retries_transient_faults_with_a_growing_backoff_and_stops_on_a_definite_one() {
        let shutdown = CancellationToken::new();
        let mut calls = 0;
        let mut waits = Vec::new();
        let result = until_definite(
            &shutdown,
            || {
                calls += 1;
                let n = calls;
                async move { Err::<(), _>(if n < 4 { "transient" } else { "definite" }) }
            },
            |e: &&str| *e == "transient",
            |_, wait| waits.push(wait),
        )
        .await;
        assert_eq!(result, Err("definite"));
        assert_eq!(waits, [Duration::from_millis(500), Duration::from_secs(1), Duration::from_secs(2)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_ends_the_wait() {
        let shutdown = CancellationToken::new();
        let stopper = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            stopper.cancel();
        });
        let result = until_definite(&shutdown, || async { Err::<(), _>("transient") }, |_| true, |_, _| {}).await;
        assert_eq!(result, Ok(()), "the backoff ends with the shutdown");
        // Already shutting down: the transient error is returned, not retried.
        let result = until_definite(&shutdown, || async { Err::<(), _>("transient") }, |_| true, |_, _| {}).await;
        assert_eq!(result, Err("transient"));
    }
}
