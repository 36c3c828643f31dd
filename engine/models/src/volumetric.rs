//! Per-endpoint volumetric baselines and recommended rate limits.
//!
//! Fitting takes, for every (client, endpoint) pair of the training log, the client's peak
//! request count on that endpoint within one minute (the largest `endpoint_count_1m` the
//! engine computed for it: the requests of the current and previous 30-second buckets).
//! Per endpoint, the distribution of those peaks over clients gives p50 / p90 / p99 with
//! distribution-free 95% confidence intervals (order statistics). An endpoint seen by fewer
//! than `min_sessions` clients gets no recommendation of its own; it is scored against the
//! pooled distribution of all endpoints' peaks. A quantile whose upper confidence bound lies
//! beyond the largest observation is reported as open (`null`): p99 needs about 400 sessions.
//!
//! The recommended limit is the p99 peak's upper confidence bound when it exists, else none
//! (the point estimates are still reported). The score of a request is how far its client's
//! current one-minute count on the endpoint exceeds the endpoint's p99 peak `L`:
//! `1 − L / count` above `L`, 0 at or below it (so 0.5 is twice the p99 peak, 0.9 ten times).

use std::collections::HashMap;
use std::path::Path;

use gatewatch_features::Registry;
use serde::{Deserialize, Serialize};

use crate::common::Reason;
use crate::error::{ModelError, Result};
use crate::manifest::{MANIFEST_FORMAT, Manifest, Training};

/// The kind name in manifests.
pub const KIND: &str = "volumetric_rate";
/// The feature the model reads.
pub const FEATURE: &str = "endpoint_count_1m";
const LIMITS_FILE: &str = "limits.json";
/// The key of the pooled distribution in `limits.json`.
pub const POOLED: &str = "*";

/// Fitting parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct VolumetricParams {
    /// Fewest distinct clients an endpoint needs for its own quantiles.
    pub min_sessions: usize,
    /// Flag threshold on the score (0.5: twice the p99 peak).
    pub threshold: f64,
}

impl Default for VolumetricParams {
    fn default() -> Self {
        Self {
            min_sessions: 30,
            threshold: 0.5,
        }
    }
}

/// A quantile of the per-session peaks with its 95% confidence interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quantile {
    /// Point estimate (requests per minute).
    pub value: f64,
    /// Lower 95% bound.
    pub low: f64,
    /// Upper 95% bound; `None` when it lies beyond the largest observation.
    pub high: Option<f64>,
}

/// One endpoint's peak distribution and recommendation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointLimits {
    /// Endpoint template (`*` for the pooled distribution).
    pub endpoint: String,
    /// Distinct clients (sessions) seen on it.
    pub sessions: u64,
    /// Requests to it.
    pub requests: u64,
    /// Largest per-session peak seen.
    pub max_peak: f64,
    /// Median per-session peak.
    pub p50: Quantile,
    /// 90th percentile.
    pub p90: Quantile,
    /// 99th percentile.
    pub p99: Quantile,
    /// Recommended limit (requests per minute per client): the p99's upper bound.
    pub recommended: Option<f64>,
    /// `high` (p99 bounded), `medium` (p90 bounded), `low`.
    pub confidence: String,
}

/// `limits.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Fewest sessions for an endpoint's own quantiles.
    pub min_sessions: u64,
    /// Endpoints with enough sessions, most requested first.
    pub endpoints: Vec<EndpointLimits>,
    /// All endpoints' peaks pooled (used for the others).
    pub pooled: EndpointLimits,
    /// Endpoints below the gate: sessions seen on each.
    pub below_gate: Vec<(String, u64)>,
}

/// Order-statistic 95% interval of quantile `q` from sorted `v`.
fn quantile(v: &[f64], q: f64) -> Quantile {
    let n = v.len();
    let at = |r: f64| v[(r.max(0.0) as usize).min(n - 1)];
    let value = at((q * (n - 1) as f64).round());
    let nf = n as f64;
    let sd = (nf * q * (1.0 - q)).sqrt();
    let lo = (nf * q - 1.96 * sd).floor() - 1.0;
    let hi = (nf * q + 1.96 * sd).ceil() - 1.0;
    Quantile {
        value,
        low: at(lo),
        high: (hi <= (n - 1) as f64).then(|| at(hi)),
    }
}

fn limits_of(endpoint: &str, peaks: &mut [f64], requests: u64) -> EndpointLimits {
    peaks.sort_by(f64::total_cmp);
    let p50 = quantile(peaks, 0.5);
    let p90 = quantile(peaks, 0.9);
    let p99 = quantile(peaks, 0.99);
    let confidence = if p99.high.is_some() {
        "high"
    } else if p90.high.is_some() {
        "medium"
    } else {
        "low"
    };
    EndpointLimits {
        endpoint: endpoint.to_string(),
        sessions: peaks.len() as u64,
        requests,
        max_peak: peaks[peaks.len() - 1],
        recommended: p99.high,
        p50,
        p90,
        p99,
        confidence: confidence.into(),
    }
}

