//! The central delivery log: every attempt reported by any agent, stored once, queryable by
//! subscription, tenant, event, outcome and time, and followed live by `TailAttempts`.
//!
//! [`LogStore`] is what the control plane needs of it; two stores keep it, chosen by
//! `--log-store` ([`LogStoreUrl`]):
//!
//! - [`embedded::EmbeddedLog`] (`embedded`, the default): a redb file in the replica's data
//!   directory, for `herald dev` and a single replica;
//! - [`postgres::PostgresLog`] (`postgres://…`): one PostgreSQL database shared by every
//!   replica, so each answers every log question the same way.
//!
//! Both keep the same contract, checked by one suite run against each ([`conformance`]):
//! a batch is stored durably before it is acknowledged; an attempt reported again (same
//! tenant, event, subscription and attempt number) is stored once; listings are newest first
//! and paged by an opaque token; retention removes what started before the cut-off (the
//! embedded log oldest first in the order attempts arrived, PostgreSQL by whole days); a
//! follower sees every attempt stored after it started following, through any replica.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use herald_core::disk_fault::DiskFault;
use herald_core::error_kind::{ErrorKind, StatusFilter};
use herald_core::event_type::EventPattern;
use herald_core::validate;
use herald_proto::convert::system_time;
use herald_proto::v1 as pb;
use tokio::sync::broadcast;

use crate::access::Scope;
use crate::audit::query::{AuditFilter, AuditPage};
use crate::redb_file::{Failure, IntoFailure};

pub mod conformance;
pub mod derived;
pub mod embedded;
pub mod postgres;
pub mod sent;

pub use derived::{Followup, NoReactions, PendingFollowup, Reactions};
pub use embedded::EmbeddedLog;
pub use postgres::PostgresLog;
pub use sent::{Expunged, SentPage, SentQuery};

/// The largest page a query returns.
pub const MAX_PAGE_SIZE: usize = 1000;
/// The page size when the caller names none.
pub const DEFAULT_PAGE_SIZE: usize = 100;
/// Attempts kept for live tails that fall behind.
const TAIL_BUFFER: usize = 4096;

/// Why the delivery log failed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The store could not be read or written.
    #[error("delivery log: {0}")]
    Storage(String),
    /// The store cannot be reached now (a database that is down); callers may try again.
    #[error("delivery log unavailable: {0}")]
    Unavailable(String),
    /// The database refuses this control plane: its login (a wrong password, a database
    /// that does not exist) or the rights it needs (to create its tables). Trying again does
    /// not help; the configuration or the database's grants must change.
    #[error("delivery log refused: {0}")]
    Refused(String),
    /// The disk under the log's file is full or failing: nothing is written until it is
    /// back ([`crate::redb_file`]), and callers may try again.
    #[error("delivery log: {0}")]
    Disk(#[from] DiskFault),
    /// A query's arguments are wrong.
    #[error(transparent)]
    InvalidQuery(herald_core::ValidationError),
    /// The store's schema is newer than this control plane understands.
    #[error(
        "the delivery log's schema is version {found}, newer than this control plane's \
         {supported}: run a control plane at least as new as the one that migrated it"
    )]
    NewerSchema {
        /// The version in the store.
        found: i32,
        /// The newest version this build knows.
        supported: i32,
    },
}

impl From<LogError> for tonic::Status {
    fn from(err: LogError) -> Self {
        match err {
            LogError::InvalidQuery(invalid) => herald_proto::convert::invalid_argument(invalid),
            LogError::Unavailable(_) | LogError::Refused(_) | LogError::Disk(DiskFault::Io(_)) => {
                tonic::Status::unavailable(err.to_string())
            }
            LogError::Disk(DiskFault::Full(_)) => herald_proto::refusal::disk_full(err.to_string()),
            LogError::Storage(_) | LogError::NewerSchema { .. } => {
                tonic::Status::internal(err.to_string())
            }
        }
    }
}

impl crate::redb_file::Fault for LogError {
    fn disk_fault(&self) -> Option<&DiskFault> {
        match self {
            LogError::Disk(fault) => Some(fault),
            _ => None,
        }
    }
}

/// Any failure of the log's store, as a [`LogError`] of its kind.
fn storage(err: impl IntoFailure) -> LogError {
    match err.into_failure() {
        Failure::Disk(fault) => LogError::Disk(fault),
        Failure::Other(text) => LogError::Storage(text),
    }
}

