//! Helpers shared by the binary's end-to-end tests (each test binary uses some of them).
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Output, Stdio};

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

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (checking every 20 ms, up to `secs`) until `done` holds; fails with `what` if it
/// never does.
pub fn wait_until(secs: u64, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
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

/// A running service and its address.
pub struct Served {
    pub child: Child,
    pub addr: String,
    /// Standard error up to the line saying where it listens.
    pub stderr: Vec<String>,
    /// Every line of standard error so far.
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Served {
    /// Starts `gatewatch serve` and waits until it is ready (its state restored).
    pub fn start(args: &[&str]) -> Self {
        Self::start_env(args, &[])
    }

    /// [`start`](Self::start) with extra environment variables.
    pub fn start_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let s = Self::start_unready(args, env);
        for _ in 0..1200 {
            if s.call("GET", "/readyz", b"").0 == 200 {
                return s;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        panic!(
            "the service never became ready: {:?}",
            s.log.lock().unwrap()
        );
    }

    /// Starts `gatewatch serve` and returns once it listens (it may still be restoring).
    pub fn start_unready(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = gw();
        cmd.arg("serve");
        // Any free port, unless the test names one.
        if !args.contains(&"--listen") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        let mut child = cmd
            .args(args)
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut stderr = Vec::new();
        let addr = loop {
            let mut line = String::new();
            assert!(
                err.read_line(&mut line).unwrap() > 0,
                "the service ended before listening: {stderr:?}"
            );
            stderr.push(line.clone());
            if let Some(rest) = line.split("listening on http://").nth(1) {
                break rest.split_whitespace().next().unwrap().to_string();
            }
        };
        // Keep draining standard error so the service never blocks on it (shown with
        // GATEWATCH_TEST_LOG set).
        let show = std::env::var_os("GATEWATCH_TEST_LOG").is_some();
        let log = std::sync::Arc::new(std::sync::Mutex::new(stderr.clone()));
        let keep = log.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            while err.read_line(&mut line).is_ok_and(|n| n > 0) {
                if show {
                    eprint!("[serve] {line}");
                }
                keep.lock().unwrap().push(std::mem::take(&mut line));
            }
        });
        Self {
            child,
            addr,
            stderr,
            log,
        }
    }

    /// Waits (up to 30 s) until a line of standard error contains `text`; that line.
    pub fn wait_for_log(&self, text: &str) -> String {
        for _ in 0..600 {
            if let Some(l) = self.log.lock().unwrap().iter().find(|l| l.contains(text)) {
                return l.clone();
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        panic!(
            "{text:?} never showed in the log: {:?}",
            self.log.lock().unwrap()
        );
    }

    /// One HTTP/1.1 exchange: (status, body).
    pub fn call(&self, method: &str, path: &str, body: &[u8]) -> (u16, String) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            self.addr,
            body.len()
        )
        .unwrap();
        s.write_all(body).unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let text = String::from_utf8(raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        (status, body.to_string())
    }

    pub fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// `GET path` with a bouncer key: (status, body).
    pub fn call_with_key(&self, path: &str, key: &str) -> (u16, String) {
        let mut s = TcpStream::connect(&self.addr).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nX-Api-Key: {key}\r\nConnection: close\r\n\r\n",
            self.addr
        )
        .unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let text = String::from_utf8(raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        (
            head.split_whitespace().nth(1).unwrap().parse().unwrap(),
            body.to_string(),
        )
    }

    /// SIGTERM, then the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        self.child.wait().unwrap()
    }

    /// The value of the sample `name` (with its labels, if any) in `/metrics` now; 0 when
    /// it is not there.
    pub fn metric(&self, name: &str) -> f64 {
        let (_, m) = self.call("GET", "/metrics", b"");
        m.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    }

    /// Waits (up to 30 s) until `/metrics` holds `line`.
    pub fn wait_for_metric(&self, line: &str) -> String {
        let mut last = String::new();
        for _ in 0..600 {
            let (_, m) = self.call("GET", "/metrics", b"");
            if m.lines().any(|l| l == line) {
                return m;
            }
            last = m;
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let have: Vec<&str> = last.lines().filter(|l| !l.starts_with('#')).collect();
        panic!("{line:?} never showed in /metrics: {have:#?}");
    }
}

impl Drop for Served {
    /// A service a failed test leaves running is killed.
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
