//! The bodies of gatewatch's fuzz targets.
//!
//! Each function takes arbitrary bytes and drives one input path of the engine the way the
//! service and the CLI do; none may panic, abort or grow without bound, whatever the bytes.
//! `fuzz/` (cargo-fuzz, libFuzzer) calls them with generated inputs; `tests/replay.rs` calls
//! them with every file of the corpora in `fuzz/corpus/`, on every test run.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::LazyLock;

use gatewatch_event::{
    ClientKeyConfig, ClientKeyExtractor, CombinedConfig, Endpoint, EndpointConfig,
    EndpointNormalizer, RequestEvent, parse_combined, parse_ndjson,
};
use gatewatch_features::{Config, FeatureConfig, FeatureEngine, Format, Registry};
use gatewatch_models::{Batch, BatchScores, Detector, Manifest, Scorer};
use gatewatch_pipeline::{Ack, LineReader, Output, Session, SessionOptions};

pub use gatewatch_features::SNAPSHOT_VERSION;

/// A fuzz target's body.
pub type Body = fn(&[u8]);

/// The fuzz targets by name: (name, body).
pub const TARGETS: &[(&str, Body)] = &[
    ("ndjson", ndjson),
    ("combined", combined),
    ("client_key", client_key),
    ("endpoint", endpoint),
    ("openapi", openapi),
    ("ingest", ingest),
    ("snapshot", snapshot),
    ("model", model),
    ("config", config),
    ("rules", rules),
];

static KEYS: LazyLock<ClientKeyExtractor> = LazyLock::new(|| {
    let cfg = ClientKeyConfig::default();
    ClientKeyExtractor::new(&cfg).expect("default key sources")
});

static ENDPOINTS: LazyLock<EndpointNormalizer> =
    LazyLock::new(|| EndpointNormalizer::new(&EndpointConfig::default()).expect("heuristics"));

static REGISTRY: LazyLock<Registry> = LazyLock::new(|| Registry::new(&FeatureConfig::default()));

/// What the engine derives from an event: its client key and endpoint template.
fn derive(ev: &RequestEvent) {
    let mut keys = KEYS.clone();
    let mut key = String::new();
    keys.key_into(ev, &mut key);
    assert!(!key.is_empty());
    let mut e = Endpoint::default();
    ENDPOINTS.normalize_into(ev, &mut e);
    assert!(!e.template.is_empty());
}

/// One NDJSON line: parsed, then keyed and templated when it is an event.
pub fn ndjson(data: &[u8]) {
    if let Ok(ev) = parse_ndjson(data) {
        assert!((100..=599).contains(&ev.status));
        derive(&ev);
    }
}

/// One combined-log line, with extra-field positions chosen by its first byte.
pub fn combined(data: &[u8]) {
    let (cfg, line) = match data.split_first() {
        Some((b, rest)) => {
            let pos = |s: u8| (b >> s & 3 != 0).then_some(usize::from(b >> s & 3));
            let cfg = CombinedConfig {
                session_field: pos(0),
                host_field: pos(2),
                latency_secs_field: pos(4),
                user_as_session: b & 0x40 != 0,
            };
            (cfg, rest)
        }
        None => (CombinedConfig::default(), data),
    };
    if let Ok(ev) = parse_combined(line, &cfg) {
        derive(&ev);
    }
}

fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// Client keys from hostile headers: the bytes as a bearer token (a JWT or not), an API key
/// header, a cookie and a session id, under several key-source orders.
pub fn client_key(data: &[u8]) {
    let t = text(data);
    let mut ev = RequestEvent::new(0, IpAddr::V4(Ipv4Addr::LOCALHOST), "GET", "/", 200);
    let split = t.len() / 2;
    let split = (0..=split)
        .rev()
        .find(|i| t.is_char_boundary(*i))
        .unwrap_or(0);
    let (a, b) = t.split_at(split);
    ev.headers = vec![
        ("authorization".into(), format!("Bearer {t}").into()),
        ("x-api-key".into(), a.into()),
        ("cookie".into(), format!("sid={b}; other={a}").into()),
    ];
    ev.session_id = Some(b.into());
    for sources in [
        vec!["jwt_claim:sub", "ip"],
        vec!["jwt_claim:tenant.id", "header:x-api-key", "ip"],
        vec!["cookie:sid", "session_id", "ip"],
    ] {
        let cfg = ClientKeyConfig {
            sources: sources.iter().map(|s| (*s).to_string()).collect(),
            ..ClientKeyConfig::default()
        };
        let mut k = ClientKeyExtractor::new(&cfg).expect("valid sources");
        let mut key = String::new();
        k.key_into(&ev, &mut key);
        assert!(!key.is_empty());
        assert!(key.len() <= 256, "{} bytes", key.len());
    }
}

