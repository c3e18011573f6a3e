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
