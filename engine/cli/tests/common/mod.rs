//! Helpers shared by the binary's end-to-end tests (each test binary uses some of them).
#![allow(dead_code)]

use std::io::Write;
use std::process::{Command, Output, Stdio};

/// The `gatewatch` binary under test.
pub fn gw() -> Command {
    Command::new(env!("CARGO_BIN_EXE_gatewatch"))
}

/// Runs `gatewatch ARGS` with `stdin` as its standard input (written from another thread,
/// so a process that stops reading early does not block the test).
pub fn run_with_stdin(args: &[&str], stdin: &[u8]) -> Output {
    run_with_stdin_env(args, stdin, &[])
}

/// [`run_with_stdin`] with extra environment variables.
pub fn run_with_stdin_env(args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Output {
    let mut child = gw()
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

/// Copies a folder tree (a model folder to edit in a test).
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// The project's Python (`.venv`, or `GATEWATCH_PYTHON`).
pub fn python() -> std::path::PathBuf {
    let p = std::env::var_os("GATEWATCH_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python")
        });
    assert!(
        p.exists(),
        "{} not found: run scripts/setup-python (scripts/test does) or set GATEWATCH_PYTHON",
        p.display()
    );
    p
}
