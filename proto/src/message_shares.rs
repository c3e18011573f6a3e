//! A [`RequestBudget`] for streams of requests: each message a client streams takes its share
//! of the budget before it is read, and keeps it until the handler is done with it.
//!
//! A long stream (an agent's attempt reports) cannot hold one share for its whole life the way
//! a unary call does: it is idle most of the time, and idle streams would keep the budget from
//! the busy ones. So the share is per message. The body reads each message's length prefix and
//! takes that many bytes of the budget (the whole budget at most) before handing on any of the
//! message; bytes of the message before are handed on first, so a message is never held back
//! by the share its successor waits for. The shares go, in order, to the handler's
//! [`MessageShares`]; the handler takes the share of each message it receives with
//! [`MessageShares::next`] and drops it once the message is dealt with, which lets the next
//! waiting message in.
//!
//! A stream waiting for its share holds the frame with the prefix and whatever its HTTP/2
//! window let the client send ahead: a server using this sets a modest stream window.
//!
//! Only the routes the layer is given are counted; their handlers must take every share, or the
//! shares of messages received but not taken stay held until the stream ends.
//!
//! A message granted its share must then arrive whole within the layer's time limit; one that
//! does not (a client stalled mid-message, or sending a byte at a time) ends its stream with
//! `DEADLINE_EXCEEDED`, so that it cannot keep its share, and the other streams from the
//! budget, for as long as its connection lives.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{AcquireError, OwnedSemaphorePermit};

use crate::message_limit::{PREFIX_BYTES, declared_length};
use crate::request_budget::RequestBudget;

/// The shares of one stream's messages, in the order the messages come; shared by the body
/// that takes them and the handler that gives them back. A stream on a route without the
/// layer has none: [`MessageShares::next`] answers `None`.
#[derive(Clone, Default)]
pub struct MessageShares {
    taken: Arc<Mutex<VecDeque<Share>>>,
}

/// One message's share of the budget, given back when dropped. A message with no bytes, or
/// one read while the budget was being closed, holds none.
pub struct Share(#[allow(dead_code)] Option<OwnedSemaphorePermit>);

impl MessageShares {
    /// The shares of `request`'s messages (none when the layer does not count its route).
    pub fn of<T>(request: &tonic::Request<T>) -> Self {
        request.extensions().get().cloned().unwrap_or_default()
    }

    /// The share of the oldest message received and not yet taken: the one the handler has
    /// just been given. Drop it when done with the message.
    pub fn next(&self) -> Option<Share> {
        self.lock().pop_front()
    }

    fn push(&self, share: Share) {
        self.lock().push_back(share);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Share>> {
        // A panic while the lock is held leaves the queue as it was: nothing to repair.
        self.taken
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl RequestBudget {
    /// The tower layer that counts each message of the requests to `routes` (gRPC paths such
    /// as `/herald.v1.AgentControl/ReportAttempts`) against this budget; a message must arrive
    /// whole within `arrival` of being granted its share.
    pub fn per_message_layer(
        &self,
        routes: &'static [&'static str],
        arrival: Duration,
    ) -> tower::util::MapRequestLayer<
        impl FnMut(http::Request<tonic::body::Body>) -> http::Request<tonic::body::Body> + Clone + use<>,
    > {
        let budget = self.clone();
        tower::util::MapRequestLayer::new(move |request: http::Request<tonic::body::Body>| {
            if !routes.contains(&request.uri().path()) {
                return request;
            }
            let shares = MessageShares::default();
            let (mut parts, body) = request.into_parts();
            parts.extensions.insert(shares.clone());
            let body = SharedMessages::new(body, budget.clone(), shares).arriving_within(arrival);
            http::Request::from_parts(parts, tonic::body::Body::new(body))
        })
    }
}

type Taking = Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>;

/// A request body whose messages are each handed on only once their share is taken.
struct SharedMessages {
    inner: tonic::body::Body,
    budget: RequestBudget,
    shares: MessageShares,
    /// Bytes read and not yet handed on.
    held: Bytes,
    /// Bytes of the current message (its prefix included) still to hand on; 0 at a message's
    /// start.
    message_left: usize,
    /// The share the message at the start of `held` is waiting for.
    taking: Option<Taking>,
    /// How long a message granted its share has to arrive whole.
    arrival: Duration,
    /// When the message being handed on must have arrived whole.
    due: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The body has ended; `last` is what ended it (trailers or an error), handed on after
    /// what is held.
    ended: bool,
    last: Option<Result<Frame<Bytes>, tonic::Status>>,
}

impl SharedMessages {
    fn new(inner: tonic::body::Body, budget: RequestBudget, shares: MessageShares) -> Self {
        SharedMessages {
            inner,
            budget,
            shares,
            held: Bytes::new(),
            message_left: 0,
            taking: None,
            arrival: Duration::MAX,
            due: None,
            ended: false,
            last: None,
        }
    }

    /// The same body, each message granted its share given `arrival` to arrive whole.
    fn arriving_within(mut self, arrival: Duration) -> Self {
        self.arrival = arrival;
        self
    }

    /// Reads the next frame: data joins what is held; anything else ends the body.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) if self.held.is_empty() => self.held = data,
                Ok(data) => {
                    let mut joined = BytesMut::with_capacity(self.held.len() + data.len());
                    joined.extend_from_slice(&self.held);
                    joined.extend_from_slice(&data);
                    self.held = joined.freeze();
                }
                Err(trailers) => {
                    self.ended = true;
                    self.last = Some(Ok(trailers));
                }
            },
            Some(Err(status)) => {
                self.ended = true;
                self.last = Some(Err(status));
            }
            None => self.ended = true,
        }
        Poll::Ready(())
    }
}

