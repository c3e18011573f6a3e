//! One delivery attempt: render the body, sign it, POST it, read a bounded part of the answer.
//! The bytes signed are the bytes sent; the signature is made fresh for each attempt because
//! `webhook-timestamp` is the time of the attempt.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald_core::error_text;
use herald_core::format::{EventBody, HEADER_EVENT_TYPE, render_body};
use herald_core::signing::{HEADER_ID, HEADER_SIGNATURE, HEADER_TIMESTAMP, signature_header};
use herald_core::subscription::Subscription;
use herald_core::trace::{self, TraceParent};

use herald_proto::sent_request::MASKED;
use herald_proto::v1 as pb;
use tracing::Instrument as _;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};

use super::classify::{AttemptResult, ErrorKind};
use super::oauth2::Tokens;
use super::transport::{ConnectError, HttpClient};
/// The most response body read from a receiver.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// The part of the response body kept for the log.
pub const MAX_EXCERPT_BYTES: usize = 4 * 1024;

/// What one attempt did, for classification and the report.
#[derive(Debug)]
pub struct Sent {
    /// Status or error kind.
    pub result: AttemptResult,
    /// A human-readable error, when there was one.
    pub error: String,
    /// The start of the response body.
    pub excerpt: String,
    /// When the attempt started.
    pub started_at: SystemTime,
    /// How long it took.
    pub duration: Duration,
    /// The request as sent (its body cut to the log's limit, credentials masked), when one
    /// was made and the log keeps bodies.
    pub request: Option<pb::SentRequest>,
}

impl Sent {
    /// An attempt that could not be made at all, for `kind` and `error`.
    pub fn not_made(kind: ErrorKind, error: String) -> Sent {
        Sent {
            result: AttemptResult::Error { kind },
            error,
            excerpt: String::new(),
            started_at: SystemTime::now(),
            duration: Duration::ZERO,
            request: None,
        }
    }
}

/// The event data an attempt needs.
pub struct EventRef<'a> {
    /// `webhook-id`.
    pub id: &'a str,
    /// `webhook-event-type`, and the envelope's `type`.
    pub event_type: &'a str,
    /// When the event occurred: the envelope's `timestamp`.
    pub occurred_at: SystemTime,
    /// The payload as emitted (JSON).
    pub payload: &'a [u8],
    /// The emitter's W3C `traceparent`; empty when it sent none.
    pub traceparent: &'a str,
}

/// Sends one attempt of `event` to `sub` with `client` (the route its egress picks), with a
/// bearer token from `tokens` when it uses OAuth2, in a `deliver` span that joins the
/// emitter's trace. Up to `body_limit` bytes of the body go into the report's copy of the
/// request (0: no copy is made).
pub async fn send(
    client: &HttpClient,
    tokens: &Tokens,
    sub: &Subscription,
    event: EventRef<'_>,
    body_limit: usize,
) -> Sent {
    let span = tracing::debug_span!(
        "deliver",
        otel.kind = "client",
        subscription = %sub.id,
        webhook.id = event.id,
        http.response.status_code = tracing::field::Empty,
        error.kind = tracing::field::Empty,
    );
    let trace = TraceParent::parse(event.traceparent).ok();
    if let Some(trace) = &trace {
        herald_core::telemetry::continue_trace(&span, trace);
    }
    let mut request = None;
    let mut outcome = send_in(
        client,
        tokens,
        sub,
        event,
        Capture {
            trace,
            body_limit,
            request: &mut request,
        },
        &span,
    )
    .instrument(span.clone())
    .await;
    outcome.request = request;
    match &outcome.result {
        AttemptResult::Status { code, .. } => {
            span.record("http.response.status_code", i64::from(*code));
        }
        AttemptResult::Error { kind } => {
            span.record("error.kind", kind.as_str());
        }
    }
    outcome
}

