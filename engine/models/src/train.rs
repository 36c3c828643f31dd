//! Training in one place: the model folder `gatewatch train` writes and the Python
//! `Baseline` saves, fitted by the same code — an ensemble of the named detectors, each in
//! its own sub-folder, combined by the highest member score.

use std::path::Path;
use std::time::Instant;

use gatewatch_features::Registry;

use crate::error::{ModelError, Result};
use crate::manifest::{MANIFEST_FORMAT, Manifest, Training};
use crate::monitor::MonitorBaselines;
use crate::multivariate::{MultiModel, MultiParams};
use crate::robust::{RobustModel, RobustParams};
use crate::scorer::{Combine, ENSEMBLE_KIND, EnsembleSpec, MemberSpec};
use crate::volumetric::{self, PeakCollector, VolumetricModel, VolumetricParams};

/// The detectors a model folder can be trained with.
pub const DETECTORS: [&str; 4] = ["robust", "volumetric", "pca", "gmm"];

/// The file of a model folder holding the endpoint monitor's baselines.
pub const MONITOR_FILE: &str = "monitor.json";

/// What to train.
#[derive(Debug, Clone)]
pub struct TrainSpec {
    /// The model's name (members are named `NAME-DETECTOR`).
    pub name: String,
    /// Detectors, from [`DETECTORS`], in member order.
    pub detectors: Vec<String>,
    /// The robust member's parameters (its threshold is the ensemble's too).
    pub robust: RobustParams,
    /// The volumetric member's parameters.
    pub volumetric: VolumetricParams,
    /// The PCA / Gaussian-mixture members' parameters.
    pub multi: MultiParams,
}

impl TrainSpec {
    /// Detectors parsed from a comma-separated list (`robust,volumetric`), each checked.
    pub fn parse_detectors(list: &str) -> Result<Vec<String>> {
        let wanted: Vec<String> = list
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(String::from)
            .collect();
        Self::check_detectors(&wanted)?;
        Ok(wanted)
    }

    fn check_detectors(wanted: &[String]) -> Result<()> {
        if let Some(bad) = wanted.iter().find(|d| !DETECTORS.contains(&d.as_str())) {
            return Err(ModelError::Fit(format!(
                "unknown detector {bad:?} (known: {})",
                DETECTORS.join(", ")
            )));
        }
        if wanted.is_empty() {
            return Err(ModelError::Fit(format!(
                "name at least one detector of {}",
                DETECTORS.join(", ")
            )));
        }
        if let Some((i, d)) = wanted
            .iter()
            .enumerate()
            .find(|(i, d)| wanted[..*i].contains(d))
        {
            return Err(ModelError::Fit(format!(
                "detector {d:?} is named twice (position {})",
                i + 1
            )));
        }
        Ok(())
    }
}

/// A trained model folder.
#[derive(Debug)]
pub struct Trained {
    /// The ensemble's manifest (written in the folder).
    pub manifest: Manifest,
    /// Each member and the seconds its fit took.
    pub fitted: Vec<(String, f64)>,
    /// The volumetric member, when trained (its rate-limit recommendations).
    pub volumetric: Option<VolumetricModel>,
}

/// Fits the detectors of `spec` on feature rows (registry order, row after row) and the
/// per-client peaks (for the volumetric detector), and writes the model folder `out`: one
/// sub-folder per detector, the endpoint monitor's baselines when given (`monitor.json`,
/// learnt by the monitor on the same training events) and the ensemble's `manifest.json`.
pub fn train(
    registry: &Registry,
    spec: &TrainSpec,
    rows: &[f64],
    peaks: &PeakCollector,
    monitor: Option<&MonitorBaselines>,
    training: Training,
    out: &Path,
) -> Result<Trained> {
    TrainSpec::check_detectors(&spec.detectors)?;
    let n = registry.len().max(1);
    let mut members = Vec::new();
    let mut fitted = Vec::new();
    let mut vol = None;
    for d in &spec.detectors {
        let name = format!("{}-{d}", spec.name);
        let dir = out.join(d);
        let t0 = Instant::now();
        match d.as_str() {
            "robust" => RobustModel::fit(
                registry,
                &spec.robust,
                rows.chunks_exact(n),
                &name,
                training.clone(),
            )?
            .save(&dir)?,
            "volumetric" => {
                if registry.index_of(volumetric::FEATURE).is_none() {
                    return Err(ModelError::UnknownFeatures {
                        model: name,
                        names: vec![volumetric::FEATURE.into()],
                    });
                }
                let v = VolumetricModel::fit(
                    registry,
                    &spec.volumetric,
                    peaks,
                    &name,
                    training.clone(),
                )?;
                v.save(&dir)?;
                vol = Some(v);
            }
            kind => MultiModel::fit(
                kind,
                registry,
                &spec.multi,
                rows.chunks_exact(n),
                &name,
                training.clone(),
            )?
            .save(&dir)?,
        }
        fitted.push((d.clone(), t0.elapsed().as_secs_f64()));
        members.push(MemberSpec {
            name: d.clone(),
            path: d.clone(),
            weight: 1.0,
        });
    }
    let mut artefacts = spec.detectors.clone();
    let mut monitor_file = None;
    if let Some(b) = monitor {
        b.check()
            .map_err(|e| ModelError::Fit(format!("monitor baselines: {e}")))?;
        let path = out.join(MONITOR_FILE);
        let text = serde_json::to_string_pretty(b).expect("baselines serialise");
        std::fs::write(&path, text + "\n").map_err(|source| ModelError::Io {
            path: path.display().to_string(),
            source,
        })?;
        artefacts.push(MONITOR_FILE.into());
        monitor_file = Some(MONITOR_FILE.to_string());
    }
    let manifest = Manifest {
        format_version: MANIFEST_FORMAT,
        name: spec.name.clone(),
        version: "1".into(),
        kind: ENSEMBLE_KIND.into(),
        feature_set: registry.hash.clone(),
        features: Vec::new(),
        outputs: vec!["score".into()],
        threshold: spec.robust.threshold,
        calibration: "per member (the highest member score counts)".into(),
        training,
        artefacts,
        onnx: None,
        ensemble: Some(EnsembleSpec {
            combine: Combine::Max,
            members,
        }),
        monitor: monitor_file,
    };
    manifest.save(out)?;
    Ok(Trained {
        manifest,
        fitted,
        volumetric: vol,
    })
}

