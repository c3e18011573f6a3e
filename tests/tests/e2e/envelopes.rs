//! Every webhook tells which event it carries: the Standard Webhooks envelope
//! `{"type", "timestamp", "data"}` by default, the bare payload with `--envelope raw`, XML with
//! the same fields, and the `webhook-event-type` header on every request. Each body is checked
//! with the Standard Webhooks reference library, as a receiver would.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use herald_control_plane::sealing::Keyring;
use herald_control_plane::store::{Op, Store, Txn};
use herald_control_plane::subscriptions::Subscriptions;
use herald_core::target::TargetPolicy;
use herald_proto::convert::timestamp;
use herald_proto::v1 as pb;
use herald_tests::ReceivedRequest;
use herald_tests::{World, event, secret_of, subscription};
use prost::Message as _;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

/// Verifies `request` with the Standard Webhooks reference library and `secret`.
fn verify(request: &ReceivedRequest, secret: &str) -> anyhow::Result<()> {
    let webhook = standardwebhooks::Webhook::new(secret)
        .map_err(|e| anyhow::anyhow!("the library refuses the secret: {e}"))?;
    webhook
        .verify(&request.body, &request.headers)
        .map_err(|e| anyhow::anyhow!("{} does not verify: {e}", request.path))
}

#[tokio::test]
async fn every_body_shape_says_its_event_type_and_verifies() -> anyhow::Result<()> {
    let world = World::start().await?;
    let create = |path: &str, format: pb::Format, envelope: pb::Envelope| {
        let mut request = subscription("shop-1", &world.receiver.url(path), &["order.*"]);
        request.format = format as i32;
        request.envelope = envelope as i32;
        world.control_plane.create(request)
    };
    // Unspecified: a new subscription gets the envelope.
    let standard = create("/json", pb::Format::Json, pb::Envelope::Unspecified).await?;
    let raw = create("/raw", pb::Format::Json, pb::Envelope::Raw).await?;
    let xml = create("/xml", pb::Format::Xml, pb::Envelope::Standard).await?;
    let xml_raw = create("/xml-raw", pb::Format::Xml, pb::Envelope::Raw).await?;
    assert_eq!(standard.envelope, pb::Envelope::Standard as i32);
    world
        .control_plane
        .wait_applied(xml_raw.revision, WAIT)
        .await?;

    let payload = json!({"order_id": 42, "status": "paid", "lines": [{"sku": "A-1", "qty": 2}]});
    let occurred = SystemTime::UNIX_EPOCH + Duration::from_millis(1_796_385_600_250);
    let mut order = event("shop-1", "order.updated", &payload);
    order.occurred_at = Some(timestamp(occurred));
    world.agent.emit(order).await?;

    let requests = world.receiver.wait_for_requests(4, WAIT).await?;
    let at = |path: &str| {
        requests
            .iter()
            .find(|r| r.path == path)
            .unwrap_or_else(|| panic!("no request to {path}"))
    };
    for (path, sub) in [
        ("/json", &standard),
        ("/raw", &raw),
        ("/xml", &xml),
        ("/xml-raw", &xml_raw),
    ] {
        let request = at(path);
        verify(request, &secret_of(sub))?;
        assert_eq!(
            request.header("webhook-event-type"),
            Some("order.updated"),
            "{path} names the type in a header"
        );
    }

    let enveloped = at("/json").json();
    assert_eq!(
        enveloped,
        json!({
            "type": "order.updated",
            "timestamp": "2026-12-04T12:00:00.250Z",
            "data": payload,
        }),
        "the Standard Webhooks envelope, with when the event occurred"
    );
    assert_eq!(at("/raw").json(), payload, "raw: the payload as emitted");

    let text = std::str::from_utf8(&at("/xml").body)?;
    assert!(
        text.contains(
            "<webhook><type>order.updated</type>\
             <timestamp>2026-12-04T12:00:00.250Z</timestamp><data>"
        ) && text.contains("<order_id>42</order_id>")
            && text.ends_with("</data></webhook>"),
        "{text}"
    );
    let mut reader = quick_xml::Reader::from_str(text);
    while !matches!(reader.read_event()?, quick_xml::events::Event::Eof) {}
    let bare = std::str::from_utf8(&at("/xml-raw").body)?;
    assert!(
        bare.contains("<payload>") && !bare.contains("<webhook>"),
        "{bare}"
    );

    // A changed body fails the reference verifier: the check above can fail.
    let mut forged = at("/json").clone();
    forged.body = serde_json::to_vec(&json!({"type": "order.updated", "data": {}}))?.into();
    assert!(verify(&forged, &secret_of(&standard)).is_err());

    // The envelope can be changed later, and an update that leaves it out keeps it.
    let mut subs = world.control_plane.subscriptions().await?;
    let kept = subs
        .update_subscription(pb::UpdateSubscriptionRequest {
            subscription: Some(pb::Subscription {
                description: "kept".into(),
                envelope: pb::Envelope::Unspecified as i32,
                ..raw.clone()
            }),
            expected_revision: raw.revision,
            allow_unregistered: false,
        })
        .await?
        .into_inner();
    assert_eq!(kept.envelope, pb::Envelope::Raw as i32);
    let switched = subs
        .update_subscription(pb::UpdateSubscriptionRequest {
            subscription: Some(pb::Subscription {
                envelope: pb::Envelope::Standard as i32,
                ..kept.clone()
            }),
            expected_revision: kept.revision,
            allow_unregistered: false,
        })
        .await?
        .into_inner();
    assert_eq!(switched.envelope, pb::Envelope::Standard as i32);
    Ok(())
}

