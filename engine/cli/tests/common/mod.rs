//! Helpers shared by the binary's end-to-end tests.

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