/// Why a request could not be made at all.
#[derive(Debug, thiserror::Error)]
enum RequestError {
    /// The URL is not one the HTTP stack takes.
    #[error("url: {0}")]
    Url(#[from] http::uri::InvalidUri),
    /// A header of the subscription's is not a valid header.
    #[error("header {0}: not a valid HTTP header")]
    Header(String),
    /// The request could not be built.
    #[error(transparent)]
    Build(#[from] http::Error),
}

/// What an attempt carries besides its event: the emitter's trace, and where the copy of the
/// request for the log goes.
struct Capture<'a> {
    trace: Option<TraceParent>,
    body_limit: usize,
    request: &'a mut Option<pb::SentRequest>,
}

async fn send_in(
    client: &HttpClient,
    tokens: &Tokens,
    sub: &Subscription,
    event: EventRef<'_>,
    capture: Capture<'_>,
    span: &tracing::Span,
) -> Sent {
    let Capture {
        trace,
        body_limit,
        request: captured,
    } = capture;
    let started_at = SystemTime::now();
    let clock = tokio::time::Instant::now();
    let deadline = clock + sub.timeout;
    let finish = |result, error: String, excerpt: String| Sent {
        result,
        error,
        excerpt,
        started_at,
        duration: clock.elapsed(),
        request: None,
    };
    let failed = |kind, error: String| finish(AttemptResult::Error { kind }, error, String::new());
    let body = EventBody {
        event_type: event.event_type,
        occurred_at: event.occurred_at,
        payload: event.payload,
    };
    let body = match render_body(sub.format, sub.envelope, &body) {
        Ok(body) => body,
        Err(err) => return failed(ErrorKind::Render, err.to_string()),
    };
    let timestamp = started_at
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let signature = signature_header(&sub.signing_secrets(started_at), event.id, timestamp, &body);
    let outgoing_trace = sub
        .send_trace_context
        .then_some(trace.as_ref())
        .flatten()
        .map(|trace| herald_core::telemetry::outgoing(span, trace).to_string());
    let body = Bytes::from(body);
    let mut token = match &sub.oauth2 {
        None => None,
        Some(oauth2) => match tokens.token(client, oauth2, deadline).await {
            Ok(token) => Some(token),
            Err(err) => return failed(err.kind(), err.to_string()),
        },
    };
    let mut refetched = false;
    let response = loop {
        let request = match request(
            sub,
            &event,
            Signed {
                timestamp,
                signature: &signature,
            },
            outgoing_trace.as_deref(),
            token.as_deref(),
            body.clone(),
        ) {
            Ok(request) => request,
            Err(err) => return failed(ErrorKind::Request, err.to_string()),
        };
        if body_limit > 0 && captured.is_none() {
            *captured = Some(as_sent(
                &request,
                sub,
                KeptBody {
                    body: &body,
                    limit: body_limit,
                },
            ));
        }
        let response = match tokio::time::timeout_at(deadline, client.request(request)).await {
            Ok(Ok(response)) => response,
            Ok(Err(err)) => return failed(error_kind(&err), transport_error_text(&err)),
            Err(_) => {
                return failed(
                    ErrorKind::Timeout,
                    format!(
                        "no answer within {}",
                        humantime::format_duration(sub.timeout)
                    ),
                );
            }
        };
        // A refused token (revoked, or expired early) is fetched anew once, and the request
        // made again within this attempt.
        match (&sub.oauth2, &token) {
            (Some(oauth2), Some(refused))
                if response.status() == http::StatusCode::UNAUTHORIZED && !refetched =>
            {
                tokens.forget(oauth2, refused).await;
                token = match tokens.token(client, oauth2, deadline).await {
                    Ok(fresh) => Some(fresh),
                    Err(err) => return failed(err.kind(), err.to_string()),
                };
                refetched = true;
            }
            _ => break response,
        }
    };
    let code = response.status().as_u16();
    let header = |name| {
        response
            .headers()
            .get(name)
            .and_then(|v: &http::HeaderValue| v.to_str().ok())
            .map(str::to_owned)
    };
    let retry_after = header(http::header::RETRY_AFTER);
    let location = header(http::header::LOCATION);
    // Read at most MAX_RESPONSE_BYTES; a receiver's body never grows our memory unbounded.
    let mut body = response.into_body();
    let mut read = Vec::new();
    let mut error = String::new();
    while read.len() < MAX_RESPONSE_BYTES {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    read.extend_from_slice(data);
                }
            }
            Ok(None) => break,
            Ok(Some(Err(err))) => {
                error = format!("reading response: {}", error_text::chain(&err));
                break;
            }
            Err(_) => {
                error = "reading response: timed out".into();
                break;
            }
        }
    }
    if let Some(location) = location.filter(|_| (300..400).contains(&code)) {
        error = format!("redirect to {location} not followed");
    }
    read.truncate(MAX_EXCERPT_BYTES);
    let excerpt = String::from_utf8_lossy(&read).into_owned();
    finish(AttemptResult::Status { code, retry_after }, error, excerpt)
}

