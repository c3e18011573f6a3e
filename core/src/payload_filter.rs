//! Payload filters: which events a subscription receives, by what they say rather than by their
//! type. A filter is a JSON document in the operator language users know from Convoy and
//! Outpost, checked once when a subscription is written and evaluated by the agent when an event
//! is accepted, so an event a filter refuses creates no delivery at all.
//!
//! ```json
//! {"total": {"$gte": 100}, "currency": {"$in": ["EUR", "PLN"]},
//!  "$or": [{"customer.country": "PL"}, {"tags": "vip"}],
//!  "$attributes": {"source": {"$startsWith": "erp-"}}}
//! ```
//!
//! - Keys are the payload's fields; a dotted key (`customer.country`) reaches into nested
//!   objects, and through arrays of objects (`items.sku` is every item's `sku`). A nested object
//!   whose keys are fields (`{"customer": {"country": "PL"}}`) matches the same way.
//! - A plain value means `$eq`; an object of operators applies each of them (all must hold).
//! - Operators: `$eq $neq $gt $gte $lt $lte $in $nin $exist $startsWith $endsWith $not`.
//!   Comparisons work on numbers with numbers and on strings with strings, byte by byte (so
//!   RFC 3339 times in UTC written with the same precision compare as times); a number bound
//!   also orders a string that holds a decimal number, as money is often sent
//!   (`{"total": {"$gte": 100}}` matches `"total": "129.90"`). Integers compare exactly, also
//!   past 2^53 where floats skip whole numbers (`{"order_no": {"$gt": 9007199254740992}}`
//!   matches `9007199254740993`). A field holding an array matches when one of its elements does (`$eq`,
//!   `$in`, comparisons, prefixes); `$neq`, `$nin` and `$exist: false` are the negations of
//!   `$eq`, `$in` and `$exist: true`, so they also match a missing field.
//! - Logic at any level: `$and` and `$or` take a non-empty array of filters, `$not` one filter.
//! - `$attributes` (top level only) matches the event's attributes (strings) instead of its
//!   payload.
//!
//! Bounded: [`MAX_FILTER_BYTES`] of text, [`MAX_FILTER_DEPTH`] levels of nesting and
//! [`MAX_IN_VALUES`] values per `$in`/`$nin`.

use std::cmp::Ordering;
use std::collections::HashMap;

use serde_json::Value;

use crate::ValidationError;

/// The longest filter accepted, in bytes of JSON text.
pub const MAX_FILTER_BYTES: usize = 8 * 1024;
/// The deepest nesting of objects and arrays a filter may use.
pub const MAX_FILTER_DEPTH: usize = 8;
/// The most values one `$in` or `$nin` may list.
pub const MAX_IN_VALUES: usize = 256;

/// The field name callers know the filter by in errors.
const FIELD: &str = "payload_filter";

/// A checked payload filter, ready to evaluate.
#[derive(Debug, Clone)]
pub struct PayloadFilter {
    conditions: Vec<Condition>,
    /// The filter as compact JSON with sorted keys: what is stored and shown.
    canonical: String,
}

impl PartialEq for PayloadFilter {
    fn eq(&self, other: &Self) -> bool {
        self.canonical == other.canonical
    }
}

impl Eq for PayloadFilter {}

/// One condition of a filter object (the object's entries must all hold).
#[derive(Debug, Clone)]
enum Condition {
    /// A payload field (a path of names) and what its value must satisfy.
    Field { path: Vec<String>, test: FieldTest },
    /// Every filter holds.
    And(Vec<Vec<Condition>>),
    /// At least one filter holds.
    Or(Vec<Vec<Condition>>),
    /// The filter does not hold.
    Not(Vec<Condition>),
    /// The filter holds for the event's attributes.
    Attributes(Vec<Condition>),
}

/// What a field's value must satisfy.
#[derive(Debug, Clone)]
enum FieldTest {
    /// Every operator holds.
    Operators(Vec<Operator>),
    /// The value is an object (or an array holding one) for which these conditions hold.
    Nested(Vec<Condition>),
}

/// One operator applied to a field's value.
#[derive(Debug, Clone)]
enum Operator {
    Eq(Value),
    Neq(Value),
    Compare(Ordering, bool, Bound),
    In(Vec<Value>),
    Nin(Vec<Value>),
    Exist(bool),
    StartsWith(String),
    EndsWith(String),
    Not(Vec<Operator>),
}

