//! Usage errors found after the command line was parsed (a flag missing for this command, a
//! combination that names nothing to do): they exit with code 2, as clap's own do, so a script
//! can tell "called wrongly" (2) from "the operation failed" (1).

/// A command called wrongly; the message says how to call it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// A usage error saying `message`.
pub fn usage(message: impl Into<String>) -> anyhow::Error {
    UsageError(message.into()).into()
}
