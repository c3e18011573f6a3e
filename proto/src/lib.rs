//! The `herald.v1` gRPC API: the code generated from `herald/v1/herald.proto` (checked in under
//! `src/gen/`, kept honest by `tests/bootstrap.rs`) and the conversions between wire messages
//! and Herald's domain types.

/// Generated messages, clients and servers of package `herald.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod v1 {
    include!("gen/herald.v1.rs");
}

pub mod bearer;
pub mod client_tls;
pub mod convert;
pub mod deadline;
pub mod discovery;
pub mod idempotency;
pub mod message_limit;
pub mod message_shares;
pub mod metric_labels;
pub mod refusal;
pub mod request_budget;
pub mod sent_request;
pub mod words;

/// Calls one HTTP/2 connection carries at once on a Herald gRPC server, at most: gRPC clients
/// queue the others until one ends. It bounds what one connection can make a server hold.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 128;

/// The encoded `FileDescriptorSet` of `herald/v1/herald.proto` and the well-known types it
/// imports: what gRPC reflection serves, so `grpcurl` and other clients can discover the API.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!("gen/herald.v1.bin");

/// The well-known types the API uses (`Timestamp`, `Duration`).
pub use prost_types;
