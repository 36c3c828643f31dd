//! `manifest.json` of a model folder.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

/// Version of the manifest format this build reads and writes.
pub const MANIFEST_FORMAT: u32 = 1;

/// What a model folder holds and what it was built for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Manifest format version.
    pub format_version: u32,
    /// Model name.
    pub name: String,
    /// Model version.
    pub version: String,
    /// Detector kind: `robust_zscore`, `volumetric_rate`, `onnx` or `ensemble`.
    pub kind: String,
    /// Hash of the feature registry the model was built for.
    pub feature_set: String,
    /// Input features in the order the model reads them.
    pub features: Vec<String>,
    /// Output names.
    pub outputs: Vec<String>,
    /// Score at and above which an event is flagged.
    pub threshold: f64,
    /// How raw scores become scores in [0, 1].
    pub calibration: String,
    /// What the model was trained on.
    pub training: Training,
    /// Other files of the folder.
    pub artefacts: Vec<String>,
    /// How to run an `onnx` model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onnx: Option<OnnxSpec>,
    /// Members of an `ensemble`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ensemble: Option<EnsembleSpec>,
    /// The endpoint monitor's baselines learnt on the training traffic (a file of the
    /// folder, `monitor.json`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monitor: Option<String>,
}

/// Training data description.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Training {
    /// Events the model was fitted on.
    pub events: u64,
    /// Distinct clients among them.
    pub clients: u64,
    /// Where they came from.
    pub source: String,
    /// Only events with this label were used, if set.
    pub label_filter: Option<String>,
    /// What the traffic was, in words (`gatewatch train --describe`), if given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Checks that a path named by a manifest stays inside the model folder: relative, without
/// `..`, not empty.
pub fn confined(p: &str) -> std::result::Result<(), String> {
    use std::path::Component;
    let path = Path::new(p);
    if p.is_empty() {
        return Err("empty path".into());
    }
    if p.contains('\0') {
        return Err(format!("{p:?} contains a NUL byte"));
    }
    if path
        .components()
        .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        Ok(())
    } else {
        Err(format!(
            "{p:?} leaves the model folder (paths must be relative, without `..`)"
        ))
    }
}

impl Manifest {
    /// Reads `dir/manifest.json`.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join("manifest.json");
        let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Parses manifest text; `path` names it in errors.
    pub fn parse(text: &str, path: &str) -> Result<Self> {
        let corrupt = |reason: String| ModelError::Corrupt {
            path: path.to_string(),
            reason,
        };
        let m: Self = serde_json::from_str(text).map_err(|e| corrupt(e.to_string()))?;
        if m.format_version != MANIFEST_FORMAT {
            return Err(corrupt(format!(
                "manifest format {} (this build reads {MANIFEST_FORMAT})",
                m.format_version
            )));
        }
        if !(m.threshold.is_finite() && (0.0..=1.0).contains(&m.threshold)) {
            return Err(corrupt(format!(
                "threshold: {} is not a score in [0, 1]",
                m.threshold
            )));
        }
        if m.name.trim().is_empty() {
            return Err(corrupt("name: empty".into()));
        }
        for a in &m.artefacts {
            confined(a).map_err(|e| corrupt(format!("artefacts: {e}")))?;
        }
        if let Some(f) = &m.monitor {
            confined(f).map_err(|e| corrupt(format!("monitor: {e}")))?;
        }
        if let Some(o) = &m.onnx {
            confined(&o.file).map_err(|e| corrupt(format!("onnx.file: {e}")))?;
        }
        if let Some(e) = &m.ensemble {
            for member in &e.members {
                confined(&member.path).map_err(|err| {
                    corrupt(format!("ensemble member {:?}: path {err}", member.name))
                })?;
            }
        }
        if let Some(dup) = m
            .features
            .iter()
            .enumerate()
            .find(|(i, f)| m.features[..*i].contains(f))
        {
            return Err(corrupt(format!("features: {:?} appears twice", dup.1)));
        }
        Ok(m)
    }

    /// Writes `dir/manifest.json` (creating `dir`).
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|source| ModelError::Io {
            path: dir.display().to_string(),
            source,
        })?;
        let path = dir.join("manifest.json");
        let text = serde_json::to_string_pretty(self).expect("manifest serialises");
        std::fs::write(&path, text + "\n").map_err(|source| ModelError::Io {
            path: path.display().to_string(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_folder() {
        for ok in ["a", "a/b.json", "./m/model.onnx"] {
            confined(ok).unwrap();
        }
        for bad in ["", "../x", "a/../../x", "/etc/passwd", "a/..", "x\0y"] {
            assert!(confined(bad).is_err(), "{bad:?}");
        }
    }
}

/// The `onnx` section of a manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnnxSpec {
    /// The model file, relative to the folder.
    pub file: String,
    /// Input name; the model's first input when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
    /// Output holding the score (a float tensor `[batch]` or `[batch, k]`).
    pub output: String,
    /// Column of a `[batch, k]` output (e.g. 1 for the positive class's probability).
    #[serde(default)]
    pub column: usize,
    /// The output is larger for more normal events (IsolationForest's decision scores): it
    /// is negated before calibration.
    #[serde(default)]
    pub negate: bool,
    /// Ascending quantiles of the training events' raw outputs (after negation); the score is
    /// the raw output's position among them. When empty, the raw output clamped to [0, 1] is
    /// the score.
    #[serde(default)]
    pub calibration: Vec<f64>,
    /// Per input feature, the value explanations replace it with (training medians). No
    /// explanations when empty.
    #[serde(default)]
    pub reference: Vec<f64>,
}

/// The kind name of ensembles in manifests.
pub const ENSEMBLE_KIND: &str = "ensemble";

/// How member scores combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Combine {
    /// Largest member score; flagged when any member reaches its threshold.
    Max,
    /// Weighted mean of member scores; flagged at the ensemble's threshold.
    WeightedMean,
}

/// One member of an ensemble manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberSpec {
    /// Its name in score records.
    pub name: String,
    /// Its folder, relative to the ensemble's.
    pub path: String,
    /// Weight in a weighted mean.
    #[serde(default = "one")]
    pub weight: f64,
}

fn one() -> f64 {
    1.0
}

/// The `ensemble` section of a manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnsembleSpec {
    /// How scores combine.
    pub combine: Combine,
    /// The members.
    pub members: Vec<MemberSpec>,
}
