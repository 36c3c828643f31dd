//! Robust z-scores against population quantiles: per feature, the median and a robust scale
//! of `sign(x)·ln(1 + |x|)` over the training events; an event's raw score is the mean of its
//! `top_k` largest absolute z-scores (each clipped at `z_clip`), calibrated to [0, 1] by the
//! empirical distribution of the training events' raw scores. Every score is explained
//! exactly, feature by feature.

use std::path::Path;

use gatewatch_features::Registry;
use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};
use crate::manifest::{MANIFEST_FORMAT, Manifest, Training};

/// The kind name in manifests.
pub const KIND: &str = "robust_zscore";
const BASELINE_FILE: &str = "baseline.json";
const QUANTILES: usize = 1000;

/// Fitting parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct RobustParams {
    /// Features to use (registry names); all of the registry when empty.
    pub features: Vec<String>,
    /// How many of the largest |z| make the raw score.
    pub top_k: usize,
    /// |z| is clipped here (a feature that never varied in training gets a tiny scale).
    pub z_clip: f64,
    /// Flag threshold on the calibrated score.
    pub threshold: f64,
}

impl Default for RobustParams {
    fn default() -> Self {
        Self {
            features: Vec::new(),
            top_k: 3,
            z_clip: 50.0,
            threshold: 0.99,
        }
    }
}

/// The fitted parameters (`baseline.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Baseline {
    /// Median of the transformed feature, per input feature.
    pub median: Vec<f64>,
    /// Robust scale of the transformed feature, per input feature.
    pub scale: Vec<f64>,
    /// Largest |z| averaged into the raw score.
    pub top_k: usize,
    /// |z| clip.
    pub z_clip: f64,
    /// Quantiles of the training raw scores (ascending), for calibration.
    pub calibration: Vec<f64>,
}

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

/// A scored event.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// Calibrated score in [0, 1].
    pub score: f64,
    /// Raw score (mean of the top |z|).
    pub raw: f64,
    /// Largest contributions first.
    pub reasons: Vec<Reason>,
}

fn t(x: f64) -> f64 {
    x.signum() * x.abs().ln_1p()
}

fn t_inv(y: f64) -> f64 {
    y.signum() * y.abs().exp_m1()
}

fn median(v: &mut [f64]) -> f64 {
    let n = v.len();
    let mid = n / 2;
    let (_, m, _) = v.select_nth_unstable_by(mid, f64::total_cmp);
    let m = *m;
    if n % 2 == 1 {
        m
    } else {
        let lower = v[..mid].iter().copied().fold(f64::NEG_INFINITY, f64::max);
        (lower + m) / 2.0
    }
}

/// A loaded or freshly fitted robust z-score model.
#[derive(Debug, Clone)]
pub struct RobustModel {
    /// Its manifest.
    pub manifest: Manifest,
    /// Its parameters.
    pub baseline: Baseline,
    /// Registry positions of the input features.
    idx: Vec<usize>,
}

