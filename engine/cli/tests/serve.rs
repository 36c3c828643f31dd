//! `gatewatch serve`, started for real on a loopback port: HTTP ingest answers the records
//! `gatewatch score` writes, the operations endpoints answer, SIGTERM saves the state and a
//! restart continues from it, a corrupt state is set aside.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::{Served, copy_dir, gw, python, run_with_stdin, wait_until};

fn simulate() -> Vec<u8> {
    simulate_with(&["--seed", "5", "--duration", "4m", "--users", "40"])
}

fn simulate_with(args: &[&str]) -> Vec<u8> {
    let out = gw().arg("simulate").args(args).output().unwrap();
    assert!(out.status.success());
    out.stdout
}

fn json_lines(s: &str) -> Vec<serde_json::Value> {
    s.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The events in `n` consecutive chunks of whole lines.
fn chunks(events: &[u8], n: usize) -> Vec<Vec<u8>> {
    let lines: Vec<&[u8]> = events.split_inclusive(|b| *b == b'\n').collect();
    let per = lines.len().div_ceil(n);
    lines.chunks(per).map(|c| c.concat()).collect()
}

fn score_cli(events: &[u8], dir: &Path) -> Vec<serde_json::Value> {
    let input = dir.join("events.ndjson");
    std::fs::write(&input, events).unwrap();
    let out = gw()
        .args(["score", "-i", input.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    json_lines(&String::from_utf8(out.stdout).unwrap())
}

#[test]
fn http_ingest_answers_the_cli_records_and_a_restart_continues_from_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.bin");
    let events = simulate();
    let want = score_cli(&events, dir.path());
    let parts = chunks(&events, 4);

    let s = Served::start(&["--state", state.to_str().unwrap()]);
    assert_eq!(s.call("GET", "/healthz", b""), (200, "ok\n".to_string()));
    assert_eq!(s.call("GET", "/readyz", b""), (200, "ready\n".to_string()));
    let mut got = Vec::new();
    for p in &parts[..3] {
        let (status, body) = s.call("POST", "/v1/events", p);
        assert_eq!(status, 200, "{body}");
        got.extend(json_lines(&body));
    }
    // A line that is not an event is answered as rejected, naming the line and field.
    let (status, body) = s.call(
        "POST",
        "/v1/events",
        b"{\"ts\":\"not a time\",\"client_ip\":\"10.0.0.1\",\"method\":\"GET\",\"path\":\"/\",\"status\":200}\n",
    );
    assert_eq!(status, 200);
    let rejected = json_lines(&body);
    assert_eq!(rejected.len(), 1, "{body}");
    assert_eq!(rejected[0]["rejected"]["line"], 1);
    assert!(
        rejected[0]["rejected"]["reason"]
            .as_str()
            .unwrap()
            .contains("ts"),
        "{body}"
    );
    let (status, metrics) = s.call("GET", "/metrics", b"");
    assert_eq!(status, 200);
    assert!(
        metrics.contains(&format!("gatewatch_events_total {}", got.len())),
        "{metrics}"
    );
    assert!(
        metrics.contains("gatewatch_model{model=\"default@1\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("gatewatch_inputs_rejected_total{reason="),
        "{metrics}"
    );
    assert!(
        metrics.contains("gatewatch_batch_seconds_bucket"),
        "{metrics}"
    );

    // SIGTERM: a clean exit with the state saved; a restart restores it and continues.
    assert!(s.stop().success());
    assert!(state.exists());
    let s = Served::start(&["--state", state.to_str().unwrap()]);
    s.wait_for_log("restored");
    let (status, body) = s.call("POST", "/v1/events", &parts[3]);
    assert_eq!(status, 200, "{body}");
    got.extend(json_lines(&body));
    assert!(s.stop().success());

    // Every event's record, equal to `gatewatch score` on the whole log.
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w);
    }
}

#[test]
fn a_corrupt_state_is_set_aside_and_the_service_starts_empty() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.bin");
    std::fs::write(&state, b"GWSTATE\0 not really a state").unwrap();
    let s = Served::start(&["--state", state.to_str().unwrap()]);
    s.wait_for_log("could not restore");
    assert!(dir.path().join("state.corrupt").exists());
    assert_eq!(s.call("GET", "/readyz", b"").0, 200);
    let (status, body) = s.call(
        "POST",
        "/v1/events",
        b"{\"ts\":1767603600000,\"client_ip\":\"10.0.0.1\",\"method\":\"GET\",\"path\":\"/a\",\"status\":200}\n",
    );
    assert_eq!(status, 200);
    assert_eq!(json_lines(&body)[0]["client"], "ip:10.0.0.1");
    // Bodies are bounded (2 MB): a larger one is refused, and the service goes on.
    let big = vec![b' '; 3 << 20];
    assert_eq!(s.call("POST", "/v1/events", &big).0, 413);
    assert_eq!(s.call("POST", "/v1/events", b""), (200, String::new()));
    assert!(s.stop().success());
    assert!(state.exists(), "the new state replaces the corrupt one");
}

#[test]
fn sighup_reloads_a_good_model_and_keeps_the_last_good_one_when_the_new_one_is_broken() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m");
    copy_dir(
        Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../models/default")),
        &model,
    );
    let event = b"{\"ts\":1767603600000,\"client_ip\":\"10.0.0.1\",\"method\":\"GET\",\"path\":\"/a\",\"status\":200}\n";
    let scored_by = |s: &Served| {
        let (status, body) = s.call("POST", "/v1/events", event);
        assert_eq!(status, 200, "{body}");
        json_lines(&body)[0]["model"].as_str().unwrap().to_string()
    };
    let s = Served::start(&["--model", model.to_str().unwrap(), "--no-watch"]);
    assert_eq!(scored_by(&s), "default@1");
    // A broken model: refused, counted, and scoring goes on with the last good one.
    let manifest = std::fs::read_to_string(model.join("manifest.json")).unwrap();
    std::fs::write(model.join("manifest.json"), "{\"format_version\": 1,").unwrap();
    s.signal("HUP");
    s.wait_for_metric("gatewatch_model_reload_failures_total 1");
    assert_eq!(scored_by(&s), "default@1");
    // A good one: it scores from now on, and the metrics say which is running.
    std::fs::write(
        model.join("manifest.json"),
        manifest.replacen("\"name\": \"default\"", "\"name\": \"renamed\"", 1),
    )
    .unwrap();
    s.signal("HUP");
    let m = s.wait_for_metric("gatewatch_model_reloads_total 1");
    assert!(m.contains("gatewatch_model{model=\"renamed@1\"} 1"), "{m}");
    assert!(m.contains("gatewatch_model{model=\"default@1\"} 0"), "{m}");
    assert_eq!(scored_by(&s), "renamed@1");
    assert!(s.stop().success());
}