/// What storing a batch did.
#[derive(Debug, Default)]
pub struct Stored {
    /// The attempts new to the log (the others were stored before).
    pub attempts: Vec<Arc<pb::Attempt>>,
    /// The follow-ups the commit wrote ([`derived`]), to act on now.
    pub followups: Vec<PendingFollowup>,
}

/// What the control plane needs of its delivery log.
#[tonic::async_trait]
pub trait LogStore: Send + Sync {
    /// Stores a batch durably, skipping attempts already stored (same tenant, event,
    /// subscription and attempt number). The requests as sent that new attempts carry are
    /// kept apart, once per delivery ([`sent`]). The same commit counts the new attempts into their
    /// subscriptions' health records, keeps the follow-ups that needs, and puts the operator
    /// events the `reactions` give for them into the outbox ([`derived`]).
    async fn store(
        &self,
        attempts: Vec<pb::Attempt>,
        reactions: Arc<dyn Reactions>,
    ) -> Result<Stored, LogError>;
    /// Stores a batch that raises no operator event; returns the attempts new to the log.
    async fn insert(&self, attempts: Vec<pb::Attempt>) -> Result<Vec<Arc<pb::Attempt>>, LogError> {
        Ok(self.store(attempts, Arc::new(NoReactions)).await?.attempts)
    }
    /// Attempts matching `filter`, newest first, a page at a time.
    async fn list(
        &self,
        filter: Filter,
        page_size: u32,
        page_token: &str,
    ) -> Result<Page, LogError>;
    /// The requests as sent that `query` asks for, ordered by subscription, a page of about
    /// [`sent::PAGE_BYTES`] at a time ([`sent`]).
    async fn sent_requests(&self, query: SentQuery) -> Result<SentPage, LogError>;
    /// Removes the requests as sent that `query` asks for (every page); the attempts stay.
    async fn expunge(&self, query: SentQuery) -> Result<Expunged, LogError>;
    /// Removes attempts that started more than `max_age` ago, and the oldest beyond
    /// `max_attempts`; returns how many went. Requests as sent go with the last attempt that
    /// sent them, and audit entries older than `max_age` go too.
    async fn sweep(&self, max_age: Duration, max_attempts: u64) -> Result<u64, LogError>;
    /// Records a change made through the operator API ([`crate::audit`]).
    async fn record_change(&self, entry: pb::AuditEntry) -> Result<(), LogError>;
    /// Recorded changes matching `filter`, newest first, a page at a time.
    async fn changes(
        &self,
        filter: AuditFilter,
        page_size: u32,
        page_token: &str,
    ) -> Result<AuditPage, LogError>;
    /// How many attempts are stored.
    async fn len(&self) -> Result<u64, LogError>;
    /// Whether none is stored.
    async fn is_empty(&self) -> Result<bool, LogError> {
        Ok(self.len().await? == 0)
    }
    /// Every attempt stored from now on (for live tails), through whichever replica.
    fn follow(&self) -> broadcast::Receiver<Arc<pb::Attempt>>;
    /// Whether the store answers now (for health checks).
    async fn ping(&self) -> Result<(), LogError>;

    /// A subscription's health record (none while it never failed since it was last reset).
    async fn health(
        &self,
        subscription_id: &str,
    ) -> Result<Option<pb::SubscriptionHealth>, LogError>;
    /// Forgets a subscription's health record (re-enabled or deleted: a fresh start).
    async fn forget_health(&self, subscription_id: &str) -> Result<(), LogError>;
    /// Follow-ups written at least `older_than` ago and not yet settled (left by a replica
    /// that stopped before acting on them), oldest first.
    async fn followups(
        &self,
        older_than: Duration,
        limit: usize,
    ) -> Result<Vec<PendingFollowup>, LogError>;
    /// Removes follow-ups that were acted on.
    async fn settle(&self, ids: &[i64]) -> Result<(), LogError>;

    /// Puts operator events into the outbox; an event whose id is there already is kept as it
    /// is (raising the same event twice is one event).
    async fn raise(&self, events: &[pb::Event]) -> Result<(), LogError>;
    /// The oldest operator events in the outbox.
    async fn outbox(&self, limit: usize) -> Result<Vec<pb::Event>, LogError>;
    /// Removes operator events an agent accepted.
    async fn emitted(&self, ids: &[String]) -> Result<(), LogError>;
}

