//! Deterministic rendering of a JSON document as XML, for subscriptions whose format is `xml`.
//!
//! This mapping is a public contract for receivers:
//!
//! - The output is UTF-8: `<?xml version="1.0" encoding="UTF-8"?>` then one root element
//!   `<payload>` holding the JSON document. No whitespace is added between elements.
//! - An **object** becomes one child element per key, in ascending byte order of the keys (the
//!   same input always gives the same bytes). A key that is a plain XML name (ASCII letters,
//!   digits, `_`, `-` and `.`; starting with a letter or `_`; not starting with `xml` in any case)
//!   is the element's name. Any other key becomes `<entry key="the original key">`.
//! - An **array** becomes one `<item>` child per element, in order.
//! - A **string** becomes the element's text, escaped (`<`, `>`, `&`, `'`, `"` as entities).
//! - A **number** becomes its JSON text as `serde_json` writes it (`42`, `-1.5`, `1e+100`).
//! - A **boolean** becomes `true` or `false`.
//! - **null** becomes an empty element with the attribute `null="true"`.
//! - An empty object, empty array or empty string becomes an empty element (`<tags/>`).
//!
//! No other attributes are written: the type of a value is not recorded, so `"42"` and `42`
//! render alike. Characters XML 1.0 cannot carry at all (control characters other than tab, line
//! feed and carriage return; U+FFFE; U+FFFF) are replaced by U+FFFD in text and keys. Receivers'
//! XML parsers apply the usual normalisation: a carriage return in text reads back as a line
//! feed, and tabs and line breaks in a `key` attribute read back as spaces.
//!
//! Rendering recurses once per level of nesting; documents parsed by `serde_json` are at most 128
//! levels deep.
//!
//! **The envelope.** A subscription with the Standard Webhooks envelope (the default) gets the
//! event's type and time beside its payload, as the JSON envelope
//! `{"type": …, "timestamp": …, "data": …}` carries them, in this fixed order:
//!
//! ```xml
//! <?xml version="1.0" encoding="UTF-8"?>
//! <webhook><type>order.created</type><timestamp>2026-12-04T12:00:00.123Z</timestamp><data>…</data></webhook>
//! ```
//!
//! `<data>` holds the payload by the mapping above (what `<payload>` holds without the envelope);
//! `<timestamp>` is the time the event occurred, RFC 3339 in UTC with milliseconds.
//! A subscription with `--envelope raw` gets the `<payload>` document alone; the type is then
//! only in the `webhook-event-type` header (which every request carries).

use std::borrow::Cow;
use std::io;

use quick_xml::Writer;
use quick_xml::events::{BytesDecl, BytesStart, BytesText, Event};
use serde_json::Value;

/// Renders `value` as an XML document under a `<payload>` root, following the module's mapping.
pub fn render(value: &Value) -> Vec<u8> {
    let mut writer = Writer::new(Vec::new());
    write_document(&mut writer, value).expect("writing to a Vec<u8> cannot fail");
    writer.into_inner()
}

/// Renders `data` inside the Standard Webhooks envelope: a `<webhook>` root holding `<type>`,
/// `<timestamp>` and `<data>`, as the module's doc describes.
pub fn render_envelope(event_type: &str, timestamp: &str, data: &Value) -> Vec<u8> {
    let mut writer = Writer::new(Vec::new());
    write_envelope(&mut writer, event_type, timestamp, data)
        .expect("writing to a Vec<u8> cannot fail");
    writer.into_inner()
}

fn write_envelope(
    writer: &mut Writer<Vec<u8>>,
    event_type: &str,
    timestamp: &str,
    data: &Value,
) -> io::Result<()> {
    writer.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    let root = BytesStart::new("webhook");
    writer.write_event(Event::Start(root.borrow()))?;
    for (name, text) in [("type", event_type), ("timestamp", timestamp)] {
        write_element(
            writer,
            BytesStart::new(name),
            &Value::String(text.to_owned()),
        )?;
    }
    write_element(writer, BytesStart::new("data"), data)?;
    writer.write_event(Event::End(root.to_end()))
}

/// Writes the declaration and the root element.
fn write_document(writer: &mut Writer<Vec<u8>>, value: &Value) -> io::Result<()> {
    writer.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    write_element(writer, BytesStart::new("payload"), value)
}

