//! The `gatewatch` binary end to end: real processes, real pipes, real files.

mod common;

use std::process::{Command, Output, Stdio};

use common::{copy_dir, gw, python, run_with_stdin, run_with_stdin_env};

/// `gatewatch simulate` with a seed, duration, users and scenarios (it must succeed).
fn simulate(seed: &str, duration: &str, users: &str, scenarios: &str) -> Output {
    let out = gw()
        .args([
            "simulate",
            "--seed",
            seed,
            "--duration",
            duration,
            "--users",
            users,
            "--scenarios",
            scenarios,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn lines(b: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(b)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn simulate_pipes_into_features() {
    let sim = simulate("7", "3m", "30", "all");
    let again = simulate("7", "3m", "30", "all");
    assert_eq!(sim.stdout, again.stdout, "same seed, same bytes");
    let events = lines(&sim.stdout);
    assert!(events.len() > 500);

    let out = run_with_stdin(&["features"], &sim.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recs = lines(&out.stdout);
    assert_eq!(recs.len(), events.len());
    let schema = gw().args(["features", "--schema"]).output().unwrap();
    let schema: serde_json::Value = serde_json::from_slice(&schema.stdout).unwrap();
    let names: Vec<&str> = schema["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    let mut ids = std::collections::HashSet::new();
    for r in &recs {
        let o = r.as_object().unwrap();
        for k in ["id", "label", "ts", "client", "endpoint"] {
            assert!(o.contains_key(k), "{k} missing in {r}");
        }
        for n in &names {
            assert!(o[*n].is_number(), "{n} not a number in {r}");
        }
        assert_eq!(o.len(), 5 + names.len());
        ids.insert(o["id"].as_u64().unwrap());
    }
    assert_eq!(ids.len(), events.len(), "every event once");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{} events with features", thousands(events.len()))),
        "{stderr}"
    );
    assert!(stderr.contains("rejected: 0"), "{stderr}");
    assert!(stderr.contains("mean features by label"), "{stderr}");
    // A client key with its kind on every record.
    assert!(
        recs.iter()
            .any(|r| r["client"].as_str().unwrap().starts_with("jwt:sub=u"))
    );
    assert!(
        recs.iter()
            .any(|r| r["client"].as_str().unwrap().starts_with("ip:"))
    );
    assert!(
        recs.iter()
            .any(|r| r["endpoint"] == "GET api.shop.example/v1/products/{id}")
    );
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[test]
fn malformed_lines_are_reported_and_the_run_goes_on() {
    let input = [
        r#"{"id":"a","ts":"2026-01-01T00:00:00Z","client_ip":"1.2.3.4","method":"GET","path":"/x/1","status":200}"#,
        r#"{"id":"b","ts":"2026-01-01T00:00:01Z","client_ip":"1.2.3.4","method":"GET","path":"/x/2","status":"OK"}"#,
        r#"this is not json"#,
        "",
        r#"{"id":"c","ts":"2026-01-01T00:00:02Z","client_ip":"1.2.3.4","method":"GET","path":"/x/3","status":404}"#,
        r#"{"id":"d","client_ip":"1.2.3.4","method":"GET","path":"/x/3","status":404}"#,
    ]
    .join("\n");
    let dir = tempfile::tempdir().unwrap();
    let rejects = dir.path().join("rejects.ndjson");
    let out = run_with_stdin(
        &["features", "--rejects", rejects.to_str().unwrap()],
        input.as_bytes(),
    );
    assert!(out.status.success());
    let recs = lines(&out.stdout);
    assert_eq!(
        recs.iter()
            .map(|r| r["id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["a", "c"]
    );
    assert_eq!(recs[1]["req_count_10s"], 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("rejected line 2: field `status`"),
        "{stderr}"
    );
    assert!(stderr.contains("rejected line 3: not JSON"), "{stderr}");
    assert!(
        stderr.contains("rejected line 6: missing field `ts`"),
        "{stderr}"
    );
    assert!(stderr.contains("rejected: 3"), "{stderr}");
    let rej = lines(&std::fs::read(&rejects).unwrap());
    assert_eq!(
        rej.iter()
            .map(|r| r["line"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [2, 3, 6]
    );
}

#[test]
fn combined_logs_with_a_session_field() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gw.toml");
    std::fs::write(
        &cfg,
        "[client_key]\nsources = [\"session_id\", \"ip\"]\n[input.combined]\nsession_field = 1\n",
    )
    .unwrap();
    let log = dir.path().join("access.log");
    std::fs::write(
        &log,
        concat!(
            "203.0.113.9 - - [05/Jan/2026:09:00:00 +0000] \"GET /v1/orders/1001 HTTP/1.1\" 200 512 \"-\" \"curl/8\" sess-1\n",
            "203.0.113.9 - - [05/Jan/2026:09:00:01 +0000] \"GET /v1/orders/1002 HTTP/1.1\" 403 64 \"-\" \"curl/8\" sess-1\n",
            "203.0.113.9 - - [05/Jan/2026:09:00:02 +0000] \"GET /v1/orders/1003 HTTP/1.1\" 403 64 \"-\" \"curl/8\" -\n",
        ),
    )
    .unwrap();
    let out = gw()
        .args([
            "features",
            "--format",
            "combined",
            "--config",
            cfg.to_str().unwrap(),
            "-i",
            log.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recs = lines(&out.stdout);
    assert_eq!(recs.len(), 3);
    assert_eq!(recs[0]["client"], "session:sess-1");
    assert_eq!(recs[2]["client"], "ip:203.0.113.9");
    assert_eq!(recs[1]["endpoint"], "GET /v1/orders/{id}");
    assert_eq!(recs[1]["seq_id_ratio_1m"], 0.5);
    assert_eq!(recs[1]["auth_fail_ratio_1m"], 0.5);
    assert_eq!(recs[0]["ts"], "2026-01-05T09:00:00.000Z");
}

#[test]
fn bad_options_and_configs_fail_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[features]\nhorizons_secs = [60, 10]\n").unwrap();
    let out = gw()
        .args(["features", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("horizons_secs") && err.contains("ascending"),
        "{err}"
    );

    let out = gw()
        .args(["features", "-i", "/nonexistent/x.ndjson"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/x.ndjson"));

    let out = gw()
        .args(["simulate", "--scenarios", "scraping,bogus"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown scenario \"bogus\""));

    let out = gw()
        .args(["simulate", "--duration", "ten"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn feature_reference_in_docs_is_current() {
    let out = gw().args(["features", "--list"]).output().unwrap();
    let generated = String::from_utf8(out.stdout).unwrap();
    let doc = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/FEATURES.md"
    ))
    .unwrap();
    assert!(
        doc.contains(&generated),
        "docs/FEATURES.md is out of date: regenerate it with scripts/gen-docs"
    );
}

#[test]
fn help_explains_each_verb() {
    let out = gw().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(
        help.contains("simulate") && help.contains("features"),
        "{help}"
    );
    let out = gw().args(["features", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("point-in-time"));
}

#[test]
fn openapi_templates_from_the_config_folder() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("api.yaml"),
        "openapi: 3.0.3\npaths:\n  /v1/accounts/{accountId}/statements/{month}:\n    get: {}\n",
    )
    .unwrap();
    let cfg = dir.path().join("gw.toml");
    std::fs::write(
        &cfg,
        "[endpoints]\nopenapi = \"api.yaml\"\ninclude_host = false\n",
    )
    .unwrap();
    let input = concat!(
        r#"{"ts":1,"client_ip":"1.2.3.4","method":"GET","path":"/v1/accounts/acme/statements/2026-01","status":200}"#,
        "\n",
        r#"{"ts":2,"client_ip":"1.2.3.4","method":"GET","path":"/v1/other/77","status":200}"#,
        "\n"
    );
    let out = run_with_stdin(
        &["features", "--config", cfg.to_str().unwrap()],
        input.as_bytes(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recs = lines(&out.stdout);
    assert_eq!(
        recs[0]["endpoint"],
        "GET /v1/accounts/{accountId}/statements/{month}"
    );
    assert_eq!(recs[1]["endpoint"], "GET /v1/other/{id}");

    std::fs::write(&cfg, "[endpoints]\nopenapi = \"missing.yaml\"\n").unwrap();
    let out = gw()
        .args(["features", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("missing.yaml"), "{err}");
}

#[test]
fn state_saved_by_one_run_continues_in_the_next() {
    let sim = simulate("5", "4m", "20", "all");
    let all: Vec<&[u8]> = sim.stdout.split_inclusive(|b| *b == b'\n').collect();
    let half = all.len() / 2;
    let (first, second): (Vec<u8>, Vec<u8>) = (all[..half].concat(), all[half..].concat());
    let whole = lines(&run_with_stdin(&["features"], &sim.stdout).stdout);

    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.bin");
    let state = state.to_str().unwrap();
    let a = run_with_stdin(&["features", "--save-state", state], &first);
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    let b = run_with_stdin(&["features", "--load-state", state], &second);
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    let resumed = lines(&b.stdout);
    assert_eq!(resumed.len(), all.len() - half);
    assert_eq!(
        resumed[..],
        whole[half..],
        "the second half continues as if never interrupted"
    );

    // A state of another feature set is refused with a message.
    let cfg = dir.path().join("gw.toml");
    std::fs::write(&cfg, "[features]\nbuckets_per_horizon = 10\n").unwrap();
    let out = gw()
        .args([
            "features",
            "--config",
            cfg.to_str().unwrap(),
            "--load-state",
            state,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("feature set"));
}

#[test]
fn train_then_score_flags_abuse_and_explains_it() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m");
    let normal = simulate("11", "20m", "150", "none");
    let out = run_with_stdin(
        &[
            "train",
            "--name",
            "m",
            "--label",
            "normal",
            "--describe",
            "twenty simulated minutes",
            "-o",
            model.to_str().unwrap(),
        ],
        &normal.stdout,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("fitted m@1"), "{stderr}");
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("manifest.json")).unwrap())
            .unwrap();
    assert_eq!(
        manifest["training"]["description"],
        "twenty simulated minutes"
    );
    // The endpoint monitor's failure baselines, learnt on the same events.
    assert_eq!(manifest["monitor"], "monitor.json");
    let monitor: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("monitor.json")).unwrap())
            .unwrap();
    let (_, login) = monitor["auth_failures"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(e, _)| e.ends_with("/v1/auth/login"))
        .unwrap();
    let share = login["failed"].as_f64().unwrap() / login["units"].as_f64().unwrap();
    assert!((0.01..0.15).contains(&share), "{login}");
    // A model whose baselines are broken is refused, naming the file and the value.
    let broken = dir.path().join("broken");
    copy_dir(&model, &broken);
    let text = std::fs::read_to_string(broken.join("monitor.json")).unwrap();
    std::fs::write(
        broken.join("monitor.json"),
        text.replacen("\"units\": ", "\"units\": -", 1),
    )
    .unwrap();
    let out = run_with_stdin(&["score", "--model", broken.to_str().unwrap()], b"");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("monitor.json") && err.contains("units -"),
        "{err}"
    );
    assert!(stderr.contains("p99"), "{stderr}");
    let limits: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(model.join("volumetric/limits.json")).unwrap(),
    )
    .unwrap();
    let eps = limits["endpoints"].as_array().unwrap();
    assert!(!eps.is_empty());
    for e in eps {
        // The minimum-data gate, and ordered quantiles.
        assert!(e["sessions"].as_u64().unwrap() >= 30);
        let (p50, p90, p99) = (
            e["p50"]["value"].as_f64().unwrap(),
            e["p90"]["value"].as_f64().unwrap(),
            e["p99"]["value"].as_f64().unwrap(),
        );
        assert!(p50 <= p90 && p90 <= p99 && p99 <= e["max_peak"].as_f64().unwrap());
        assert_eq!(e["recommended"], e["p99"]["high"]);
    }

    let mixed = simulate("12", "10m", "100", "credential_stuffing,bola_enumeration");
    let out = run_with_stdin(
        &["score", "--model", model.to_str().unwrap()],
        &mixed.stdout,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(
        summary.contains("the model was fitted on twenty simulated minutes"),
        "{summary}"
    );
    assert!(!summary.contains("built-in default"), "{summary}");
    let recs = lines(&out.stdout);
    assert_eq!(recs.len(), lines(&mixed.stdout).len());
    let builtin = run_with_stdin(&["score", "-o", "/dev/null"], &mixed.stdout);
    let summary = String::from_utf8_lossy(&builtin.stderr);
    assert!(
        summary.contains("the model was fitted on simulated API traffic")
            && summary.contains("this is the built-in default: to fit a model on your own traffic"),
        "{summary}"
    );
    let mut by_label: std::collections::BTreeMap<String, (usize, usize)> = Default::default();
    for r in &recs {
        let s = r["score"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&s));
        let robust = r["scores"]["robust"].as_f64().unwrap();
        let volumetric = r["scores"]["volumetric"].as_f64().unwrap();
        assert_eq!(s, robust.max(volumetric));
        assert_eq!(r["model"], "m@1");
        assert_eq!(
            r["flagged"].as_bool().unwrap(),
            robust >= 0.999 || volumetric >= 0.5
        );
        let reasons = r["reasons"].as_array().unwrap();
        assert!(reasons.len() <= 3);
        for x in reasons {
            assert!(
                x["feature"].is_string() && x["value"].is_number() && x["baseline"].is_number()
            );
            let d = x["detector"].as_str().unwrap();
            assert!(d == "robust" || d == "volumetric");
            if d == "volumetric" {
                // The client's one-minute count on the endpoint, above its p99 peak.
                assert_eq!(x["feature"], "endpoint_count_1m");
                assert!(x["value"].as_f64().unwrap() > x["baseline"].as_f64().unwrap());
            }
        }
        let e = by_label
            .entry(r["label"].as_str().unwrap().to_string())
            .or_default();
        e.0 += 1;
        e.1 += usize::from(r["flagged"].as_bool().unwrap());
    }
    let rate = |l: &str| by_label[l].1 as f64 / by_label[l].0 as f64;
    assert!(rate("credential_stuffing") > 0.9, "{by_label:?}");
    assert!(rate("bola_enumeration") > 0.9, "{by_label:?}");
    assert!(rate("normal") < 0.05, "{by_label:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("most flagged") && stderr.contains("credential_stuffing"),
        "{stderr}"
    );
}

#[test]
fn score_uses_the_built_in_default_model() {
    let sim = simulate("3", "2m", "10", "all");
    let out = run_with_stdin(&["score"], &sim.stdout);
    assert!(
        out.status.success(),
        "the default model must match the feature set (scripts/train-default): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(lines(&out.stdout).iter().all(|r| r["model"] == "default@1"));
}

#[test]
fn bad_models_and_empty_training_fail_with_a_message() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::write(m.join("manifest.json"), "{\"format_version\": 1,").unwrap();
    let out = run_with_stdin(&["score", "--model", m.to_str().unwrap()], b"");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("manifest.json") && err.contains("corrupt"),
        "{err}"
    );

    let out = run_with_stdin(&["train", "-o", m.to_str().unwrap()], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no training events"));
}

/// A labelled log, its features and schema, and a classifier trained on them in Python
/// (tests/onnx/train_on_features.py) in `dir/gbdt`.
fn python_trained_model(dir: &std::path::Path) -> Vec<u8> {
    let sim = simulate("21", "3m", "40", "all");
    let feats = run_with_stdin(&["features"], &sim.stdout);
    assert!(feats.status.success());
    std::fs::write(dir.join("features.ndjson"), &feats.stdout).unwrap();
    let schema = gw().args(["features", "--schema"]).output().unwrap();
    std::fs::write(dir.join("schema.json"), &schema.stdout).unwrap();
    let st = Command::new(python())
        .arg(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../tests/onnx/train_on_features.py"),
        )
        .arg(dir.join("features.ndjson"))
        .arg(dir.join("schema.json"))
        .arg(dir.join("gbdt"))
        .status()
        .unwrap();
    assert!(st.success(), "train_on_features.py failed");
    sim.stdout
}

#[test]
fn a_model_trained_in_python_scores_the_same_in_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let events = python_trained_model(dir.path());
    let model = dir.path().join("gbdt");
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(model.join("expected.json")).unwrap())
            .unwrap();
    for batch in ["1", "100", "256"] {
        let out = run_with_stdin(
            &[
                "score",
                "--model",
                model.to_str().unwrap(),
                "--batch",
                batch,
            ],
            &events,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let recs = lines(&out.stdout);
        assert_eq!(recs.len(), expected.as_object().unwrap().len());
        let mut worst = 0.0f64;
        let mut explained = 0;
        for r in &recs {
            let id = r["id"].to_string();
            let want = expected[&id].as_f64().unwrap();
            let got = r["scores"]["gbdt"].as_f64().unwrap();
            assert_eq!(r["score"].as_f64().unwrap(), got);
            worst = worst.max((got - want).abs());
            assert_eq!(r["flagged"].as_bool().unwrap(), got >= 0.5);
            let reasons = r["reasons"].as_array().unwrap();
            if got >= 0.5 {
                explained += usize::from(!reasons.is_empty());
                for x in reasons {
                    assert_eq!(x["detector"], "gbdt");
                    assert!(x["contribution"].as_f64().unwrap() != 0.0);
                }
            } else {
                assert!(reasons.is_empty(), "only flagged events are explained");
            }
        }
        assert!(worst <= 1e-5, "largest difference {worst:e}");
        assert!(explained > 0);
    }
}

#[test]
fn an_ensemble_can_mix_baselines_and_an_onnx_model() {
    let dir = tempfile::tempdir().unwrap();
    let events = python_trained_model(dir.path());
    let ens = dir.path().join("ens");
    let out = run_with_stdin(
        &["train", "--name", "ens", "-o", ens.to_str().unwrap()],
        &events,
    );
    assert!(out.status.success());
    // Copy the ONNX folder in and add it as a member.
    std::fs::create_dir_all(ens.join("gbdt")).unwrap();
    for f in ["manifest.json", "model.onnx"] {
        std::fs::copy(dir.path().join("gbdt").join(f), ens.join("gbdt").join(f)).unwrap();
    }
    let mpath = ens.join("manifest.json");
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&mpath).unwrap()).unwrap();
    m["ensemble"]["members"]
        .as_array_mut()
        .unwrap()
        .push(serde_json::json!({"name": "gbdt", "path": "gbdt", "weight": 1.0}));
    std::fs::write(&mpath, m.to_string()).unwrap();
    let out = run_with_stdin(&["score", "--model", ens.to_str().unwrap()], &events);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for r in lines(&out.stdout) {
        let s = &r["scores"];
        let max = ["robust", "volumetric", "gbdt"]
            .iter()
            .map(|k| s[k].as_f64().unwrap())
            .fold(0.0, f64::max);
        assert_eq!(r["score"].as_f64().unwrap(), max);
    }

    // Without the ONNX Runtime library: a message that says how to get it, no panic; and
    // models that do not need ONNX keep working.
    let out = gw()
        .args(["score", "--model", ens.to_str().unwrap(), "--no-output"])
        .env(
            "ORT_DYLIB_PATH",
            dir.path().join("nowhere/libonnxruntime.so"),
        )
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("ORT_DYLIB_PATH") && err.contains("pip install onnxruntime==1.32.0"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let out = gw()
        .args(["score", "--model", ens.to_str().unwrap(), "--no-output"])
        .env("ORT_DYLIB_PATH", dir.path().join("features.ndjson"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("cannot load the ONNX Runtime library"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    let out = run_with_stdin_env(
        &["score", "--model", ens.join("robust").to_str().unwrap()],
        &events,
        &[("ORT_DYLIB_PATH", "/nowhere/libonnxruntime.so")],
    );
    assert!(out.status.success());
}

#[test]
fn train_fits_the_named_detectors_and_refuses_unknown_ones() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulate("5", "4m", "60", "all");
    let m = dir.path().join("m");
    let out = run_with_stdin(
        &[
            "train",
            "--detectors",
            "robust,pca,gmm",
            "-o",
            m.to_str().unwrap(),
        ],
        &sim.stdout,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    for d in ["robust", "pca", "gmm"] {
        assert!(m.join(d).join("manifest.json").exists(), "{d}");
    }
    assert!(!m.join("volumetric").exists());
    let out = run_with_stdin(&["score", "--model", m.to_str().unwrap()], &sim.stdout);
    assert!(out.status.success());
    for r in lines(&out.stdout) {
        let s = &r["scores"];
        let max = ["robust", "pca", "gmm"]
            .iter()
            .map(|k| s[k].as_f64().unwrap())
            .fold(0.0, f64::max);
        assert_eq!(r["score"].as_f64().unwrap(), max);
    }
    let out = run_with_stdin(
        &[
            "train",
            "--detectors",
            "robust,svm",
            "-o",
            m.to_str().unwrap(),
        ],
        &sim.stdout,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown detector \"svm\""));
}

#[test]
fn score_alerts_on_endpoints_under_a_spread_out_attack_and_names_its_clients() {
    let dir = tempfile::tempdir().unwrap();
    let sim = simulate("31", "30m", "100", "credential_stuffing,low_and_slow");
    let alerts = dir.path().join("alerts.ndjson");
    let out = run_with_stdin(
        &["score", "--alerts", alerts.to_str().unwrap()],
        &sim.stdout,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("endpoint alerts:"), "{err}");
    assert!(err.contains("failure baselines from the model"), "{err}");
    let recs = lines(&std::fs::read(&alerts).unwrap());
    let login: Vec<_> = recs
        .iter()
        .filter(|r| {
            r["kind"] == "endpoint"
                && r["endpoint"].as_str().unwrap().ends_with("/v1/auth/login")
                && r["metric"] == "auth_failures"
        })
        .collect();
    assert!(!login.is_empty(), "{recs:?}");
    // Alerts come after the first event and name more failing clients than expected.
    let first_event =
        lines(&sim.stdout[..sim.stdout.iter().position(|b| *b == b'\n').unwrap() + 1])[0]["ts"]
            .as_str()
            .unwrap()
            .to_string();
    for r in &login {
        assert!(r["ts"].as_str().unwrap() > first_event.as_str());
        assert!(r["value"].as_f64().unwrap() > r["expected"].as_f64().unwrap());
        assert!(r["score"].as_f64().unwrap() >= 0.9999);
        assert!(r["surprisal"].as_f64().unwrap() >= 13.0);
    }
    // The clients of the attacks are named, the normal ones are not: a user who mistypes a
    // password logs in seconds later.
    let mut label = std::collections::HashMap::new();
    for r in lines(&out.stdout) {
        label
            .entry(r["client"].as_str().unwrap().to_string())
            .or_insert_with(|| r["label"].as_str().unwrap().to_string());
    }
    let mut named: std::collections::BTreeMap<String, std::collections::BTreeSet<String>> =
        Default::default();
    for r in recs.iter().filter(|r| r["kind"] == "client") {
        let c = r["client"].as_str().unwrap();
        named.entry(label[c].clone()).or_default().insert(c.into());
        assert!(r["score"].as_f64().unwrap() >= 0.9999);
        assert!(r["first_failure"].as_str() <= r["last_failure"].as_str());
        assert!(r["last_failure"].as_str() < r["ts"].as_str());
    }
    let attackers = |l: &str| label.iter().filter(|(_, v)| v.as_str() == l).count();
    assert_eq!(
        named.keys().collect::<Vec<_>>(),
        ["credential_stuffing", "low_and_slow"]
    );
    assert!(
        named["low_and_slow"].len() * 10 >= attackers("low_and_slow") * 9,
        "{err}"
    );
    // (A stuffing address whose last attempt succeeded is let go: 3% of its logins do.)
    assert!(named["credential_stuffing"].len() * 10 >= attackers("credential_stuffing") * 8);
    assert!(err.contains("client alerts:"), "{err}");
}

#[test]
fn any_number_of_threads_writes_the_same_records() {
    let sim = simulate("8", "3m", "40", "all");
    for verb in ["features", "score"] {
        let one = run_with_stdin(&[verb, "--threads", "1"], &sim.stdout);
        assert!(
            one.status.success(),
            "{}",
            String::from_utf8_lossy(&one.stderr)
        );
        assert!(one.stdout.len() > 10_000);
        for t in ["2", "5"] {
            let many = run_with_stdin(&[verb, "--threads", t], &sim.stdout);
            assert!(
                many.status.success(),
                "{}",
                String::from_utf8_lossy(&many.stderr)
            );
            assert!(many.stdout == one.stdout, "{verb} --threads {t} differs");
        }
    }
    // A state saved by a run on three threads continues on one.
    let all: Vec<&[u8]> = sim.stdout.split_inclusive(|b| *b == b'\n').collect();
    let half = all.len() / 2;
    let whole = run_with_stdin(&["features", "--threads", "1"], &sim.stdout).stdout;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.bin");
    let state = state.to_str().unwrap();
    let a = run_with_stdin(
        &["features", "--threads", "3", "--save-state", state],
        &all[..half].concat(),
    );
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    let b = run_with_stdin(
        &["features", "--threads", "1", "--load-state", state],
        &all[half..].concat(),
    );
    assert!(b.status.success(), "{}", String::from_utf8_lossy(&b.stderr));
    assert!(
        [a.stdout, b.stdout].concat() == whole,
        "the resumed run continues the three-thread run exactly"
    );
    let bad = run_with_stdin(&["features", "--threads", "0"], b"");
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn the_config_file_names_the_model_and_takes_values_from_the_environment() {
    let sim = simulate("21", "3m", "30", "none");
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("mine");
    let t = run_with_stdin(
        &["train", "--name", "mine", "-o", m.to_str().unwrap()],
        &sim.stdout,
    );
    assert!(t.status.success(), "{}", String::from_utf8_lossy(&t.stderr));
    let cfg = dir.path().join("gw.toml");
    std::fs::write(
        &cfg,
        "[features]\nmax_clients = ${GW_TEST_MAX_CLIENTS:-5000}\n\n[model]\npath = \"${GW_TEST_MODELS}/mine\"\n",
    )
    .unwrap();
    let cfg = cfg.to_str().unwrap();
    let models = dir.path().to_str().unwrap();
    let out = run_with_stdin_env(
        &["score", "--config", cfg, "--no-output"],
        &sim.stdout,
        &[("GW_TEST_MODELS", models)],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("scored with mine"), "{err}");
    // --model still wins.
    let out = run_with_stdin_env(
        &[
            "score",
            "--config",
            cfg,
            "--no-output",
            "--model",
            m.to_str().unwrap(),
        ],
        &sim.stdout,
        &[("GW_TEST_MODELS", "/nowhere")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An unset variable without a default is named, with the file and line.
    let out = run_with_stdin_env(&["score", "--config", cfg], b"", &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("gw.toml")
            && err.contains("line 5")
            && err.contains("GW_TEST_MODELS is not set"),
        "{err}"
    );
    // A reserved section is refused with what it is for.
    std::fs::write(dir.path().join("k.toml"), "[sinks]\nscores = \"x\"\n").unwrap();
    let k = dir.path().join("k.toml");
    let out = run_with_stdin(&["features", "--config", k.to_str().unwrap()], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("[sinks] is reserved"));
}