/// The delivery log the control plane uses, whichever store keeps it; cloning shares it.
pub type AttemptLog = Arc<dyn LogStore>;

/// `--log-store` as given. It is checked when the control plane starts ([`Self::parse`])
/// rather than by the argument parser, which would print a refused value whole, password and
/// all; `Debug` shows no password either.
#[derive(Clone, PartialEq, Eq)]
pub struct LogStoreFlag(String);

impl LogStoreFlag {
    /// The flag's text.
    pub fn new(text: impl Into<String>) -> Self {
        LogStoreFlag(text.into())
    }

    /// For the argument parser: any text, checked later.
    pub fn from_arg(text: &str) -> Result<Self, std::convert::Infallible> {
        Ok(Self::new(text))
    }

    /// Where the log is kept, or why the text names no usable store (never echoing it).
    pub fn parse(&self) -> Result<LogStoreUrl, String> {
        LogStoreUrl::parse(&self.0)
    }
}

impl std::fmt::Debug for LogStoreFlag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.parse() {
            Ok(url) => write!(f, "{url:?}"),
            Err(_) => f.write_str("(not a valid log store)"),
        }
    }
}

/// Where the delivery log is kept: `--log-store embedded` or a `postgres://` URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogStoreUrl {
    /// The embedded redb file in the data directory.
    Embedded,
    /// A PostgreSQL database (the URL's password is kept out of `Debug` and logs).
    Postgres(Box<postgres::DatabaseUrl>),
}

impl std::fmt::Display for LogStoreUrl {
    /// For logs: `embedded`, or `PostgreSQL at host:port/db` (never the password).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LogStoreUrl::Embedded => f.write_str("embedded"),
            LogStoreUrl::Postgres(url) => write!(f, "{url}"),
        }
    }
}

impl LogStoreUrl {
    /// Parses `embedded` or `postgres://USER[:PASS]@HOST[:PORT]/DB[?sslmode=disable]`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text == "embedded" {
            return Ok(Self::Embedded);
        }
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            return postgres::DatabaseUrl::parse(text).map(|url| Self::Postgres(Box::new(url)));
        }
        Err("use embedded, or a postgres:// URL".into())
    }
}

/// How to open the delivery log: where, and the settings of each kind.
#[derive(Debug)]
pub struct OpenLog<'a> {
    /// Which log.
    pub url: &'a LogStoreUrl,
    /// The embedded log's directory.
    pub data_dir: &'a std::path::Path,
    /// How long attempts are kept (PostgreSQL makes its partitions for it).
    pub retention: Duration,
    /// The embedded log's page cache, in bytes.
    pub cache_bytes: usize,
    /// How long one PostgreSQL operation may take before the database counts as not
    /// answering.
    pub answer_timeout: Duration,
}

/// Opens the log `open.url` names: the embedded one in its data dir, or the PostgreSQL
/// database (its schema migrated, its partitions made for the retention).
pub async fn open(open: OpenLog<'_>) -> Result<AttemptLog, LogError> {
    Ok(match open.url {
        LogStoreUrl::Embedded => Arc::new(EmbeddedLog::open_with_cache(
            open.data_dir,
            open.cache_bytes,
        )?),
        LogStoreUrl::Postgres(url) => {
            Arc::new(PostgresLog::open_with(url, open.retention, open.answer_timeout).await?)
        }
    })
}

/// A page of attempts, newest first.
#[derive(Debug)]
pub struct Page {
    /// The attempts.
    pub attempts: Vec<pb::Attempt>,
    /// Where the next page starts; empty on the last.
    pub next_page_token: String,
}

/// The moment `age` before now.
fn before_now(age: Duration) -> SystemTime {
    SystemTime::now()
        .checked_sub(age)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// The page size a caller asked for, within the limits.
fn page_size(asked: u32) -> usize {
    match asked as usize {
        0 => DEFAULT_PAGE_SIZE,
        n => n.min(MAX_PAGE_SIZE),
    }
}

/// The refusal of a page token that no page of this listing handed out.
pub fn not_from_this_listing() -> herald_core::ValidationError {
    herald_core::ValidationError::new("page_token", "is not from this listing")
}

/// Refuses an outcome that is not in the enum (from a newer client, or made up) as a query
/// that matches nothing would hide it.
pub fn check_outcome(outcome: i32) -> Result<(), LogError> {
    match pb::Outcome::try_from(outcome) {
        Ok(_) => Ok(()),
        Err(_) => Err(LogError::InvalidQuery(herald_core::ValidationError::new(
            "outcome",
            format!("{outcome} is not an outcome"),
        ))),
    }
}

/// The times a listing is bounded by: from `since` (included) to `until` (excluded).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimeRange {
    /// The first time listed; `None`: from the oldest.
    pub since: Option<SystemTime>,
    /// The time listing stops before; `None`: to the newest.
    pub until: Option<SystemTime>,
}

