//! Detectors and scoring for gatewatch.
//!
//! Model folders (`manifest.json` + artefacts) checked against the feature registry, holding
//! one detector or an ensemble of named detectors: robust z-score baselines over the
//! engine's feature vectors (exact explanations, calibrated scores), per-endpoint volumetric
//! baselines with recommended rate limits, PCA and Gaussian-mixture models fitted with linfa,
//! and ONNX models run by ONNX Runtime (loaded at run time). [`Scorer`] scores micro-batches of events with any of them. Univariate streaming
//! detectors work on plain `(timestamp, value)` series.

mod common;
mod error;
mod manifest;
pub mod monitor;
pub mod multivariate;
pub mod onnx;
mod robust;
mod scorer;
pub mod train;
pub mod univariate;
pub mod volumetric;

pub use common::{Reason, tail_bits};
pub use error::{ModelError, Result};
pub use manifest::{MANIFEST_FORMAT, Manifest, Training};
pub use monitor::{
    Alert, ClientAlert, EndpointMonitor, FailureParams, Metric, MonitorBaselines, MonitorParams,
    OVERFLOW_ENDPOINT, ShareBaseline,
};
pub use multivariate::{GMM_KIND, MultiModel, MultiParams, PCA_KIND};
pub use onnx::{OnnxModel, OnnxSpec};
pub use robust::{Baseline, KIND as ROBUST_KIND, RobustModel, RobustParams, Scored, Side, Tail};
pub use scorer::{
    Batch, BatchScores, Combine, Detector, ENSEMBLE_KIND, EnsembleSpec, Folder, Member, MemberSpec,
    Scorer,
};
pub use train::{DETECTORS, MONITOR_FILE, OnnxExport, TrainSpec, Trained, export_onnx, train};
pub use univariate::{
    DetectorError, Ewma, EwmaParams, HalfLife, MAX_SEASON, MAX_VALUE, Point, RelativeEntropy,
    RelativeEntropyParams,
};
pub use volumetric::{PeakCollector, VolumetricModel, VolumetricParams};

/// Refuses a manifest built for another feature registry.
pub(crate) fn check_feature_set(
    manifest: &Manifest,
    registry: &gatewatch_features::Registry,
) -> Result<()> {
    if manifest.feature_set != registry.hash {
        return Err(ModelError::FeatureSet {
            model: manifest.name.clone(),
            model_hash: manifest.feature_set.clone(),
            engine_hash: registry.hash.clone(),
        });
    }
    Ok(())
}

/// The built-in default model (`models/default`, trained by `scripts/train-default`),
/// compiled in.
pub fn builtin_default() -> Folder {
    const FILES: &[(&str, &str)] = &[
        (
            "manifest.json",
            include_str!("../../../models/default/manifest.json"),
        ),
        (
            "robust/manifest.json",
            include_str!("../../../models/default/robust/manifest.json"),
        ),
        (
            "robust/baseline.json",
            include_str!("../../../models/default/robust/baseline.json"),
        ),
        (
            "volumetric/manifest.json",
            include_str!("../../../models/default/volumetric/manifest.json"),
        ),
        (
            "volumetric/limits.json",
            include_str!("../../../models/default/volumetric/limits.json"),
        ),
        (
            "monitor.json",
            include_str!("../../../models/default/monitor.json"),
        ),
    ];
    Folder::Embedded {
        files: FILES,
        prefix: String::new(),
        origin: "models/default".into(),
    }
}
