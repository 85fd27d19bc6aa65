//! Names the git commit the binary is built from, as `ZT_JANITOR_COMMIT`, for the daemon's
//! start-up line and `zt_janitor_build_info`. A tree without git (a `git archive` copy, an
//! image build) gets `ZT_JANITOR_COMMIT` from the environment, else "unknown".

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
}

fn main() {
    println!("cargo:rerun-if-env-changed=ZT_JANITOR_COMMIT");
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    // Only this package's own repository: a copy unpacked inside another one is not it.
    let ours = git(&["rev-parse", "--show-toplevel"])
        .and_then(|top| Path::new(&top).canonicalize().ok())
        .zip(Path::new(&manifest).canonicalize().ok())
        .is_some_and(|(top, manifest)| top == manifest);
    let from_git = ours
        .then(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .flatten()
        .filter(|c| c.chars().all(|c| c.is_ascii_hexdigit()));
    if ours {
        // Rebuilt when a commit moves HEAD (git-path resolves a worktree's own files).
        // A path that does not exist would rerun this script, and rebuild, every time.
        let head_ref = git(&["symbolic-ref", "-q", "HEAD"]);
        let files = ["HEAD", "packed-refs"]
            .into_iter()
            .chain(head_ref.as_deref());
        for path in files.filter_map(|f| git(&["rev-parse", "--git-path", f])) {
            if Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    } else {
        println!("cargo:rerun-if-changed=build.rs");
    }
    let commit = std::env::var("ZT_JANITOR_COMMIT")
        .ok()
        .filter(|c| !c.is_empty() && c.chars().all(|c| c.is_ascii_alphanumeric()))
        .or(from_git)
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=ZT_JANITOR_COMMIT={commit}");
}
