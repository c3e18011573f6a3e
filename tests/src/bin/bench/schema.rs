//! `bench schema`: what checking payloads against their type's schema costs `Emit`. The
//! catalogue's `order.created` (from `examples/catalog/ecommerce.yaml`, with its schema) and
//! the same type without a schema are registered on one control plane; one agent (fsync on,
//! delivery paused) takes the catalogue's example order of both types, in alternating rounds,
//! from 16 unary callers and from 4 `EmitBatch` ×100 callers. Reported: the median events/s
//! of each and the median of the per-round ratios.

use std::time::Duration;

use anyhow::Context as _;
use herald_proto::v1 as pb;
use herald_proto::v1::event_types_client::EventTypesClient;
use herald_proto::v1::events_client::EventsClient;
use herald_tests::herald::connect;
use tokio_util::sync::CancellationToken;

use crate::log::median;
use crate::{ROUNDS, agent, control_plane, round};

/// The shipped catalogue.
const CATALOGUE: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../examples/catalog/ecommerce.yaml"
));
/// The type checked, as the catalogue has it.
const CHECKED: &str = "order.created";
/// The same type without a schema.
const UNCHECKED: &str = "order.unchecked";

/// The catalogue's `order.created`: its schema and its example, as JSON text.
fn catalogue_order() -> anyhow::Result<(String, String)> {
    let catalogue: serde_json::Value = serde_yaml_ng::from_str(CATALOGUE)?;
    let order = catalogue["event_types"]
        .as_array()
        .and_then(|types| types.iter().find(|t| t["name"] == CHECKED))
        .context("the catalogue has no order.created")?;
    Ok((order["schema"].to_string(), order["example"].to_string()))
}

pub async fn run() -> anyhow::Result<()> {
    let (schema, example) = catalogue_order()?;
    let stop = CancellationToken::new();
    let (cp, _cp_dir) = control_plane(&stop).await?;
    let mut types = EventTypesClient::new(connect(&cp).await?);
    for (name, schema) in [(CHECKED, schema.as_str()), (UNCHECKED, "")] {
        let event_type = pb::EventType {
            name: name.into(),
            description: "An order, for the benchmark.".into(),
            example: example.clone().into_bytes(),
            schema: schema.as_bytes().to_vec(),
            ..Default::default()
        };
        types
            .create_event_type(pb::CreateEventTypeRequest {
                event_type: Some(event_type),
            })
            .await?;
    }
    let (url, _dir) = agent(&cp, true, &stop).await?;
    let of_type = |name: &str, payload: &str| pb::Event {
        tenant: "bench".into(),
        r#type: name.into(),
        payload: payload.as_bytes().to_vec(),
        ..Default::default()
    };
    // The agent holds the schema once it refuses an order without lines.
    let events = EventsClient::new(connect(&url).await?);
    herald_tests::eventually(Duration::from_secs(10), "the agent's schemas", || {
        let (mut events, bad) = (events.clone(), of_type(CHECKED, "{}"));
        async move {
            let refused = events.emit(pb::EmitRequest { event: Some(bad) }).await;
            Ok(refused
                .err()
                .filter(|s| s.code() == tonic::Code::InvalidArgument)
                .map(|_| ()))
        }
    })
    .await?;

    println!(
        "The catalogue's example order: {} bytes; its schema: {} bytes.",
        example.len(),
        schema.len()
    );
    println!();
    println!(
        "| case | without a schema, events/s | with, events/s | with / without (median of {ROUNDS}) |"
    );
    println!("| --- | ---: | ---: | ---: |");
    for (name, callers, batch) in [
        ("Emit, 16 callers", 16, 1),
        ("EmitBatch ×100, 4 callers", 4, 100),
    ] {
        let (mut without, mut with, mut ratios) = (vec![], vec![], vec![]);
        for _ in 0..ROUNDS {
            let plain = round(&url, callers, batch, &of_type(UNCHECKED, &example)).await?;
            let checked = round(&url, callers, batch, &of_type(CHECKED, &example)).await?;
            ratios.push(checked.events_per_sec / plain.events_per_sec);
            without.push(plain.events_per_sec);
            with.push(checked.events_per_sec);
        }
        println!(
            "| {name} | {:.0} | {:.0} | {:.0}% |",
            median(without),
            median(with),
            100.0 * median(ratios)
        );
    }
    stop.cancel();
    Ok(())
}
