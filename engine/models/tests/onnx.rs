//! ONNX models through ONNX Runtime: tiny scikit-learn models trained and exported by
//! `tests/onnx/make_models.py` in the project's Python environment (scripts/setup-python);
//! gatewatch's scores must equal onnxruntime-in-Python's within 1e-5.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

mod common;

use common::registry;
use gatewatch_models::{Manifest, ModelError, OnnxModel, OnnxSpec, Training};
use serde_json::Value;

const N: usize = 8;
/// Registry positions the model inputs are taken from (scattered, to exercise the mapping).
const AT: [usize; N] = [3, 10, 17, 24, 31, 38, 45, 60];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The models, made once per test process.
fn cases() -> &'static (tempfile::TempDir, Value, Vec<Vec<f64>>) {
    static CASES: OnceLock<(tempfile::TempDir, Value, Vec<Vec<f64>>)> = OnceLock::new();
    CASES.get_or_init(|| {
        let python = std::env::var_os("GATEWATCH_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| root().join(".venv/bin/python"));
        assert!(
            python.exists(),
            "{} not found: run scripts/setup-python (scripts/test does) or set GATEWATCH_PYTHON",
            python.display()
        );
        let dir = tempfile::tempdir().unwrap();
        let st = Command::new(&python)
            .arg(root().join("tests/onnx/make_models.py"))
            .arg(dir.path())
            .arg(N.to_string())
            .status()
            .unwrap();
        assert!(st.success(), "make_models.py failed");
        let cases: Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("cases.json")).unwrap())
                .unwrap();
        let inputs: Vec<Vec<f64>> =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("inputs.json")).unwrap())
                .unwrap();
        (dir, cases, inputs)
    })
}

/// A model folder for case `name`, with `edit` applied to its spec.
fn folder(name: &str, edit: impl FnOnce(&mut OnnxSpec)) -> tempfile::TempDir {
    let (dir, cases, _) = cases();
    let c = &cases[name];
    let reg = registry();
    let names: Vec<String> = reg.names().map(String::from).collect();
    let mut spec = OnnxSpec {
        file: "model.onnx".into(),
        input: None,
        output: c["output"].as_str().unwrap().into(),
        column: c["column"].as_u64().unwrap() as usize,
        negate: c["negate"].as_bool().unwrap(),
        calibration: Vec::new(),
        reference: vec![1.0; N],
    };
    edit(&mut spec);
    let m = Manifest {
        format_version: gatewatch_models::MANIFEST_FORMAT,
        name: name.into(),
        version: "1".into(),
        kind: "onnx".into(),
        feature_set: reg.hash.clone(),
        features: AT.iter().map(|&i| names[i].clone()).collect(),
        outputs: vec!["score".into()],
        threshold: 0.9,
        calibration: "test".into(),
        training: Training {
            events: 2500,
            clients: 0,
            source: "make_models.py".into(),
            label_filter: None,
            description: None,
        },
        artefacts: vec!["model.onnx".into()],
        onnx: Some(spec),
        ensemble: None,
        monitor: None,
    };
    let out = tempfile::tempdir().unwrap();
    m.save(out.path()).unwrap();
    std::fs::copy(
        dir.path().join(c["file"].as_str().unwrap()),
        out.path().join("model.onnx"),
    )
    .unwrap();
    out
}

/// The test rows laid out in registry order (other features hold junk).
fn registry_rows(inputs: &[Vec<f64>], stride: usize) -> Vec<f64> {
    let mut rows = vec![999.0; inputs.len() * stride];
    for (r, x) in inputs.iter().enumerate() {
        for (j, &i) in AT.iter().enumerate() {
            rows[r * stride + i] = x[j];
        }
    }
    rows
}

