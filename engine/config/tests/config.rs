//! The program's configuration file: every section, references from the environment, unknown
//! and bad keys named, reserved sections, paths relative to the file.

use std::collections::HashMap;

use gatewatch_config::Settings;

fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let m: HashMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |k| m.get(k).cloned()
}

#[test]
fn the_example_file_parses_to_the_defaults() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../gatewatch.example.toml"
    ))
    .unwrap();
    let s = Settings::parse_with(&text, &env(&[])).unwrap();
    assert_eq!(s, Settings::default());
}

#[test]
fn references_fill_values_of_every_type() {
    let text = r#"
[client_key]
sources = ["header:${KEY_HEADER:-x-api-key}", "ip"]

[features]
max_clients = ${MAX_CLIENTS}
allowed_lateness_ms = ${LATENESS:-2000}
horizons_secs = [10, ${LONG:-600}]

[model]
path = "${MODELS}/prod"   # ${NOT_RESOLVED_IN_COMMENTS}
"#;
    let s = Settings::parse_with(
        text,
        &env(&[("MAX_CLIENTS", "5000"), ("MODELS", "/srv/models")]),
    )
    .unwrap();
    assert_eq!(s.engine.features.max_clients, 5000);
    assert_eq!(s.engine.features.allowed_lateness_ms, 2000);
    assert_eq!(s.engine.features.horizons_secs, [10, 600]);
    assert_eq!(s.engine.client_key.sources[0], "header:x-api-key");
    assert_eq!(
        s.model.path.as_deref(),
        Some(std::path::Path::new("/srv/models/prod"))
    );

    let e = Settings::parse_with(text, &env(&[("MODELS", "/m")]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("line 6") && e.contains("MAX_CLIENTS is not set"),
        "{e}"
    );
    // A value cannot add a key.
    let e = Settings::parse_with(
        "[features]\nmax_clients = ${N}\n",
        &env(&[("N", "1\nmax_endpoints = 1")]),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("line end"), "{e}");
    // A number that is not one is a type error, naming the key.
    let e = Settings::parse_with("[features]\nmax_clients = ${N}\n", &env(&[("N", "many")]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("max_clients"), "{e}");
}

#[test]
fn unknown_keys_in_every_section_are_named() {
    for (section, key) in [
        ("client_key", "source"),
        ("endpoints", "open_api"),
        ("input.combined", "session"),
        ("input", "format"),
        ("features", "horizon"),
        ("model", "dir"),
    ] {
        let e = Settings::parse_with(&format!("[{section}]\n{key} = 1\n"), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("unknown field `{key}`")),
            "[{section}] {key}: {e}"
        );
    }
    let e = Settings::parse_with("[nope]\n", &env(&[]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `nope`"), "{e}");
}

#[test]
fn bad_values_are_named_and_reserved_sections_refused() {
    for (text, needle) in [
        ("[features]\nmax_clients = 0", "max_clients"),
        ("[features]\nhorizons_secs = [60, 10]", "strictly ascending"),
        (
            "[client_key]\nmax_value_bytes = 100000",
            "client_key.max_value_bytes",
        ),
        (
            "[endpoints]\nmax_segment_bytes = 2",
            "endpoints.max_segment_bytes",
        ),
        (
            "[input.combined]\nhost_field = 0",
            "input.combined.host_field",
        ),
        ("[client_key]\nsources = [\"telepathy\"]", "telepathy"),
    ] {
        let e = Settings::parse_with(text, &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains(needle), "{text}: {e}");
    }
    for s in ["service", "sinks"] {
        let e = Settings::parse_with(&format!("[{s}]\nx = 1\n"), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(e.contains(&format!("[{s}] is reserved")), "{e}");
    }
}

#[test]
fn paths_are_taken_from_the_file_s_folder() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("openapi.json"),
        r#"{"openapi":"3.0.0","paths":{"/v1/items/{id}":{"get":{}}}}"#,
    )
    .unwrap();
    let cfg = dir.path().join("gw.toml");
    std::fs::write(
        &cfg,
        "[endpoints]\nopenapi = \"openapi.json\"\n[model]\npath = \"models/x\"\n\
         [rules]\npath = \"rules.toml\"\n",
    )
    .unwrap();
    let s = Settings::load_with(&cfg, &env(&[])).unwrap();
    assert_eq!(s.model.path, Some(dir.path().join("models/x")));
    assert_eq!(s.rules.path, Some(dir.path().join("rules.toml")));
    assert_eq!(
        s.engine.endpoints.openapi,
        Some(dir.path().join("openapi.json"))
    );
    std::fs::write(&cfg, "[features]\nmax_clients = -1\n").unwrap();
    let e = Settings::load_with(&cfg, &env(&[]))
        .unwrap_err()
        .to_string();
    assert!(e.starts_with(&cfg.display().to_string()), "{e}");
}

#[test]
fn the_kafka_section_takes_topics_and_client_properties_from_the_environment() {
    let s = Settings::parse_with(
        "[kafka]\nbrokers = \"${BROKERS}\"\ninput = \"events\"\nscores = \"scores\"\n[kafka.properties]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.password\" = \"${PASS}\"\n",
        &env(&[("BROKERS", "k1:9092,k2:9092"), ("PASS", "s3cret")]),
    )
    .unwrap();
    assert_eq!(s.kafka.brokers.as_deref(), Some("k1:9092,k2:9092"));
    assert_eq!(s.kafka.input.as_deref(), Some("events"));
    assert_eq!(s.kafka.properties["sasl.password"], "s3cret");
    let e = Settings::parse_with("[kafka]\ntopic = \"x\"\n", &env(&[]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `topic`"), "{e}");
}