/// Writes `value` as the element opened by `start`.
fn write_element(writer: &mut Writer<Vec<u8>>, start: BytesStart, value: &Value) -> io::Result<()> {
    let text = match value {
        Value::Null => {
            let start = start.with_attributes([("null", "true")]);
            return writer.write_event(Event::Empty(start));
        }
        Value::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
        Value::Number(n) => Cow::Owned(n.to_string()),
        Value::String(s) => xml_chars(s),
        Value::Array(items) if !items.is_empty() => {
            writer.write_event(Event::Start(start.borrow()))?;
            for item in items {
                write_element(writer, BytesStart::new("item"), item)?;
            }
            return writer.write_event(Event::End(start.to_end()));
        }
        Value::Object(map) if !map.is_empty() => {
            writer.write_event(Event::Start(start.borrow()))?;
            // Sorted here rather than trusting the map's order, which changes when any crate in
            // the build enables serde_json's `preserve_order` feature.
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            for (key, child) in entries {
                let child_start = if is_plain_name(key) {
                    BytesStart::new(key.as_str())
                } else {
                    BytesStart::new("entry").with_attributes([("key", xml_chars(key).as_ref())])
                };
                write_element(writer, child_start, child)?;
            }
            return writer.write_event(Event::End(start.to_end()));
        }
        Value::Array(_) | Value::Object(_) => Cow::Borrowed(""),
    };
    if text.is_empty() {
        return writer.write_event(Event::Empty(start));
    }
    writer.write_event(Event::Start(start.borrow()))?;
    writer.write_event(Event::Text(BytesText::new(&text)))?;
    writer.write_event(Event::End(start.to_end()))
}

