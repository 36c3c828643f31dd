//! Robust z-scores against population quantiles, with empirical tails.
//!
//! Per feature, the model keeps the median and a robust scale (MAD) of the transformed value
//! `y = sign(x)·ln(1 + |x|)` over the training events, and the empirical tails of `x` on both
//! sides of the median: knots at the training values exceeded by 1/2, 1/4, 1/8, … of the
//! events, down to the extreme, each with the exact count of training events at or beyond
//! it (ties included). A feature's **surprisal** for an event is `−log10` of the share of
//! training events at least as far from the median on the same side (log-linear between
//! knots); beyond the training extreme it is `log10(n + 1)` plus `log10(1 + d)`, `d` being
//! the distance past the extreme in robust-scale units (clipped at `z_clip`). Rare but
//! benign values (a first request, a 5xx) thus cost what their training frequency says, not
//! a clipped z of 50; values never seen cost the most, and more the farther they are.
//!
//! Features are grouped by evidence: the horizons of one windowed feature (`error_ratio_10s`,
//! `_1m`, …) form one group, represented by its most surprising member, so that one piece of
//! evidence seen at four horizons counts once. An event's raw score is the mean of the
//! `top_k` largest group surprisals, calibrated to [0, 1]
//! by the empirical distribution of the training events' raw scores; above the largest
//! training raw score the score keeps growing towards 1 (`1 − 10^−(raw − max) / (n + 1)`), so
//! the most extreme events stay ordered. Every score is explained exactly: each reason's
//! contribution is the feature's surprisal, positive above the median, negative below.

use std::path::Path;

use gatewatch_features::Registry;
use serde::{Deserialize, Serialize};

use crate::common::{Reason, calibrate_open, calibration_quantiles, open_bits, resolve, t, t_inv};
use crate::error::{ModelError, Result};
use crate::manifest::{MANIFEST_FORMAT, Manifest, Training};

/// The kind name in manifests.
pub const KIND: &str = "robust_zscore";
const BASELINE_FILE: &str = "baseline.json";

/// Which side of a feature's distribution counts as evidence of abuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// High values (counts, error ratios, distinct ids, surprise).
    Up,
    /// Low values (gaps between requests, their variation).
    Down,
    /// Both.
    Both,
    /// Neither: context, not evidence about the client (population-wide rates, age).
    Neither,
}

impl Side {
    /// The side of a feature by its name (without the horizon), from what the engine's
    /// features measure: more requests, errors, distinct objects, surprise, HEAD requests or
    /// `/robots.txt` reads than usual are evidence, fewer are not (so are more keys,
    /// requests and failures at the client's address and network); shorter and more regular
    /// gaps, and fewer assets and referers (robots fetch neither) are evidence, the opposite
    /// is not;
    /// the endpoint's traffic from all clients and the client's age describe context. Sizes,
    /// the endpoint mix and unknown features count on both sides.
    pub fn of(feature: &str) -> Self {
        match base_of(feature) {
            "req_count"
            | "req_rate"
            | "error_ratio"
            | "auth_fail_ratio"
            | "not_found_ratio"
            | "throttled_ratio"
            | "server_error_ratio"
            | "distinct_endpoints"
            | "distinct_ids"
            | "seq_id_ratio"
            | "surprise_mean"
            | "transition_surprise"
            | "endpoint_count"
            | "endpoint_rate_ratio"
            | "head_ratio"
            | "robots_count"
            | "night_ratio"
            | "addr_clients"
            | "addr_req"
            | "addr_auth_fail"
            | "net_addrs"
            | "net_req"
            | "net_auth_fail" => Self::Up,
            "iat_mean" | "iat_min" | "iat_cv" | "secs_since_prev" | "asset_ratio"
            | "referrer_ratio" => Self::Down,
            "endpoint_pop_rate" | "client_age_secs" => Self::Neither,
            _ => Self::Both,
        }
    }
}

