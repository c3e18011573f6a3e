//! The audit log: every change made through the operator API is recorded with who made it,
//! the tenant, what was done to what and the revision it wrote, and listed by `herald audit`.

use std::time::Duration;

use herald_proto::bearer::Bearer;
use herald_proto::v1 as pb;
use herald_proto::v1::audit_client::AuditClient;
use herald_proto::v1::deliveries_client::DeliveriesClient;
use herald_proto::v1::event_types_client::EventTypesClient;
use herald_proto::v1::subscriptions_client::SubscriptionsClient;
use herald_tests::herald::connect;
use herald_tests::{
    AgentAndReceiver, AgentOptions, ConfigStore, ControlPlane, Etcd, event, subscription,
};

const OPS: &str = "admin-ops-6c1e9a4f2b7d";
const SHOP_B: &str = "admin-b-8d3f1a6c9e2b";
const AGENT: &str = "agent-audit-3b7e1c9a5f2d";

#[tokio::test]
async fn every_change_is_recorded_with_its_actor() -> anyhow::Result<()> {
    let tokens = format!(
        "admin {OPS} name=ops\nadmin {SHOP_B} name=shop-b-admin tenants=shop-b\nagent {AGENT}\n"
    );
    let control_plane =
        ControlPlane::start_with_tokens(ConfigStore::Embedded, &tokens, OPS).await?;
    let AgentAndReceiver {
        agent, receiver, ..
    } = AgentAndReceiver::start(
        control_plane.url(),
        AgentOptions {
            control_plane_token: Some(AGENT.into()),
            ..Default::default()
        },
    )
    .await?;
    let url = control_plane.url();
    let channel = |token: &str| {
        let (token, url) = (token.to_owned(), url.to_owned());
        async move { anyhow::Ok(Bearer::new(Some(&token))?.wrap(connect(&url).await?)) }
    };
    let ops = channel(OPS).await?;
    let mut subs = SubscriptionsClient::new(ops.clone());

    // The operator's changes, one of each kind.
    let created = control_plane
        .create(subscription("shop-a", &receiver.url("/a"), &["order.*"]))
        .await?;
    let id = created.id.clone();
    let updated = subs
        .update_subscription(pb::UpdateSubscriptionRequest {
            subscription: Some(pb::Subscription {
                description: "orders of shop A".into(),
                ..created.clone()
            }),
            expected_revision: created.revision,
            allow_unregistered: false,
        })
        .await?
        .into_inner();
    subs.disable_subscription(pb::DisableSubscriptionRequest {
        id: id.clone(),
        reason: "maintenance".into(),
    })
    .await?;
    let enabled = subs
        .enable_subscription(pb::EnableSubscriptionRequest {
            id: id.clone(),
            replay_parked: false,
        })
        .await?
        .into_inner();
    subs.rotate_secret(pb::RotateSecretRequest {
        id: id.clone(),
        grace: None,
    })
    .await?;
    EventTypesClient::new(ops.clone())
        .create_event_type(pb::CreateEventTypeRequest {
            event_type: Some(pb::EventType {
                name: "invoice.added".into(),
                description: "An invoice was added".into(),
                ..Default::default()
            }),
        })
        .await?;
    control_plane
        .wait_applied(enabled.revision, Duration::from_secs(10))
        .await?;
    let emitted = agent
        .emit(event(
            "shop-a",
            "order.created",
            &serde_json::json!({"n": 1}),
        ))
        .await?;
    receiver
        .wait_for_requests(1, Duration::from_secs(10))
        .await?;
    control_plane
        .wait_logged(
            pb::AttemptFilter {
                event_id: emitted.event_id.clone(),
                ..Default::default()
            },
            Duration::from_secs(10),
        )
        .await?;
    DeliveriesClient::new(ops.clone())
        .replay_deliveries(pb::ReplayDeliveriesRequest {
            event_id: emitted.event_id.clone(),
            ..Default::default()
        })
        .await?;
    subs.delete_subscription(pb::DeleteSubscriptionRequest {
        id: id.clone(),
        expected_revision: 0,
    })
    .await?;
    // Shop B's admin makes one of its own.
    let sub_b = SubscriptionsClient::new(channel(SHOP_B).await?)
        .create_subscription(pb::CreateSubscriptionRequest {
            subscription: Some(subscription("shop-b", &receiver.url("/b"), &["order.*"])),
            // The catalogue holds invoice.added now; order.* is not registered.
            allow_unregistered: true,
            ..Default::default()
        })
        .await?
        .into_inner();

    let list = |token: &str, filter: pb::AuditFilter| {
        let channel = channel(token);
        async move {
            anyhow::Ok(
                AuditClient::new(channel.await?)
                    .list_audit_entries(pb::ListAuditEntriesRequest {
                        filter: Some(filter),
                        page_size: 100,
                        page_token: String::new(),
                    })
                    .await?
                    .into_inner()
                    .entries,
            )
        }
    };
    let all = list(OPS, pb::AuditFilter::default()).await?;
    let seen: Vec<(&str, &str, &str, &str)> = all
        .iter()
        .map(|e| {
            (
                e.actor.as_str(),
                e.tenant.as_str(),
                e.action.as_str(),
                e.object.as_str(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            (
                "shop-b-admin",
                "shop-b",
                "subscription.create",
                sub_b.id.as_str()
            ),
            ("ops", "shop-a", "subscription.delete", id.as_str()),
            (
                "ops",
                "shop-a",
                "deliveries.replay",
                emitted.event_id.as_str()
            ),
            ("ops", "", "event_type.create", "invoice.added"),
            ("ops", "shop-a", "subscription.rotate_secret", id.as_str()),
            ("ops", "shop-a", "subscription.enable", id.as_str()),
            ("ops", "shop-a", "subscription.disable", id.as_str()),
            ("ops", "shop-a", "subscription.update", id.as_str()),
            ("ops", "shop-a", "subscription.create", id.as_str()),
        ]
    );
    let revision = |action: &str| {
        all.iter()
            .find(|e| e.action == action)
            .map(|e| e.revision)
            .unwrap_or_default()
    };
    assert_eq!(revision("subscription.create"), sub_b.revision);
    assert_eq!(revision("subscription.update"), updated.revision);
    assert!(revision("subscription.delete") > enabled.revision);
    let disable = all
        .iter()
        .find(|e| e.action == "subscription.disable")
        .expect("disable");
    assert_eq!(disable.detail, "maintenance");
    assert!(all.iter().all(|e| e.at.is_some()));

    // Filters, and a scoped admin sees its tenant's entries only.
    let by_actor = list(
        OPS,
        pb::AuditFilter {
            actor: "shop-b-admin".into(),
            ..Default::default()
        },
    )
    .await?;
    assert_eq!(by_actor.len(), 1);
    let scoped = list(SHOP_B, pb::AuditFilter::default()).await?;
    assert_eq!(scoped.len(), 1);
    assert_eq!(scoped[0].tenant, "shop-b");
    Ok(())
}

/// A caller that gives up (its deadline expires, it goes away) may or may not have made its
/// change; a change that was made has its entry all the same.
#[tokio::test]
async fn a_change_whose_caller_gave_up_is_recorded_too() -> anyhow::Result<()> {
    // On etcd a change takes a few round trips and a sync: callers give up half-way through.
    let etcd = Etcd::start().await?;
    let control_plane = ControlPlane::start(ConfigStore::Etcd(vec![etcd.endpoint()])).await?;
    let channel = control_plane.channel().await?;
    let mut subs = SubscriptionsClient::new(channel.clone());
    let mut gave_up = 0;
    // Deadlines from 0.1 ms up: the short ones expire before the change, the long ones after it,
    // and some in between, while the change is being written.
    for step in 1..=80 {
        let deadline = Duration::from_micros(100 * step);
        let mut request = tonic::Request::new(pb::CreateSubscriptionRequest {
            subscription: Some(subscription(
                "shop-late",
                // An address, not a name: nothing waits on a name server.
                "https://127.0.0.1:9/hooks",
                &["order.*"],
            )),
            allow_unregistered: true,
            ..Default::default()
        });
        request.set_timeout(deadline);
        match tokio::time::timeout(deadline, subs.create_subscription(request)).await {
            Ok(Ok(_)) => {}
            Ok(Err(status)) => {
                // The server answers DEADLINE_EXCEEDED; tonic's client, timing the call
                // itself, says CANCELLED when its own timer ends it first.
                assert!(
                    matches!(
                        status.code(),
                        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
                    ),
                    "{status:?}"
                );
                gave_up += 1;
            }
            Err(_) => gave_up += 1,
        }
    }
    assert!(gave_up > 0, "some callers gave up");
    // Changes still running when their callers gave up end within moments.
    let made_and_recorded = || {
        let (mut subs, mut audit) = (subs.clone(), AuditClient::new(channel.clone()));
        async move {
            let created = subs
                .list_subscriptions(pb::ListSubscriptionsRequest {
                    tenant: "shop-late".into(),
                    page_size: 1000,
                    ..Default::default()
                })
                .await?
                .into_inner()
                .subscriptions;
            let entries = audit
                .list_audit_entries(pb::ListAuditEntriesRequest {
                    filter: Some(pb::AuditFilter {
                        tenant: "shop-late".into(),
                        ..Default::default()
                    }),
                    page_size: 1000,
                    page_token: String::new(),
                })
                .await?
                .into_inner()
                .entries;
            let mut made: Vec<String> = created.into_iter().map(|s| s.id).collect();
            let mut recorded: Vec<String> = entries.into_iter().map(|e| e.object).collect();
            made.sort();
            recorded.sort();
            anyhow::Ok((made, recorded))
        }
    };
    let settled = herald_tests::eventually(
        Duration::from_secs(10),
        "an entry for each change made",
        || async {
            let (made, recorded) = made_and_recorded().await?;
            Ok((!made.is_empty() && made == recorded).then_some(()))
        },
    )
    .await;
    if settled.is_err() {
        let (made, recorded) = made_and_recorded().await?;
        panic!(
            "{} changes made, {} recorded: {made:?} against {recorded:?}",
            made.len(),
            recorded.len()
        );
    }
    Ok(())
}
