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
            built_in: false,
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
    let early = control_plane
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
    let names: Vec<(&str, bool)> = listed
        .iter()
        .map(|t| (t.name.as_str(), t.built_in))
        .collect();
    assert_eq!(
        names,
        [
            ("herald.delivery.exhausted", true),
            ("herald.subscription.certificate_expiring", true),
            ("herald.subscription.disabled", true),
            ("herald.subscription.recovered", true),
            ("order.created", false),
            ("order.updated", false),
            ("payment.confirmed", false),
        ],
        "registered types, and the operator events built in"
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
            allow_unregistered: false,
        })
        .await
        .unwrap_err();
    assert_eq!(typo.code(), Code::InvalidArgument);
    assert!(
        typo.message().contains("ordr.created")
            && typo.message().contains("closest to it: order.created")
            && typo.message().contains("--allow-unregistered"),
        "the refusal names what it could mean and the way through: {}",
        typo.message()
    );
    // Asked for, an unregistered type is taken.
    subs.create_subscription(pb::CreateSubscriptionRequest {
        subscription: Some(subscription("shop-1", url, &["shipment.created"])),
        allow_unregistered: true,
    })
    .await?;

    // Operator events are built in: subscribing to them never needs the catalogue.
    control_plane
        .create(subscription("herald", url, &["herald.*"]))
        .await?;
    control_plane
        .create(subscription(
            "herald",
            url,
            &["herald.subscription.disabled"],
        ))
        .await?;

    // A stored pattern that selects no registered type never blocks a change to something
    // else...
    let changed = subs
        .update_subscription(pb::UpdateSubscriptionRequest {
            subscription: Some(pb::Subscription {
                rate_limit: 5,
                ..early.clone()
            }),
            expected_revision: early.revision,
            allow_unregistered: false,
        })
        .await?
        .into_inner();
    assert_eq!(changed.rate_limit, 5);
    // ...nor one that adds a registered type beside it,
    let widened = subs
        .update_subscription(pb::UpdateSubscriptionRequest {
            subscription: Some(pb::Subscription {
                event_types: vec!["invoice.created".into(), "order.*".into()],
                ..changed.clone()
            }),
            expected_revision: changed.revision,
            allow_unregistered: false,
        })
        .await?
        .into_inner();
    // ...but a new pattern that selects nothing is refused, unless asked for.
    let new_pattern = pb::Subscription {
        event_types: vec!["order.*".into(), "refund.*".into()],
        ..widened.clone()
    };
    let refused = subs
        .update_subscription(pb::UpdateSubscriptionRequest {
            subscription: Some(new_pattern.clone()),
            expected_revision: widened.revision,
            allow_unregistered: false,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().contains("refund.*"),
        "{}",
        refused.message()
    );
    subs.update_subscription(pb::UpdateSubscriptionRequest {
        subscription: Some(new_pattern),
        expected_revision: widened.revision,
        allow_unregistered: true,
    })
    .await?;

    // With the registry advisory or off, the same request is taken.
    for mode in [RegistryMode::Advisory, RegistryMode::Off] {
        let open = ControlPlane::start_configured(store.clone(), |config| {
            config.event_type_registry = mode
        })
        .await?;
        open.create(subscription("shop-1", url, &["ordr.created"]))
            .await?;
    }
    Ok(())
}