/// Fitting parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct RobustParams {
    /// Features to use (registry names); all of the registry when empty.
    pub features: Vec<String>,
    /// How many of the largest |z| make the raw score.
    pub top_k: usize,
    /// The distance past the training extreme (robust-scale units) is clipped here.
    pub z_clip: f64,
    /// Flag threshold on the calibrated score.
    pub threshold: f64,
    /// The share of the training events presumed abnormal (robots, attacks) in unlabelled
    /// traffic, in [0, 0.5): per feature, that share of the training values on the side
    /// where abuse lies is set aside (half on each side for two-sided features), and so is
    /// that share of the highest raw scores for the calibration, so that the abuse in the
    /// training traffic neither widens the baselines nor sets the calibration. 0: fit on
    /// everything.
    pub contamination: f64,
}

impl Default for RobustParams {
    fn default() -> Self {
        Self {
            features: Vec::new(),
            top_k: 3,
            z_clip: 50.0,
            threshold: 0.999,
            contamination: 0.0,
        }
    }
}

/// The empirical tails of one feature over the training events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tail {
    /// Knots above the median (in the feature's unit), ascending, the last being the
    /// training maximum.
    pub up: Vec<f64>,
    /// Training events at or above each upper knot.
    pub up_ge: Vec<u64>,
    /// Training events strictly above each upper knot.
    pub up_gt: Vec<u64>,
    /// Knots below the median (in the feature's unit), descending, the last being the
    /// training minimum.
    pub down: Vec<f64>,
    /// Training events at or below each lower knot.
    pub down_le: Vec<u64>,
    /// Training events strictly below each lower knot.
    pub down_lt: Vec<u64>,
}

/// The fitted parameters (`baseline.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Baseline {
    /// Training events.
    pub n: u64,
    /// Median of the transformed feature, per input feature.
    pub median: Vec<f64>,
    /// Robust scale of the transformed feature, per input feature.
    pub scale: Vec<f64>,
    /// Empirical tails, per input feature.
    pub tails: Vec<Tail>,
    /// Which side of each input feature counts.
    pub sides: Vec<Side>,
    /// Largest group surprisals averaged into the raw score.
    pub top_k: usize,
    /// Clip of the distance past the training extreme, in robust-scale units.
    pub z_clip: f64,
    /// Quantiles of the training raw scores (ascending), for calibration.
    pub calibration: Vec<f64>,
}

/// One knot of a tail side prepared for scoring, oriented so that larger means farther from
/// the median (the lower side is negated: `t` is odd, so `t(−x) = −t(x)`): its value, its
/// transform, and the surprisals at and just past it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Knot {
    x: f64,
    y: f64,
    /// −log10(share at or beyond the knot).
    s_at: f64,
    /// −log10(share strictly beyond the knot).
    s_past: f64,
}

/// A side's knots (`x` ascending) from its values and counts.
fn knots_of(x: impl Iterator<Item = f64>, at: &[u64], past: &[u64], n: u64) -> Vec<Knot> {
    let s = |c: u64| -((c.max(1) as f64) / n as f64).log10();
    x.zip(at)
        .zip(past)
        .map(|((x, &a), &p)| Knot {
            x,
            y: t(x),
            s_at: s(a),
            s_past: s(p),
        })
        .collect()
}

/// Surprisal of an (oriented) value within a side's knots; `None` past the last. Only a
/// value strictly between two knots needs its transform. The knots are scanned from the
/// median side: each halves the tail's share, so a typical value stops at the first or
/// second (the same index as a binary search over the ascending values).
#[inline]
fn knots_surprisal(knots: &[Knot], v: f64) -> Option<f64> {
    let i = knots.iter().take_while(|k| k.x <= v).count();
    if i == 0 {
        return Some(0.0);
    }
    let at = &knots[i - 1];
    if v == at.x {
        return Some(at.s_at);
    }
    let next = knots.get(i)?;
    let f = (t(v) - at.y) / (next.y - at.y);
    Some(at.s_past + f * (next.s_at - at.s_past))
}

/// An input feature prepared for scoring: the value that splits its sides, which side
/// counts, where its sides' knots are in the model's one knot array, its registry position
/// and its evidence group (the feature name without its horizon).
#[derive(Debug, Clone, Copy)]
struct Prepared {
    split: f64,
    side: Side,
    up: (u32, u32),
    down: (u32, u32),
    idx: u32,
    group: u32,
}

/// A scored event.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// Calibrated score in [0, 1].
    pub score: f64,
    /// Raw score (mean of the top |z|).
    pub raw: f64,
    /// The score's tail as surprisal, `−log2(1 − score)` bits, at full resolution (see
    /// [`RobustModel::score_bits`]).
    pub surprisal: f64,
    /// Largest contributions first.
    pub reasons: Vec<Reason>,
}

