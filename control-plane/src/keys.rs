//! Where Herald's records live in the config store. Everything sits under one prefix so an
//! etcd cluster can be shared and `etcdctl get --prefix /herald/v1/` shows it all.
//!
//! - `/herald/v1/subscriptions/<tenant>/<id>` → a `herald.v1.Subscription` (protobuf); its etcd
//!   mod_revision is the subscription's `revision`. Grouped by tenant so listing one tenant is
//!   one range read.
//! - `/herald/v1/event-types/<name>` → a `herald.v1.EventType`: the catalogue (see
//!   `event_types.rs`); its schemas reach agents through `schema_feed.rs`.
//! - `/herald/v1/subscription-ids/<id>` → the tenant, so a subscription is found by id alone.
//!   Written in the same transaction as the record.
//! - `/herald/v1/tenant-creates/<tenant>` → the id of the tenant's latest subscription created:
//!   every create rewrites it, and commits only if it is unchanged since the create counted the
//!   tenant's subscriptions, so creates racing at `--max-subscriptions-per-tenant` cannot pass
//!   it together.
//! - `/herald/v1/create-keys/<tenant>/<sha256 of the key>` → a `herald.v1.CreateKeyRecord`:
//!   the subscription a create naming that idempotency key made, for 24 hours, then swept
//!   (see `subscriptions/create_key.rs`).
//! - `/herald/v1/health/<id>`: where earlier versions kept endpoint health; it lives in the
//!   delivery log now, counted in the commit that stores the attempts. Removed with the
//!   subscription.
//! - `/herald/v1/operator-events/<id>`: where earlier versions kept the operator-event outbox;
//!   it lives in the delivery log now, and what is left here is moved there at start.
//! - `/herald/v1/agents/<agent id>` → a `herald.v1.AgentInfo`: the agent's presence, written by
//!   the replica holding its stream and bound to that replica's lease (see `presence.rs`).
//! - `/herald/v1/replay-orders/<replica>/<id>` → a `herald.v1.RelayedReplay` for an agent on
//!   that replica, and `/herald/v1/replay-results/<id>` → its `herald.v1.ReplayResult`; both
//!   bound to short leases (see `relay.rs`).
//! - `/herald/v1/test-orders/<replica>/<id>` → a `herald.v1.RelayedTest` for an agent of that
//!   replica that delivers the subscription, and `/herald/v1/test-results/<id>` → its
//!   `herald.v1.RelayedTestResult`; both bound to short leases (see `relay.rs`).
//! - `/herald/v1/keyring-checks/<key id>` → a `herald.v1.SealedSecret`: a known text sealed with
//!   that key when it first sealed, so a replica can tell at start whether its key of that id
//!   is the same key (see `keyring_check.rs`).
//! - `/herald/v1/operator-event-key` → a `herald.v1.SealedSecret`: the secret operator event ids
//!   are derived with, made once and shared by every replica (see `operator_events.rs`).
//! - `/herald/v1/portal-links-expired/<tenant>` → a `herald.v1.PortalLinksExpired`: the
//!   tenant's portal links made until then no longer open (see `portal_links.rs`).

/// The root of every Herald key.
pub const ROOT: &str = "/herald/v1/";
/// The prefix of all subscription records; the config hub watches it.
pub const SUBSCRIPTIONS: &str = "/herald/v1/subscriptions/";
/// The prefix of the event-type catalogue (`<prefix><name>` → a `herald.v1.EventType`); the
/// schema feed watches it.
pub const EVENT_TYPES: &str = "/herald/v1/event-types/";
const SUBSCRIPTION_IDS: &str = "/herald/v1/subscription-ids/";
const HEALTH: &str = "/herald/v1/health/";
/// The prefix of the operator-event outbox of earlier versions.
pub const OPERATOR_EVENTS: &str = "/herald/v1/operator-events/";

/// The prefix of the keyring check values.
pub const KEYRING_CHECKS: &str = "/herald/v1/keyring-checks/";

/// The check value key of a sealing key.
pub fn keyring_check(key_id: &str) -> String {
    format!("{KEYRING_CHECKS}{key_id}")
}

