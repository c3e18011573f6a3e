//! The event-type registry: a catalogue with descriptions, examples and schemas; while it
//! holds any type, subscriptions may only select registered types (unless the registry is
//! off); agents refuse emitted payloads that their type's schema rejects.

use std::time::Duration;

use herald_control_plane::event_types::RegistryMode;
use herald_proto::v1 as pb;
use herald_proto::v1::event_types_client::EventTypesClient;
use herald_tests::{
    Agent, AgentOptions, ConfigStore, ControlPlane, Etcd, Receiver, TestCa, event, eventually,
    subscription,
};
use serde_json::json;
use tonic::Code;

const WAIT: Duration = Duration::from_secs(15);

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
        .list_event_types(pb::ListEventTypesRequest::default())
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
            ..Default::default()
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
        ..Default::default()
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
    // ...and only for the system tenant: no shop's endpoint is ever sent them, so a shop's
    // pattern naming them is refused, on create and when an update adds it.
    for asked in [
        &["herald.*"][..],
        &["order.created", "herald.subscription.disabled"],
    ] {
        let refused = subs
            .create_subscription(pb::CreateSubscriptionRequest {
                subscription: Some(subscription("shop-1", url, asked)),
                allow_unregistered: true,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{asked:?}");
        assert!(
            refused.message().contains("herald.") && refused.message().contains("system tenant"),
            "{}",
            refused.message()
        );
    }
    let own_added = subs
        .update_subscription(pb::UpdateSubscriptionRequest {
            subscription: Some(pb::Subscription {
                event_types: vec!["order.created".into(), "herald.*".into()],
                ..early.clone()
            }),
            expected_revision: early.revision,
            allow_unregistered: true,
        })
        .await
        .unwrap_err();
    assert_eq!(own_added.code(), Code::InvalidArgument);

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
        .list_event_types(pb::ListEventTypesRequest::default())
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

/// An order's schema: an id, and a total that is a number no lower than zero.
const ORDER_SCHEMA: &str = r#"{"type": "object", "required": ["order_id", "total"],
    "properties": {"order_id": {"type": "string"}, "total": {"type": "number", "minimum": 0}}}"#;

fn typed(name: &str, schema: &str, example: &serde_json::Value) -> pb::EventType {
    pb::EventType {
        name: name.into(),
        description: format!("{name}, with a schema"),
        example: example.to_string().into_bytes(),
        schema: schema.as_bytes().to_vec(),
        ..Default::default()
    }
}

/// Emits `event` until the agent refuses it as invalid (its schemas still on their way, it
/// may accept it first), and answers the refusal.
async fn refused(agent: &Agent, event: pb::Event) -> anyhow::Result<tonic::Status> {
    let client = agent.events().await?;
    eventually(WAIT, "the agent to refuse the payload", || {
        let (mut client, event) = (client.clone(), event.clone());
        async move {
            match client.emit(pb::EmitRequest { event: Some(event) }).await {
                Err(status) if status.code() == Code::InvalidArgument => Ok(Some(status)),
                Ok(_) => Ok(None),
                Err(status) if status.code() == Code::Unavailable => Ok(None),
                Err(status) => Err(status.into()),
            }
        }
    })
    .await
}

#[tokio::test]
async fn agents_refuse_payloads_their_types_schema_rejects() -> anyhow::Result<()> {
    let mut control_plane = ControlPlane::start(ConfigStore::Embedded).await?;
    let mut types = EventTypesClient::new(control_plane.channel().await?);
    let order = json!({"order_id": "o-1", "total": 12.5});
    types
        .create_event_type(pb::CreateEventTypeRequest {
            event_type: Some(typed("order.created", ORDER_SCHEMA, &order)),
        })
        .await?;
    let ca = TestCa::new();
    let receiver = Receiver::start(&ca).await?;
    let tenant = "shop-schemas";
    let sub = control_plane
        .create(subscription(
            tenant,
            &receiver.url("/orders"),
            &["order.created"],
        ))
        .await?;
    // Started after the type: the schemas come before its subscriptions.
    let mut agent = Agent::start(
        control_plane.url(),
        AgentOptions {
            trusted_ca: Some(ca.ca_pem()),
            ..Default::default()
        },
    )
    .await?;
    control_plane.wait_applied(sub.revision, WAIT).await?;

    // A bad payload is refused naming where it fails, and nothing is kept.
    let bad = event(
        tenant,
        "order.created",
        &json!({"order_id": "o-2", "total": -5}),
    );
    let mut events = agent.events().await?;
    let status = events
        .emit(pb::EmitRequest {
            event: Some(bad.clone()),
        })
        .await
        .expect_err("total below zero");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .starts_with("payload: does not match its event type's schema: at /total"),
        "{}",
        status.message()
    );
    let missing = event(tenant, "order.created", &json!({"order_id": "o-3"}));
    let batch = pb::EmitBatchRequest {
        events: vec![event(tenant, "order.created", &order), missing],
    };
    let status = events.emit_batch(batch).await.expect_err("total missing");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().starts_with("events[1].payload: "),
        "{}",
        status.message()
    );
    assert!(status.message().contains("total"), "{}", status.message());

    // An agent told not to check takes it (another tenant's: it goes nowhere).
    let unchecked = Agent::start(
        control_plane.url(),
        AgentOptions {
            check_schemas: Some(false),
            ..Default::default()
        },
    )
    .await?;
    let mut elsewhere = bad.clone();
    elsewhere.tenant = "shop-unchecked".into();
    assert_eq!(unchecked.emit(elsewhere).await?.matched, 0);
    unchecked.stop().await?;

    // A good one goes through: the only request the receiver gets.
    let accepted = agent.emit(event(tenant, "order.created", &order)).await?;
    assert_eq!(accepted.matched, 1);
    let got = receiver.wait_for_requests(1, WAIT).await?;
    assert_eq!(got[0].data()["order_id"], "o-1");

    // A schema given to a type later reaches the running agent (no subscription takes this
    // type, so what it accepts meanwhile goes nowhere).
    let removed = json!({"order_id": "o-1"});
    types
        .create_event_type(pb::CreateEventTypeRequest {
            event_type: Some(typed("order.removed", "", &removed)),
        })
        .await?;
    types
        .update_event_type(pb::UpdateEventTypeRequest {
            event_type: Some(typed(
                "order.removed",
                r#"{"required": ["order_id"]}"#,
                &removed,
            )),
        })
        .await?;
    let status = refused(&agent, event(tenant, "order.removed", &json!({}))).await?;
    assert!(
        status.message().contains("order_id"),
        "{}",
        status.message()
    );

    // Restarted while the control plane is down, the agent checks with the schemas it saved.
    agent.pause().await?;
    control_plane.pause().await?;
    agent.resume().await?;
    let client = agent.events().await?;
    let status = eventually(WAIT, "the restarted agent to answer", || {
        let (mut client, bad) = (client.clone(), bad.clone());
        async move {
            match client.emit(pb::EmitRequest { event: Some(bad) }).await {
                Err(status) if status.code() == Code::Unavailable => Ok(None),
                Err(status) => Ok(Some(status)),
                Ok(response) => anyhow::bail!("accepted: {:?}", response.into_inner()),
            }
        }
    })
    .await?;
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    control_plane.resume().await?;

    // Without its schema, the type takes any payload again.
    types = EventTypesClient::new(control_plane.channel().await?);
    types
        .update_event_type(pb::UpdateEventTypeRequest {
            event_type: Some(typed("order.created", "", &order)),
        })
        .await?;
    let client = agent.events().await?;
    eventually(WAIT, "the agent to take the payload", || {
        let (mut client, bad) = (client.clone(), bad.clone());
        async move {
            match client.emit(pb::EmitRequest { event: Some(bad) }).await {
                Ok(response) => Ok(Some(response.into_inner())),
                Err(status) if status.code() == Code::InvalidArgument => Ok(None),
                Err(status) if status.code() == Code::Unavailable => Ok(None),
                Err(status) => Err(status.into()),
            }
        }
    })
    .await?;
    let got = receiver.wait_for_requests(2, WAIT).await?;
    assert_eq!(got.len(), 2, "the refused payloads never went out");
    assert_eq!(got[1].data()["total"], -5);
    Ok(())
}
