//! Signing out of the console on every replica. A session is a sealed cookie that every
//! replica opens by itself, so clearing the browser's copy would leave any other copy working
//! until its time is up. Signing out therefore also writes a record naming the session, kept
//! in the config store for as long as a session lasts (a lease of that length, so records go by
//! themselves), and every console request looks for it: a copy of the cookie taken before the
//! sign-out stops working at once, everywhere.

use std::time::Duration;

use crate::keys;
use crate::store::{Op, Store, StoreError, Txn};

/// The config store's records of signed-out console sessions.
#[derive(Clone)]
pub struct ConsoleSessions {
    store: Store,
}

impl ConsoleSessions {
    /// The records in `store`.
    pub fn new(store: Store) -> Self {
        ConsoleSessions { store }
    }

    /// Ends the session `id` for good; the record is kept for `lasts` (how long a session
    /// can be used), after which the session's cookie has expired anyway.
    pub async fn end(&self, id: &str, lasts: Duration) -> Result<(), StoreError> {
        let lease = self.store.grant_lease(lasts).await?;
        let record = Op::PutLeased(
            keys::console_session_ended(id),
            b"signed out".to_vec(),
            lease,
        );
        self.store
            .txn(Txn::default().then(record))
            .await
            .map(|_| ())
    }

    /// Whether the session `id` was signed out of.
    pub async fn ended(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self
            .store
            .get(&keys::console_session_ended(id))
            .await?
            .is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_session_signed_out_of_stays_ended_and_others_do_not() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let sessions = ConsoleSessions::new(Store::embedded(dir.path()).await?);
        assert!(!sessions.ended("ses_a").await?);
        sessions.end("ses_a", Duration::from_secs(60)).await?;
        assert!(sessions.ended("ses_a").await?);
        assert!(!sessions.ended("ses_b").await?);
        // Signing out twice (two tabs) is no error.
        sessions.end("ses_a", Duration::from_secs(60)).await?;
        assert!(sessions.ended("ses_a").await?);
        Ok(())
    }
}
