//! Tenants isolated from each other: a token scoped to one tenant neither sees nor changes
//! another tenant's subscriptions, attempts, tails or replays, through any RPC of the admin API.

use std::collections::BTreeSet;
use std::time::Duration;

use herald_proto::bearer::{AuthedChannel, Bearer};
use herald_proto::v1 as pb;
use herald_proto::v1::agent_control_client::AgentControlClient;
use herald_proto::v1::agents_client::AgentsClient;
use herald_proto::v1::audit_client::AuditClient;
use herald_proto::v1::config_request::Kind;
use herald_proto::v1::deliveries_client::DeliveriesClient;
use herald_proto::v1::event_types_client::EventTypesClient;
use herald_proto::v1::subscriptions_client::SubscriptionsClient;
use herald_tests::herald::connect;
use herald_tests::{
    Agent, AgentAndReceiver, AgentOptions, ConfigStore, ControlPlane, Etcd, HeldPort, Receiver,
    TestCa, event, eventually, report, subscription,
};
use prost::Message as _;
use tonic::{Code, Status};

const ADMIN: &str = "admin-9d3f6b1e8a2c";
const ADMIN_B: &str = "admin-b-5e8a2c7f1d4b";
const READ_B: &str = "read-b-3c9e1a6d8f2b";
const READ_A: &str = "read-a-8e2d5b9c1f7a";
const AGENT: &str = "agent-7b2e9d4a1c6f";
const AGENT_A: &str = "agent-a-4d1f8b3e6c2a";
const AGENT_B_EU: &str = "agent-b-eu-9a6c3f1e7d2b";

/// The services of the operator API, whose every method the table below must cover.
const ADMIN_SERVICES: [&str; 5] = [
    "Subscriptions",
    "Deliveries",
    "EventTypes",
    "Agents",
    "Audit",
];

fn tokens() -> String {
    format!(
        "admin {ADMIN} name=ops\n\
         admin {ADMIN_B} name=shop-b-admin tenants=shop-b\n\
         read {READ_B} name=shop-b-reader tenants=shop-b\n\
         read {READ_A} name=shop-a-reader tenants=shop-a\n\
         agent {AGENT}\n"
    )
}

/// Every method of the operator API, as `Service/Method`, read from the API's descriptors.
fn admin_methods() -> BTreeSet<String> {
    let set =
        herald_proto::prost_types::FileDescriptorSet::decode(herald_proto::FILE_DESCRIPTOR_SET)
            .expect("the API's descriptors");
    set.file
        .iter()
        .filter(|f| f.package() == "herald.v1")
        .flat_map(|f| &f.service)
        .filter(|s| ADMIN_SERVICES.contains(&s.name()))
        .flat_map(|s| {
            s.method
                .iter()
                .map(move |m| format!("{}/{}", s.name(), m.name()))
        })
        .collect()
}

/// The operator clients of one token.
struct Clients {
    subscriptions: SubscriptionsClient<AuthedChannel>,
    deliveries: DeliveriesClient<AuthedChannel>,
    event_types: EventTypesClient<AuthedChannel>,
    agents: AgentsClient<AuthedChannel>,
    audit: AuditClient<AuthedChannel>,
}

impl Clients {
    async fn new(url: &str, token: &str) -> anyhow::Result<Self> {
        let channel = Bearer::new(Some(token))?.wrap(connect(url).await?);
        Ok(Clients {
            subscriptions: SubscriptionsClient::new(channel.clone()),
            deliveries: DeliveriesClient::new(channel.clone()),
            event_types: EventTypesClient::new(channel.clone()),
            agents: AgentsClient::new(channel.clone()),
            audit: AuditClient::new(channel),
        })
    }
}

/// Records that `method` was tried and answered `code`.
fn refused<T: std::fmt::Debug>(
    covered: &mut BTreeSet<String>,
    method: &str,
    result: Result<tonic::Response<T>, Status>,
    code: Code,
) {
    let status = result.expect_err(method);
    assert_eq!(status.code(), code, "{method}: {status:?}");
    covered.insert(method.to_owned());
}

