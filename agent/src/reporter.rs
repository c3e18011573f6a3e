//! Sends the queue's report outbox to the control plane and removes reports once acked.
//!
//! Reports are written to the outbox in the same commit as the attempt's outcome, so they
//! survive crashes; this task only reads the durable ones in order, sends them in batches over
//! the report stream (a few batches ahead of the acks; a batch that is not full waits up to
//! [`LINGER`] for more), and deletes a batch when the control plane acks it. A batch holds at
//! most [`MAX_REPORT_BATCH`] reports and [`MAX_REPORT_BATCH_BYTES`], so the control plane
//! never refuses one for its size, whatever the reports hold. After a broken
//! stream it starts again from the oldest unacked report; the control plane stores attempts
//! idempotently, so a resent report is not a duplicate in the central log.
//!
//! A stream with nothing to send and nothing unacked for the idle time is closed, with its
//! connection, and the next report opens a new one: a replica holds a read buffer for each
//! open report stream (the size of the largest batch it carried), so idle agents cost it
//! nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use herald_proto::v1 as pb;
use herald_proto::v1::agent_control_client::AgentControlClient;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use herald_core::limits::{MAX_REPORT_BATCH, MAX_REPORT_BATCH_BYTES};
use prost::Message;

use crate::backoff::Backoff;
use crate::control_plane::ControlPlane;
use crate::queue::Queue;

/// How long reports wait for more to fill a batch: the control plane commits each batch, so
/// a steady flow goes out in a few full batches rather than in many small ones.
const LINGER: Duration = Duration::from_millis(20);
/// Batches sent and not yet acked, at most.
const WINDOW: usize = 8;
/// How often the outbox is looked at even without a wake-up.
const POLL: Duration = Duration::from_secs(1);

/// How long the count of reports left at shutdown waits for the last acks to be applied:
/// short, as shutdown waits for the reporter only a second past its grace.
const COUNT_WAIT: Duration = Duration::from_millis(500);

/// How long closing an idle stream waits for the control plane to end it in turn.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// How a report stream ended without an error.
enum Ended {
    /// After shutdown, with the outbox empty.
    Flushed,
    /// Closed after `idle` with nothing to send.
    Idle,
}

