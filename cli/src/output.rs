//! How results are printed: a table for people (`-o table`, the default), or JSON or YAML for
//! scripts (`-o json`, `-o yaml`). Each resource turns itself into a JSON value once; the
//! other forms are built from it.
//!
//! Every write can fail, and says how ([`OutputError`]): a reader that went away
//! (`herald deliveries list | head -1`) is [`OutputError::Closed`], which ends the command
//! quietly with exit code 0, as a Unix filter ends; no write ever panics.

use std::fmt::Write as _;
use std::io::Write as _;

use herald_core::subscription::{DEFAULT_DISABLE_AFTER, DEFAULT_MAX_IN_FLIGHT, DEFAULT_TIMEOUT};
use herald_proto::convert::{std_duration, system_time};
use herald_proto::v1 as pb;
use serde_json::{Value, json};

/// Why output could not be written.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The reader of standard output closed it (a pipe into `head`): nothing more is wanted.
    #[error("standard output was closed")]
    Closed,
    /// Writing failed otherwise (a full disk under a redirect).
    #[error("writing standard output")]
    Io(#[source] std::io::Error),
}

/// Writes `text` to standard output as it is.
pub fn write(text: &str) -> Result<(), OutputError> {
    write_bytes(text.as_bytes())
}

/// Writes `bytes` to standard output as they are (a request body, byte for byte).
pub fn write_bytes(bytes: &[u8]) -> Result<(), OutputError> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(|err| match err.kind() {
            std::io::ErrorKind::BrokenPipe => OutputError::Closed,
            _ => OutputError::Io(err),
        })
}

/// `bytes` as a terminal may show them: control characters (escape sequences could move the
/// cursor, retitle the window or rewrite what was shown) written as `\x1b`, except newlines,
/// tabs and the carriage return of a CRLF; C1 controls (U+0080 to U+009F) too.
pub(crate) fn terminal_safe(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        let crlf = b == b'\r' && bytes.get(i + 1) == Some(&b'\n');
        let c1 = b == 0xc2 && bytes.get(i + 1).is_some_and(|n| (0x80..=0x9f).contains(n));
        if c1 {
            out.extend_from_slice(format!("\\u{{{:04x}}}", bytes[i + 1]).as_bytes());
            i += 2;
            continue;
        }
        if (b < 0x20 && b != b'\n' && b != b'\t' && !crlf) || b == 0x7f {
            out.extend_from_slice(format!("\\x{b:02x}").as_bytes());
        } else {
            out.push(b);
        }
        i += 1;
    }
    out
}

/// Writes a line to standard error, for progress and messages beside the output (which may
/// quote a server: its control characters are shown, not obeyed). Standard error that cannot
/// be written is no reason to fail a command, so errors are dropped.
pub fn note(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(&terminal_safe(text.as_bytes()));
    let _ = writeln!(err);
}

/// The output style.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Style {
    /// Aligned columns (a stream, such as `deliveries tail`: columns two spaces apart).
    Table,
    /// One JSON document (a stream: one compact JSON object a line).
    Json,
    /// One YAML document (a stream: one document per item, each after `---`).
    Yaml,
}

/// How to print: the style, and whether tables have a header line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Format {
    /// The style.
    pub style: Style,
    /// Print the header line of tables.
    pub headers: bool,
}

/// Prints one item of a stream: a compact JSON line, a YAML document (`---` first), or its
/// `columns` separated by two spaces.
pub fn line(format: Format, value: &Value, columns: &[&str]) -> Result<(), OutputError> {
    write(&match format.style {
        Style::Json => format!("{value}\n"),
        Style::Yaml => format!("---\n{}", yaml(value)),
        Style::Table => {
            let cells: Vec<String> = columns.iter().map(|c| cell(&value[*c])).collect();
            format!("{}\n", cells.join("  "))
        }
    })
}

/// Prints one object: JSON, YAML, or `key: value` lines.
pub fn object(format: Format, value: &Value) -> Result<(), OutputError> {
    write(&match format.style {
        Style::Json => format!("{}\n", pretty(value)),
        Style::Yaml => yaml(value),
        Style::Table => {
            let mut text = String::new();
            if let Value::Object(map) = value {
                let width = map.keys().map(String::len).max().unwrap_or(0);
                for (key, value) in map {
                    match value {
                        // A list of records (a subscription's secrets): one a line.
                        Value::Array(items) if items.iter().any(Value::is_object) => {
                            let mut lines = items.iter().map(cell);
                            let first = lines.next().unwrap_or_default();
                            let _ = writeln!(text, "{key:width$}  {first}");
                            for line in lines {
                                let _ = writeln!(text, "{:width$}  {line}", "");
                            }
                        }
                        value => {
                            let _ = writeln!(text, "{key:width$}  {}", cell(value));
                        }
                    }
                }
            }
            text
        }
    })
}