/// Endpoint templates of hostile paths and hosts.
pub fn endpoint(data: &[u8]) {
    let t = text(data);
    let (host, path) = t.split_once('\n').unwrap_or(("", &t));
    let mut ev = RequestEvent::new(0, IpAddr::V4(Ipv4Addr::LOCALHOST), "GET", path, 200);
    if !host.is_empty() {
        ev.host = Some(host.into());
    }
    let mut e = Endpoint::default();
    ENDPOINTS.normalize_into(&ev, &mut e);
    assert!(!e.template.is_empty());
}

/// An OpenAPI document (JSON or YAML); when it loads, a few requests are templated with it.
pub fn openapi(data: &[u8]) {
    let t = text(data);
    if let Ok(n) = EndpointNormalizer::with_openapi_text(&EndpointConfig::default(), "fuzz", &t) {
        for path in ["/", "/v1/users/42", "/a/b/c/d", "/%zz/..//x"] {
            let ev = RequestEvent::new(0, IpAddr::V4(Ipv4Addr::LOCALHOST), "GET", path, 200);
            let mut e = Endpoint::default();
            n.normalize_into(&ev, &mut e);
        }
    }
}

fn small_engine() -> FeatureEngine {
    let cfg = Config::parse(
        "[features]\nmax_clients = 16\nmax_endpoints = 16\nallowed_lateness_ms = 1000\n\
         max_future_ms = 60000\nfuture_confirm = 3\n",
    )
    .expect("valid configuration");
    FeatureEngine::new(&cfg).expect("valid engine")
}

/// Bytes fed as a log (NDJSON, or combined lines when the first byte is odd) through the
/// line reader and the session in chunks, its output taken in small batches: every feature
/// finite, every non-blank line out exactly once (a record or a rejection, at its line), the
/// acknowledgeable point past the last line at the end, the caps kept, then the state saved
/// and restored.
pub fn ingest(data: &[u8]) {
    let (format, rest) = match data.split_first() {
        Some((b, rest)) if b & 1 == 1 => (Format::Combined(CombinedConfig::default()), rest),
        _ => (Format::Ndjson, data),
    };
    let mut session = Session::features_only(
        small_engine(),
        SessionOptions {
            batch: 7,
            reasons: 0,
        },
    );
    let mut reader = LineReader::new(format);
    let chunk = 1 + data.first().map_or(0, |b| usize::from(*b >> 1));
    let mut out_lines = std::collections::BTreeSet::new();
    let mut check = |o: &Output| {
        for r in o.records() {
            assert!(r.features.iter().all(|v| v.is_finite()), "{:?}", r.features);
            assert!(out_lines.insert(r.position), "{} out twice", r.position);
        }
        for j in o.rejections() {
            assert!(out_lines.insert(j.position), "{} out twice", j.position);
        }
    };
    for c in rest.chunks(chunk) {
        reader.feed(&mut session, c);
        if session.is_full() {
            check(&session.take().expect("no model, nothing fails"));
        }
    }
    reader.finish(&mut session);
    let last = session.take().expect("no model, nothing fails");
    check(&last);
    assert_eq!(
        out_lines.len() as u64,
        reader.lines() - reader.blank_lines()
    );
    assert_eq!(session.in_flight(), 0);
    if let Some(p) = out_lines.last() {
        assert!(matches!(last.ack(), Ack::Through(q) if q >= *p));
    }
    let eng = session.engine();
    assert!(eng.store().len() <= 16);
    assert!(eng.population().endpoints() <= 17);
    let mut bytes = Vec::new();
    session.save_state(&mut bytes).expect("a state saves");
    let mut again = small_engine();
    again
        .restore_state(&mut bytes.as_slice())
        .expect("a saved state loads");
}

/// A state snapshot as read from a file: refused or loaded, never a panic; a loaded state
/// then takes events and saves again. The bytes are also tried as a body behind a valid
/// header (length and checksum fixed up), so the value checks are reached.
pub fn snapshot(data: &[u8]) {
    let mut with_header = b"GWSTATE\0".to_vec();
    with_header.extend_from_slice(&gatewatch_features::SNAPSHOT_VERSION.to_le_bytes());
    with_header.extend_from_slice(&(data.len() as u64).to_le_bytes());
    with_header.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    with_header.extend_from_slice(data);
    for bytes in [data, &with_header] {
        let mut eng = small_engine();
        if eng.restore_state(&mut &bytes[..]).is_ok() {
            assert!(eng.store().len() <= 16);
            let mut sink = |r: &gatewatch_features::Record<'_>| {
                assert!(r.features.iter().all(|v| v.is_finite()));
            };
            for i in 0..8u8 {
                let ev = RequestEvent::new(
                    1_767_225_600_000 + i64::from(i) * 500,
                    IpAddr::V4(Ipv4Addr::new(10, 0, 0, i % 3)),
                    "GET",
                    &format!("/items/{i}"),
                    200 + u16::from(i % 2) * 201,
                );
                eng.push(ev, u64::from(i), &mut sink, &mut |_| {});
            }
            eng.finish(&mut sink);
            let mut out = Vec::new();
            eng.save_state(&mut out).expect("saves");
        }
    }
}

