//! Signing out of the console on every replica. A session is a sealed cookie that every
//! replica opens by itself, so clearing the browser's copy would leave any other copy working
//! until its time is up. Signing out therefore also writes a record naming the session and
//! when it would have expired anyway, kept in the config store, and every console request
//! looks for it: a copy of the cookie taken before the sign-out stops working at once,
//! everywhere, restarts included.
//!
//! Records are plain keys (the embedded store drops leased keys when it opens, which would
//! bring ended sessions back after a restart); each sign-out removes the records whose
//! sessions have expired by then, so they stay as few as the sign-outs of one session's time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::keys;
use crate::store::{Op, Store, StoreError, Txn};

/// Records looked at for removal per sign-out (the rest go with later sign-outs).
const SWEEP_AT_MOST: usize = 100;

/// The config store's records of signed-out console sessions.
#[derive(Clone)]
pub struct ConsoleSessions {
    store: Store,
}

/// Milliseconds since the Unix epoch.
fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Until when a record ends its session: `None` when the record does not read (it then ends
/// the session for good: a damaged record must not let a session back in).
fn until(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

impl ConsoleSessions {
    /// The records in `store`.
    pub fn new(store: Store) -> Self {
        ConsoleSessions { store }
    }

    /// Ends the session `id` for good, as of `now`; a session lasts at most `lasts`, so the
    /// record is needed until then. Then removes some records of sessions expired by `now`
    /// (best effort: the sign-out holds either way).
    pub async fn end(&self, id: &str, now: SystemTime, lasts: Duration) -> Result<(), StoreError> {
        let record = Op::Put(
            keys::console_session_ended(id),
            unix_ms(now + lasts).to_string().into_bytes(),
        );
        self.store.txn(Txn::default().then(record)).await?;
        if let Err(err) = self.sweep(now).await {
            tracing::warn!(error = %err, "cannot remove the records of expired console sessions; a later sign-out will");
        }
        Ok(())
    }

    /// Removes records of sessions expired by `now`, among the oldest [`SWEEP_AT_MOST`]
    /// (session ids sort by when they were made, so the expired come first).
    async fn sweep(&self, now: SystemTime) -> Result<(), StoreError> {
        let oldest = self
            .store
            .list_page(keys::CONSOLE_SESSIONS_ENDED, None, SWEEP_AT_MOST)
            .await?;
        let mut sweep = Txn::default();
        let mut any = false;
        for kv in oldest
            .iter()
            .filter(|kv| until(&kv.value).is_some_and(|until| until <= unix_ms(now)))
        {
            sweep = sweep.then(Op::Delete(kv.key.clone()));
            any = true;
        }
        if any {
            self.store.txn(sweep).await?;
        }
        Ok(())
    }

    /// Whether the session `id` was signed out of (as of `now`).
    pub async fn ended(&self, id: &str, now: SystemTime) -> Result<bool, StoreError> {
        let record = self.store.get(&keys::console_session_ended(id)).await?;
        Ok(record.is_some_and(|kv| until(&kv.value).is_none_or(|until| until > unix_ms(now))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[tokio::test]
    async fn a_session_signed_out_of_stays_ended_across_restarts_and_others_do_not()
    -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let now = SystemTime::now();
        {
            let sessions = ConsoleSessions::new(Store::embedded(dir.path()).await?);
            assert!(!sessions.ended("ses_a", now).await?);
            sessions.end("ses_a", now, HOUR).await?;
            assert!(sessions.ended("ses_a", now).await?);
            assert!(!sessions.ended("ses_b", now).await?);
            // Signing out twice (two tabs) is no error.
            sessions.end("ses_a", now, HOUR).await?;
        }
        let sessions = ConsoleSessions::new(Store::embedded(dir.path()).await?);
        assert!(sessions.ended("ses_a", now).await?, "ended after a restart");
        Ok(())
    }

    #[tokio::test]
    async fn records_of_expired_sessions_go_with_the_next_sign_out() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let store = Store::embedded(dir.path()).await?;
        let sessions = ConsoleSessions::new(store.clone());
        let now = SystemTime::now();
        sessions.end("ses_old", now, HOUR).await?;
        let later = now + 2 * HOUR;
        assert!(
            !sessions.ended("ses_old", later).await?,
            "its cookie expired anyway"
        );
        sessions.end("ses_new", later, HOUR).await?;
        let (left, _) = store.list(keys::CONSOLE_SESSIONS_ENDED).await?;
        let left: Vec<&str> = left.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(left, [keys::console_session_ended("ses_new")]);
        // A record that does not read ends its session for good.
        store
            .txn(Txn::default().then(Op::Put(
                keys::console_session_ended("ses_damaged"),
                b"\xff".to_vec(),
            )))
            .await?;
        assert!(sessions.ended("ses_damaged", later + HOUR).await?);
        Ok(())
    }
}
