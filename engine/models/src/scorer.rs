//! Scorers: any model folder — one detector, or an ensemble of named detectors combined by
//! maximum or weighted mean — scoring micro-batches of events.
//!
//! An ensemble folder's manifest has kind `ensemble` and an `ensemble` section listing its
//! members (name, sub-folder, weight); each member is a model folder of its own. With
//! `combine = "max"` the score is the largest member score and an event is flagged when any
//! member reaches its own threshold; with `"weighted_mean"` the score is the weighted mean
//! and the ensemble's threshold flags. Every member's score is kept by name; the reasons are
//! those of the member that decided (the highest-scoring flagging member, else the
//! highest-scoring one).

use std::path::{Path, PathBuf};

use gatewatch_features::Registry;

use crate::common::{Reason, tail_bits};
use crate::error::{ModelError, Result};
use crate::manifest::Manifest;
use crate::monitor::{EndpointMonitor, MonitorBaselines, MonitorParams};
use crate::multivariate::{self, MultiModel};
use crate::onnx::{self, OnnxModel};
use crate::robust::{self, RobustModel};
use crate::volumetric::{self, VolumetricModel};

pub use crate::manifest::{Combine, ENSEMBLE_KIND, EnsembleSpec, MemberSpec};

/// A model folder on disk, or files compiled into a binary.
#[derive(Debug, Clone)]
pub enum Folder {
    /// A directory.
    Disk(PathBuf),
    /// `(relative path, text)` pairs under a root; `origin` names it in errors.
    Embedded {
        /// The files.
        files: &'static [(&'static str, &'static str)],
        /// The sub-folder (empty for the root).
        prefix: String,
        /// What to call it in messages.
        origin: String,
    },
}

impl Folder {
    fn name(&self) -> String {
        match self {
            Folder::Disk(p) => p.display().to_string(),
            Folder::Embedded { origin, prefix, .. } if prefix.is_empty() => origin.clone(),
            Folder::Embedded { origin, prefix, .. } => format!("{origin}/{prefix}"),
        }
    }

    fn join(&self, sub: &str) -> Folder {
        match self {
            Folder::Disk(p) => Folder::Disk(p.join(sub)),
            Folder::Embedded {
                files,
                prefix,
                origin,
            } => Folder::Embedded {
                files,
                prefix: if prefix.is_empty() {
                    sub.to_string()
                } else {
                    format!("{prefix}/{sub}")
                },
                origin: origin.clone(),
            },
        }
    }

    fn read(&self, file: &str) -> Result<String> {
        match self {
            Folder::Disk(p) => {
                let path = p.join(file);
                std::fs::read_to_string(&path).map_err(|source| ModelError::Io {
                    path: path.display().to_string(),
                    source,
                })
            }
            Folder::Embedded { files, prefix, .. } => {
                let want = if prefix.is_empty() {
                    file.to_string()
                } else {
                    format!("{prefix}/{file}")
                };
                files
                    .iter()
                    .find(|(p, _)| *p == want)
                    .map(|(_, t)| (*t).to_string())
                    .ok_or_else(|| ModelError::Io {
                        path: format!("{}/{file}", self.name()),
                        source: std::io::Error::from(std::io::ErrorKind::NotFound),
                    })
            }
        }
    }
}

/// One detector.
#[derive(Debug)]
pub enum Detector {
    /// Robust z-scores.
    Robust(RobustModel),
    /// Per-endpoint rate baselines.
    Volumetric(VolumetricModel),
    /// A PCA or Gaussian-mixture model (linfa).
    Multi(Box<MultiModel>),
    /// An ONNX model.
    Onnx(Box<OnnxModel>),
}

impl Detector {
    fn manifest(&self) -> &Manifest {
        match self {
            Detector::Robust(m) => &m.manifest,
            Detector::Volumetric(m) => &m.manifest,
            Detector::Multi(m) => &m.manifest,
            Detector::Onnx(m) => &m.manifest,
        }
    }
}

/// A named detector of a scorer.
#[derive(Debug)]
pub struct Member {
    /// Name in score records.
    pub name: String,
    /// Weight in a weighted mean.
    pub weight: f64,
    /// Flag threshold.
    pub threshold: f64,
    /// The detector.
    pub detector: Detector,
}