/// Knots of one side: the values exceeded by 1/2, 1/4, … of the sorted column `c`, with
/// their counts at-or-beyond and beyond.
fn tail_of(c: &[f64]) -> Tail {
    let n = c.len();
    let mut t = Tail {
        up: Vec::new(),
        up_ge: Vec::new(),
        up_gt: Vec::new(),
        down: Vec::new(),
        down_le: Vec::new(),
        down_lt: Vec::new(),
    };
    let mut l = 1u32;
    loop {
        let k = ((n as f64) / f64::from(2u32).powi(l as i32))
            .ceil()
            .max(1.0) as usize;
        let hi = c[n - k];
        if t.up.last() != Some(&hi) {
            t.up.push(hi);
            t.up_ge.push((n - c.partition_point(|v| *v < hi)) as u64);
            t.up_gt.push((n - c.partition_point(|v| *v <= hi)) as u64);
        }
        let lo = c[k - 1];
        if t.down.last() != Some(&lo) {
            t.down.push(lo);
            t.down_le.push(c.partition_point(|v| *v <= lo) as u64);
            t.down_lt.push(c.partition_point(|v| *v < lo) as u64);
        }
        if k == 1 {
            break;
        }
        l += 1;
    }
    t
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
    /// Per input feature: its split, side, knot ranges, position and group.
    prepared: Vec<Prepared>,
    /// Every feature's tail knots, one side after the other.
    knots: Vec<Knot>,
    n_groups: usize,
}

/// A feature's name without its horizon suffix (`error_ratio_10s` → `error_ratio`).
fn base_of(name: &str) -> &str {
    match name.rsplit_once('_') {
        Some((base, h))
            if h.len() >= 2
                && h[..h.len() - 1].bytes().all(|b| b.is_ascii_digit())
                && matches!(h.as_bytes()[h.len() - 1], b's' | b'm' | b'h' | b'd') =>
        {
            base
        }
        _ => name,
    }
}

impl RobustModel {
    fn prepare(&mut self) {
        let mut bases: Vec<&str> = Vec::new();
        let groups: Vec<usize> = self
            .manifest
            .features
            .iter()
            .map(|f| {
                let b = base_of(f);
                bases.iter().position(|x| *x == b).unwrap_or_else(|| {
                    bases.push(b);
                    bases.len() - 1
                })
            })
            .collect();
        self.n_groups = bases.len();
        let b = &self.baseline;
        self.knots.clear();
        let mut prepared = Vec::with_capacity(b.tails.len());
        for ((((tail, &m), &side), &idx), &group) in b
            .tails
            .iter()
            .zip(&b.median)
            .zip(&b.sides)
            .zip(&self.idx)
            .zip(&groups)
        {
            let mut push = |k: Vec<Knot>| {
                let start = self.knots.len() as u32;
                self.knots.extend(k);
                (start, self.knots.len() as u32)
            };
            let up = push(knots_of(
                tail.up.iter().copied(),
                &tail.up_ge,
                &tail.up_gt,
                b.n,
            ));
            let down = push(knots_of(
                tail.down.iter().map(|v| -v),
                &tail.down_le,
                &tail.down_lt,
                b.n,
            ));
            prepared.push(Prepared {
                split: t_inv(m),
                side,
                up,
                down,
                idx: idx as u32,
                group: group as u32,
            });
        }
        self.prepared = prepared;
    }

    /// Per evidence group, the input feature with the largest |surprisal| and its signed
    /// surprisal (`(0, usize::MAX)` for a group without a finite value); `x` yields each
    /// input feature's value, `None` when not finite.
    fn group_best(&self, x: impl Iterator<Item = Option<f64>>, out: &mut Vec<(f64, usize)>) {
        out.clear();
        out.resize(self.n_groups, (0.0, usize::MAX));
        for ((k, p), x) in self.prepared.iter().enumerate().zip(x) {
            let Some(x) = x else { continue };
            let s = self.surprisal(p, k, x);
            let g = &mut out[p.group as usize];
            if g.1 == usize::MAX || s.abs() > g.0.abs() {
                *g = (s, k);
            }
        }
    }

