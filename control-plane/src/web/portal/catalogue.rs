//! The portal's event types: what a shop may subscribe to, each with its description and an
//! example request body as its endpoint would receive it (JSON or XML, in the Standard
//! Webhooks envelope), so that a receiver can be written before the first event.

use std::time::SystemTime;

use askama::Template;
use axum::extract::State;
use axum::response::Response;
use herald_core::format::{Envelope, EventBody, PayloadFormat, render_body};
use herald_proto::v1 as pb;

use super::{Frame, Holder};
use crate::web::WebState;
use crate::web::page::{PageError, render};
use crate::web::views::pretty_json;

/// One event type as the portal shows it.
struct TypeView {
    name: String,
    description: String,
    deprecated: bool,
    /// The example request body in JSON, pretty-printed; empty when the type has no example.
    json_body: String,
    /// The same in XML.
    xml_body: String,
    /// The JSON Schema, pretty-printed; empty when none.
    schema: String,
}

impl TypeView {
    fn new(t: pb::EventType, now: SystemTime) -> TypeView {
        let example = (!t.example.is_empty()).then(|| EventBody {
            event_type: &t.name,
            occurred_at: now,
            payload: &t.example,
        });
        let body = |format| {
            example
                .as_ref()
                .and_then(|event| render_body(format, Envelope::Standard, event).ok())
                .unwrap_or_default()
        };
        TypeView {
            json_body: pretty_json(&body(PayloadFormat::Json)),
            xml_body: String::from_utf8_lossy(&body(PayloadFormat::Xml)).into_owned(),
            schema: pretty_json(&t.schema),
            deprecated: t.deprecated,
            name: t.name,
            description: t.description,
        }
    }
}

#[derive(Template)]
#[template(path = "portal/event_types.html")]
struct EventTypesPage {
    frame: Frame,
    types: Vec<TypeView>,
}

/// The catalogue's types (not Herald's own), by name.
pub(super) async fn event_types(
    State(state): State<WebState>,
    holder: Holder,
) -> Result<Response, PageError> {
    let types = state.services.event_types.catalogue().await?;
    let now = SystemTime::now();
    Ok(render(&EventTypesPage {
        frame: holder.frame("event-types"),
        types: types
            .into_iter()
            .filter(|t| !t.built_in)
            .map(|t| TypeView::new(t, now))
            .collect(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_example_shows_as_the_endpoint_would_receive_it() {
        let view = TypeView::new(
            pb::EventType {
                name: "order.created".into(),
                example: br#"{"id":42,"note":"a < b"}"#.to_vec(),
                ..Default::default()
            },
            SystemTime::UNIX_EPOCH,
        );
        assert!(
            view.json_body.contains("\"type\": \"order.created\"")
                && view
                    .json_body
                    .contains("\"timestamp\": \"1970-01-01T00:00:00.000Z\"")
                && view.json_body.contains("\"id\": 42"),
            "{}",
            view.json_body
        );
        assert!(
            view.xml_body.contains("<type>order.created</type>")
                && view.xml_body.contains("<id>42</id>")
                && view.xml_body.contains("a &lt; b"),
            "{}",
            view.xml_body
        );
        assert!(view.schema.is_empty());
        let bare = TypeView::new(
            pb::EventType {
                name: "order.paid".into(),
                ..Default::default()
            },
            SystemTime::UNIX_EPOCH,
        );
        assert!(bare.json_body.is_empty() && bare.xml_body.is_empty());
    }
}