/// Events to score: feature rows (registry order) and their endpoints.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    rows: Vec<f64>,
    text: String,
    ends: Vec<usize>,
}

impl Batch {
    /// Adds an event.
    pub fn push(&mut self, features: &[f64], endpoint: &str) {
        self.rows.extend_from_slice(features);
        self.text.push_str(endpoint);
        self.ends.push(self.text.len());
    }

    /// Events in the batch.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The feature rows, one after the other.
    pub fn rows(&self) -> &[f64] {
        &self.rows
    }

    /// Event `i`'s endpoint.
    pub fn endpoint(&self, i: usize) -> &str {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.text[start..self.ends[i]]
    }

    /// Empties the batch.
    pub fn clear(&mut self) {
        self.rows.clear();
        self.text.clear();
        self.ends.clear();
    }
}

/// Scores of a batch.
#[derive(Debug, Default, Clone)]
pub struct BatchScores {
    /// Combined score per event.
    pub score: Vec<f64>,
    /// The combined score's tail as surprisal, `−log2(1 − score)` bits per event, at full
    /// resolution where the score rounds to 1.0 (the robust detector's; the others' are
    /// computed from their scores). With the maximum combination, the highest member's.
    pub surprisal: Vec<f64>,
    /// Member scores, `members` per event.
    pub member: Vec<f64>,
    /// Flagged per event.
    pub flagged: Vec<bool>,
    /// Reasons per event (of the deciding member).
    pub reasons: Vec<Vec<Reason>>,
    /// The deciding member per event.
    pub decided_by: Vec<usize>,
    raw: Vec<f64>,
    member_bits: Vec<f64>,
}

/// A loaded model: one or several detectors.
#[derive(Debug)]
pub struct Scorer {
    /// Its manifest (the ensemble's, or the single detector's).
    pub manifest: Manifest,
    /// How member scores combine.
    pub combine: Combine,
    /// Flag threshold of a weighted mean.
    pub threshold: f64,
    /// The detectors.
    pub members: Vec<Member>,
    /// The endpoint monitor's baselines learnt on the training traffic, if the model has
    /// them.
    pub monitor: Option<MonitorBaselines>,
}

fn load_detector(folder: &Folder, registry: &Registry) -> Result<(Manifest, Option<Detector>)> {
    let origin = folder.name();
    let mtext = folder.read("manifest.json")?;
    let manifest = Manifest::parse(&mtext, &format!("{origin}/manifest.json"))?;
    let d = match manifest.kind.as_str() {
        robust::KIND => Some(Detector::Robust(RobustModel::from_texts(
            &mtext,
            &folder.read("baseline.json")?,
            &origin,
            registry,
        )?)),
        volumetric::KIND => Some(Detector::Volumetric(VolumetricModel::from_text(
            manifest.clone(),
            &folder.read("limits.json")?,
            &origin,
            registry,
        )?)),
        multivariate::PCA_KIND | multivariate::GMM_KIND => {
            Some(Detector::Multi(Box::new(MultiModel::from_text(
                manifest.clone(),
                &folder.read("params.json")?,
                &origin,
                registry,
            )?)))
        }
        onnx::KIND => match folder {
            Folder::Disk(dir) => Some(Detector::Onnx(Box::new(OnnxModel::from_manifest(
                manifest.clone(),
                dir,
                Some(registry),
            )?))),
            Folder::Embedded { .. } => {
                return Err(ModelError::Corrupt {
                    path: format!("{origin}/manifest.json"),
                    reason: "an embedded model cannot hold an ONNX file".into(),
                });
            }
        },
        ENSEMBLE_KIND => None,
        k => {
            return Err(ModelError::Corrupt {
                path: format!("{origin}/manifest.json"),
                reason: format!(
                    "detector kind {k:?} is not supported by this build (known: {}, {}, {}, {}, {}, {ENSEMBLE_KIND})",
                    robust::KIND,
                    volumetric::KIND,
                    multivariate::PCA_KIND,
                    multivariate::GMM_KIND,
                    onnx::KIND
                ),
            });
        }
    };
    Ok((manifest, d))
}

impl Scorer {
    /// Loads a model folder of any kind.
    pub fn load(dir: &Path, registry: &Registry) -> Result<Self> {
        Self::load_folder(&Folder::Disk(dir.to_path_buf()), registry)
    }

