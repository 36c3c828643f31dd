//! Multivariate models fitted with linfa on feature tables, scored with ndarray in batches.
//!
//! Both standardise each input feature first: `z = (sign(x)·ln(1 + |x|) − mean) / std` over
//! the training events (a feature that never varied keeps std 1, so a change still counts).
//!
//! - `pca` keeps the principal components explaining `variance` of the training variance
//!   (eigen-decomposition of the covariance with linfa-linalg); the raw score is the squared
//!   reconstruction error `‖z − VVᵀz‖²`. Explanations are exact: a feature's contribution
//!   is its squared residual (signed by the residual), and they sum to the raw score.
//! - `gmm` is a Gaussian mixture (linfa-clustering, full covariances, random start) fitted
//!   on up to `max_rows` evenly spaced training events, on standardised values clipped to
//!   ±12, with 0.1 added to the covariances' diagonals (in standardised units: many features are
//!   near-collinear, such as one count at four horizons, and the factorisation needs the margin); the raw score is the negative
//!   log-likelihood `−ln p(z)`. Explanations split the Mahalanobis term of the most
//!   responsible component exactly, `½ (z − μ)ⱼ · (P(z − μ))ⱼ` per feature (terms can be
//!   negative when features covary); the mixture's other components are not split.
//!
//! Raw scores are calibrated like the robust baseline's: the position among the training
//! events' raw scores, growing towards 1 past the largest.

use std::path::Path;

use gatewatch_features::Registry;
use linfa::prelude::*;
use linfa_clustering::{GaussianMixtureModel, GmmInitMethod};
use linfa_linalg::cholesky::CholeskyInplace;
use linfa_linalg::eigh::{EigSort, EighInto};
use ndarray::{Array1, Array2, ArrayView2, Axis};
use rand_xoshiro::Xoshiro256Plus;
use rand_xoshiro::rand_core::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::common::{Reason, calibrate_open, calibration_quantiles, resolve, t, t_inv};
use crate::error::{ModelError, Result};
use crate::manifest::{MANIFEST_FORMAT, Manifest, Training};

/// The kind name of PCA models.
pub const PCA_KIND: &str = "pca";
/// The kind name of Gaussian mixtures.
pub const GMM_KIND: &str = "gmm";
const PARAMS_FILE: &str = "params.json";
/// The mixture sees standardised values clipped to ±this, so that one extreme value cannot
/// underflow every component's likelihood.
const GMM_CLIP: f64 = 12.0;

/// Fitting parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct MultiParams {
    /// Features to use (registry names); all of the registry when empty.
    pub features: Vec<String>,
    /// PCA: share of the variance the kept components explain.
    pub variance: f64,
    /// GMM: components.
    pub components: usize,
    /// GMM: at most this many training events (evenly spaced) are used.
    pub max_rows: usize,
    /// Flag threshold on the calibrated score.
    pub threshold: f64,
    /// Seed of the mixture's k-means start.
    pub seed: u64,
}

impl Default for MultiParams {
    fn default() -> Self {
        Self {
            features: Vec::new(),
            variance: 0.95,
            components: 4,
            max_rows: 20_000,
            threshold: 0.999,
            seed: 7,
        }
    }
}

/// What is fitted (`params.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MultiParamsFile {
    /// Training events.
    pub n: u64,
    /// Mean of the transformed features.
    pub mean: Vec<f64>,
    /// Their standard deviations (1 for a feature that never varied).
    pub std: Vec<f64>,
    /// PCA: kept components, one row each.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<Vec<f64>>,
    /// GMM: component weights.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub weights: Vec<f64>,
    /// GMM: component means (standardised units).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub means: Vec<Vec<f64>>,
    /// GMM: lower Cholesky factors `L` of the components' precisions (`P = L Lᵀ`), row-major.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub precision_cholesky: Vec<Vec<f64>>,
    /// Ascending quantiles of the training raw scores.
    pub calibration: Vec<f64>,
}

/// A PCA or GMM model.
#[derive(Debug, Clone)]
pub struct MultiModel {
    /// Its manifest.
    pub manifest: Manifest,
    /// Its parameters.
    pub params: MultiParamsFile,
    idx: Vec<usize>,
    components: Array2<f64>,
    log_weights: Vec<f64>,
    means: Vec<Array1<f64>>,
    chol: Vec<Array2<f64>>,
    /// Per component: ln det L − d/2 · ln 2π.
    log_norm: Vec<f64>,
}