fn parity(name: &str) {
    let (_, cases, inputs) = cases();
    let expected: Vec<f64> = cases[name]["expected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let reg = registry();
    let dir = folder(name, |_| {});
    let mut model = OnnxModel::load(dir.path(), &reg).unwrap();
    let stride = reg.len();
    let rows = registry_rows(inputs, stride);
    let mut worst = 0.0f64;
    for batch in [1usize, 7, 256, inputs.len()] {
        let mut got = Vec::new();
        for chunk in rows.chunks(batch * stride) {
            model.raw_batch(chunk, stride, &mut got).unwrap();
        }
        assert_eq!(got.len(), expected.len());
        for (g, e) in got.iter().zip(&expected) {
            worst = worst.max((g - e).abs() / e.abs().max(1.0));
        }
    }
    eprintln!("{name}: largest difference {worst:e}");
    assert!(worst <= 1e-5, "{name}: largest difference {worst:e}");
}

#[test]
fn gradient_boosted_trees_match_python() {
    parity("gbdt");
}

#[test]
fn random_forest_matches_python() {
    parity("random_forest");
}

#[test]
fn isolation_forest_matches_python() {
    parity("isolation_forest");
}

#[test]
fn mlp_matches_python() {
    parity("mlp");
}

#[test]
fn double_input_model_matches_python() {
    parity("linear_f64");
}

#[test]
fn calibrated_scores_are_the_raw_outputs_position_among_the_quantiles() {
    let (_, _, inputs) = cases();
    let reg = registry();
    let stride = reg.len();
    let rows = registry_rows(&inputs[..50], stride);
    let plain = folder("isolation_forest", |_| {});
    let mut raw = Vec::new();
    OnnxModel::load(plain.path(), &reg)
        .unwrap()
        .raw_batch(&rows, stride, &mut raw)
        .unwrap();
    let mut q = raw.clone();
    q.sort_by(f64::total_cmp);
    let dir = folder("isolation_forest", |s| s.calibration = q.clone());
    let mut m = OnnxModel::load(dir.path(), &reg).unwrap();
    let mut scores = Vec::new();
    m.score_batch(&rows, stride, &mut scores).unwrap();
    let lowest = raw.iter().position(|v| *v == q[0]).unwrap();
    let highest = raw.iter().position(|v| *v == q[q.len() - 1]).unwrap();
    assert_eq!(scores[lowest], 0.0);
    assert_eq!(scores[highest], 1.0);
    for (s, r) in scores.iter().zip(&raw) {
        assert!((0.0..=1.0).contains(s));
        // Ordered like the raw outputs.
        for (s2, r2) in scores.iter().zip(&raw) {
            if r < r2 {
                assert!(s <= s2);
            }
        }
    }
}

#[test]
fn explanations_are_score_changes_when_one_feature_takes_its_reference_value() {
    let (_, _, inputs) = cases();
    let reg = registry();
    let stride = reg.len();
    let reference: Vec<f64> = (0..N).map(|j| 0.5 + j as f64 / 10.0).collect();
    let dir = folder("gbdt", |s| s.reference = reference.clone());
    let mut m = OnnxModel::load(dir.path(), &reg).unwrap();
    let row = registry_rows(&inputs[3..4], stride);
    let reasons = m.explain(&row, 3).unwrap();
    assert!(!reasons.is_empty() && reasons.len() <= 3);
    let mut base = Vec::new();
    m.score_batch(&row, stride, &mut base).unwrap();
    for r in &reasons {
        let j = m
            .manifest
            .features
            .iter()
            .position(|f| *f == r.feature)
            .unwrap();
        let mut changed = row.clone();
        changed[AT[j]] = reference[j];
        let mut s = Vec::new();
        m.score_batch(&changed, stride, &mut s).unwrap();
        assert_eq!(r.contribution, base[0] - s[0]);
        assert_eq!(r.value, row[AT[j]]);
        assert_eq!(r.baseline, reference[j]);
    }
    for w in reasons.windows(2) {
        assert!(w[0].contribution.abs() >= w[1].contribution.abs());
    }
}

fn load_err(dir: &Path) -> String {
    let e = OnnxModel::load(dir, &registry()).unwrap_err();
    e.to_string()
}

#[test]
fn a_classifier_exported_with_zipmap_is_refused_with_the_fix() {
    let dir = folder("random_forest_zipmap", |_| {});
    let e = load_err(dir.path());
    assert!(
        e.contains("output_probability") && e.contains("zipmap off"),
        "{e}"
    );
}

#[test]
fn unknown_outputs_and_columns_are_named() {
    let dir = folder("gbdt", |s| s.output = "proba".into());
    let e = load_err(dir.path());
    assert!(
        e.contains("no output \"proba\"") && e.contains("probabilities"),
        "{e}"
    );
    let dir = folder("gbdt", |s| s.column = 2);
    let e = load_err(dir.path());
    assert!(e.contains("column 2"), "{e}");
    let dir = folder("gbdt", |s| s.input = Some("x".into()));
    let e = load_err(dir.path());
    assert!(e.contains("no input \"x\""), "{e}");
}

#[test]
fn a_corrupt_onnx_file_is_refused_naming_the_file() {
    let dir = folder("gbdt", |_| {});
    std::fs::write(dir.path().join("model.onnx"), b"not a model at all").unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("model.onnx") && e.contains("refused"), "{e}");
    std::fs::remove_file(dir.path().join("model.onnx")).unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("model.onnx"), "{e}");
}

#[test]
fn an_input_width_that_differs_from_the_manifest_is_refused() {
    let dir = folder("gbdt", |_| {});
    let mut m = Manifest::load(dir.path()).unwrap();
    m.features.pop();
    m.onnx.as_mut().unwrap().reference.pop();
    m.save(dir.path()).unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("shape") && e.contains("7 features"), "{e}");
}

#[test]
fn bad_manifest_sections_are_refused() {
    let dir = folder("gbdt", |s| s.reference = vec![1.0; 3]);
    let e = load_err(dir.path());
    assert!(
        e.contains("onnx.reference has 3 values for 8 features"),
        "{e}"
    );
    let dir = folder("gbdt", |s| s.calibration = vec![0.5, 0.2]);
    let e = load_err(dir.path());
    assert!(e.contains("ascending"), "{e}");
    let dir = folder("gbdt", |_| {});
    let mut m = Manifest::load(dir.path()).unwrap();
    m.feature_set = "0000".into();
    m.save(dir.path()).unwrap();
    assert!(matches!(
        OnnxModel::load(dir.path(), &registry()),
        Err(ModelError::FeatureSet { .. })
    ));
}