#[test]
fn the_endpoint_monitor_names_the_clients_of_a_distributed_login_attack() {
    let dir = tempfile::tempdir().unwrap();
    let events = simulate_with(&[
        "--seed",
        "31",
        "--duration",
        "30m",
        "--users",
        "100",
        "--scenarios",
        "low_and_slow",
    ]);
    // What `gatewatch score --alerts` names on the same events.
    let input = dir.path().join("events.ndjson");
    let alerts = dir.path().join("alerts.ndjson");
    std::fs::write(&input, &events).unwrap();
    let out = gw()
        .args(["score", "--no-output", "-i", input.to_str().unwrap()])
        .args(["--alerts", alerts.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let cli: Vec<serde_json::Value> = json_lines(&std::fs::read_to_string(&alerts).unwrap())
        .into_iter()
        .filter(|r| r["kind"] == "client")
        .collect();
    assert!(cli.len() > 100, "{}", cli.len());

    let s = Served::start(&[]);
    let mut label = std::collections::HashMap::new();
    for p in chunks(&events, 20) {
        let (status, body) = s.call("POST", "/v1/events", &p);
        assert_eq!(status, 200);
        for r in json_lines(&body) {
            label.insert(
                r["client"].as_str().unwrap().to_string(),
                r["label"].clone(),
            );
        }
    }
    let (status, body) = s.call("GET", "/v1/alerts", b"");
    assert_eq!(status, 200);
    let named: Vec<serde_json::Value> = json_lines(&body)
        .into_iter()
        .filter(|r| r["kind"] == "client")
        .collect();
    // The service names what the CLI names (the CLI also judges the clients of the last
    // minute at the end of its input; the service is still waiting for them).
    assert!(
        named.len() * 10 >= cli.len() * 9,
        "{} of {}",
        named.len(),
        cli.len()
    );
    for r in &named {
        assert!(cli.contains(r), "{r}");
        assert_eq!(label[r["client"].as_str().unwrap()], "low_and_slow", "{r}");
    }
    let (_, m) = s.call("GET", "/metrics", b"");
    assert!(
        m.contains(&format!("gatewatch_client_alerts_total {}", named.len())),
        "{m}"
    );
    assert!(s.stop().success());
}

#[test]
fn a_crowdsec_bouncer_sees_the_rules_decisions_appear_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    std::fs::write(
        &rules,
        r#"
[[rule]]
id = "stuffing"
when = "request.status == 401 && features.auth_fail_ratio_10m >= 0.5 && features.req_count_10m >= 5"
action = "block"
key = "ip"
ttl = "60s"
[[rule]]
id = "watch"
when = "request.status == 401"
action = "block"
key = "ip/24"
mode = "shadow"
"#,
    )
    .unwrap();
    let state = dir.path().join("state.bin");
    let s = Served::start(&[
        "--rules",
        rules.to_str().unwrap(),
        "--bouncer-key",
        "k-test",
        "--state",
        state.to_str().unwrap(),
    ]);
    let out = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/bouncer/crowdsec_bouncer.py"))
        .arg(format!("http://{}", s.addr))
        .arg("k-test")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    s.wait_for_metric("gatewatch_decisions_total{change=\"new\",mode=\"enforce\"} 1");
    s.wait_for_metric("gatewatch_decisions_total{change=\"expire\",mode=\"enforce\"} 1");
    s.wait_for_metric("gatewatch_bouncer_requests_total{outcome=\"forbidden\"} 2");
    // The shadow range decision is made, never served.
    let (status, body) = s.call_with_key("/v1/decisions?scope=range", "k-test");
    assert_eq!((status, body.as_str()), (200, "null"));
    // A new block, then a restart: the decision survives it and is served again.
    let t0 = 1_767_603_600_000i64 + 100_000;
    let burst: String = (0..6)
        .map(|i| {
            format!(
                "{{\"ts\":{},\"client_ip\":\"203.0.113.9\",\"method\":\"POST\",\"path\":\"/v1/login\",\"status\":401}}\n",
                t0 + i * 100
            )
        })
        .collect();
    assert_eq!(s.call("POST", "/v1/events", burst.as_bytes()).0, 200);
    let (_, listed) = s.call_with_key("/v1/decisions?ip=203.0.113.9", "k-test");
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed[0]["type"], "ban");
    s.stop();
    let again = Served::start(&[
        "--rules",
        rules.to_str().unwrap(),
        "--bouncer-key",
        "k-test",
        "--state",
        state.to_str().unwrap(),
    ]);
    again.wait_for_log("restored 3 decisions");
    let (_, stream) = again.call_with_key("/v1/decisions/stream?startup=true", "k-test");
    let stream: serde_json::Value = serde_json::from_str(&stream).unwrap();
    assert_eq!(stream["new"][0]["value"], "203.0.113.9", "{stream}");
    assert_eq!(stream["new"].as_array().unwrap().len(), 1);
    again.stop();
}

