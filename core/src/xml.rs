//! Deterministic rendering of a JSON document as XML, for subscriptions whose format is `xml`.
//!
//! This mapping is a public contract for receivers:
//!
//! - The output is UTF-8: `<?xml version="1.0" encoding="UTF-8"?>` then one root element
//!   `<payload>` holding the JSON document. No whitespace is added between elements.
//! - An **object** becomes one child element per key, in ascending byte order of the keys (the
//!   same input always gives the same bytes); a key given more than once becomes one element
//!   each time, in the order given. A key that is a plain XML name (ASCII letters, digits, `_`,
//!   `-` and `.`; starting with a letter or `_`; not starting with `xml` in any case) is the
//!   element's name. Any other key becomes `<entry key="the original key">`, a tab, line feed
//!   or carriage return in it written as a character reference (`&#9;`, `&#10;`, `&#13;`) so
//!   that it reads back as itself.
//! - An **array** becomes one `<item>` child per element, in order.
//! - A **string** becomes the element's text, escaped (`<`, `>`, `&`, `'`, `"` as entities, a
//!   carriage return as `&#13;` so that it does not read back as a line feed).
//! - A **number** becomes its text as written in the payload (`42`, `-1.5`, `1E2`, `19.990`,
//!   `12345678901234567890123`): no digit is lost or rewritten.
//! - A **boolean** becomes `true` or `false`.
//! - **null** becomes an empty element with the attribute `null="true"`.
//! - An empty object, empty array or empty string becomes an empty element (`<tags/>`).
//!
//! No other attributes are written: the type of a value is not recorded, so `"42"` and `42`
//! render alike. Characters XML 1.0 cannot carry at all, not even as references (control
//! characters other than tab, line feed and carriage return; U+FFFE; U+FFFF), are replaced by
//! U+FFFD in text and keys: a receiver that needs them byte for byte takes JSON.
//!
//! Each level of nesting is parsed as it is written (its members kept as text), so a document
//! is read about as many times as it is deep; payloads the agent accepts are at most 126 levels
//! deep ([`crate::validate::MAX_PAYLOAD_DEPTH`]).
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
use std::fmt;
use std::io;

