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

/// Issue 17, items 6 and 8: each outcome of `once` logs its "cycle finished" line at its own
/// level (so that `journalctl -p warning` shows the runs that did not do their job) and exits
/// with its own status.
#[tokio::test(flavor = "multi_thread")]
async fn each_outcome_logs_at_its_level_and_exits_with_its_status() {
    // (case, faults, max actions, level, exit status)
    let cases = [
        ("applied", "", 100_000, "INFO", 0),
        ("refused by the caps", "", 1, "WARN", 3),
        (
            "aborted: the listing fails",
            "list:status=500",
            100_000,
            "WARN",
            4,
        ),
        (
            "failed: every mutation fails",
            "any_mutation:status=500",
            100_000,
            "ERROR",
            5,
        ),
    ];
    for (case, fault, max_actions, level, status) in cases {
        let env = Env::start(
            FakeOptions {
                registrations: 100,
                seed: 3,
                ..FakeOptions::default()
            },
            Settings {
                max_actions,
                max_retries: 0,
                ..Settings::default()
            },
        )
        .await;
        assert!(
            env.expected_candidates(chrono::Utc::now()).len() > 1,
            "{case}: the seed gives candidates"
        );
        env.fake.set_faults(
            fault
                .split_whitespace()
                .map(|f| f.parse().unwrap())
                .collect(),
        );
        let out = Command::new(env!("CARGO_BIN_EXE_zt-janitor"))
            .args(["once", "--config"])
            .arg(&env.config_path)
            .env_remove("RUST_LOG")
            .env_remove("CLOUDFLARE_API_TOKEN")
            .env_remove("JOURNAL_STREAM")
            .output()
            .unwrap();
        let log = String::from_utf8(out.stderr).unwrap();
        let finished = log
            .lines()
            .find(|l| l.contains("cycle finished"))
            .unwrap_or_else(|| panic!("{case}: no summary line in\n{log}"));
        assert!(
            finished.contains(&format!(" {level} ")),
            "{case}: {level} expected: {finished}"
        );
        assert_eq!(out.status.code(), Some(status), "{case}: {log}");
    }
}

/// Issue 17, item 7: the daemon's start-up line says what runs (version, commit), how (mode),
/// where (account), which rules and when it first acts; the scheduler crate's lifecycle lines
/// ("Uninited") stay out of the default level.
#[tokio::test(flavor = "multi_thread")]
async fn the_start_up_line_names_what_runs_and_the_scheduler_stays_quiet() {
    let port = common::free_port();
    let extra =
        format!("[schedule]\ncron = \"0 0 3 * * *\"\n\n[metrics]\nlisten = \"127.0.0.1:{port}\"\n");
    let env = Env::start(
        FakeOptions::default(),
        Settings {
            extra: &extra,
            ..Settings::default()
        },
    )
    .await;
    let log_path = env.dir.path().join("daemon.log");
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_zt-janitor"))
        .args(["run", "--config"])
        .arg(&env.config_path)
        .env_remove("RUST_LOG")
        .env_remove("CLOUDFLARE_API_TOKEN")
        .env_remove("JOURNAL_STREAM")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log_path).unwrap())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/healthz");
    common::wait_for(
        "the daemon",
        std::time::Duration::from_secs(30),
        async || common::get(&url).await.0 == 200,
    )
    .await;
    common::signal(&daemon, "-TERM");
    assert!(daemon.wait().unwrap().success());
    let log = std::fs::read_to_string(&log_path).unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("zt-janitor daemon started"))
        .unwrap_or_else(|| panic!("no start-up line in\n{log}"));
    let now = chrono::Utc::now();
    let three = now.date_naive().and_hms_opt(3, 0, 0).unwrap().and_utc();
    let next = if three > now {
        three
    } else {
        three + chrono::TimeDelta::days(1)
    };
    // As build.rs decides: this package's own repository, else "unknown" (a `git archive` copy).
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8(o.stdout).unwrap().trim().to_owned())
    };
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .canonicalize()
        .ok();
    let ours = git(&["rev-parse", "--show-toplevel"])
        .and_then(|top| std::path::Path::new(&top).canonicalize().ok())
        .is_some_and(|top| Some(top) == manifest);
    let commit = ours
        .then(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .flatten()
        .unwrap_or_else(|| "unknown".to_owned());
    for want in [
        format!("version=\"{}\"", env!("CARGO_PKG_VERSION")),
        format!("commit=\"{commit}\""),
        "mode=apply".to_owned(),
        format!("account={}", env.fake.account_id()),
        "rules=idle-90d,revoked".to_owned(),
        format!("next_run={}", next.format("%Y-%m-%dT%H:%M:%SZ")),
    ] {
        assert!(line.contains(&want), "{want} in {line}");
    }
    assert!(
        !log.contains("Uninited") && !log.contains("tokio_cron_scheduler"),
        "the scheduler's chatter is not at the default level:\n{log}"
    );
}
