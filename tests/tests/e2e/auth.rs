//! API tokens: who may call what on the control plane, and an agent that must present its own
//! token to receive config (which carries signing secrets).

use std::time::Duration;

use herald_proto::bearer::Bearer;
use herald_proto::v1 as pb;
use herald_proto::v1::agent_control_client::AgentControlClient;
use herald_proto::v1::subscriptions_client::SubscriptionsClient;
use herald_tests::herald::connect;
use herald_tests::{
    Agent, AgentAndReceiver, AgentOptions, ConfigStore, ControlPlane, Etcd, event, subscription,
};
use tonic::Code;

const ADMIN: &str = "admin-4f1c0a9e7b2d";
const READER: &str = "reader-8e3b6d2a1c9f";
const AGENT: &str = "agent-2a7c9e4b1d6f";

fn tokens() -> String {
    format!("admin {ADMIN}\nread {READER}\nagent {AGENT}\n")
}

async fn subscriptions(
    url: &str,
    token: Option<&str>,
) -> anyhow::Result<SubscriptionsClient<herald_proto::bearer::AuthedChannel>> {
    Ok(SubscriptionsClient::new(
        Bearer::new(token)?.wrap(connect(url).await?),
    ))
}

fn list() -> pb::ListSubscriptionsRequest {
    pb::ListSubscriptionsRequest {
        tenant: String::new(),
        page_size: 10,
        page_token: String::new(),
    }
}

#[tokio::test]
async fn calls_without_a_valid_token_or_the_right_role_are_refused() -> anyhow::Result<()> {
    let etcd = Etcd::start().await?;
    let control_plane =
        ControlPlane::start_with_tokens(ConfigStore::Etcd(vec![etcd.endpoint()]), &tokens(), ADMIN)
            .await?;
    let url = control_plane.url();

    let missing = subscriptions(url, None)
        .await?
        .list_subscriptions(list())
        .await;
    assert_eq!(missing.unwrap_err().code(), Code::Unauthenticated);
    let wrong = subscriptions(url, Some("not-a-token-at-all"))
        .await?
        .list_subscriptions(list())
        .await;
    assert_eq!(wrong.unwrap_err().code(), Code::Unauthenticated);

    // Read-only: lists, but may not change anything or see secrets.
    let mut reader = subscriptions(url, Some(READER)).await?;
    reader.list_subscriptions(list()).await?;
    let create = pb::CreateSubscriptionRequest {
        subscription: Some(subscription(
            "shop-1",
            "https://127.0.0.1:9/hook",
            &["order.*"],
        )),
        allow_unregistered: false,
        ..Default::default()
    };
    let refused = reader
        .create_subscription(create.clone())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(
        refused.message().contains("needs admin"),
        "{}",
        refused.message()
    );

    let created = subscriptions(url, Some(ADMIN))
        .await?
        .create_subscription(create)
        .await?
        .into_inner();
    let get = |show_secrets| pb::GetSubscriptionRequest {
        id: created.id.clone(),
        show_secrets,
    };
    let read = reader.get_subscription(get(false)).await?.into_inner();
    assert!(read.secrets.iter().all(|s| s.secret.is_empty()));
    let secrets = reader.get_subscription(get(true)).await.unwrap_err();
    assert_eq!(secrets.code(), Code::PermissionDenied);

    // The agent streams take only the agent role: an operator token gets nothing.
    let stream = AgentControlClient::new(Bearer::new(Some(ADMIN))?.wrap(connect(url).await?))
        .stream_config(futures_util::stream::pending::<pb::ConfigRequest>())
        .await;
    assert_eq!(stream.unwrap_err().code(), Code::PermissionDenied);
    let stream = AgentControlClient::new(connect(url).await?)
        .stream_config(futures_util::stream::pending::<pb::ConfigRequest>())
        .await;
    assert_eq!(stream.unwrap_err().code(), Code::Unauthenticated);

    // Health checks stay open for probes.
    let mut health = tonic_health::pb::health_client::HealthClient::new(connect(url).await?);
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await?;
    Ok(())
}

#[tokio::test]
async fn an_agent_with_its_token_gets_config_and_delivers() -> anyhow::Result<()> {
    let etcd = Etcd::start().await?;
    let control_plane =
        ControlPlane::start_with_tokens(ConfigStore::Etcd(vec![etcd.endpoint()]), &tokens(), ADMIN)
            .await?;
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
    let created = control_plane
        .create(subscription("shop-1", &receiver.url("/hook"), &["order.*"]))
        .await?;
    control_plane
        .wait_applied(created.revision, Duration::from_secs(10))
        .await?;
    let emitted = agent
        .emit(event(
            "shop-1",
            "order.created",
            &serde_json::json!({"id": 7}),
        ))
        .await?;
    assert_eq!(emitted.matched, 1);
    receiver
        .wait_for_requests(1, Duration::from_secs(10))
        .await?;
    Ok(())
}

#[tokio::test]
async fn an_agent_with_an_emit_token_refuses_callers_without_it() -> anyhow::Result<()> {
    const EMIT: &str = "emit-5c2e8a1f7b3d9e4a";
    let control_plane = ControlPlane::start(ConfigStore::Embedded).await?;
    let agent = Agent::start(
        control_plane.url(),
        AgentOptions {
            emit_token: Some(EMIT.into()),
            ..Default::default()
        },
    )
    .await?;
    // Emit answers once the agent has config.
    control_plane
        .wait_applied(0, Duration::from_secs(10))
        .await?;
    let request = || pb::EmitRequest {
        event: Some(event("shop-1", "order.created", &serde_json::json!({}))),
    };
    let url = agent.url().to_owned();
    let events = |token: Option<&str>| {
        let (token, url) = (token.map(str::to_owned), url.clone());
        async move {
            anyhow::Ok(pb::events_client::EventsClient::new(
                Bearer::new(token.as_deref())?.wrap(connect(&url).await?),
            ))
        }
    };
    let missing = events(None).await?.emit(request()).await.unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated);
    let wrong = events(Some("emit-0000000000000000"))
        .await?
        .emit(request())
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::Unauthenticated);
    events(Some(EMIT)).await?.emit(request()).await?;
    Ok(())
}
