//! The last good config on disk (static stability): an agent that restarts while the control
//! plane or etcd is unreachable delivers with the subscriptions it last applied, and catches up
//! when the stream is back (the control plane sends a full snapshot on every connection).
//!
//! The file `config-cache.pb` holds one `herald.v1.ConfigUpdate` snapshot. It is replaced
//! atomically (written to a temporary file, synced, renamed) as soon as a new table is
//! applied: a restarted agent must not fall back to a table older than one it had acknowledged,
//! or events emitted before it reaches the control plane again would be matched against
//! subscriptions that are gone, or miss ones that exist. Tables applied while a save is under
//! way are saved together, right after it (the newest one). It
//! holds the subscriptions' signing secrets, so it is created with mode 0600.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use herald_proto::v1 as pb;
use prost::Message;
use tokio::sync::watch;

use crate::routes::Routes;

/// The largest cache file read back (a corrupt or foreign file must not exhaust memory).
const MAX_CACHE_BYTES: u64 = 1 << 30;

/// The cache file in `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join("config-cache.pb")
}

/// Reads the cached table; `None` when there is none or it is unreadable (said in the log).
pub fn load(dir: &Path) -> Option<Routes> {
    let path = path(dir);
    let len = std::fs::metadata(&path).ok()?.len();
    if len > MAX_CACHE_BYTES {
        tracing::warn!(path = %path.display(), len, "config cache too large; ignoring it");
        return None;
    }
    let bytes = std::fs::read(&path).ok()?;
    if bytes.is_empty() {
        // Every save writes a snapshot, which is never empty: this file was cut.
        tracing::warn!(path = %path.display(), "config cache empty; ignoring it");
        return None;
    }
    let update = match pb::ConfigUpdate::decode(bytes.as_slice()) {
        Ok(update) => update,
        Err(err) => {
            tracing::warn!(path = %path.display(), error = %err, "config cache unreadable; ignoring it");
            return None;
        }
    };
    match Routes::default().apply(&update) {
        Ok(mut routes) => {
            // What the control plane says since this save is not known yet.
            routes.confirmed = false;
            if let Some(reason) = routes.refusal_reason() {
                tracing::warn!(path = %path.display(), reason, "config cache: subscriptions left out");
            }
            Some(routes)
        }
        Err(err) => {
            tracing::warn!(path = %path.display(), error = %err, "config cache invalid; ignoring it");
            None
        }
    }
}

