//! `bench burst`: a `herald-agent` process (the release binary next to this one) taking a
//! burst of large concurrent calls: 200 `EmitBatch` calls of 500 events of about 3 KB each
//! (1.5 MB a call, 300 MB in all) sent at once over one connection, delivery paused. Sampled
//! every 10 ms from outside: the agent's peak RSS, and its RSS once the burst is answered, with
//! the default `--max-emit-bytes-in-flight` (4 MiB), with 16 MiB and with the budget set as
//! large as it goes (4 GiB, in effect none), alternating, two rounds each; and, as the baseline
//! of what the same 100,000 events cost once queued, the same calls made one at a time.

use std::time::Duration;

use herald_proto::v1 as pb;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::soak::{AgentProcess, rss_mb};
use super::tenant_event;

/// Calls in the burst.
const CALLS: usize = 200;
/// Events per call.
const EVENTS: usize = 500;
/// Bytes of padding in each event's payload.
const PADDING: usize = 3_000;

/// Runs the cases and prints a table row per round.
pub async fn run() -> anyhow::Result<()> {
    println!(
        "| --max-emit-bytes-in-flight | calls at once | round | idle RSS | peak RSS during the burst | RSS after it | burst answered in | events/s |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for round in 1..=2 {
        for (budget, at_once) in [
            ("4194304", CALLS),
            ("16777216", CALLS),
            ("4294967295", CALLS),
            ("4194304", 1),
        ] {
            let stop = CancellationToken::new();
            let agent = AgentProcess::start(
                &stop,
                &["--max-in-flight", "0", "--max-emit-bytes-in-flight", budget],
            )
            .await?;
            // The agent answers Emit once it has its configuration.
            let events = agent.events();
            herald_tests::eventually(Duration::from_secs(30), "the agent's config", || {
                let mut events = events.clone();
                async move {
                    let accepted = events
                        .emit(pb::EmitRequest {
                            event: Some(tenant_event("load")),
                        })
                        .await;
                    Ok(accepted.ok().map(|_| ()))
                }
            })
            .await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let idle = agent.rss_mb()?;
            let mut event = tenant_event("load");
            event.payload =
                serde_json::to_vec(&serde_json::json!({ "padding": "x".repeat(PADDING) }))?;
            let pid = agent.pid();
            let sampling = CancellationToken::new();
            let sampler = tokio::spawn({
                let sampling = sampling.clone();
                async move {
                    let mut peak = 0.0_f64;
                    while !sampling.is_cancelled() {
                        peak = peak.max(rss_mb(pid).unwrap_or(0.0));
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    peak
                }
            });
            let started = Instant::now();
            let mut answers = Vec::new();
            for _ in 0..CALLS / at_once {
                let mut calls = tokio::task::JoinSet::new();
                for _ in 0..at_once {
                    let mut events = events.clone();
                    let batch = (0..EVENTS).map(|_| event.clone()).collect();
                    calls.spawn(async move {
                        events
                            .emit_batch(pb::EmitBatchRequest { events: batch })
                            .await
                    });
                }
                answers.extend(calls.join_all().await);
            }
            let took = started.elapsed();
            sampling.cancel();
            let peak = sampler.await?;
            for answer in answers {
                anyhow::ensure!(answer?.into_inner().results.len() == EVENTS);
            }
            let after = agent.rss_mb()?;
            println!(
                "| {budget} | {at_once} | {round} | {idle:.1} MB | {peak:.1} MB | {after:.1} MB | {:.2} s | {:.0} |",
                took.as_secs_f64(),
                (CALLS * EVENTS) as f64 / took.as_secs_f64()
            );
            stop.cancel();
        }
    }
    Ok(())
}
