//! PCA and Gaussian-mixture models (linfa): fitting, scores, explanations, folders, errors.

mod common;

use common::{registry, training, uniform};
use gatewatch_features::Registry;
use gatewatch_models::{Batch, BatchScores, GMM_KIND, MultiModel, MultiParams, PCA_KIND, Scorer};

const F: [&str; 4] = [
    "req_count_1m",
    "error_ratio_1m",
    "bytes_mean_1m",
    "distinct_endpoints_1m",
];

/// Rows where bytes follow the request count (strongly correlated), in two groups: light
/// clients (a few requests) and heavy ones (hundreds).
fn rows(reg: &Registry, n: usize) -> Vec<Vec<f64>> {
    let at: Vec<usize> = F.iter().map(|f| reg.index_of(f).unwrap()).collect();
    let mut u = uniform(0x9e37_79b9_7f4a_7c15);
    (0..n)
        .map(|i| {
            let mut r = vec![0.0; reg.len()];
            let count = if i % 3 == 0 {
                200.0 + 100.0 * u()
            } else {
                2.0 + 4.0 * u()
            };
            r[at[0]] = count;
            r[at[1]] = 0.05 * u();
            r[at[2]] = 300.0 * count * (0.9 + 0.2 * u());
            r[at[3]] = 1.0 + 3.0 * u();
            r
        })
        .collect()
}

fn fit(kind: &str, reg: &Registry) -> MultiModel {
    let data = rows(reg, 3000);
    MultiModel::fit(
        kind,
        reg,
        &MultiParams {
            features: F.iter().map(|f| f.to_string()).collect(),
            components: 2,
            ..MultiParams::default()
        },
        data.iter().map(Vec::as_slice),
        "m",
        training(),
    )
    .unwrap()
}

fn score(m: &MultiModel, reg: &Registry, row: &[f64]) -> f64 {
    let mut out = Vec::new();
    m.score_batch(row, reg.len(), &mut out);
    out[0]
}

/// A light client moving a heavy client's bytes: each value is common, the pair is not.
fn broken(reg: &Registry) -> Vec<f64> {
    let mut r = rows(reg, 2)[1].clone();
    r[reg.index_of("bytes_mean_1m").unwrap()] = 300.0 * 250.0;
    r
}

#[test]
fn both_kinds_score_a_broken_correlation_above_the_training_events() {
    let reg = registry();
    for kind in [PCA_KIND, GMM_KIND] {
        let m = fit(kind, &reg);
        assert_eq!(m.manifest.kind, kind);
        let data = rows(&reg, 3000);
        let typical: Vec<f64> = data[..200].iter().map(|r| score(&m, &reg, r)).collect();
        let above = typical.iter().filter(|s| **s >= 0.999).count();
        assert!(
            above <= 5,
            "{kind}: {above} of 200 training rows at ≥ 0.999"
        );
        let s = score(&m, &reg, &broken(&reg));
        assert!(s >= 0.999, "{kind}: broken correlation scored {s}");
        let reasons = m.explain(&broken(&reg), 2);
        assert!(
            reasons
                .iter()
                .any(|r| r.feature == "bytes_mean_1m" || r.feature == "req_count_1m"),
            "{kind}: {reasons:?}"
        );
    }
}

#[test]
fn pca_explanations_add_up_to_the_reconstruction_error() {
    let reg = registry();
    let m = fit(PCA_KIND, &reg);
    let row = broken(&reg);
    let all = m.explain(&row, F.len());
    let total: f64 = all.iter().map(|r| r.contribution.abs()).sum();
    let raw = m.raw(&row);
    assert!(
        (total - raw).abs() <= 1e-9 * raw.max(1.0),
        "{total} vs {raw}"
    );
    for w in all.windows(2) {
        assert!(w[0].contribution.abs() >= w[1].contribution.abs());
    }
}

#[test]
fn saved_models_load_through_the_scorer_and_score_the_same() {
    let reg = registry();
    for kind in [PCA_KIND, GMM_KIND] {
        let m = fit(kind, &reg);
        let dir = tempfile::tempdir().unwrap();
        m.save(dir.path()).unwrap();
        let mut s = Scorer::load(dir.path(), &reg).unwrap();
        assert_eq!(s.members[0].name, kind);
        let data = rows(&reg, 50);
        let mut b = Batch::default();
        for r in &data {
            b.push(r, "GET /x");
        }
        b.push(&broken(&reg), "GET /x");
        let mut out = BatchScores::default();
        s.score_batch(&b, reg.len(), 2, &mut out).unwrap();
        let mut direct = Vec::new();
        for r in &data {
            m.score_batch(r, reg.len(), &mut direct);
        }
        m.score_batch(&broken(&reg), reg.len(), &mut direct);
        assert_eq!(out.score, direct);
        assert!(out.flagged[50]);
        assert!(!out.reasons[50].is_empty());
    }
}

#[test]
fn bad_parameters_and_training_are_refused() {
    let reg = registry();
    let one = rows(&reg, 1);
    let params = MultiParams {
        features: F.iter().map(|f| f.to_string()).collect(),
        ..MultiParams::default()
    };
    let e = MultiModel::fit(
        PCA_KIND,
        &reg,
        &params,
        one.iter().map(Vec::as_slice),
        "m",
        training(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("at least 2"), "{e}");
    let e = MultiModel::fit(
        "svm",
        &reg,
        &params,
        one.iter().map(Vec::as_slice),
        "m",
        training(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("\"svm\""), "{e}");
    let mut bad = rows(&reg, 10);
    bad[4][reg.index_of("error_ratio_1m").unwrap()] = f64::INFINITY;
    let e = MultiModel::fit(
        GMM_KIND,
        &reg,
        &params,
        bad.iter().map(Vec::as_slice),
        "m",
        training(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("error_ratio_1m"), "{e}");

    // Corrupt parameter files.
    let m = fit(GMM_KIND, &reg);
    let dir = tempfile::tempdir().unwrap();
    m.save(dir.path()).unwrap();
    let text = std::fs::read_to_string(dir.path().join("params.json")).unwrap();
    let mut p: serde_json::Value = serde_json::from_str(&text).unwrap();
    p["precision_cholesky"][0][0] = serde_json::json!(-1.0);
    std::fs::write(dir.path().join("params.json"), p.to_string()).unwrap();
    let e = MultiModel::load(dir.path(), &reg).unwrap_err();
    assert!(
        e.to_string().contains("params.json") && e.to_string().contains("diagonal"),
        "{e}"
    );
    let mut p: serde_json::Value = serde_json::from_str(&text).unwrap();
    p["means"][1].as_array_mut().unwrap().pop();
    std::fs::write(dir.path().join("params.json"), p.to_string()).unwrap();
    let e = MultiModel::load(dir.path(), &reg).unwrap_err();
    assert!(e.to_string().contains("means of 4 values"), "{e}");
    std::fs::write(dir.path().join("params.json"), "[1, 2").unwrap();
    let e = MultiModel::load(dir.path(), &reg).unwrap_err();
    assert!(e.to_string().contains("corrupt"), "{e}");
}