/// An ONNX model trained elsewhere (scikit-learn, LightGBM, PyTorch), to be shipped as a
/// model folder.
#[derive(Debug, Clone)]
pub struct OnnxExport {
    /// The model's name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// The registry features it reads, in input order.
    pub features: Vec<String>,
    /// Flag threshold on the score.
    pub threshold: f64,
    /// The output holding the score, its column, and whether larger means more normal.
    pub output: String,
    /// Column of a `[batch, k]` output.
    pub column: usize,
    /// The output is larger for more normal events.
    pub negate: bool,
    /// Per feature, the value explanations replace it with; none when empty.
    pub reference: Vec<f64>,
    /// Raw outputs of training events, for the calibration (1001 quantiles); none when empty.
    pub calibration_scores: Vec<f64>,
}

/// Writes an ONNX model file as a model folder `out` (`model.onnx` and `manifest.json`),
/// after checking the features against the registry and the reference's length. The
/// runtime's own checks (input width, output) apply when the folder is loaded.
pub fn export_onnx(
    registry: &Registry,
    spec: &OnnxExport,
    onnx_file: &Path,
    out: &Path,
) -> Result<Manifest> {
    crate::common::resolve(registry, &spec.name, &spec.features)?;
    if !spec.reference.is_empty() && spec.reference.len() != spec.features.len() {
        return Err(ModelError::Fit(format!(
            "reference has {} values for {} features",
            spec.reference.len(),
            spec.features.len()
        )));
    }
    if !(0.0..=1.0).contains(&spec.threshold) {
        return Err(ModelError::Fit(format!(
            "threshold {} is not in [0, 1]",
            spec.threshold
        )));
    }
    let mut calibration = Vec::new();
    if !spec.calibration_scores.is_empty() {
        let mut raw: Vec<f64> = spec
            .calibration_scores
            .iter()
            .map(|v| if spec.negate { -v } else { *v })
            .collect();
        if raw.len() < 2 || raw.iter().any(|v| !v.is_finite()) {
            return Err(ModelError::Fit(
                "calibration scores: give at least two finite values".into(),
            ));
        }
        raw.sort_by(f64::total_cmp);
        calibration = (0..=1000usize)
            .map(|q| raw[q * (raw.len() - 1) / 1000])
            .collect();
    }
    let io = |path: &Path, source: std::io::Error| ModelError::Io {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
    let target = out.join("model.onnx");
    std::fs::copy(onnx_file, &target).map_err(|e| io(onnx_file, e))?;
    let manifest = Manifest {
        format_version: MANIFEST_FORMAT,
        name: spec.name.clone(),
        version: spec.version.clone(),
        kind: crate::onnx::KIND.into(),
        feature_set: registry.hash.clone(),
        features: spec.features.clone(),
        outputs: vec![spec.output.clone()],
        threshold: spec.threshold,
        calibration: if calibration.is_empty() {
            "none: the model's output clamped to [0, 1]".into()
        } else {
            "empirical CDF of the training outputs".into()
        },
        training: Training {
            events: spec.calibration_scores.len() as u64,
            clients: 0,
            source: "gatewatch.export_model".into(),
            label_filter: None,
            description: None,
        },
        artefacts: vec!["model.onnx".into()],
        onnx: Some(crate::onnx::OnnxSpec {
            file: "model.onnx".into(),
            input: None,
            output: spec.output.clone(),
            column: spec.column,
            negate: spec.negate,
            calibration,
            reference: spec.reference.clone(),
        }),
        ensemble: None,
        monitor: None,
    };
    manifest.save(out)?;
    Ok(manifest)
}