/// Prints a list: a JSON array (under `key`, with `next_page_token` when given), or a table of
/// `columns`.
pub fn list(
    format: Format,
    key: &str,
    items: &[Value],
    columns: &[&str],
    next_page_token: &str,
) -> Result<(), OutputError> {
    match format.style {
        Style::Json | Style::Yaml => {
            let mut doc = json!({ key: items });
            if !next_page_token.is_empty() {
                doc["next_page_token"] = json!(next_page_token);
            }
            if format.style == Style::Json {
                write(&format!("{}\n", pretty(&doc)))
            } else {
                write(&yaml(&doc))
            }
        }
        Style::Table => {
            let rows: Vec<Vec<String>> = items
                .iter()
                .map(|item| columns.iter().map(|c| cell(&item[*c])).collect())
                .collect();
            let widths: Vec<usize> = columns
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    rows.iter()
                        .map(|r| r[i].chars().count())
                        .chain([c.len()])
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            let mut text = String::new();
            let mut line = |cells: Vec<String>| {
                let parts: Vec<String> = cells
                    .iter()
                    .zip(&widths)
                    .map(|(c, w)| format!("{c:w$}"))
                    .collect();
                let _ = writeln!(text, "{}", parts.join("  ").trim_end());
            };
            if format.headers {
                line(columns.iter().map(|c| c.to_uppercase()).collect());
            }
            for row in rows {
                line(row);
            }
            write(&text)?;
            // Beside the rows, not among them: a script reading rows never reads it.
            if !next_page_token.is_empty() {
                note(&format!("(more: --page-token {next_page_token})"));
            }
            Ok(())
        }
    }
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

fn yaml(value: &Value) -> String {
    // A JSON value always has a YAML form; the fallback only guards the impossible.
    serde_yaml_ng::to_string(value).unwrap_or_else(|_| format!("{value}\n"))
}

/// A value as a table cell: `-` for nothing, lists joined by commas, a record as its fields
/// (`secret: whsec_…, expires_at: 2026-…`) without the empty ones.
fn cell(value: &Value) -> String {
    match value {
        Value::Null => "-".into(),
        Value::String(s) if s.is_empty() => "-".into(),
        Value::String(s) => shown(s),
        Value::Array(items) if items.iter().any(Value::is_object) => {
            items.iter().map(cell).collect::<Vec<_>>().join("; ")
        }
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(","),
        Value::Object(map) => map
            .iter()
            .filter(|(_, v)| !v.is_null() && v.as_str() != Some(""))
            .map(|(k, v)| format!("{k}: {}", cell(v)))
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

/// Text from the server as a terminal may show it: a control character (an escape sequence a
/// receiver's answer or an agent's report carried, a line break that would split a row) shows
/// as `\u{fffd}` instead of being obeyed. JSON and YAML output, for programs, keep the text as
/// it is (JSON escapes C0 controls; C1 controls and DEL pass as they are).
fn shown(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

/// RFC 3339 text of a wire timestamp.
pub fn time(ts: Option<&herald_proto::prost_types::Timestamp>) -> Value {
    ts.map_or(Value::Null, |ts| {
        json!(humantime::format_rfc3339_millis(system_time(ts)).to_string())
    })
}

/// A subscription; secrets only when `show_secrets` (and only where the server sent them).
pub fn subscription(sub: &pb::Subscription, show_secrets: bool) -> Value {
    let format = herald_proto::words::format(sub.format);
    let retry = herald_proto::convert::retry_schedule(sub.retry.as_ref())
        .map(|s| s.to_string())
        .unwrap_or_default();
    let mut value = json!({
        "id": sub.id,
        "tenant": sub.tenant,
        "url": sub.url,
        "events": sub.event_types,
        // The payload filter as the JSON it is (stored canonical); none: every event.
        "filter": (!sub.payload_filter.is_empty()).then(|| {
            serde_json::from_str::<Value>(&sub.payload_filter)
                .unwrap_or_else(|_| Value::from(sub.payload_filter.clone()))
        }),
        "format": format,
        "envelope": herald_proto::words::envelope(sub.envelope),
        "enabled": sub.enabled,
        "disabled_reason": sub.disabled_reason,
        "description": sub.description,
        // Values blanked by the server (no --show-secret) show as hidden, not as empty.
        "headers": sub
            .headers
            .iter()
            .map(|(name, value)| {
                let shown = if sub.header_values_hidden && value.is_empty() {
                    "(hidden: --show-secret)"
                } else {
                    value.as_str()
                };
                (name.clone(), Value::from(shown))
            })
            .collect::<serde_json::Map<_, _>>(),
        "labels": sub
            .labels
            .iter()
            .collect::<std::collections::BTreeMap<_, _>>(),
        "timeout": humantime::format_duration(
            sub.timeout.as_ref().and_then(std_duration).unwrap_or(DEFAULT_TIMEOUT)
        ).to_string(),
        "retry_schedule": retry,
        "regions": sub.regions,
        "retry_exponential": sub
            .retry
            .as_ref()
            .and_then(|r| r.exponential.as_ref())
            .and_then(|e| herald_proto::convert::exponential_backoff(e).ok())
            .map(|e| e.to_string()),
        "max_in_flight": if sub.max_in_flight == 0 { DEFAULT_MAX_IN_FLIGHT as u32 } else { sub.max_in_flight },
        "rate_limit": sub.rate_limit,
        "disable_after": if sub.disable_after == 0 { DEFAULT_DISABLE_AFTER } else { sub.disable_after },
        "disable_min_failing": sub
            .disable_min_failing
            .as_ref()
            .and_then(std_duration)
            .map(|d| humantime::format_duration(d).to_string()),
        "trace_context": sub.send_trace_context,
        "egress": herald_proto::words::egress(sub),
        "client_cert_expires_at": time(sub.client_cert_expires_at.as_ref()),
        "oauth2": sub.oauth2.as_ref().map(|o| json!({
            "token_url": o.token_url,
            "client_id": o.client_id,
            "scope": o.scope,
            "audience": o.audience,
        })),
        "signature": herald_proto::words::signature(sub.signature_scheme),
        "revision": sub.revision,
        "created_at": time(sub.created_at.as_ref()),
        "updated_at": time(sub.updated_at.as_ref()),
    });
    // Public keys are not secret: receivers of v1a signatures need them to verify.
    let public_keys: Vec<&str> = sub
        .secrets
        .iter()
        .map(|s| s.public_key.as_str())
        .filter(|k| !k.is_empty())
        .collect();
    if !public_keys.is_empty() {
        value["public_keys"] = json!(public_keys);
    }
    if show_secrets {
        if let Some(oauth2) = sub.oauth2.as_ref().filter(|o| !o.client_secret.is_empty()) {
            value["oauth2"]["client_secret"] = json!(oauth2.client_secret);
        }
        if let Some(current) = sub.secrets.first().filter(|s| !s.secret.is_empty()) {
            value["secret"] = json!(current.secret);
        }
        value["secrets"] = sub
            .secrets
            .iter()
            .filter(|s| !s.secret.is_empty())
            .map(|s| json!({"secret": s.secret, "expires_at": time(s.expires_at.as_ref())}))
            .collect();
    }
    value
}

/// A duration in milliseconds, as text (`12.3 ms`).
fn millis(d: Option<&herald_proto::prost_types::Duration>) -> Value {
    d.and_then(std_duration).map_or(Value::Null, |d| {
        json!(format!("{:.1} ms", d.as_secs_f64() * 1000.0))
    })
}

/// An endpoint's health record.
pub fn health(h: &pb::SubscriptionHealth) -> Value {
    json!({
        "subscription": h.subscription_id,
        "consecutive_failures": h.consecutive_failures,
        "failing_since": time(h.failing_since.as_ref()),
        "last_failure_at": time(h.last_failure_at.as_ref()),
        "last_error": h.last_error,
        "last_success_at": time(h.last_success_at.as_ref()),
        "recent_attempts": h.recent_attempts,
        "recent_since": time(h.recent_since.as_ref()),
        "success_rate": if h.recent_attempts == 0 {
            Value::Null
        } else {
            json!(format!("{:.1}%", h.success_rate * 100.0))
        },
        "latency_p50": millis(h.latency_p50.as_ref()),
        "latency_p99": millis(h.latency_p99.as_ref()),
    })
}

/// An attempt.
pub fn attempt(a: &pb::Attempt) -> Value {
    let outcome = herald_proto::words::outcome(a.outcome);
    let duration_ms = a
        .duration
        .as_ref()
        .and_then(std_duration)
        .map_or(0, |d| d.as_millis() as u64);
    let result = if a.status_code != 0 {
        a.status_code.to_string()
    } else {
        a.error_kind.clone()
    };
    json!({
        "started_at": time(a.started_at.as_ref()),
        "event_id": a.event_id,
        "subscription_id": a.subscription_id,
        "tenant": a.tenant,
        "event_type": a.event_type,
        "attempt": a.attempt,
        "status_code": a.status_code,
        "result": result,
        "error_kind": a.error_kind,
        "error": a.error,
        "duration_ms": duration_ms,
        "outcome": outcome,
        "next_attempt_at": time(a.next_attempt_at.as_ref()),
        "agent_id": a.agent_id,
        "url": a.url,
        "response_excerpt": a.response_excerpt,
        "test": a.test,
    })
}

/// Most characters of a receiver's answer shown in a table's `error` cell.
const EXCERPT_CELL_CHARS: usize = 60;

/// An attempt as a row of `format`: for a table, an attempt the receiver answered with a
/// failing status shows the start of that answer in its `error` cell (the cell is otherwise
/// empty: nothing went wrong in sending); JSON and YAML keep the fields as the log holds them.
pub fn attempt_row(format: Format, a: &pb::Attempt) -> Value {
    let mut value = attempt(a);
    if format.style == Style::Table
        && a.error.is_empty()
        && a.status_code != 0
        && !(200..300).contains(&a.status_code)
    {
        value["error"] = json!(excerpt_cell(&a.response_excerpt));
    }
    value
}

/// A receiver's answer in one short line: whitespace runs as one space, other control
/// characters (which a terminal would obey) as `\u{fffd}`, cut with `…`.
fn excerpt_cell(excerpt: &str) -> String {
    let words: Vec<&str> = excerpt.split_whitespace().collect();
    let line = shown(&words.join(" "));
    if line.chars().count() <= EXCERPT_CELL_CHARS {
        return line;
    }
    let cut: String = line.chars().take(EXCERPT_CELL_CHARS - 1).collect();
    format!("{}…", cut.trim_end())
}

/// A request as sent: its body as text when it is UTF-8 (`body`), else in base64
/// (`body_base64`: a body cut by the log's limit may end inside a character).
pub fn sent_request(r: &pb::SentRequest) -> Value {
    let mut value = json!({
        "subscription_id": r.subscription_id,
        "tenant": r.tenant,
        "attempt": r.attempt,
        "sent_at": time(r.sent_at.as_ref()),
        "method": r.method,
        "url": r.url,
        "headers": r
            .headers
            .iter()
            .map(|h| json!({ "name": h.name, "value": h.value }))
            .collect::<Vec<_>>(),
        "body_size": r.body_size,
        "body_cut": herald_proto::sent_request::is_cut(r),
    });
    match std::str::from_utf8(&r.body) {
        Ok(text) => value["body"] = json!(text),
        Err(_) => {
            use base64::Engine as _;
            value["body_base64"] = json!(base64::engine::general_purpose::STANDARD.encode(&r.body));
        }
    }
    value
}

/// One event's attempts with the requests its subscriptions were sent: one document (JSON,
/// YAML: `attempts` and `requests`), or the attempts' table followed by each request as HTTP
/// text, its body byte for byte.
pub fn sent_requests(
    format: Format,
    attempts: &[Value],
    columns: &[&str],
    requests: &[pb::SentRequest],
) -> Result<(), OutputError> {
    if format.style != Style::Table {
        let doc = json!({
            "attempts": attempts,
            "requests": requests.iter().map(sent_request).collect::<Vec<_>>(),
        });
        return object(format, &doc);
    }
    list(format, "attempts", attempts, columns, "")?;
    // Bodies and header values come from whoever emitted the event: on a terminal, their
    // control characters are shown, not obeyed. Piped, they go out byte for byte.
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let show = |bytes: &[u8]| {
        if terminal {
            write_bytes(&terminal_safe(bytes))
        } else {
            write_bytes(bytes)
        }
    };
    for r in requests {
        let mut head = format!(
            "\n--- request to {} (attempt {}, {} bytes) ---\n{} {}\n",
            r.subscription_id, r.attempt, r.body_size, r.method, r.url
        );
        for h in &r.headers {
            let _ = writeln!(head, "{}: {}", h.name, h.value);
        }
        head.push('\n');
        show(head.as_bytes())?;
        show(&r.body)?;
        write("\n")?;
        if herald_proto::sent_request::is_cut(r) {
            note(&format!(
                "the body to {} is cut to the log's limit: {} of {} bytes shown",
                r.subscription_id,
                r.body.len(),
                r.body_size
            ));
        }
    }
    Ok(())
}

/// An agent.
pub fn agent(a: &pb::AgentInfo) -> Value {
    json!({
        "id": a.id,
        "region": a.region,
        "node": a.node,
        "version": a.version,
        "connected": a.connected,
        "replica": a.replica,
        "applied_revision": a.applied_revision,
        "lag": a.current_revision.saturating_sub(a.applied_revision).max(0),
        "last_nack": a.last_nack,
        "connected_since": time(a.connected_since.as_ref()),
        "last_seen": time(a.last_seen.as_ref()),
    })
}

/// What a replay did.
pub fn replay(r: &pb::ReplayDeliveriesResponse) -> Value {
    json!({
        "queued": r.queued,
        "parked": r.parked,
        "agents": r
            .agents
            .iter()
            .map(|a| format!("{} ({})", a.agent_id, a.queued))
            .collect::<Vec<_>>(),
        "not_replayable": r
            .not_replayable
            .iter()
            .map(|m| json!({
                "event_id": m.event_id,
                "subscription_id": m.subscription_id,
                "agent_id": m.agent_id,
                "reason": m.reason,
            }))
            .collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_answer_shows_in_the_error_cell_of_a_table_only() {
        let failed = pb::Attempt {
            status_code: 503,
            error_kind: "http_status".into(),
            response_excerpt: "<html>\n  <title>Service\tUnavailable</title>\x1b[2J ".into(),
            ..Default::default()
        };
        let table = Format {
            style: Style::Table,
            headers: true,
        };
        let json = Format {
            style: Style::Json,
            headers: true,
        };
        assert_eq!(
            attempt_row(table, &failed)["error"],
            "<html> <title>Service Unavailable</title>\u{fffd}[2J"
        );
        assert_eq!(attempt_row(json, &failed)["error"], "");
        let long = pb::Attempt {
            response_excerpt: "x".repeat(500),
            ..failed.clone()
        };
        let cell = attempt_row(table, &long)["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert_eq!(cell.chars().count(), EXCERPT_CELL_CHARS);
        assert!(cell.ends_with('…'));
        let delivered = pb::Attempt {
            status_code: 200,
            response_excerpt: "ok".into(),
            ..Default::default()
        };
        assert_eq!(attempt_row(table, &delivered)["error"], "");
        let refused = pb::Attempt {
            error: "connecting: connection refused".into(),
            ..Default::default()
        };
        assert_eq!(
            attempt_row(table, &refused)["error"],
            "connecting: connection refused"
        );
    }

    #[test]
    fn a_tables_cells_show_control_characters_instead_of_obeying_them() {
        let agent = json!({"last_nack": "\x1b[31mred\x00", "version": "1\n2", "node": "żółw"});
        assert_eq!(cell(&agent["last_nack"]), "\u{fffd}[31mred\u{fffd}");
        assert_eq!(cell(&agent["version"]), "1\u{fffd}2");
        assert_eq!(cell(&agent["node"]), "żółw");
        assert_eq!(
            cell(&json!([{"secret": "a\rb"}])),
            "secret: a\u{fffd}b",
            "inside records too"
        );
    }

    #[test]
    fn control_characters_are_shown_not_obeyed_on_a_terminal() {
        assert_eq!(
            terminal_safe(b"{\"a\":1}\r\n\tok"),
            b"{\"a\":1}\r\n\tok".to_vec()
        );
        assert_eq!(
            terminal_safe(b"\x1b]0;owned\x07 \x1b[2J\rx\x7f"),
            br"\x1b]0;owned\x07 \x1b[2J\x0dx\x7f".to_vec()
        );
        assert_eq!(
            terminal_safe("a\u{9b}b".as_bytes()),
            br"a\u{009b}b".to_vec()
        );
        assert_eq!(terminal_safe("zażółć".as_bytes()), "zażółć".as_bytes());
    }
}