/// Whether `key` can be an element name as it is: ASCII letters, digits, `_`, `-`, `.`, starting
/// with a letter or `_`, and not starting with the reserved `xml`.
fn is_plain_name(key: &str) -> bool {
    let mut chars = key.chars();
    let starts_well = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let reserved = key
        .get(..3)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("xml"));
    starts_well
        && !reserved
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// `text` with every character XML 1.0 cannot carry replaced by U+FFFD.
fn xml_chars(text: &str) -> Cow<'_, str> {
    let allowed = |c: char| {
        matches!(c, '\t' | '\n' | '\r') || (c >= ' ' && c != '\u{FFFE}' && c != '\u{FFFF}')
    };
    if text.chars().all(allowed) {
        Cow::Borrowed(text)
    } else {
        Cow::Owned(
            text.chars()
                .map(|c| {
                    if allowed(c) {
                        c
                    } else {
                        char::REPLACEMENT_CHARACTER
                    }
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use quick_xml::Reader;
    use serde_json::json;

    use super::*;

    const DECL: &str = r#"<?xml version="1.0" encoding="UTF-8"?>"#;

    /// Renders `value` and returns what follows the declaration, after checking that the whole
    /// output is well-formed and rendering is repeatable.
    fn body(value: Value) -> String {
        let bytes = render(&value);
        assert_eq!(bytes, render(&value), "rendering is not deterministic");
        assert_well_formed(&bytes);
        let text = String::from_utf8(bytes).unwrap();
        text.strip_prefix(DECL).expect(&text).to_owned()
    }

    /// Reads `xml` to the end with quick-xml, checking that elements nest and close properly
    /// and that there is exactly one root.
    fn assert_well_formed(xml: &[u8]) {
        let mut reader = Reader::from_reader(xml);
        reader.config_mut().check_end_names = true;
        let (mut depth, mut roots) = (0usize, 0);
        loop {
            match reader.read_event() {
                Ok(Event::Start(_)) => {
                    roots += usize::from(depth == 0);
                    depth += 1;
                }
                Ok(Event::End(_)) => depth -= 1,
                Ok(Event::Empty(e)) => {
                    roots += usize::from(depth == 0);
                    for attr in e.attributes() {
                        attr.unwrap().unescape_value().unwrap();
                    }
                }
                Ok(Event::Text(t)) => {
                    assert!(depth > 0, "text outside the root");
                    t.decode().unwrap();
                }
                Ok(Event::Eof) => break,
                Ok(_) => {}
                Err(e) => panic!("not well-formed: {e}: {}", String::from_utf8_lossy(xml)),
            }
        }
        assert_eq!((depth, roots), (0, 1), "{}", String::from_utf8_lossy(xml));
    }

    #[test]
    fn starts_with_the_declaration() {
        assert!(render(&json!({})).starts_with(DECL.as_bytes()));
    }

    #[test]
    fn scalars_at_the_root() {
        assert_eq!(body(json!("hi")), "<payload>hi</payload>");
        assert_eq!(body(json!(42)), "<payload>42</payload>");
        assert_eq!(body(json!(true)), "<payload>true</payload>");
        assert_eq!(body(json!(null)), r#"<payload null="true"/>"#);
        assert_eq!(body(json!("")), "<payload/>");
    }

    #[test]
    fn nested_objects_in_sorted_key_order() {
        let value = json!({"order": {"id": 42, "customer": {"name": "Ada"}}, "b": false});
        assert_eq!(
            body(value),
            "<payload><b>false</b><order><customer><name>Ada</name></customer>\
             <id>42</id></order></payload>"
        );
    }

    #[test]
    fn arrays_of_objects_and_of_arrays() {
        assert_eq!(
            body(json!({"lines": [{"sku": "A1"}, {"sku": "B2"}]})),
            "<payload><lines><item><sku>A1</sku></item><item><sku>B2</sku></item></lines></payload>"
        );
        assert_eq!(
            body(json!([[1, 2], [], [[3]]])),
            "<payload><item><item>1</item><item>2</item></item><item/>\
             <item><item><item>3</item></item></item></payload>"
        );
    }

    #[test]
    fn null_and_empty_containers() {
        assert_eq!(
            body(json!({"a": null, "b": [], "c": {}, "d": [null]})),
            r#"<payload><a null="true"/><b/><c/><d><item null="true"/></d></payload>"#
        );
    }

    #[test]
    fn numbers_keep_their_json_text() {
        assert_eq!(
            body(json!([0, -7, 1.5, 1e100, u64::MAX, i64::MIN])),
            "<payload><item>0</item><item>-7</item><item>1.5</item><item>1e+100</item>\
             <item>18446744073709551615</item><item>-9223372036854775808</item></payload>"
        );
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            body(json!({"t": r#"<a href="x">Tom & 'Jerry'</a>"#})),
            "<payload><t>&lt;a href=&quot;x&quot;&gt;Tom &amp; &apos;Jerry&apos;&lt;/a&gt;</t></payload>"
        );
    }

    #[test]
    fn keys_that_are_not_plain_names_become_entries() {
        let value = json!({
            "1st": 1, "-x": 2, ".x": 3, "xmlData": 4, "XML": 5, "has space": 6,
            "a:b": 7, "": 8, "caf\u{e9}": 9, "<&\"'>": 10,
        });
        assert_eq!(
            body(value),
            "<payload><entry key=\"\">8</entry><entry key=\"-x\">2</entry>\
             <entry key=\".x\">3</entry><entry key=\"1st\">1</entry>\
             <entry key=\"&lt;&amp;&quot;&apos;&gt;\">10</entry><entry key=\"XML\">5</entry>\
             <entry key=\"a:b\">7</entry><entry key=\"caf\u{e9}\">9</entry>\
             <entry key=\"has space\">6</entry><entry key=\"xmlData\">4</entry></payload>"
        );
    }

    #[test]
    fn plain_names_are_kept() {
        for name in [
            "a",
            "_x",
            "order_id",
            "line-item",
            "v1.2",
            "Xm",
            "x_ml",
            "mxml",
        ] {
            assert!(is_plain_name(name), "{name}");
            assert_eq!(
                body(json!({ name: 1 })),
                format!("<payload><{name}>1</{name}></payload>")
            );
        }
    }

    #[test]
    fn unicode_passes_through() {
        assert_eq!(
            body(json!({"name": "Zo\u{eb} \u{1F600} \u{65e5}\u{672c}"})),
            "<payload><name>Zo\u{eb} \u{1F600} \u{65e5}\u{672c}</name></payload>"
        );
    }

    #[test]
    fn characters_xml_cannot_carry_are_replaced() {
        assert_eq!(
            body(json!({"t": "a\u{0}b\u{1b}c\td\u{FFFF}", "k\u{7}": 1})),
            "<payload><entry key=\"k\u{FFFD}\">1</entry><t>a\u{FFFD}b\u{FFFD}c\td\u{FFFD}</t></payload>"
        );
    }

    #[test]
    fn deep_and_wide_documents_are_well_formed() {
        let mut value = json!("leaf");
        for i in 0..100 {
            value = json!({ format!("level{i}"): [value, {"n": i, "s": "<>&"}] });
        }
        body(value);
    }

    #[test]
    fn the_envelope_carries_type_and_time_before_the_data() {
        let bytes = render_envelope(
            "order.created",
            "2026-12-04T12:00:00.123Z",
            &json!({"order_id": 42, "note": "<&>"}),
        );
        let text = String::from_utf8(bytes).expect("utf-8");
        assert_eq!(
            text,
            format!(
                "{DECL}<webhook><type>order.created</type>\
                 <timestamp>2026-12-04T12:00:00.123Z</timestamp>\
                 <data><note>&lt;&amp;&gt;</note><order_id>42</order_id></data></webhook>"
            )
        );
        let mut reader = Reader::from_str(&text);
        loop {
            match reader.read_event() {
                Ok(Event::Eof) => break,
                Ok(_) => {}
                Err(err) => panic!("not well-formed: {err}"),
            }
        }
    }
}