    /// Loads a model folder of any kind from disk or compiled-in files.
    pub fn load_folder(folder: &Folder, registry: &Registry) -> Result<Self> {
        let (manifest, d) = load_detector(folder, registry)?;
        if let Some(d) = d {
            return Ok(Self::single(manifest.name.clone(), d));
        }
        let origin = folder.name();
        let corrupt = |reason: String| ModelError::Corrupt {
            path: format!("{origin}/manifest.json"),
            reason,
        };
        crate::check_feature_set(&manifest, registry)?;
        let Some(spec) = manifest.ensemble.clone() else {
            return Err(corrupt("an ensemble needs an \"ensemble\" section".into()));
        };
        if spec.members.is_empty() {
            return Err(corrupt("an ensemble needs at least one member".into()));
        }
        let mut members = Vec::with_capacity(spec.members.len());
        for m in &spec.members {
            if !(m.weight.is_finite() && m.weight >= 0.0) {
                return Err(corrupt(format!(
                    "member {:?}: weight {} is not a finite number ≥ 0",
                    m.name, m.weight
                )));
            }
            if members.iter().any(|x: &Member| x.name == m.name) {
                return Err(corrupt(format!("member name {:?} appears twice", m.name)));
            }
            let sub = folder.join(&m.path);
            if let (Folder::Disk(root), Folder::Disk(dir)) = (folder, &sub) {
                // A symbolic link may still lead out of the folder.
                if let (Ok(r), Ok(d)) = (root.canonicalize(), dir.canonicalize()) {
                    if !d.starts_with(&r) {
                        return Err(corrupt(format!(
                            "member {:?}: path {:?} leads out of the model folder (to {})",
                            m.name,
                            m.path,
                            d.display()
                        )));
                    }
                }
            }
            let (_, d) = load_detector(&sub, registry)?;
            let Some(d) = d else {
                return Err(corrupt(format!(
                    "member {:?} is itself an ensemble (not supported)",
                    m.name
                )));
            };
            members.push(Member {
                name: m.name.clone(),
                weight: m.weight,
                threshold: d.manifest().threshold,
                detector: d,
            });
        }
        if spec.combine == Combine::WeightedMean && members.iter().all(|m| m.weight == 0.0) {
            return Err(corrupt("all member weights are 0".into()));
        }
        let monitor = match &manifest.monitor {
            Some(f) => Some(MonitorBaselines::parse(&folder.read(f)?).map_err(|reason| {
                ModelError::Corrupt {
                    path: format!("{origin}/{f}"),
                    reason,
                }
            })?),
            None => None,
        };
        Ok(Self {
            threshold: manifest.threshold,
            combine: spec.combine,
            manifest,
            members,
            monitor,
        })
    }

    /// The endpoint monitor (default parameters) this model starts: from its failure
    /// baselines when it has them, else learning each endpoint's share in a warm-up.
    pub fn endpoint_monitor(
        &self,
    ) -> std::result::Result<EndpointMonitor, crate::univariate::DetectorError> {
        match &self.monitor {
            Some(b) => EndpointMonitor::with_baselines(MonitorParams::default(), b),
            None => EndpointMonitor::new(MonitorParams::default()),
        }
    }

    /// A scorer of one detector, its score named `name`.
    pub fn single(name: String, detector: Detector) -> Self {
        let manifest = detector.manifest().clone();
        let member_name = match &detector {
            Detector::Robust(_) => robust::KIND.to_string(),
            Detector::Volumetric(_) => volumetric::KIND.to_string(),
            Detector::Multi(m) => m.manifest.kind.clone(),
            Detector::Onnx(_) => name,
        };
        Self {
            threshold: manifest.threshold,
            combine: Combine::Max,
            members: vec![Member {
                name: member_name,
                weight: 1.0,
                threshold: manifest.threshold,
                detector,
            }],
            manifest,
            monitor: None,
        }
    }

    /// `name@version`.
    pub fn id(&self) -> String {
        format!("{}@{}", self.manifest.name, self.manifest.version)
    }

