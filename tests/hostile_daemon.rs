//! The daemon against a hostile environment: the audit disk fills up, the audit file is
//! deleted under it, SIGHUP brings schedules and rule sets it must take whole or not at all,
//! the metrics port gets half-sent requests and floods of idle connections, and the config
//! names schedules that never fire. Each test runs the real binary against the fake API.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use common::{days_ago, free_port, get, signal, wait_for, Env, Settings};
use sqlx::Row;
use zt_janitor::audit::{AuditStore, Intent, JournalEntry, MutationKind as AuditMutationKind};
use zt_janitor::config::Mode;
use zt_janitor::fake::{FakeOptions, FakeRegistration};
use zt_janitor::plan::preview;
use zt_janitor::resource::Kind;
use zt_janitor::rules::RuleSet;

/// The value of one sample line (`name{labels} value`), `None` when absent.
fn sample(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Sum of every sample of a metric (all label sets).
fn total(scrape: &str, metric: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| {
            l.starts_with(metric) && matches!(l.as_bytes().get(metric.len()), Some(b'{' | b' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The real daemon, its log in a file (a pipe nobody reads would block it), killed on drop.
/// Its metrics endpoint listens on a port the kernel picks (`listen = "127.0.0.1:0"`), read
/// back from the start-up line, so that parallel tests can never race for a port.
struct Daemon {
    child: Child,
    log: PathBuf,
    addr: std::net::SocketAddr,
    metrics: String,
}

impl Daemon {
    async fn spawn(env: &Env) -> Daemon {
        Self::spawn_with(env, None).await
    }

    /// `fd_limit`: the daemon runs under `ulimit -n fd_limit`.
    async fn spawn_with(env: &Env, fd_limit: Option<u32>) -> Daemon {
        let log = env.dir.path().join(format!("daemon-{}.log", free_port()));
        let bin = env!("CARGO_BIN_EXE_zt-janitor");
        let mut cmd = match fd_limit {
            Some(n) => {
                let mut c = Command::new("sh");
                c.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(bin);
                c
            }
            None => Command::new(bin),
        };
        let mut child = cmd
            .args(["run", "--config"])
            .arg(&env.config_path)
            .env("RUST_LOG", "info")
            .env_remove("CLOUDFLARE_API_TOKEN")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let until = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let bound = text
                .lines()
                .find(|l| l.contains("zt-janitor daemon started"))
                .and_then(|l| l.split("metrics_addr=").nth(1))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|a| a.parse().ok());
            if let Some(addr) = bound {
                break addr;
            }
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the daemon exited at start ({status}); log:\n{text}");
            }
            assert!(
                Instant::now() < until,
                "the daemon did not start; log:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        Daemon {
            child,
            log,
            addr,
            metrics: format!("http://{addr}"),
        }
    }

    async fn scrape(&self) -> String {
        get(&format!("{}/metrics", self.metrics)).await.1
    }

    async fn ready(&self) -> (u16, String) {
        get(&format!("{}/readyz", self.metrics)).await
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then the exit status, failing if it takes longer than `within`.
    async fn stop(&mut self, within: Duration) -> ExitStatus {
        signal(&self.child, "-TERM");
        let asked = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                asked.elapsed() < within,
                "the daemon did not exit within {within:?} of SIGTERM; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn schedule(cron: &str) -> String {
    format!("[schedule]\ncron = \"{cron}\"\n\n[metrics]\nlisten = \"127.0.0.1:0\"\n")
}

/// A small tmpfs, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    /// `None` when this process may not mount (not root, no CAP_SYS_ADMIN).
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .ok()?;
        if out.status.success() {
            Some(Tmpfs(dir.to_owned()))
        } else {
            eprintln!(
                "mount tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            None
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system holding `path` until it is full, then gives back `slack` bytes.
fn fill(path: &Path, slack: u64) {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0xa5u8; 4096];
    let mut written = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
    }
    let _ = f.sync_all();
    f.set_len(written.saturating_sub(slack)).unwrap();
}

/// Issue 10, item 1: with the audit disk full, the daemon sends no mutation at all; /readyz
/// and `zt_janitor_audit_writable` say why. Once space is back it proves a write reaches the
/// disk, recovers, deletes, and every mutation the fake saw has its audit row.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_audit_disk_stops_every_action_until_writes_work_again() {
    let extra = schedule("* * * * * *");
    let settings = || Settings {
        extra: &extra,
        ..Settings::default()
    };
    let mut env = Env::start(
        FakeOptions {
            registrations: 3000,
            seed: 101,
            ..FakeOptions::default()
        },
        settings(),
    )
    .await;
    let Some(_tmpfs) = Tmpfs::mount(&env.dir.path().join("auditfs"), "8m") else {
        eprintln!(
            "SKIP a_full_audit_disk_stops_every_action_until_writes_work_again: cannot mount a \
             tmpfs here (needs root or CAP_SYS_ADMIN)"
        );
        return;
    };
    env.db_path = env.dir.path().join("auditfs/audit.db");
    env.write_config(&settings());
    AuditStore::open(&env.db_path).await.unwrap().close().await;
    let filler = env.dir.path().join("auditfs/filler");
    // Room for a run row, not for the run's thousand-odd decisions.
    fill(&filler, 64 * 1024);
    let expected = env.expected_candidates(Utc::now());
    assert!(expected.len() > 500, "the fixture has candidates");

    let mut daemon = Daemon::spawn(&env).await;
    wait_for(
        "four cycles tried on a full disk",
        Duration::from_secs(40),
        async || {
            let s = daemon.scrape().await;
            total(&s, "zt_janitor_runs_total") + total(&s, "zt_janitor_cycles_not_started_total")
                >= 4.0
        },
    )
    .await;
    assert_eq!(
        env.fake.mutations().len(),
        0,
        "no mutation may be sent while the audit disk is full; log:\n{}",
        daemon.log()
    );
    let scrape = daemon.scrape().await;
    assert_eq!(
        sample(&scrape, "zt_janitor_audit_writable"),
        Some(0.0),
        "the gauge says the audit store is not writable"
    );
    assert!(total(&scrape, "zt_janitor_audit_write_errors_total") >= 1.0);
    let (status, why) = daemon.ready().await;
    assert_eq!(status, 503, "{why}");
    assert!(why.contains("audit"), "/readyz says why: {why}");

    std::fs::remove_file(&filler).unwrap();
    let recovery = Instant::now() + Duration::from_secs(60);
    while env.mutated_ids() != expected {
        assert!(
            Instant::now() < recovery,
            "the daemon did not recover and delete; log:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut last = (0, String::new());
    let recovered = Instant::now() + Duration::from_secs(20);
    while last.0 != 200 {
        assert!(
            Instant::now() < recovered,
            "/readyz did not recover: {last:?}; log:\n{}",
            daemon.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        last = daemon.ready().await;
    }
    assert_eq!(
        sample(&daemon.scrape().await, "zt_janitor_audit_writable"),
        Some(1.0)
    );
    let status = daemon.stop(Duration::from_secs(30)).await;
    assert!(status.success(), "exit {status:?}; log:\n{}", daemon.log());
    env.assert_every_mutation_audited().await;
    let pool = env.sql().await;
    let done: Vec<String> =
        sqlx::query("SELECT resource_id FROM actions WHERE status IN ('done', 'already_gone')")
            .fetch_all(&pool)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
    assert_eq!(
        done.into_iter().collect::<BTreeSet<_>>(),
        expected,
        "every deletion is recorded as done"
    );
}

/// Issue 10, item 1, the cause: a write that fails on a full disk inside a transaction left
/// the connection inside a transaction that sqlx could no longer close, so every later write
/// on it reported success and never reached the disk. A write reported committed after the
/// failure must be in the file, read through a connection of its own.
#[tokio::test(flavor = "multi_thread")]
async fn after_a_failed_write_a_write_reported_committed_is_on_disk() {
    let mut env = Env::start(
        FakeOptions {
            registrations: 3000,
            seed: 106,
            ..FakeOptions::default()
        },
        Settings::default(),
    )
    .await;
    let Some(_tmpfs) = Tmpfs::mount(&env.dir.path().join("auditfs"), "8m") else {
        eprintln!(
            "SKIP after_a_failed_write_a_write_reported_committed_is_on_disk: cannot mount a \
             tmpfs here (needs root or CAP_SYS_ADMIN)"
        );
        return;
    };
    env.db_path = env.dir.path().join("auditfs/audit.db");
    let config = env.config();
    let rules = RuleSet::new(&config.rules, &config.exclusions).unwrap();
    let mut plan = preview(&config, &rules, Utc::now())
        .await
        .unwrap()
        .remove(0);
    assert!(plan.candidates.len() > 500, "the fixture has candidates");

    let store = AuditStore::open(&env.db_path).await.unwrap();
    let run = store.begin_run(Mode::Apply, Utc::now()).await.unwrap();
    let filler = env.dir.path().join("auditfs/filler");
    fill(&filler, 64 * 1024);
    // Twice, as two cycles would: the second time sqlx's cached statements are reused.
    for _ in 0..2 {
        let recorded = store
            .record_decisions(
                run,
                Utc::now(),
                &mut plan.candidates,
                zt_janitor::audit::BodyForm::AsListed,
            )
            .await;
        assert!(
            recorded.is_err(),
            "hundreds of snapshots cannot fit in 64 KiB"
        );
    }
    std::fs::remove_file(&filler).unwrap();

    let second = store.begin_run(Mode::Apply, Utc::now()).await;
    let intents = JournalEntry {
        intents: vec![Intent {
            resource_kind: Kind::DeviceRegistration,
            zone: None,
            kind: AuditMutationKind::Delete,
            method: "DELETE".to_owned(),
            path: "/accounts/x/devices/registrations/y".to_owned(),
            ids: vec![plan.candidates[0].id.clone()],
            at: Utc::now(),
        }],
        ..JournalEntry::default()
    };
    let journal = store.write_journal(run, &intents).await;
    let reader = env.sql().await;
    let runs: i64 = sqlx::query_scalar("SELECT count(*) FROM runs")
        .fetch_one(&reader)
        .await
        .unwrap();
    let mutations: i64 = sqlx::query_scalar("SELECT count(*) FROM mutations")
        .fetch_one(&reader)
        .await
        .unwrap();
    reader.close().await;
    store.close().await;
    second.expect("with space back, a run can begin");
    journal.expect("with space back, an intent can be committed");
    assert_eq!(runs, 2, "a run reported begun is in the file");
    assert_eq!(mutations, 1, "an intent reported committed is in the file");
}

/// Issue 10, item 9: deleting the audit database under a running daemon stops it acting: no
/// further mutation, /readyz 503 saying to restart, and a metric.
#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_audit_database_stops_the_daemon_acting() {
    let extra = schedule("* * * * * *");
    let env = Env::start(
        FakeOptions {
            registrations: 200,
            seed: 102,
            ..FakeOptions::default()
        },
        Settings {
            extra: &extra,
            ..Settings::default()
        },
    )
    .await;
    let daemon = Daemon::spawn(&env).await;
    wait_for("an applied cycle", Duration::from_secs(20), async || {
        sample(
            &daemon.scrape().await,
            "zt_janitor_runs_total{outcome=\"applied\"}",
        )
        .unwrap_or(0.0)
            >= 1.0
    })
    .await;
    std::fs::remove_file(&env.db_path).unwrap();
    let before = env.fake.mutations().len();
    let now = Utc::now();
    let fresh: Vec<String> = (0..5)
        .map(|i| {
            env.fake.insert(&FakeRegistration::new(
                format!("eeeeeeee-0000-4000-8000-00000000000{i}"),
                days_ago(now, 100),
            ))
        })
        .collect();
    let base = total(&daemon.scrape().await, "zt_janitor_runs_total");
    wait_for("three more ticks", Duration::from_secs(30), async || {
        let s = daemon.scrape().await;
        total(&s, "zt_janitor_runs_total") - base + total(&s, "zt_janitor_cycles_not_started_total")
            >= 3.0
    })
    .await;
    assert_eq!(
        env.fake.mutations().len(),
        before,
        "no mutation after the audit database was deleted; log:\n{}",
        daemon.log()
    );
    assert!(fresh.iter().all(|id| env.fake.contains(id)));
    let (status, why) = daemon.ready().await;
    assert_eq!(status, 503, "{why}");
    assert!(why.contains("restart"), "/readyz says what to do: {why}");
    assert!(
        daemon.log().contains("ERROR"),
        "an ERROR line says what happened"
    );
}

/// Issue 10, item 7a: a reload to a yearly schedule and back resumes the per-second cycles.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_to_another_schedule_and_back_takes_effect_each_time() {
    let every_second = schedule("* * * * * *");
    let yearly = schedule("0 0 0 1 1 *");
    let env = Env::start(
        FakeOptions {
            registrations: 50,
            seed: 103,
            ..FakeOptions::default()
        },
        Settings {
            extra: &every_second,
            ..Settings::default()
        },
    )
    .await;
    let daemon = Daemon::spawn(&env).await;
    let runs = async || total(&daemon.scrape().await, "zt_janitor_runs_total");
    let reloads_ok = async || {
        sample(
            &daemon.scrape().await,
            "zt_janitor_config_reloads_total{result=\"ok\"}",
        )
        .unwrap_or(0.0)
    };
    wait_for("a cycle", Duration::from_secs(20), async || {
        runs().await >= 1.0
    })
    .await;

    env.write_config(&Settings {
        extra: &yearly,
        ..Settings::default()
    });
    signal(&daemon.child, "-HUP");
    wait_for("the yearly reload", Duration::from_secs(10), async || {
        reloads_ok().await >= 1.0
    })
    .await;
    // A cycle that started before the reload may still finish.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let quiet_from = runs().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(runs().await, quiet_from, "the yearly schedule runs nothing");

    env.write_config(&Settings {
        extra: &every_second,
        ..Settings::default()
    });
    signal(&daemon.child, "-HUP");
    wait_for("the reload back", Duration::from_secs(10), async || {
        reloads_ok().await >= 2.0
    })
    .await;
    wait_for(
        "per-second cycles again",
        Duration::from_secs(15),
        async || runs().await >= quiet_from + 2.0,
    )
    .await;
}

/// Issue 10, item 7b: a file with new rules and an invalid cron is rejected whole: the old
/// rules stay in force and only `result="error"` counts.
#[tokio::test(flavor = "multi_thread")]
async fn a_reload_with_new_rules_and_a_bad_cron_changes_nothing() {
    let every_second = schedule("* * * * * *");
    let bad = schedule("99 99 99 * * *");
    let env = Env::start(
        FakeOptions {
            registrations: 50,
            seed: 104,
            ..FakeOptions::default()
        },
        Settings {
            extra: &every_second,
            ..Settings::default()
        },
    )
    .await;
    let daemon = Daemon::spawn(&env).await;
    wait_for("a cycle", Duration::from_secs(20), async || {
        total(&daemon.scrape().await, "zt_janitor_runs_total") >= 1.0
    })
    .await;
    // New rules that select nothing the old ones select, in a file whose cron is invalid.
    env.write_config(&Settings {
        extra: &bad,
        rules: "[[rule]]\nname = \"idle-10y\"\nresource = \"device_registration\"\n\
                action = \"delete\"\nidle_days = 3650\n",
        ..Settings::default()
    });
    signal(&daemon.child, "-HUP");
    wait_for("the rejected reload", Duration::from_secs(10), async || {
        sample(
            &daemon.scrape().await,
            "zt_janitor_config_reloads_total{result=\"error\"}",
        )
        .unwrap_or(0.0)
            >= 1.0
    })
    .await;
    assert_eq!(
        sample(
            &daemon.scrape().await,
            "zt_janitor_config_reloads_total{result=\"ok\"}"
        )
        .unwrap_or(0.0),
        0.0,
        "a rejected file is not counted as reloaded"
    );
    let now = Utc::now();
    let idle: BTreeSet<String> = (0..3)
        .map(|i| {
            env.fake.insert(&FakeRegistration::new(
                format!("dddddddd-0000-4000-8000-00000000000{i}"),
                days_ago(now, 100),
            ))
        })
        .collect();
    wait_for(
        "the old 90-day rule to delete them",
        Duration::from_secs(20),
        async || idle.iter().all(|id| !env.fake.contains(id)),
    )
    .await;
}

/// Issue 10, item 10: a half-sent request on the metrics port does not delay shutdown. (The
/// schedule, 30 February, never fires: `run` warns about it at start, item 8.)
#[tokio::test(flavor = "multi_thread")]
async fn a_half_sent_metrics_request_does_not_delay_sigterm() {
    let extra = schedule("0 0 0 30 2 *");
    let env = Env::start(
        FakeOptions {
            registrations: 10,
            ..FakeOptions::default()
        },
        Settings {
            extra: &extra,
            ..Settings::default()
        },
    )
    .await;
    let mut daemon = Daemon::spawn(&env).await;
    wait_for(
        "the metrics endpoint",
        Duration::from_secs(20),
        async || daemon.ready().await.0 == 200,
    )
    .await;
    let mut half = tokio::net::TcpStream::connect(daemon.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut half, b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = daemon.stop(Duration::from_secs(10)).await;
    assert!(status.success(), "exit {status:?}; log:\n{}", daemon.log());
    drop(half);
    assert!(
        daemon.log().contains("never fires"),
        "run warns about a schedule that never fires; log:\n{}",
        daemon.log()
    );
}

/// Issue 10, item 10: idle connections beyond the cap, under `ulimit -n 128`, neither starve
/// the cycles of file descriptors nor keep /metrics unreachable once they time out.
#[tokio::test(flavor = "multi_thread")]
async fn idle_connections_neither_exhaust_fds_nor_block_metrics_for_long() {
    let extra = schedule("* * * * * *");
    let env = Env::start(
        FakeOptions {
            registrations: 50,
            seed: 105,
            ..FakeOptions::default()
        },
        Settings {
            extra: &extra,
            ..Settings::default()
        },
    )
    .await;
    let daemon = Daemon::spawn_with(&env, Some(128)).await;
    wait_for("an applied cycle", Duration::from_secs(20), async || {
        sample(
            &daemon.scrape().await,
            "zt_janitor_runs_total{outcome=\"applied\"}",
        )
        .unwrap_or(0.0)
            >= 1.0
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..240 {
        if let Ok(s) = tokio::net::TcpStream::connect(daemon.addr).await {
            idle.push(s);
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let applied_before = sample(
        &daemon.scrape().await,
        "zt_janitor_runs_total{outcome=\"applied\"}",
    );
    // The idle ones are held open by this test all along.
    wait_for(
        "/metrics to answer again and a cycle to succeed",
        Duration::from_secs(45),
        async || {
            let s = daemon.scrape().await;
            let applied = sample(&s, "zt_janitor_runs_total{outcome=\"applied\"}");
            applied.is_some() && applied > applied_before.or(Some(0.0))
        },
    )
    .await;
    assert!(
        !daemon.log().contains("Too many open files"),
        "log:\n{}",
        daemon.log()
    );
    drop(idle);
}

/// Issue 10, item 8: check-config validates the cron with the scheduler's own parser, with
/// a located error, prints the next fire times and warns about a schedule that never fires.
#[tokio::test]
async fn check_config_validates_the_schedule_as_the_scheduler_parses_it() {
    let env = Env::start(FakeOptions::default(), Settings::default()).await;
    let with_cron = |cron: &str| {
        let extra = format!("[schedule]\ncron = \"{cron}\"\n");
        env.write_config(&Settings {
            extra: &extra,
            ..Settings::default()
        });
        let out = env.binary(&["check-config"]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for bad in ["a b c d e f", "99 99 99 * * *"] {
        let (code, _, err) = with_cron(bad);
        assert_eq!(code, Some(1), "{bad:?} must be rejected: {err}");
        assert!(
            err.contains("config.toml:") && err.contains(": [schedule] cron: "),
            "located error for {bad:?}: {err}"
        );
    }
    let (code, out, err) = with_cron("0 0 0 30 2 *");
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        err.contains("warning:") && err.contains("never"),
        "30 February never comes: {out}{err}"
    );
    let (code, out, err) = with_cron("*/2 * * * * *");
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(!err.contains("warning:"), "{err}");
    let fires: Vec<&str> = out
        .lines()
        .skip_while(|l| !l.contains("next fire times"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .collect();
    assert_eq!(fires.len(), 3, "three next fire times: {out}");
}
