//! Where the logs go and what they look like there: stderr, as text or JSON; colour only for a
//! person at a terminal who has not set `NO_COLOR`; and, when stderr is systemd's journal
//! stream, each text line prefixed with its sd-daemon priority (`<4>` for a warning), so that
//! `journalctl -p warning` shows the warnings. It must not decide what is logged.

use std::fmt;
use std::io::IsTerminal;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

use crate::config::LogFormat;

/// Starts logging to stderr at `level` (`RUST_LOG` wins over it). Stdout stays for the
/// commands' output, so that `--output json` stays parseable. A second call changes nothing.
pub fn init(format: LogFormat, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_directives(level)));
    let stderr = std::io::stderr();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour(
            stderr.is_terminal(),
            std::env::var_os("NO_COLOR").as_deref(),
        ))
        // Stderr, around the progress spinner if one is shown.
        .with_writer(crate::progress::log_writer);
    let journal = journal_stream(std::env::var("JOURNAL_STREAM").ok().as_deref(), &stderr);
    let _ = match format {
        // A JSON line stays one JSON document; collectors read its `level` field.
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text if journal => builder
            .event_format(Priority(tracing_subscriber::fmt::format()))
            .try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// The filter for a configured `level` when `RUST_LOG` is not set: the scheduler crate's
/// lifecycle chatter ("Uninited", "Job creator created", one line per tick at debug) is kept
/// at warnings, unless `level` is quieter still or names that crate itself.
pub fn default_directives(level: &str) -> String {
    if level.contains("tokio_cron_scheduler") {
        return level.to_owned();
    }
    let quiet = match level.trim().to_ascii_lowercase().as_str() {
        quieter @ ("error" | "off") => quieter.to_owned(),
        _ => "warn".to_owned(),
    };
    format!("{level},tokio_cron_scheduler={quiet}")
}

/// Colour codes only for a person at a terminal, unless `NO_COLOR` is set to anything but
/// the empty string (<https://no-color.org>). journald, files and collectors get plain text.
pub fn colour(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Whether `stderr` is the journal stream systemd names in `JOURNAL_STREAM` (`DEV:INODE`, in
/// decimal). A child that inherited the variable but writes elsewhere (a pipe, a file) does
/// not match, and gets no prefixes.
pub fn journal_stream(journal_stream: Option<&str>, stderr: &impl AsFd) -> bool {
    let Some((dev, ino)) = journal_stream.and_then(|v| v.trim().split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    let Ok(fd) = stderr.as_fd().try_clone_to_owned() else {
        return false;
    };
    std::fs::File::from(fd)
        .metadata()
        .is_ok_and(|m| m.dev() == dev && m.ino() == ino)
}

/// The sd-daemon priority of a level (`sd-daemon(3)`): journald reads it from the start of a
/// line and files the line under it.
pub fn priority(level: &Level) -> u8 {
    match *level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// A text event format that writes `<N>` (the event's priority) before what `F` writes.
pub struct Priority<F>(pub F);

impl<S, N, F> FormatEvent<S, N> for Priority<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write!(writer, "<{}>", priority(event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;
    use std::sync::{Arc, Mutex};

    #[test]
    fn colour_only_at_a_terminal_without_no_color() {
        // (case, terminal, NO_COLOR, colour)
        let cases = [
            ("terminal", true, None, true),
            ("terminal, NO_COLOR=1", true, Some("1"), false),
            ("terminal, NO_COLOR empty", true, Some(""), true),
            ("pipe or journal", false, None, false),
            ("pipe, NO_COLOR=1", false, Some("1"), false),
        ];
        for (case, terminal, no_color, want) in cases {
            assert_eq!(colour(terminal, no_color.map(OsStr::new)), want, "{case}");
        }
    }

    #[test]
    fn the_scheduler_crate_is_quiet_at_the_default_levels() {
        // (configured level, filter)
        let cases = [
            ("info", "info,tokio_cron_scheduler=warn"),
            ("debug", "debug,tokio_cron_scheduler=warn"),
            ("ERROR", "ERROR,tokio_cron_scheduler=error"),
            ("off", "off,tokio_cron_scheduler=off"),
            (
                "info,zt_janitor=debug",
                "info,zt_janitor=debug,tokio_cron_scheduler=warn",
            ),
            (
                "info,tokio_cron_scheduler=debug",
                "info,tokio_cron_scheduler=debug",
            ),
        ];
        for (level, want) in cases {
            assert_eq!(default_directives(level), want, "{level}");
            tracing_subscriber::EnvFilter::try_new(want).expect(want);
        }
    }

    #[test]
    fn the_journal_stream_is_recognised_by_device_and_inode() {
        let file = tempfile::tempfile().unwrap();
        let m = file.metadata().unwrap();
        let this = format!("{}:{}", m.dev(), m.ino());
        let other = format!("{}:{}", m.dev(), m.ino() + 1);
        // (case, JOURNAL_STREAM, is the journal)
        let cases = [
            ("this file", Some(this.as_str()), true),
            ("another inode", Some(other.as_str()), false),
            ("unset", None, false),
            ("garbled", Some("journal"), false),
            ("not numbers", Some("a:b"), false),
        ];
        for (case, value, want) in cases {
            assert_eq!(journal_stream(value, &file), want, "{case}");
        }
    }

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn each_line_starts_with_its_priority() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(Level::TRACE)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .event_format(Priority(tracing_subscriber::fmt::format()))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!("e");
            tracing::warn!(attempt = 2, "w");
            tracing::info!("i");
            tracing::debug!("d");
            tracing::trace!("t");
        });
        let text = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
        let prefixes: Vec<(&str, &str)> = text
            .lines()
            .map(|l| (&l[..3], l.rsplit(' ').next().unwrap()))
            .collect();
        assert_eq!(
            prefixes,
            [
                ("<3>", "e"),
                ("<4>", "attempt=2"),
                ("<6>", "i"),
                ("<7>", "d"),
                ("<7>", "t")
            ],
            "{text}"
        );
    }
}
