//! Volumetric baselines and ensembles: fitting, scoring semantics, model folders and their
//! errors.

use std::path::Path;

mod common;

use common::{registry, training};
use gatewatch_features::Registry;
use gatewatch_models::{
    Batch, BatchScores, Combine, ENSEMBLE_KIND, EnsembleSpec, MANIFEST_FORMAT, Manifest,
    MemberSpec, ModelError, PeakCollector, RobustModel, RobustParams, Scorer, VolumetricModel,
    VolumetricParams, tail_bits,
};

/// Peaks: endpoint `busy` seen by 500 clients with peaks 1..=10 (client c peaks at
/// 1 + c % 10), endpoint `rare` by 5 clients peaking at 100.
fn peaks() -> PeakCollector {
    let mut p = PeakCollector::default();
    for c in 0..500 {
        let client = format!("ip:{c}");
        let peak = 1 + c % 10;
        for n in 1..=peak {
            p.add("GET /busy", &client, f64::from(n));
        }
    }
    for c in 0..5 {
        p.add("GET /rare", &format!("ip:r{c}"), 100.0);
    }
    p
}

fn volumetric(reg: &Registry) -> VolumetricModel {
    VolumetricModel::fit(reg, &VolumetricParams::default(), &peaks(), "v", training()).unwrap()
}

fn row_with_count(reg: &Registry, count: f64) -> Vec<f64> {
    let mut r = vec![0.0; reg.len()];
    r[reg.index_of("endpoint_count_1m").unwrap()] = count;
    r
}

#[test]
fn limits_come_from_per_client_peaks_with_a_minimum_data_gate() {
    let reg = registry();
    let v = volumetric(&reg);
    let l = &v.limits;
    assert_eq!(l.endpoints.len(), 1);
    let busy = &l.endpoints[0];
    assert_eq!(busy.endpoint, "GET /busy");
    assert_eq!(busy.sessions, 500);
    assert_eq!(busy.requests, (0..500).map(|c| 1 + c % 10).sum::<u64>());
    assert_eq!(busy.p50.value, 6.0);
    assert_eq!(busy.p90.value, 9.0);
    assert_eq!(busy.p99.value, 10.0);
    assert_eq!(busy.max_peak, 10.0);
    assert_eq!(busy.recommended, Some(10.0));
    assert_eq!(busy.confidence, "high");
    // Five clients are below the 30-client gate: no limit of their own.
    assert_eq!(l.below_gate, vec![("GET /rare".to_string(), 5)]);
    assert_eq!(l.pooled.sessions, 505);
    // The rare endpoint is scored against the pooled peaks.
    assert_eq!(v.limit("GET /rare"), l.pooled.p99.value);
    assert_eq!(v.limit("GET /busy"), 10.0);
}

#[test]
fn the_score_is_the_excess_over_the_p99_peak() {
    let reg = registry();
    let v = volumetric(&reg);
    assert_eq!(v.score(&row_with_count(&reg, 10.0), "GET /busy").0, 0.0);
    let (s, r) = v.score(&row_with_count(&reg, 20.0), "GET /busy");
    assert_eq!(s, 0.5);
    let r = r.unwrap();
    assert_eq!((r.value, r.baseline, r.contribution), (20.0, 10.0, 2.0));
    assert_eq!(v.score(&row_with_count(&reg, 100.0), "GET /busy").0, 0.9);
    assert_eq!(v.score(&row_with_count(&reg, f64::NAN), "GET /busy").0, 0.0);
}

