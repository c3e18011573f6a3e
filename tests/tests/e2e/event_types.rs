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
            ..Default::default()
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

#[tokio::test]
async fn types_carry_schemas_their_examples_satisfy_and_are_updated_deprecated_and_deleted()
-> anyhow::Result<()> {
    let control_plane = ControlPlane::start(ConfigStore::Embedded).await?;
    let mut types = EventTypesClient::new(control_plane.channel().await?);
    let schema = r#"{"type": "object", "required": ["order_id"],
        "properties": {"order_id": {"type": "string"}, "total": {"type": "string", "pattern": "^[0-9]+\\.[0-9]{2}$"}}}"#;
    let with_schema = |example: &str, schema: &str| pb::CreateEventTypeRequest {
        event_type: Some(pb::EventType {
            name: "order.created".into(),
            description: "A customer placed an order.".into(),
            example: example.as_bytes().to_vec(),
            schema: schema.as_bytes().to_vec(),
            ..Default::default()
        }),
    };

    // The example must satisfy the schema; the schema must be one.
    let refused = types
        .create_event_type(with_schema(r#"{"total": "12.50"}"#, schema))
        .await
        .expect_err("the example lacks order_id");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(
        refused.message().starts_with("example: does not match"),
        "{}",
        refused.message()
    );
    let refused = types
        .create_event_type(with_schema("{}", r#"{"type": "objekt"}"#))
        .await
        .expect_err("not a schema");
    assert!(
        refused
            .message()
            .starts_with("schema: is not a valid JSON Schema"),
        "{}",
        refused.message()
    );

    let created = types
        .create_event_type(with_schema(
            r#"{"order_id": "o1", "total": "12.50"}"#,
            schema,
        ))
        .await?
        .into_inner();
    let stored: serde_json::Value = serde_json::from_slice(&created.schema)?;
    assert_eq!(stored["required"][0], "order_id", "stored as compact JSON");
    assert!(!created.deprecated && created.updated_at.is_some());

    // Updated: a new example must still satisfy the schema.
    let mut edited = created.clone();
    edited.example = br#"{"order_id": 7}"#.to_vec();
    let refused = types
        .update_event_type(pb::UpdateEventTypeRequest {
            event_type: Some(edited.clone()),
        })
        .await
        .expect_err("order_id must be a string");
    assert!(
        refused.message().contains("at /order_id"),
        "{}",
        refused.message()
    );
    edited.example = br#"{"order_id": "o7"}"#.to_vec();
    edited.description = "An order was placed in a shop.".into();
    let updated = types
        .update_event_type(pb::UpdateEventTypeRequest {
            event_type: Some(edited),
        })
        .await?
        .into_inner();
    assert_eq!(updated.description, "An order was placed in a shop.");
    assert_eq!(updated.created_at, created.created_at);

    // Deprecated, and back; built-in types are not the catalogue's to change.
    let deprecated = types
        .deprecate_event_type(pb::DeprecateEventTypeRequest {
            name: "order.created".into(),
            deprecated: true,
        })
        .await?
        .into_inner();
    assert!(deprecated.deprecated);
    let listed = types
        .list_event_types(pb::ListEventTypesRequest {})
        .await?
        .into_inner();
    assert!(
        listed
            .event_types
            .iter()
            .any(|t| t.name == "order.created" && t.deprecated)
    );
    let refused = types
        .deprecate_event_type(pb::DeprecateEventTypeRequest {
            name: "herald.subscription.disabled".into(),
            deprecated: true,
        })
        .await
        .expect_err("built in");
    assert_eq!(refused.code(), Code::InvalidArgument);

    // Deleted: gone from the catalogue; a second delete finds nothing.
    types
        .delete_event_type(pb::DeleteEventTypeRequest {
            name: "order.created".into(),
        })
        .await?;
    let gone = types
        .get_event_type(pb::GetEventTypeRequest {
            name: "order.created".into(),
        })
        .await
        .expect_err("deleted");
    assert_eq!(gone.code(), Code::NotFound);
    let again = types
        .delete_event_type(pb::DeleteEventTypeRequest {
            name: "order.created".into(),
        })
        .await
        .expect_err("deleted already");
    assert_eq!(again.code(), Code::NotFound);
    Ok(())
}
