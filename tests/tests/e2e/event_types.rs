//! The event-type registry: a catalogue with descriptions and examples; while it holds any
//! type, subscriptions may only select registered types (unless the registry is off).

use herald_control_plane::event_types::RegistryMode;
use herald_proto::v1 as pb;
use herald_proto::v1::event_types_client::EventTypesClient;
use herald_tests::{ConfigStore, ControlPlane, Etcd, subscription};
use tonic::Code;

fn event_type(name: &str, example: &str) -> pb::CreateEventTypeRequest {
    pb::CreateEventTypeRequest {
        event_type: Some(pb::EventType {
            name: name.into(),
            description: format!("{name}, for the catalogue"),
            example: example.as_bytes().to_vec(),
            created_at: None,
        }),
    }
}

#[tokio::test]
async fn subscriptions_select_registered_types_once_the_catalogue_has_any() -> anyhow::Result<()> {
    let etcd = Etcd::start().await?;
    let store = ConfigStore::Etcd(vec![etcd.endpoint()]);
    let control_plane = ControlPlane::start(store.clone()).await?;
    let url = "https://127.0.0.1:9/hook";

    // An empty catalogue checks nothing: a new installation works at once.
    control_plane
        .create(subscription("shop-1", url, &["invoice.created"]))
        .await?;

    let mut types = EventTypesClient::new(control_plane.channel().await?);
    for name in ["order.created", "order.updated", "payment.confirmed"] {
        types
            .create_event_type(event_type(name, r#"{"order_id": 42}"#))
            .await?;
    }
    let listed = types
        .list_event_types(pb::ListEventTypesRequest {})
        .await?
        .into_inner()
        .event_types;
    let names: Vec<&str> = listed.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        ["order.created", "order.updated", "payment.confirmed"]
    );
    let got = types
        .get_event_type(pb::GetEventTypeRequest {
            name: "order.created".into(),
        })
        .await?
        .into_inner();
    assert_eq!(got.example, br#"{"order_id": 42}"#);
    assert!(got.created_at.is_some());

    let code = |r: Result<tonic::Response<pb::EventType>, tonic::Status>| r.unwrap_err().code();
    assert_eq!(
        code(
            types
                .create_event_type(event_type("order.created", "{}"))
                .await
        ),
        Code::AlreadyExists
    );
    assert_eq!(
        code(
            types
                .create_event_type(event_type("order.deleted", "{not json"))
                .await
        ),
        Code::InvalidArgument
    );
    assert_eq!(
        code(types.create_event_type(event_type("Order", "{}")).await),
        Code::InvalidArgument
    );
    assert_eq!(
        code(
            types
                .get_event_type(pb::GetEventTypeRequest {
                    name: "order.deleted".into()
                })
                .await
        ),
        Code::NotFound
    );

    control_plane
        .create(subscription(
            "shop-1",
            url,
            &["order.*", "payment.confirmed"],
        ))
        .await?;
    let mut subs = control_plane.subscriptions().await?;
    let typo = subs
        .create_subscription(pb::CreateSubscriptionRequest {
            subscription: Some(subscription("shop-1", url, &["ordr.created"])),
        })
        .await
        .unwrap_err();
    assert_eq!(typo.code(), Code::InvalidArgument);
    assert!(
        typo.message().contains("ordr.created"),
        "{}",
        typo.message()
    );

    // With the registry off, the same request is taken.
    let open = ControlPlane::start_configured(store, |config| {
        config.event_type_registry = RegistryMode::Off
    })
    .await?;
    open.create(subscription("shop-1", url, &["ordr.created"]))
        .await?;
    Ok(())
}
