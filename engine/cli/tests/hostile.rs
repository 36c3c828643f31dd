//! Hostile input never stops a run: the cases a user hit, end to end with the real binary.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{gw, run_with_stdin};

fn run(args: &[&str], stdin: &[u8]) -> Output {
    run_with_stdin(args, stdin)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn records(o: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Ten minutes of normal simulated traffic.
fn normal_log() -> Vec<u8> {
    let out = gw()
        .args([
            "simulate",
            "--seed",
            "11",
            "--duration",
            "10m",
            "--users",
            "20",
            "--scenarios",
            "none",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    out.stdout
}

fn count_lines(b: &[u8]) -> usize {
    b.iter().filter(|c| **c == b'\n').count()
}

fn event(ts: &str) -> String {
    format!(r#"{{"ts":{ts},"client_ip":"1.2.3.4","method":"GET","path":"/","status":200}}"#)
}

#[test]
fn a_field_nested_100000_levels_deep_is_one_rejected_line() {
    let deep = format!(
        r#"{{"ts":0,"client_ip":"1.2.3.4","method":"GET","path":"/","status":200,"x":{}{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let mut input = format!("{}\n{deep}\n{}\n", event("0"), event("1000")).into_bytes();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("s.bin");
    let out = run(
        &["features", "--save-state", state.to_str().unwrap()],
        &input,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(records(&out).len(), 2);
    let e = stderr(&out);
    assert!(
        e.contains("rejected line 2: JSON nested deeper than 32 levels"),
        "{e}"
    );
    assert!(e.contains("2 events with features"), "{e}");
    assert!(state.exists());
    // train writes its model from the other events.
    input.extend(normal_log());
    let model = dir.path().join("m");
    let out = run(&["train", "-o", model.to_str().unwrap()], &input);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(model.join("manifest.json").exists());
}

#[test]
fn a_backslash_escape_before_a_multibyte_character_in_a_combined_line() {
    let line = "1.2.3.7 - - [05/Jan/2026:09:00:06 +0000] \"GET /a\\x1\u{e9} HTTP/1.1\" 200 5 \"-\" \"ua\"\n\
                1.2.3.7 - - [05/J\u{e9}n/2026:09:00:06 +0000] \"GET / HTTP/1.1\" 200 5 \"-\" \"ua\"\n";
    let out = run(&["features", "--format", "combined"], line.as_bytes());
    assert!(out.status.success(), "{}", stderr(&out));
    let recs = records(&out);
    assert_eq!(recs.len(), 1);
    assert!(
        recs[0]["endpoint"].as_str().unwrap().contains('\u{e9}'),
        "{}",
        recs[0]
    );
    assert!(
        stderr(&out).contains("rejected line 2: field `time`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn one_event_a_year_ahead_inside_a_normal_log_is_refused_alone() {
    let log = normal_log();
    let n = count_lines(&log);
    let mut lines: Vec<&[u8]> = log
        .split(|c| *c == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    let wild = event("1800000000000"); // 2027-01-15, a year after the simulated start
    lines.insert(n / 2, wild.as_bytes());
    let input = lines.join(&b'\n');
    let out = run(&["features"], &input);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(records(&out).len(), n, "every normal event");
    let e = stderr(&out);
    assert!(e.contains("1 ahead of event time (future)"), "{e}");
    assert!(e.contains("evicted 0 idle"), "{e}");
}

#[test]
fn timestamps_at_the_i64_extremes_are_refused_by_field() {
    let input = format!(
        "{}\n{}\n{}\n",
        event("9223372036854775807"),
        event("-9223372036854775808"),
        event("1000")
    );
    let out = run(&["features"], input.as_bytes());
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(records(&out).len(), 1);
    let e = stderr(&out);
    assert!(
        e.contains("rejected line 1: field `ts`: out of range: 9223372036854775807 ms"),
        "{e}"
    );
    assert!(e.contains("rejected line 2: field `ts`"), "{e}");
    assert!(!e.contains("-9223372036854775808 ms behind"), "{e}");
}

#[test]
fn corrupt_and_over_cap_state_files() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("s.bin");
    let log = normal_log();
    let out = run(
        &[
            "features",
            "--no-output",
            "--save-state",
            state.to_str().unwrap(),
        ],
        &log,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let tracked: usize = stderr(&out)
        .split("clients: ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .unwrap()
        .replace(',', "")
        .parse()
        .unwrap();
    assert!(tracked > 10, "{tracked}");
    let bytes = std::fs::read(&state).unwrap();
    let bad = dir.path().join("bad.bin");
    for at in [0, 9, 20, bytes.len() / 2, bytes.len() - 1] {
        let mut b = bytes.clone();
        b[at] ^= 0x10;
        std::fs::write(&bad, &b).unwrap();
        let out = run(&["features", "--load-state", bad.to_str().unwrap()], b"");
        assert_eq!(out.status.code(), Some(2), "byte {at}");
        let e = stderr(&out);
        assert!(e.contains(&format!("state {}", bad.display())), "{e}");
        assert!(e.contains("state snapshot:"), "{e}");
    }
    std::fs::write(&bad, &bytes[..bytes.len() - 7]).unwrap();
    let out = run(&["features", "--load-state", bad.to_str().unwrap()], b"");
    assert!(stderr(&out).contains("truncated"), "{}", stderr(&out));
    // The configured cap applies to a loaded state.
    let cfg = dir.path().join("c.toml");
    std::fs::write(&cfg, "[features]\nmax_clients = 10\n").unwrap();
    let out = run(
        &[
            "features",
            "--threads",
            "1",
            "--config",
            cfg.to_str().unwrap(),
            "--load-state",
            state.to_str().unwrap(),
        ],
        b"",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let e = stderr(&out);
    assert!(e.contains("clients: 10 tracked at the end (cap 10)"), "{e}");
    assert!(
        e.contains(&format!("{} over capacity", tracked - 10)),
        "{e}"
    );
}

#[test]
fn models_with_thresholds_out_of_range_or_paths_outside_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m");
    let out = run(&["train", "-o", model.to_str().unwrap()], &normal_log());
    assert!(out.status.success(), "{}", stderr(&out));
    let path = model.join("robust/manifest.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut m: serde_json::Value = serde_json::from_str(&text).unwrap();
    for t in [-1.0, 2.5] {
        m["threshold"] = t.into();
        std::fs::write(&path, m.to_string()).unwrap();
        let out = run(&["score", "--model", model.to_str().unwrap()], b"");
        assert_eq!(out.status.code(), Some(2));
        let e = stderr(&out);
        assert!(
            e.contains(&format!("threshold: {t} is not a score in [0, 1]")),
            "{e}"
        );
        assert!(e.contains("robust/manifest.json"), "{e}");
    }
    std::fs::write(&path, text).unwrap();
    let ens = model.join("manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&ens).unwrap()).unwrap();
    m["ensemble"]["members"][0]["path"] = "../../etc".into();
    std::fs::write(&ens, m.to_string()).unwrap();
    let out = run(&["score", "--model", model.to_str().unwrap()], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("leaves the model folder"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn train_fits_on_a_bounded_sample_of_a_long_log() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m");
    let log = normal_log();
    let n = count_lines(&log);
    let out = run(
        &[
            "train",
            "--max-train-events",
            "500",
            "-o",
            model.to_str().unwrap(),
        ],
        &log,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(m["training"]["events"], 500);
    let source = m["training"]["source"].as_str().unwrap();
    assert!(
        source.contains(&format!("a uniform sample of 500 of {n} events")),
        "{source}"
    );
    // The model scores the whole log.
    let out = run(
        &["score", "--model", model.to_str().unwrap(), "--no-output"],
        &log,
    );
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn config_values_out_of_range_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    for (text, key) in [
        (
            "[input.combined]\nsession_field = 0\n",
            "input.combined.session_field",
        ),
        (
            "[features]\nfuture_confirm = 0\n",
            "features.future_confirm",
        ),
        (
            "[features]\nmax_future_ms = 99999999999999\n",
            "features.max_future_ms",
        ),
    ] {
        std::fs::write(&cfg, text).unwrap();
        let out = run(
            &[
                "features",
                "--format",
                "combined",
                "--config",
                cfg.to_str().unwrap(),
            ],
            b"",
        );
        assert_eq!(out.status.code(), Some(2), "{text}");
        let e = stderr(&out);
        assert!(e.contains(key), "{text}: {e}");
        assert!(e.contains(&cfg.display().to_string()), "{text}: {e}");
    }
}

#[test]
fn a_byte_order_mark_is_skipped_and_positional_arrays_are_refused() {
    let mut input = b"\xEF\xBB\xBF".to_vec();
    input.extend_from_slice(event("1000").as_bytes());
    input.extend_from_slice(b"\n[\"2026-01-01T00:00:00Z\",\"1.2.3.4\",\"GET\",\"/x\",200]\n");
    let out = run(&["features"], &input);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(records(&out).len(), 1);
    let e = stderr(&out);
    assert!(
        e.contains("rejected line 2: not a JSON object: an array"),
        "{e}"
    );
    assert!(!e.contains("rejected line 1"), "{e}");
}

#[test]
fn a_reader_that_goes_away_ends_the_run_quietly() {
    // A long log in time order (no event in it is late).
    let out = gw()
        .args([
            "simulate",
            "--seed",
            "12",
            "--duration",
            "3h",
            "--users",
            "60",
        ])
        .args(["--scenarios", "none"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let big = out.stdout;
    assert!(big.len() > 4 << 20, "{} bytes", big.len());
    let mut child = gw()
        .args(["features"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&big);
    });
    // Read one record, then close the pipe, like `| head -1`.
    let mut stdout = child.stdout.take().unwrap();
    let mut first = vec![0u8; 1];
    stdout.read_exact(&mut first).unwrap();
    drop(stdout);
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    let e = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{e}");
    assert!(!e.contains("rejected"), "{e}");
    assert!(!e.contains("error"), "{e}");
}

#[test]
fn a_full_or_closed_standard_error_never_panics_and_write_errors_name_the_file() {
    let bad = format!("{}\nnot json\n", event("1000"));
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let mut child = gw()
        .args(["features"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(full)
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(bad.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(records(&out).len(), 1);
    let out = gw()
        .args(["features", "--input", "/dev/null"])
        .stderr(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    // A full output file.
    let out = run(&["features", "-o", "/dev/full"], &normal_log());
    assert_eq!(out.status.code(), Some(2));
    let e = stderr(&out);
    assert!(e.contains("writing /dev/full"), "{e}");
    assert!(!e.contains("panicked"), "{e}");
}

/// Peak resident memory (KiB) of a `gatewatch` run, by `/usr/bin/time`.
fn peak_rss_kib(args: &[&str], input: &Path) -> u64 {
    let out = Command::new("/usr/bin/time")
        .arg("-f")
        .arg("maxrss=%M")
        .arg(env!("CARGO_BIN_EXE_gatewatch"))
        .args(args)
        .arg("-i")
        .arg(input)
        .arg("-o")
        .arg("/dev/null")
        .output()
        .unwrap();
    let e = stderr(&out);
    assert!(out.status.success(), "{e}");
    e.lines()
        .find_map(|l| l.strip_prefix("maxrss="))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn memory_is_flat_under_key_rotation_on_every_verb() {
    if !Path::new("/usr/bin/time").exists() {
        panic!("/usr/bin/time (Debian package `time`) is needed to measure peak memory");
    }
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, n: u64, paths: bool| {
        let p = dir.path().join(name);
        let mut w = std::io::BufWriter::new(std::fs::File::create(&p).unwrap());
        for i in 0..n {
            let (ip, path) = if paths {
                (
                    "198.51.100.7".to_string(),
                    format!("/files/report-{i:x}-final"),
                )
            } else {
                (
                    format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
                    "/login".into(),
                )
            };
            writeln!(
                w,
                r#"{{"ts":{},"client_ip":"{ip}","method":"POST","path":"{path}","status":401,"label":"l{}"}}"#,
                1_767_225_600_000 + i * 100,
                i % 1000
            )
            .unwrap();
        }
        p
    };
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[features]\nmax_clients = 2000\nmax_endpoints = 2000\n",
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    for paths in [false, true] {
        let small = write("small.ndjson", 15_000, paths);
        let large = write("large.ndjson", 150_000, paths);
        for verb in ["features", "score"] {
            // One thread: with several, the parse-ahead buffers in flight vary with timing by
            // ±10% of the peak, more than the state this test watches.
            let a = peak_rss_kib(&[verb, "--threads", "1", "--config", cfg], &small);
            let b = peak_rss_kib(&[verb, "--threads", "1", "--config", cfg], &large);
            assert!(
                (b as f64) < 1.15 * a as f64,
                "{verb} (distinct {}): {a} KiB at 15,000 keys, {b} KiB at 150,000",
                if paths { "paths" } else { "clients" }
            );
        }
    }
}
