//! The `/metrics` endpoint both daemons serve (`--metrics-listen`): a plain HTTP server whose
//! one route answers with the daemon's metrics in the OpenMetrics text format, which
//! Prometheus scrapes. Each daemon keeps its own registry and renders it on every scrape (after
//! refreshing gauges that are read, not counted: queue depth, revisions, streams).

use std::future::Future;
use std::sync::Arc;

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::get;

/// The content type of the OpenMetrics text format.
pub const CONTENT_TYPE_OPENMETRICS: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `GET /metrics` on `listener` with what `render` returns, until `shutdown`.
/// `render` runs on a blocking thread: it may read from disk.
pub async fn serve(
    listener: tokio::net::TcpListener,
    render: impl Fn() -> String + Send + Sync + 'static,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let render = Arc::new(render);
    let app = axum::Router::new().route(
        "/metrics",
        get(move || {
            let render = render.clone();
            async move {
                match tokio::task::spawn_blocking(move || render()).await {
                    Ok(text) => ([(CONTENT_TYPE, CONTENT_TYPE_OPENMETRICS)], text).into_response(),
                    Err(_) => axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response(),
                }
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