#[test]
fn sighup_reloads_the_rules_and_keeps_the_last_good_ones_when_the_new_file_is_broken() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    let rule = |id: &str| {
        format!(
            "[[rule]]\nid = \"{id}\"\nwhen = \"request.status == 401\"\naction = \"block\"\nkey = \"ip\"\n"
        )
    };
    std::fs::write(&rules, rule("first")).unwrap();
    let s = Served::start(&[
        "--rules",
        rules.to_str().unwrap(),
        "--bouncer-key",
        "k",
        "--no-watch",
    ]);
    let decided_by = |s: &Served, ip: &str, ms: i64| {
        let event = format!(
            "{{\"ts\":{},\"client_ip\":\"{ip}\",\"method\":\"POST\",\"path\":\"/login\",\"status\":401}}\n",
            1_767_603_600_000i64 + ms
        );
        let (status, body) = s.call("POST", "/v1/events", event.as_bytes());
        assert_eq!(status, 200, "{body}");
        json_lines(&body)[0]["decision"]["rule"]
            .as_str()
            .map(String::from)
    };
    assert_eq!(decided_by(&s, "192.0.2.1", 0).as_deref(), Some("first"));
    // A broken file: refused, counted; the last good rules keep deciding.
    std::fs::write(
        &rules,
        "[[rule]]\nid = \"x\"\nwhen = \"features.nope > 1\"\naction = \"block\"\n",
    )
    .unwrap();
    s.signal("HUP");
    s.wait_for_metric("gatewatch_rules_reload_failures_total 1");
    assert_eq!(decided_by(&s, "192.0.2.2", 1000).as_deref(), Some("first"));
    // A good one: its rules decide from now on; the removed rule's decisions end.
    std::fs::write(&rules, rule("second")).unwrap();
    s.signal("HUP");
    let m = s.wait_for_metric("gatewatch_rules_reloads_total 1");
    assert!(
        m.contains("gatewatch_decisions_total{change=\"expire\",mode=\"enforce\"} 2"),
        "{m}"
    );
    assert_eq!(decided_by(&s, "192.0.2.3", 2000).as_deref(), Some("second"));
    let (_, listed) = s.call_with_key("/v1/decisions", "k");
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed[0]["scenario"], "second");
    assert!(s.stop().success());
}