impl RobustModel {
    /// Fits the model on feature rows (registry order, as the engine emits them).
    pub fn fit<'a>(
        registry: &Registry,
        params: &RobustParams,
        rows: impl IntoIterator<Item = &'a [f64]>,
        name: &str,
        training: Training,
    ) -> Result<Self> {
        if params.top_k == 0
            || params.z_clip.is_nan()
            || params.z_clip <= 0.0
            || !(0.0..=1.0).contains(&params.threshold)
        {
            return Err(ModelError::Fit(
                "top_k must be ≥ 1, z_clip > 0 and threshold in [0, 1]".into(),
            ));
        }
        let features: Vec<String> = if params.features.is_empty() {
            registry.names().map(String::from).collect()
        } else {
            params.features.clone()
        };
        let idx = resolve(registry, name, &features)?;
        let mut cols: Vec<Vec<f64>> = vec![Vec::new(); idx.len()];
        let mut n = 0u64;
        for row in rows {
            for (k, &i) in idx.iter().enumerate() {
                let x = row[i];
                if !x.is_finite() {
                    return Err(ModelError::Fit(format!(
                        "feature {} is not finite ({x}) in training row {n}",
                        features[k]
                    )));
                }
                cols[k].push(t(x));
            }
            n += 1;
        }
        if n == 0 {
            return Err(ModelError::Fit(
                "no training events (empty log, or no event with the label filter)".into(),
            ));
        }
        let mut med = Vec::with_capacity(idx.len());
        let mut scale = Vec::with_capacity(idx.len());
        for c in &cols {
            let mut v = c.clone();
            let m = median(&mut v);
            let mut dev: Vec<f64> = c.iter().map(|x| (x - m).abs()).collect();
            let mean_abs = dev.iter().sum::<f64>() / dev.len() as f64;
            let mad = median(&mut dev);
            // MAD, or the mean absolute deviation when more than half the values equal the
            // median, or a floor when the feature never varied.
            let s = (1.4826 * mad).max(1.2533 * mean_abs).max(1e-6);
            med.push(m);
            scale.push(s);
        }
        let mut model = Self {
            manifest: Manifest {
                format_version: MANIFEST_FORMAT,
                name: name.to_string(),
                version: "1".into(),
                kind: KIND.into(),
                feature_set: registry.hash.clone(),
                features,
                outputs: vec!["score".into()],
                threshold: params.threshold,
                calibration:
                    "empirical CDF of the training events' raw scores (baseline.json: calibration)"
                        .into(),
                training,
                artefacts: vec![BASELINE_FILE.into()],
                onnx: None,
                ensemble: None,
            },
            baseline: Baseline {
                median: med,
                scale,
                top_k: params.top_k,
                z_clip: params.z_clip,
                calibration: Vec::new(),
            },
            idx,
        };
        model.manifest.training.events = n;
        let mut raws: Vec<f64> = (0..n as usize)
            .map(|r| {
                let mut zs: Vec<f64> = cols
                    .iter()
                    .enumerate()
                    .map(|(k, c)| {
                        ((c[r] - model.baseline.median[k]) / model.baseline.scale[k])
                            .abs()
                            .min(params.z_clip)
                    })
                    .collect();
                top_mean(&mut zs, params.top_k)
            })
            .collect();
        raws.sort_by(f64::total_cmp);
        model.baseline.calibration = (0..=QUANTILES)
            .map(|q| raws[(q * (raws.len() - 1)) / QUANTILES])
            .collect();
        Ok(model)
    }

    /// Loads a model folder and checks it against the engine's registry.
    pub fn load(dir: &Path, registry: &Registry) -> Result<Self> {
        let manifest = Manifest::load(dir)?;
        let path = dir.join(BASELINE_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_parts(manifest, &text, &dir.display().to_string(), registry)
    }

    /// Builds a model from manifest and baseline texts (a model compiled into a binary);
    /// `origin` names it in errors.
    pub fn from_texts(
        manifest: &str,
        baseline: &str,
        origin: &str,
        registry: &Registry,
    ) -> Result<Self> {
        let m = Manifest::parse(manifest, &format!("{origin}/manifest.json"))?;
        Self::from_parts(m, baseline, origin, registry)
    }

    fn from_parts(
        manifest: Manifest,
        baseline_text: &str,
        origin: &str,
        registry: &Registry,
    ) -> Result<Self> {
        let dir = Path::new(origin);
        if manifest.kind != KIND {
            return Err(ModelError::Corrupt {
                path: dir.join("manifest.json").display().to_string(),
                reason: format!(
                    "detector kind {:?} is not supported by this build (known: {KIND})",
                    manifest.kind
                ),
            });
        }
        crate::check_feature_set(&manifest, registry)?;
        let idx = resolve(registry, &manifest.name, &manifest.features)?;
        let path = dir.join(BASELINE_FILE);
        let baseline: Baseline =
            serde_json::from_str(baseline_text).map_err(|e| ModelError::Corrupt {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        let n = idx.len();
        let finite = |v: &[f64]| v.iter().all(|x| x.is_finite());
        if baseline.median.len() != n
            || baseline.scale.len() != n
            || !finite(&baseline.median)
            || baseline.scale.iter().any(|s| !(s.is_finite() && *s > 0.0))
            || baseline.calibration.len() < 2
            || !finite(&baseline.calibration)
            || baseline.calibration.windows(2).any(|w| w[0] > w[1])
            || baseline.top_k == 0
        {
            return Err(ModelError::Corrupt {
                path: path.display().to_string(),
                reason: format!(
                    "expected {n} finite medians, {n} positive scales, top_k ≥ 1 and ascending calibration quantiles"
                ),
            });
        }
        Ok(Self {
            manifest,
            baseline,
            idx,
        })
    }

    /// Writes the model folder (`manifest.json`, `baseline.json`).
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.manifest.save(dir)?;
        let path = dir.join(BASELINE_FILE);
        let text = serde_json::to_string_pretty(&self.baseline).expect("baseline serialises");
        std::fs::write(&path, text + "\n").map_err(|source| ModelError::Io {
            path: path.display().to_string(),
            source,
        })
    }

    /// Scores one event's features (registry order). Non-finite feature values contribute
    /// nothing (the engine never produces them).
    pub fn score(&self, features: &[f64], reasons: usize) -> Scored {
        let b = &self.baseline;
        let mut zs: Vec<(f64, usize)> = self
            .idx
            .iter()
            .enumerate()
            .map(|(k, &i)| {
                let x = features[i];
                let z = if x.is_finite() {
                    ((t(x) - b.median[k]) / b.scale[k]).clamp(-b.z_clip, b.z_clip)
                } else {
                    0.0
                };
                (z, k)
            })
            .collect();
        // Largest |z| first, ties by feature order; only the first `m` need ordering.
        let by_size = |a: &(f64, usize), c: &(f64, usize)| {
            c.0.abs().total_cmp(&a.0.abs()).then(a.1.cmp(&c.1))
        };
        let m = b.top_k.max(reasons).min(zs.len());
        if m < zs.len() {
            zs.select_nth_unstable_by(m, by_size);
            zs.truncate(m);
        }
        zs.sort_by(by_size);
        let k = b.top_k.min(zs.len());
        let raw = zs[..k].iter().map(|(z, _)| z.abs()).sum::<f64>() / k as f64;
        let reasons = zs
            .iter()
            .take(reasons)
            .filter(|(z, _)| *z != 0.0)
            .map(|&(z, k)| Reason {
                feature: self.manifest.features[k].clone(),
                value: features[self.idx[k]],
                baseline: t_inv(b.median[k]),
                contribution: z,
            })
            .collect();
        Scored {
            score: calibrate(&b.calibration, raw),
            raw,
            reasons,
        }
    }

    /// `name@version`.
    pub fn id(&self) -> String {
        format!("{}@{}", self.manifest.name, self.manifest.version)
    }
}

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

fn top_mean(zs: &mut [f64], k: usize) -> f64 {
    let k = k.min(zs.len());
    zs.sort_by(|a, b| b.total_cmp(a));
    zs[..k].iter().sum::<f64>() / k as f64
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
