//! The config store: a small key-value interface with etcd's semantics, implemented by etcd
//! itself and by an embedded single-file store for `herald dev` and single-node installs.
//!
//! Semantics both implementations keep (checked by one conformance suite run against both):
//! - Every committed write (a [`Txn`]) gets one new store-wide revision; revisions only grow.
//! - Each key remembers the revision that last modified it (`mod_revision`), the basis of
//!   optimistic concurrency: a [`Txn`] commits only if all of its [`Compare`]s hold.
//! - [`Store::watch`] delivers every change under a prefix from a given revision on, in revision
//!   order, each revision's changes in one [`WatchBatch`]; history older than the store keeps
//!   answers [`StoreError::Compacted`], and the watcher must start again from a fresh listing.
//! - A lease ([`Store::grant_lease`]) lives while its holder renews it within its TTL; keys put
//!   with it ([`Op::PutLeased`]) are deleted, as a watchable change, when it expires or is
//!   revoked. A key written again without the lease is no longer bound to it.

mod embedded;
mod etcd;

use std::path::Path;
use std::time::Duration;

use herald_core::disk_fault::DiskFault;
use tokio::sync::mpsc;

pub use self::embedded::EmbeddedStore;
pub use self::etcd::EtcdStore;

/// A stored key with its value and revisions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    /// The full key.
    pub key: String,
    /// The value bytes (a protobuf message for Herald's records).
    pub value: Vec<u8>,
    /// The revision of the last write to this key.
    pub mod_revision: i64,
}

/// A condition of a [`Txn`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compare {
    /// The key does not exist.
    Absent(String),
    /// The key exists and was last written at this revision.
    ModRevision(String, i64),
}

/// A write of a [`Txn`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Set the key to the value.
    Put(String, Vec<u8>),
    /// Set the key to the value, bound to a lease: the key goes when the lease does.
    PutLeased(String, Vec<u8>, LeaseId),
    /// Remove the key (no-op when absent).
    Delete(String),
}

/// A lease granted by the store.
pub type LeaseId = i64;

/// An atomic, conditional write: all `ops` apply at one new revision if every compare holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    /// Conditions that must all hold.
    pub compares: Vec<Compare>,
    /// Writes applied when they do.
    pub ops: Vec<Op>,
}

impl Txn {
    /// Adds a condition.
    pub fn when(mut self, compare: Compare) -> Self {
        self.compares.push(compare);
        self
    }

    /// Adds a write.
    pub fn then(mut self, op: Op) -> Self {
        self.ops.push(op);
        self
    }
}

/// The result of a [`Txn`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnOutcome {
    /// The writes were applied at this revision.
    Committed {
        /// The revision of the write.
        revision: i64,
    },
    /// A compare did not hold; nothing was written.
    Conflict,
}

/// One change seen by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WatchEvent {
    /// The key was created or changed.
    Put(KeyValue),
    /// The key was removed.
    Delete {
        /// The removed key.
        key: String,
    },
}

/// All changes under the watched prefix made by one revision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WatchBatch {
    /// The revision of these changes.
    pub revision: i64,
    /// The changes, in the order they were written.
    pub events: Vec<WatchEvent>,
}