#[tokio::test]
async fn a_token_scoped_to_one_tenant_neither_sees_nor_changes_another() -> anyhow::Result<()> {
    let control_plane =
        ControlPlane::start_with_tokens(ConfigStore::Embedded, &tokens(), ADMIN).await?;
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
    // Shop A's endpoint, made by the operator, with one delivery in the log.
    let sub_a = control_plane
        .create(subscription("shop-a", &receiver.url("/a"), &["order.*"]))
        .await?;
    control_plane
        .wait_applied(sub_a.revision, Duration::from_secs(10))
        .await?;
    let emitted_a = agent
        .emit(event(
            "shop-a",
            "order.created",
            &serde_json::json!({"n": 1}),
        ))
        .await?;
    control_plane
        .wait_logged(
            pb::AttemptFilter {
                event_id: emitted_a.event_id.clone(),
                ..Default::default()
            },
            Duration::from_secs(10),
        )
        .await?;

    let url = control_plane.url();
    let mut b = Clients::new(url, ADMIN_B).await?;
    let mut covered = BTreeSet::new();

    // Shop B's admin may work on shop B only.
    let sub_b = b
        .subscriptions
        .create_subscription(pb::CreateSubscriptionRequest {
            subscription: Some(subscription("shop-b", &receiver.url("/b"), &["order.*"])),
            allow_unregistered: false,
            ..Default::default()
        })
        .await?
        .into_inner();
    refused(
        &mut covered,
        "Subscriptions/CreateSubscription",
        b.subscriptions
            .create_subscription(pb::CreateSubscriptionRequest {
                subscription: Some(subscription("shop-a", &receiver.url("/x"), &["order.*"])),
                allow_unregistered: false,
                ..Default::default()
            })
            .await,
        Code::PermissionDenied,
    );

    // Shop A's subscription does not exist for it: the answer an unknown id gets.
    let get = |id: &str| pb::GetSubscriptionRequest {
        id: id.into(),
        show_secrets: false,
    };
    let unknown = b
        .subscriptions
        .get_subscription(get("sub_01NOSUCHSUBSCRIPTION00000"))
        .await
        .unwrap_err();
    let hidden = b
        .subscriptions
        .get_subscription(get(&sub_a.id))
        .await
        .unwrap_err();
    assert_eq!(
        (hidden.code(), unknown.code()),
        (Code::NotFound, Code::NotFound)
    );
    assert_eq!(
        hidden.message().replace(&sub_a.id, "ID"),
        unknown
            .message()
            .replace("sub_01NOSUCHSUBSCRIPTION00000", "ID")
    );
    covered.insert("Subscriptions/GetSubscription".into());
    let id = sub_a.id.clone();
    refused(
        &mut covered,
        "Subscriptions/UpdateSubscription",
        b.subscriptions
            .update_subscription(pb::UpdateSubscriptionRequest {
                subscription: Some(pb::Subscription {
                    id: id.clone(),
                    url: receiver.url("/stolen"),
                    ..subscription("shop-a", &receiver.url("/stolen"), &["order.*"])
                }),
                expected_revision: sub_a.revision,
                allow_unregistered: false,
            })
            .await,
        Code::NotFound,
    );
    refused(
        &mut covered,
        "Subscriptions/DeleteSubscription",
        b.subscriptions
            .delete_subscription(pb::DeleteSubscriptionRequest {
                id: id.clone(),
                expected_revision: 0,
            })
            .await,
        Code::NotFound,
    );
    refused(
        &mut covered,
        "Subscriptions/EnableSubscription",
        b.subscriptions
            .enable_subscription(pb::EnableSubscriptionRequest {
                id: id.clone(),
                replay_parked: true,
            })
            .await,
        Code::NotFound,
    );
    refused(
        &mut covered,
        "Subscriptions/DisableSubscription",
        b.subscriptions
            .disable_subscription(pb::DisableSubscriptionRequest {
                id: id.clone(),
                reason: "hijacked".into(),
            })
            .await,
        Code::NotFound,
    );
    refused(
        &mut covered,
        "Subscriptions/RotateSecret",
        b.subscriptions
            .rotate_secret(pb::RotateSecretRequest {
                id: id.clone(),
                grace: None,
            })
            .await,
        Code::NotFound,
    );
    refused(
        &mut covered,
        "Subscriptions/GetSubscriptionHealth",
        b.subscriptions
            .get_subscription_health(pb::GetSubscriptionHealthRequest { id: id.clone() })
            .await,
        Code::NotFound,
    );
    refused(
        &mut covered,
        "Subscriptions/TestSubscription",
        b.subscriptions
            .test_subscription(pb::TestSubscriptionRequest {
                id: id.clone(),
                event_type: String::new(),
                payload: vec![],
            })
            .await,
        Code::NotFound,
    );

    // Lists hold shop B's own and nothing of shop A's, whatever they ask for.
    for tenant in ["", "shop-a", "shop-b"] {
        let listed = b
            .subscriptions
            .list_subscriptions(pb::ListSubscriptionsRequest {
                tenant: tenant.into(),
                page_size: 10,
                page_token: String::new(),
            })
            .await?
            .into_inner();
        let tenants: Vec<&str> = listed
            .subscriptions
            .iter()
            .map(|s| s.tenant.as_str())
            .collect();
        let expected: &[&str] = if tenant == "shop-a" { &[] } else { &["shop-b"] };
        assert_eq!(tenants, expected, "listing tenant {tenant:?}");
    }
    covered.insert("Subscriptions/ListSubscriptions".into());
    for filter in [
        pb::AttemptFilter::default(),
        pb::AttemptFilter {
            tenant: "shop-a".into(),
            ..Default::default()
        },
        pb::AttemptFilter {
            subscription_id: id.clone(),
            ..Default::default()
        },
        pb::AttemptFilter {
            event_id: emitted_a.event_id.clone(),
            ..Default::default()
        },
    ] {
        let listed = b
            .deliveries
            .list_attempts(pb::ListAttemptsRequest {
                filter: Some(filter.clone()),
                page_size: 100,
                page_token: String::new(),
            })
            .await?
            .into_inner();
        assert!(
            listed.attempts.iter().all(|a| a.tenant == "shop-b"),
            "{filter:?}: {:?}",
            listed.attempts
        );
    }
    covered.insert("Deliveries/ListAttempts".into());

    // A replay of shop A's deliveries finds nothing to replay, and says nothing of them:
    // shop A's event is not found, as an id nobody has…
    refused(
        &mut covered,
        "Deliveries/ReplayDeliveries",
        b.deliveries
            .replay_deliveries(pb::ReplayDeliveriesRequest {
                event_id: emitted_a.event_id.clone(),
                ..Default::default()
            })
            .await,
        Code::NotFound,
    );
    // …and shop A's subscription over a time range is not found either, as one nobody has.
    for subscription_id in [id.clone(), "sub_01NOSUCHSUBSCRIPTION00000".to_owned()] {
        let refused = b
            .deliveries
            .replay_deliveries(pb::ReplayDeliveriesRequest {
                subscription_id: subscription_id.clone(),
                since: Some(herald_proto::convert::timestamp(std::time::UNIX_EPOCH)),
                ..Default::default()
            })
            .await
            .expect_err("not found");
        assert_eq!(refused.code(), Code::NotFound, "{refused:?}");
        assert_eq!(
            refused.message().replace(&subscription_id, "ID"),
            "subscription \"ID\" not found"
        );
    }

    // Shop A's request as sent is not found for shop B, whatever tenant it names, and not
    // expunged by it: the operator still reads it.
    for tenant in ["", "shop-a"] {
        refused(
            &mut covered,
            "Deliveries/GetSentRequests",
            b.deliveries
                .get_sent_requests(pb::GetSentRequestsRequest {
                    event_id: emitted_a.event_id.clone(),
                    tenant: tenant.into(),
                    ..Default::default()
                })
                .await,
            Code::NotFound,
        );
        let expunged = b
            .deliveries
            .expunge_sent_requests(pb::ExpungeSentRequestsRequest {
                event_id: emitted_a.event_id.clone(),
                tenant: tenant.into(),
            })
            .await?
            .into_inner();
        assert_eq!(expunged.removed, 0, "tenant {tenant:?}");
    }
    covered.insert("Deliveries/ExpungeSentRequests".into());
    let kept = control_plane
        .deliveries()
        .await?
        .get_sent_requests(pb::GetSentRequestsRequest {
            event_id: emitted_a.event_id.clone(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(kept.requests.len(), 1);

    // A tail shows shop B's attempts and none of shop A's.
    let mut tail = b
        .deliveries
        .tail_attempts(pb::TailAttemptsRequest { filter: None })
        .await?
        .into_inner();
    let again_a = agent
        .emit(event(
            "shop-a",
            "order.created",
            &serde_json::json!({"n": 2}),
        ))
        .await?;
    control_plane
        .wait_logged(
            pb::AttemptFilter {
                event_id: again_a.event_id.clone(),
                ..Default::default()
            },
            Duration::from_secs(10),
        )
        .await?;
    control_plane
        .wait_applied(sub_b.revision, Duration::from_secs(10))
        .await?;
    let emitted_b = agent
        .emit(event(
            "shop-b",
            "order.created",
            &serde_json::json!({"n": 3}),
        ))
        .await?;
    let seen = tokio::time::timeout(Duration::from_secs(10), tail.message())
        .await??
        .expect("an attempt");
    assert_eq!(
        (seen.tenant.as_str(), seen.event_id.as_str()),
        ("shop-b", emitted_b.event_id.as_str()),
        "the tail's first attempt is shop B's"
    );
    covered.insert("Deliveries/TailAttempts".into());

    // What every tenant shares is read by all and changed or listed by operators of all.
    refused(
        &mut covered,
        "EventTypes/CreateEventType",
        b.event_types
            .create_event_type(pb::CreateEventTypeRequest {
                event_type: Some(pb::EventType {
                    name: "order.stolen".into(),
                    ..Default::default()
                }),
            })
            .await,
        Code::PermissionDenied,
    );
    // The catalogue is shared: a tenant's token changes none of it.
    refused(
        &mut covered,
        "EventTypes/UpdateEventType",
        b.event_types
            .update_event_type(pb::UpdateEventTypeRequest {
                event_type: Some(pb::EventType {
                    name: "order.created".into(),
                    ..Default::default()
                }),
            })
            .await,
        Code::PermissionDenied,
    );
    refused(
        &mut covered,
        "EventTypes/DeprecateEventType",
        b.event_types
            .deprecate_event_type(pb::DeprecateEventTypeRequest {
                name: "order.created".into(),
                deprecated: true,
            })
            .await,
        Code::PermissionDenied,
    );
    refused(
        &mut covered,
        "EventTypes/DeleteEventType",
        b.event_types
            .delete_event_type(pb::DeleteEventTypeRequest {
                name: "order.created".into(),
            })
            .await,
        Code::PermissionDenied,
    );
    b.event_types
        .list_event_types(pb::ListEventTypesRequest::default())
        .await?;
    covered.insert("EventTypes/ListEventTypes".into());
    b.event_types
        .get_event_type(pb::GetEventTypeRequest {
            name: "herald.subscription.disabled".into(),
        })
        .await?;
    covered.insert("EventTypes/GetEventType".into());
    refused(
        &mut covered,
        "Agents/ListAgents",
        b.agents.list_agents(pb::ListAgentsRequest {}).await,
        Code::PermissionDenied,
    );

    // The audit log shows shop B's changes only, whatever it asks for.
    for tenant in ["", "shop-a"] {
        let entries = b
            .audit
            .list_audit_entries(pb::ListAuditEntriesRequest {
                filter: Some(pb::AuditFilter {
                    tenant: tenant.into(),
                    ..Default::default()
                }),
                page_size: 100,
                page_token: String::new(),
            })
            .await?
            .into_inner()
            .entries;
        assert!(
            entries.iter().all(|e| e.tenant == "shop-b"),
            "{tenant:?}: {entries:?}"
        );
        assert_eq!(entries.is_empty(), tenant == "shop-a", "{entries:?}");
    }
    covered.insert("Audit/ListAuditEntries".into());

    assert_eq!(
        covered,
        admin_methods(),
        "every method of the operator API is tried"
    );

    // Shop A's subscription is as its operator left it.
    let after = control_plane
        .subscriptions()
        .await?
        .get_subscription(get(&id))
        .await?
        .into_inner();
    assert_eq!(after.revision, sub_a.revision);
    assert!(after.enabled && after.url == sub_a.url);
    let log_a = control_plane
        .attempts(pb::AttemptFilter {
            tenant: "shop-a".into(),
            ..Default::default()
        })
        .await?;
    assert_eq!(log_a.len(), 2, "shop A's two attempts, none replayed");

    // Shop B's reader sees shop B's subscription without its secrets, and may not see them.
    let mut reader = Clients::new(url, READ_B).await?;
    let read = reader
        .subscriptions
        .get_subscription(get(&sub_b.id))
        .await?
        .into_inner();
    assert!(read.secrets.iter().all(|s| s.secret.is_empty()));
    let secrets = reader
        .subscriptions
        .get_subscription(pb::GetSubscriptionRequest {
            id: sub_b.id.clone(),
            show_secrets: true,
        })
        .await
        .unwrap_err();
    assert_eq!(secrets.code(), Code::PermissionDenied);
    let hidden = reader
        .subscriptions
        .get_subscription(get(&id))
        .await
        .unwrap_err();
    assert_eq!(hidden.code(), Code::NotFound);
    Ok(())
}

/// An agent stream's client calling with `token`.
async fn agent_control(
    url: &str,
    token: &str,
) -> anyhow::Result<AgentControlClient<AuthedChannel>> {
    Ok(AgentControlClient::new(
        Bearer::new(Some(token))?.wrap(connect(url).await?),
    ))
}

/// Opens a config stream saying `hello`; the first update, or the refusal.
async fn first_update(
    client: &mut AgentControlClient<AuthedChannel>,
    hello: pb::AgentHello,
) -> Result<pb::ConfigUpdate, Status> {
    let requests = futures_util::StreamExt::chain(
        futures_util::stream::iter([pb::ConfigRequest {
            kind: Some(Kind::Hello(hello)),
        }]),
        futures_util::stream::pending(),
    );
    let mut updates = client.stream_config(requests).await?.into_inner();
    let update = tokio::time::timeout(Duration::from_secs(10), updates.message())
        .await
        .map_err(|_| Status::deadline_exceeded("no snapshot"))??;
    update.ok_or_else(|| Status::unavailable("the stream ended"))
}

#[tokio::test]
async fn an_agent_id_is_held_by_its_identity_on_every_replica() -> anyhow::Result<()> {
    let tokens = format!(
        "admin {ADMIN}\n\
         agent {AGENT} name=fleet-agents\n\
         agent {AGENT_A} name=shop-a-agents tenants=shop-a\n"
    );
    let etcd = Etcd::start().await?;
    let store = || ConfigStore::Etcd(vec![etcd.endpoint()]);
    let first = ControlPlane::start_with_tokens(store(), &tokens, ADMIN).await?;
    let second = ControlPlane::start_with_tokens(store(), &tokens, ADMIN).await?;
    let hello = pb::AgentHello {
        agent_id: "agt_node_1".into(),
        region: "eu".into(),
        ..Default::default()
    };
    // The fleet's agent says hello on the first replica; the record reaches the store.
    let mut fleet = agent_control(first.url(), AGENT).await?;
    let requests = futures_util::StreamExt::chain(
        futures_util::stream::iter([pb::ConfigRequest {
            kind: Some(Kind::Hello(hello.clone())),
        }]),
        futures_util::stream::pending(),
    );
    let mut held = fleet.stream_config(requests).await?.into_inner();
    held.message().await?.expect("a snapshot");
    let mut agents = AgentsClient::new(second.channel().await?);
    let listed = eventually(Duration::from_secs(10), "the agent listed", || {
        let mut agents = agents.clone();
        async move {
            let list = agents
                .list_agents(pb::ListAgentsRequest::default())
                .await?
                .into_inner();
            Ok(list.agents.into_iter().find(|a| a.id == "agt_node_1"))
        }
    })
    .await?;
    assert_eq!(listed.identity, "fleet-agents");

    // Shop A's token takes that id on the other replica: refused, on either replica.
    for replica in [&second, &first] {
        let mut squatter = agent_control(replica.url(), AGENT_A).await?;
        let refused = first_update(&mut squatter, hello.clone())
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
        assert!(refused.message().contains("agt_node_1"), "{refused:?}");
    }
    // Nor may it report attempts under that id (the log would name the fleet's agent as
    // their sender), on either replica.
    let batch = pb::ReportBatch {
        batch_id: 1,
        agent_id: "agt_node_1".into(),
        attempts: vec![],
    };
    for replica in [&second, &first] {
        let mut squatter = agent_control(replica.url(), AGENT_A).await?;
        let refused = report(&mut squatter, batch.clone()).await.unwrap_err();
        let status = refused.downcast_ref::<Status>().expect("a gRPC status");
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
        assert!(status.message().contains("agt_node_1"), "{status:?}");
    }
    // The agent itself may reconnect and report anywhere.
    let mut again = agent_control(second.url(), AGENT).await?;
    first_update(&mut again, hello).await?;
    report(&mut agent_control(second.url(), AGENT).await?, batch).await?;
    let still = agents
        .list_agents(pb::ListAgentsRequest::default())
        .await?
        .into_inner();
    assert!(
        still
            .agents
            .iter()
            .filter(|a| a.id == "agt_node_1")
            .all(|a| a.identity == "fleet-agents"),
        "{still:?}"
    );
    drop(held);
    Ok(())
}

#[tokio::test]
async fn an_agent_token_is_trusted_only_for_its_tenants_and_regions() -> anyhow::Result<()> {
    let tokens = format!(
        "admin {ADMIN}\n\
         agent {AGENT_A} name=shop-a-agents tenants=shop-a\n\
         agent {AGENT_B_EU} name=shop-b-eu tenants=shop-b regions=eu\n"
    );
    let metrics = HeldPort::new()?;
    let control_plane = ControlPlane::start_with_tokens_configured(
        ConfigStore::Embedded,
        &tokens,
        ADMIN,
        |config| config.metrics_listen = Some(metrics.addr()),
    )
    .await?;
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca).await?;
    let sub_a = control_plane
        .create(subscription("shop-a", &receiver.url("/a"), &["order.*"]))
        .await?;
    let sub_b = control_plane
        .create(subscription("shop-b", &receiver.url("/b"), &["order.*"]))
        .await?;
    let url = control_plane.url();

    // Shop B's agents get shop B's config only, and only in their region.
    let mut b = agent_control(url, AGENT_B_EU).await?;
    let hello = |region: &str, tenants: &[&str]| pb::AgentHello {
        agent_id: "agt_b_eu".into(),
        region: region.into(),
        tenants: tenants.iter().map(|t| t.to_string()).collect(),
        ..Default::default()
    };
    let snapshot = first_update(&mut b, hello("eu", &[])).await?;
    let ids: Vec<&str> = snapshot.upserts.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        ids,
        [sub_b.id.as_str()],
        "a hello for all tenants gets its own"
    );
    let refused = first_update(&mut b, hello("eu", &["shop-a"]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    let refused = first_update(&mut b, hello("us", &[])).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    // A forged batch: a 410 for shop A's endpoint, an unknown subscription, and one true
    // report of its own. Only its own is stored; shop A's endpoint stays enabled.
    let now = herald_proto::convert::timestamp(std::time::SystemTime::now());
    let attempt = |event_id: &str, subscription_id: &str, tenant: &str| pb::Attempt {
        event_id: event_id.into(),
        subscription_id: subscription_id.into(),
        tenant: tenant.into(),
        event_type: "order.created".into(),
        attempt: 1,
        agent_id: "agt_b_eu".into(),
        started_at: Some(now),
        status_code: 410,
        error_kind: "http_status".into(),
        outcome: pb::Outcome::Failed as i32,
        ..Default::default()
    };
    let batch = pb::ReportBatch {
        batch_id: 7,
        agent_id: "agt_b_eu".into(),
        attempts: vec![
            attempt("evt_forged", &sub_a.id, "shop-a"),
            attempt("evt_forged", &sub_a.id, "shop-b"),
            attempt("evt_forged", "sub_01NOSUCHSUBSCRIPTION00000", "shop-b"),
            // Its own, though it names another agent: stored as the batch's agent's.
            pb::Attempt {
                status_code: 200,
                error_kind: String::new(),
                outcome: pb::Outcome::Delivered as i32,
                agent_id: "agt_someone_else".into(),
                ..attempt("evt_true", &sub_b.id, "shop-b")
            },
        ],
    };
    let ack = herald_tests::report(&mut b, batch).await?;
    assert_eq!(
        ack.batch_id, 7,
        "the batch is acknowledged: the agent does not resend it"
    );
    let stored = control_plane.attempts(pb::AttemptFilter::default()).await?;
    let stored: Vec<(&str, &str, &str)> = stored
        .iter()
        .map(|a| {
            (
                a.event_id.as_str(),
                a.subscription_id.as_str(),
                a.agent_id.as_str(),
            )
        })
        .collect();
    assert_eq!(stored, [("evt_true", sub_b.id.as_str(), "agt_b_eu")]);
    let still = control_plane
        .subscriptions()
        .await?
        .get_subscription(pb::GetSubscriptionRequest {
            id: sub_a.id.clone(),
            show_secrets: false,
        })
        .await?
        .into_inner();
    assert!(still.enabled, "a forged 410 disables nothing");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let text = reqwest::get(format!("http://{}/metrics", metrics.addr()))
        .await?
        .text()
        .await?;
    for line in [
        "herald_reports_refused_total{reason=\"foreign_subscription\"} 2",
        "herald_reports_refused_total{reason=\"unknown_subscription\"} 1",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }

    // A subscription moved out of the token's regions lately: what its agents made, or
    // skipped, while it was theirs is still stored; one that never was theirs is not.
    let mut moving = subscription("shop-b", &receiver.url("/moving"), &["order.*"]);
    moving.regions = vec!["eu".into()];
    let moving = control_plane.create(moving).await?;
    control_plane
        .subscriptions()
        .await?
        .update_subscription(pb::UpdateSubscriptionRequest {
            subscription: Some(pb::Subscription {
                regions: vec!["us".into()],
                ..moving.clone()
            }),
            expected_revision: moving.revision,
            allow_unregistered: false,
        })
        .await?;
    // The replica's hub has the move once an eu agent's snapshot no longer holds it.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let snapshot = first_update(&mut b, hello("eu", &[])).await?;
        if !snapshot.upserts.iter().any(|s| s.id == moving.id) {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the move never reached the hub"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut elsewhere = subscription("shop-b", &receiver.url("/us"), &["order.*"]);
    elsewhere.regions = vec!["us".into()];
    let elsewhere = control_plane.create(elsewhere).await?;
    let skipped = pb::Attempt {
        status_code: 0,
        error_kind: String::new(),
        outcome: pb::Outcome::Skipped as i32,
        ..attempt("evt_moving", &moving.id, "shop-b")
    };
    let batch = pb::ReportBatch {
        batch_id: 8,
        agent_id: "agt_b_eu".into(),
        attempts: vec![skipped, attempt("evt_elsewhere", &elsewhere.id, "shop-b")],
    };
    herald_tests::report(&mut b, batch).await?;
    let stored = control_plane.attempts(pb::AttemptFilter::default()).await?;
    assert!(
        stored.iter().any(|a| a.event_id == "evt_moving"),
        "the skip of a moved subscription is stored: {stored:?}"
    );
    assert!(
        !stored.iter().any(|a| a.event_id == "evt_elsewhere"),
        "never in the token's regions: refused"
    );

    // A real agent with shop A's token delivers shop A's events, and its reports are stored.
    let agent = Agent::start(
        url,
        AgentOptions {
            trusted_ca: Some(ca.ca_pem()),
            control_plane_token: Some(AGENT_A.into()),
            ..Default::default()
        },
    )
    .await?;
    herald_tests::eventually(
        Duration::from_secs(10),
        "shop A's agent to apply its config",
        || async {
            let emitted = agent
                .emit(event(
                    "shop-a",
                    "order.created",
                    &serde_json::json!({"n": 1}),
                ))
                .await?;
            Ok((emitted.matched == 1).then_some(emitted))
        },
    )
    .await?;
    // It named no tenants, so the control plane narrowed it to its token's: an event of shop
    // B, whose endpoints never reach it, is refused rather than kept undelivered.
    let not_served = agent
        .events()
        .await?
        .emit(pb::EmitRequest {
            event: Some(event(
                "shop-b",
                "order.created",
                &serde_json::json!({"n": 2}),
            )),
        })
        .await
        .expect_err("shop B's event");
    assert_eq!(
        not_served.code(),
        Code::FailedPrecondition,
        "{not_served:?}"
    );
    assert!(
        not_served.message().contains("tenants shop-a only"),
        "{not_served:?}"
    );
    control_plane
        .wait_logged(
            pb::AttemptFilter {
                subscription_id: sub_a.id.clone(),
                ..Default::default()
            },
            Duration::from_secs(10),
        )
        .await?;
    Ok(())
}

#[tokio::test]
async fn applications_may_not_emit_into_the_system_tenant_nor_herald_s_types() -> anyhow::Result<()>
{
    let control_plane = ControlPlane::start(ConfigStore::Embedded).await?;
    let agent = Agent::start(control_plane.url(), AgentOptions::default()).await?;
    control_plane
        .wait_applied(0, Duration::from_secs(10))
        .await?;
    let forged = || {
        event(
            "herald",
            "herald.subscription.disabled",
            &serde_json::json!({"subscription_id": "sub_01JEXAMPLE"}),
        )
    };
    let mut events = agent.events().await?;
    let refused = events
        .emit(pb::EmitRequest {
            event: Some(forged()),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("reserved"), "{refused:?}");
    let refused = events
        .emit_batch(pb::EmitBatchRequest {
            events: vec![
                event("shop-1", "order.created", &serde_json::json!({})),
                forged(),
            ],
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().starts_with("events[1]"), "{refused:?}");
    // Nor may an application pass its own tenant's events off as Herald's.
    let refused = events
        .emit(pb::EmitRequest {
            event: Some(event(
                "shop-1",
                "herald.subscription.disabled",
                &serde_json::json!({"subscription_id": "sub_01JEXAMPLE"}),
            )),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    // Other tenants emit as before.
    agent
        .emit(event("shop-1", "order.created", &serde_json::json!({})))
        .await?;
    Ok(())
}

#[tokio::test]
async fn an_emit_token_emits_only_for_its_own_tenants() -> anyhow::Result<()> {
    const SHOP_A_APP: &str = "emit-shop-a-6f2d9b4e1a7c";
    const SHOP_B_APP: &str = "emit-shop-b-1c8e5a3f9d2b";
    // One agent on a shared node serves the applications of two shops, each with its token.
    let dir = tempfile::tempdir()?;
    let tokens = dir.path().join("emit-tokens");
    std::fs::write(
        &tokens,
        format!(
            "{SHOP_A_APP} name=shop-a-app tenants=shop-a\n{SHOP_B_APP} name=shop-b-app tenants=shop-b\n"
        ),
    )?;
    let control_plane = ControlPlane::start(ConfigStore::Embedded).await?;
    let AgentAndReceiver {
        agent, receiver, ..
    } = AgentAndReceiver::start(
        control_plane.url(),
        AgentOptions {
            emit_tokens_file: Some(tokens),
            ..Default::default()
        },
    )
    .await?;
    let mut revision = 0;
    for shop in ["shop-a", "shop-b"] {
        let created = control_plane
            .create(subscription(
                shop,
                &receiver.url(&format!("/{shop}")),
                &["order.*"],
            ))
            .await?;
        revision = created.revision;
    }
    control_plane
        .wait_applied(revision, Duration::from_secs(10))
        .await?;
    let order = |shop: &str, id: &str| {
        let mut order = event(shop, "order.created", &serde_json::json!({ "shop": shop }));
        order.id = id.to_owned();
        order
    };
    let events_of = |token: &'static str| {
        let url = agent.url().to_owned();
        async move {
            anyhow::Ok(pb::events_client::EventsClient::new(
                Bearer::new(Some(token))?.wrap(connect(&url).await?),
            ))
        }
    };
    let mut shop_a_app = events_of(SHOP_A_APP).await?;

    // Shop A's application cannot emit as shop B, alone or inside a batch: nothing is kept.
    let refused = shop_a_app
        .emit(pb::EmitRequest {
            event: Some(order("shop-b", "forged-1")),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("\"shop-a-app\"") && refused.message().contains("\"shop-b\""),
        "{refused:?}"
    );
    let refused = shop_a_app
        .emit_batch(pb::EmitBatchRequest {
            events: vec![order("shop-a", "order-1"), order("shop-b", "forged-2")],
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().starts_with("events[1]"), "{refused:?}");

    // Each emits its own shop's orders, which arrive at that shop's URL only.
    let emitted = shop_a_app
        .emit(pb::EmitRequest {
            event: Some(order("shop-a", "order-1")),
        })
        .await?
        .into_inner();
    assert!(!emitted.duplicate, "the refused batch kept nothing");
    assert_eq!(emitted.matched, 1);
    events_of(SHOP_B_APP)
        .await?
        .emit(pb::EmitRequest {
            event: Some(order("shop-b", "order-1")),
        })
        .await?;
    let arrived = receiver
        .wait_for_requests(2, Duration::from_secs(10))
        .await?;
    let mut paths: Vec<(String, String)> = arrived
        .iter()
        .map(|r| {
            let body = String::from_utf8_lossy(&r.body);
            let shop = ["shop-a", "shop-b"]
                .into_iter()
                .find(|shop| body.contains(&format!("\"shop\":\"{shop}\"")))
                .unwrap_or("neither");
            (r.path.clone(), shop.to_owned())
        })
        .collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            ("/shop-a".to_owned(), "shop-a".to_owned()),
            ("/shop-b".to_owned(), "shop-b".to_owned())
        ]
    );
    assert_eq!(receiver.request_count(), 2, "no forged event was delivered");
    Ok(())
}

#[tokio::test]
async fn page_tokens_are_sealed_so_they_neither_tell_nor_take_a_position() -> anyhow::Result<()> {
    let control_plane =
        ControlPlane::start_with_tokens(ConfigStore::Embedded, &tokens(), ADMIN).await?;
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
    // Shop B has two endpoints (two audit entries) and two attempts in the log.
    let mut b = Clients::new(control_plane.url(), ADMIN_B).await?;
    let mut last = 0;
    for path in ["/b1", "/b2"] {
        last = b
            .subscriptions
            .create_subscription(pb::CreateSubscriptionRequest {
                subscription: Some(subscription("shop-b", &receiver.url(path), &["order.*"])),
                allow_unregistered: false,
                ..Default::default()
            })
            .await?
            .into_inner()
            .revision;
    }
    control_plane
        .wait_applied(last, Duration::from_secs(10))
        .await?;
    let emitted = agent
        .emit(event("shop-b", "order.created", &serde_json::json!({})))
        .await?;
    let by_event = pb::AttemptFilter {
        event_id: emitted.event_id.clone(),
        ..Default::default()
    };
    eventually(Duration::from_secs(10), "both attempts logged", || async {
        Ok((control_plane.attempts(by_event.clone()).await?.len() == 2).then_some(()))
    })
    .await?;

    // A page of one attempt hands out a token that leads to the other…
    let list = |page_token: String| pb::ListAttemptsRequest {
        filter: Some(by_event.clone()),
        page_size: 1,
        page_token,
    };
    let first = b
        .deliveries
        .list_attempts(list(String::new()))
        .await?
        .into_inner();
    assert_eq!(first.attempts.len(), 1);
    let second = b
        .deliveries
        .list_attempts(list(first.next_page_token.clone()))
        .await?
        .into_inner();
    assert_eq!(second.attempts.len(), 1);
    assert_ne!(second.attempts[0], first.attempts[0]);
    // It leads on for a caller who sees the same tenants, and for no other: shop B's token
    // would tell shop A (or anyone seeing more) where B's page ended.
    let mut read_b = Clients::new(control_plane.url(), READ_B).await?;
    let again = read_b
        .deliveries
        .list_attempts(list(first.next_page_token.clone()))
        .await?
        .into_inner();
    assert_eq!(again.attempts, second.attempts);
    for other in [READ_A, ADMIN] {
        let mut other = Clients::new(control_plane.url(), other).await?;
        let refused = other
            .deliveries
            .list_attempts(list(first.next_page_token.clone()))
            .await
            .expect_err("another caller's token");
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(
            refused.message().contains("not from this listing"),
            "{refused:?}"
        );
    }
    // …but made-up positions (the store's sequence numbers and times) are refused, as is
    // another listing's token.
    let audit = b
        .audit
        .list_audit_entries(pb::ListAuditEntriesRequest {
            filter: None,
            page_size: 1,
            page_token: String::new(),
        })
        .await?
        .into_inner();
    assert_eq!(audit.entries.len(), 1);
    for forged in ["1", "2", "3", "1764892800000000:2", &audit.next_page_token] {
        let refused = b
            .deliveries
            .list_attempts(list(forged.to_owned()))
            .await
            .expect_err(forged);
        assert_eq!(
            refused.code(),
            Code::InvalidArgument,
            "{forged}: {refused:?}"
        );
        assert!(refused.message().contains("page_token"), "{refused:?}");
    }
    let refused = b
        .audit
        .list_audit_entries(pb::ListAuditEntriesRequest {
            filter: None,
            page_size: 1,
            page_token: "1".into(),
        })
        .await
        .expect_err("a made-up audit position");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    let refused = b
        .deliveries
        .get_sent_requests(pb::GetSentRequestsRequest {
            event_id: emitted.event_id.clone(),
            page_token: first.attempts[0].subscription_id.clone(),
            ..Default::default()
        })
        .await
        .expect_err("a subscription id as the position");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    Ok(())
}
