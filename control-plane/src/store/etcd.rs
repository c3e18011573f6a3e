//! [`super::Store`] on etcd: keys and revisions are etcd's own; a [`Txn`] is one etcd
//! transaction, and a watch is one etcd watch forwarded into a channel.

use etcd_client::{
    Certificate, Client, Compare as EtcdCompare, CompareOp, ConnectOptions, EventType, GetOptions,
    Identity, PutOptions, SortOrder, SortTarget, TlsOptions, Txn as EtcdTxn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{
    Compare, EtcdAuth, KeyValue, LeaseId, Op, StoreError, Txn, TxnOutcome, WatchBatch, WatchEvent,
    WatchReceiver, prefix_end,
};

/// Buffered watch batches per watcher before the watch task waits for the reader.
const WATCH_BUFFER: usize = 256;
/// The most operations etcd takes in one transaction by default (`--max-txn-ops`).
const MAX_TXN_OPS: usize = 128;
/// How often a request that reached no member is sent again (to another member, as the
/// client spreads requests over the endpoints).
const UNREACHED_RETRIES: usize = 6;
/// How often a request is repeated while etcd elects a leader.
const ELECTION_RETRIES: usize = 3;
/// The first wait before repeating a request during an election; it doubles each time
/// (0.6 s, 1.2 s, 2.4 s).
const ELECTION_WAIT: Duration = Duration::from_millis(300);
/// How long a connection to a member may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long one request may take: longer than etcd's own proposal timeout (7 s by default),
/// so a cluster without quorum answers with its own error first.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2 keep-alive: a member that died without closing its connections is noticed.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to an etcd cluster.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
}