/// The other side of `$gt`, `$gte`, `$lt` and `$lte`.
#[derive(Debug, Clone)]
enum Bound {
    Number(Number),
    Text(String),
}

/// A JSON number as written: integers are kept whole, so that ids and amounts in minor units
/// past 2^53 (where a float's steps grow past 1) compare exactly.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Number {
    Integer(i128),
    Float(f64),
}

impl Number {
    /// The number a JSON number holds; `None` for one that is not finite.
    fn of(n: &serde_json::Number) -> Option<Number> {
        if let Some(i) = n.as_i64() {
            Some(Number::Integer(i.into()))
        } else if let Some(u) = n.as_u64() {
            Some(Number::Integer(u.into()))
        } else {
            n.as_f64().filter(|f| f.is_finite()).map(Number::Float)
        }
    }

    /// How `self` orders against `other`, exactly even between an integer and a float.
    fn order(self, other: Number) -> Option<Ordering> {
        match (self, other) {
            (Number::Integer(a), Number::Integer(b)) => Some(a.cmp(&b)),
            (Number::Float(a), Number::Float(b)) => a.partial_cmp(&b),
            (Number::Integer(a), Number::Float(b)) => integer_against_float(a, b),
            (Number::Float(a), Number::Integer(b)) => {
                integer_against_float(b, a).map(Ordering::reverse)
            }
        }
    }
}

/// How integer `i` orders against float `f`, exactly. Rounding `i` to a float keeps the order
/// whenever the two differ after it; when they are equal, `f` is `i` rounded, which is a whole
/// number (floats past 2^53 all are, and below it `i` rounds to itself), so the whole numbers
/// are compared.
fn integer_against_float(i: i128, f: f64) -> Option<Ordering> {
    match (i as f64).partial_cmp(&f)? {
        Ordering::Equal => Some(i.cmp(&(f as i128))),
        unequal => Some(unequal),
    }
}

/// The operators a field's object may use, for error messages.
const OPERATORS: &str =
    "$eq, $neq, $gt, $gte, $lt, $lte, $in, $nin, $exist, $startsWith, $endsWith, $not";

impl PayloadFilter {
    /// Parses and checks a filter's JSON text; an empty text is no filter. Errors name the
    /// bad part as a path into the filter (`filter: total.$gte: …`).
    pub fn parse(text: &str) -> Result<Option<PayloadFilter>, ValidationError> {
        if text.trim().is_empty() {
            return Ok(None);
        }
        if text.len() > MAX_FILTER_BYTES {
            return Err(ValidationError::new(
                FIELD,
                format!(
                    "is {} bytes, larger than the limit of {MAX_FILTER_BYTES} bytes",
                    text.len()
                ),
            ));
        }
        let value: Value = serde_json::from_str(text).map_err(|e| {
            ValidationError::new(FIELD, format!("is not a valid JSON document: {e}"))
        })?;
        if depth(&value) > MAX_FILTER_DEPTH {
            return Err(ValidationError::new(
                FIELD,
                format!("nests deeper than {MAX_FILTER_DEPTH} levels"),
            ));
        }
        let conditions = parse_filter(&value, "", Level::Root)
            .map_err(|(at, reason)| ValidationError::new(FIELD, format!("{at}: {reason}")))?;
        Ok(Some(PayloadFilter {
            conditions,
            canonical: value.to_string(),
        }))
    }

    /// The filter as stored and shown: compact JSON, keys sorted.
    pub fn as_str(&self) -> &str {
        &self.canonical
    }

    /// Whether an event with this payload and these attributes passes.
    pub fn matches(&self, payload: &Value, attributes: &HashMap<String, String>) -> bool {
        all(&self.conditions, payload, attributes)
    }
}

/// Where a filter object sits: `$attributes` is allowed at the top only.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Level {
    Root,
    Inner,
}

/// A parse failure: where (a path into the filter) and why.
type Refusal = (String, String);

fn join(at: &str, key: &str) -> String {
    if at.is_empty() {
        key.to_owned()
    } else {
        format!("{at}.{key}")
    }
}