#[tokio::test]
async fn subscriptions_stored_before_envelopes_keep_the_bodies_they_had() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let store = Store::embedded(dir.path()).await?;
    let keyring = Arc::new(Keyring::parse(&Keyring::generate_entry("k1")?)?);
    let registry = Subscriptions::new(store.clone(), TargetPolicy::new(false, vec![]), keyring);
    let url = "https://93.184.215.14/hook";
    let shop = registry
        .create(subscription("shop-1", url, &["order.*"]))
        .await?;
    let operators = registry
        .create(subscription("herald", url, &["herald.*"]))
        .await?;
    assert_eq!(registry.upgrade_all("herald").await?, 0, "nothing to do");

    // As written before the envelope field existed.
    let (kvs, _) = store.list("/herald/v1/subscriptions/").await?;
    for kv in kvs {
        let mut record = pb::Subscription::decode(kv.value.as_slice())?;
        record.envelope = pb::Envelope::Unspecified as i32;
        store
            .txn(Txn::default().then(Op::Put(kv.key, record.encode_to_vec())))
            .await?;
    }
    assert_eq!(registry.upgrade_all("herald").await?, 2);
    assert_eq!(
        registry.get(&shop.id).await?.envelope,
        pb::Envelope::Raw as i32,
        "an ordinary subscription got the bare payload"
    );
    assert_eq!(
        registry.get(&operators.id).await?.envelope,
        pb::Envelope::Standard as i32,
        "operator events were already shaped {{type, timestamp, data}}"
    );
    assert_eq!(registry.upgrade_all("herald").await?, 0);
    Ok(())
}

#[tokio::test]
async fn a_time_of_occurrence_rfc_3339_cannot_write_is_refused_at_emit() -> anyhow::Result<()> {
    let world = World::start().await?;
    let sub = world
        .control_plane
        .create(subscription(
            "shop-1",
            &world.receiver.url("/json"),
            &["order.*"],
        ))
        .await?;
    world.control_plane.wait_applied(sub.revision, WAIT).await?;
    let payload = json!({"order_id": 7});

    // Year 11476 and 1969: refused, naming the field, and nothing is delivered.
    let mut events = world.agent.events().await?;
    for seconds in [300_000_000_000, -1] {
        let mut order = event("shop-1", "order.created", &payload);
        order.occurred_at = Some(prost_types::Timestamp { seconds, nanos: 0 });
        let status = events
            .emit(pb::EmitRequest { event: Some(order) })
            .await
            .expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{seconds}");
        assert!(status.message().contains("occurred_at"), "{status:?}");
    }

    // The last second RFC 3339 can write goes out, in the envelope, verified.
    let mut last = event("shop-1", "order.created", &payload);
    last.occurred_at = Some(prost_types::Timestamp {
        seconds: herald_proto::convert::LATEST_SECONDS,
        nanos: 0,
    });
    world.agent.emit(last).await?;
    let requests = world.receiver.wait_for_requests(1, WAIT).await?;
    verify(&requests[0], &secret_of(&sub))?;
    assert_eq!(
        requests[0].json(),
        json!({"type": "order.created", "timestamp": "9999-12-31T23:59:59.000Z", "data": payload})
    );
    Ok(())
}