#[test]
fn too_few_sessions_anywhere_still_fits_on_the_pooled_peaks_but_nothing_fits_on_nothing() {
    let reg = registry();
    let mut p = PeakCollector::default();
    p.add("GET /a", "ip:1", 3.0);
    let v = VolumetricModel::fit(&reg, &VolumetricParams::default(), &p, "v", training()).unwrap();
    assert!(v.limits.endpoints.is_empty());
    assert_eq!(v.limits.pooled.recommended, None);
    assert_eq!(v.limits.pooled.confidence, "low");
    let e = VolumetricModel::fit(
        &reg,
        &VolumetricParams::default(),
        &PeakCollector::default(),
        "v",
        training(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("no requests"), "{e}");
}

fn robust(reg: &Registry) -> RobustModel {
    let rows: Vec<Vec<f64>> = (0..500)
        .map(|i| (0..reg.len()).map(|f| (i * 7 + f) as f64 % 13.0).collect())
        .collect();
    RobustModel::fit(
        reg,
        &RobustParams::default(),
        rows.iter().map(Vec::as_slice),
        "r",
        training(),
    )
    .unwrap()
}

fn ensemble(dir: &Path, reg: &Registry, combine: Combine, members: Vec<MemberSpec>) {
    robust(reg).save(&dir.join("robust")).unwrap();
    volumetric(reg).save(&dir.join("volumetric")).unwrap();
    Manifest {
        format_version: MANIFEST_FORMAT,
        name: "e".into(),
        version: "3".into(),
        kind: ENSEMBLE_KIND.into(),
        feature_set: reg.hash.clone(),
        features: Vec::new(),
        outputs: vec!["score".into()],
        threshold: 0.6,
        calibration: "members".into(),
        training: training(),
        artefacts: vec!["robust".into(), "volumetric".into()],
        onnx: None,
        ensemble: Some(EnsembleSpec { combine, members }),
        monitor: None,
    }
    .save(dir)
    .unwrap();
}

fn member(name: &str, path: &str, weight: f64) -> MemberSpec {
    MemberSpec {
        name: name.into(),
        path: path.into(),
        weight,
    }
}

fn two() -> Vec<MemberSpec> {
    vec![
        member("robust", "robust", 1.0),
        member("volumetric", "volumetric", 3.0),
    ]
}

#[test]
fn an_ensemble_keeps_every_member_score_and_combines_by_max() {
    let reg = registry();
    let dir = tempfile::tempdir().unwrap();
    ensemble(dir.path(), &reg, Combine::Max, two());
    let mut s = Scorer::load(dir.path(), &reg).unwrap();
    assert_eq!(s.id(), "e@3");
    let r = robust(&reg);
    let mut b = Batch::default();
    let quiet = row_with_count(&reg, 1.0);
    let loud = row_with_count(&reg, 40.0);
    b.push(&quiet, "GET /busy");
    b.push(&loud, "GET /busy");
    b.push(&loud, "GET /unknown");
    let mut out = BatchScores::default();
    s.score_batch(&b, reg.len(), 2, &mut out).unwrap();
    assert_eq!(out.score.len(), 3);
    for i in 0..3 {
        let row = if i == 0 { &quiet } else { &loud };
        let rob = r.score(row, 0);
        assert_eq!(out.member[2 * i], rob.score);
        // Surprisal: the highest member's, the robust member's exact, the other's from its
        // score.
        let want = r.score_bits(rob.raw).max(tail_bits(out.member[2 * i + 1]));
        assert_eq!(out.surprisal[i], want);
        assert!((out.surprisal[i] - tail_bits(out.score[i])).abs() < 1e-6);
        assert_eq!(out.score[i], out.member[2 * i].max(out.member[2 * i + 1]));
        assert_eq!(
            out.flagged[i],
            out.member[2 * i] >= 0.999 || out.member[2 * i + 1] >= 0.5
        );
    }
    assert_eq!(out.member[1], 0.0);
    assert_eq!(out.member[3], 0.75);
    // The unknown endpoint is scored against the pooled p99.
    let pooled = volumetric(&reg).limits.pooled.p99.value;
    assert_eq!(out.member[5], 1.0 - pooled / 40.0);
    // The deciding member is the highest-scoring flagging one, and its reasons are given.
    for i in 0..3 {
        let (r, v) = (out.member[2 * i], out.member[2 * i + 1]);
        let want = match (r >= 0.999, v >= 0.5) {
            (true, false) => 0,
            (false, true) => 1,
            _ => usize::from(v > r),
        };
        assert_eq!(out.decided_by[i], want, "event {i}: {r} {v}");
        if want == 1 {
            assert_eq!(out.reasons[i][0].feature, "endpoint_count_1m");
        }
    }
}

#[test]
fn a_weighted_mean_flags_at_the_ensemble_threshold() {
    let reg = registry();
    let dir = tempfile::tempdir().unwrap();
    ensemble(dir.path(), &reg, Combine::WeightedMean, two());
    let mut s = Scorer::load(dir.path(), &reg).unwrap();
    let mut b = Batch::default();
    b.push(&row_with_count(&reg, 40.0), "GET /busy");
    let mut out = BatchScores::default();
    s.score_batch(&b, reg.len(), 0, &mut out).unwrap();
    let expected = (out.member[0] + 3.0 * 0.75) / 4.0;
    assert!((out.score[0] - expected).abs() < 1e-12);
    assert_eq!(out.surprisal[0], tail_bits(out.score[0]));
    assert_eq!(out.flagged[0], expected >= 0.6);
    assert!(out.reasons[0].is_empty());
}

fn load_err(dir: &Path) -> String {
    Scorer::load(dir, &registry()).unwrap_err().to_string()
}

#[test]
fn broken_ensembles_are_refused_naming_what_is_wrong() {
    let reg = registry();
    let dir = tempfile::tempdir().unwrap();
    ensemble(
        dir.path(),
        &reg,
        Combine::Max,
        vec![member("a", "robust", 1.0), member("a", "volumetric", 1.0)],
    );
    assert!(load_err(dir.path()).contains("\"a\" appears twice"));

    ensemble(
        dir.path(),
        &reg,
        Combine::Max,
        vec![member("a", "missing", 1.0)],
    );
    let e = load_err(dir.path());
    assert!(e.contains("missing/manifest.json"), "{e}");

    ensemble(
        dir.path(),
        &reg,
        Combine::Max,
        vec![member("a", "robust", -1.0)],
    );
    assert!(load_err(dir.path()).contains("weight"));

    ensemble(
        dir.path(),
        &reg,
        Combine::WeightedMean,
        vec![member("a", "robust", 0.0)],
    );
    assert!(load_err(dir.path()).contains("all member weights are 0"));

    ensemble(dir.path(), &reg, Combine::Max, Vec::new());
    assert!(load_err(dir.path()).contains("at least one member"));

    // A member of another feature set.
    ensemble(dir.path(), &reg, Combine::Max, two());
    let mut m = Manifest::load(&dir.path().join("volumetric")).unwrap();
    m.feature_set = "ffff".into();
    m.save(&dir.path().join("volumetric")).unwrap();
    assert!(matches!(
        Scorer::load(dir.path(), &reg),
        Err(ModelError::FeatureSet { .. })
    ));

    // Corrupt limits.
    ensemble(dir.path(), &reg, Combine::Max, two());
    std::fs::write(
        dir.path().join("volumetric/limits.json"),
        "{\"min_sessions\":",
    )
    .unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("volumetric/limits.json"), "{e}");

    // An unknown kind.
    ensemble(dir.path(), &reg, Combine::Max, two());
    let mut m = Manifest::load(&dir.path().join("robust")).unwrap();
    m.kind = "magic".into();
    m.save(&dir.path().join("robust")).unwrap();
    let e = load_err(dir.path());
    assert!(e.contains("\"magic\" is not supported"), "{e}");
}

