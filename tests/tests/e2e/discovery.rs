//! What a generic gRPC client finds on Herald's servers without the `.proto` files: the
//! standard health service and server reflection (v1 and v1alpha).

use futures_util::StreamExt as _;
use herald_tests::World;
use herald_tests::herald::connect;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::{v1, v1alpha};

async fn status(url: &str, service: &str) -> anyhow::Result<Result<ServingStatus, tonic::Code>> {
    let mut health = HealthClient::new(connect(url).await?);
    let answer = health
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await;
    Ok(match answer {
        Ok(response) => Ok(response.into_inner().status()),
        Err(status) => Err(status.code()),
    })
}

/// The services reflection (v1) lists on `url`.
async fn services_v1(url: &str) -> anyhow::Result<Vec<String>> {
    use v1::server_reflection_request::MessageRequest;
    use v1::server_reflection_response::MessageResponse;
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(connect(url).await?);
    let request = v1::ServerReflectionRequest {
        message_request: Some(MessageRequest::ListServices(String::new())),
        ..Default::default()
    };
    let mut answers = client
        .server_reflection_info(futures_util::stream::iter([request]))
        .await?
        .into_inner();
    let answer = answers.next().await.expect("an answer")?;
    match answer.message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            Ok(list.service.into_iter().map(|s| s.name).collect())
        }
        other => anyhow::bail!("unexpected answer {other:?}"),
    }
}

#[tokio::test]
async fn both_servers_answer_health_checks_and_reflection() -> anyhow::Result<()> {
    let world = World::start().await?;
    let (agent, control_plane) = (world.agent.url(), world.control_plane.url());

    assert_eq!(status(agent, "").await?, Ok(ServingStatus::Serving));
    assert_eq!(
        status(agent, "herald.v1.Events").await?,
        Ok(ServingStatus::Serving)
    );
    assert_eq!(status(control_plane, "").await?, Ok(ServingStatus::Serving));
    for service in [
        "herald.v1.Subscriptions",
        "herald.v1.Deliveries",
        "herald.v1.Agents",
        "herald.v1.AgentControl",
    ] {
        assert_eq!(
            status(control_plane, service).await?,
            Ok(ServingStatus::Serving),
            "{service}"
        );
    }
    assert_eq!(
        status(agent, "no.such.Service").await?,
        Err(tonic::Code::NotFound)
    );

    // Each lists what it serves, and only that: a client calls nothing that is not there.
    let mut listed = services_v1(agent).await?;
    listed.sort();
    assert_eq!(
        listed,
        [
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "herald.v1.Events",
        ]
    );
    let listed = services_v1(control_plane).await?;
    for service in [
        "herald.v1.Subscriptions",
        "herald.v1.Deliveries",
        "herald.v1.Agents",
        "herald.v1.EventTypes",
        "herald.v1.Audit",
        "herald.v1.Portal",
        "herald.v1.AgentControl",
        "grpc.health.v1.Health",
    ] {
        assert!(
            listed.iter().any(|s| s == service),
            "{service} in {listed:?}"
        );
    }
    assert!(
        !listed.iter().any(|s| s == "herald.v1.Events"),
        "the agent's service on the control plane: {listed:?}"
    );

    // The older protocol, which some clients still speak, and a symbol lookup that needs the
    // imported well-known types.
    use v1alpha::server_reflection_request::MessageRequest;
    use v1alpha::server_reflection_response::MessageResponse;
    let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(
        connect(control_plane).await?,
    );
    let request = v1alpha::ServerReflectionRequest {
        message_request: Some(MessageRequest::FileContainingSymbol(
            "herald.v1.Subscription".into(),
        )),
        ..Default::default()
    };
    let answer = client
        .server_reflection_info(futures_util::stream::iter([request]))
        .await?
        .into_inner()
        .next()
        .await
        .expect("an answer")?;
    match answer.message_response {
        Some(MessageResponse::FileDescriptorResponse(files)) => {
            assert!(!files.file_descriptor_proto.is_empty());
        }
        other => anyhow::bail!("unexpected answer {other:?}"),
    }
    Ok(())
}

/// A client that compresses its calls with gzip (as grpc-java's and grpc-go's can) is served
/// by both servers; a compressed message is held to the limit once decompressed.
#[tokio::test]
async fn calls_compressed_with_gzip_are_read() -> anyhow::Result<()> {
    use herald_proto::v1 as pb;
    use tonic::codec::CompressionEncoding::Gzip;
    let world = World::start().await?;
    let mut subscriptions = pb::subscriptions_client::SubscriptionsClient::new(
        connect(world.control_plane.url()).await?,
    )
    .send_compressed(Gzip);
    let created = subscriptions
        .create_subscription(pb::CreateSubscriptionRequest {
            subscription: Some(herald_tests::subscription(
                "shop-1",
                &world.receiver.url("/gzip"),
                &["order.*"],
            )),
            allow_unregistered: true,
            ..Default::default()
        })
        .await?
        .into_inner();
    world
        .control_plane
        .wait_applied(created.revision, std::time::Duration::from_secs(10))
        .await?;
    let mut events = pb::events_client::EventsClient::new(connect(world.agent.url()).await?)
        .send_compressed(Gzip);
    let emitted = events
        .emit(pb::EmitRequest {
            event: Some(herald_tests::event(
                "shop-1",
                "order.created",
                &serde_json::json!({"note": "x".repeat(10_000)}),
            )),
        })
        .await?
        .into_inner();
    assert_eq!(emitted.matched, 1);

    // 8 MB of zeros compress to a few KiB: still refused as what they decompress to.
    let bomb = events
        .emit(pb::EmitRequest {
            event: Some(pb::Event {
                payload: vec![b' '; 8 << 20],
                ..herald_tests::event("shop-1", "order.created", &serde_json::json!({}))
            }),
        })
        .await
        .expect_err("over the limit once decompressed");
    assert_eq!(bomb.code(), tonic::Code::ResourceExhausted, "{bomb:?}");
    Ok(())
}