/// Waits (up to 20 s) until `path` holds `n` lines.
fn wait_for_lines(path: &Path, n: usize) -> String {
    for _ in 0..400 {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.lines().count() >= n {
            return text;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let have = std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .count();
    panic!("{} has {have} lines, never {n}", path.display());
}

fn score_cli_rules(events: &[u8], dir: &Path) -> (String, String) {
    let input = dir.join("cli-events.ndjson");
    let decisions = dir.join("cli-decisions.ndjson");
    std::fs::write(&input, events).unwrap();
    let out = gw()
        .args(["score", "--rules", "default", "-i", input.to_str().unwrap()])
        .args(["--decisions", decisions.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    (
        String::from_utf8(out.stdout).unwrap(),
        std::fs::read_to_string(decisions).unwrap(),
    )
}

#[test]
fn a_file_or_standard_input_is_scored_into_the_sinks_as_the_cli_scores_it() {
    let dir = tempfile::tempdir().unwrap();
    let events = simulate();
    let (want, want_decisions) = score_cli_rules(&events, dir.path());
    let input = dir.path().join("events.ndjson");
    std::fs::write(&input, &events).unwrap();
    let (scores, decisions) = (dir.path().join("s.ndjson"), dir.path().join("d.ndjson"));

    // A file: read to its end, then the service stops by itself with its summary.
    let out = gw()
        .args(["serve", "--listen", "127.0.0.1:0", "--rules", "default"])
        .args(["-i", input.to_str().unwrap()])
        .args(["--scores-out", scores.to_str().unwrap()])
        .args(["--decisions-out", decisions.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(std::fs::read_to_string(&scores).unwrap(), want);
    assert_eq!(std::fs::read_to_string(&decisions).unwrap(), want_decisions);
    let n = want.lines().count();
    assert!(err.contains(&format!("{n} events scored")), "{err}");

    // Standard input, records to standard output; an odd line is rejected, named and
    // counted, and the stream goes on.
    let mut odd = events.clone();
    let cut = odd.len() / 2
        + odd[odd.len() / 2..]
            .iter()
            .position(|b| *b == b'\n')
            .unwrap()
        + 1;
    odd.splice(cut..cut, b"{\"ts\": [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}\n\xff\xfe garbage\n".iter().copied());
    let mut child = gw()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "-i",
            "-",
            "--scores-out",
            "-",
            "--log-format",
            "json",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&odd));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let got = json_lines(&String::from_utf8(out.stdout).unwrap());
    let plain = score_cli(&events, dir.path());
    assert_eq!(got.len(), plain.len());
    for (g, w) in got.iter().zip(&plain) {
        assert_eq!(g["id"], w["id"]);
        assert_eq!(g["score"], w["score"]);
    }
    assert!(err.contains("2 inputs rejected"), "{err}");
    // Logged as JSON objects, naming where and why.
    let logged: Vec<serde_json::Value> = err
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|v: &serde_json::Value| v["fields"]["message"] == "input rejected")
        .collect();
    assert_eq!(logged.len(), 2, "{err}");
    assert!(
        logged
            .iter()
            .all(|v| v["level"] == "WARN" && v["fields"]["position"].is_string())
    );

    // With a stream input, HTTP ingest is closed.
    let s = Served::start(&["--follow", "-i", input.to_str().unwrap()]);
    let (status, body) = s.call("POST", "/v1/events", b"{}\n");
    assert_eq!(status, 409, "{body}");
    assert!(s.stop().success());
}

#[test]
fn a_followed_file_is_scored_as_it_grows_through_rotation_and_a_restart_reads_on() {
    let dir = tempfile::tempdir().unwrap();
    let events = simulate();
    let want = score_cli(&events, dir.path());
    let parts = chunks(&events, 5);
    let log = dir.path().join("access.ndjson");
    let state = dir.path().join("state.bin");
    let scores = dir.path().join("scores.ndjson");
    let args = [
        "--follow",
        "-i",
        log.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
        "--scores-out",
        scores.to_str().unwrap(),
        "--flush-every",
        "100ms",
    ];
    let count = |upto: usize| {
        parts[..upto]
            .iter()
            .map(|p| p.split(|b| *b == b'\n').count() - 1)
            .sum::<usize>()
    };
    let append = |bytes: &[u8]| {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        f.write_all(bytes).unwrap();
    };

    // Started before the file exists: it waits for it.
    let s = Served::start(&args);
    append(&parts[0]);
    wait_for_lines(&scores, count(1));
    // A line written in two pieces is read whole.
    let cut = parts[1].len() / 2;
    append(&parts[1][..cut]);
    std::thread::sleep(std::time::Duration::from_millis(300));
    append(&parts[1][cut..]);
    wait_for_lines(&scores, count(2));
    // Rotation: the file is moved away and a new one takes its name.
    std::fs::rename(&log, dir.path().join("access.ndjson.1")).unwrap();
    append(&parts[2]);
    wait_for_lines(&scores, count(3));
    let m = s.wait_for_metric("gatewatch_input_rotations_total 1");
    assert!(m.contains("gatewatch_input_bytes_total"), "{m}");
    assert!(s.stop().success());

    // Lines appended while the service is down are read after the restart, from where
    // the last snapshot left the file; nothing is read twice.
    append(&parts[3]);
    let s = Served::start(&args);
    s.wait_for_log("restored");
    wait_for_lines(&scores, count(4));
    // Truncation: the file is emptied and written again from its start.
    std::fs::write(&log, b"").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    append(&parts[4]);
    wait_for_lines(&scores, count(5));
    assert!(s.stop().success());

    let got = json_lines(&std::fs::read_to_string(&scores).unwrap());
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w);
    }
}

#[test]
fn a_rules_file_or_model_changed_on_disk_is_reloaded_without_a_signal() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    let model = dir.path().join("model");
    copy_dir(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/default"),
        &model,
    );
    std::fs::write(
        &rules,
        "[[rule]]\nid = \"first\"\nwhen = \"request.status == 401\"\naction = \"block\"\nkey = \"ip\"\n",
    )
    .unwrap();
    let s = Served::start(&[
        "--rules",
        rules.to_str().unwrap(),
        "-m",
        model.to_str().unwrap(),
    ]);
    // A broken rules file is refused; a good one replaces the running rules.
    std::fs::write(&rules, "[[rule]]\nid = \"x\"\nwhen = \"nope(\"\n").unwrap();
    s.wait_for_metric("gatewatch_rules_reload_failures_total 1");
    std::fs::write(
        &rules,
        "[[rule]]\nid = \"second\"\nwhen = \"request.status == 403\"\naction = \"log\"\n",
    )
    .unwrap();
    s.wait_for_metric("gatewatch_rules_reloads_total 1");
    // A model file overwritten with garbage is refused and scoring goes on.
    let manifest = model.join("manifest.json");
    let good = std::fs::read(&manifest).unwrap();
    std::fs::write(&manifest, b"{ not a manifest").unwrap();
    s.wait_for_metric("gatewatch_model_reload_failures_total 1");
    let (status, body) = s.call(
        "POST",
        "/v1/events",
        b"{\"ts\":1767603600000,\"client_ip\":\"192.0.2.9\",\"method\":\"GET\",\"path\":\"/\",\"status\":200}\n",
    );
    assert_eq!(status, 200, "{body}");
    assert!(json_lines(&body)[0]["score"].is_number(), "{body}");
    std::fs::write(&manifest, good).unwrap();
    s.wait_for_metric("gatewatch_model_reloads_total 1");
    assert!(s.stop().success());
}

