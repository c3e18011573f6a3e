//! The largest request message a Herald gRPC server reads, and the answer to a larger one:
//! `RESOURCE_EXHAUSTED`, as gRPC's status-code table says of a message larger than the
//! server's limit. (tonic's own check, at the same limit, answers `OUT_OF_RANGE`; this layer
//! sees each message's length first and answers before it.)

use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// gRPC's usual limit on one message, in bytes, and tonic's default: what a server reads
/// unless it is given more room.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// The tower layer a gRPC server puts in front of its services: every request's messages are
/// held to `limit` bytes each. Give tonic's own limit (`max_decoding_message_size`) the same
/// or more room, so that this answer is the one a caller gets.
pub fn layer(
    limit: usize,
) -> tower::util::MapRequestLayer<
    impl FnMut(http::Request<tonic::body::Body>) -> http::Request<tonic::body::Body> + Clone,
> {
    tower::util::MapRequestLayer::new(move |request: http::Request<tonic::body::Body>| {
        request.map(|body| tonic::body::Body::new(LimitedMessages::new(body, limit)))
    })
}

/// The length-prefix of a gRPC message: a compressed flag and a big-endian `u32` length.
pub(crate) const PREFIX_BYTES: usize = 5;

/// The length a message's prefix declares.
pub(crate) fn declared_length(prefix: [u8; PREFIX_BYTES]) -> usize {
    let [_, a, b, c, d] = prefix;
    u32::from_be_bytes([a, b, c, d]) as usize
}

/// A request body read as a stream of length-prefixed gRPC messages, each at most `limit`
/// bytes; the first longer one ends the body with `RESOURCE_EXHAUSTED`.
struct LimitedMessages<B> {
    inner: B,
    limit: usize,
    /// The prefix of the next message, as far as it has arrived.
    prefix: [u8; PREFIX_BYTES],
    prefix_read: usize,
    /// Bytes of the current message still to come.
    message_left: usize,
    /// A message over the limit was seen: nothing more is read.
    refused: bool,
}

impl<B> LimitedMessages<B> {
    fn new(inner: B, limit: usize) -> Self {
        LimitedMessages {
            inner,
            limit,
            prefix: [0; PREFIX_BYTES],
            prefix_read: 0,
            message_left: 0,
            refused: false,
        }
    }

    /// Follows the message framing through `data`; the refusal of the first message whose
    /// declared length is over the limit.
    fn scan(&mut self, mut data: &[u8]) -> Result<(), tonic::Status> {
        while !data.is_empty() {
            if self.message_left > 0 {
                let taken = self.message_left.min(data.len());
                self.message_left -= taken;
                data = &data[taken..];
                continue;
            }
            let taken = (PREFIX_BYTES - self.prefix_read).min(data.len());
            self.prefix[self.prefix_read..self.prefix_read + taken].copy_from_slice(&data[..taken]);
            self.prefix_read += taken;
            data = &data[taken..];
            if self.prefix_read == PREFIX_BYTES {
                self.prefix_read = 0;
                let length = declared_length(self.prefix);
                if length > self.limit {
                    return Err(tonic::Status::resource_exhausted(format!(
                        "a message of {length} bytes is over the limit of {} bytes",
                        self.limit
                    )));
                }
                self.message_left = length;
            }
        }
        Ok(())
    }
}

impl<B> Body for LimitedMessages<B>
where
    B: Body<Data = Bytes, Error = tonic::Status> + Unpin,
{
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = self.get_mut();
        if this.refused {
            return Poll::Ready(None);
        }
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        if let Some(Ok(frame)) = &frame
            && let Some(data) = frame.data_ref()
            && let Err(refusal) = this.scan(data)
        {
            this.refused = true;
            return Poll::Ready(Some(Err(refusal)));
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.refused || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(length: u32) -> Vec<u8> {
        let mut bytes = vec![0];
        bytes.extend_from_slice(&length.to_be_bytes());
        bytes.resize(PREFIX_BYTES + length as usize, 7);
        bytes
    }

    #[test]
    fn messages_up_to_the_limit_pass_however_they_are_cut() {
        let stream = [message(10), message(0), message(3)].concat();
        for cut in 1..stream.len() {
            let mut limited = LimitedMessages::new((), 10);
            for chunk in stream.chunks(cut) {
                limited.scan(chunk).expect("within the limit");
            }
            assert_eq!((limited.prefix_read, limited.message_left), (0, 0));
        }
    }

    #[test]
    fn a_message_over_the_limit_is_resource_exhausted_even_with_its_prefix_split() {
        let stream = [message(3), message(11)].concat();
        let mut limited = LimitedMessages::new((), 10);
        limited
            .scan(&stream[..10])
            .expect("the first message and part of a prefix");
        let refusal = limited.scan(&stream[10..]).expect_err("over");
        assert_eq!(refusal.code(), tonic::Code::ResourceExhausted);
        assert!(
            refusal.message().contains("11 bytes"),
            "{}",
            refusal.message()
        );
    }
}