impl TimeRange {
    /// The range a caller's `since` and `until` give: each a valid timestamp (1970 to 9999,
    /// nanoseconds within the second), and `until` not before `since`.
    pub fn checked(
        since: Option<&prost_types::Timestamp>,
        until: Option<&prost_types::Timestamp>,
    ) -> Result<Self, LogError> {
        let read = |field: &'static str, ts: Option<&prost_types::Timestamp>| {
            ts.map(|ts| {
                herald_proto::convert::validate_timestamp(field, ts)
                    .map(|()| system_time(ts))
                    .map_err(LogError::InvalidQuery)
            })
            .transpose()
        };
        let range = TimeRange {
            since: read("since", since)?,
            until: read("until", until)?,
        };
        if let (Some(since), Some(until)) = (range.since, range.until)
            && until < since
        {
            return Err(LogError::InvalidQuery(herald_core::ValidationError::new(
                "until",
                "is before since",
            )));
        }
        Ok(range)
    }
}

/// A query filter, with times, pattern, status and error kind parsed once, and the tenants
/// the asker may see.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    wire: pb::AttemptFilter,
    since: Option<SystemTime>,
    until: Option<SystemTime>,
    /// The event types asked for; `None`: any (no pattern, or `*`).
    event_type: Option<EventPattern>,
    /// The HTTP status or class asked for.
    status: Option<StatusFilter>,
    /// The error kind asked for.
    error_kind: Option<ErrorKind>,
    /// The tenants whose attempts may be shown.
    tenants: Scope,
}

impl Filter {
    /// Prepares a wire filter (over every tenant); a malformed pattern, status or error kind
    /// is an [`LogError::InvalidQuery`].
    pub fn new(wire: pb::AttemptFilter) -> Result<Self, LogError> {
        Self::within(wire, &Scope::All)
    }

    /// The moment attempts asked for start before, if any.
    pub fn until(&self) -> Option<SystemTime> {
        self.until
    }

    /// Prepares a wire filter for a caller who may see only the attempts of `tenants`.
    pub fn within(wire: pb::AttemptFilter, tenants: &Scope) -> Result<Self, LogError> {
        let invalid = LogError::InvalidQuery;
        // Names no tenant, subscription or event could have are refused, not looked for.
        if !wire.tenant.is_empty() {
            validate::tenant(&wire.tenant).map_err(invalid)?;
        }
        if !wire.subscription_id.is_empty() {
            validate::subscription_id(&wire.subscription_id).map_err(invalid)?;
        }
        if !wire.event_id.is_empty() {
            validate::event_id(&wire.event_id)
                .map_err(|e| invalid(herald_core::ValidationError::new("event_id", e.reason)))?;
        }
        check_outcome(wire.outcome)?;
        let event_type = match wire.event_type.as_str() {
            "" => None,
            text => match EventPattern::parse(text)
                .map_err(|e| invalid(herald_core::ValidationError::new("event_type", e.reason)))?
            {
                EventPattern::All => None,
                pattern => Some(pattern),
            },
        };
        let status = match wire.status.as_str() {
            "" => None,
            text => Some(StatusFilter::parse(text).map_err(invalid)?),
        };
        let error_kind = match wire.error_kind.as_str() {
            "" => None,
            text => Some(ErrorKind::parse(text).map_err(invalid)?),
        };
        let range = TimeRange::checked(wire.since.as_ref(), wire.until.as_ref())?;
        Ok(Filter {
            since: range.since,
            until: range.until,
            event_type,
            status,
            error_kind,
            wire,
            tenants: tenants.clone(),
        })
    }

    /// The event types asked for, when not all.
    pub fn event_type(&self) -> Option<&EventPattern> {
        self.event_type.as_ref()
    }

    /// The HTTP status or class asked for.
    pub fn status(&self) -> Option<StatusFilter> {
        self.status
    }

