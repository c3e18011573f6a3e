//! Sends attempt reports to the control plane in batches over the report stream, and keeps
//! each batch until the control plane acks it; batches not acked when a stream breaks are sent
//! again on the next one (the control plane stores attempts idempotently, so a resend is not
//! a duplicate in the central log).
//!
//! The unacked backlog is bounded in memory ([`MAX_BACKLOG`] attempts); past it the oldest
//! reports are dropped with a warning.

use std::collections::VecDeque;
use std::time::Duration;

use herald_proto::v1 as pb;
use herald_proto::v1::agent_control_client::AgentControlClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::control_plane::ControlPlane;

/// Attempts per batch.
pub const BATCH_SIZE: usize = 500;
/// How long a partial batch waits for more attempts.
const BATCH_DELAY: Duration = Duration::from_millis(20);
/// Unacked attempts kept at most.
pub const MAX_BACKLOG: usize = 200_000;
/// Reports queued between deliveries and the reporter task.
const CHANNEL: usize = 10_000;

/// The handle deliveries report through.
#[derive(Clone)]
pub struct Reporter {
    tx: mpsc::Sender<pb::Attempt>,
}

impl Reporter {
    /// Starts the reporter task; it flushes what it can when `shutdown` fires and `done` is
    /// given back when it has finished.
    pub fn start(
        control_plane: ControlPlane,
        agent_id: String,
        shutdown: CancellationToken,
        grace: Duration,
    ) -> (Reporter, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(CHANNEL);
        let task = tokio::spawn(run(control_plane, agent_id, rx, shutdown, grace));
        (Reporter { tx }, task)
    }

    /// Queues a report.
    pub async fn report(&self, attempt: pb::Attempt) {
        // The task only ends at shutdown; a report after that has nowhere to go.
        let _ = self.tx.send(attempt).await;
    }
}

struct Backlog {
    next_id: u64,
    /// Batches sent (or to send) and not yet acked, oldest first.
    unacked: VecDeque<pb::ReportBatch>,
    /// Attempts waiting to form a batch.
    forming: Vec<pb::Attempt>,
    agent_id: String,
}

impl Backlog {
    fn len(&self) -> usize {
        self.unacked.iter().map(|b| b.attempts.len()).sum::<usize>() + self.forming.len()
    }

    fn seal(&mut self) -> Option<pb::ReportBatch> {
        if self.forming.is_empty() {
            return None;
        }
        self.next_id += 1;
        let batch = pb::ReportBatch {
            batch_id: self.next_id,
            agent_id: self.agent_id.clone(),
            attempts: std::mem::take(&mut self.forming),
        };
        self.unacked.push_back(batch.clone());
        while self.len() > MAX_BACKLOG {
            if let Some(dropped) = self.unacked.pop_front() {
                tracing::warn!(
                    attempts = dropped.attempts.len(),
                    "report backlog full; dropping the oldest reports"
                );
            }
        }
        Some(batch)
    }
}

async fn run(
    control_plane: ControlPlane,
    agent_id: String,
    mut rx: mpsc::Receiver<pb::Attempt>,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let mut backlog = Backlog {
        next_id: 0,
        unacked: VecDeque::new(),
        forming: Vec::new(),
        agent_id,
    };
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    loop {
        let result = tokio::select! {
            () = shutdown.cancelled() => break,
            result = session(&control_plane, &mut backlog, &mut rx, &mut backoff, None) => result,
        };
        if let Err(err) = result {
            tracing::warn!(error = %err, "report stream lost; reconnecting");
        }
        let delay = backoff.next_delay();
        // Keep accepting reports while disconnected.
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = &mut sleep => break,
                Some(attempt) = rx.recv() => {
                    backlog.forming.push(attempt);
                    if backlog.forming.len() >= BATCH_SIZE {
                        backlog.seal();
                    }
                }
            }
        }
    }
    // Shutdown: take what is queued and try to deliver the backlog within the grace period.
    rx.close();
    while let Some(attempt) = rx.recv().await {
        backlog.forming.push(attempt);
    }
    backlog.seal();
    if backlog.unacked.is_empty() {
        return;
    }
    let flush = session(
        &control_plane,
        &mut backlog,
        &mut rx,
        &mut backoff,
        Some(()),
    );
    match tokio::time::timeout(grace, flush).await {
        Ok(Ok(())) => tracing::info!("attempt reports flushed"),
        Ok(Err(err)) => {
            tracing::warn!(error = %err, pending = backlog.len(), "could not flush attempt reports")
        }
        Err(_) => tracing::warn!(
            pending = backlog.len(),
            "grace period over before attempt reports were flushed"
        ),
    }
}

/// One report stream: resend the unacked backlog, then batch new reports, until the stream
/// breaks. With `drain`, return once the backlog is acked.
async fn session(
    control_plane: &ControlPlane,
    backlog: &mut Backlog,
    rx: &mut mpsc::Receiver<pb::Attempt>,
    backoff: &mut Backoff,
    drain: Option<()>,
) -> Result<(), String> {
    let (url, channel) = control_plane.connect().await?;
    let (tx, out) = mpsc::channel(64);
    let mut acks = AgentControlClient::new(channel)
        .report_attempts(ReceiverStream::new(out))
        .await
        .map_err(|s| format!("{url}: {}", s.message()))?
        .into_inner();
    for batch in backlog.unacked.iter().cloned() {
        tx.send(batch).await.map_err(|_| "report stream closed")?;
    }
    let mut flush = tokio::time::interval(BATCH_DELAY);
    loop {
        if drain.is_some() && backlog.unacked.is_empty() {
            return Ok(());
        }
        tokio::select! {
            ack = acks.message() => match ack {
                Ok(Some(ack)) => {
                    backoff.reset();
                    backlog.unacked.retain(|b| b.batch_id != ack.batch_id);
                }
                Ok(None) => return Err(format!("{url} ended the report stream")),
                Err(status) => return Err(format!("{url}: {}", status.message())),
            },
            Some(attempt) = rx.recv(), if drain.is_none() => {
                backlog.forming.push(attempt);
                if backlog.forming.len() >= BATCH_SIZE
                    && let Some(batch) = backlog.seal()
                {
                    tx.send(batch).await.map_err(|_| "report stream closed")?;
                }
            }
            _ = flush.tick(), if drain.is_none() => {
                if let Some(batch) = backlog.seal() {
                    tx.send(batch).await.map_err(|_| "report stream closed")?;
                }
            }
        }
    }
}
