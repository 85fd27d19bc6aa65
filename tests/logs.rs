//! Logs that fit where they go (issue 16): the real binary, its stderr a pipe, a file that
//! systemd names as the journal stream, or a terminal. A retried listing gives a warning line,
//! a finished cycle an info line.

mod common;

use std::os::unix::fs::MetadataExt;
use std::process::{Command, Stdio};

use common::{Env, Settings};
use zt_janitor::fake::FakeOptions;

/// An environment for [`once`], whose first listing fails once with 503: one `WARN` retry line, then the
/// cycle's `INFO` summary.
async fn env_with_a_warning() -> Env {
    Env::start(
        FakeOptions {
            registrations: 20,
            ..FakeOptions::default()
        },
        Settings {
            mode: "plan",
            ..Settings::default()
        },
    )
    .await
}

/// `zt-janitor once`, its first listing call failing once.
fn once(env: &Env) -> Command {
    env.fake
        .set_faults(vec!["list:status=503:first=1".parse().unwrap()]);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_zt-janitor"));
    cmd.args(["once", "--config"])
        .arg(&env.config_path)
        .env("RUST_LOG", "info")
        .env_remove("CLOUDFLARE_API_TOKEN")
        .env_remove("JOURNAL_STREAM")
        .env_remove("NO_COLOR")
        .stdout(Stdio::null());
    cmd
}

#[tokio::test(flavor = "multi_thread")]
async fn text_logs_to_a_pipe_carry_no_colour_codes() {
    let env = env_with_a_warning().await;
    let out = once(&env).stderr(Stdio::piped()).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let log = String::from_utf8(out.stderr).unwrap();
    assert!(log.contains("WARN") && log.contains("retrying"), "{log}");
    assert!(!log.contains("\x1b["), "colour codes in a pipe: {log:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn under_systemd_each_line_carries_its_journal_priority() {
    let env = env_with_a_warning().await;
    let path = env.dir.path().join("journal-stream");
    let file = std::fs::File::create(&path).unwrap();
    let m = file.metadata().unwrap();
    let out = once(&env)
        .env("JOURNAL_STREAM", format!("{}:{}", m.dev(), m.ino()))
        .stderr(file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let log = std::fs::read_to_string(&path).unwrap();
    let warning = log.lines().find(|l| l.contains("retrying")).expect(&log);
    assert!(warning.starts_with("<4>"), "{warning}");
    let summary = log
        .lines()
        .find(|l| l.contains("cycle finished"))
        .expect(&log);
    assert!(summary.starts_with("<6>"), "{summary}");
    assert!(!log.contains("\x1b["), "{log:?}");

    // The variable inherited by a process whose stderr is elsewhere (here a pipe) is not the
    // journal: no prefixes.
    let out = once(&env)
        .env("JOURNAL_STREAM", format!("{}:{}", m.dev(), m.ino()))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let log = String::from_utf8(out.stderr).unwrap();
    assert!(log.contains("retrying"), "{log}");
    assert!(!log.contains("<4>") && !log.contains("<6>"), "{log}");
}

/// stderr on a pseudo-terminal: colour, unless `NO_COLOR` is set.
#[tokio::test(flavor = "multi_thread")]
async fn colour_only_at_a_terminal_and_never_with_no_color() {
    let env = env_with_a_warning().await;
    let at_terminal = |no_color: bool| {
        let (mut master, slave) = common::pty();
        let mut cmd = once(&env);
        if no_color {
            cmd.env("NO_COLOR", "1");
        }
        let mut child = cmd.stderr(slave).spawn().unwrap();
        // Read while the child writes, so that it never blocks on a full terminal buffer.
        let reader = std::thread::spawn(move || {
            let mut log = Vec::new();
            // Linux answers EIO once the last writer has closed the terminal.
            let _ = std::io::Read::read_to_end(&mut master, &mut log);
            String::from_utf8_lossy(&log).into_owned()
        });
        assert!(child.wait().unwrap().success());
        drop(cmd);
        reader.join().unwrap()
    };
    let coloured = at_terminal(false);
    assert!(
        coloured.contains("retrying") && coloured.contains("\x1b["),
        "{coloured:?}"
    );
    let plain = at_terminal(true);
    assert!(plain.contains("retrying"), "{plain:?}");
    assert!(
        !plain.contains("\x1b["),
        "NO_COLOR=1 at a terminal: {plain:?}"
    );
}
