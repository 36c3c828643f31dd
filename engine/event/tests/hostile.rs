//! Arbitrary input never panics the parsers, the key extractor or the templater, and what
//! they produce stays bounded.

use gatewatch_event::{
    ClientKeyConfig, ClientKeyExtractor, CombinedConfig, EndpointConfig, EndpointNormalizer,
    RequestEvent, parse_combined, parse_ndjson,
};
use proptest::prelude::*;

fn json_like() -> impl Strategy<Value = Vec<u8>> {
    // Valid-looking events with fields swapped for random JSON values, and raw bytes.
    let value = prop_oneof![
        Just("null".to_string()),
        any::<i64>().prop_map(|v| v.to_string()),
        any::<f64>().prop_map(|v| format!("{v:?}")),
        "\\PC{0,40}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        Just("[1,2]".to_string()),
        Just("{\"a\":{}}".to_string()),
    ];
    let fields = [
        "ts",
        "client_ip",
        "method",
        "path",
        "status",
        "host",
        "headers",
        "session_id",
        "latency_ms",
    ];
    prop_oneof![
        prop::collection::vec((prop::sample::select(fields.to_vec()), value), 0..12).prop_map(
            |kv| {
                let body: Vec<String> = kv.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                format!("{{{}}}", body.join(",")).into_bytes()
            }
        ),
        prop::collection::vec(any::<u8>(), 0..300),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn ndjson_never_panics(line in json_like()) {
        match parse_ndjson(&line) {
            Ok(e) => prop_assert!((100..=599).contains(&e.status)),
            Err(e) => prop_assert!(!e.to_string().is_empty()),
        }
    }

    #[test]
    fn combined_never_panics(line in prop::collection::vec(any::<u8>(), 0..300), prefix in any::<bool>()) {
        let mut l = if prefix { b"1.2.3.4 - - [01/Jan/2026:00:00:00 +0000] \"GET /".to_vec() } else { Vec::new() };
        l.extend_from_slice(&line);
        let cfg = CombinedConfig { session_field: Some(2), host_field: Some(1), latency_secs_field: Some(3), user_as_session: true };
        let _ = parse_combined(&l, &cfg);
    }

    #[test]
    fn templates_and_keys_stay_bounded(path in "(/\\PC{0,120}){0,40}", auth in "\\PC{0,300}", key in "\\PC{0,300}") {
        let norm = EndpointNormalizer::new(&EndpointConfig::default()).unwrap();
        let mut keys = ClientKeyExtractor::new(&ClientKeyConfig::default()).unwrap();
        let mut e = RequestEvent::new(0, "10.0.0.1".parse().unwrap(), "GET", &path, 200);
        e.headers = vec![("authorization".into(), format!("Bearer {auth}").into()), ("x-api-key".into(), key.into())];
        let ep = norm.normalize(&e);
        // method + space + at most 16 segments of at most 96 bytes (or a placeholder) each.
        prop_assert!(ep.template.len() <= 4 + 16 * 97 + 8, "{}", ep.template.len());
        let k = keys.key(&e);
        prop_assert!(k.text.len() <= 20 + 128 + 17, "{}", k.text);
    }
}