#[test]
fn the_deployment_examples_hold_a_configuration_and_rules_the_service_accepts() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let text = std::fs::read_to_string(root.join("deploy/kubernetes.yaml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for doc in text.split("\n---\n") {
        let v: serde_json::Value = serde_norway::from_str(doc).unwrap();
        match v["kind"].as_str().unwrap() {
            "ConfigMap" => {
                for name in ["gatewatch.toml", "rules.toml"] {
                    std::fs::write(dir.path().join(name), v["data"][name].as_str().unwrap())
                        .unwrap();
                }
                checked += 1;
            }
            "StatefulSet" => {
                let c = &v["spec"]["template"]["spec"]["containers"][0];
                assert_eq!(c["args"][0], "serve");
                // Each pod reads the partition of its index.
                let env = c["env"].as_array().unwrap();
                let parts = env
                    .iter()
                    .find(|e| e["name"] == "GATEWATCH_KAFKA_PARTITIONS")
                    .unwrap();
                assert_eq!(
                    parts["valueFrom"]["fieldRef"]["fieldPath"],
                    "metadata.labels['apps.kubernetes.io/pod-index']"
                );
                assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
                assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
                checked += 1;
            }
            _ => {}
        }
    }
    assert_eq!(checked, 2);
    // The configuration (its [kafka] section with ${VAR} references) and the rules load: the
    // service starts with them and the Kafka brokers named in the environment are tried.
    let config = dir.path().join("gatewatch.toml");
    let rules = dir.path().join("rules.toml");
    let events = simulate_with(&["--duration", "1m", "--users", "5"]);
    let input = dir.path().join("events.ndjson");
    std::fs::write(&input, events).unwrap();
    let out = gw()
        .args([
            "backtest",
            "--rules",
            rules.to_str().unwrap(),
            "-i",
            input.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = gw()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
            config.to_str().unwrap(),
        ])
        .env("KAFKA_BROKERS", "127.0.0.1:1")
        .env("KAFKA_PASSWORD", "x")
        .env("GATEWATCH_KAFKA_PARTITIONS", "0")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("cannot reach the Kafka brokers 127.0.0.1:1"),
        "{err}"
    );
    // The systemd unit runs `gatewatch serve` with options it has.
    let unit = std::fs::read_to_string(root.join("deploy/gatewatch.service")).unwrap();
    let exec = unit
        .split("ExecStart=")
        .nth(1)
        .unwrap()
        .split("\n#")
        .next()
        .unwrap()
        .replace("\\\n", " ");
    let help = String::from_utf8(gw().args(["serve", "--help"]).output().unwrap().stdout).unwrap();
    for opt in exec.split_whitespace().filter(|w| w.starts_with("--")) {
        assert!(
            help.contains(opt),
            "the unit uses {opt}, which gatewatch serve does not have"
        );
    }
}