    /// Signed surprisal of input feature `k` (record `p`) at value `x` (positive above the
    /// median). Most values are on a side that does not count and are answered here,
    /// inlined in the loop over the inputs; the rest read their side's knots in
    /// [`tail_surprisal`](Self::tail_surprisal).
    #[inline]
    fn surprisal(&self, p: &Prepared, k: usize, x: f64) -> f64 {
        let counts = match p.side {
            Side::Both => true,
            Side::Up => x > p.split,
            Side::Down => x < p.split,
            Side::Neither => false,
        };
        if !counts {
            return 0.0;
        }
        if x >= p.split {
            self.tail_surprisal(k, p.up, x)
        } else {
            -self.tail_surprisal(k, p.down, -x)
        }
    }

    /// Surprisal of input feature `k`'s oriented value `v` on the side whose knots are
    /// `from..to`.
    #[inline(never)]
    fn tail_surprisal(&self, k: usize, (from, to): (u32, u32), v: f64) -> f64 {
        let b = &self.baseline;
        let side = &self.knots[from as usize..to as usize];
        match knots_surprisal(side, v) {
            Some(s) => s,
            None => {
                let last = side.last().map_or(0.0, |k| k.y);
                let past = ((t(v) - last) / b.scale[k]).min(b.z_clip);
                ((b.n + 1) as f64).log10() + past.ln_1p() / std::f64::consts::LN_10
            }
        }
    }

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
            || !(0.0..0.5).contains(&params.contamination)
        {
            return Err(ModelError::Fit(
                "top_k must be ≥ 1, z_clip > 0, threshold in [0, 1] and contamination in [0, 0.5)"
                    .into(),
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
                cols[k].push(x);
            }
            n += 1;
        }
        if n == 0 {
            return Err(ModelError::Fit(
                "no training events (empty log, or no event with the label filter)".into(),
            ));
        }
        let c = params.contamination;
        // Per feature, the share `c` of the training values on the side(s) where abuse lies
        // is set aside (half on each side for two-sided features), and so is that share of
        // the highest raw scores for the calibration: abuse in unlabelled traffic, even a
        // cluster of it, then lies past the fitted extremes instead of widening them.
        let m = (c * n as f64).floor() as usize;
        let kept = n - m as u64;
        let sides: Vec<Side> = features.iter().map(|f| Side::of(f)).collect();
        let mut med = Vec::with_capacity(idx.len());
        let mut scale = Vec::with_capacity(idx.len());
        let mut tails = Vec::with_capacity(idx.len());
        for (col, side) in cols.iter().zip(&sides) {
            let mut v = col.clone();
            v.sort_by(f64::total_cmp);
            let (lo, hi) = match side {
                Side::Up => (0, m),
                Side::Down => (m, 0),
                Side::Both | Side::Neither => (m / 2, m - m / 2),
            };
            let v = &v[lo..v.len() - hi];
            let y: Vec<f64> = v.iter().map(|&x| t(x)).collect();
            let md = median(&mut y.clone());
            let mut dev: Vec<f64> = y.iter().map(|x| (x - md).abs()).collect();
            let mean_abs = dev.iter().sum::<f64>() / dev.len() as f64;
            let mad = median(&mut dev);
            // MAD, or the mean absolute deviation when more than half the values equal the
            // median, or a floor when the feature never varied.
            let sc = (1.4826 * mad).max(1.2533 * mean_abs).max(1e-6);
            med.push(md);
            scale.push(sc);
            tails.push(tail_of(v));
        }
        let calibration = if c == 0.0 {
            "empirical CDF of the training events' raw scores (baseline.json: calibration)"
                .to_string()
        } else {
            format!(
                "contamination {c}: per feature, the {m} most extreme of the {n} training values on the abuse side set aside; empirical CDF of the lowest {kept} training raw scores (baseline.json: calibration)"
            )
        };
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
                calibration,
                training,
                artefacts: vec![BASELINE_FILE.into()],
                onnx: None,
                ensemble: None,
                monitor: None,
            },
            baseline: Baseline {
                n: kept,
                median: med,
                scale,
                tails,
                sides,
                top_k: params.top_k,
                z_clip: params.z_clip,
                calibration: Vec::new(),
            },
            idx,
            prepared: Vec::new(),
            knots: Vec::new(),
            n_groups: 0,
        };
        model.prepare();
        model.manifest.training.events = n;
        let mut best = Vec::new();
        let mut ss = Vec::new();
        let mut raws: Vec<f64> = (0..n as usize)
            .map(|r| {
                model.group_best(cols.iter().map(|c| Some(c[r])), &mut best);
                ss.clear();
                ss.extend(best.iter().map(|(s, _)| s.abs()));
                top_mean(&mut ss, params.top_k)
            })
            .collect();
        raws.sort_by(f64::total_cmp);
        raws.truncate(kept as usize);
        model.baseline.calibration = calibration_quantiles(&raws);
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
        let tail_ok = |t: &Tail| {
            let side = |v: &[f64], a: &[u64], b: &[u64], asc: bool| {
                !v.is_empty()
                    && v.len() == a.len()
                    && v.len() == b.len()
                    && finite(v)
                    && v.windows(2)
                        .all(|w| if asc { w[0] < w[1] } else { w[0] > w[1] })
                    && a.iter().zip(b).all(|(x, y)| x >= y && *x <= baseline.n)
            };
            side(&t.up, &t.up_ge, &t.up_gt, true) && side(&t.down, &t.down_le, &t.down_lt, false)
        };
        if baseline.median.len() != n
            || baseline.scale.len() != n
            || baseline.tails.len() != n
            || baseline.sides.len() != n
            || baseline.n == 0
            || !baseline.tails.iter().all(tail_ok)
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
                    "expected {n} finite medians, {n} positive scales, {n} sides, {n} tails with ordered knots and counts ≤ n, top_k ≥ 1 and ascending calibration quantiles"
                ),
            });
        }
        let mut m = Self {
            manifest,
            baseline,
            idx,
            prepared: Vec::new(),
            knots: Vec::new(),
            n_groups: 0,
        };
        m.prepare();
        Ok(m)
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
        self.score_with(features, reasons, &mut Vec::new())
    }

    /// [`score`](Self::score) with a scratch buffer the caller keeps between events.
    pub fn score_with(
        &self,
        features: &[f64],
        reasons: usize,
        ss: &mut Vec<(f64, usize)>,
    ) -> Scored {
        let b = &self.baseline;
        self.group_best(
            self.prepared.iter().map(|p| {
                let x = features[p.idx as usize];
                x.is_finite().then_some(x)
            }),
            ss,
        );
        keep_top(ss, b.top_k.max(reasons).max(1));
        if ss.is_empty() {
            return self.scored(0.0, Vec::new());
        }
        let k = b.top_k.min(ss.len());
        let raw = ss[..k].iter().map(|(s, _)| s.abs()).sum::<f64>() / k as f64;
        let reasons = ss
            .iter()
            .take(reasons)
            .filter(|(s, _)| *s != 0.0)
            .map(|&(s, k)| Reason {
                feature: self.manifest.features[k].clone(),
                value: features[self.idx[k]],
                baseline: t_inv(b.median[k]),
                contribution: s,
            })
            .collect();
        self.scored(raw, reasons)
    }

    fn scored(&self, raw: f64, reasons: Vec<Reason>) -> Scored {
        let b = &self.baseline;
        let score = calibrate_open(&b.calibration, raw, b.n);
        Scored {
            score,
            raw,
            surprisal: open_bits(&b.calibration, raw, b.n, score),
            reasons,
        }
    }

    /// `name@version`.
    pub fn id(&self) -> String {
        format!("{}@{}", self.manifest.name, self.manifest.version)
    }

    /// The surprisal (bits) of a raw score: `−log2(1 − score)` at full resolution.
    pub fn score_bits(&self, raw: f64) -> f64 {
        self.scored(raw, Vec::new()).surprisal
    }
}