fn refuse(at: &str, reason: impl Into<String>) -> Refusal {
    let at = if at.is_empty() { "(top)" } else { at };
    (at.to_owned(), reason.into())
}

fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn parse_filter(value: &Value, at: &str, level: Level) -> Result<Vec<Condition>, Refusal> {
    let Value::Object(map) = value else {
        return Err(refuse(at, "must be an object of fields and operators"));
    };
    let mut conditions = Vec::with_capacity(map.len());
    for (key, value) in map {
        let here = join(at, key);
        let condition = match key.as_str() {
            "$and" | "$or" => {
                let Value::Array(items) = value else {
                    return Err(refuse(&here, "must be a non-empty array of filters"));
                };
                if items.is_empty() {
                    return Err(refuse(&here, "must be a non-empty array of filters"));
                }
                let filters = items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| parse_filter(item, &format!("{here}[{i}]"), level))
                    .collect::<Result<Vec<_>, _>>()?;
                if key == "$and" {
                    Condition::And(filters)
                } else {
                    Condition::Or(filters)
                }
            }
            "$not" => Condition::Not(parse_filter(value, &here, level)?),
            "$attributes" if level == Level::Root => {
                Condition::Attributes(parse_filter(value, &here, Level::Inner)?)
            }
            "$attributes" => return Err(refuse(&here, "is allowed at the top level only")),
            other if other.starts_with('$') => {
                return Err(refuse(
                    &here,
                    "unknown operator here (a filter object takes fields, $and, $or, $not and $attributes)",
                ));
            }
            field => {
                if field.is_empty() || field.split('.').any(str::is_empty) {
                    return Err(refuse(&here, "is not a field name"));
                }
                let path = field.split('.').map(str::to_owned).collect();
                Condition::Field {
                    path,
                    test: parse_field_test(value, &here)?,
                }
            }
        };
        conditions.push(condition);
    }
    Ok(conditions)
}

fn parse_field_test(value: &Value, at: &str) -> Result<FieldTest, Refusal> {
    match value {
        Value::Object(map) if !map.is_empty() && is_filter_object(map) => {
            if map.keys().any(|k| k.starts_with('$') && !is_filter_key(k)) {
                return Err(refuse(
                    at,
                    "mixes operators and fields (write one or the other)",
                ));
            }
            Ok(FieldTest::Nested(parse_filter(value, at, Level::Inner)?))
        }
        Value::Object(map) if !map.is_empty() => {
            Ok(FieldTest::Operators(parse_operators(value, at)?))
        }
        plain => Ok(FieldTest::Operators(vec![Operator::Eq(plain.clone())])),
    }
}

/// Whether a field's object is a filter on the object the field holds (it names a field, or
/// combines filters with `$and`, `$or` or a `$not` of a filter) rather than operators on the
/// field's value.
fn is_filter_object(map: &serde_json::Map<String, Value>) -> bool {
    map.iter().any(|(key, value)| match key.as_str() {
        "$and" | "$or" | "$attributes" => true,
        "$not" => matches!(value, Value::Object(inner) if is_filter_object(inner)),
        other => !other.starts_with('$'),
    })
}

/// The `$` keys a filter object (not an operator object) may hold.
fn is_filter_key(key: &str) -> bool {
    matches!(key, "$and" | "$or" | "$not" | "$attributes")
}