#[test]
fn the_simulator_as_input_gives_the_records_of_the_simulated_log_and_can_run_in_real_time() {
    let dir = tempfile::tempdir().unwrap();
    let (want, want_decisions) = score_cli_rules(&simulate(), dir.path());
    let (scores, decisions) = (dir.path().join("s.ndjson"), dir.path().join("d.ndjson"));
    let out = gw()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--rules",
            "default",
            "--simulate",
        ])
        .args([
            "--sim-seed",
            "5",
            "--sim-duration",
            "4m",
            "--sim-users",
            "40",
        ])
        .args(["--scores-out", scores.to_str().unwrap()])
        .args(["--decisions-out", decisions.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&scores).unwrap(), want);
    assert_eq!(std::fs::read_to_string(&decisions).unwrap(), want_decisions);
    // In real time: 3 s of traffic take about 3 s.
    let started = std::time::Instant::now();
    let out = gw()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--simulate",
            "--sim-realtime",
        ])
        .args([
            "--sim-duration",
            "3s",
            "--sim-users",
            "20",
            "--scores-out",
            "-",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let took = started.elapsed();
    assert!(took >= std::time::Duration::from_secs(2), "{took:?}");
    assert!(!json_lines(&String::from_utf8(out.stdout).unwrap()).is_empty());
}

#[test]
fn clients_evicted_at_the_cap_are_counted_in_the_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gw.toml");
    std::fs::write(&config, "[features]\nmax_clients = 10\n").unwrap();
    let log = dir.path().join("events.ndjson");
    std::fs::write(&log, simulate()).unwrap();
    let s = Served::start(&[
        "--config",
        config.to_str().unwrap(),
        "-i",
        log.to_str().unwrap(),
        "--follow",
    ]);
    let m = s.wait_for_metric(&format!(
        "gatewatch_events_total {}",
        simulate().iter().filter(|b| **b == b'\n').count()
    ));
    assert!(
        s.metric("gatewatch_clients_evicted{reason=\"capacity\"}") > 0.0,
        "{m}"
    );
    assert!(s.metric("gatewatch_clients_tracked") <= 10.0, "{m}");
    assert!(s.stop().success());
}

