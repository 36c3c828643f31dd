//! What every detector shares: reasons, the value transform, calibration of raw scores,
//! and the resolution of a manifest's feature names against the engine's registry. The
//! detectors depend on this module; it depends on none of them.

use gatewatch_features::Registry;
use serde::Serialize;

use crate::error::{ModelError, Result};

/// Evenly spaced order statistics kept for calibration (their number minus one).
pub(crate) const QUANTILES: usize = 1000;

/// One feature's part in a score.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reason {
    /// Feature name.
    pub feature: String,
    /// The event's value.
    pub value: f64,
    /// The training median (in the feature's unit).
    pub baseline: f64,
    /// Its z-score (positive: above the baseline).
    pub contribution: f64,
}

/// The transform every baseline works on: `sign(x)·ln(1 + |x|)`.
pub(crate) fn t(x: f64) -> f64 {
    x.signum() * x.abs().ln_1p()
}

/// The inverse of [`t`].
pub(crate) fn t_inv(y: f64) -> f64 {
    y.signum() * y.abs().exp_m1()
}

/// The calibration quantiles of ascending raw scores: `QUANTILES + 1` evenly spaced order
/// statistics.
pub(crate) fn calibration_quantiles(sorted: &[f64]) -> Vec<f64> {
    (0..=QUANTILES)
        .map(|q| sorted[(q * (sorted.len() - 1)) / QUANTILES])
        .collect()
}

/// [`calibrate`] scaled to [0, 1 − 1/(n + 1)] within the quantiles, and growing towards 1
/// past the largest: `1 − 10^−(raw − max) / (n + 1)`.
pub(crate) fn calibrate_open(q: &[f64], raw: f64, n: u64) -> f64 {
    let top = 1.0 / (n + 1) as f64;
    let last = q[q.len() - 1];
    if raw > last {
        1.0 - top * 10f64.powf(-(raw - last))
    } else {
        calibrate(q, raw) * (1.0 - top)
    }
}

/// The tail probability `1 − score` of `score = calibrate_open(q, raw, n)` as surprisal,
/// `−log2` of it; past the largest quantile it is computed from `raw`, not from the score, so
/// it keeps growing where the score rounds to 1.0.
pub(crate) fn open_bits(q: &[f64], raw: f64, n: u64, score: f64) -> f64 {
    let last = q[q.len() - 1];
    if raw > last {
        ((n + 1) as f64).log2() + (raw - last) * std::f64::consts::LOG2_10
    } else {
        tail_bits(score)
    }
}

/// `−log2(1 − score)`: a score's tail as surprisal in bits (at most 1022, for a score of 1).
pub fn tail_bits(score: f64) -> f64 {
    (-(1.0 - score).max(f64::MIN_POSITIVE).log2()).max(0.0)
}

/// Position of `raw` in the calibration quantiles in [0, 1]: linearly interpolated between
/// neighbouring quantiles, the middle of the run for a value equal to several of them.
pub(crate) fn calibrate(q: &[f64], raw: f64) -> f64 {
    let n = q.len();
    let lo = q.partition_point(|v| *v < raw);
    let hi = q.partition_point(|v| *v <= raw);
    let pos = if hi > lo {
        (lo + hi - 1) as f64 / 2.0
    } else if lo == 0 {
        return 0.0;
    } else if lo >= n {
        return 1.0;
    } else {
        let (a, b) = (q[lo - 1], q[lo]);
        (lo - 1) as f64 + (raw - a) / (b - a)
    };
    (pos / (n - 1) as f64).clamp(0.0, 1.0)
}

/// The positions of a model's features in the registry; the features the registry does
/// not have are the error, by name.
pub(crate) fn resolve(registry: &Registry, model: &str, features: &[String]) -> Result<Vec<usize>> {
    let unknown: Vec<String> = features
        .iter()
        .filter(|f| registry.index_of(f).is_none())
        .cloned()
        .collect();
    if !unknown.is_empty() {
        return Err(ModelError::UnknownFeatures {
            model: model.to_string(),
            names: unknown,
        });
    }
    Ok(features
        .iter()
        .filter_map(|f| registry.index_of(f))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibration_interpolates_and_splits_ties() {
        let q = [0.0, 1.0, 2.0, 2.0, 2.0, 3.0];
        assert_eq!(calibrate(&q, -1.0), 0.0);
        assert_eq!(calibrate(&q, 0.5), 0.1);
        assert_eq!(calibrate(&q, 2.0), 0.6);
        assert_eq!(calibrate(&q, 2.5), 0.9);
        assert_eq!(calibrate(&q, 3.0), 1.0);
        assert_eq!(calibrate(&q, 9.0), 1.0);
    }
}
