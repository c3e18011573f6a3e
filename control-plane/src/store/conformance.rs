//! The store contract as executable checks. Every [`Store`] implementation must pass
//! [`check_all`]; the end-to-end tests run it against a real etcd and the embedded store.
//! Each check works under its own `prefix`, so it can share a store with other data.

use std::time::Duration;

use super::{Compare, Op, Store, Txn, TxnOutcome, WatchEvent, WatchReceiver};

/// Runs every check under `prefix` (which should be unused).
pub async fn check_all(store: &Store, prefix: &str) {
    revisions_and_compare(store, &format!("{prefix}/cas/")).await;
    listing_and_paging(store, &format!("{prefix}/list/")).await;
    watch_history_and_live(store, &format!("{prefix}/watch/")).await;
    many_keys_at_once(store, &format!("{prefix}/many/")).await;
    leases(store, &format!("{prefix}/leases/")).await;
}

/// Keys put with a lease go when it is revoked or expires (a watchable delete); a key written
/// again without it stays; an expired lease cannot be renewed or written with.
async fn leases(store: &Store, prefix: &str) {
    let key = |name: &str| format!("{prefix}{name}");
    let ttl = Duration::from_secs(2);
    let lease = store.grant_lease(ttl).await.expect("grant");
    let start = commit(
        store,
        Txn::default()
            .then(Op::PutLeased(key("a"), b"a".to_vec(), lease))
            .then(Op::PutLeased(key("b"), b"b".to_vec(), lease))
            .then(Op::Put(key("plain"), b"p".to_vec())),
    )
    .await;
    assert!(store.keep_lease_alive(lease).await.expect("renew"));
    // Written again without the lease: no longer bound to it.
    commit(
        store,
        Txn::default().then(Op::Put(key("b"), b"b2".to_vec())),
    )
    .await;
    let mut watch = store.watch(prefix, start + 1).await.expect("watch");
    assert!(
        matches!(&next(&mut watch).await.events[..], [WatchEvent::Put(kv)] if kv.key == key("b"))
    );

    store.revoke_lease(lease).await.expect("revoke");
    assert_eq!(
        next(&mut watch).await.events,
        vec![WatchEvent::Delete { key: key("a") }]
    );
    assert!(store.get(&key("a")).await.expect("get").is_none());
    assert!(store.get(&key("b")).await.expect("get").is_some());
    assert!(store.get(&key("plain")).await.expect("get").is_some());

    // Not renewed: it expires on its own.
    let lapsing = store.grant_lease(ttl).await.expect("grant");
    commit(
        store,
        Txn::default().then(Op::PutLeased(key("c"), b"c".to_vec(), lapsing)),
    )
    .await;
    let deleted = next(&mut watch).await;
    assert!(matches!(&deleted.events[..], [WatchEvent::Put(kv)] if kv.key == key("c")));
    assert_eq!(
        next(&mut watch).await.events,
        vec![WatchEvent::Delete { key: key("c") }],
        "the key of a lapsed lease is deleted"
    );
    assert!(!store.keep_lease_alive(lapsing).await.expect("renew"));
    assert!(
        store
            .txn(Txn::default().then(Op::PutLeased(key("d"), vec![], lapsing)))
            .await
            .is_err(),
        "a lapsed lease cannot be written with"
    );
}

