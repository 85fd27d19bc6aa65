//! The standalone fake (`zt-janitor fake-api`) as a process: whoever started it may stop
//! reading its output (the bench reads only the first line), and it must serve on.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn the_fake_serves_on_when_nobody_reads_its_start_up_lines() {
    let port = common::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_zt-janitor"))
        .args(["fake-api", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--registrations", "10", "--no-rate-limit"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The reader goes away before the fake has printed anything.
    drop(child.stdout.take());
    let url = format!("http://127.0.0.1:{port}/client/v4/healthz-of-nothing");
    let mut answered = false;
    for _ in 0..50 {
        if common::get(&url).await.0 != 0 {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Still there a moment later, after both start-up lines were written to the closed pipe.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let still = common::get(&url).await.0;
    let exited = child.try_wait().unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(answered, "the fake never answered");
    assert_ne!(still, 0, "the fake stopped serving: exit {exited:?}");
    assert!(exited.is_none(), "the fake exited: {exited:?}");
}