#[test]
fn thresholds_out_of_range_and_paths_out_of_the_folder_are_refused() {
    let reg = registry();
    for t in [-1.0, 2.5, f64::NAN] {
        let dir = tempfile::tempdir().unwrap();
        ensemble(dir.path(), &reg, Combine::Max, two());
        let mut m = Manifest::load(&dir.path().join("robust")).unwrap();
        m.threshold = t;
        // NaN does not survive JSON: write it as text.
        let text = serde_json::to_string(&m)
            .unwrap()
            .replace("\"threshold\":null", "\"threshold\":NaN");
        std::fs::write(dir.path().join("robust/manifest.json"), text).unwrap();
        let e = load_err(dir.path());
        if t.is_nan() {
            assert!(e.contains("robust/manifest.json"), "{e}");
        } else {
            assert!(
                e.contains(&format!("threshold: {t} is not a score in [0, 1]")),
                "{e}"
            );
        }
    }
    // The ensemble's own threshold.
    let dir = tempfile::tempdir().unwrap();
    ensemble(dir.path(), &reg, Combine::WeightedMean, two());
    let mut m = Manifest::load(dir.path()).unwrap();
    m.threshold = 1.5;
    m.save(dir.path()).unwrap();
    assert!(load_err(dir.path()).contains("threshold: 1.5"));

    // A member path with `..`, an absolute one, and a link that leads out.
    let outside = tempfile::tempdir().unwrap();
    robust(&reg).save(&outside.path().join("r")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let up = format!(
        "../{}/r",
        outside.path().file_name().unwrap().to_str().unwrap()
    );
    for (path, needle) in [
        (up.as_str(), "leaves the model folder"),
        (
            outside.path().join("r").to_str().unwrap(),
            "leaves the model folder",
        ),
    ] {
        ensemble(dir.path(), &reg, Combine::Max, vec![member("x", path, 1.0)]);
        let e = load_err(dir.path());
        assert!(e.contains(needle), "{path}: {e}");
    }
    std::os::unix::fs::symlink(outside.path().join("r"), dir.path().join("link")).unwrap();
    ensemble(
        dir.path(),
        &reg,
        Combine::Max,
        vec![member("x", "link", 1.0)],
    );
    let e = load_err(dir.path());
    assert!(e.contains("leads out of the model folder"), "{e}");
}

#[test]
fn single_detector_folders_load_as_scorers() {
    let reg = registry();
    let dir = tempfile::tempdir().unwrap();
    volumetric(&reg).save(dir.path()).unwrap();
    let mut s = Scorer::load(dir.path(), &reg).unwrap();
    assert_eq!(s.members.len(), 1);
    assert_eq!(s.members[0].name, "volumetric_rate");
    let mut b = Batch::default();
    b.push(&row_with_count(&reg, 20.0), "GET /busy");
    let mut out = BatchScores::default();
    s.score_batch(&b, reg.len(), 3, &mut out).unwrap();
    assert_eq!(out.score, vec![0.5]);
    assert!(out.flagged[0]);
}

#[test]
fn non_finite_features_at_scoring_time_give_finite_scores() {
    let reg = registry();
    let dir = tempfile::tempdir().unwrap();
    ensemble(dir.path(), &reg, Combine::Max, two());
    let mut s = Scorer::load(dir.path(), &reg).unwrap();
    let mut b = Batch::default();
    for v in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        b.push(&vec![v; reg.len()], "GET /busy");
        let mut row = row_with_count(&reg, 3.0);
        row[0] = v;
        b.push(&row, "GET /busy");
    }
    let mut out = BatchScores::default();
    s.score_batch(&b, reg.len(), 3, &mut out).unwrap();
    for (i, sc) in out.score.iter().enumerate() {
        assert!(
            sc.is_finite() && (0.0..=1.0).contains(sc),
            "event {i}: {sc}"
        );
        for r in &out.reasons[i] {
            assert!(r.contribution.is_finite(), "event {i}: {r:?}");
        }
    }
}