fn parse_operators(value: &Value, at: &str) -> Result<Vec<Operator>, Refusal> {
    let Value::Object(map) = value else {
        return Err(refuse(
            at,
            format!("must be an object of operators ({OPERATORS})"),
        ));
    };
    if map.is_empty() {
        return Err(refuse(at, format!("must name an operator ({OPERATORS})")));
    }
    map.iter()
        .map(|(op, operand)| {
            let here = join(at, op);
            let text = |what: &str| match operand {
                Value::String(s) => Ok(s.clone()),
                _ => Err(refuse(&here, format!("must be a string ({what})"))),
            };
            let list = || match operand {
                Value::Array(items) if items.len() <= MAX_IN_VALUES => Ok(items.clone()),
                Value::Array(_) => Err(refuse(
                    &here,
                    format!("lists more than {MAX_IN_VALUES} values"),
                )),
                _ => Err(refuse(&here, "must be an array of values")),
            };
            let bound = || match operand {
                Value::Number(n) => Number::of(n)
                    .map(Bound::Number)
                    .ok_or_else(|| refuse(&here, "is not a finite number")),
                Value::String(s) => Ok(Bound::Text(s.clone())),
                _ => Err(refuse(&here, "must be a number or a string")),
            };
            Ok(match op.as_str() {
                "$eq" => Operator::Eq(operand.clone()),
                "$neq" => Operator::Neq(operand.clone()),
                "$gt" => Operator::Compare(Ordering::Greater, false, bound()?),
                "$gte" => Operator::Compare(Ordering::Greater, true, bound()?),
                "$lt" => Operator::Compare(Ordering::Less, false, bound()?),
                "$lte" => Operator::Compare(Ordering::Less, true, bound()?),
                "$in" => Operator::In(list()?),
                "$nin" => Operator::Nin(list()?),
                "$exist" => match operand {
                    Value::Bool(b) => Operator::Exist(*b),
                    _ => return Err(refuse(&here, "must be true or false")),
                },
                "$startsWith" => Operator::StartsWith(text("the prefix")?),
                "$endsWith" => Operator::EndsWith(text("the suffix")?),
                "$not" => Operator::Not(parse_operators(operand, &here)?),
                _ => {
                    return Err(refuse(
                        &here,
                        format!(
                            "unknown operator (a field takes {OPERATORS}; $and and $or combine \
                             whole filters, beside the fields)"
                        ),
                    ));
                }
            })
        })
        .collect()
}

fn all(conditions: &[Condition], doc: &Value, attributes: &HashMap<String, String>) -> bool {
    conditions
        .iter()
        .all(|condition| holds(condition, doc, attributes))
}

fn holds(condition: &Condition, doc: &Value, attributes: &HashMap<String, String>) -> bool {
    match condition {
        Condition::And(filters) => filters.iter().all(|f| all(f, doc, attributes)),
        Condition::Or(filters) => filters.iter().any(|f| all(f, doc, attributes)),
        Condition::Not(filter) => !all(filter, doc, attributes),
        Condition::Attributes(filter) => {
            let attributes_doc = Value::Object(
                attributes
                    .iter()
                    .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                    .collect(),
            );
            all(filter, &attributes_doc, attributes)
        }
        Condition::Field { path, test } => {
            let mut found = Vec::new();
            resolve(doc, path, &mut found);
            match test {
                FieldTest::Operators(operators) => {
                    operators.iter().all(|op| operator_holds(op, &found))
                }
                FieldTest::Nested(filter) => candidates(&found)
                    .any(|value| value.is_object() && all(filter, value, attributes)),
            }
        }
    }
}

/// The values at `path` below `doc`: arrays met on the way are stepped through, so `items.sku`
/// finds the `sku` of every item.
fn resolve<'a>(doc: &'a Value, path: &[String], found: &mut Vec<&'a Value>) {
    let Some((first, rest)) = path.split_first() else {
        found.push(doc);
        return;
    };
    match doc {
        Value::Object(map) => {
            if let Some(value) = map.get(first) {
                resolve(value, rest, found);
            }
        }
        Value::Array(items) => {
            for item in items {
                if item.is_object() {
                    resolve(item, path, found);
                }
            }
        }
        _ => {}
    }
}

