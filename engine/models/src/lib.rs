//! Detectors and scoring for gatewatch.
//!
//! This first part holds the univariate streaming detectors: they score one `(timestamp,
//! value)` series at a time (an endpoint's request rate, error ratio or latency) and can be
//! evaluated on their own. Baselines over feature vectors, linfa and ONNX models follow.

pub mod univariate;

pub use univariate::{
    DetectorError, Ewma, EwmaParams, Point, RelativeEntropy, RelativeEntropyParams,
};