/// Runs the reporter until `shutdown`; then keeps sending until the outbox is empty or `grace`
/// has passed (what remains stays in the outbox for the next start). A stream idle for `idle`
/// is closed until there is something to report.
pub async fn run(
    control_plane: ControlPlane,
    agent_id: String,
    queue: Queue,
    shutdown: CancellationToken,
    grace: Duration,
    idle: Duration,
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
        let session = session(
            &control_plane,
            &agent_id,
            &queue,
            &shutdown,
            &mut backoff,
            idle,
        );
        let result = tokio::select! {
            () = &mut deadline => break,
            result = session => result,
        };
        match result {
            Ok(Ended::Flushed) => break,
            Ok(Ended::Idle) => {
                tracing::debug!("report stream idle: closed until there is something to report");
                // Nothing failed: the next stream prefers the first URL, as the first did.
                control_plane.start_over();
                tokio::select! {
                    () = &mut deadline => break,
                    () = something_to_report(&queue, &shutdown) => continue,
                }
            }
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
    // Acks are applied by the queue's writer after they are handed to it: counted before
    // they are, the last batches acknowledged would be said to be left.
    let _ = tokio::time::timeout(COUNT_WAIT, queue.flush()).await;
    match queue.pending_reports() {
        Ok(0) => tracing::debug!("attempt reports flushed"),
        Ok(n) => tracing::warn!(
            pending = n,
            "attempt reports left in the outbox for the next start"
        ),
        Err(err) => tracing::warn!(error = %err, "cannot count pending reports"),
    }
}

/// Returns once the outbox holds a report (or cannot be read, for the next stream to say
/// why), or at shutdown.
async fn something_to_report(queue: &Queue, shutdown: &CancellationToken) {
    loop {
        if !queue.pending_reports().is_ok_and(|n| n == 0) {
            return;
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = queue.reports_added() => {}
            // A report added between the count and the wait is seen here.
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

/// One report stream, until it breaks (error), it has been idle for `idle`, or, after
/// shutdown, the outbox is empty.
async fn session(
    control_plane: &ControlPlane,
    agent_id: &str,
    queue: &Queue,
    shutdown: &CancellationToken,
    backoff: &mut Backoff,
    idle: Duration,
) -> Result<Ended, String> {
    let (url, channel) = control_plane.connect().await?;
    let (tx, out) = mpsc::channel(WINDOW);
    let mut acks = crate::control_plane::opened(
        &url,
        AgentControlClient::new(channel).report_attempts(ReceiverStream::new(out)),
    )
    .await?;
    // Batch id (its last sequence number) → its first sequence number.
    let mut unacked: BTreeMap<u64, u64> = BTreeMap::new();
    // Reports read from the outbox and not sent yet, in order.
    let mut read: Vec<(u64, pb::Attempt)> = Vec::new();
    let mut sent_up_to = 0;
    // Since when reports have been waiting for a fuller batch.
    let mut waiting_since: Option<Instant> = None;
    // Since when the stream has had nothing to send and nothing unacked.
    let mut idle_since = Instant::now();
    loop {
        while unacked.len() < WINDOW {
            if read.len() < MAX_REPORT_BATCH {
                let after = read.last().map_or(sent_up_to, |(seq, _)| *seq);
                let more = queue
                    .reports(after, MAX_REPORT_BATCH - read.len())
                    .map_err(|e| e.to_string())?;
                read.extend(more);
            }
            if read.is_empty() {
                waiting_since = None;
                break;
            }
            let since = *waiting_since.get_or_insert_with(Instant::now);
            let take = batch_len(&read);
            let full = take == MAX_REPORT_BATCH || take < read.len();
            if !full && since.elapsed() < LINGER && !shutdown.is_cancelled() {
                break;
            }
            waiting_since = None;
            let reports: Vec<(u64, pb::Attempt)> = read.drain(..take).collect();
            let (first, last) = (reports[0].0, reports[take - 1].0);
            let batch = pb::ReportBatch {
                batch_id: last,
                agent_id: agent_id.to_owned(),
                attempts: reports
                    .into_iter()
                    .map(|(_, mut attempt)| {
                        // Reports the queue writes itself (a delivery not kept) name no agent.
                        if attempt.agent_id.is_empty() {
                            attempt.agent_id = agent_id.to_owned();
                        }
                        attempt
                    })
                    .collect(),
            };
            tx.send(batch).await.map_err(|_| "report stream closed")?;
            unacked.insert(last, first);
            sent_up_to = last;
        }
        if shutdown.is_cancelled() && unacked.is_empty() {
            return Ok(Ended::Flushed);
        }
        let quiet = unacked.is_empty() && read.is_empty();
        if !quiet {
            idle_since = Instant::now();
        } else if idle_since.elapsed() >= idle {
            // Half-closed: the control plane ends the stream in turn once it has read it all.
            drop(tx);
            let _ = tokio::time::timeout(CLOSE_WAIT, acks.message()).await;
            return Ok(Ended::Idle);
        }
        // A batch lingering for more is sent when its time is up; an idle stream is closed
        // when its time is.
        let wait = match waiting_since {
            Some(since) => LINGER.saturating_sub(since.elapsed()),
            None if quiet => POLL.min(idle.saturating_sub(idle_since.elapsed())),
            None => POLL,
        };
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

/// How many of `reports` (at least one) the next batch takes: at most [`MAX_REPORT_BATCH`],
/// and no more than fit in [`MAX_REPORT_BATCH_BYTES`].
fn batch_len(reports: &[(u64, pb::Attempt)]) -> usize {
    let mut bytes = 0;
    let mut take = 0;
    for (_, report) in reports.iter().take(MAX_REPORT_BATCH) {
        // Each attempt's field tag and length prefix: a few bytes more than its own length.
        bytes += report.encoded_len() + 8;
        if take > 0 && bytes > MAX_REPORT_BATCH_BYTES {
            break;
        }
        take += 1;
    }
    take
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(excerpt_len: usize) -> pb::Attempt {
        pb::Attempt {
            event_id: "evt_1".into(),
            response_excerpt: "x".repeat(excerpt_len),
            ..Default::default()
        }
    }

    #[test]
    fn a_batch_is_bounded_by_count_and_by_bytes() {
        let small: Vec<_> = (1..=1500).map(|seq| (seq, report(10))).collect();
        assert_eq!(batch_len(&small), MAX_REPORT_BATCH);
        assert_eq!(batch_len(&small[..7]), 7);
        // 100 KiB each: as many as fit in a batch's bytes, and not one more.
        let large: Vec<_> = (1..=50).map(|seq| (seq, report(100 * 1024))).collect();
        let fit = MAX_REPORT_BATCH_BYTES / (large[0].1.encoded_len() + 8);
        assert_eq!(fit, 5);
        assert_eq!(batch_len(&large), fit);
        // One report larger than a batch still goes, alone.
        let huge = vec![(1, report(MAX_REPORT_BATCH_BYTES + 1))];
        assert_eq!(batch_len(&huge), 1);
    }
}