/// The values an operator looks at: each value found, and the elements of those that are
/// arrays.
fn candidates<'a>(found: &'a [&'a Value]) -> impl Iterator<Item = &'a Value> {
    found.iter().flat_map(|value| {
        let elements = match value {
            Value::Array(items) => items.as_slice(),
            _ => &[],
        };
        std::iter::once(*value).chain(elements.iter())
    })
}

fn operator_holds(op: &Operator, found: &[&Value]) -> bool {
    match op {
        Operator::Eq(expected) => candidates(found).any(|v| same(v, expected)),
        Operator::Neq(expected) => !candidates(found).any(|v| same(v, expected)),
        Operator::In(list) => candidates(found).any(|v| list.iter().any(|e| same(v, e))),
        Operator::Nin(list) => !candidates(found).any(|v| list.iter().any(|e| same(v, e))),
        Operator::Exist(wanted) => found.is_empty() != *wanted,
        Operator::Compare(side, or_equal, bound) => candidates(found).any(|v| {
            compare(v, bound).is_some_and(|o| o == *side || (*or_equal && o == Ordering::Equal))
        }),
        Operator::StartsWith(prefix) => {
            candidates(found).any(|v| v.as_str().is_some_and(|s| s.starts_with(prefix.as_str())))
        }
        Operator::EndsWith(suffix) => {
            candidates(found).any(|v| v.as_str().is_some_and(|s| s.ends_with(suffix.as_str())))
        }
        Operator::Not(operators) => !operators.iter().all(|op| operator_holds(op, found)),
    }
}

/// JSON equality with numbers compared by value (`100` equals `100.0`).
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (Number::of(x), Number::of(y)) {
            (Some(x), Some(y)) => x.order(y) == Some(Ordering::Equal),
            _ => false,
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|other| same(v, other)))
        }
        _ => a == b,
    }
}

/// How `value` orders against `bound`, when they are of one kind (numbers or strings), or
/// when a number bound meets a string holding a decimal number (money sent as `"129.90"`).
fn compare(value: &Value, bound: &Bound) -> Option<Ordering> {
    match (value, bound) {
        (Value::Number(n), Bound::Number(b)) => Number::of(n)?.order(*b),
        (Value::String(s), Bound::Number(b)) => decimal(s)?.order(*b),
        (Value::String(s), Bound::Text(b)) => Some(s.as_str().cmp(b.as_str())),
        _ => None,
    }
}

