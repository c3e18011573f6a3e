//! The signals every Herald binary shuts down gracefully on: SIGTERM (how service managers and
//! Kubernetes stop a process) and Ctrl-C.

use std::future::Future;

/// Completes on SIGTERM or Ctrl-C. The SIGTERM handler is installed when this is called, not
/// when the future is first polled: a daemon that reports itself ready before it polls must
/// not die of a SIGTERM sent in between (the default action).
pub fn signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        if let Ok(mut term) = term {
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
            return;
        }
        let _ = ctrl_c.await;
    }
}

/// The longest grace period a binary accepts for draining at shutdown.
pub const MAX_GRACE: std::time::Duration = std::time::Duration::from_secs(3600);

/// Parses a shutdown grace period (`30s`, `2m`): at most [`MAX_GRACE`], since a service
/// manager stops waiting long before, and a longer one only hides a stuck drain.
pub fn parse_grace(text: &str) -> Result<std::time::Duration, String> {
    let grace = crate::duration::parse(text)?;
    if grace > MAX_GRACE {
        return Err(format!(
            "{text:?} is longer than the most allowed, {}",
            humantime::format_duration(MAX_GRACE)
        ));
    }
    Ok(grace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grace_periods_are_bounded() {
        assert_eq!(parse_grace("30s"), Ok(std::time::Duration::from_secs(30)));
        assert_eq!(parse_grace("1h"), Ok(MAX_GRACE));
        assert!(parse_grace("61m").is_err());
        assert!(parse_grace("18446744073709551615s").is_err());
        assert!(parse_grace("soon").is_err());
    }
}