impl MultiModel {
    /// Fits a `pca` or `gmm` model on feature rows (registry order).
    pub fn fit<'a>(
        kind: &str,
        registry: &Registry,
        params: &MultiParams,
        rows: impl IntoIterator<Item = &'a [f64]>,
        name: &str,
        mut training: Training,
    ) -> Result<Self> {
        if kind != PCA_KIND && kind != GMM_KIND {
            return Err(ModelError::Fit(format!(
                "unknown multivariate kind {kind:?} (known: {PCA_KIND}, {GMM_KIND})"
            )));
        }
        if !(params.variance > 0.0 && params.variance <= 1.0)
            || params.components == 0
            || params.max_rows == 0
            || !(0.0..=1.0).contains(&params.threshold)
        {
            return Err(ModelError::Fit(
                "variance must be in (0, 1], components and max_rows ≥ 1, threshold in [0, 1]"
                    .into(),
            ));
        }
        let features: Vec<String> = if params.features.is_empty() {
            registry.names().map(String::from).collect()
        } else {
            params.features.clone()
        };
        let idx = resolve(registry, name, &features)?;
        let d = idx.len();
        let mut data: Vec<f64> = Vec::new();
        let mut n = 0usize;
        for row in rows {
            for (k, &i) in idx.iter().enumerate() {
                let x = row[i];
                if !x.is_finite() {
                    return Err(ModelError::Fit(format!(
                        "feature {} is not finite ({x}) in training row {n}",
                        features[k]
                    )));
                }
                data.push(t(x));
            }
            n += 1;
        }
        if n < 2 {
            return Err(ModelError::Fit(format!(
                "{n} training events; a {kind} model needs at least 2"
            )));
        }
        let mut z = Array2::from_shape_vec((n, d), data).expect("n rows of d values");
        let mean = z.mean_axis(Axis(0)).expect("n ≥ 2");
        let std = z
            .std_axis(Axis(0), 0.0)
            .mapv(|s| if s > 1e-9 { s } else { 1.0 });
        z -= &mean;
        z /= &std;
        let mut file = MultiParamsFile {
            n: n as u64,
            mean: mean.to_vec(),
            std: std.to_vec(),
            components: Vec::new(),
            weights: Vec::new(),
            means: Vec::new(),
            precision_cholesky: Vec::new(),
            calibration: Vec::new(),
        };
        if kind == PCA_KIND {
            let cov = z.t().dot(&z) / (n as f64 - 1.0);
            let (vals, vecs) = cov
                .eigh_into()
                .map_err(|e| ModelError::Fit(format!("eigen-decomposition: {e}")))?
                .sort_eig_desc();
            let total: f64 = vals.iter().map(|v| v.max(0.0)).sum();
            let mut kept = 0;
            let mut acc = 0.0;
            while kept < d && (total <= 0.0 || acc / total < params.variance) {
                acc += vals[kept].max(0.0);
                kept += 1;
            }
            let kept = kept.max(1);
            file.components = (0..kept).map(|c| vecs.column(c).to_vec()).collect();
        } else {
            let step = n.div_ceil(params.max_rows);
            let picked: Vec<usize> = (0..n).step_by(step).collect();
            let sample = z
                .select(Axis(0), &picked)
                .mapv(|v| v.clamp(-GMM_CLIP, GMM_CLIP));
            let gmm = GaussianMixtureModel::params(params.components)
                .reg_covariance(0.1)
                .init_method(GmmInitMethod::Random)
                .max_n_iterations(100)
                .tolerance(1e-3)
                .with_rng(Xoshiro256Plus::seed_from_u64(params.seed))
                .fit(&DatasetBase::from(sample))
                .map_err(|e| ModelError::Fit(format!("Gaussian mixture: {e}")))?;
            file.weights = gmm.weights().to_vec();
            file.means = gmm.means().rows().into_iter().map(|r| r.to_vec()).collect();
            for p in gmm.precisions().outer_iter() {
                let l = p.to_owned().cholesky_into().map_err(|e| {
                    ModelError::Fit(format!("precision not positive definite: {e}"))
                })?;
                file.precision_cholesky.push(l.iter().copied().collect());
            }
        }
        training.events = n as u64;
        let manifest = Manifest {
            format_version: MANIFEST_FORMAT,
            name: name.to_string(),
            version: "1".into(),
            kind: kind.into(),
            feature_set: registry.hash.clone(),
            features,
            outputs: vec!["score".into()],
            threshold: params.threshold,
            calibration: "empirical CDF of the training events' raw scores (params.json: calibration), open above".into(),
            training,
            artefacts: vec![PARAMS_FILE.into()],
            onnx: None,
            ensemble: None,
            monitor: None,
        };
        let mut model = Self::new(manifest, file, idx, "")?;
        if kind == GMM_KIND {
            z.mapv_inplace(|v| v.clamp(-GMM_CLIP, GMM_CLIP));
        }
        let mut raws = model.raw_standardised(z.view());
        raws.sort_by(f64::total_cmp);
        model.params.calibration = calibration_quantiles(&raws);
        Ok(model)
    }

    fn new(
        manifest: Manifest,
        params: MultiParamsFile,
        idx: Vec<usize>,
        origin: &str,
    ) -> Result<Self> {
        let d = idx.len();
        let corrupt = |reason: String| ModelError::Corrupt {
            path: format!("{origin}/{PARAMS_FILE}"),
            reason,
        };
        let finite = |v: &[f64]| v.iter().all(|x| x.is_finite());
        if params.mean.len() != d
            || params.std.len() != d
            || !finite(&params.mean)
            || params.std.iter().any(|s| !(s.is_finite() && *s > 0.0))
            || params.n == 0
        {
            return Err(corrupt(format!(
                "expected {d} finite means and {d} positive standard deviations"
            )));
        }
        let pca = manifest.kind == PCA_KIND;
        let mut components = Array2::zeros((0, d));
        let (mut log_weights, mut means, mut chol, mut log_norm) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        if pca {
            if params.components.is_empty()
                || params.components.iter().any(|c| c.len() != d || !finite(c))
            {
                return Err(corrupt(format!("expected components of {d} finite values")));
            }
            components =
                Array2::from_shape_vec((params.components.len(), d), params.components.concat())
                    .expect("checked lengths");
        } else {
            let k = params.weights.len();
            if k == 0
                || params.means.len() != k
                || params.precision_cholesky.len() != k
                || params.weights.iter().any(|w| !(w.is_finite() && *w > 0.0))
                || params.means.iter().any(|m| m.len() != d || !finite(m))
                || params
                    .precision_cholesky
                    .iter()
                    .any(|l| l.len() != d * d || !finite(l))
            {
                return Err(corrupt(format!(
                    "expected positive weights, means of {d} values and {d}×{d} Cholesky factors per component"
                )));
            }
            for (j, w) in params.weights.iter().enumerate() {
                let l = Array2::from_shape_vec((d, d), params.precision_cholesky[j].clone())
                    .expect("checked length");
                let diag: Vec<f64> = (0..d).map(|i| l[[i, i]]).collect();
                if diag.iter().any(|v| *v <= 0.0) {
                    return Err(corrupt(format!(
                        "component {j}: the Cholesky factor's diagonal must be positive"
                    )));
                }
                log_weights.push(w.ln());
                means.push(Array1::from(params.means[j].clone()));
                log_norm.push(
                    diag.iter().map(|v| v.ln()).sum::<f64>()
                        - 0.5 * d as f64 * (2.0 * std::f64::consts::PI).ln(),
                );
                chol.push(l);
            }
        }
        if !params.calibration.is_empty()
            && (params.calibration.len() < 2
                || !finite(&params.calibration)
                || params.calibration.windows(2).any(|w| w[0] > w[1]))
        {
            return Err(corrupt(
                "calibration quantiles must be finite and ascending".into(),
            ));
        }
        Ok(Self {
            manifest,
            params,
            idx,
            components,
            log_weights,
            means,
            chol,
            log_norm,
        })
    }

    /// Loads a `pca` or `gmm` folder's model from its manifest and `params.json` text.
    pub fn from_text(
        manifest: Manifest,
        params: &str,
        origin: &str,
        registry: &Registry,
    ) -> Result<Self> {
        if manifest.kind != PCA_KIND && manifest.kind != GMM_KIND {
            return Err(ModelError::Corrupt {
                path: format!("{origin}/manifest.json"),
                reason: format!(
                    "detector kind {:?}, expected {PCA_KIND:?} or {GMM_KIND:?}",
                    manifest.kind
                ),
            });
        }
        crate::check_feature_set(&manifest, registry)?;
        let idx = resolve(registry, &manifest.name, &manifest.features)?;
        let p: MultiParamsFile = serde_json::from_str(params).map_err(|e| ModelError::Corrupt {
            path: format!("{origin}/{PARAMS_FILE}"),
            reason: e.to_string(),
        })?;
        if p.calibration.len() < 2 {
            return Err(ModelError::Corrupt {
                path: format!("{origin}/{PARAMS_FILE}"),
                reason: "calibration quantiles missing".into(),
            });
        }
        Self::new(manifest, p, idx, origin)
    }

    /// Loads a model folder.
    pub fn load(dir: &Path, registry: &Registry) -> Result<Self> {
        let manifest = Manifest::load(dir)?;
        let path = dir.join(PARAMS_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_text(manifest, &text, &dir.display().to_string(), registry)
    }

    /// Writes the model folder (`manifest.json`, `params.json`).
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.manifest.save(dir)?;
        let path = dir.join(PARAMS_FILE);
        let text = serde_json::to_string(&self.params).expect("parameters serialise");
        std::fs::write(&path, text + "\n").map_err(|source| ModelError::Io {
            path: path.display().to_string(),
            source,
        })
    }

    /// Standardised inputs of registry-ordered rows (`stride` values each).
    fn standardise(&self, rows: &[f64], stride: usize) -> Array2<f64> {
        let b = rows.len() / stride;
        let d = self.idx.len();
        let mut z = Array2::zeros((b, d));
        for (r, row) in rows.chunks_exact(stride).enumerate() {
            for (k, &i) in self.idx.iter().enumerate() {
                let x = row[i];
                z[[r, k]] = if x.is_finite() {
                    let v = (t(x) - self.params.mean[k]) / self.params.std[k];
                    if self.manifest.kind == GMM_KIND {
                        v.clamp(-GMM_CLIP, GMM_CLIP)
                    } else {
                        v
                    }
                } else {
                    0.0
                };
            }
        }
        z
    }

    /// Per component, `L` applied to each row's offset from the mean: `(z − μ) L`, whose
    /// squared norm is the Mahalanobis distance.
    fn whitened(&self, z: ArrayView2<'_, f64>, j: usize) -> Array2<f64> {
        (&z - &self.means[j]).dot(&self.chol[j])
    }

    fn raw_standardised(&self, z: ArrayView2<'_, f64>) -> Vec<f64> {
        if self.manifest.kind == PCA_KIND {
            let proj = z.dot(&self.components.t());
            let resid = &z - &proj.dot(&self.components);
            resid.rows().into_iter().map(|r| r.dot(&r)).collect()
        } else {
            let k = self.means.len();
            let mut lp = Array2::zeros((z.nrows(), k));
            for j in 0..k {
                let w = self.whitened(z, j);
                for (r, row) in w.rows().into_iter().enumerate() {
                    lp[[r, j]] = self.log_weights[j] + self.log_norm[j] - 0.5 * row.dot(&row);
                }
            }
            lp.rows()
                .into_iter()
                .map(|r| {
                    let m = r.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    -(m + r.iter().map(|v| (v - m).exp()).sum::<f64>().ln())
                })
                .collect()
        }
    }

    /// Scores of a batch of registry-ordered rows, appended to `out`.
    pub fn score_batch(&self, rows: &[f64], stride: usize, out: &mut Vec<f64>) {
        if stride == 0 || rows.is_empty() {
            return;
        }
        let z = self.standardise(rows, stride);
        out.extend(
            self.raw_standardised(z.view())
                .into_iter()
                .map(|r| calibrate_open(&self.params.calibration, r, self.params.n)),
        );
    }

    /// The `k` largest contributions to one row's raw score (see the module's notes).
    pub fn explain(&self, row: &[f64], k: usize) -> Vec<Reason> {
        if k == 0 {
            return Vec::new();
        }
        let z = self.standardise(row, row.len());
        let contrib: Vec<f64> = if self.manifest.kind == PCA_KIND {
            let proj = z.dot(&self.components.t());
            let resid = &z - &proj.dot(&self.components);
            resid.row(0).iter().map(|r| r * r.abs()).collect()
        } else {
            // The most responsible component, and its Mahalanobis term split per feature.
            let mut best = (f64::NEG_INFINITY, 0);
            for j in 0..self.means.len() {
                let w = self.whitened(z.view(), j);
                let lp = self.log_weights[j] + self.log_norm[j] - 0.5 * w.row(0).dot(&w.row(0));
                if lp > best.0 {
                    best = (lp, j);
                }
            }
            let j = best.1;
            let off = &z.row(0) - &self.means[j];
            let l = &self.chol[j];
            let p_off = l.dot(&l.t().dot(&off));
            off.iter()
                .zip(p_off.iter())
                .map(|(a, b)| 0.5 * a * b)
                .collect()
        };
        let mut order: Vec<usize> = (0..contrib.len()).collect();
        order.sort_by(|&a, &b| {
            contrib[b]
                .abs()
                .total_cmp(&contrib[a].abs())
                .then(a.cmp(&b))
        });
        order
            .into_iter()
            .take(k)
            .filter(|&j| contrib[j] != 0.0)
            .map(|j| Reason {
                feature: self.manifest.features[j].clone(),
                value: row[self.idx[j]],
                baseline: t_inv(self.params.mean[j]),
                contribution: contrib[j],
            })
            .collect()
    }

    /// The raw score of one row (squared reconstruction error or negative log-likelihood).
    pub fn raw(&self, row: &[f64]) -> f64 {
        let z = self.standardise(row, row.len());
        self.raw_standardised(z.view())[0]
    }

    /// `name@version`.
    pub fn id(&self) -> String {
        format!("{}@{}", self.manifest.name, self.manifest.version)
    }
}
