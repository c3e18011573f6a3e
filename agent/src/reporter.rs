//! Sends the queue's report outbox to the control plane and removes reports once acked.
//!
//! Reports are written to the outbox in the same commit as the attempt's outcome, so they
//! survive crashes; this task only reads the durable ones in order, sends them in batches over
//! the report stream (a few batches ahead of the acks; a batch that is not full waits up to
//! [`LINGER`] for more), and deletes a batch when the control plane acks it. After a broken
//! stream it starts again from the oldest unacked report; the control plane stores attempts
//! idempotently, so a resent report is not a duplicate in the central log.

use std::collections::BTreeMap;
use std::time::Duration;

use herald_proto::v1 as pb;
use herald_proto::v1::agent_control_client::AgentControlClient;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::control_plane::ControlPlane;
use crate::queue::Queue;

/// Reports per batch.
pub const BATCH_SIZE: usize = 500;
/// How long reports wait for more to fill a batch: the control plane commits each batch, so
/// a steady flow goes out in a few full batches rather than in many small ones.
const LINGER: Duration = Duration::from_millis(20);
/// Batches sent and not yet acked, at most.
const WINDOW: usize = 8;
/// How often the outbox is looked at even without a wake-up.
const POLL: Duration = Duration::from_secs(1);

/// Runs the reporter until `shutdown`; then keeps sending until the outbox is empty or `grace`
/// has passed (what remains stays in the outbox for the next start).
pub async fn run(
    control_plane: ControlPlane,
    agent_id: String,
    queue: Queue,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    tokio::pin!(deadline);
    loop {
        // At shutdown, with nothing left to send, there is no reason to wait for a connection.
        if shutdown.is_cancelled() && queue.pending_reports().is_ok_and(|n| n == 0) {
            break;
        }
        let session = session(&control_plane, &agent_id, &queue, &shutdown, &mut backoff);
        let result = tokio::select! {
            () = &mut deadline => break,
            result = session => result,
        };
        match result {
            Ok(()) => break,
            Err(err) if backoff.should_warn() => {
                tracing::warn!(error = %err, "report stream lost; reconnecting");
            }
            Err(err) => tracing::debug!(error = %err, "report stream still down; reconnecting"),
        }
        tokio::select! {
            () = &mut deadline => break,
            () = shutdown.cancelled(), if !shutdown.is_cancelled() => {}
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
    match queue.pending_reports() {
        Ok(0) => tracing::debug!("attempt reports flushed"),
        Ok(n) => tracing::warn!(
            pending = n,
            "attempt reports left in the outbox for the next start"
        ),
        Err(err) => tracing::warn!(error = %err, "cannot count pending reports"),
    }
}

/// One report stream, until it breaks (error) or, after shutdown, the outbox is empty (ok).
async fn session(
    control_plane: &ControlPlane,
    agent_id: &str,
    queue: &Queue,
    shutdown: &CancellationToken,
    backoff: &mut Backoff,
) -> Result<(), String> {
    let (url, channel) = control_plane.connect().await?;
    let (tx, out) = mpsc::channel(WINDOW);
    let mut acks = AgentControlClient::new(channel)
        .report_attempts(ReceiverStream::new(out))
        .await
        .map_err(|s| format!("{url}: {}", s.message()))?
        .into_inner();
    // Batch id (its last sequence number) → its first sequence number.
    let mut unacked: BTreeMap<u64, u64> = BTreeMap::new();
    let mut sent_up_to = 0;
    // Since when reports have been waiting for a fuller batch.
    let mut waiting_since: Option<Instant> = None;
    loop {
        while unacked.len() < WINDOW {
            let reports = queue
                .reports(sent_up_to, BATCH_SIZE)
                .map_err(|e| e.to_string())?;
            let (Some(&(first, _)), Some(&(last, _))) = (reports.first(), reports.last()) else {
                waiting_since = None;
                break;
            };
            let since = *waiting_since.get_or_insert_with(Instant::now);
            if reports.len() < BATCH_SIZE && since.elapsed() < LINGER && !shutdown.is_cancelled() {
                break;
            }
            waiting_since = None;
            let batch = pb::ReportBatch {
                batch_id: last,
                agent_id: agent_id.to_owned(),
                attempts: reports.into_iter().map(|(_, a)| a).collect(),
            };
            tx.send(batch).await.map_err(|_| "report stream closed")?;
            unacked.insert(last, first);
            sent_up_to = last;
        }
        if shutdown.is_cancelled() && unacked.is_empty() {
            return Ok(());
        }
        // A batch lingering for more is sent when its time is up.
        let wait = waiting_since.map_or(POLL, |since| LINGER.saturating_sub(since.elapsed()));
        tokio::select! {
            ack = acks.message() => match ack {
                Ok(Some(ack)) => {
                    backoff.reset();
                    if let Some(first) = unacked.remove(&ack.batch_id) {
                        queue.ack_reports(first, ack.batch_id).await.map_err(|e| e.to_string())?;
                    }
                }
                Ok(None) => return Err(format!("{url} ended the report stream")),
                Err(status) => return Err(format!("{url}: {}", status.message())),
            },
            () = queue.reports_added() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}