/// Collects per-session peaks while a log streams through the engine, in bounded memory:
/// at most [`MAX_PEAK_ENDPOINTS`] endpoints and [`MAX_PEAK_PAIRS`] (endpoint, client) pairs
/// are tracked; requests of further ones are not collected and counted in
/// [`dropped`](Self::dropped) (the pairs already tracked keep their peaks up to date).
#[derive(Debug)]
pub struct PeakCollector {
    peaks: HashMap<String, HashMap<String, f64>>,
    requests: HashMap<String, u64>,
    pairs: usize,
    max_endpoints: usize,
    max_pairs: usize,
    dropped: u64,
}

/// Endpoints a [`PeakCollector`] tracks at most.
pub const MAX_PEAK_ENDPOINTS: usize = 10_000;
/// (endpoint, client) pairs a [`PeakCollector`] tracks at most.
pub const MAX_PEAK_PAIRS: usize = 1_000_000;

impl Default for PeakCollector {
    fn default() -> Self {
        Self::with_caps(MAX_PEAK_ENDPOINTS, MAX_PEAK_PAIRS)
    }
}

impl PeakCollector {
    /// A collector with its own caps.
    pub fn with_caps(max_endpoints: usize, max_pairs: usize) -> Self {
        Self {
            peaks: HashMap::new(),
            requests: HashMap::new(),
            pairs: 0,
            max_endpoints,
            max_pairs,
            dropped: 0,
        }
    }

    /// Requests not collected because a cap was reached.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// One request: its endpoint, client and `endpoint_count_1m`.
    pub fn add(&mut self, endpoint: &str, client: &str, count: f64) {
        if !count.is_finite() {
            return;
        }
        if !self.peaks.contains_key(endpoint) {
            if self.peaks.len() >= self.max_endpoints || self.pairs >= self.max_pairs {
                self.dropped += 1;
                return;
            }
            self.peaks.insert(endpoint.to_string(), HashMap::new());
            self.requests.insert(endpoint.to_string(), 0);
        }
        let per = self.peaks.get_mut(endpoint).expect("checked above");
        match per.get_mut(client) {
            Some(p) => *p = p.max(count),
            None if self.pairs < self.max_pairs => {
                per.insert(client.to_string(), count);
                self.pairs += 1;
            }
            None => {
                self.dropped += 1;
                return;
            }
        }
        *self
            .requests
            .get_mut(endpoint)
            .expect("inserted with peaks") += 1;
    }

    /// Requests added.
    pub fn requests(&self) -> u64 {
        self.requests.values().sum()
    }

    /// The limits.
    pub fn limits(&self, min_sessions: usize) -> Result<Limits> {
        let mut all: Vec<f64> = Vec::new();
        let mut endpoints = Vec::new();
        let mut below_gate = Vec::new();
        for (e, per) in &self.peaks {
            let mut v: Vec<f64> = per.values().copied().collect();
            all.extend_from_slice(&v);
            if v.len() >= min_sessions.max(1) {
                endpoints.push(limits_of(e, &mut v, self.requests[e]));
            } else {
                below_gate.push((e.clone(), v.len() as u64));
            }
        }
        if all.is_empty() {
            return Err(ModelError::Fit(
                "no requests to fit per-endpoint rate limits on".into(),
            ));
        }
        endpoints.sort_by(|a, b| {
            b.requests
                .cmp(&a.requests)
                .then(a.endpoint.cmp(&b.endpoint))
        });
        below_gate.sort();
        let total = self.requests();
        Ok(Limits {
            min_sessions: min_sessions as u64,
            endpoints,
            pooled: limits_of(POOLED, &mut all, total),
            below_gate,
        })
    }
}

/// A fitted or loaded volumetric model.
#[derive(Debug, Clone)]
pub struct VolumetricModel {
    /// Its manifest.
    pub manifest: Manifest,
    /// Its limits.
    pub limits: Limits,
    /// Limits by endpoint template, read once per scored event (hashbrown's seeded
    /// foldhash: fast on short strings, not predictable from outside the process).
    by_endpoint: hashbrown::HashMap<String, f64>,
    pooled: f64,
    /// Registry position of `endpoint_count_1m`.
    idx: usize,
}

impl VolumetricModel {
    /// Builds the model from collected peaks.
    pub fn fit(
        registry: &Registry,
        params: &VolumetricParams,
        peaks: &PeakCollector,
        name: &str,
        mut training: Training,
    ) -> Result<Self> {
        if !(0.0..=1.0).contains(&params.threshold) {
            return Err(ModelError::Fit("threshold must be in [0, 1]".into()));
        }
        let limits = peaks.limits(params.min_sessions)?;
        training.events = peaks.requests();
        let manifest = Manifest {
            format_version: MANIFEST_FORMAT,
            name: name.to_string(),
            version: "1".into(),
            kind: KIND.into(),
            feature_set: registry.hash.clone(),
            features: vec![FEATURE.into()],
            outputs: vec!["score".into()],
            threshold: params.threshold,
            calibration: "1 − p99 peak / current one-minute count on the endpoint, 0 at or below the p99 peak (limits.json)".into(),
            training,
            artefacts: vec![LIMITS_FILE.into()],
            onnx: None,
                ensemble: None,
                monitor: None,
        };
        Self::new(manifest, limits, registry, "")
    }

