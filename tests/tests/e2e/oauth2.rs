//! OAuth2 client credentials to receivers: the agent fetches a bearer token from the
//! subscription's token endpoint, keeps it across deliveries until shortly before it expires,
//! fetches anew once when a receiver answers 401, and logs token-endpoint failures with error
//! kind `oauth2` (`policy`, for good, when the agent's target policy refuses the endpoint's
//! address). The client secret is sealed and read back only with secrets.

use std::time::Duration;

use herald_proto::v1 as pb;
use herald_tests::{AgentOptions, Response, TokenEndpoint, World, event, subscription};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(15);

fn with_oauth2(
    tenant: &str,
    url: &str,
    endpoint: &TokenEndpoint,
    secret: &str,
) -> pb::Subscription {
    let mut sub = subscription(tenant, url, &["order.*"]);
    sub.oauth2 = Some(pb::OAuth2 {
        token_url: endpoint.url().to_owned(),
        client_id: "herald-agent".into(),
        client_secret: secret.into(),
        scope: "webhooks:write".into(),
        audience: String::new(),
    });
    sub
}

fn bearer(request: &herald_tests::ReceivedRequest) -> Option<&str> {
    request.header("authorization")?.strip_prefix("Bearer ")
}

#[tokio::test]
async fn tokens_are_fetched_once_kept_and_fetched_anew_after_a_401() -> anyhow::Result<()> {
    let world = World::start().await?;
    let endpoint = TokenEndpoint::start(&world.ca, "herald-agent", "s3cret-value", 3600).await?;
    let sub = world
        .control_plane
        .create(with_oauth2(
            "shop-oauth",
            &world.receiver.url("/erp"),
            &endpoint,
            "s3cret-value",
        ))
        .await?;
    let read = world.control_plane.get(&sub.id).await?;
    assert!(
        read.oauth2
            .as_ref()
            .is_some_and(|o| o.client_secret.is_empty()),
        "the secret is not read back without show_secrets"
    );
    world.control_plane.wait_applied(sub.revision, WAIT).await?;

    // Five deliveries, one token.
    for i in 0..5 {
        world
            .agent
            .emit(event("shop-oauth", "order.created", &json!({"id": i})))
            .await?;
    }
    world.receiver.wait_for_requests(5, WAIT).await?;
    assert!(
        world
            .receiver
            .requests()
            .iter()
            .all(|r| bearer(r) == Some("tok-1"))
    );
    assert_eq!(endpoint.issued(), 1);
    assert!(endpoint.bodies()[0].contains("scope=webhooks%3Awrite"));

    // The receiver refuses the token: one new fetch, and the same attempt goes through.
    world.receiver.script([Response::new(401)]);
    let emitted = world
        .agent
        .emit(event("shop-oauth", "order.created", &json!({"id": 6})))
        .await?;
    world.receiver.wait_for_requests(7, WAIT).await?;
    let requests = world.receiver.requests();
    assert_eq!(bearer(&requests[5]), Some("tok-1"));
    assert_eq!(bearer(&requests[6]), Some("tok-2"));
    assert_eq!(endpoint.issued(), 2);
    let logged = world
        .control_plane
        .wait_logged(
            pb::AttemptFilter {
                event_id: emitted.event_id.clone(),
                ..Default::default()
            },
            WAIT,
        )
        .await?;
    assert_eq!(logged[0].outcome, pb::Outcome::Delivered as i32);
    assert_eq!(logged[0].attempt, 1);

    // Read with secrets, the client secret is there; an update that sends it blank keeps it.
    let mut admin = world.control_plane.subscriptions().await?;
    let shown = world.control_plane.get(&sub.id).await?;
    let updated = admin
        .update_subscription(pb::UpdateSubscriptionRequest {
            subscription: Some(pb::Subscription {
                description: "ERP with OAuth2".into(),
                ..shown
            }),
            expected_revision: sub.revision,
            allow_unregistered: false,
        })
        .await?
        .into_inner();
    let secret = admin
        .get_subscription(pb::GetSubscriptionRequest {
            id: sub.id.clone(),
            show_secrets: true,
        })
        .await?
        .into_inner()
        .oauth2
        .map(|o| o.client_secret);
    assert_eq!(secret.as_deref(), Some("s3cret-value"));
    let store = herald_control_plane::store::Store::etcd(&[world.etcd.endpoint()]).await?;
    let (kvs, _) = store.list("/herald/").await?;
    assert!(
        kvs.iter()
            .all(|kv| !String::from_utf8_lossy(&kv.value).contains("s3cret-value")),
        "the client secret is sealed at rest"
    );
    assert!(updated.revision > sub.revision);
    Ok(())
}

