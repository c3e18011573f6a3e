//! Herald's domain rules, shared by the control plane, the agent and the CLI so that no rule is
//! written twice.
//!
//! - [`validate`] and [`limits`]: what callers may send (tenants, ids, URLs, payloads, headers).
//! - [`event_type`]: event type grammar and the patterns subscriptions select events with.
//! - [`ids`]: sortable prefixed ids (`evt_…`, `sub_…`, `agt_…`).
//! - [`signing`]: Standard Webhooks secrets, signatures and verification.
//! - [`format`] and [`xml`]: the body a subscription receives, JSON or XML.
//! - [`retry`]: retry schedules and jitter.
//! - [`daemon`]: flag parsing, logs and exit codes every daemon shares.
//! - [`shutdown`]: the signals every binary stops on.
//! - [`keepalive`]: the pings that close connections whose peer vanished.
//! - [`target`]: which addresses webhooks may be sent to (the SSRF guard).
//! - [`subscription`]: a validated subscription, as the delivery path uses it.
//! - [`payload_filter`]: which events a subscription receives by what their payload says.
//! - [`error_kind`]: why attempts fail, and the log's filters by status and error kind.
//! - [`event_schema`]: the JSON Schemas of event types.
//! - [`trace`]: W3C trace context carried from `Emit` to every delivery.
//! - [`read_limited`]: reading files and streams whole, within a limit.
//! - [`disk_fault`]: whether a failed write means a full disk or a failing one.
//! - [`time_text`]: times as people and scripts write them (RFC 3339, 1970 to 9999).

pub mod daemon;
pub mod disk_fault;
pub mod duration;
pub mod egress;
pub mod error_kind;
pub mod error_text;
pub mod event_schema;
pub mod event_type;
pub mod format;
pub mod ids;
pub mod interest;
pub mod keepalive;
pub mod limits;
pub mod metrics;
pub mod payload_filter;
pub mod read_limited;
pub mod retry;
pub mod shutdown;
pub mod signing;
pub mod subscription;
pub mod target;
pub mod telemetry;
pub mod time_text;
pub mod tls_files;
pub mod token_file;
pub mod trace;
pub mod validate;
pub mod xml;

pub use validate::ValidationError;