    fn new(manifest: Manifest, limits: Limits, registry: &Registry, origin: &str) -> Result<Self> {
        let idx = registry
            .index_of(FEATURE)
            .ok_or_else(|| ModelError::UnknownFeatures {
                model: manifest.name.clone(),
                names: vec![FEATURE.into()],
            })?;
        let ok =
            |l: &EndpointLimits| l.p99.value.is_finite() && l.p99.value >= 0.0 && l.sessions > 0;
        if let Some(bad) = std::iter::once(&limits.pooled)
            .chain(&limits.endpoints)
            .find(|l| !ok(l))
        {
            return Err(ModelError::Corrupt {
                path: format!("{origin}/{LIMITS_FILE}"),
                reason: format!(
                    "endpoint {:?}: p99 must be a finite count ≥ 0 from at least one session",
                    bad.endpoint
                ),
            });
        }
        let by_endpoint = limits
            .endpoints
            .iter()
            .map(|l| (l.endpoint.clone(), l.p99.value.max(1.0)))
            .collect();
        Ok(Self {
            pooled: limits.pooled.p99.value.max(1.0),
            manifest,
            limits,
            by_endpoint,
            idx,
        })
    }

    /// Loads a model folder.
    pub fn load(dir: &Path, registry: &Registry) -> Result<Self> {
        let manifest = Manifest::load(dir)?;
        Self::from_manifest(manifest, dir, registry)
    }

    /// Reads the limits of an already read manifest.
    pub fn from_manifest(manifest: Manifest, dir: &Path, registry: &Registry) -> Result<Self> {
        let path = dir.join(LIMITS_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| ModelError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_text(manifest, &text, &dir.display().to_string(), registry)
    }

    /// Builds the model from its manifest and `limits.json` text; `origin` names the folder.
    pub fn from_text(
        manifest: Manifest,
        limits: &str,
        origin: &str,
        registry: &Registry,
    ) -> Result<Self> {
        if manifest.kind != KIND {
            return Err(ModelError::Corrupt {
                path: format!("{origin}/manifest.json"),
                reason: format!("detector kind {:?}, expected {KIND:?}", manifest.kind),
            });
        }
        crate::check_feature_set(&manifest, registry)?;
        let limits: Limits = serde_json::from_str(limits).map_err(|e| ModelError::Corrupt {
            path: format!("{origin}/{LIMITS_FILE}"),
            reason: e.to_string(),
        })?;
        Self::new(manifest, limits, registry, origin)
    }

    /// Writes the model folder (`manifest.json`, `limits.json`).
    pub fn save(&self, dir: &Path) -> Result<()> {
        self.manifest.save(dir)?;
        let path = dir.join(LIMITS_FILE);
        let text = serde_json::to_string_pretty(&self.limits).expect("limits serialise");
        std::fs::write(&path, text + "\n").map_err(|source| ModelError::Io {
            path: path.display().to_string(),
            source,
        })
    }

    /// The p99 peak an endpoint is scored against (its own, or the pooled one).
    pub fn limit(&self, endpoint: &str) -> f64 {
        self.by_endpoint
            .get(endpoint)
            .copied()
            .unwrap_or(self.pooled)
    }

    /// Score of one request, with its reason when above the limit (0 for a non-finite count:
    /// the engine never produces one).
    pub fn score(&self, features: &[f64], endpoint: &str) -> (f64, Option<Reason>) {
        let c = features[self.idx];
        let l = self.limit(endpoint);
        if !c.is_finite() || c <= l {
            return (0.0, None);
        }
        let s = 1.0 - l / c;
        (
            s,
            Some(Reason {
                feature: FEATURE.into(),
                value: c,
                baseline: l,
                contribution: c / l,
            }),
        )
    }

    /// `name@version`.
    pub fn id(&self) -> String {
        format!("{}@{}", self.manifest.name, self.manifest.version)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantile_intervals_close_only_with_enough_data() {
        let v: Vec<f64> = (0..100).map(f64::from).collect();
        let q = quantile(&v, 0.5);
        assert_eq!(q.value, 50.0);
        assert!(q.low < 50.0 && q.high.unwrap() > 50.0);
        assert!(quantile(&v, 0.99).high.is_none());
        let v: Vec<f64> = (0..1000).map(f64::from).collect();
        let q = quantile(&v, 0.99);
        assert_eq!(q.value, 989.0);
        let h = q.high.unwrap();
        assert!((995.0..=999.0).contains(&h), "{h}");
    }
}
