//! Detectors and scoring for gatewatch.
//!
//! So far: robust z-score baselines over the engine's feature vectors, with model folders
//! (`manifest.json` + artefacts) checked against the feature registry, exact explanations and
//! calibrated scores; and univariate streaming detectors for `(timestamp, value)` series.
//! linfa and ONNX models follow.

mod error;
mod manifest;
mod robust;
pub mod univariate;

pub use error::{ModelError, Result};
pub use manifest::{MANIFEST_FORMAT, Manifest, Training};
pub use robust::{Baseline, KIND as ROBUST_KIND, Reason, RobustModel, RobustParams, Scored};
pub use univariate::{
    DetectorError, Ewma, EwmaParams, Point, RelativeEntropy, RelativeEntropyParams,
};