/// Largest |surprisal| first, ties by feature order: a total order, so the top is unique.
fn by_size(a: &(f64, usize), c: &(f64, usize)) -> std::cmp::Ordering {
    c.0.abs().total_cmp(&a.0.abs()).then(a.1.cmp(&c.1))
}

/// Keeps the `m` (≥ 1) first groups by [`by_size`], in that order, leaving out groups
/// without a value (`usize::MAX`): one insertion pass, in place (the first `len` slots
/// hold the best so far; slot `j` is read before any write reaches it).
fn keep_top(ss: &mut Vec<(f64, usize)>, m: usize) {
    use std::cmp::Ordering::Less;
    let mut len = 0;
    for j in 0..ss.len() {
        let g = ss[j];
        if g.1 == usize::MAX || (len == m && by_size(&g, &ss[len - 1]) != Less) {
            continue;
        }
        if len < m {
            len += 1;
        }
        let mut p = len - 1;
        while p > 0 && by_size(&g, &ss[p - 1]) == Less {
            ss[p] = ss[p - 1];
            p -= 1;
        }
        ss[p] = g;
    }
    ss.truncate(len);
}

fn top_mean(zs: &mut [f64], k: usize) -> f64 {
    let k = k.min(zs.len());
    zs.sort_by(|a, b| b.total_cmp(a));
    zs[..k].iter().sum::<f64>() / k as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A small deterministic generator (xorshift64) for the randomised comparisons.
    fn xorshift(mut state: u64) -> impl FnMut() -> u64 {
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
    }

    /// The binary search the scan replaced: the last knot at or below `v`.
    fn by_search(knots: &[Knot], v: f64) -> Option<f64> {
        let i = knots.partition_point(|k| k.x <= v);
        if i == 0 {
            return Some(0.0);
        }
        let i = i - 1;
        if v == knots[i].x {
            return Some(knots[i].s_at);
        }
        if i + 1 == knots.len() {
            return None;
        }
        let f = (t(v) - knots[i].y) / (knots[i + 1].y - knots[i].y);
        Some(knots[i].s_past + f * (knots[i + 1].s_at - knots[i].s_past))
    }

    #[test]
    fn the_insertion_pass_keeps_the_same_top_as_a_full_sort() {
        let mut next = xorshift(0x2545_f491_4f6c_dd1d);
        for _ in 0..5_000 {
            let n = (next() % 40) as usize;
            let groups: Vec<(f64, usize)> = (0..n)
                .map(|k| {
                    // Few distinct sizes and both signs: many ties; some groups empty.
                    let s = (next() % 5) as f64 * if next() % 2 == 0 { 1.0 } else { -1.0 };
                    let k = if next() % 7 == 0 { usize::MAX } else { k };
                    (s, k)
                })
                .collect();
            let m = 1 + (next() % 8) as usize;
            let mut want = groups.clone();
            want.retain(|g| g.1 != usize::MAX);
            want.sort_by(by_size);
            want.truncate(m);
            let mut got = groups;
            keep_top(&mut got, m);
            let bits =
                |v: &[(f64, usize)]| v.iter().map(|g| (g.0.to_bits(), g.1)).collect::<Vec<_>>();
            assert_eq!(bits(&got), bits(&want));
        }
    }

    #[test]
    fn the_knot_scan_equals_the_binary_search_bit_for_bit() {
        // Fitted tails of columns with many ties, and values below, on, between and past
        // their knots.
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
        let mut checked = 0;
        for round in 0..2_000 {
            let n = 1 + (next() % 400) as usize;
            let levels = 1 + next() % if round % 2 == 0 { 5 } else { 1_000 };
            let mut c: Vec<f64> = (0..n)
                .map(|_| (next() % levels) as f64 * 0.37 - 3.0)
                .collect();
            c.sort_by(f64::total_cmp);
            let tail = tail_of(&c);
            let sides = [
                knots_of(tail.up.iter().copied(), &tail.up_ge, &tail.up_gt, n as u64),
                knots_of(
                    tail.down.iter().map(|v| -v),
                    &tail.down_le,
                    &tail.down_lt,
                    n as u64,
                ),
            ];
            for knots in &sides {
                let mut probes: Vec<f64> = knots.iter().map(|k| k.x).collect();
                probes.extend(knots.iter().map(|k| k.x + 0.1));
                probes.extend(knots.iter().map(|k| k.x - 1e-9));
                probes.extend((0..20).map(|_| (next() % 4_000) as f64 * 0.01 - 20.0));
                for v in probes {
                    let (a, b) = (knots_surprisal(knots, v), by_search(knots, v));
                    assert_eq!(a.map(f64::to_bits), b.map(f64::to_bits), "{v} in {knots:?}");
                    checked += 1;
                }
            }
        }
        assert!(checked > 50_000, "{checked}");
    }
}