/// The POST of one attempt: the body as signed, the Standard Webhooks headers, the event type,
/// the trace context when sent on, and the subscription's own headers.
fn request(
    sub: &Subscription,
    event: &EventRef<'_>,
    signed: Signed<'_>,
    traceparent: Option<&str>,
    bearer: Option<&str>,
    body: Bytes,
) -> Result<http::Request<Full<Bytes>>, RequestError> {
    let Signed {
        timestamp,
        signature,
    } = signed;
    let uri: http::Uri = sub.url.as_str().parse()?;
    let mut request = http::Request::post(uri)
        .header(http::header::USER_AGENT, USER_AGENT)
        .header(http::header::ACCEPT, "*/*")
        .header(http::header::CONTENT_TYPE, sub.format.content_type())
        .header(HEADER_ID, never_indexed(event.id))
        .header(HEADER_TIMESTAMP, never_indexed(&timestamp.to_string()))
        .header(HEADER_SIGNATURE, never_indexed(signature))
        .header(HEADER_EVENT_TYPE, event.event_type);
    if let Some(traceparent) = traceparent {
        request = request.header(trace::HEADER, traceparent);
    }
    if let Some(token) = bearer {
        request = request.header(
            http::header::AUTHORIZATION,
            never_indexed(&format!("Bearer {token}")),
        );
    }
    let headers = request
        .headers_mut()
        .expect("the builder holds no error: every value above is valid");
    for (name, value) in &sub.headers {
        if bearer.is_some() && name.eq_ignore_ascii_case(http::header::AUTHORIZATION.as_str()) {
            // The OAuth2 token is the authorization (a record stored before both were
            // refused together): a request carries one, never two.
            continue;
        }
        let invalid = || RequestError::Header(name.clone());
        headers.append(
            http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid())?,
            http::HeaderValue::from_str(value).map_err(|_| invalid())?,
        );
    }
    Ok(request.body(Full::new(body))?)
}

/// The log's copy of `request`: its method, its headers, with the values that are credentials
/// masked (the signature, an authorization, and the subscription's own headers), and the part
/// of its body the log keeps. What the report's attempt says already (event, subscription,
/// tenant, URL, start) is left out: the control plane names the request after its attempt.
fn as_sent(
    request: &http::Request<Full<Bytes>>,
    sub: &Subscription,
    kept: KeptBody<'_>,
) -> pb::SentRequest {
    let masked = |name: &http::HeaderName| {
        name == HEADER_SIGNATURE
            || name == http::header::AUTHORIZATION
            || sub
                .headers
                .iter()
                .any(|(own, _)| own.eq_ignore_ascii_case(name.as_str()))
    };
    let headers = request
        .headers()
        .iter()
        .map(|(name, value)| pb::Header {
            name: name.as_str().to_owned(),
            value: if masked(name) {
                MASKED.to_owned()
            } else {
                String::from_utf8_lossy(value.as_bytes()).into_owned()
            },
        })
        .collect();
    let KeptBody { body, limit } = kept;
    pb::SentRequest {
        method: request.method().as_str().to_owned(),
        headers,
        body: body[..body.len().min(limit)].to_vec(),
        body_size: body.len() as u64,
        ..Default::default()
    }
}

/// A request's whole body, and how much of it the log keeps.
struct KeptBody<'a> {
    body: &'a [u8],
    limit: usize,
}

/// When an attempt was signed, and its `webhook-signature`.
struct Signed<'a> {
    timestamp: i64,
    signature: &'a str,
}

/// The `user-agent` of every delivery.
const USER_AGENT: &str = concat!("Herald/", env!("CARGO_PKG_VERSION"));

/// A header value HTTP/2 sends as a literal that is never indexed. The id, timestamp and
/// signature change with every request (and a signature is a credential): adding them to the
/// connection's header tables would only evict useful entries, on both sides, for nothing.
/// Over HTTP/1.1 it makes no difference. An id or signature that is not a valid header value
/// (never the case for values Herald makes) is sent empty, so the receiver refuses it.
fn never_indexed(value: &str) -> http::HeaderValue {
    let mut value =
        http::HeaderValue::from_str(value).unwrap_or_else(|_| http::HeaderValue::from_static(""));
    value.set_sensitive(true);
    value
}

/// A transport error and every error beneath it.
fn error_chain(err: &hyper_util::client::legacy::Error) -> Vec<&(dyn std::error::Error + 'static)> {
    let mut chain: Vec<&(dyn std::error::Error + 'static)> = Vec::new();
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = source {
        chain.push(e);
        // An io::Error's source() skips the error it wraps (where rustls's error travels),
        // so walk into it explicitly.
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            chain.push(inner);
        }
        source = e.source();
    }
    chain
}

/// What a transport error says to the people reading the log: why no connection was made,
/// when that is the error (`connect to 203.0.113.7:443: Connection refused (os error 111)`),
/// without the HTTP client's own wrapping; otherwise the whole chain.
fn transport_error_text(err: &hyper_util::client::legacy::Error) -> String {
    match error_chain(err)
        .into_iter()
        .find_map(|e| e.downcast_ref::<ConnectError>())
    {
        Some(connect) => error_text::chain(connect),
        None => error_text::chain(err),
    }
}

