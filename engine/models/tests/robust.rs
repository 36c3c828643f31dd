//! Robust z-score models: fitting, explanations, model folders and their errors.

mod common;

use common::{registry, training, uniform};
use gatewatch_features::Registry;
use gatewatch_models::{ModelError, RobustModel, RobustParams};

/// Rows of noisy features around 10 (deterministic), and one feature that never varies.
fn rows(reg: &Registry, n: usize) -> Vec<Vec<f64>> {
    let mut u = uniform(0x2545_f491_4f6c_dd1d);
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

/// Fitted on three features (two noisy, one constant) with `top_k = 1`: with many
/// independent noisy features, most rows would hold some training extreme, and a mean of
/// several surprisals would dilute one outlier among typical values.
fn fit(reg: &Registry) -> RobustModel {
    let data = rows(reg, 2000);
    RobustModel::fit(
        reg,
        &RobustParams {
            top_k: 1,
            features: vec![
                "distinct_ids_10m".into(),
                "bytes_mean_1h".into(),
                "throttled_ratio_10s".into(),
            ],
            ..RobustParams::default()
        },
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
    // Past the training maximum, the contribution is log10(n + 1) plus log10(1 + distance
    // past the maximum in robust-scale units).
    let k = m
        .manifest
        .features
        .iter()
        .position(|n| n == "distinct_ids_10m")
        .unwrap();
    let b = &m.baseline;
    let max = *b.tails[k].up.last().unwrap();
    let past = ((400f64.ln_1p() - max.ln_1p()) / b.scale[k]).min(b.z_clip);
    let want = 2001f64.log10() + past.ln_1p() / std::f64::consts::LN_10;
    assert!(
        (top.contribution - want).abs() < 1e-12,
        "{} {want}",
        top.contribution
    );
    assert!((top.baseline - b.median[k].exp_m1()).abs() < 1e-9);

    // A feature that never varied in training: any change is past the extreme, its
    // distance clipped.
    let mut flat = normal.clone();
    flat[5] = 1.0;
    let s = m.score(&flat, 1);
    let want = 2001f64.log10() + 51f64.log10();
    assert!((s.reasons[0].contribution - want).abs() < 1e-12);
    assert!(s.score.is_finite() && (0.0..=1.0).contains(&s.score));
    // Farther past the extreme scores higher.
    let mut more = odd.clone();
    more[f] = 4000.0;
    assert!(m.score(&more, 0).score > m.score(&odd, 0).score);
    // Below the median counts negative where low values are evidence (sizes: both sides),
    // and not at all where only high values are (distinct ids).
    let b = reg.index_of("bytes_mean_1h").unwrap();
    let mut low = normal.clone();
    low[b] = 0.0;
    let s = m.score(&low, 1);
    assert_eq!(s.reasons[0].feature, "bytes_mean_1h");
    assert!(s.reasons[0].contribution < -3.0);
    let mut few = normal;
    few[f] = 0.0;
    assert!(
        m.score(&few, 3)
            .reasons
            .iter()
            .all(|r| r.feature != "distinct_ids_10m")
    );
    assert_eq!(
        m.baseline.sides[k],
        gatewatch_models::Side::Up,
        "distinct ids count only upwards"
    );
}

#[test]
fn surprisal_is_the_training_share_at_least_as_extreme() {
    // One feature column: 900 zeros, 90 ones, 9 twos, 1 three (ties, like a sparse count).
    let reg = registry();
    let f = reg.index_of("server_error_ratio_1m").unwrap();
    let data: Vec<Vec<f64>> = (0..1000)
        .map(|i| {
            let mut r = vec![0.0; reg.len()];
            r[f] = match i {
                0..900 => 0.0,
                900..990 => 1.0,
                990..999 => 2.0,
                _ => 3.0,
            };
            r
        })
        .collect();
    let params = RobustParams {
        features: vec!["server_error_ratio_1m".into()],
        top_k: 1,
        ..RobustParams::default()
    };
    let m = RobustModel::fit(
        &reg,
        &params,
        data.iter().map(Vec::as_slice),
        "t",
        training(),
    )
    .unwrap();
    let at = |v: f64| {
        let mut r = vec![0.0; reg.len()];
        r[f] = v;
        m.score(&r, 1)
            .reasons
            .first()
            .map_or(0.0, |x| x.contribution)
    };
    assert_eq!(at(0.0), 0.0);
    // 100 of 1000 at or above 1, 10 at or above 2, 1 at 3.
    assert!((at(1.0) - 1.0).abs() < 1e-9, "{}", at(1.0));
    assert!((at(2.0) - 2.0).abs() < 1e-9, "{}", at(2.0));
    assert!((at(3.0) - 3.0).abs() < 1e-9, "{}", at(3.0));
    // Between two values: the share strictly beyond the lower one (10 of 1000 above 1.5).
    let mid = at(1.5);
    assert!((mid - 2.0).abs() < 1e-9, "{mid}");
    // Past the maximum: more than log10(n + 1).
    assert!(at(3.5) > 1001f64.log10());
    // The calibrated score orders like the surprisal, and stays below 1.
    let score = |v: f64| {
        let mut r = vec![0.0; reg.len()];
        r[f] = v;
        m.score(&r, 0).score
    };
    assert!(score(0.0) < score(1.0) && score(1.0) < score(2.0) && score(2.0) <= score(3.0));
    assert!(score(3.0) < score(10.0) && score(10.0) < 1.0);
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
        manifest.replace("\"bytes_mean_1h\"", "\"bytes_mean_2h\""),
    )
    .unwrap();
    let e = load();
    assert!(e.to_string().contains("bytes_mean_2h"), "{e}");

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
    // Tail knots out of order.
    let mut b: serde_json::Value = serde_json::from_str(&baseline).unwrap();
    b["tails"][0]["up"].as_array_mut().unwrap().reverse();
    std::fs::write(p.join("baseline.json"), b.to_string()).unwrap();
    let e = load();
    assert!(e.to_string().contains("tails with ordered knots"), "{e}");
    // A count above the training events.
    let mut b: serde_json::Value = serde_json::from_str(&baseline).unwrap();
    b["tails"][1]["down_le"][0] = serde_json::json!(1_000_000);
    std::fs::write(p.join("baseline.json"), b.to_string()).unwrap();
    assert!(load().to_string().contains("counts ≤ n"));

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

#[test]
fn surprisal_is_the_score_tail_in_bits_past_what_the_score_resolves() {
    let reg = registry();
    let m = fit(&reg);
    for row in rows(&reg, 300) {
        let s = m.score(&row, 0);
        let bits = m.score_bits(s.raw);
        let want = -(1.0 - s.score).log2();
        assert!((bits - want).abs() < 1e-9 * want.max(1.0), "{bits} {want}");
    }
    // Past the largest training raw score the tail is (n + 1)^-1 · 10^-(raw − max): its
    // bits grow linearly, however far, where the score's double runs out of digits.
    let last = *m.baseline.calibration.last().unwrap();
    let at = |raw: f64| m.score_bits(raw);
    let step = at(last + 30.0) - at(last + 20.0);
    assert!(
        (step - 10.0 * std::f64::consts::LOG2_10).abs() < 1e-9,
        "{step}"
    );
    assert!(at(last + 400.0) > at(last + 300.0));
    assert!(
        (at(last + 1e-9) - 2001f64.log2()).abs() < 1e-6,
        "{}",
        at(last + 1e-9)
    );
}

#[test]
fn contamination_sets_the_abuse_in_unlabelled_training_aside() {
    let reg = registry();
    let f = reg.index_of("distinct_ids_10m").unwrap();
    // Unlabelled training traffic: 1800 ordinary rows and 200 (10%) of an attack with a
    // high `distinct_ids_10m`.
    let mut data = rows(&reg, 2000);
    for r in data.iter_mut().skip(1800) {
        r[f] = 60.0;
    }
    let fit_with = |contamination: f64| {
        RobustModel::fit(
            &reg,
            &RobustParams {
                top_k: 1,
                features: vec!["distinct_ids_10m".into(), "bytes_mean_1h".into()],
                contamination,
                ..RobustParams::default()
            },
            data.iter().map(Vec::as_slice),
            "t",
            training(),
        )
        .unwrap()
    };
    let plain = fit_with(0.0);
    let trimmed = fit_with(0.15);
    // Trimmed: per feature the most extreme 15% on the abuse side were set aside (the
    // attack's values among them), so the attack lies past the fitted extreme and scores
    // above every ordinary row.
    assert!(trimmed.baseline.n < 1800 && trimmed.baseline.n >= 1700);
    assert!(trimmed.manifest.calibration.contains("set aside"));
    let mut attack = typical(&reg);
    attack[f] = 60.0;
    let ordinary_max = |m: &RobustModel| {
        data[..1800]
            .iter()
            .map(|r| m.score(r, 0).score)
            .fold(0.0, f64::max)
    };
    assert!(trimmed.score(&attack, 0).score > ordinary_max(&trimmed));
    // Fitted on everything, the attack is a tenth of the training and scores like an
    // ordinary tail value.
    assert!(plain.score(&attack, 0).score < ordinary_max(&plain));
    for bad in [-0.1, 0.5, f64::NAN] {
        let e = RobustModel::fit(
            &reg,
            &RobustParams {
                contamination: bad,
                ..RobustParams::default()
            },
            data.iter().map(Vec::as_slice),
            "t",
            training(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("contamination"), "{e}");
    }
}