/// The sealed secret operator event ids are keyed with.
pub const OPERATOR_EVENT_KEY: &str = "/herald/v1/operator-event-key";

/// The prefix of the agents' presence records.
pub const AGENTS: &str = "/herald/v1/agents/";

/// The prefix of the replay orders relayed to one replica.
pub fn replay_orders(replica: &str) -> String {
    format!("{ROOT}replay-orders/{replica}/")
}

/// The result key of a relayed replay order.
pub fn replay_result(id: &str) -> String {
    format!("{ROOT}replay-results/{id}")
}

/// The prefix of the test orders relayed to one replica.
pub fn test_orders(replica: &str) -> String {
    format!("{ROOT}test-orders/{replica}/")
}

/// The result key of a relayed test order.
pub fn test_result(id: &str) -> String {
    format!("{ROOT}test-results/{id}")
}

/// The presence record key of an agent.
pub fn agent(id: &str) -> String {
    format!("{AGENTS}{id}")
}

/// The outbox key of an operator event.
pub fn operator_event(id: &str) -> String {
    format!("{OPERATOR_EVENTS}{id}")
}

/// The marker that a subscription's client certificate expiry was warned of (its value: the
/// expiry, in Unix seconds).
pub fn certificate_warning(id: &str) -> String {
    format!("{ROOT}certificate-warnings/{id}")
}

/// The health record key of a subscription.
pub fn health(id: &str) -> String {
    format!("{HEALTH}{id}")
}

/// The record key of a subscription.
pub fn subscription(tenant: &str, id: &str) -> String {
    format!("{SUBSCRIPTIONS}{tenant}/{id}")
}

/// The prefix of one tenant's subscriptions.
pub fn tenant_subscriptions(tenant: &str) -> String {
    format!("{SUBSCRIPTIONS}{tenant}/")
}

/// The key every create of `tenant`'s subscriptions rewrites (see the module's list).
pub fn tenant_creates(tenant: &str) -> String {
    format!("{ROOT}tenant-creates/{tenant}")
}

/// The prefix of every create's idempotency-key record, which the sweep walks.
pub const CREATE_KEYS: &str = "/herald/v1/create-keys/";

/// The record of a create of `tenant` that named an idempotency key (`key_sha256`: the key's
/// SHA-256 in hex, so that any key is one path segment of fixed length).
pub fn create_key(tenant: &str, key_sha256: &str) -> String {
    format!("{CREATE_KEYS}{tenant}/{key_sha256}")
}

/// The id-index key of a subscription.
pub fn subscription_id(id: &str) -> String {
    format!("{SUBSCRIPTION_IDS}{id}")
}

/// The subscription id at the end of a record key.
pub fn id_of_subscription_key(key: &str) -> Option<&str> {
    key.strip_prefix(SUBSCRIPTIONS)?
        .rsplit_once('/')
        .map(|(_, id)| id)
}

/// The tenant a subscription's key names (`…/subscriptions/{tenant}/{id}`).
pub fn tenant_of_subscription_key(key: &str) -> Option<&str> {
    key.strip_prefix(SUBSCRIPTIONS)?
        .rsplit_once('/')
        .map(|(tenant, _)| tenant)
}

/// The record that ends a tenant's portal links made until a time.
pub fn portal_links_expired(tenant: &str) -> String {
    format!("{ROOT}portal-links-expired/{tenant}")
}

/// Where the records of signed-out console sessions are.
pub const CONSOLE_SESSIONS_ENDED: &str = "/herald/v1/console-sessions-ended/";

/// The record that a console sign-in was signed out of (kept until it would have expired).
pub fn console_session_ended(session: &str) -> String {
    format!("{CONSOLE_SESSIONS_ENDED}{session}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let key = subscription("shop-1", "sub_1");
        assert_eq!(key, "/herald/v1/subscriptions/shop-1/sub_1");
        assert!(key.starts_with(&tenant_subscriptions("shop-1")));
        assert_eq!(id_of_subscription_key(&key), Some("sub_1"));
        assert_eq!(id_of_subscription_key("/other/x"), None);
    }
}