/// The service listens before it restores its state: `/healthz` answers, `/readyz` and the
/// endpoints that need the state answer 503 until the restore is done (the state file is a
/// named pipe here, so the restore waits until the test writes it), then the restored state
/// scores.
#[test]
fn readyz_answers_503_until_the_state_is_restored() {
    let dir = tempfile::tempdir().unwrap();
    let events = simulate_with(&["--seed", "5", "--duration", "2m", "--users", "20"]);
    let want = score_cli(&events, dir.path());
    let parts = chunks(&events, 2);
    // The first half into a state file.
    let saved = dir.path().join("saved.bin");
    let s = Served::start(&["--state", saved.to_str().unwrap()]);
    let (status, first) = s.call("POST", "/v1/events", &parts[0]);
    assert_eq!(status, 200);
    assert!(s.stop().success());
    let bytes = std::fs::read(&saved).unwrap();

    let state = dir.path().join("state.bin");
    let made = Command::new("mkfifo").arg(&state).status().unwrap();
    assert!(made.success());
    let s = Served::start_unready(&["--state", state.to_str().unwrap()], &[]);
    assert_eq!(s.call("GET", "/healthz", b"").0, 200);
    let (status, body) = s.call("GET", "/readyz", b"");
    assert_eq!((status, body.as_str()), (503, "not ready\n"));
    let (status, body) = s.call("POST", "/v1/events", &parts[1]);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("restoring"), "{body}");
    assert_eq!(s.metric("gatewatch_events_total"), 0.0);
    // The state arrives: the service is ready and scores on from it.
    std::fs::write(&state, &bytes).unwrap();
    s.wait_for_log("restored");
    wait_until(30, "never ready", || s.call("GET", "/readyz", b"").0 == 200);
    let (status, rest) = s.call("POST", "/v1/events", &parts[1]);
    assert_eq!(status, 200);
    assert!(s.stop().success());
    let got: Vec<_> = json_lines(&first)
        .into_iter()
        .chain(json_lines(&rest))
        .collect();
    assert_eq!(got, want);
}

