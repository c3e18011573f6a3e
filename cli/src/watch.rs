//! `--watch`: show a resource again whenever it changes, until Ctrl-C. The control plane is
//! asked every [`EVERY`]; output is printed only when the answer differs from the last one.

use std::time::Duration;

use serde_json::Value;

use crate::output::OutputError;

/// How often a watched resource is read again.
pub const EVERY: Duration = Duration::from_secs(2);

/// Prints what changed since the last round.
#[derive(Default)]
pub struct Watch {
    last: Option<Value>,
}

impl Watch {
    /// Calls `print` with `value` unless it is what was printed last.
    pub fn show(
        &mut self,
        value: Value,
        print: impl FnOnce(&Value) -> Result<(), OutputError>,
    ) -> Result<(), OutputError> {
        if self.last.as_ref() != Some(&value) {
            print(&value)?;
            self.last = Some(value);
        }
        Ok(())
    }

    /// Waits for the next round; false when the user pressed Ctrl-C.
    pub async fn next_round() -> bool {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => false,
            () = tokio::time::sleep(EVERY) => true,
        }
    }
}