impl Body for SharedMessages {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = self.get_mut();
        loop {
            if let Some(taking) = &mut this.taking {
                // The budget is never closed; were it, the message would go on without a share.
                let permit = ready!(taking.as_mut().poll(cx)).ok();
                this.taking = None;
                this.shares.push(Share(permit));
                this.due = tokio::time::Instant::now()
                    .checked_add(this.arrival)
                    .map(|due| Box::pin(tokio::time::sleep_until(due)));
            }
            if this.message_left == 0 && !this.held.is_empty() {
                if this.held.len() < PREFIX_BYTES && !this.ended {
                    ready!(this.poll_read(cx));
                    continue;
                }
                let Some(prefix) = this.held.first_chunk::<PREFIX_BYTES>() else {
                    // The body ended inside a prefix: handed on as it is, for the decoder
                    // to refuse.
                    this.message_left = this.held.len();
                    continue;
                };
                let length = declared_length(*prefix);
                this.message_left = PREFIX_BYTES + length;
                match this.budget.share(length) {
                    0 => this.shares.push(Share(None)),
                    share => {
                        let budget = this.budget.clone();
                        this.taking = Some(Box::pin(async move { budget.take(share).await }));
                        continue;
                    }
                }
            }
            if !this.held.is_empty() {
                let handed = this.message_left.min(this.held.len());
                this.message_left -= handed;
                if this.message_left == 0 {
                    this.due = None;
                }
                return Poll::Ready(Some(Ok(Frame::data(this.held.split_to(handed)))));
            }
            if this.ended {
                return Poll::Ready(this.last.take());
            }
            if let Some(due) = &mut this.due
                && due.as_mut().poll(cx).is_ready()
            {
                this.due = None;
                this.ended = true;
                return Poll::Ready(Some(Err(tonic::Status::deadline_exceeded(format!(
                    "a message was not whole {:?} after it was let in: the stream is ended so \
                     that it does not keep its share of the server's budget",
                    this.arrival
                )))));
            }
            ready!(this.poll_read(cx));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_empty()
            && self.last.is_none()
            && (self.ended || (self.taking.is_none() && self.inner.is_end_stream()))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc;

    use super::*;

    /// A body fed by the test, chunk by chunk; dropping the sender ends it.
    struct Fed(mpsc::UnboundedReceiver<Bytes>);

    impl Body for Fed {
        type Data = Bytes;
        type Error = tonic::Status;

        fn poll_frame(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
            self.get_mut()
                .0
                .poll_recv(cx)
                .map(|chunk| chunk.map(|c| Ok(Frame::data(c))))
        }
    }

    /// One gRPC message of `length` bytes, with its prefix.
    fn message(length: u32) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend_from_slice(&length.to_be_bytes());
        bytes.resize(PREFIX_BYTES + length as usize, 7);
        bytes
    }

