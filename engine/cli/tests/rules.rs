//! Mitigation rules through the binary: `score --rules` and `--decisions`, `backtest` on a
//! small hand-made log whose figures are known, refused rules files, the built-in rules.

mod common;

use common::run_with_stdin;
use gatewatch_pipeline::ScoreRecord;
use serde_json::Value;

/// A labelled log: address .1 fails 12 logins in 12 s (the attack), then once more at
/// 100 s and 200 s; address .2 is a normal user throughout.
fn log() -> String {
    let t0 = 1_767_603_600_000i64;
    let mut lines = Vec::new();
    let mut ev = |ms: i64, ip: &str, status: u16, label: &str, n: usize| {
        lines.push(format!(
            r#"{{"id":{n},"ts":{},"client_ip":"{ip}","method":"POST","path":"/v1/login","status":{status},"label":"{label}"}}"#,
            t0 + ms
        ));
    };
    let mut n = 0;
    for i in 0..12 {
        ev(i * 1000, "198.51.100.1", 401, "stuffing", n);
        n += 1;
        ev(i * 1000 + 500, "198.51.100.2", 200, "normal", n);
        n += 1;
    }
    ev(100_000, "198.51.100.1", 401, "stuffing", n);
    ev(100_500, "198.51.100.2", 200, "normal", n + 1);
    ev(200_000, "198.51.100.1", 401, "stuffing", n + 2);
    ev(200_500, "198.51.100.2", 200, "normal", n + 3);
    lines.join("\n") + "\n"
}

const RULES: &str = r#"
[[rule]]
id = "stuffing"
when = "request.status == 401 && features.auth_fail_ratio_10m >= 0.5 && features.req_count_10m >= 5"
action = "block"
key = "ip"
ttl = "60s"
[rule.escalation]
ladder = ["block"]
ttl_factor = 2
"#;

#[test]
fn score_with_rules_writes_the_covering_decision_and_the_decision_changes() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, RULES).unwrap();
    let decisions = dir.path().join("decisions.ndjson");
    let out = run_with_stdin(
        &[
            "score",
            "--rules",
            rules.to_str().unwrap(),
            "--decisions",
            decisions.to_str().unwrap(),
        ],
        log().as_bytes(),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let records: Vec<ScoreRecord> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 28);
    // The fifth failure of .1 (its auth_fail_10m counts it) starts the block; every later
    // request of .1 until it ends is covered, .2 never is.
    let covered: Vec<(u64, bool)> = records
        .iter()
        .filter_map(|r| {
            let d = r.decision.as_ref()?;
            assert_eq!((d.rule.as_str(), d.action.as_str()), ("stuffing", "block"));
            assert_eq!((d.scope.as_str(), d.value.as_str()), ("Ip", "198.51.100.1"));
            Some((r.id.as_ref().unwrap().as_u64().unwrap(), d.new))
        })
        .collect();
    assert!(
        records
            .iter()
            .filter(|r| r.client == "ip:198.51.100.2")
            .all(|r| r.decision.is_none())
    );
    let first = covered[0];
    assert_eq!(first, (8, true), "{covered:?}");
    // Failures 5..=12 in the first 12 s, then the one at 100 s after the first block (60 s)
    // ended: a new, escalated block of 120 s, which covers the one at 200 s? No: it ended
    // at 220 s, so that one is covered too.
    assert_eq!(covered.len(), 8 + 1 + 1, "{covered:?}");
    assert_eq!(covered[8], (24, true));
    assert_eq!(covered[9], (26, false));
    let changes: Vec<Value> = std::fs::read_to_string(&decisions)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let what: Vec<(&str, i64)> = changes
        .iter()
        .map(|c| (c["change"].as_str().unwrap(), c["level"].as_i64().unwrap()))
        .collect();
    assert_eq!(what, [("new", 0), ("expire", 0), ("escalate", 1)]);
    assert_eq!(changes[0]["until"], "2026-01-05T09:01:04.000Z");
    assert_eq!(changes[1]["ts"], "2026-01-05T09:01:04.000Z");
    assert_eq!(changes[1]["why"], "ttl");
    assert_eq!(changes[2]["duration_s"], 120.0);
    assert!(err.contains("rules ("), "{err}");
}