/// A model folder's texts (manifest, then the detector's artefact after a NUL byte): loaded
/// as the detector its manifest names, then used to score a small batch.
pub fn model(data: &[u8]) {
    let t = text(data);
    let (manifest, artefact) = t.split_once('\0').unwrap_or((&t, ""));
    let Ok(m) = Manifest::parse(manifest, "fuzz/manifest.json") else {
        return;
    };
    let reg = &*REGISTRY;
    let d = match m.kind.as_str() {
        gatewatch_models::ROBUST_KIND => {
            gatewatch_models::RobustModel::from_texts(manifest, artefact, "fuzz", reg)
                .map(Detector::Robust)
        }
        gatewatch_models::volumetric::KIND => {
            gatewatch_models::VolumetricModel::from_text(m, artefact, "fuzz", reg)
                .map(Detector::Volumetric)
        }
        gatewatch_models::PCA_KIND | gatewatch_models::GMM_KIND => {
            gatewatch_models::MultiModel::from_text(m, artefact, "fuzz", reg)
                .map(|x| Detector::Multi(Box::new(x)))
        }
        _ => return,
    };
    let Ok(d) = d else { return };
    let mut scorer = Scorer::single("fuzz".into(), d);
    let n = reg.len();
    let mut batch = Batch::default();
    for k in 0..4 {
        let row: Vec<f64> = (0..n)
            .map(|i| match k {
                0 => 0.0,
                1 => (i as f64).powi(3),
                2 => f64::MAX,
                _ => -1.0,
            })
            .collect();
        batch.push(&row, "GET /login");
    }
    let mut out = BatchScores::default();
    if scorer.score_batch(&batch, n, 3, &mut out).is_ok() {
        for s in &out.score {
            assert!(s.is_finite() && (0.0..=1.0).contains(s), "score {s}");
        }
    }
}

/// A configuration file's text: refused with a message or accepted, and an accepted one
/// builds an engine.
pub fn config(data: &[u8]) {
    let t = text(data);
    if let Ok(cfg) = Config::parse(&t) {
        if cfg.endpoints.openapi.is_none() {
            let _ = FeatureEngine::new(&cfg);
        }
    }
}

/// A rules file: compiled against the default features and two detectors, or refused; a
/// compiled one decides a few requests (values at the edges, text with odd bytes).
pub fn rules(data: &[u8]) {
    use gatewatch_pipeline::rules::{Decider, Input, RequestView, Rules, Schema, ScoreView};
    let schema = Schema {
        features: REGISTRY.names().map(String::from).collect(),
        detectors: vec!["robust".into(), "volumetric".into()],
    };
    let Ok(rules) = Rules::parse(&text(data), &schema) else {
        return;
    };
    let mut d = Decider::new(std::sync::Arc::new(rules));
    let mut events = Vec::new();
    let width = schema.features.len();
    for (k, v) in [0.0, -1.0, 1e308, f64::NAN, f64::INFINITY]
        .into_iter()
        .enumerate()
    {
        let features = vec![v; width];
        let input = Input {
            request: RequestView {
                ts_ms: k as i64 * 60_000,
                ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, k as u8)),
                method: "POST",
                host: "h\u{0}\u{ffff}",
                path: "/v1/login/%ff",
                query: "a=1&b",
                endpoint: "POST h/v1/login",
                status: [200, 401, 0, 999, 404][k],
                client: "jwt:\u{7f}",
                client_kind: "jwt",
                user_agent: "((",
                headers: &[("x-api-key", "k"), ("", "")],
                asn: "",
                country: "NL",
                ja4: "",
            },
            features: &features,
            score: Some(ScoreView {
                overall: v,
                surprisal: v,
                flagged: k % 2 == 0,
                members: &[v, v],
                endpoint_auth: v,
            }),
        };
        let _ = d.observe(&input, &|| vec!["f".into()], &mut events);
    }
    assert_eq!(d.stats().requests, 5);
}
