//! Following a part of the config store for good: a listing, then a watch from the listing's
//! revision until the watch fails, then again, after a wait that doubles while the follower
//! gets nowhere (the store unreachable, say). The config hub and the schema feed follow their
//! parts of the store this way.

use std::future::Future;
use std::time::Duration;

/// Why one listing-and-watch ended.
pub type FollowError = Box<dyn std::error::Error + Send + Sync>;

/// Wait before the first attempt to list and watch again; it doubles while attempts get
/// nowhere, up to [`MAX_RETRY_DELAY`].
const RETRY_DELAY: Duration = Duration::from_millis(500);
/// The longest wait between attempts.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// How one listing-and-watch went.
pub struct Run {
    /// Whether it got anywhere (loaded a listing): the wait before the next starts over.
    pub progressed: bool,
    /// Why it ended.
    pub result: Result<(), FollowError>,
}

/// Runs `once` (one listing and the watch after it) over and over, forever; `what` names the
/// follower in the log.
pub async fn forever<F, Fut>(what: &str, mut once: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Run>,
{
    // Runs in a row that got nowhere: each doubles the wait.
    let mut fruitless = 0;
    loop {
        let run = once().await;
        fruitless = if run.progressed { 0 } else { fruitless + 1 };
        let delay = RETRY_DELAY
            .saturating_mul(1 << fruitless.min(4))
            .min(MAX_RETRY_DELAY);
        if let Err(err) = run.result {
            tracing::warn!(error = %err, retry_in = ?delay, "{what} watch failed; re-listing");
        }
        tokio::time::sleep(delay).await;
    }
}
