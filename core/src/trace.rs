//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): the `traceparent` an `Emit` call
//! carries is kept with the event, and every delivery attempt sends it on with the same trace id
//! and a span id of its own, so a receiver's work joins the trace of the operation that caused
//! the event.
//!
//! Only the `traceparent` header is carried; `tracestate` is vendor data Herald does not keep.

use std::fmt;

/// The header name, on gRPC calls and on webhook requests.
pub const HEADER: &str = "traceparent";

/// Why a `traceparent` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "traceparent must be 00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>, ids not all zero"
)]
pub struct InvalidTraceParent;

/// A parsed `traceparent`: version 00 fields (later versions are read as version 00, as the
/// specification asks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    trace_id: [u8; 16],
    parent_id: [u8; 8],
    flags: u8,
}

impl TraceParent {
    /// Parses a `traceparent` value: lowercase hex, non-zero ids, version not `ff`; a version
    /// above 00 may carry more fields after the flags.
    pub fn parse(text: &str) -> Result<TraceParent, InvalidTraceParent> {
        let bytes = text.as_bytes();
        if bytes.len() < 55 || bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return Err(InvalidTraceParent);
        }
        let version = hex::<1>(&bytes[0..2])?[0];
        let exact = version == 0 && bytes.len() == 55;
        let extended = version > 0 && (bytes.len() == 55 || bytes[55] == b'-');
        if version == 0xff || !(exact || extended) {
            return Err(InvalidTraceParent);
        }
        let parsed = TraceParent {
            trace_id: hex::<16>(&bytes[3..35])?,
            parent_id: hex::<8>(&bytes[36..52])?,
            flags: hex::<1>(&bytes[53..55])?[0],
        };
        if parsed.trace_id == [0; 16] || parsed.parent_id == [0; 8] {
            return Err(InvalidTraceParent);
        }
        Ok(parsed)
    }

    /// The trace id.
    pub fn trace_id(&self) -> [u8; 16] {
        self.trace_id
    }

    /// The id of the span that sent it (the parent of spans made for it).
    pub fn parent_id(&self) -> [u8; 8] {
        self.parent_id
    }

    /// The trace flags (bit 0: sampled).
    pub fn flags(&self) -> u8 {
        self.flags
    }

    /// The same trace with `span_id` as the parent: what a new span (a delivery attempt)
    /// sends on. An all-zero `span_id` is replaced by one, as zero is invalid.
    pub fn child(&self, span_id: [u8; 8]) -> TraceParent {
        TraceParent {
            parent_id: if span_id == [0; 8] {
                [1, 0, 0, 0, 0, 0, 0, 0]
            } else {
                span_id
            },
            ..*self
        }
    }

    /// The same trace with a random span id.
    ///
    /// # Panics
    ///
    /// When the operating system's random number generator fails.
    pub fn random_child(&self) -> TraceParent {
        let mut span_id = [0; 8];
        if let Err(e) = getrandom::fill(&mut span_id) {
            panic!("the operating system's random number generator failed: {e}");
        }
        self.child(span_id)
    }
}

/// Writes the version 00 form.
impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("00-")?;
        self.trace_id
            .iter()
            .try_for_each(|b| write!(f, "{b:02x}"))?;
        f.write_str("-")?;
        self.parent_id
            .iter()
            .try_for_each(|b| write!(f, "{b:02x}"))?;
        write!(f, "-{:02x}", self.flags)
    }
}

/// `N` bytes from exactly `2N` lowercase hex digits.
fn hex<const N: usize>(digits: &[u8]) -> Result<[u8; N], InvalidTraceParent> {
    if digits.len() != 2 * N {
        return Err(InvalidTraceParent);
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(InvalidTraceParent),
    };
    let mut out = [0; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = nibble(digits[2 * i])? << 4 | nibble(digits[2 * i + 1])?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    // The example from the specification.
    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_writes_the_specification_example() {
        let parent = TraceParent::parse(EXAMPLE).expect("valid");
        assert_eq!(parent.to_string(), EXAMPLE);
        let child = parent.child([0xab; 8]);
        assert_eq!(
            child.to_string(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-abababababababab-01"
        );
        assert_ne!(parent.random_child(), parent.random_child());
        assert_eq!(parent.child([0; 8]).to_string().len(), 55);
    }

    #[test]
    fn later_versions_are_read_as_version_00() {
        let future =
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds";
        let parent = TraceParent::parse(future).expect("valid");
        assert_eq!(parent.to_string(), EXAMPLE);
    }

    #[test]
    fn refusals() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            "0é-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4bf92f3577b34da6a3ce929d0e0e473é-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), Err(InvalidTraceParent), "{bad}");
        }
    }
}