#[tokio::test]
async fn an_expired_token_is_replaced_and_token_endpoint_failures_are_logged() -> anyhow::Result<()>
{
    let world = World::start().await?;
    // Tokens good for a second.
    let short = TokenEndpoint::start(&world.ca, "herald-agent", "right", 1).await?;
    let expiring = world
        .control_plane
        .create(with_oauth2(
            "shop-short",
            &world.receiver.url("/short"),
            &short,
            "right",
        ))
        .await?;
    // Credentials the endpoint refuses.
    let refused = world
        .control_plane
        .create(with_oauth2(
            "shop-wrong",
            &world.receiver.url("/wrong"),
            &short,
            "wrong",
        ))
        .await?;
    world
        .control_plane
        .wait_applied(refused.revision.max(expiring.revision), WAIT)
        .await?;

    world
        .agent
        .emit(event("shop-short", "order.created", &json!({"id": 1})))
        .await?;
    world.receiver.wait_for_requests(1, WAIT).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    world
        .agent
        .emit(event("shop-short", "order.created", &json!({"id": 2})))
        .await?;
    world.receiver.wait_for_requests(2, WAIT).await?;
    let requests = world.receiver.requests();
    assert_eq!(bearer(&requests[0]), Some("tok-1"));
    assert_eq!(
        bearer(&requests[1]),
        Some("tok-2"),
        "fetched anew after expiry"
    );

    world
        .agent
        .emit(event("shop-wrong", "order.created", &json!({"id": 3})))
        .await?;
    let logged = world
        .control_plane
        .wait_logged(
            pb::AttemptFilter {
                subscription_id: refused.id.clone(),
                ..Default::default()
            },
            WAIT,
        )
        .await?;
    assert_eq!(logged[0].error_kind, "oauth2", "{:?}", logged[0]);
    assert!(
        logged[0].error.contains("401") && !logged[0].error.contains("wrong"),
        "{}",
        logged[0].error
    );
    assert_eq!(
        world.receiver.requests().len(),
        2,
        "nothing sent without a token"
    );
    Ok(())
}

/// A token endpoint at an address the agent's target policy refuses fails the attempt for
/// good with error kind `policy`, as a refused receiver does: no retry can differ, and the
/// platform's client secret is never sent there.
#[tokio::test]
async fn a_token_endpoint_the_policy_refuses_fails_for_good_as_policy() -> anyhow::Result<()> {
    let world = World::start().await?;
    let elsewhere =
        TokenEndpoint::start_on("127.0.0.2", &world.ca, "herald-agent", "s3cret-value", 3600)
            .await?;
    let agent = world
        .another_agent_applied(
            AgentOptions {
                allow_targets: Some(vec!["127.0.0.1/32".parse()?]),
                interest: herald_core::interest::Interest {
                    tenants: vec!["shop-policy".into()],
                    event_type_prefixes: vec![],
                },
                ..Default::default()
            },
            0,
        )
        .await?;
    let mut sub = with_oauth2(
        "shop-policy",
        &world.receiver.url("/erp"),
        &elsewhere,
        "s3cret-value",
    );
    sub.retry = Some(herald_proto::convert::retry_policy(
        &herald_core::retry::RetrySchedule::parse("50ms,50ms")?,
    ));
    let sub = world.control_plane.create(sub).await?;
    world.control_plane.wait_applied(sub.revision, WAIT).await?;
    agent
        .emit(event("shop-policy", "order.created", &json!({"id": 1})))
        .await?;
    let logged = world
        .control_plane
        .wait_logged(
            pb::AttemptFilter {
                subscription_id: sub.id.clone(),
                ..Default::default()
            },
            WAIT,
        )
        .await?;
    assert_eq!(logged[0].error_kind, "policy", "{:?}", logged[0]);
    assert_eq!(logged[0].outcome(), pb::Outcome::Failed, "{:?}", logged[0]);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let again = world
        .control_plane
        .attempts(pb::AttemptFilter {
            subscription_id: sub.id.clone(),
            ..Default::default()
        })
        .await?;
    assert_eq!(again.len(), 1, "not tried again: {again:?}");
    assert_eq!(elsewhere.issued(), 0);
    assert!(world.receiver.requests().is_empty());
    Ok(())
}
