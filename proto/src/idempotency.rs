//! How a create answered from an earlier create with the same idempotency key says so. The
//! answer is the same message either way (the subscription as it is now), so the difference
//! travels beside it: gRPC response metadata, and the HTTP API's header of the same name.

/// The response metadata key (over HTTP, the `Idempotent-Replayed` header) set to `true` on
/// a create answered from an earlier create with the same idempotency key: nothing new was
/// made. A create that made something carries none.
pub const REPLAYED: &str = "idempotent-replayed";

/// Marks `response` as answered from an earlier create.
pub fn mark_replayed<T>(response: &mut tonic::Response<T>) {
    response.metadata_mut().insert(
        REPLAYED,
        tonic::metadata::MetadataValue::from_static("true"),
    );
}

/// Whether `response` was answered from an earlier create with the same key.
pub fn was_replayed<T>(response: &tonic::Response<T>) -> bool {
    response
        .metadata()
        .get(REPLAYED)
        .is_some_and(|value| value.as_bytes() == b"true")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marked_answer_reads_as_replayed_and_an_unmarked_one_does_not() {
        let mut response = tonic::Response::new(());
        assert!(!was_replayed(&response));
        mark_replayed(&mut response);
        assert!(was_replayed(&response));
    }
}
