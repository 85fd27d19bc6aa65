//! Every long-running command stops cleanly on SIGTERM (`docker stop`, `podman stop`,
//! Kubernetes, systemd) as on SIGINT (Ctrl-C), issue 16. The daemon's own stop is in
//! `tests/daemon.rs`; here `demo --keep-running`, `fake-api` and `bench`, as real processes.

mod common;

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::signal;

const BIN: &str = env!("CARGO_BIN_EXE_zt-janitor");

/// Waits until the file at `path` contains `text`; fails after `timeout`, showing the file.
fn wait_for_output(child: &mut Child, path: &Path, text: &str, timeout: Duration) {
    let until = Instant::now() + timeout;
    loop {
        let out = std::fs::read_to_string(path).unwrap_or_default();
        if out.contains(text) {
            return;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("exited ({status}) before printing {text:?}:\n{out}");
        }
        assert!(
            Instant::now() < until,
            "no {text:?} within {timeout:?}:\n{out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The exit status within `timeout`, killing the process and failing the test otherwise.
fn exit_within(child: &mut Child, timeout: Duration) -> ExitStatus {
    let until = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > until {
            let _ = child.kill();
            panic!("still running {timeout:?} after the signal");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn demo_stops_on(sig: &str) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo.out");
    let mut child = Command::new(BIN)
        .args(["demo", "--keep-running", "--registrations", "200"])
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_output(&mut child, &out, "keeps running", Duration::from_secs(60));
    signal(&child, sig);
    let status = exit_within(&mut child, Duration::from_secs(20));
    assert!(
        status.success(),
        "demo --keep-running on {sig}: {status}\n{}",
        std::fs::read_to_string(&out).unwrap()
    );
}

#[test]
fn demo_keep_running_stops_cleanly_on_sigterm() {
    demo_stops_on("-TERM");
}

#[test]
fn demo_keep_running_stops_cleanly_on_sigint() {
    demo_stops_on("-INT");
}

#[test]
fn fake_api_stops_cleanly_on_sigterm_and_sigint() {
    for sig in ["-TERM", "-INT"] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("fake.out");
        let mut child = Command::new(BIN)
            .args([
                "fake-api",
                "--listen",
                "127.0.0.1:0",
                "--registrations",
                "10",
            ])
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_for_output(&mut child, &out, "listening on", Duration::from_secs(20));
        signal(&child, sig);
        let status = exit_within(&mut child, Duration::from_secs(10));
        assert!(status.success(), "fake-api on {sig}: {status}");
    }
}

/// The processes whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            // pid (comm) state ppid ...: the command may hold spaces, so read after its ')'.
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                == Some(pid)
        })
        .collect()
}

/// A benchmark cut short by SIGTERM stops its fake API child and says why, instead of dying
/// and leaving the child behind.
#[test]
fn bench_stops_its_fake_api_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bench.out");
    let err = dir.path().join("bench.err");
    // Slow enough (20 ms per API call) to be mid-cycle when the signal comes.
    let mut child = Command::new(BIN)
        .args(["bench", "--registrations", "20000", "--per-page", "100"])
        .args(["--api-latency-ms", "20", "--phase", "plan"])
        .env("TMPDIR", dir.path())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    wait_for_output(&mut child, &out, "fake API:", Duration::from_secs(30));
    let fakes = children_of(child.id());
    assert!(!fakes.is_empty(), "bench started no fake API child");
    signal(&child, "-TERM");
    let status = exit_within(&mut child, Duration::from_secs(20));
    let said = std::fs::read_to_string(&err).unwrap();
    assert!(
        status.code() == Some(1) && said.contains("interrupted"),
        "{status}: {said}"
    );
    let survivors: Vec<u32> = fakes
        .into_iter()
        .filter(|fake| Path::new(&format!("/proc/{fake}")).exists())
        .collect();
    for fake in &survivors {
        // Not left running when the test fails.
        let _ = Command::new("kill").arg(fake.to_string()).status();
    }
    assert!(
        survivors.is_empty(),
        "the fake API children {survivors:?} outlived the benchmark"
    );
}
