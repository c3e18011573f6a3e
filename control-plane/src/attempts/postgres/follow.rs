//! Following what every replica stores: each insert's transaction sends
//! `NOTIFY herald_attempts` with the `seq` ranges it stored ([`ranges`]); every replica
//! `LISTEN`s on a connection of its own and reads those rows, so a tail on any replica sees the
//! attempts reported through any other within moments. A row named twice (a range that covers
//! another batch's rows) is sent once ([`Seen`]). Rows are read only while a tail is open on
//! this replica.
//!
//! Notifications sent while the follower's connection is down are lost to it, so each time it
//! listens again it reads what was stored meanwhile: the rows past the highest `seq` it had
//! heard of (less a margin, for transactions that took their `seq` earlier and committed
//! later). Its connection says `application_name=herald-control-plane-follower`.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use futures_util::StreamExt as _;
use herald_proto::v1 as pb;
use prost::Message as _;
use tokio::sync::{broadcast, watch};
use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

use super::{CHANNEL, DatabaseUrl, Tls, unavailable};
use crate::attempts::LogError;

/// How many `seq`s a follower remembers, so a row in two notifications is sent once.
const FOLLOW_MEMORY: usize = 65_536;
/// The first wait before the follower connects again.
const MIN_FOLLOW_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait before the follower connects again.
const MAX_FOLLOW_BACKOFF: Duration = Duration::from_secs(10);
/// The longest notification payload sent (PostgreSQL takes up to 8000 bytes).
const MAX_NOTIFY_BYTES: usize = 7000;
/// How far below the highest `seq` heard of a catch-up starts reading: a transaction may take
/// its `seq`s before another and commit after it.
const CATCH_UP_MARGIN: i64 = 4096;
/// The follower's `application_name`, so operators (and tests) can tell its connection.
pub const FOLLOWER_APPLICATION: &str = "herald-control-plane-follower";

/// What the follower works with.
pub(super) struct Follower {
    /// The database.
    pub url: DatabaseUrl,
    /// How its connection is secured.
    pub tls: Tls,
    /// Connections to read the notified rows with.
    pub pool: Pool,
    /// Where the rows go: the tails of this replica.
    pub tail: broadcast::Sender<Arc<pb::Attempt>>,
    /// Whether the `LISTEN` is in place now (so the log can wait for it when it opens).
    pub listening: watch::Sender<bool>,
}

impl Follower {
    /// Follows the attempts every replica stores: `LISTEN`s for their `seq` ranges and reads
    /// those rows, until `stop`; connects again with backoff when the connection is lost.
    pub(super) async fn run(self, stop: CancellationToken) {
        let mut seen = Seen::default();
        let mut heard = Heard::default();
        let mut backoff = MIN_FOLLOW_BACKOFF;
        loop {
            let started = tokio::time::Instant::now();
            let result = tokio::select! {
                () = stop.cancelled() => return,
                result = self.follow_once(&mut seen, &mut heard, &stop) => result,
            };
            self.listening.send_replace(false);
            if let Err(err) = result {
                tracing::warn!(database = %self.url, error = %err, "delivery log: following stored attempts; connecting again");
            }
            // A connection that lasted starts the next round of backoff from the beginning.
            if started.elapsed() > MAX_FOLLOW_BACKOFF {
                backoff = MIN_FOLLOW_BACKOFF;
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_FOLLOW_BACKOFF);
        }
    }

    async fn follow_once(
        &self,
        seen: &mut Seen,
        heard: &mut Heard,
        stop: &CancellationToken,
    ) -> Result<(), LogError> {
        let connected = |e| unavailable(&self.url, e);
        let mut config = super::with_tcp_timeouts(self.url.config.clone());
        config.application_name(FOLLOWER_APPLICATION);
        match &self.tls {
            Tls::Off => {
                let (client, connection) = config.connect(NoTls).await.map_err(connected)?;
                self.listen(client, connection, seen, heard, stop).await
            }
            Tls::Verified(connect) => {
                let (client, connection) =
                    config.connect(connect.clone()).await.map_err(connected)?;
                self.listen(client, connection, seen, heard, stop).await
            }
        }
    }