/// `get_many` answers every key, in order, present or not, beyond one etcd transaction's size.
async fn many_keys_at_once(store: &Store, prefix: &str) {
    let mut txn = Txn::default();
    for i in (0..300).step_by(2) {
        txn = txn.then(Op::Put(
            format!("{prefix}{i:03}"),
            i.to_string().into_bytes(),
        ));
    }
    // One transaction of 150 puts would exceed etcd's default limit of 128 operations.
    let mut puts = txn.ops.into_iter();
    loop {
        let chunk: Vec<Op> = puts.by_ref().take(100).collect();
        if chunk.is_empty() {
            break;
        }
        let mut batch = Txn::default();
        for op in chunk {
            batch = batch.then(op);
        }
        commit(store, batch).await;
    }
    let keys: Vec<String> = (0..300).rev().map(|i| format!("{prefix}{i:03}")).collect();
    let found = store.get_many(&keys).await.expect("get_many");
    assert_eq!(found.len(), 300);
    for (key, kv) in keys.iter().zip(&found) {
        let i: usize = key[prefix.len()..].parse().expect("number");
        match kv {
            Some(kv) if i.is_multiple_of(2) => {
                assert_eq!(
                    (&kv.key, kv.value.as_slice()),
                    (key, i.to_string().as_bytes())
                )
            }
            None if i % 2 == 1 => {}
            other => panic!("{key}: {other:?}"),
        }
    }
}

async fn commit(store: &Store, txn: Txn) -> i64 {
    match store.txn(txn).await.expect("txn") {
        TxnOutcome::Committed { revision } => revision,
        TxnOutcome::Conflict => panic!("unexpected conflict"),
    }
}

/// Creates are conditional on absence, updates on the mod revision; revisions only grow.
async fn revisions_and_compare(store: &Store, prefix: &str) {
    let key = format!("{prefix}a");
    let create = || {
        Txn::default()
            .when(Compare::Absent(key.clone()))
            .then(Op::Put(key.clone(), b"one".to_vec()))
    };
    let rev1 = commit(store, create()).await;
    assert_eq!(
        store.txn(create()).await.expect("txn"),
        TxnOutcome::Conflict
    );

    let kv = store.get(&key).await.expect("get").expect("present");
    assert_eq!((kv.value.as_slice(), kv.mod_revision), (&b"one"[..], rev1));

    let update = |rev| {
        Txn::default()
            .when(Compare::ModRevision(key.clone(), rev))
            .then(Op::Put(key.clone(), b"two".to_vec()))
    };
    let rev2 = commit(store, update(rev1)).await;
    assert!(rev2 > rev1, "revisions grow: {rev2} > {rev1}");
    assert_eq!(
        store.txn(update(rev1)).await.expect("txn"),
        TxnOutcome::Conflict
    );
    assert_eq!(
        store.get(&key).await.expect("get").expect("present").value,
        b"two"
    );

    // Several writes in one txn share one revision; a delete of a missing key is harmless.
    let other = format!("{prefix}b");
    let rev3 = commit(
        store,
        Txn::default()
            .when(Compare::ModRevision(key.clone(), rev2))
            .then(Op::Delete(key.clone()))
            .then(Op::Put(other.clone(), b"x".to_vec()))
            .then(Op::Delete(format!("{prefix}missing"))),
    )
    .await;
    assert!(store.get(&key).await.expect("get").is_none());
    assert_eq!(
        store
            .get(&other)
            .await
            .expect("get")
            .expect("b")
            .mod_revision,
        rev3
    );
    assert_eq!(
        store
            .txn(Txn::default().when(Compare::ModRevision(key.clone(), rev2)))
            .await
            .expect("txn"),
        TxnOutcome::Conflict,
        "a deleted key matches no revision"
    );
}

/// Listing returns keys in order with a revision at least as new as the writes; pages resume
/// strictly after the last key.
async fn listing_and_paging(store: &Store, prefix: &str) {
    let mut last = 0;
    for i in 0..7 {
        last = commit(
            store,
            Txn::default().then(Op::Put(format!("{prefix}k{i}"), vec![i])),
        )
        .await;
    }
    // A key that shares the prefix's text but not its "directory" must not be listed.
    let outside = prefix.trim_end_matches('/').to_owned() + "x";
    commit(store, Txn::default().then(Op::Put(outside, vec![]))).await;

    let (all, revision) = store.list(prefix).await.expect("list");
    assert!(revision >= last);
    let keys: Vec<_> = all.iter().map(|kv| kv.key.clone()).collect();
    let expected: Vec<_> = (0..7).map(|i| format!("{prefix}k{i}")).collect();
    assert_eq!(keys, expected);
    assert_eq!(store.count(prefix).await.expect("count"), 7);
    assert_eq!(store.keys(prefix).await.expect("keys"), expected);
    let none = format!("{prefix}none/");
    assert_eq!(store.count(&none).await.expect("count"), 0);

    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .list_page(prefix, after.as_deref(), 3)
            .await
            .expect("page");
        assert!(page.len() <= 3);
        let Some(tail) = page.last() else { break };
        after = Some(tail.key.clone());
        paged.extend(page.into_iter().map(|kv| kv.key));
    }
    assert_eq!(paged, expected);
}