    /// A stream counted against `budget`, fed through the returned sender, and its shares.
    fn stream(
        budget: &RequestBudget,
    ) -> (mpsc::UnboundedSender<Bytes>, SharedMessages, MessageShares) {
        let (tx, rx) = mpsc::unbounded_channel();
        let shares = MessageShares::default();
        let body = SharedMessages::new(
            tonic::body::Body::new(Fed(rx)),
            budget.clone(),
            shares.clone(),
        );
        (tx, body, shares)
    }

    /// The next frame's data, or `None` when nothing comes within a second.
    async fn next(body: &mut SharedMessages) -> Option<Bytes> {
        let frame = tokio::time::timeout(
            Duration::from_secs(1),
            std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx)),
        )
        .await
        .ok()?;
        Some(
            frame
                .expect("a frame")
                .expect("data")
                .into_data()
                .expect("data"),
        )
    }

    /// Reads whole messages' worth of frames: `bytes` bytes.
    async fn read(body: &mut SharedMessages, bytes: usize) -> Vec<u8> {
        let mut read = Vec::new();
        while read.len() < bytes {
            read.extend_from_slice(&next(body).await.expect("more of the message"));
        }
        assert_eq!(read.len(), bytes, "no byte of the next message with it");
        read
    }

    #[tokio::test(start_paused = true)]
    async fn each_message_waits_for_its_share_and_the_handler_gives_it_back() {
        let budget = RequestBudget::new(100);
        let (a_tx, mut a, a_shares) = stream(&budget);
        let (b_tx, mut b, b_shares) = stream(&budget);
        a_tx.send(message(80).into()).expect("fed");
        assert_eq!(read(&mut a, PREFIX_BYTES + 80).await, message(80));
        let a_share = a_shares.next().expect("the message's share");
        assert_eq!(budget.held_bytes(), 80);

        // Another stream's message does not fit beside it: not one byte of it is handed on.
        b_tx.send(message(60).into()).expect("fed");
        assert!(next(&mut b).await.is_none(), "b waits for room");
        assert_eq!(budget.waiting(), 1);
        assert!(b_shares.next().is_none());

        drop(a_share);
        assert_eq!(read(&mut b, PREFIX_BYTES + 60).await, message(60));
        assert_eq!(budget.held_bytes(), 60);
        drop(b_shares.next().expect("b's share"));
        assert_eq!(budget.held_bytes(), 0, "every share given back");
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_is_handed_on_whole_before_its_successor_waits_for_room() {
        let budget = RequestBudget::new(50);
        let (tx, mut body, shares) = stream(&budget);
        // Two messages in one frame, the second's prefix cut across into the next frame.
        let mut bytes = message(40);
        bytes.extend_from_slice(&message(30));
        let (first, second) = bytes.split_at(PREFIX_BYTES + 40 + 2);
        tx.send(Bytes::copy_from_slice(first)).expect("fed");
        tx.send(Bytes::copy_from_slice(second)).expect("fed");

        assert_eq!(read(&mut body, PREFIX_BYTES + 40).await, message(40));
        let first_share = shares.next().expect("the first message's share");
        assert!(next(&mut body).await.is_none(), "the second waits for room");
        drop(first_share);
        assert_eq!(read(&mut body, PREFIX_BYTES + 30).await, message(30));
        assert_eq!(budget.held_bytes(), 30);
    }

    #[tokio::test(start_paused = true)]
    async fn small_messages_share_the_budget_and_one_larger_than_it_takes_it_all() {
        let budget = RequestBudget::new(10);
        let (tx, mut body, shares) = stream(&budget);
        let mut bytes = message(0);
        bytes.extend_from_slice(&message(3));
        bytes.extend_from_slice(&message(500));
        tx.send(bytes.into()).expect("fed");
        read(&mut body, PREFIX_BYTES).await;
        read(&mut body, PREFIX_BYTES + 3).await;
        let (empty, small) = (shares.next(), shares.next().expect("a share"));
        assert!(
            empty.is_some(),
            "an empty message still has its (empty) share"
        );
        assert_eq!(budget.held_bytes(), 3);
        assert!(next(&mut body).await.is_none(), "the large one waits");
        drop(small);
        read(&mut body, PREFIX_BYTES + 500).await;
        assert_eq!(budget.held_bytes(), 10, "all of it, and no more");
    }

    #[tokio::test(start_paused = true)]
    async fn shares_not_taken_go_back_when_the_stream_ends() {
        let budget = RequestBudget::new(10);
        let (tx, mut body, shares) = stream(&budget);
        tx.send(message(4).into()).expect("fed");
        read(&mut body, PREFIX_BYTES + 4).await;
        tx.send(message(6).into()).expect("fed");
        read(&mut body, PREFIX_BYTES + 6).await;
        assert_eq!(budget.held_bytes(), 10);
        drop((tx, body, shares));
        assert_eq!(budget.held_bytes(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_that_stops_arriving_ends_its_stream_and_gives_its_share_back() {
        let budget = RequestBudget::new(100);
        let (tx, body, shares) = stream(&budget);
        let mut body = body.arriving_within(Duration::from_secs(60));
        // Slow but steady: 40 s between the halves of the first message is within the limit.
        let first = message(20);
        tx.send(Bytes::copy_from_slice(&first[..10])).expect("fed");
        assert_eq!(next(&mut body).await.as_deref(), Some(&first[..10]));
        tokio::time::sleep(Duration::from_secs(40)).await;
        tx.send(Bytes::copy_from_slice(&first[10..])).expect("fed");
        assert_eq!(next(&mut body).await.as_deref(), Some(&first[10..]));
        drop(shares.next());

        // The second stops halfway: its share is held until the limit, then the stream ends.
        let second = message(80);
        tx.send(Bytes::copy_from_slice(&second[..30])).expect("fed");
        assert_eq!(next(&mut body).await.as_deref(), Some(&second[..30]));
        assert_eq!(budget.held_bytes(), 80);
        tokio::time::sleep(Duration::from_secs(58)).await;
        // (Waiting a second more for a frame: 59 s, still within the limit.)
        assert!(next(&mut body).await.is_none(), "still within the limit");
        let ended = tokio::time::timeout(
            Duration::from_secs(5),
            std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)),
        )
        .await
        .expect("the stream ends at the limit");
        let status = ended.expect("an end").expect_err("an error");
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
        let after = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        assert!(after.is_none(), "nothing more is read");
        // The handler, seeing the error, ends: the share goes with the stream.
        drop((body, shares));
        assert_eq!(budget.held_bytes(), 0);
    }

    #[tokio::test]
    async fn a_body_that_ends_inside_a_prefix_is_handed_on_as_it_is() {
        let budget = RequestBudget::new(10);
        let (tx, mut body, _shares) = stream(&budget);
        tx.send(Bytes::from_static(&[0, 0])).expect("fed");
        drop(tx);
        assert_eq!(next(&mut body).await.as_deref(), Some(&[0, 0][..]));
        let end = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await;
        assert!(end.is_none());
        assert_eq!(budget.held_bytes(), 0);
    }
}