/// The number a string such as `"129.90"` or `"-5"` writes: digits, with an optional sign and
/// fraction, nothing else (no exponent, no spaces); `None` for any other string. Whole numbers
/// are kept whole, as JSON integers are.
fn decimal(text: &str) -> Option<Number> {
    const MAX_DIGITS: usize = 40;
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let (whole, fraction) = match unsigned.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (unsigned, None),
    };
    let digits = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
    if unsigned.len() > MAX_DIGITS || !digits(whole) || !fraction.is_none_or(digits) {
        return None;
    }
    match fraction {
        // Up to 39 digits fit an i128; longer whole numbers are read as floats.
        None => text
            .parse()
            .map(Number::Integer)
            .or_else(|_| text.parse().map(Number::Float))
            .ok(),
        Some(_) => text.parse().ok().map(Number::Float),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_decimal_strings_read_as_numbers() {
        for (text, number) in [
            ("129.90", Number::Float(129.9)),
            ("-5", Number::Integer(-5)),
            ("0.5", Number::Float(0.5)),
            ("007", Number::Integer(7)),
            ("9007199254740993", Number::Integer(9_007_199_254_740_993)),
        ] {
            assert_eq!(decimal(text), Some(number), "{text}");
        }
        for text in [
            "",
            "-",
            ".5",
            "5.",
            "1e3",
            " 1",
            "1 ",
            "+1",
            "inf",
            "NaN",
            "1.2.3",
            "0x10",
            "1_000",
            &"9".repeat(41),
        ] {
            assert_eq!(decimal(text), None, "{text}");
        }
    }

    const ORDER: &str = r#"{
        "id": "ord_1", "total": 149.5, "quantity": 3, "currency": "EUR", "net": "129.90",
        "status": "paid", "created_at": "2026-12-05T10:00:00Z",
        "tags": ["vip", "b2b"],
        "customer": {"country": "PL", "email": "jan@shop.example", "vat_id": null},
        "items": [{"sku": "A-1", "qty": 1}, {"sku": "B-2", "qty": 2}]
    }"#;

    fn matches(filter: &str) -> bool {
        let attributes = HashMap::from([
            ("source".to_owned(), "erp-warsaw".to_owned()),
            ("channel".to_owned(), "web".to_owned()),
        ]);
        let payload: Value = serde_json::from_str(ORDER).expect("payload");
        PayloadFilter::parse(filter)
            .unwrap_or_else(|e| panic!("{filter}: {e}"))
            .expect("a filter")
            .matches(&payload, &attributes)
    }

    #[test]
    fn integers_past_a_floats_precision_compare_exactly() {
        let payload = serde_json::json!({
            "order_no": 9_007_199_254_740_993_u64,
            "largest": u64::MAX,
            "smallest": i64::MIN,
            "reference": "9007199254740993",
            "quantity": 3,
        });
        let cases: &[(&str, bool)] = &[
            (r#"{"order_no": 9007199254740993}"#, true),
            (r#"{"order_no": 9007199254740992}"#, false),
            (r#"{"order_no": {"$gt": 9007199254740992}}"#, true),
            (r#"{"order_no": {"$lte": 9007199254740992}}"#, false),
            (r#"{"order_no": {"$in": [9007199254740992, 1]}}"#, false),
            (r#"{"order_no": {"$nin": [9007199254740992]}}"#, true),
            // A float is the number it holds: 2^53 exactly, one less than the order's.
            (r#"{"order_no": 9007199254740992.0}"#, false),
            (r#"{"order_no": {"$gt": 9007199254740992.0}}"#, true),
            (r#"{"order_no": {"$lt": 9007199254740994.0}}"#, true),
            (r#"{"largest": 18446744073709551615}"#, true),
            (r#"{"largest": 18446744073709551614}"#, false),
            (r#"{"largest": {"$gt": 18446744073709551614}}"#, true),
            (r#"{"smallest": {"$lt": -9223372036854775807}}"#, true),
            (r#"{"smallest": {"$lt": -9223372036854775808}}"#, false),
            (r#"{"reference": {"$gt": 9007199254740992}}"#, true),
            (r#"{"reference": {"$gte": 9007199254740994}}"#, false),
            (r#"{"quantity": 3.0}"#, true),
            (r#"{"quantity": {"$gt": 2.5, "$lt": 3.5}}"#, true),
        ];
        let mut wrong = Vec::new();
        for (filter, expected) in cases {
            let got = PayloadFilter::parse(filter)
                .unwrap_or_else(|e| panic!("{filter}: {e}"))
                .expect("a filter")
                .matches(&payload, &HashMap::new());
            if got != *expected {
                wrong.push(format!("{filter}: expected {expected}, got {got}"));
            }
        }
        assert!(wrong.is_empty(), "{wrong:#?}");
    }

    #[test]
    fn an_integer_orders_against_a_float_exactly() {
        let two_to_63 = 1_i128 << 63;
        for (i, f, expected) in [
            (two_to_63, 9.223_372_036_854_776e18, Ordering::Equal),
            (two_to_63 + 1, 9.223_372_036_854_776e18, Ordering::Greater),
            (two_to_63 - 1, 9.223_372_036_854_776e18, Ordering::Less),
            (3, 2.5, Ordering::Greater),
            (-3, -2.5, Ordering::Less),
            (0, -0.0, Ordering::Equal),
            (i128::from(u64::MAX), 1e300, Ordering::Less),
        ] {
            assert_eq!(
                Number::Integer(i).order(Number::Float(f)),
                Some(expected),
                "{i} against {f}"
            );
            assert_eq!(
                Number::Float(f).order(Number::Integer(i)),
                Some(expected.reverse()),
                "{f} against {i}"
            );
        }
    }

    #[test]
    fn every_operator_against_a_table_of_cases() {
        let cases: &[(&str, bool)] = &[
            // Plain values and $eq.
            (r#"{"status": "paid"}"#, true),
            (r#"{"status": "refunded"}"#, false),
            (r#"{"status": {"$eq": "paid"}}"#, true),
            (r#"{"quantity": 3.0}"#, true),
            (r#"{"missing": null}"#, false),
            (r#"{"customer.vat_id": null}"#, true),
            // $neq, also true for a missing field.
            (r#"{"status": {"$neq": "refunded"}}"#, true),
            (r#"{"status": {"$neq": "paid"}}"#, false),
            (r#"{"missing": {"$neq": "x"}}"#, true),
            // Comparisons: numbers with numbers, strings with strings.
            (r#"{"total": {"$gt": 149}}"#, true),
            (r#"{"total": {"$gt": 149.5}}"#, false),
            (r#"{"total": {"$gte": 149.5}}"#, true),
            (r#"{"total": {"$lt": 100}}"#, false),
            (r#"{"total": {"$lte": 149.5}}"#, true),
            (r#"{"total": {"$gte": 100, "$lt": 150}}"#, true),
            (r#"{"total": {"$gte": 100, "$lt": 120}}"#, false),
            (r#"{"total": {"$gt": "100"}}"#, false),
            // A number bound orders a decimal string; other strings never match it.
            (r#"{"net": {"$gte": 100}}"#, true),
            (r#"{"net": {"$lt": 129.9}}"#, false),
            (r#"{"net": {"$lte": 129.9, "$gt": 129}}"#, true),
            (r#"{"net": {"$gt": "13"}}"#, false),
            (r#"{"status": {"$gt": 0}}"#, false),
            (r#"{"id": {"$lt": 0}}"#, false),
            (r#"{"created_at": {"$gte": "2026-12-01T00:00:00Z"}}"#, true),
            (r#"{"created_at": {"$lt": "2026-12-01T00:00:00Z"}}"#, false),
            // $in and $nin.
            (r#"{"currency": {"$in": ["EUR", "PLN"]}}"#, true),
            (r#"{"currency": {"$in": ["USD"]}}"#, false),
            (r#"{"currency": {"$nin": ["USD", "GBP"]}}"#, true),
            (r#"{"currency": {"$nin": ["EUR"]}}"#, false),
            (r#"{"missing": {"$nin": ["EUR"]}}"#, true),
            // $exist.
            (r#"{"customer.email": {"$exist": true}}"#, true),
            (r#"{"customer.phone": {"$exist": true}}"#, false),
            (r#"{"customer.phone": {"$exist": false}}"#, true),
            (r#"{"customer.vat_id": {"$exist": true}}"#, true),
            // $startsWith and $endsWith.
            (r#"{"id": {"$startsWith": "ord_"}}"#, true),
            (r#"{"id": {"$startsWith": "inv_"}}"#, false),
            (
                r#"{"customer.email": {"$endsWith": "@shop.example"}}"#,
                true,
            ),
            (r#"{"quantity": {"$startsWith": "3"}}"#, false),
            // Arrays match when they contain the value.
            (r#"{"tags": "vip"}"#, true),
            (r#"{"tags": "retail"}"#, false),
            (r#"{"tags": ["vip", "b2b"]}"#, true),
            (r#"{"tags": {"$in": ["retail", "b2b"]}}"#, true),
            (r#"{"tags": {"$neq": "vip"}}"#, false),
            (r#"{"tags": {"$nin": ["retail"]}}"#, true),
            (r#"{"items.sku": "B-2"}"#, true),
            (r#"{"items.qty": {"$gte": 2}}"#, true),
            (r#"{"items.qty": {"$gt": 2}}"#, false),
            (r#"{"items": {"sku": "A-1", "qty": 1}}"#, true),
            (r#"{"items": {"sku": "A-1", "qty": 2}}"#, false),
            // Nested objects.
            (r#"{"customer": {"country": "PL"}}"#, true),
            (r#"{"customer": {"country": {"$in": ["DE", "CZ"]}}}"#, false),
            // Logic.
            (
                r#"{"$or": [{"status": "refunded"}, {"total": {"$gt": 100}}]}"#,
                true,
            ),
            (
                r#"{"$or": [{"status": "refunded"}, {"total": {"$gt": 200}}]}"#,
                false,
            ),
            (
                r#"{"$and": [{"status": "paid"}, {"currency": "EUR"}]}"#,
                true,
            ),
            (
                r#"{"$and": [{"status": "paid"}, {"currency": "USD"}]}"#,
                false,
            ),
            (r#"{"$not": {"status": "paid"}}"#, false),
            (r#"{"$not": {"status": "refunded"}}"#, true),
            (r#"{"total": {"$not": {"$gte": 200}}}"#, true),
            (r#"{"total": {"$not": {"$gte": 100}}}"#, false),
            (
                r#"{"customer": {"$or": [{"country": "DE"}, {"country": "PL"}]}}"#,
                true,
            ),
            // Attributes.
            (
                r#"{"$attributes": {"source": {"$startsWith": "erp-"}}}"#,
                true,
            ),
            (r#"{"$attributes": {"channel": "pos"}}"#, false),
            (
                r#"{"$or": [{"$attributes": {"channel": "pos"}}, {"status": "paid"}]}"#,
                true,
            ),
            (r#"{"$attributes": {"status": {"$exist": true}}}"#, false),
            // Every entry must hold.
            (r#"{"status": "paid", "currency": "USD"}"#, false),
            (r#"{}"#, true),
        ];
        for (filter, expected) in cases {
            assert_eq!(matches(filter), *expected, "{filter}");
        }
    }

    #[test]
    fn payloads_that_are_not_objects_have_no_fields() {
        let filter = PayloadFilter::parse(r#"{"a": {"$exist": false}}"#)
            .expect("valid")
            .expect("a filter");
        assert!(filter.matches(&Value::from(42), &HashMap::new()));
        let filter = PayloadFilter::parse(r#"{"a": 1}"#)
            .expect("valid")
            .expect("a filter");
        assert!(!filter.matches(&serde_json::json!([{"a": 2}]), &HashMap::new()));
    }

    #[test]
    fn bad_filters_are_refused_naming_the_bad_part() {
        let cases: &[(&str, &str)] = &[
            (
                r#"{"total": {"$gtx": 1}}"#,
                "payload_filter: total.$gtx: unknown operator",
            ),
            (
                r#"{"$nor": []}"#,
                "payload_filter: $nor: unknown operator here",
            ),
            (
                r#"{"total": {"$gte": true}}"#,
                "payload_filter: total.$gte: must be a number or a string",
            ),
            (
                r#"{"a": {"$in": "x"}}"#,
                "payload_filter: a.$in: must be an array of values",
            ),
            (
                r#"{"a": {"$exist": 1}}"#,
                "payload_filter: a.$exist: must be true or false",
            ),
            (
                r#"{"a": {"$startsWith": 1}}"#,
                "payload_filter: a.$startsWith: must be a string",
            ),
            (
                r#"{"$or": []}"#,
                "payload_filter: $or: must be a non-empty array of filters",
            ),
            (
                r#"{"$and": {"a": 1}}"#,
                "payload_filter: $and: must be a non-empty array of filters",
            ),
            (
                r#"{"$or": [{"a": 1}, 2]}"#,
                "payload_filter: $or[1]: must be an object",
            ),
            (
                r#"{"c": {"$attributes": {"a": "b"}}}"#,
                "payload_filter: c.$attributes: is allowed at the top level only",
            ),
            (
                r#"{"c": {"$eq": 1, "d": 2}}"#,
                "payload_filter: c: mixes operators and fields",
            ),
            (
                r#"{"a..b": 1}"#,
                "payload_filter: a..b: is not a field name",
            ),
            (r#"[1]"#, "payload_filter: (top): must be an object"),
            (r#"{"a": "#, "payload_filter: is not a valid JSON document"),
        ];
        for (filter, expected) in cases {
            let err = PayloadFilter::parse(filter).expect_err(filter).to_string();
            assert!(err.starts_with(expected), "{filter}: {err}");
        }
    }

    #[test]
    fn filters_are_bounded() {
        let deep = format!("{}1{}", r#"{"a":"#.repeat(9), "}".repeat(9));
        let err = PayloadFilter::parse(&deep).expect_err("too deep");
        assert_eq!(
            err.reason,
            format!("nests deeper than {MAX_FILTER_DEPTH} levels")
        );
        let long = format!(r#"{{"a": "{}"}}"#, "x".repeat(MAX_FILTER_BYTES));
        assert!(
            PayloadFilter::parse(&long)
                .expect_err("too long")
                .reason
                .contains("larger than")
        );
        let many: Vec<u32> = (0..=MAX_IN_VALUES as u32).collect();
        let wide = serde_json::json!({"a": {"$in": many}}).to_string();
        assert!(
            PayloadFilter::parse(&wide)
                .expect_err("too wide")
                .reason
                .contains("more than")
        );
    }

    #[test]
    fn the_stored_form_is_canonical_and_empty_means_none() {
        let filter = PayloadFilter::parse("{ \"b\" : 1,\n \"a\": {\"$gte\": 2} }")
            .expect("valid")
            .expect("a filter");
        assert_eq!(filter.as_str(), r#"{"a":{"$gte":2},"b":1}"#);
        assert_eq!(PayloadFilter::parse("").expect("empty"), None);
        assert_eq!(PayloadFilter::parse("  ").expect("blank"), None);
    }
}