    /// Scores a batch; `reasons` explanations per event at most (ONNX members explain only
    /// flagged events: each explanation costs a batch of one row per input feature).
    pub fn score_batch(
        &mut self,
        batch: &Batch,
        stride: usize,
        reasons: usize,
        out: &mut BatchScores,
    ) -> Result<()> {
        let n = batch.len();
        let k = self.members.len();
        out.score.clear();
        out.surprisal.clear();
        out.flagged.clear();
        out.decided_by.clear();
        out.member.clear();
        out.member.resize(n * k, 0.0);
        out.reasons.resize_with(n, Vec::new);
        out.reasons.truncate(n);
        for r in &mut out.reasons {
            r.clear();
        }
        // Member scores; robust and volumetric reasons are kept as they come (cheap), the
        // deciding member's are kept. Member surprisal: exact for robust members, from the
        // score for the others.
        let mut own: Vec<Vec<Vec<Reason>>> = Vec::new();
        out.member_bits.clear();
        out.member_bits.resize(n * k, 0.0);
        for (j, m) in self.members.iter_mut().enumerate() {
            let mut rs: Vec<Vec<Reason>> = Vec::new();
            match &mut m.detector {
                Detector::Robust(d) => {
                    let mut scratch = Vec::new();
                    for i in 0..n {
                        let s = d.score_with(
                            &batch.rows[i * stride..(i + 1) * stride],
                            reasons,
                            &mut scratch,
                        );
                        out.member[i * k + j] = s.score;
                        out.member_bits[i * k + j] = s.surprisal;
                        rs.push(s.reasons);
                    }
                }
                Detector::Volumetric(d) => {
                    for i in 0..n {
                        let (s, r) =
                            d.score(&batch.rows[i * stride..(i + 1) * stride], batch.endpoint(i));
                        out.member[i * k + j] = s;
                        out.member_bits[i * k + j] = tail_bits(s);
                        rs.push(r.into_iter().take(reasons).collect());
                    }
                }
                Detector::Multi(d) => {
                    out.raw.clear();
                    d.score_batch(&batch.rows, stride, &mut out.raw);
                    for i in 0..n {
                        out.member[i * k + j] = out.raw[i];
                        out.member_bits[i * k + j] = tail_bits(out.raw[i]);
                    }
                }
                Detector::Onnx(d) => {
                    out.raw.clear();
                    d.score_batch(&batch.rows, stride, &mut out.raw)?;
                    for i in 0..n {
                        out.member[i * k + j] = out.raw[i];
                        out.member_bits[i * k + j] = tail_bits(out.raw[i]);
                    }
                }
            }
            own.push(rs);
        }
        #[allow(clippy::needless_range_loop, reason = "i indexes five parallel arrays")]
        for i in 0..n {
            let s = &out.member[i * k..(i + 1) * k];
            let (score, flagged, surprisal) = match self.combine {
                Combine::Max => (
                    s.iter().copied().fold(0.0, f64::max),
                    self.members.iter().zip(s).any(|(m, &v)| v >= m.threshold),
                    out.member_bits[i * k..(i + 1) * k]
                        .iter()
                        .copied()
                        .fold(0.0, f64::max),
                ),
                Combine::WeightedMean => {
                    let w: f64 = self.members.iter().map(|m| m.weight).sum();
                    let v = self
                        .members
                        .iter()
                        .zip(s)
                        .map(|(m, &v)| m.weight * v)
                        .sum::<f64>()
                        / w;
                    (v, v >= self.threshold, tail_bits(v))
                }
            };
            // The deciding member: the highest-scoring flagging one, else the highest.
            let mut best = 0;
            let mut best_key = (false, f64::NEG_INFINITY);
            for (j, m) in self.members.iter().enumerate() {
                let key = (s[j] >= m.threshold, s[j]);
                if key.0 && !best_key.0 || key.0 == best_key.0 && key.1 > best_key.1 {
                    best = j;
                    best_key = key;
                }
            }
            out.score.push(score);
            out.surprisal.push(surprisal);
            out.flagged.push(flagged);
            out.decided_by.push(best);
            if reasons > 0 {
                out.reasons[i] = match &mut self.members[best].detector {
                    Detector::Onnx(d) if flagged => {
                        d.explain(&batch.rows[i * stride..(i + 1) * stride], reasons)?
                    }
                    Detector::Onnx(_) => Vec::new(),
                    Detector::Multi(d) => {
                        d.explain(&batch.rows[i * stride..(i + 1) * stride], reasons)
                    }
                    _ => std::mem::take(&mut own[best][i]),
                };
            }
        }
        Ok(())
    }
}
