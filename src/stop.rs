//! The stop request shared by the daemon, the cycle, the executor and the API client.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

/// Set when the process is asked to stop: the executor finishes the call in flight, records
/// it, and starts no other; a listing in progress is abandoned; a retry wait is cut short.
#[derive(Debug, Clone, Default)]
pub struct StopSignal(Arc<(AtomicBool, Notify)>);

impl StopSignal {
    pub fn stop(&self) {
        self.0 .0.store(true, Ordering::SeqCst);
        self.0 .1.notify_waiters();
    }

    pub fn is_stopped(&self) -> bool {
        self.0 .0.load(Ordering::SeqCst)
    }

    /// Resolves once [`StopSignal::stop`] has been called.
    pub async fn stopped(&self) {
        loop {
            // Register interest before checking, so a stop in between is not missed.
            let notified = self.0 .1.notified();
            if self.is_stopped() {
                return;
            }
            notified.await;
        }
    }
}

/// The signals that ask a long-running command to stop: SIGTERM (systemd, `docker stop`,
/// `podman stop`, Kubernetes) and SIGINT (Ctrl-C). Every long-running command (the daemon,
/// `demo --keep-running`, `fake-api`, `bench`) waits on this, so none stops on one and not on
/// the other. Created once, before the wait: a signal that arrives after creation is kept.
#[derive(Debug)]
pub struct ShutdownSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    /// Takes over SIGTERM and SIGINT from their default action (ending the process at once).
    pub fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(ShutdownSignals {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Resolves at the next SIGTERM or SIGINT.
    pub async fn recv(&mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}
