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
