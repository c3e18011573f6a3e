//! Traces over OTLP: an agent started with `OTEL_EXPORTER_OTLP_ENDPOINT` exports an `emit` span
//! and a `deliver` span per attempt, both in the trace the emitting call carried, and the
//! webhook's `traceparent` names the `deliver` span. The collector is a real OTLP/gRPC server.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_proto::v1 as pb;
use herald_tests::herald::connect;
use herald_tests::{
    AgentProcess, ConfigStore, ControlPlane, Receiver, TestCa, event, eventually, subscription,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;

/// What the collector received: (service name, span).
type Received = Arc<Mutex<Vec<(String, opentelemetry_proto::tonic::trace::v1::Span)>>>;

struct Collector(Received);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = self.0.lock().expect("lock");
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| &r.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref()?.value.as_ref())
                .map(|v| match v {
                    Value::StringValue(s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    received.push((service.clone(), span));
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_and_delivery_spans_join_the_callers_trace() -> anyhow::Result<()> {
    let received: Received = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let collector_addr = listener.local_addr()?;
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(received.clone())))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );

    let cp = ControlPlane::start(ConfigStore::Embedded).await?;
    let ca = TestCa::new();
    let ca_dir = tempfile::tempdir()?;
    let ca_file = ca.write_ca_pem(ca_dir.path())?;
    let receiver = Receiver::start(&ca).await?;
    let mut traced = subscription("shop-1", &receiver.url("/orders"), &["order.*"]);
    traced.send_trace_context = true;
    let sub = cp.create(traced).await?;
    let endpoint = format!("http://{collector_addr}");
    let mut agent = AgentProcess::start_with_env(
        Path::new(env!("CARGO_BIN_EXE_herald-agent")),
        cp.url(),
        &ca_file,
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_SERVICE_NAME", ""),
            ("RUST_LOG", "info"),
        ],
    )
    .await?;
    cp.wait_applied(sub.revision, Duration::from_secs(20))
        .await?;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let mut request = tonic::Request::new(pb::EmitRequest {
        event: Some(event(
            "shop-1",
            "order.created",
            &serde_json::json!({"id": 1}),
        )),
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace_id}-{caller_span}-01").parse()?,
    );
    pb::events_client::EventsClient::new(connect(&agent.url()).await?)
        .emit(request)
        .await?;
    let webhook = receiver
        .wait_for_requests(1, Duration::from_secs(10))
        .await?
        .remove(0);
    let sent = webhook
        .header("traceparent")
        .expect("a traceparent")
        .to_owned();
    let parts: Vec<&str> = sent.split('-').collect();
    assert_eq!(parts[1], trace_id, "{sent}");
    let deliver_span = parts[2].to_owned();

    // SIGTERM flushes what the exporter still holds.
    assert_eq!(agent.terminate(Duration::from_secs(20)).await?, Some(0));
    let spans = eventually(
        Duration::from_secs(10),
        "spans at the collector",
        || async {
            let spans = received.lock().expect("lock").clone();
            let names: Vec<&str> = spans.iter().map(|(_, s)| s.name.as_str()).collect();
            Ok((names.contains(&"emit") && names.contains(&"deliver")).then_some(spans))
        },
    )
    .await?;
    let find = |name: &str| {
        spans
            .iter()
            .find(|(_, s)| s.name == name)
            .cloned()
            .expect("the span")
    };
    let (service, emit) = find("emit");
    assert_eq!(service, "herald-agent");
    assert_eq!(hex(&emit.trace_id), trace_id);
    assert_eq!(hex(&emit.parent_span_id), caller_span);
    let (_, deliver) = find("deliver");
    assert_eq!(hex(&deliver.trace_id), trace_id);
    assert_eq!(hex(&deliver.parent_span_id), caller_span);
    assert_eq!(
        hex(&deliver.span_id),
        deliver_span,
        "the webhook names the deliver span"
    );
    let status = deliver
        .attributes
        .iter()
        .find(|kv| kv.key == "http.response.status_code")
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .cloned();
    assert_eq!(
        status,
        Some(Value::IntValue(200)),
        "{:?}",
        deliver.attributes
    );
    Ok(())
}