    /// The error kind asked for, by its log name.
    pub fn error_kind(&self) -> Option<&'static str> {
        self.error_kind.map(ErrorKind::as_str)
    }

    /// The filter as the caller sent it.
    pub fn wire(&self) -> &pb::AttemptFilter {
        &self.wire
    }

    /// The tenants an attempt must belong to: `None` for any, else a list (with the
    /// filter's own tenant, when it names one, the only candidate).
    pub fn tenants(&self) -> Option<Vec<&str>> {
        let Some(names) = self.tenants.names() else {
            // A caller who may see every tenant and names one sees that one.
            return (!self.wire.tenant.is_empty()).then(|| vec![self.wire.tenant.as_str()]);
        };
        Some(if self.wire.tenant.is_empty() {
            names.iter().map(String::as_str).collect()
        } else {
            names
                .iter()
                .map(String::as_str)
                .filter(|t| *t == self.wire.tenant)
                .collect()
        })
    }

    /// Whether an attempt passes.
    pub fn matches(&self, a: &pb::Attempt) -> bool {
        let f = &self.wire;
        let started = a.started_at.as_ref().map(system_time);
        (f.subscription_id.is_empty() || f.subscription_id == a.subscription_id)
            && (f.tenant.is_empty() || f.tenant == a.tenant)
            && self.tenants.allows(&a.tenant)
            && (f.event_id.is_empty() || f.event_id == a.event_id)
            && (f.outcome == pb::Outcome::Unspecified as i32 || f.outcome == a.outcome)
            && self
                .event_type
                .as_ref()
                .is_none_or(|p| p.matches(&a.event_type))
            && self.status.is_none_or(|s| s.matches(a.status_code))
            && self.error_kind().is_none_or(|k| k == a.error_kind)
            && self
                .since
                .is_none_or(|since| started.is_some_and(|t| t >= since))
            && self
                .until
                .is_none_or(|until| started.is_some_and(|t| t < until))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(wire: pb::AttemptFilter) -> String {
        match Filter::new(wire) {
            Err(LogError::InvalidQuery(invalid)) => invalid.to_string(),
            other => panic!("not refused as a bad query: {other:?}"),
        }
    }

    #[test]
    fn times_no_timestamp_can_hold_and_backwards_ranges_are_refused() {
        let at = |seconds: i64, nanos: i32| Some(prost_types::Timestamp { seconds, nanos });
        for (since, until, field) in [
            (at(1_700_000_000, -1), None, "since"),
            (None, at(253_402_300_800, 0), "until"),
            (at(-5, 0), None, "since"),
            (at(1_700_000_100, 0), at(1_700_000_000, 0), "until"),
        ] {
            let text = refused(pb::AttemptFilter {
                since,
                until,
                ..Default::default()
            });
            assert!(text.starts_with(&format!("{field}:")), "{text}");
        }
        let day = Filter::new(pb::AttemptFilter {
            since: at(1_700_000_000, 0),
            until: at(1_700_086_400, 0),
            ..Default::default()
        })
        .expect("a day");
        assert!(day.until() > Some(std::time::UNIX_EPOCH));
    }

    #[test]
    fn names_no_tenant_subscription_or_event_could_have_are_refused() {
        let text = refused(pb::AttemptFilter {
            tenant: "a".repeat(5000),
            ..Default::default()
        });
        assert!(text.starts_with("tenant:"), "{text}");
        let text = refused(pb::AttemptFilter {
            subscription_id: "sub 1; drop".into(),
            ..Default::default()
        });
        assert!(text.starts_with("subscription_id:"), "{text}");
        let text = refused(pb::AttemptFilter {
            event_id: "evt/../x".into(),
            ..Default::default()
        });
        assert!(text.starts_with("event_id:"), "{text}");
        let text = refused(pb::AttemptFilter {
            outcome: 99,
            ..Default::default()
        });
        assert!(text.starts_with("outcome:"), "{text}");
        let text = refused(pb::AttemptFilter {
            status: "9".repeat(70_000),
            ..Default::default()
        });
        assert!(
            text.starts_with("status:") && text.len() < 200,
            "a refusal quotes a long value in part: {text}"
        );
        Filter::new(pb::AttemptFilter {
            tenant: "shop-1".into(),
            subscription_id: "sub_01M94R7PQSNQCG2EM0M5GP6K83".into(),
            event_id: "order-42".into(),
            ..Default::default()
        })
        .expect("names a caller may use");
    }
}
