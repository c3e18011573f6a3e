//! Logs and traces for every daemon. Logs go to stderr (text or JSON lines), filtered by
//! `RUST_LOG`. Traces go over OTLP/gRPC when the standard OpenTelemetry variables ask for it
//! (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_EXPORTER_OTLP_HEADERS` and `OTEL_SDK_DISABLED` are honoured
//! too): `tracing` spans become OpenTelemetry spans through `tracing-opentelemetry`.
//!
//! Spans are exported in batches from a tokio task (the exporter speaks gRPC through tonic,
//! which needs the runtime), and flushed by [`Telemetry::shutdown`] when the daemon stops.
//!
//! [`continue_trace`] and [`outgoing`] connect Herald's spans to the caller's W3C trace: the
//! `Emit` span and every delivery attempt join the trace the emitting call carried, and the
//! webhook's `traceparent` names the attempt's span, so a receiver's work nests under it.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId};
use opentelemetry::trace::{TraceState, TracerProvider as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Level;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::trace::TraceParent;

/// How a daemon writes its logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Why trace export could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("OTLP trace export: {0}")]
pub struct TelemetryError(String);

/// The installed logging and tracing; [`Telemetry::shutdown`] flushes what is buffered.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports the spans still buffered, then stops exporting.
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            // The flush waits for the export task, which runs on the runtime: block elsewhere.
            let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            if let Ok(Err(err)) = done {
                eprintln!("trace export did not flush: {err}");
            }
        }
    }
}

/// Whether the environment asks for OTLP trace export.
fn otlp_requested() -> bool {
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.eq_ignore_ascii_case("none"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Installs logging to stderr in `format` (filtered by `RUST_LOG`, else `default_filter`) and,
/// when the environment asks for it, OTLP trace export naming the service `service` (unless
/// `OTEL_SERVICE_NAME` names it). Must run inside a tokio runtime.
pub fn init(
    default_filter: &str,
    format: LogFormat,
    service: &str,
) -> Result<Telemetry, TelemetryError> {
    // RUST_LOG picks the log lines; spans go to the exporter whatever it says, since a quiet
    // log must not silence traces.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| default_filter.into());
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(crate::daemon::colours())
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(false)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let provider = if otlp_requested() {
        Some(provider(service)?)
    } else {
        None
    };
    // Herald's spans are at DEBUG, so that with export off (and RUST_LOG at info) they are
    // disabled at their call sites and cost nothing on the delivery path.
    let spans = tracing_subscriber::filter::filter_fn(|meta| {
        meta.target().starts_with("herald_")
            && if meta.is_span() {
                *meta.level() <= Level::DEBUG
            } else {
                *meta.level() <= Level::INFO
            }
    });
    let otel = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("herald"))
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_filter(spans)
    });
    tracing_subscriber::registry()
        .with(logs.with_filter(filter))
        .with(otel)
        .init();
    Ok(Telemetry { provider })
}

fn provider(service: &str) -> Result<SdkTracerProvider, TelemetryError> {
    use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .build()
        .map_err(|e| TelemetryError(e.to_string()))?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    // A service name in the environment wins (the SDK reads it); an empty one does not count.
    if !std::env::var("OTEL_SERVICE_NAME").is_ok_and(|name| !name.trim().is_empty()) {
        resource = resource.with_service_name(service.to_owned());
    }
    let processor =
        BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource.build())
        .build())
}

/// Makes `span` a child of the remote span `parent` names (the caller's `traceparent`). Without
/// trace export this does nothing.
pub fn continue_trace(span: &tracing::Span, parent: &TraceParent) {
    let remote = SpanContext::new(
        TraceId::from_bytes(parent.trace_id()),
        SpanId::from_bytes(parent.parent_id()),
        TraceFlags::new(parent.flags()),
        true,
        TraceState::default(),
    );
    let context = opentelemetry::Context::new().with_remote_span_context(remote);
    let _ = span.set_parent(context);
}

/// The `traceparent` a request made within `span` sends on: the same trace as `parent`, with
/// `span`'s id when spans are exported (so the receiver's spans nest under it), else a random
/// span id of its own.
pub fn outgoing(span: &tracing::Span, parent: &TraceParent) -> TraceParent {
    let context = span.context();
    let current = context.span();
    let ours = current.span_context();
    if ours.is_valid() && ours.trace_id().to_bytes() == parent.trace_id() {
        parent.child(ours.span_id().to_bytes())
    } else {
        parent.random_child()
    }
}
