//! What a commit derives from the attempts it stores ([`crate::attempts::derived`]), kept in
//! PostgreSQL beside them:
//!
//! - `subscription_health`: one row per subscription that has failed since it was last reset;
//!   `record` is the `herald.v1.SubscriptionHealth` (protobuf), with `consecutive_failures` and
//!   `last_error` as columns for `psql`. Replicas counting into the same subscription take its
//!   row with `FOR UPDATE` (in id order), so they wait for each other rather than overwrite.
//! - `health_followups`: what is still to be acted on in the config store, until a replica did.
//! - `operator_events`: the outbox of operator events, until an agent accepted them.

use std::collections::HashMap;

use deadpool_postgres::Transaction;
use herald_proto::v1 as pb;
use prost::Message as _;

use crate::attempts::derived::{self, Followup, PendingFollowup, Reactions};

/// The tables of schema version 2.
pub(super) const MIGRATION: &str = r#"
CREATE TABLE subscription_health (
    subscription_id      text PRIMARY KEY,
    consecutive_failures integer NOT NULL,
    last_error           text NOT NULL,
    record               bytea NOT NULL,
    updated_at           timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE health_followups (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscription_id text NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    record          bytea NOT NULL
);
CREATE TABLE operator_events (
    seq        bigint GENERATED ALWAYS AS IDENTITY,
    id         text PRIMARY KEY,
    event_type text NOT NULL,
    raised_at  timestamptz NOT NULL DEFAULT now(),
    record     bytea NOT NULL
);
CREATE INDEX operator_events_by_seq ON operator_events (seq);
"#;

/// Counts `new` (the attempts this transaction stored) into the health records, and writes the
/// follow-ups and operator events they derive; the follow-ups written.
pub(super) async fn commit(
    txn: &Transaction<'_>,
    new: &[&pb::Attempt],
    reactions: &dyn Reactions,
) -> Result<Vec<PendingFollowup>, tokio_postgres::Error> {
    if new.is_empty() {
        return Ok(Vec::new());
    }
    let failing = derived::failing_subscriptions(new);
    if !failing.is_empty() {
        // A row for each subscription that may start a run, so that the read below can lock
        // it: two replicas counting into one subscription then take turns.
        txn.execute(
            "INSERT INTO subscription_health (subscription_id, consecutive_failures, last_error, record) \
             SELECT id, 0, '', '' FROM unnest($1::text[]) AS id ORDER BY id ON CONFLICT DO NOTHING",
            &[&failing],
        )
        .await?;
    }
    let ids = derived::subscriptions(new);
    let rows = txn
        .query(
            "SELECT subscription_id, record FROM subscription_health \
             WHERE subscription_id = ANY($1) ORDER BY subscription_id FOR UPDATE",
            &[&ids],
        )
        .await?;
    let mut current = HashMap::with_capacity(rows.len());
    for row in &rows {
        let id: String = row.get(0);
        current.insert(id.clone(), decode_health(&id, row.get(1)));
    }
    let derived = derived::derive(new, |id| current.get(id).cloned(), reactions);

    if !derived.records.is_empty() {
        let mut columns = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for record in &derived.records {
            columns.0.push(record.subscription_id.as_str());
            columns.1.push(record.health.consecutive_failures as i32);
            columns.2.push(record.health.last_error.as_str());
            columns.3.push(record.health.encode_to_vec());
        }
        txn.execute(
            "UPDATE subscription_health h SET consecutive_failures = v.failures, \
             last_error = v.error, record = v.record, updated_at = now() \
             FROM unnest($1::text[], $2::integer[], $3::text[], $4::bytea[]) \
             AS v(id, failures, error, record) WHERE h.subscription_id = v.id",
            &[&columns.0, &columns.1, &columns.2, &columns.3],
        )
        .await?;
    }
    let mut written = Vec::with_capacity(derived.followups.len());
    if !derived.followups.is_empty() {
        let ids: Vec<&str> = derived
            .followups
            .iter()
            .map(|f| f.subscription_id.as_str())
            .collect();
        let records: Vec<Vec<u8>> = derived
            .followups
            .iter()
            .map(|f| f.encode_to_vec())
            .collect();
        let rows = txn
            .query(
                "INSERT INTO health_followups (subscription_id, record) \
                 SELECT * FROM unnest($1::text[], $2::bytea[]) RETURNING id, subscription_id",
                &[&ids, &records],
            )
            .await?;
        // One follow-up per subscription and commit: the subscription tells which id is whose.
        let by_subscription: HashMap<String, i64> =
            rows.iter().map(|row| (row.get(1), row.get(0))).collect();
        for followup in derived.followups {
            if let Some(id) = by_subscription.get(&followup.subscription_id) {
                written.push(PendingFollowup { id: *id, followup });
            }
        }
    }
    put_events(txn, &derived.events).await?;
    Ok(written)
}

/// Puts operator events into the outbox, keeping those already there.
pub(super) async fn put_events(
    txn: &Transaction<'_>,
    events: &[pb::Event],
) -> Result<(), tokio_postgres::Error> {
    if events.is_empty() {
        return Ok(());
    }
    let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    let types: Vec<&str> = events.iter().map(|e| e.r#type.as_str()).collect();
    let records: Vec<Vec<u8>> = events.iter().map(|e| e.encode_to_vec()).collect();
    txn.execute(
        "INSERT INTO operator_events (id, event_type, record) \
         SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[]) ON CONFLICT DO NOTHING",
        &[&ids, &types, &records],
    )
    .await?;
    Ok(())
}

/// A stored health record (a row made ahead of its first count holds an empty one).
pub(super) fn decode_health(id: &str, record: &[u8]) -> pb::SubscriptionHealth {
    let mut health = pb::SubscriptionHealth::decode(record).unwrap_or_else(|err| {
        // Counting starts afresh rather than refusing every report of the subscription.
        tracing::error!(subscription = %id, error = %err, "unreadable health record; counting anew");
        pb::SubscriptionHealth::default()
    });
    health.subscription_id = id.to_owned();
    health
}

/// A stored follow-up (an unreadable one names no subscription: there is nothing to act on,
/// and settling it removes it).
pub(super) fn decode_followup(id: i64, record: &[u8]) -> PendingFollowup {
    let followup = Followup::decode(record).unwrap_or_else(|err| {
        tracing::error!(id, error = %err, "unreadable health follow-up; dropped");
        Followup::default()
    });
    PendingFollowup { id, followup }
}