/// A running watch: batches in revision order until an error ends it.
pub type WatchReceiver = mpsc::Receiver<Result<WatchBatch, StoreError>>;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// etcd could not be reached or refused the request.
    #[error("etcd: {}", etcd_reason(.0))]
    Etcd(#[from] etcd_client::Error),
    /// The embedded store failed (a record it cannot read, a broken rule of its own).
    #[error("embedded store: {0}")]
    Embedded(String),
    /// The disk under the embedded store's file is full or failing: nothing is written until
    /// it is back ([`crate::redb_file`]).
    #[error("embedded store: {0}")]
    Disk(#[from] DiskFault),
    /// The history a watch asked for is gone.
    #[error("revision {requested} is compacted (oldest kept: {compacted})")]
    Compacted {
        /// The revision asked for.
        requested: i64,
        /// The oldest revision still kept.
        compacted: i64,
    },
    /// The store broke its own contract (a key that is not UTF-8, a watch that ended).
    #[error("store: {0}")]
    Invalid(String),
}

impl StoreError {
    /// What an API caller is told when the store is unavailable: what failed and the usual
    /// causes.
    fn unavailable_message(&self) -> String {
        format!(
            "config store unavailable (etcd unreachable, or fewer than a quorum of its members \
             up); try again when it is back: {self}"
        )
    }

    /// The gRPC status an API call that met this error answers: `UNAVAILABLE` when trying
    /// again later may succeed (etcd unreachable, a failing disk), `RESOURCE_EXHAUSTED` when
    /// space must be freed first (etcd's space quota, a full disk), `INTERNAL` otherwise.
    pub fn status(&self) -> tonic::Status {
        use tonic::Status;
        match self {
            StoreError::Etcd(etcd_client::Error::GRpcStatus(status))
                if status.code() == tonic::Code::ResourceExhausted =>
            {
                Status::resource_exhausted(format!(
                    "etcd refused for want of resources (its space quota reached, alarm \
                     NOSPACE: compact and defragment it, then disarm the alarm; or too many \
                     requests): {self}"
                ))
            }
            StoreError::Etcd(_) => Status::unavailable(self.unavailable_message()),
            StoreError::Disk(DiskFault::Full(_)) => herald_proto::refusal::disk_full(format!(
                "config store full: {self}; writes resume once space is freed"
            )),
            StoreError::Disk(DiskFault::Io(_)) => {
                Status::unavailable(format!("config store unavailable: {self}; try again later"))
            }
            StoreError::Embedded(_) | StoreError::Compacted { .. } | StoreError::Invalid(_) => {
                Status::internal(self.to_string())
            }
        }
    }
}

impl crate::redb_file::Fault for StoreError {
    fn disk_fault(&self) -> Option<&DiskFault> {
        match self {
            StoreError::Disk(fault) => Some(fault),
            _ => None,
        }
    }
}

/// etcd's own words for a failure: the gRPC message (`etcdserver: request timed out`,
/// `tcp connect error`, …) without the client library's wrapping.
fn etcd_reason(err: &etcd_client::Error) -> String {
    match err {
        etcd_client::Error::GRpcStatus(status) if !status.message().is_empty() => {
            status.message().to_owned()
        }
        other => other.to_string(),
    }
}

/// The config store Herald runs on.
#[derive(Clone)]
pub enum Store {
    /// An etcd cluster (production).
    Etcd(Box<EtcdStore>),
    /// A single file (development, single node).
    Embedded(EmbeddedStore),
}

impl Store {
    /// Connects to etcd at the given endpoints.
    pub async fn etcd(endpoints: &[String]) -> Result<Self, StoreError> {
        Self::etcd_with(endpoints, &EtcdAuth::default()).await
    }

    /// Connects to etcd at `endpoints`, authenticating as `auth` says.
    pub async fn etcd_with(endpoints: &[String], auth: &EtcdAuth) -> Result<Self, StoreError> {
        Ok(Store::Etcd(Box::new(
            EtcdStore::connect(endpoints, auth).await?,
        )))
    }

    /// Opens (or creates) the embedded store in `dir`.
    pub async fn embedded(dir: &Path) -> Result<Self, StoreError> {
        Ok(Store::Embedded(EmbeddedStore::open(dir).await?))
    }

    /// Reads one key.
    pub async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        match self {
            Store::Etcd(s) => s.get(key).await,
            Store::Embedded(s) => s.get(key).await,
        }
    }

    /// Reads several keys at one revision, in one round trip; one answer per key, in order.
    pub async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<KeyValue>>, StoreError> {
        match self {
            Store::Etcd(s) => s.get_many(keys).await,
            Store::Embedded(s) => s.get_many(keys).await,
        }
    }

    /// Lists every key under `prefix`, in key order, with the store revision of the listing.
    pub async fn list(&self, prefix: &str) -> Result<(Vec<KeyValue>, i64), StoreError> {
        match self {
            Store::Etcd(s) => s.list(prefix).await,
            Store::Embedded(s) => s.list(prefix).await,
        }
    }

    /// The keys under `prefix`, in key order, without their values.
    pub async fn keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        match self {
            Store::Etcd(s) => s.keys(prefix).await,
            Store::Embedded(s) => s.keys(prefix).await,
        }
    }

    /// How many keys lie under `prefix`, without reading their values.
    pub async fn count(&self, prefix: &str) -> Result<u64, StoreError> {
        match self {
            Store::Etcd(s) => s.count(prefix).await,
            Store::Embedded(s) => s.count(prefix).await,
        }
    }

    /// Lists up to `limit` keys under `prefix` that sort after `after` (exclusive; `None` starts
    /// at the beginning), in key order.
    pub async fn list_page(
        &self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<KeyValue>, StoreError> {
        match self {
            Store::Etcd(s) => s.list_page(prefix, after, limit).await,
            Store::Embedded(s) => s.list_page(prefix, after, limit).await,
        }
    }

    /// Applies a conditional write.
    pub async fn txn(&self, txn: Txn) -> Result<TxnOutcome, StoreError> {
        match self {
            Store::Etcd(s) => s.txn(txn).await,
            Store::Embedded(s) => s.txn(txn).await,
        }
    }

    /// Watches `prefix` from `from_revision` (inclusive) on.
    pub async fn watch(
        &self,
        prefix: &str,
        from_revision: i64,
    ) -> Result<WatchReceiver, StoreError> {
        match self {
            Store::Etcd(s) => s.watch(prefix, from_revision).await,
            Store::Embedded(s) => s.watch(prefix, from_revision).await,
        }
    }

    /// Grants a lease that expires `ttl` after its last renewal (etcd may round the TTL up
    /// to its minimum).
    pub async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        match self {
            Store::Etcd(s) => s.grant_lease(ttl).await,
            Store::Embedded(s) => s.grant_lease(ttl),
        }
    }

    /// Renews a lease for another TTL; `false` when it has already expired (its keys are gone
    /// and a new lease is needed).
    pub async fn keep_lease_alive(&self, lease: LeaseId) -> Result<bool, StoreError> {
        match self {
            Store::Etcd(s) => s.keep_lease_alive(lease).await,
            Store::Embedded(s) => s.keep_lease_alive(lease),
        }
    }

    /// Ends a lease now, deleting its keys.
    pub async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        match self {
            Store::Etcd(s) => s.revoke_lease(lease).await,
            Store::Embedded(s) => s.revoke_lease(lease).await,
        }
    }

    /// A short name for logs: `etcd` or `embedded`.
    pub fn kind(&self) -> &'static str {
        match self {
            Store::Etcd(_) => "etcd",
            Store::Embedded(_) => "embedded",
        }
    }
}