    /// Sends the tails the rows `query` finds (`seq`, `record`) that they were not sent yet.
    async fn send_rows(
        &self,
        seen: &mut Seen,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<(), LogError> {
        let reader = self
            .pool
            .get()
            .await
            .map_err(|e| unavailable(&self.url, e))?;
        let rows = reader
            .query(sql, params)
            .await
            .map_err(|e| unavailable(&self.url, e))?;
        for row in rows {
            let seq: i64 = row.get(0);
            let record: Vec<u8> = row.get(1);
            if seen.insert(seq)
                && let Ok(attempt) = pb::Attempt::decode(record.as_slice())
            {
                // No tail listening is fine.
                let _ = self.tail.send(Arc::new(attempt));
            }
        }
        Ok(())
    }

    /// Once listening: reads what was stored while the follower was not (only for open tails;
    /// the first time, learns where the log stands).
    async fn catch_up(&self, seen: &mut Seen, heard: &mut Heard) -> Result<(), LogError> {
        match heard.highest {
            Some(highest) if self.tail.receiver_count() > 0 => {
                let from = highest.saturating_sub(CATCH_UP_MARGIN);
                self.send_rows(
                    seen,
                    "SELECT seq, record FROM attempts WHERE seq > $1 ORDER BY seq LIMIT $2",
                    &[&from, &(FOLLOW_MEMORY as i64)],
                )
                .await
            }
            Some(_) => Ok(()),
            None => {
                let reader = self
                    .pool
                    .get()
                    .await
                    .map_err(|e| unavailable(&self.url, e))?;
                let row = reader
                    .query_one("SELECT coalesce(max(seq), 0) FROM attempts", &[])
                    .await
                    .map_err(|e| unavailable(&self.url, e))?;
                heard.highest = Some(row.get(0));
                Ok(())
            }
        }
    }

    /// Listens on `client` (driving its `connection`) until it fails or `stop`.
    async fn listen<S, T>(
        &self,
        client: tokio_postgres::Client,
        mut connection: tokio_postgres::Connection<S, T>,
        seen: &mut Seen,
        heard: &mut Heard,
        stop: &CancellationToken,
    ) -> Result<(), LogError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let (url, tail) = (&self.url, &self.tail);
        let (notes, mut notified) = tokio::sync::mpsc::unbounded_channel();
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        let driver = async move {
            while let Some(message) = messages.next().await {
                match message {
                    Ok(tokio_postgres::AsyncMessage::Notification(note)) => {
                        if notes.send(note.payload().to_owned()).is_err() {
                            return Ok(());
                        }
                    }
                    Ok(_) => {}
                    Err(err) => return Err(err),
                }
            }
            Ok(())
        };
        let listen = async {
            client
                .batch_execute(&format!("LISTEN {CHANNEL}"))
                .await
                .map_err(|e| unavailable(url, e))?;
            self.catch_up(seen, heard).await?;
            self.listening.send_replace(true);
            while let Some(payload) = notified.recv().await {
                heard.note(&payload);
                // Rows are read only for someone: with no tail open, a notification costs nothing.
                if tail.receiver_count() == 0 {
                    continue;
                }
                let seqs: Vec<i64> = parse_ranges(&payload)
                    .into_iter()
                    .filter(|seq| !seen.contains(*seq))
                    .collect();
                if seqs.is_empty() {
                    continue;
                }
                self.send_rows(
                    seen,
                    "SELECT seq, record FROM attempts WHERE seq = ANY($1) ORDER BY seq",
                    &[&seqs],
                )
                .await?;
            }
            Ok::<(), LogError>(())
        };
        tokio::select! {
            () = stop.cancelled() => Ok(()),
            driven = driver => driven.map_err(|e| unavailable(url, e)),
            listened = listen => listened,
        }
    }
}

/// The highest `seq` a follower has heard of: where a catch-up starts.
#[derive(Default)]
struct Heard {
    highest: Option<i64>,
}

impl Heard {
    /// Notes a notification's ranges.
    fn note(&mut self, payload: &str) {
        let top = payload
            .split([',', '-'])
            .filter_map(|n| n.parse::<i64>().ok())
            .max();
        if let Some(top) = top {
            self.highest = Some(self.highest.map_or(top, |h| h.max(top)));
        }
    }
}

/// The `seq`s a follower sent lately.
#[derive(Default)]
struct Seen {
    order: VecDeque<i64>,
    set: HashSet<i64>,
}

impl Seen {
    fn contains(&self, seq: i64) -> bool {
        self.set.contains(&seq)
    }

    /// Remembers `seq`; false when it was already known.
    fn insert(&mut self, seq: i64) -> bool {
        if !self.set.insert(seq) {
            return false;
        }
        self.order.push_back(seq);
        if self.order.len() > FOLLOW_MEMORY
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }
}

/// `seqs` as ranges, `1-5,9,12-13`; a list too long for a notification becomes the one range
/// from its least to its greatest (a follower skips the rows it does not find or has sent).
pub(super) fn ranges(mut seqs: Vec<i64>) -> String {
    seqs.sort_unstable();
    let mut parts: Vec<String> = Vec::new();
    let mut start = seqs[0];
    let mut end = start;
    for &seq in &seqs[1..] {
        if seq == end + 1 {
            end = seq;
            continue;
        }
        parts.push(range_text(start, end));
        start = seq;
        end = seq;
    }
    parts.push(range_text(start, end));
    let text = parts.join(",");
    if text.len() <= MAX_NOTIFY_BYTES {
        text
    } else {
        range_text(seqs[0], seqs[seqs.len() - 1])
    }
}

fn range_text(start: i64, end: i64) -> String {
    if start == end {
        start.to_string()
    } else {
        format!("{start}-{end}")
    }
}

/// The `seq`s of a notification; at most [`FOLLOW_MEMORY`], whatever it says.
fn parse_ranges(text: &str) -> Vec<i64> {
    let mut seqs = Vec::new();
    for part in text.split(',') {
        let (start, end) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<i64>(), b.parse::<i64>()),
            None => (part.parse(), part.parse()),
        };
        let (Ok(start), Ok(end)) = (start, end) else {
            continue;
        };
        for seq in start..=end.min(start.saturating_add(FOLLOW_MEMORY as i64)) {
            seqs.push(seq);
            if seqs.len() >= FOLLOW_MEMORY {
                return seqs;
            }
        }
    }
    seqs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notified_ranges_round_trip_and_are_bounded() {
        let seqs = vec![9, 1, 2, 3, 5, 12, 13];
        let text = ranges(seqs);
        assert_eq!(text, "1-3,5,9,12-13");
        assert_eq!(parse_ranges(&text), [1, 2, 3, 5, 9, 12, 13]);
        let scattered: Vec<i64> = (0..5000).map(|i| i * 2).collect();
        assert_eq!(ranges(scattered), "0-9998", "too long: one range");
        assert_eq!(parse_ranges("1-99999999999").len(), FOLLOW_MEMORY);
        assert!(parse_ranges("x,-,5-").is_empty());
    }
}