impl EtcdStore {
    /// Connects to the cluster; any of `endpoints` may answer.
    pub async fn connect(endpoints: &[String], auth: &EtcdAuth) -> Result<Self, StoreError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(REQUEST_TIMEOUT)
            .with_keep_alive(KEEP_ALIVE_INTERVAL, KEEP_ALIVE_TIMEOUT)
            .with_keep_alive_while_idle(true)
            // Watches on a member cut off from the leader fail instead of going quiet.
            .with_require_leader(true);
        if let Some(user) = &auth.etcd_user {
            options =
                options.with_user(user.clone(), auth.etcd_password.clone().unwrap_or_default());
        }
        if let Some(ca) = &auth.etcd_ca_file {
            let read = |path: &std::path::Path| {
                herald_core::tls_files::read_pem(path).map_err(|e| {
                    StoreError::Invalid(format!("etcd TLS file {}: {}", path.display(), e.source))
                })
            };
            let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read(ca)?));
            if let (Some(cert), Some(key)) = (&auth.etcd_cert_file, &auth.etcd_key_file) {
                tls = tls.identity(Identity::from_pem(read(cert)?, read(key)?));
            }
            options = options.with_tls(tls);
        }
        let client = Client::connect(endpoints, Some(options)).await?;
        Ok(EtcdStore { client })
    }

    /// Runs `call` with the client, again while it fails in a way a repeat may fix:
    /// - without reaching any member (up to [`UNREACHED_RETRIES`] times, at once): the client
    ///   spreads requests over every endpoint, dead members included, and nothing was sent;
    /// - during a leader election (up to [`ELECTION_RETRIES`] times, waiting longer each
    ///   time): etcd answers "leader changed" or "no leader" and a new leader is usually
    ///   elected within a second or two.
    ///
    /// A write repeated after an election error may already have been applied the first time;
    /// [`EtcdStore::txn`] checks for that.
    async fn reaching_a_member<T, F, Fut>(&self, call: F) -> Result<T, etcd_client::Error>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.counting_calls(call).await.map(|(value, _)| value)
    }

    /// [`EtcdStore::reaching_a_member`], also telling how many calls were made.
    async fn counting_calls<T, F, Fut>(&self, mut call: F) -> Result<(T, usize), etcd_client::Error>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let (mut unreached, mut elections) = (0, 0);
        loop {
            match call(self.client.clone()).await {
                Err(err) if unreached < UNREACHED_RETRIES && never_sent(&err) => {
                    tracing::debug!(error = %err, "an etcd member is unreachable; trying another");
                    unreached += 1;
                }
                Err(err) if elections < ELECTION_RETRIES && electing(&err) => {
                    elections += 1;
                    let wait = ELECTION_WAIT * (1 << elections);
                    tracing::debug!(error = %err, ?wait, "etcd is electing a leader; trying again");
                    tokio::time::sleep(wait).await;
                }
                result => return result.map(|value| (value, 1 + unreached + elections)),
            }
        }
    }

    pub(super) async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let resp = self
            .reaching_a_member(|client| {
                let key = key.to_owned();
                async move { client.kv_client().get(key, None).await }
            })
            .await?;
        resp.kvs().first().map(to_key_value).transpose()
    }

    pub(super) async fn get_many(
        &self,
        keys: &[String],
    ) -> Result<Vec<Option<KeyValue>>, StoreError> {
        let mut found = Vec::with_capacity(keys.len());
        // etcd refuses transactions of more than 128 operations by default.
        for chunk in keys.chunks(MAX_TXN_OPS) {
            let gets: Vec<TxnOp> = chunk
                .iter()
                .map(|key| TxnOp::get(key.as_str(), None))
                .collect();
            let txn = EtcdTxn::new().and_then(gets);
            let resp = self
                .reaching_a_member(|client| {
                    let txn = txn.clone();
                    async move { client.kv_client().txn(txn).await }
                })
                .await?;
            for op in resp.op_responses() {
                match op {
                    TxnOpResponse::Get(range) => {
                        found.push(range.kvs().first().map(to_key_value).transpose()?)
                    }
                    _ => found.push(None),
                }
            }
        }
        Ok(found)
    }

    /// One range read from `key` with `options`, from whichever member answers.
    async fn read_range(
        &self,
        key: &str,
        options: GetOptions,
    ) -> Result<etcd_client::GetResponse, StoreError> {
        self.reaching_a_member(|client| {
            let (key, options) = (key.to_owned(), options.clone());
            async move { client.kv_client().get(key, Some(options)).await }
        })
        .await
        .map_err(StoreError::from)
    }

    pub(super) async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64), StoreError> {
        let resp = self
            .read_range(prefix, GetOptions::new().with_prefix())
            .await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
        let kvs = resp
            .kvs()
            .iter()
            .map(to_key_value)
            .collect::<Result<_, _>>()?;
        Ok((kvs, revision))
    }

    pub(super) async fn keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let options = GetOptions::new()
            .with_prefix()
            .with_keys_only()
            .with_sort(SortTarget::Key, SortOrder::Ascend);
        let resp = self.read_range(prefix, options).await?;
        resp.kvs().iter().map(|kv| key_string(kv.key())).collect()
    }

    pub(super) async fn count(&self, prefix: &str) -> Result<u64, StoreError> {
        let resp = self
            .read_range(prefix, GetOptions::new().with_prefix().with_count_only())
            .await?;
        Ok(u64::try_from(resp.count()).unwrap_or(0))
    }

    pub(super) async fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        // Start just after `after`: the smallest key greater than it is `after` + "\0".
        let start = match after {
            Some(after) => format!("{after}\0"),
            None => prefix.to_owned(),
        };
        let options = GetOptions::new()
            .with_range(prefix_end(prefix))
            .with_sort(SortTarget::Key, SortOrder::Ascend)
            .with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
        let resp = self.read_range(&start, options).await?;
        resp.kvs().iter().map(to_key_value).collect()
    }

    pub(super) async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        let compares: Vec<EtcdCompare> = txn
            .compares
            .into_iter()
            .map(|compare| match compare {
                // A key that does not exist has create_revision 0.
                Compare::Absent(key) => EtcdCompare::create_revision(key, CompareOp::Equal, 0),
                Compare::ModRevision(key, rev) => {
                    EtcdCompare::mod_revision(key, CompareOp::Equal, rev)
                }
            })
            .collect();
        let ops: Vec<TxnOp> = txn
            .ops
            .iter()
            .map(|op| match op {
                Op::Put(key, value) => TxnOp::put(key.as_str(), value.as_slice(), None),
                Op::PutLeased(key, value, lease) => TxnOp::put(
                    key.as_str(),
                    value.as_slice(),
                    Some(PutOptions::new().with_lease(*lease)),
                ),
                Op::Delete(key) => TxnOp::delete(key.as_str(), None),
            })
            .collect();
        let etcd_txn = EtcdTxn::new().when(compares).and_then(ops);
        let (resp, calls) = self
            .counting_calls(|client| {
                let txn = etcd_txn.clone();
                async move { client.kv_client().txn(txn).await }
            })
            .await?;
        if resp.succeeded() {
            let revision = resp.header().map(|h| h.revision()).unwrap_or_default();
            return Ok(TxnOutcome::Committed { revision });
        }
        if calls > 1 {
            // An earlier call may have been applied before its error: if the store holds
            // exactly what this transaction writes, that call is what the compare tripped on.
            if let Some(revision) = self.already_applied(&txn.ops).await? {
                return Ok(TxnOutcome::Committed { revision });
            }
        }
        Ok(TxnOutcome::Conflict)
    }

    /// When every put of `ops` holds its value and every deleted key is absent, the revision
    /// of the newest put (or of the store, for deletes only).
    async fn already_applied(&self, ops: &[Op]) -> Result<Option<i64>, StoreError> {
        let keys: Vec<String> = ops
            .iter()
            .map(|op| match op {
                Op::Put(key, _) | Op::PutLeased(key, _, _) | Op::Delete(key) => key.clone(),
            })
            .collect();
        let found = self.get_many(&keys).await?;
        let mut revision = None;
        for (op, kv) in ops.iter().zip(&found) {
            match (op, kv) {
                (Op::Put(_, value) | Op::PutLeased(_, value, _), Some(kv))
                    if kv.value == *value =>
                {
                    revision = revision.max(Some(kv.mod_revision));
                }
                (Op::Delete(_), None) => {}
                _ => return Ok(None),
            }
        }
        match (revision, keys.first()) {
            (Some(revision), _) => Ok(Some(revision)),
            // Deletes only: the store's revision now (read with the first key).
            (None, Some(key)) => Ok(Some(self.list(key).await?.1)),
            (None, None) => Ok(None),
        }
    }

    pub(super) async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        let seconds = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let granted = self
            .reaching_a_member(
                |client| async move { client.lease_client().grant(seconds, None).await },
            )
            .await?;
        Ok(granted.id())
    }

    pub(super) async fn keep_lease_alive(&self, lease: LeaseId) -> Result<bool, StoreError> {
        // Opening the keep-alive stream renews the lease once and reads etcd's answer; the
        // client library turns etcd's "TTL 0" (no such lease) into an error of its own.
        match self
            .reaching_a_member(
                |client| async move { client.lease_client().keep_alive(lease).await },
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(etcd_client::Error::LeaseKeepAliveError(_)) => Ok(false),
            Err(err) => Err(err.into()),
        }
    }

    pub(super) async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        match self
            .reaching_a_member(|client| async move { client.lease_client().revoke(lease).await })
            .await
        {
            Ok(_) => Ok(()),
            // Already gone: what revoking wanted.
            Err(etcd_client::Error::GRpcStatus(status))
                if status.code() == tonic::Code::NotFound =>
            {
                Ok(())
            }
            Err(err) => Err(err.into()),
        }
    }

    pub(super) async fn watch(
        &self,
        prefix: &str,
        from_revision: i64,
    ) -> Result<WatchReceiver, StoreError> {
        let options = WatchOptions::new()
            .with_prefix()
            .with_start_revision(from_revision);
        let mut stream = self
            .reaching_a_member(|client| {
                let (prefix, options) = (prefix.to_owned(), options.clone());
                async move { client.watch_client().watch(prefix, Some(options)).await }
            })
            .await?;
        let (tx, rx) = mpsc::channel(WATCH_BUFFER);
        // The task ends with the watch: when etcd ends it, or when the receiver is dropped
        // (checked while waiting too, so a watch of a key nobody writes does not outlive its
        // reader).
        tokio::spawn(async move {
            loop {
                let message = tokio::select! {
                    message = stream.message() => message,
                    () = tx.closed() => return,
                };
                let item = match message {
                    Ok(Some(resp)) if resp.compact_revision() > 0 => Err(StoreError::Compacted {
                        requested: from_revision,
                        compacted: resp.compact_revision(),
                    }),
                    Ok(Some(resp)) if resp.canceled() => Err(StoreError::Invalid(format!(
                        "etcd cancelled the watch: {}",
                        resp.cancel_reason()
                    ))),
                    Ok(Some(resp)) if resp.events().is_empty() => continue,
                    Ok(Some(resp)) => to_batches(&resp),
                    Ok(None) => Err(StoreError::Invalid("etcd ended the watch".into())),
                    Err(err) => Err(StoreError::Etcd(err)),
                };
                match item {
                    Ok(batches) => {
                        for batch in batches {
                            if tx.send(Ok(batch)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(err) => {
                        let _ = tx.send(Err(err)).await;
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }
}

/// Whether a request failed before anything reached a member: the connection to the member it
/// was sent to could not be made (tonic reports this as `UNAVAILABLE`, "tcp connect error").
fn never_sent(err: &etcd_client::Error) -> bool {
    match err {
        etcd_client::Error::GRpcStatus(status) => {
            status.code() == tonic::Code::Unavailable
                && status.message().starts_with("tcp connect error")
        }
        _ => false,
    }
}

/// Whether etcd refused because it is electing a leader (or has none): a repeat a moment
/// later may succeed.
fn electing(err: &etcd_client::Error) -> bool {
    match err {
        etcd_client::Error::GRpcStatus(status) => {
            status.code() == tonic::Code::Unavailable
                && (status.message().contains("leader changed")
                    || status.message().contains("no leader"))
        }
        _ => false,
    }
}

/// Splits one etcd watch response (which may span several revisions) into per-revision batches.
fn to_batches(resp: &etcd_client::WatchResponse) -> Result<Vec<WatchBatch>, StoreError> {
    let mut batches: Vec<WatchBatch> = Vec::new();
    for event in resp.events() {
        let Some(kv) = event.kv() else { continue };
        let revision = kv.mod_revision();
        let change = match event.event_type() {
            EventType::Put => WatchEvent::Put(to_key_value(kv)?),
            EventType::Delete => WatchEvent::Delete {
                key: key_string(kv.key())?,
            },
        };
        match batches.last_mut() {
            Some(batch) if batch.revision == revision => batch.events.push(change),
            _ => batches.push(WatchBatch {
                revision,
                events: vec![change],
            }),
        }
    }
    Ok(batches)
}

fn to_key_value(kv: &etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
    Ok(KeyValue {
        key: key_string(kv.key())?,
        value: kv.value().to_vec(),
        mod_revision: kv.mod_revision(),
    })
}

fn key_string(key: &[u8]) -> Result<String, StoreError> {
    String::from_utf8(key.to_vec())
        .map_err(|_| StoreError::Invalid("a key under the herald prefix is not UTF-8".into()))
}
