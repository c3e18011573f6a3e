//! Why a call was refused, for clients that act on it without reading the message: the
//! reasons Herald puts in a `google.rpc.ErrorInfo` detail (gRPC's standard error model) on
//! statuses whose code alone does not tell cases apart that call for different action.

use tonic_types::{ErrorDetails, StatusExt as _};

/// The `domain` of Herald's `ErrorInfo` details.
pub const DOMAIN: &str = "herald";

/// A refusal a client can act on by its reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// `RESOURCE_EXHAUSTED` because a disk under a store is full: writes resume by themselves
    /// once an operator frees space. Trying again soon does not help; alerting does. (A
    /// limit that is reached, a queue's bound or a tenant's share, has no reason: backing
    /// off is the remedy there.)
    DiskFull,
}

impl Reason {
    /// The reason as `ErrorInfo.reason` carries it.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::DiskFull => "DISK_FULL",
        }
    }

    /// The reason `status` carries, if it is one of Herald's.
    pub fn of(status: &tonic::Status) -> Option<Reason> {
        let info = status.get_details_error_info()?;
        if info.domain != DOMAIN {
            return None;
        }
        match info.reason.as_str() {
            "DISK_FULL" => Some(Reason::DiskFull),
            _ => None,
        }
    }
}

/// `RESOURCE_EXHAUSTED` for a full disk, with `message` for people and [`Reason::DiskFull`]
/// for programs.
pub fn disk_full(message: impl Into<String>) -> tonic::Status {
    tonic::Status::with_error_details(
        tonic::Code::ResourceExhausted,
        message,
        ErrorDetails::with_error_info(
            Reason::DiskFull.as_str(),
            DOMAIN,
            std::collections::HashMap::<String, String>::new(),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_disk_says_so_in_its_details() {
        let status = disk_full("the queue's disk is full");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(status.message(), "the queue's disk is full");
        assert_eq!(Reason::of(&status), Some(Reason::DiskFull));
        assert_eq!(Reason::of(&tonic::Status::resource_exhausted("full")), None);
    }
}