/// A watch from an old revision replays history, then follows live changes, deletes included.
async fn watch_history_and_live(store: &Store, prefix: &str) {
    let k1 = format!("{prefix}one");
    let k2 = format!("{prefix}two");
    let rev1 = commit(
        store,
        Txn::default().then(Op::Put(k1.clone(), b"1".to_vec())),
    )
    .await;
    // Writes outside the prefix are not seen.
    commit(
        store,
        Txn::default().then(Op::Put(
            format!("{}-elsewhere", prefix.trim_end_matches('/')),
            vec![],
        )),
    )
    .await;
    let rev2 = commit(
        store,
        Txn::default().then(Op::Put(k2.clone(), b"2".to_vec())),
    )
    .await;

    let mut watch = store.watch(prefix, rev1).await.expect("watch");
    let first = next(&mut watch).await;
    assert_eq!(first.revision, rev1);
    assert!(
        matches!(&first.events[..], [WatchEvent::Put(kv)] if kv.key == k1 && kv.mod_revision == rev1)
    );
    let second = next(&mut watch).await;
    assert_eq!(second.revision, rev2);

    let rev3 = commit(store, Txn::default().then(Op::Delete(k1.clone()))).await;
    let third = next(&mut watch).await;
    assert_eq!(third.revision, rev3);
    assert_eq!(third.events, vec![WatchEvent::Delete { key: k1 }]);

    // A watch from the next revision sees only what comes after.
    let mut later = store.watch(prefix, rev3 + 1).await.expect("watch");
    let rev4 = commit(
        store,
        Txn::default().then(Op::Put(k2.clone(), b"3".to_vec())),
    )
    .await;
    assert_eq!(next(&mut later).await.revision, rev4);
    assert_eq!(next(&mut watch).await.revision, rev4);
}

async fn next(watch: &mut WatchReceiver) -> super::WatchBatch {
    tokio::time::timeout(Duration::from_secs(10), watch.recv())
        .await
        .expect("a watch batch within 10 s")
        .expect("the watch is open")
        .expect("no watch error")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opens the embedded store in `dir` again once the dropped handle's tasks (a watch, the
    /// lease reaper) have let go of the file, which they do within moments.
    async fn reopen(dir: &std::path::Path) -> Store {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match Store::embedded(dir).await {
                Ok(store) => return store,
                Err(err) if tokio::time::Instant::now() < deadline => {
                    tracing::debug!(error = %err, "the file is still held; trying again");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(err) => panic!("reopen: {err:?}"),
            }
        }
    }

    #[tokio::test]
    async fn embedded_store_keeps_the_contract() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Store::embedded(dir.path()).await.expect("open");
        check_all(&store, "/t").await;

        // Reopening keeps data and revisions.
        let (before, rev) = store.list("/t/").await.expect("list");
        drop(store);
        let store = reopen(dir.path()).await;
        let (after, rev_after) = store.list("/t/").await.expect("list");
        assert_eq!((before, rev), (after, rev_after));

        // Leases end with the process that held them: their keys are gone on reopen.
        let lease = store
            .grant_lease(Duration::from_secs(60))
            .await
            .expect("grant");
        commit(
            &store,
            Txn::default().then(Op::PutLeased("/t/held".into(), vec![], lease)),
        )
        .await;
        drop(store);
        let store = reopen(dir.path()).await;
        assert!(store.get("/t/held").await.expect("get").is_none());
    }
}
