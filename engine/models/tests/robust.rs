//! Robust z-score models: fitting, explanations, model folders and their errors.

use gatewatch_features::{FeatureConfig, Registry};
use gatewatch_models::{ModelError, RobustModel, RobustParams, Training};

fn registry() -> Registry {
    Registry::new(&FeatureConfig::default())
}

fn training() -> Training {
    Training {
        events: 0,
        clients: 0,
        source: "test rows".into(),
        label_filter: None,
    }
}

/// Rows of noisy features around 10 (deterministic), and one feature that never varies.
fn rows(reg: &Registry, n: usize) -> Vec<Vec<f64>> {
    let mut s: u64 = 0x2545_f491_4f6c_dd1d;
    let mut u = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f64 / (1u64 << 53) as f64
    };
    (0..n)
        .map(|_| {
            (0..reg.len())
                .map(|f| {
                    if f == 5 {
                        0.0
                    } else {
                        10.0 + 4.0 * (u() - 0.5)
                    }
                })
                .collect()
        })
        .collect()
}

/// A row at the training medians.
fn typical(reg: &Registry) -> Vec<f64> {
    (0..reg.len())
        .map(|f| if f == 5 { 0.0 } else { 10.0 })
        .collect()
}

fn fit(reg: &Registry) -> RobustModel {
    let data = rows(reg, 2000);
    RobustModel::fit(
        reg,
        &RobustParams::default(),
        data.iter().map(Vec::as_slice),
        "t",
        training(),
    )
    .unwrap()
}

#[test]
fn outliers_score_high_and_are_explained_exactly() {
    let reg = registry();
    let m = fit(&reg);
    assert_eq!(m.manifest.training.events, 2000);
    assert_eq!(m.manifest.feature_set, reg.hash);
    let normal = typical(&reg);
    let s = m.score(&normal, 3);
    assert!(s.score < 0.05, "typical row scored {}", s.score);
    // Training rows spread evenly over [0, 1].
    let data = rows(&reg, 2000);
    let flagged = data.iter().filter(|r| m.score(r, 0).score >= 0.99).count();
    assert!(
        (5..=40).contains(&flagged),
        "{flagged} of 2000 training rows at ≥ 0.99"
    );

    let mut odd = normal.clone();
    let f = reg.index_of("distinct_ids_10m").unwrap();
    odd[f] = 400.0;
    let s = m.score(&odd, 3);
    assert!(s.score >= 0.99, "outlier scored {}", s.score);
    let top = &s.reasons[0];
    assert_eq!(top.feature, "distinct_ids_10m");
    assert_eq!(top.value, 400.0);
    // The contribution is exactly the robust z of the transformed value.
    let k = m
        .manifest
        .features
        .iter()
        .position(|n| n == "distinct_ids_10m")
        .unwrap();
    let z = (400f64.ln_1p() - m.baseline.median[k]) / m.baseline.scale[k];
    assert_eq!(top.contribution, z.min(m.baseline.z_clip));
    assert!((top.baseline - m.baseline.median[k].exp_m1()).abs() < 1e-9);

    // A feature that never varied in training gets the scale floor, and any change is clipped.
    let mut flat = normal;
    flat[5] = 1.0;
    let s = m.score(&flat, 1);
    assert_eq!(s.reasons[0].contribution, m.baseline.z_clip);
    assert!(s.score.is_finite() && (0.0..=1.0).contains(&s.score));
}

#[test]
fn saved_models_load_and_score_the_same() {
    let reg = registry();
    let m = fit(&reg);
    let dir = tempfile::tempdir().unwrap();
    m.save(dir.path()).unwrap();
    let back = RobustModel::load(dir.path(), &reg).unwrap();
    let row = rows(&reg, 5)[4].clone();
    assert_eq!(m.score(&row, 5), back.score(&row, 5));
    assert_eq!(back.id(), "t@1");
}

#[test]
fn wrong_model_folders_are_refused_with_the_reason() {
    let reg = registry();
    let m = fit(&reg);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    m.save(p).unwrap();
    let manifest = std::fs::read_to_string(p.join("manifest.json")).unwrap();
    let load = || RobustModel::load(p, &reg).unwrap_err();

    std::fs::write(
        p.join("manifest.json"),
        manifest.replace(&reg.hash, "0123456789abcdef"),
    )
    .unwrap();
    let e = load();
    assert!(matches!(e, ModelError::FeatureSet { .. }), "{e}");
    assert!(
        e.to_string().contains("0123456789abcdef") && e.to_string().contains(&reg.hash),
        "{e}"
    );

    std::fs::write(
        p.join("manifest.json"),
        manifest.replace("\"req_rate_1m\"", "\"req_rate_2m\""),
    )
    .unwrap();
    let e = load();
    assert!(e.to_string().contains("req_rate_2m"), "{e}");

    std::fs::write(
        p.join("manifest.json"),
        manifest.replace("robust_zscore", "magic"),
    )
    .unwrap();
    assert!(load().to_string().contains("\"magic\""));

    std::fs::write(p.join("manifest.json"), &manifest[..manifest.len() / 2]).unwrap();
    let e = load();
    assert!(
        e.to_string().contains("manifest.json") && e.to_string().contains("corrupt"),
        "{e}"
    );

    std::fs::write(p.join("manifest.json"), &manifest).unwrap();
    let baseline = std::fs::read_to_string(p.join("baseline.json")).unwrap();
    std::fs::write(p.join("baseline.json"), baseline.replacen("[", "[-1.0,", 1)).unwrap();
    let e = load();
    assert!(e.to_string().contains("baseline.json"), "{e}");

    std::fs::remove_file(p.join("baseline.json")).unwrap();
    let e = load();
    assert!(
        matches!(e, ModelError::Io { .. }) && e.to_string().contains("baseline.json"),
        "{e}"
    );

    let e = RobustModel::load(&p.join("nope"), &reg).unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
}

#[test]
fn empty_or_bad_training_is_refused() {
    let reg = registry();
    let none: Vec<&[f64]> = Vec::new();
    let e = RobustModel::fit(&reg, &RobustParams::default(), none, "t", training()).unwrap_err();
    assert!(e.to_string().contains("no training events"), "{e}");
    let mut row = rows(&reg, 1).remove(0);
    row[3] = f64::NAN;
    let e = RobustModel::fit(
        &reg,
        &RobustParams::default(),
        [row.as_slice()],
        "t",
        training(),
    )
    .unwrap_err();
    assert!(e.to_string().contains(&reg.features[3].name), "{e}");
    let p = RobustParams {
        features: vec!["nope".into()],
        ..RobustParams::default()
    };
    let row = rows(&reg, 1).remove(0);
    let e = RobustModel::fit(&reg, &p, [row.as_slice()], "t", training()).unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
}
