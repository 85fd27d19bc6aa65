//! Progress on a terminal: a spinner on stderr while something long runs, only when stderr
//! is a terminal (piped or redirected, nothing is drawn), and a log writer that lifts the
//! spinner out of the way of each log line, so that the two never share a line.

use std::io::{self, IsTerminal, Write};
use std::sync::Mutex;
use std::time::Duration;

use indicatif::ProgressBar;

/// The spinner shown now, if any: log lines are written around it.
static ACTIVE: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// A spinner on stderr, drawn until it is dropped; `None` when stderr is not a terminal.
pub struct Spinner(ProgressBar);

impl Spinner {
    pub fn start(message: &str) -> Option<Spinner> {
        if !io::stderr().is_terminal() {
            return None;
        }
        let bar = ProgressBar::new_spinner();
        bar.set_message(message.to_owned());
        bar.enable_steady_tick(Duration::from_millis(120));
        *ACTIVE.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar.clone());
        Some(Spinner(bar))
    }

    pub fn set(&self, message: String) {
        self.0.set_message(message);
    }
}

impl Drop for Spinner {
    fn drop(&mut self) {
        *ACTIVE.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.0.finish_and_clear();
    }
}

/// Stderr for the log: each write (tracing writes one event at a time) goes out with the
/// spinner, if one is shown, lifted for it.
pub struct LogWriter;

/// For `tracing_subscriber`'s `with_writer`.
pub fn log_writer() -> LogWriter {
    LogWriter
}

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let active = ACTIVE.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match active {
            Some(bar) => bar.suspend(|| io::stderr().write(buf)),
            None => io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}