/// The first key after every key that starts with `prefix` (etcd's range end for a prefix).
pub(crate) fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

pub mod conformance;

/// How the control plane authenticates to etcd: etcd's user/password auth, and TLS (with
/// `https://` endpoints; a client certificate for etcd's `--client-cert-auth`).
#[derive(Clone, Default, clap::Args)]
pub struct EtcdAuth {
    /// CA certificate (PEM) that etcd's server certificate is checked against; turns on TLS.
    #[arg(long, env = "HERALD_ETCD_CA_FILE", requires = "etcd")]
    pub etcd_ca_file: Option<std::path::PathBuf>,
    /// Client certificate (PEM) presented to etcd.
    #[arg(
        long,
        env = "HERALD_ETCD_CERT_FILE",
        requires = "etcd_key_file",
        requires = "etcd"
    )]
    pub etcd_cert_file: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "HERALD_ETCD_KEY_FILE", requires = "etcd_cert_file")]
    pub etcd_key_file: Option<std::path::PathBuf>,
    /// etcd user name, when etcd has authentication enabled.
    #[arg(long, env = "HERALD_ETCD_USER", requires = "etcd")]
    pub etcd_user: Option<String>,
    /// The etcd user's password (prefer the environment variable).
    #[arg(
        long,
        env = "HERALD_ETCD_PASSWORD",
        hide_env_values = true,
        requires = "etcd_user"
    )]
    pub etcd_password: Option<String>,
}

impl EtcdAuth {
    /// Checks that `endpoints` are addresses etcd can be reached at (`host:port`, or
    /// `http(s)://host:port`) and that the TLS files given read as PEM, so that a mistyped
    /// setting stops the control plane at start (exit 64) rather than each time it connects.
    pub fn check(&self, endpoints: &[String]) -> Result<(), String> {
        let given = [
            ("--etcd-ca-file", self.etcd_ca_file.is_some()),
            ("--etcd-cert-file", self.etcd_cert_file.is_some()),
            ("--etcd-user", self.etcd_user.is_some()),
        ];
        if endpoints.is_empty()
            && let Some((flag, _)) = given.iter().find(|(_, set)| *set)
        {
            return Err(format!(
                "{flag} is for etcd, but no --etcd endpoint is given (the embedded store is used)"
            ));
        }
        for endpoint in endpoints {
            let uri = if endpoint.contains("://") {
                endpoint.clone()
            } else {
                format!("http://{endpoint}")
            };
            let parsed = uri.parse::<http::Uri>().ok();
            let usable = parsed.as_ref().is_some_and(|uri| {
                matches!(uri.scheme_str(), Some("http" | "https"))
                    && uri.host().is_some_and(|host| !host.is_empty())
                    && uri.path() == "/"
            });
            if !usable {
                return Err(format!(
                    "--etcd {endpoint:?} is not an etcd address: use host:port or \
                     http(s)://host:port"
                ));
            }
        }
        for (flag, file) in [
            ("--etcd-ca-file", &self.etcd_ca_file),
            ("--etcd-cert-file", &self.etcd_cert_file),
            ("--etcd-key-file", &self.etcd_key_file),
        ] {
            if let Some(path) = file {
                herald_core::tls_files::read_pem(path)
                    .map_err(|e| format!("{flag} {}: {}", path.display(), e.source))?;
            }
        }
        Ok(())
    }
}

impl std::fmt::Debug for EtcdAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdAuth")
            .field("etcd_ca_file", &self.etcd_ca_file)
            .field("etcd_cert_file", &self.etcd_cert_file)
            .field("etcd_key_file", &self.etcd_key_file)
            .field("etcd_user", &self.etcd_user)
            .field(
                "etcd_password",
                &self.etcd_password.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}
