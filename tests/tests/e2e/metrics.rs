//! `/metrics` on both daemons, read by a Prometheus text-format parser after real traffic:
//! the counters match what happened, and no label carries an unbounded value.

use std::collections::BTreeMap;
use std::time::Duration;

use herald_tests::{
    AgentAndReceiver, AgentOptions, ConfigStore, ControlPlane, Etcd, HeldPort, event, eventually,
    subscription,
};

/// Scrapes `addr` and returns every sample as `name{labels}` → value.
pub(crate) async fn scrape(addr: std::net::SocketAddr) -> anyhow::Result<BTreeMap<String, f64>> {
    let response = get(addr).await?;
    anyhow::ensure!(response.status().is_success(), "{}", response.status());
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    anyhow::ensure!(
        content_type.starts_with("application/openmetrics-text"),
        "{content_type}"
    );
    let text = response.text().await?;
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines)?;
    let mut samples = BTreeMap::new();
    for sample in scrape.samples {
        let labels: Vec<String> = sample
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let key = if labels.is_empty() {
            sample.metric.clone()
        } else {
            format!("{}{{{}}}", sample.metric, labels.join(","))
        };
        let value = match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            prometheus_parse::Value::Summary(_) => continue,
        };
        samples.insert(key, value);
    }
    Ok(samples)
}

/// `GET /metrics` over plain HTTP.
async fn get(addr: std::net::SocketAddr) -> anyhow::Result<reqwest::Response> {
    // reqwest is built without a default TLS provider; plain HTTP still needs one installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    Ok(reqwest::get(format!("http://{addr}/metrics")).await?)
}

/// A sample's value; 0 when absent.
pub(crate) fn value(samples: &BTreeMap<String, f64>, key: &str) -> f64 {
    samples.get(key).copied().unwrap_or(0.0)
}

#[tokio::test]
async fn both_daemons_count_what_happened() -> anyhow::Result<()> {
    let etcd = Etcd::start().await?;
    let cp_metrics = HeldPort::new()?;
    let control_plane =
        ControlPlane::start_configured(ConfigStore::Etcd(vec![etcd.endpoint()]), |config| {
            config.metrics_listen = Some(cp_metrics.addr())
        })
        .await?;
    let agent_metrics = HeldPort::new()?;
    let AgentAndReceiver {
        agent, receiver, ..
    } = AgentAndReceiver::start(
        control_plane.url(),
        AgentOptions {
            metrics_listen: Some(agent_metrics.addr()),
            ..Default::default()
        },
    )
    .await?;
    control_plane
        .wait_applied(0, Duration::from_secs(10))
        .await?;
    let created = control_plane
        .create(subscription(
            "shop-42",
            &receiver.url("/hook"),
            &["order.*"],
        ))
        .await?;
    control_plane
        .wait_applied(created.revision, Duration::from_secs(10))
        .await?;

    for n in 0..3 {
        let mut e = event("shop-42", "order.created", &serde_json::json!({ "n": n }));
        e.id = format!("evt-{n}");
        agent.emit(e).await?;
    }
    let mut again = event("shop-42", "order.created", &serde_json::json!({ "n": 0 }));
    again.id = "evt-0".into();
    assert!(agent.emit(again).await?.duplicate);
    receiver
        .wait_for_requests(3, Duration::from_secs(10))
        .await?;

    let samples = eventually(
        Duration::from_secs(20),
        "agent metrics to settle",
        || async {
            let samples = scrape(agent_metrics.addr()).await?;
            let pending = value(&samples, "herald_queue_deliveries_pending");
            let delivered = value(
                &samples,
                "herald_delivery_attempts_total{outcome=delivered}",
            );
            if pending == 0.0 && delivered == 3.0 {
                Ok(Some(samples))
            } else {
                // Kept as the last error, so a timeout says where the counts stood.
                anyhow::bail!("pending {pending}, delivered {delivered}: {samples:?}")
            }
        },
    )
    .await?;
    assert_eq!(
        value(&samples, "herald_events_emitted_total"),
        3.0,
        "{samples:#?}"
    );
    assert_eq!(value(&samples, "herald_events_duplicate_total"), 1.0);
    assert_eq!(
        samples.get("herald_delivery_attempts_total{outcome=failed}"),
        Some(&0.0),
        "a series from the start: {samples:#?}"
    );
    assert_eq!(
        value(&samples, "herald_delivery_duration_seconds"),
        3.0,
        "{samples:#?}"
    );
    assert_eq!(value(&samples, "herald_queue_events"), 3.0);
    assert_eq!(value(&samples, "herald_queue_oldest_age_seconds"), 0.0);
    assert_eq!(value(&samples, "herald_queue_readable"), 1.0);
    assert!(value(&samples, "herald_config_revision") >= created.revision as f64);
    // Every Emit answered: none of their bytes held, none waiting.
    assert_eq!(samples.get("herald_emit_bytes_in_flight"), Some(&0.0));
    assert_eq!(samples.get("herald_emit_requests_waiting"), Some(&0.0));

    let samples = eventually(Duration::from_secs(20), "control-plane metrics", || async {
        let samples = scrape(cp_metrics.addr()).await?;
        Ok(
            (value(&samples, "herald_attempts_stored_total{outcome=delivered}") == 3.0)
                .then_some(samples),
        )
    })
    .await?;
    assert_eq!(value(&samples, "herald_agent_streams"), 1.0, "{samples:#?}");
    assert!(value(&samples, "herald_config_revision") >= created.revision as f64);
    assert!(
        value(&samples, "herald_config_convergence_seconds") >= 1.0,
        "the subscription's creation reached the agent: {samples:#?}"
    );
    // Series an alert watches are there before their first count.
    for series in [
        "herald_attempts_stored_total{outcome=failed}",
        "herald_subscriptions_disabled_total{reason=failures}",
        "herald_reports_refused_total{reason=malformed}",
    ] {
        assert_eq!(samples.get(series), Some(&0.0), "{series}: {samples:#?}");
    }
    // Every report batch stored: none of their bytes held, none waiting.
    assert_eq!(samples.get("herald_report_bytes_in_flight"), Some(&0.0));
    assert_eq!(samples.get("herald_report_streams_waiting"), Some(&0.0));

    // Bounded labels: no tenant, URL or id in either endpoint's output.
    for addr in [agent_metrics.addr(), cp_metrics.addr()] {
        let text = reqwest::get(format!("http://{addr}/metrics"))
            .await?
            .text()
            .await?;
        for unbounded in ["shop-42", "127.0.0.1", created.id.as_str(), "evt-0"] {
            assert!(!text.contains(unbounded), "{unbounded} in metrics:\n{text}");
        }
    }
    Ok(())
}