/// Writes the table to the cache atomically.
pub fn save(dir: &Path, routes: &Routes) -> std::io::Result<()> {
    let path = path(dir);
    let tmp = path.with_extension("pb.tmp");
    let bytes = routes.to_snapshot().encode_to_vec();
    {
        // The table holds signing secrets: only the agent's user may read it.
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        // A leftover from a crash may have other permissions: start from a new file.
        let _ = std::fs::remove_file(&tmp);
        let mut file = options.open(&tmp)?;
        let written = std::io::Write::write_all(&mut file, &bytes).and_then(|()| file.sync_all());
        if let Err(err) = written {
            // Not left to hold the disk's last bytes (a full disk, say) until the next try.
            drop(file);
            let _ = std::fs::remove_file(&tmp);
            return Err(err);
        }
    }
    std::fs::rename(&tmp, &path)?;
    if let Ok(dir) = std::fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// What the control plane's stream says of the table beside its subscriptions (the log's body
/// limit, the tenants the agent was admitted for): saved when they change, at the same
/// revision too.
fn settings(table: &Routes) -> (usize, Option<pb::AdmittedTenants>) {
    (table.log_body_limit(), table.admitted_tenants().cloned())
}

/// How soon a save that failed (a full disk) is tried again when no newer table comes first.
const SAVE_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// Saves every new table until the routes channel closes, at once (the newest of those
/// applied meanwhile when a save was under way), and publishes on `saved_tx` the revision of
/// each table once its save is over (said in the log when it failed): the agent acknowledges
/// a config to the control plane only then. A save that failed is tried again every
/// [`SAVE_RETRY`] until one succeeds, so that a cache is not left older than the table in use
/// once the disk has room again.
pub async fn keep_saved(
    dir: PathBuf,
    mut routes: watch::Receiver<Arc<Routes>>,
    saved_tx: watch::Sender<i64>,
) {
    let (mut saved, mut saved_schemas, mut saved_settings) = {
        let table = routes.borrow();
        (table.revision, table.schemas().clone(), settings(&table))
    };
    let mut failed = false;
    loop {
        if failed {
            tokio::select! {
                changed = routes.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(SAVE_RETRY) => {}
            }
        } else if routes.changed().await.is_err() {
            return;
        }
        let table = routes.borrow_and_update().clone();
        let same_schemas = Arc::ptr_eq(table.schemas(), &saved_schemas);
        let same_settings = settings(&table) == saved_settings;
        if !table.loaded
            || (!failed && table.revision == saved && saved != 0 && same_schemas && same_settings)
        {
            continue;
        }
        let dir = dir.clone();
        let revision = table.revision;
        let schemas = table.schemas().clone();
        let table_settings = settings(&table);
        failed = match tokio::task::spawn_blocking(move || save(&dir, &table)).await {
            Ok(Ok(())) => {
                if failed {
                    tracing::info!(revision, "config cache saved again");
                }
                (saved, saved_schemas, saved_settings) = (revision, schemas, table_settings);
                false
            }
            Ok(Err(err)) => {
                if !failed {
                    tracing::warn!(error = %err, retry_in = ?SAVE_RETRY, "cannot save the config cache");
                }
                true
            }
            Err(err) => {
                tracing::warn!(error = %err, "config cache task failed");
                true
            }
        };
        saved_tx.send_replace(revision);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn the_cache_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        // A leftover temporary file with loose permissions is not reused as is.
        let tmp = path(dir.path()).with_extension("pb.tmp");
        std::fs::write(&tmp, b"old").unwrap();
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o644)).unwrap();
        save(dir.path(), &Routes::default()).unwrap();
        let mode = std::fs::metadata(path(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(load(dir.path()).is_some(), "the saved table reads back");
    }

    #[test]
    fn an_empty_cache_is_no_table() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(path(dir.path()), b"").unwrap();
        assert!(
            load(dir.path()).is_none(),
            "not a table without subscriptions"
        );
        save(dir.path(), &Routes::default()).unwrap();
        let read = load(dir.path()).expect("a saved table reads back");
        assert!(!read.confirmed, "not the control plane's word in this run");
    }

    #[tokio::test(start_paused = true)]
    async fn a_save_that_failed_is_made_again_once_it_can_be() {
        let dir = tempfile::tempdir().unwrap();
        // The temporary file's name taken by a directory: every save fails, as on a full disk.
        let blocked = path(dir.path()).with_extension("pb.tmp");
        std::fs::create_dir(&blocked).unwrap();
        let (routes_tx, routes) = watch::channel(Arc::new(Routes::default()));
        let (saved_tx, mut saved) = watch::channel(0);
        let saver = tokio::spawn(keep_saved(dir.path().to_owned(), routes, saved_tx));
        // The saver takes the table it starts with as saved: a new one comes after.
        tokio::task::yield_now().await;
        let update = pb::ConfigUpdate {
            revision: 7,
            snapshot: true,
            ..Default::default()
        };
        routes_tx.send_replace(Arc::new(Routes::default().apply(&update).unwrap()));
        saved.wait_for(|revision| *revision == 7).await.unwrap();
        assert!(!path(dir.path()).exists(), "the first save failed");
        // Room again, and no newer table: the save is made all the same.
        std::fs::remove_dir(&blocked).unwrap();
        for _ in 0..100 {
            if path(dir.path()).exists() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
        assert_eq!(load(dir.path()).expect("saved").revision, 7);
        drop(routes_tx);
        saver.await.unwrap();
    }
}