/// The kind of a transport error, told by the types in its chain of sources.
pub(super) fn error_kind(err: &hyper_util::client::legacy::Error) -> ErrorKind {
    let chain = error_chain(err);
    if let Some(connect) = chain.iter().find_map(|e| e.downcast_ref::<ConnectError>()) {
        return connect.kind();
    }
    // rustls's errors travel inside io::Errors, as the error itself during the handshake and
    // as InvalidData once the peer's alert arrives after it (a receiver refusing the client
    // certificate under TLS 1.3): the TCP stream beneath never reports InvalidData.
    let tls_io = |e: &&(dyn std::error::Error + 'static)| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::InvalidData)
    };
    if chain.iter().any(|e| e.is::<rustls::Error>()) || chain.iter().any(tls_io) {
        return ErrorKind::Tls;
    }
    if err.is_connect() {
        ErrorKind::Connect
    } else {
        ErrorKind::Request
    }
}

#[cfg(test)]
pub(super) mod tests {
    use herald_core::egress::Egress;
    use herald_core::target::TargetPolicy;

    use super::super::transport::Transport;
    use super::*;

    /// An enabled subscription of shop-1 to `order.*`, with a fresh signing secret.
    pub(in crate::delivery) fn sample_subscription() -> pb::Subscription {
        pb::Subscription {
            id: "sub_1".into(),
            tenant: "shop-1".into(),
            url: "https://example.com/hooks".into(),
            event_types: vec!["order.*".into()],
            secrets: vec![pb::SigningSecret {
                secret: herald_core::signing::SigningSecret::generate().expose(),
                ..Default::default()
            }],
            enabled: true,
            ..Default::default()
        }
    }

    #[test]
    fn the_logs_copy_masks_every_credential_and_keeps_the_body_up_to_its_limit() {
        let wire = pb::Subscription {
            headers: [("X-Api-Key".to_owned(), "k-secret".to_owned())].into(),
            ..sample_subscription()
        };
        let sub = herald_proto::convert::subscription(&wire, true).expect("a subscription");
        let event = EventRef {
            id: "evt_1",
            event_type: "order.created",
            occurred_at: UNIX_EPOCH,
            payload: b"{}",
            traceparent: "",
        };
        let body = Bytes::from_static(b"{\"order\":\"ord_1\"}");
        let signed = Signed {
            timestamp: 1_700_000_000,
            signature: "v1,c2lnbmF0dXJl",
        };
        let request =
            request(&sub, &event, signed, None, Some("token-1"), body.clone()).expect("a request");
        let kept = KeptBody {
            body: &body,
            limit: 8,
        };
        let copy = as_sent(&request, &sub, kept);
        let value = |name: &str| {
            copy.headers
                .iter()
                .find(|h| h.name == name)
                .map(|h| h.value.as_str())
        };
        assert_eq!(value("webhook-signature"), Some(MASKED));
        assert_eq!(value("authorization"), Some(MASKED));
        assert_eq!(value("x-api-key"), Some(MASKED));
        assert_eq!(value("webhook-id"), Some("evt_1"));
        assert_eq!(value("webhook-timestamp"), Some("1700000000"));
        assert!(
            !format!("{copy:?}").contains("token-1") && !format!("{copy:?}").contains("k-secret")
        );
        assert_eq!(copy.body, b"{\"order\"");
        assert_eq!(copy.body_size, body.len() as u64);
        assert_eq!(copy.method, "POST");
    }

    async fn kind_of(url: &str, policy: TargetPolicy) -> ErrorKind {
        error_kind(&failure_of(url, policy).await)
    }

    async fn failure_of(url: &str, policy: TargetPolicy) -> hyper_util::client::legacy::Error {
        let transport = Transport::build(None, policy, None).expect("transport");
        let request = http::Request::post(url)
            .body(Full::new(Bytes::new()))
            .expect("request");
        transport
            .client(&Egress::AgentDefault, None)
            .expect("the common route")
            .request(request)
            .await
            .expect_err("no receiver there")
    }

    #[tokio::test]
    async fn transport_errors_are_told_apart_by_their_types() {
        // `.invalid` never resolves (RFC 6761).
        assert_eq!(
            kind_of("https://receiver.invalid/hook", TargetPolicy::default()).await,
            ErrorKind::Dns
        );
        // Loopback is refused by the default policy, before any connection.
        assert_eq!(
            kind_of("https://localhost/hook", TargetPolicy::default()).await,
            ErrorKind::Policy
        );
        // Allowed, but nothing listens there.
        let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = free.local_addr().expect("addr").port();
        drop(free);
        let open = TargetPolicy {
            allowed: vec!["127.0.0.0/8".parse().expect("net")],
            ..TargetPolicy::default()
        };
        let refused = failure_of(&format!("https://127.0.0.1:{port}/hook"), open).await;
        assert_eq!(error_kind(&refused), ErrorKind::Connect);
        // Said without the HTTP client's wrapping.
        let text = transport_error_text(&refused);
        assert!(
            text.starts_with(&format!("connect to 127.0.0.1:{port}: ")),
            "{text}"
        );
    }
}