use quick_xml::Writer;
use quick_xml::events::attributes::Attribute;
use quick_xml::events::{BytesDecl, BytesStart, BytesText, Event};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// Why a payload has no XML form.
#[derive(Debug, thiserror::Error)]
pub enum XmlError {
    /// The payload is not one JSON document.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// Writing failed (it writes to memory, so only through a bug).
    #[error(transparent)]
    Write(#[from] io::Error),
}

/// Renders the JSON document `json` as an XML document under a `<payload>` root, following
/// the module's mapping.
pub fn render(json: &[u8]) -> Result<Vec<u8>, XmlError> {
    let value: &RawValue = serde_json::from_slice(json)?;
    let mut writer = Writer::new(Vec::new());
    writer.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    write_element(&mut writer, BytesStart::new("payload"), value.get())?;
    Ok(writer.into_inner())
}

/// Renders the JSON document `data` inside the Standard Webhooks envelope: a `<webhook>` root
/// holding `<type>`, `<timestamp>` and `<data>`, as the module's doc describes.
pub fn render_envelope(
    event_type: &str,
    timestamp: &str,
    data: &[u8],
) -> Result<Vec<u8>, XmlError> {
    let data: &RawValue = serde_json::from_slice(data)?;
    let mut writer = Writer::new(Vec::new());
    writer.write_event(Event::Decl(BytesDecl::new("1.0", Some("UTF-8"), None)))?;
    let root = BytesStart::new("webhook");
    writer.write_event(Event::Start(root.borrow()))?;
    for (name, text) in [("type", event_type), ("timestamp", timestamp)] {
        write_text(&mut writer, BytesStart::new(name), text)?;
    }
    write_element(&mut writer, BytesStart::new("data"), data.get())?;
    writer.write_event(Event::End(root.to_end()))?;
    Ok(writer.into_inner())
}

/// Writes the JSON value `json` (its exact text) as the element opened by `start`. Objects
/// and arrays are parsed one level at a time, their members kept as text, so numbers keep
/// their digits and repeated keys are all kept.
fn write_element(
    writer: &mut Writer<Vec<u8>>,
    start: BytesStart,
    json: &str,
) -> Result<(), XmlError> {
    match json.as_bytes().first() {
        Some(b'{') => {
            let Members(mut members) = serde_json::from_str(json)?;
            if members.is_empty() {
                writer.write_event(Event::Empty(start))?;
                return Ok(());
            }
            // A stable sort: repeated keys stay in the order they came.
            members.sort_by(|a, b| a.0.cmp(&b.0));
            writer.write_event(Event::Start(start.borrow()))?;
            for (key, child) in &members {
                let child_start = if is_plain_name(key) {
                    BytesStart::new(key.as_ref())
                } else {
                    let key = escaped(key, Place::Attribute);
                    let mut entry = BytesStart::new("entry");
                    entry.push_attribute(Attribute::from((b"key".as_slice(), key.as_bytes())));
                    entry
                };
                write_element(writer, child_start, child.get())?;
            }
            writer.write_event(Event::End(start.to_end()))?;
        }
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(json)?;
            if items.is_empty() {
                writer.write_event(Event::Empty(start))?;
                return Ok(());
            }
            writer.write_event(Event::Start(start.borrow()))?;
            for item in items {
                write_element(writer, BytesStart::new("item"), item.get())?;
            }
            writer.write_event(Event::End(start.to_end()))?;
        }
        Some(b'"') => {
            let text: String = serde_json::from_str(json)?;
            write_text(writer, start, &text)?;
        }
        Some(b'n') => {
            writer.write_event(Event::Empty(start.with_attributes([("null", "true")])))?;
        }
        // `true`, `false` and numbers, as written.
        _ => write_text(writer, start, json)?,
    }
    Ok(())
}

/// Writes `text` as the element opened by `start` (an empty element when there is none).
fn write_text(writer: &mut Writer<Vec<u8>>, start: BytesStart, text: &str) -> io::Result<()> {
    if text.is_empty() {
        return writer.write_event(Event::Empty(start));
    }
    writer.write_event(Event::Start(start.borrow()))?;
    writer.write_event(Event::Text(BytesText::from_escaped(escaped(
        text,
        Place::Text,
    ))))?;
    writer.write_event(Event::End(start.to_end()))
}

/// An object's members in the order written, repeated keys included.
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MembersVisitor;
        impl<'de> Visitor<'de> for MembersVisitor {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut members = Vec::new();
                while let Some((Key(key), value)) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                    members.push((key, value));
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(MembersVisitor)
    }
}

/// A member's key, borrowed from the document unless it holds escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, key: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(key)))
            }
            fn visit_str<E>(self, key: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(key.to_owned())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
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

/// Where escaped text goes: parsers normalise line breaks everywhere, and tabs and line
/// breaks in attribute values to spaces, unless they are written as character references.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    Text,
    Attribute,
}