/// A request in flight when SIGTERM comes is answered in full before the service stops, and
/// its events are in the state saved.
#[test]
fn a_request_in_flight_at_sigterm_is_answered_and_its_events_saved() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let events = simulate_with(&["--seed", "5", "--duration", "1m", "--users", "10"]);
    let want = score_cli(&events, dir.path());
    let state = dir.path().join("state.bin");
    let s = Served::start(&["--state", state.to_str().unwrap()]);
    // Headers and half the body; SIGTERM; then the rest of the body.
    let mut conn = std::net::TcpStream::connect(&s.addr).unwrap();
    write!(
        conn,
        "POST /v1/events HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        s.addr,
        events.len()
    )
    .unwrap();
    let half = events.len() / 2;
    conn.write_all(&events[..half]).unwrap();
    conn.flush().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    s.signal("TERM");
    std::thread::sleep(std::time::Duration::from_millis(300));
    conn.write_all(&events[half..]).unwrap();
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(json_lines(body), want);
    let mut s = s;
    assert!(s.child.wait().unwrap().success());
    s.wait_for_log("stopped; state saved");
    // The saved state holds the request's clients.
    let out = gw()
        .args([
            "features",
            "--load-state",
            state.to_str().unwrap(),
            "-i",
            "/dev/null",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let clients: std::collections::BTreeSet<_> =
        want.iter().map(|r| r["client"].as_str().unwrap()).collect();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(&format!("clients: {} tracked", clients.len())),
        "{said}"
    );
}

/// A sink that keeps failing holds the input back and nothing is lost: the scores file's
/// directory does not exist at first, so every write fails (counted, retried with backoff)
/// while no event is taken further and no state is saved past them; once the directory
/// appears the records are written, each once, equal to `gatewatch score`'s.
#[test]
fn a_failing_sink_holds_the_input_back_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let events = simulate();
    let want = String::from_utf8(run_with_stdin(&["score", "-i", "-"], &events).stdout).unwrap();
    let input = dir.path().join("events.ndjson");
    std::fs::write(&input, &events).unwrap();
    let later = dir.path().join("later");
    let scores = later.join("scores.ndjson");
    let state = dir.path().join("state.bin");
    let mut s = Served::start(&[
        "-i",
        input.to_str().unwrap(),
        "--scores-out",
        scores.to_str().unwrap(),
        "--state",
        state.to_str().unwrap(),
        "--snapshot-every",
        "200ms",
    ]);
    s.wait_for_metric("gatewatch_sink_failures_total{sink=\"scores\"} 3");
    let scored = s.metric("gatewatch_events_scored_total");
    std::thread::sleep(std::time::Duration::from_millis(700));
    assert_eq!(
        s.metric("gatewatch_events_scored_total"),
        scored,
        "no event is taken further while the sink fails"
    );
    assert!(scored < want.lines().count() as f64);
    assert!(!state.exists(), "no state claims records not written");
    std::fs::create_dir(&later).unwrap();
    // The sink recovers; the file is read to its end and the service stops by itself.
    assert!(s.child.wait().unwrap().success());
    assert_eq!(std::fs::read_to_string(&scores).unwrap(), want);
    assert!(state.exists());
}