#[test]
fn the_peak_collector_stays_under_its_caps() {
    let mut p = PeakCollector::with_caps(3, 50);
    for e in 0..100 {
        for c in 0..100 {
            p.add(&format!("GET /e{e}"), &format!("ip:{c}"), f64::from(c % 7));
        }
    }
    assert_eq!(p.requests(), 50, "the first 50 pairs, once each");
    assert_eq!(p.dropped(), 100 * 100 - 50);
    // A tracked pair keeps its peak up to date.
    p.add("GET /e0", "ip:0", 99.0);
    let limits = p.limits(1).unwrap();
    assert_eq!(limits.endpoints.len(), 1);
    assert_eq!(limits.endpoints[0].max_peak, 99.0);
}

#[test]
fn a_model_that_reads_features_a_selection_leaves_out_is_refused_by_name() {
    let select = |names: &[&str]| {
        let list: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
        gatewatch_features::Config::parse(&format!("[features]\nselect = [{}]\n", list.join(", ")))
            .unwrap()
    };
    // The built-in default reads every feature: a selection of two is refused, naming what
    // is missing.
    let two = Registry::new(&select(&["req_count_1m", "endpoint_count_1m"]).features);
    let err = Scorer::load_folder(&gatewatch_models::builtin_default(), &two).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, ModelError::UnknownFeatures { .. }), "{msg}");
    assert!(
        msg.contains("iat_cv_1m") && msg.contains("[features] select"),
        "{msg}"
    );
    assert!(!msg.contains("\"req_count_1m\""), "{msg}");
    // A model fitted on a selection reads only those features and loads on it; the volumetric
    // detector needs endpoint_count_1m and is refused without it.
    let dir = tempfile::tempdir().unwrap();
    let rows: Vec<f64> = (0..400)
        .flat_map(|i| [f64::from(i % 7), f64::from(i % 3)])
        .collect();
    let m = RobustModel::fit(
        &two,
        &RobustParams::default(),
        rows.chunks_exact(2),
        "sel",
        training(),
    )
    .unwrap();
    m.save(dir.path()).unwrap();
    assert_eq!(m.manifest.features, ["req_count_1m", "endpoint_count_1m"]);
    let mut s = Scorer::load(dir.path(), &two).unwrap();
    let mut b = Batch::default();
    b.push(&[100.0, 1.0], "GET /a");
    let mut out = BatchScores::default();
    s.score_batch(&b, 2, 2, &mut out).unwrap();
    assert_eq!(out.reasons[0][0].feature, "req_count_1m");
    let one = Registry::new(&select(&["req_count_1m"]).features);
    let err = Scorer::load(dir.path(), &one).unwrap_err().to_string();
    assert!(err.contains("endpoint_count_1m"), "{err}");
    let err = VolumetricModel::fit(
        &one,
        &VolumetricParams::default(),
        &peaks(),
        "v",
        training(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("endpoint_count_1m"), "{err}");
}