/// `text` escaped for `place`: the five predefined entities, a carriage return (and in an
/// attribute a tab or line feed) as a character reference so that it reads back as itself,
/// and every character XML 1.0 cannot carry at all replaced by U+FFFD.
fn escaped(text: &str, place: Place) -> Cow<'_, str> {
    let needs = |c: char| match c {
        '&' | '<' | '>' | '"' | '\'' | '\r' => true,
        '\t' | '\n' => place == Place::Attribute,
        c => c < ' ' || c == '\u{FFFE}' || c == '\u{FFFF}',
    };
    if !text.chars().any(needs) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\r' => out.push_str("&#13;"),
            '\t' if place == Place::Attribute => out.push_str("&#9;"),
            '\n' if place == Place::Attribute => out.push_str("&#10;"),
            '\t' | '\n' => out.push(c),
            c if needs(c) => out.push(char::REPLACEMENT_CHARACTER),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use quick_xml::Reader;
    use serde_json::{Value, json};

    use super::*;

    const DECL: &str = r#"<?xml version="1.0" encoding="UTF-8"?>"#;

    /// Renders `value` and returns what follows the declaration, after checking that the whole
    /// output is well-formed and rendering is repeatable.
    fn body(value: Value) -> String {
        body_of(&serde_json::to_string(&value).unwrap())
    }

    /// [`body`] of a payload as written.
    fn body_of(json: &str) -> String {
        let bytes = render(json.as_bytes()).expect("renders");
        assert_eq!(
            bytes,
            render(json.as_bytes()).expect("renders"),
            "rendering is not deterministic"
        );
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
        assert!(render(b"{}").expect("renders").starts_with(DECL.as_bytes()));
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
    fn numbers_keep_their_text_as_written() {
        assert_eq!(
            body_of(
                "[0, -7, 1.5, 1e100, 1E2, 19.990, -0, 18446744073709551615, \
                 -9223372036854775808, 12345678901234567890123, 0.1000000000000000055511151231257827]"
            ),
            "<payload><item>0</item><item>-7</item><item>1.5</item><item>1e100</item>\
             <item>1E2</item><item>19.990</item><item>-0</item>\
             <item>18446744073709551615</item><item>-9223372036854775808</item>\
             <item>12345678901234567890123</item>\
             <item>0.1000000000000000055511151231257827</item></payload>"
        );
    }

    #[test]
    fn a_repeated_key_is_kept_each_time_in_order() {
        assert_eq!(
            body_of(r#"{"dup": 1, "b": true, "dup": {"x": 2}, "dup": null}"#),
            r#"<payload><b>true</b><dup>1</dup><dup><x>2</x></dup><dup null="true"/></payload>"#
        );
    }

    #[test]
    fn line_breaks_and_tabs_read_back_as_written() {
        let xml = body_of(r#"{"s": "a\r\nb\rc\td", "k\ney": 1, "k\tey": 2, "k\rey": 3}"#);
        assert_eq!(
            xml,
            "<payload><entry key=\"k&#9;ey\">2</entry><entry key=\"k&#10;ey\">1</entry>\
             <entry key=\"k&#13;ey\">3</entry><s>a&#13;\nb&#13;c\td</s></payload>"
        );
        // What a parser reads: the keys and the text as they were.
        let mut reader = Reader::from_str(&xml);
        let (mut keys, mut texts) = (vec![], vec![]);
        loop {
            match reader.read_event().expect("well-formed") {
                Event::Start(e) => {
                    for attr in e.attributes() {
                        keys.push(attr.unwrap().unescape_value().unwrap().into_owned());
                    }
                }
                Event::Text(t) => texts.push(t.decode().unwrap().into_owned()),
                Event::GeneralRef(r) => {
                    let c = r
                        .resolve_char_ref()
                        .unwrap()
                        .expect("a character reference");
                    texts.push(c.to_string());
                }
                Event::Eof => break,
                _ => {}
            }
        }
        assert_eq!(keys, ["k\tey", "k\ney", "k\rey"]);
        assert_eq!(texts.concat(), "213a\r\nb\rc\td");
    }

    #[test]
    fn the_receivers_guide_shows_what_is_sent() {
        // docs/xml.md's example: its JSON block rendered is its XML block.
        let guide = include_str!("../../docs/xml.md");
        let block = |fence: &str| {
            let start = guide.find(fence).expect("the example") + fence.len();
            guide[start..].split("```").next().expect("a block").trim()
        };
        let payload = block("```json\n");
        let xml = String::from_utf8(render(payload.as_bytes()).expect("renders")).unwrap();
        assert_eq!(xml, block("```xml\n").replace('\n', ""));
    }

    #[test]
    fn a_payload_that_is_not_json_has_no_xml_form() {
        assert!(matches!(render(b"{\"a\": "), Err(XmlError::Json(_))));
        assert!(matches!(render(b"1 2"), Err(XmlError::Json(_))));
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
            br#"{"order_id": 42, "note": "<&>"}"#,
        )
        .expect("renders");
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
