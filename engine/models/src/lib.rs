//! Detectors and scoring for gatewatch.
//!
//! So far: robust z-score baselines over the engine's feature vectors, with model folders
//! (`manifest.json` + artefacts) checked against the feature registry, exact explanations and
//! calibrated scores; and univariate streaming detectors for `(timestamp, value)` series.
//! linfa and ONNX models follow.

mod error;
mod manifest;
pub mod onnx;
mod robust;
pub mod univariate;

pub use error::{ModelError, Result};
pub use manifest::{MANIFEST_FORMAT, Manifest, Training};
pub use onnx::{OnnxModel, OnnxSpec};
pub use robust::{Baseline, KIND as ROBUST_KIND, Reason, RobustModel, RobustParams, Scored};
pub use univariate::{
    DetectorError, Ewma, EwmaParams, Point, RelativeEntropy, RelativeEntropyParams,
};

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
