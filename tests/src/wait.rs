//! Waiting for a condition that becomes true asynchronously.
//!
//! [`eventually`] owns the retry loop scenarios use when no event can be awaited directly: it
//! re-checks every [`POLL_INTERVAL`] until the check yields a value or the deadline passes, and
//! then reports what was awaited and the last error seen.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// Pause between two checks.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Runs `check` until it returns `Ok(Some(value))`, and returns that value.
///
/// `Ok(None)` means "not yet" and `Err(_)` means "not yet, and here is why"; both are retried
/// every [`POLL_INTERVAL`]. A check still running at the deadline is cancelled. After `timeout`
/// the error names `what` and the last error, if any.
///
/// ```no_run
/// # async fn f(receiver: herald_tests::Receiver) -> anyhow::Result<()> {
/// use std::time::Duration;
///
/// let first = herald_tests::eventually(Duration::from_secs(5), "a delivery", || async {
///     Ok(receiver.requests().into_iter().next())
/// })
/// .await?;
/// # Ok(()) }
/// ```
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_error: Option<anyhow::Error> = None;
    let mut attempts = 0_u64;
    loop {
        attempts += 1;
        match tokio::time::timeout_at(deadline, check()).await {
            Ok(Ok(Some(value))) => return Ok(value),
            Ok(Ok(None)) => {}
            Ok(Err(error)) => last_error = Some(error),
            Err(_) => {
                last_error = Some(anyhow::anyhow!("the last check was still running"));
            }
        }
        if Instant::now() >= deadline {
            return Err(match last_error {
                Some(error) => error.context(format!(
                    "timed out after {timeout:?} ({attempts} checks) waiting for {what}; \
                     last error"
                )),
                None => anyhow::anyhow!(
                    "timed out after {timeout:?} ({attempts} checks) waiting for {what}"
                ),
            });
        }
        tokio::time::sleep_until(deadline.min(Instant::now() + POLL_INTERVAL)).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[tokio::test]
    async fn returns_the_first_value() -> anyhow::Result<()> {
        let calls = AtomicU32::new(0);
        let value = eventually(Duration::from_secs(5), "three calls", || async {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            match n {
                1 => anyhow::bail!("transient"),
                2 => Ok(None),
                _ => Ok(Some(n)),
            }
        })
        .await?;
        assert_eq!(value, 3);
        Ok(())
    }

    #[tokio::test]
    async fn times_out_naming_what_and_the_last_error() {
        let error = eventually(Duration::from_millis(100), "the moon", || async {
            anyhow::bail!("still dark") as anyhow::Result<Option<()>>
        })
        .await
        .expect_err("never ready");
        let message = format!("{error:#}");
        assert!(message.contains("waiting for the moon"), "{message}");
        assert!(message.ends_with("last error: still dark"), "{message}");

        let error = eventually(Duration::from_millis(50), "nothing", || async {
            Ok(None::<()>)
        })
        .await
        .expect_err("never ready");
        assert!(
            format!("{error:#}").contains("waiting for nothing"),
            "{error:#}"
        );
    }

    #[tokio::test]
    async fn cancels_a_check_that_hangs() {
        let error = eventually(Duration::from_millis(50), "a hang", || async {
            std::future::pending::<anyhow::Result<Option<()>>>().await
        })
        .await
        .expect_err("never ready");
        assert!(format!("{error:#}").contains("still running"), "{error:#}");
    }
}