#[test]
fn backtest_reports_matches_precision_and_who_was_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        format!(
            "{RULES}\n[[rule]]\nid = \"everyone\"\nwhen = \"request.status == 200\"\naction = \"log\"\nmode = \"shadow\"\n"
        ),
    )
    .unwrap();
    let out = run_with_stdin(
        &["backtest", "--rules", rules.to_str().unwrap()],
        log().as_bytes(),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(out.stdout.is_empty());
    let line = |start: &str, with: &str| {
        err.lines()
            .find(|l| l.trim_start().starts_with(start) && l.contains(with))
            .unwrap_or_else(|| panic!("no line {start:?} in\n{err}"))
            .split_whitespace()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    // rule, mode, action, key, matched, decisions, keys, precision.
    assert_eq!(
        line("stuffing ", "enforce")[..],
        [
            "stuffing",
            "enforce",
            "block→block",
            "ip",
            "10",
            "2",
            "1",
            "1.000"
        ]
    );
    assert_eq!(
        line("everyone ", "shadow")[..],
        [
            "everyone", "shadow", "log", "client", "14", "1", "1", "0.000"
        ]
    );
    // label, requests, block, challenge, rate_limit, log, shadow, clients stopped.
    let s = line("stuffing  ", " of ");
    assert_eq!(s[..3], ["stuffing", "14", "71.4%"], "{s:?}");
    let n = line("normal  ", " of ");
    assert_eq!(n[..3], ["normal", "14", "0.0%"], "{n:?}");
    assert_eq!(n[6], "100.0%", "{n:?}");
    assert!(err.contains("normal requests blocked or challenged: 0 of 14 (0.00%), 0 clients"));
}

#[test]
fn bad_rules_files_are_refused_with_the_rule_and_position() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        "[[rule]]\nid = \"r1\"\nwhen = \"request.status == 401 && features.nope > 1\"\naction = \"block\"\n",
    )
    .unwrap();
    let out = run_with_stdin(
        &["score", "--rules", rules.to_str().unwrap()],
        log().as_bytes(),
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rules.toml")
            && err.contains("rule \"r1\": when, 1:26: unknown feature \"nope\""),
        "{err}"
    );
    let out = run_with_stdin(&["score", "--decisions", "x.ndjson"], log().as_bytes());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--decisions needs rules"));
}

#[test]
fn the_built_in_rules_run_with_the_built_in_model_and_threads_give_the_same_records() {
    let events = run_with_stdin(
        &[
            "simulate",
            "--seed",
            "5",
            "--duration",
            "5m",
            "--users",
            "50",
        ],
        b"",
    );
    assert!(events.status.success());
    let one = run_with_stdin(
        &["score", "--rules", "default", "--threads", "1"],
        &events.stdout,
    );
    let err = String::from_utf8_lossy(&one.stderr);
    assert!(one.status.success(), "{err}");
    assert!(err.contains("rules (built-in): 7 rules"), "{err}");
    let decided = String::from_utf8_lossy(&one.stdout)
        .lines()
        .filter(|l| l.contains("\"decision\":"))
        .count();
    assert!(decided > 0);
    let three = run_with_stdin(
        &["score", "--rules", "default", "--threads", "3"],
        &events.stdout,
    );
    assert!(three.status.success());
    assert_eq!(one.stdout, three.stdout);
}

#[test]
fn recommend_limits_prints_the_quantiles_and_writes_rules_that_load() {
    let dir = tempfile::tempdir().unwrap();
    let events = run_with_stdin(
        &[
            "simulate",
            "--seed",
            "9",
            "--duration",
            "10m",
            "--users",
            "120",
        ],
        b"",
    );
    assert!(events.status.success());
    let log = dir.path().join("events.ndjson");
    std::fs::write(&log, &events.stdout).unwrap();
    let rules = dir.path().join("limits.toml");
    let run = |extra: &[&str]| {
        let mut args = vec![
            "recommend-limits",
            "-i",
            log.to_str().unwrap(),
            "--label",
            "normal",
            "--rules-out",
            rules.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let out = run_with_stdin(&args, b"");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{err}");
        (err, std::fs::read_to_string(&rules).unwrap())
    };
    let (err, text) = run(&["--min-sessions", "20", "--action", "rate_limit"]);
    assert!(
        err.contains("labelled normal") && err.contains("p99"),
        "{err}"
    );
    assert!(text.contains("id = \"limit-pooled\""), "{text}");
    assert!(
        text.contains("rate = ") && text.contains("per = \"1m\""),
        "{text}"
    );
    // The written rules load and decide.
    let out = run_with_stdin(
        &[
            "backtest",
            "--rules",
            rules.to_str().unwrap(),
            "-i",
            log.to_str().unwrap(),
        ],
        b"",
    );
    let bt = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{bt}");
    assert!(bt.contains("limit-pooled"), "{bt}");
    // Below the client gate no endpoint gets a limit of its own: only the pooled rule.
    let (err, text) = run(&["--min-sessions", "100000"]);
    assert!(err.contains("below the 100000-client gate"), "{err}");
    assert_eq!(text.matches("[[rule]]").count(), 1, "{text}");
    assert!(text.contains("action = \"log\""));
}
