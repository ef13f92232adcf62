//! What the integration tests share: running the real `xtask` binary and other programs,
//! requiring tools, and golden files. Each test file includes it with `mod common;` and uses a
//! part of it.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const XTASK: &str = env!("CARGO_BIN_EXE_xtask");

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Runs a command to its end; panics only when it cannot start.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs a command that must succeed; returns its stdout.
pub fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed:\nstdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Fails the test, saying how to install it, when `tool` is not on PATH.
pub fn require(tool: &str) {
    assert!(
        xtask::util::on_path(tool),
        "{tool} is not installed; `cargo xtask ci` installs it (ci/debian-packages.txt)"
    );
}

/// `xtask ARGS` from the workspace root, never contacting the official download locations, with a
/// fixed SOURCE_DATE_EPOCH.
pub fn xtask(args: &[&str]) -> Output {
    run(Command::new(XTASK)
        .args(args)
        .current_dir(root())
        .env("XTASK_NO_OFFICIAL", "1")
        .env("SOURCE_DATE_EPOCH", "1700000000"))
}

/// stdout and stderr together.
pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// `xtask ARGS` that must succeed; returns all it printed.
pub fn xtask_ok(args: &[&str]) -> String {
    let out = xtask(args);
    assert!(out.status.success(), "xtask {args:?} failed:\n{}", text(&out));
    text(&out)
}

/// `xtask ARGS` that must fail; returns all it printed.
pub fn xtask_fails(args: &[&str]) -> String {
    let out = xtask(args);
    assert!(!out.status.success(), "xtask {args:?} should have failed:\n{}", text(&out));
    text(&out)
}

/// Where golden files live.
pub fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Compares `actual` with `xtask/tests/golden/<name>`, or rewrites it with UPDATE_GOLDEN=1.
pub fn golden(name: &str, actual: &str) {
    let path = golden_dir().join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, actual).unwrap();
        return;
    }
    let want = fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("golden file {} is missing: run UPDATE_GOLDEN=1 cargo test", path.display()));
    assert_eq!(
        actual, want,
        "{name} differs from its golden file; if the change is intended: UPDATE_GOLDEN=1 cargo test"
    );
}
