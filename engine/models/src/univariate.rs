//! Univariate streaming detectors on `(timestamp, value)` series.
//!
//! Each detector scores a value against what it learnt from the values before it (never from
//! the value itself, nor from later ones), then learns from it. Scores are in [0, 1]:
//! the probability mass of the detector's null model that is less extreme than the value,
//! so 0.99 means "as unusual as the most extreme 1% under the model".

use std::collections::VecDeque;

/// A wrong parameter or input.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DetectorError {
    /// A parameter is out of range.
    #[error("invalid parameter `{name}`: {reason}")]
    Param {
        /// Parameter name.
        name: &'static str,
        /// What is allowed.
        reason: String,
    },
    /// A value is NaN or infinite (it is not learnt from).
    #[error("value at ts {ts_ms} is not finite ({value})")]
    NonFinite {
        /// Its timestamp.
        ts_ms: i64,
        /// The value.
        value: f64,
    },
    /// A value's magnitude is beyond [`MAX_VALUE`], where its square would overflow (it
    /// is not learnt from).
    #[error("value at ts {ts_ms} is out of range ({value}; at most ±1e150)")]
    OutOfRange {
        /// Its timestamp.
        ts_ms: i64,
        /// The value.
        value: f64,
    },
}

/// The largest magnitude a series value may have: differences of two such values, and
/// their squares, stay finite.
pub const MAX_VALUE: f64 = 1e150;

/// One scored value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Timestamp (ms).
    pub ts_ms: i64,
    /// The value.
    pub value: f64,
    /// What the detector expected (EWMA: the level, or the value one season ago when that
    /// predicts better; relative entropy: the reference median).
    pub expected: f64,
    /// The test statistic (EWMA: signed z-score of the value against the expectation;
    /// relative entropy: G statistic).
    pub statistic: f64,
    /// Anomaly score in [0, 1]: the null model's probability mass less extreme than the
    /// value; 0 while warming up. It rounds to 1.0 beyond about 8 standard deviations:
    /// order extreme values by `surprisal`.
    pub score: f64,
    /// The same tail probability `p` as surprisal, `-log2 p` bits, at full resolution (no
    /// saturation): 10 bits is p ≈ 0.001, 20 bits p ≈ 1e-6; 0 while warming up.
    pub surprisal: f64,
}

impl Point {
    fn warming(ts_ms: i64, value: f64, expected: f64) -> Self {
        Self {
            ts_ms,
            value,
            expected,
            statistic: 0.0,
            score: 0.0,
            surprisal: 0.0,
        }
    }
}

fn check_value(ts_ms: i64, value: f64) -> Result<(), DetectorError> {
    if !value.is_finite() {
        Err(DetectorError::NonFinite { ts_ms, value })
    } else if value.abs() > MAX_VALUE {
        Err(DetectorError::OutOfRange { ts_ms, value })
    } else {
        Ok(())
    }
}

/// How fast [`Ewma`] forgets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HalfLife {
    /// In values of the series, whatever their spacing: the same parameter fits a series of
    /// seconds and one of hours.
    Samples(f64),
    /// In seconds of event time: irregular series are weighted by the time between values
    /// (a value whose timestamp is not after the previous one counts as simultaneous).
    Seconds(f64),
}

impl HalfLife {
    fn get(self) -> f64 {
        match self {
            HalfLife::Samples(h) | HalfLife::Seconds(h) => h,
        }
    }
}

/// Parameters of [`Ewma`]. The defaults are the one parameter set measured on NAB
/// (EVALUATION.md); the endpoint monitor uses its own.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EwmaParams {
    /// Half-life of the exponential weights of the level and of the variances.
    pub half_life: HalfLife,
    /// Values learnt before scores are given.
    pub warmup: usize,
    /// Floor of the standard deviation, in the series' unit.
    pub min_std: f64,
    /// Floor of the standard deviation relative to the level's magnitude (0.001: a change
    /// of 0.1% of a flat series is one standard deviation), so that a flat series does not
    /// turn every small change into an infinite z-score.
    pub rel_std: f64,
    /// Seasonal period in seconds (a day: 86,400), or `None`. The series' cadence (median
    /// spacing of its first 64 distinct timestamps) turns it into a period in values; the
    /// value one period ago becomes a second predictor, used whenever its errors have been
    /// smaller than the level's (a daily cycle then does not hide a change of pattern, nor
    /// look anomalous itself). Periods under 2 or over [`MAX_SEASON`] values are not used.
    pub season_secs: Option<f64>,
    /// Repeated alarms: a value's z-score counts only by how much it exceeds
    /// `repeat_weight` × the largest |z| of the `repeat_window` values before it, so a
    /// lasting disturbance scores at its onset and not on every value of it (0: off).
    pub repeat_window: usize,
    /// See `repeat_window`; in [0, 1].
    pub repeat_weight: f64,
}

/// The longest seasonal period, in values, that [`Ewma`] keeps (it holds the last period).
pub const MAX_SEASON: usize = 20_000;

/// Timestamps whose spacing estimates the cadence.
const CADENCE_STEPS: usize = 64;

impl Default for EwmaParams {
    fn default() -> Self {
        Self {
            half_life: HalfLife::Samples(1000.0),
            warmup: 20,
            min_std: 1e-9,
            rel_std: 1e-3,
            season_secs: Some(86_400.0),
            repeat_window: 150,
            repeat_weight: 0.7,
        }
    }
}

impl EwmaParams {
    /// The detector of versions before 0.2 (and of the endpoint monitor): a time-based
    /// half-life, no season, no damping of repeated alarms, an absolute floor only.
    pub fn plain(half_life_secs: f64, warmup: usize, min_std: f64) -> Self {
        Self {
            half_life: HalfLife::Seconds(half_life_secs),
            warmup,
            min_std,
            rel_std: 0.0,
            season_secs: None,
            repeat_window: 0,
            repeat_weight: 0.0,
        }
    }

    /// Checks the parameters and builds the detector.
    pub fn build(self) -> Result<Ewma, DetectorError> {
        let bad = |name, reason: String| Err(DetectorError::Param { name, reason });
        let h = self.half_life.get();
        if !(h.is_finite() && h > 0.0) {
            let name = match self.half_life {
                HalfLife::Samples(_) => "half_life",
                HalfLife::Seconds(_) => "half_life_secs",
            };
            return bad(name, format!("must be > 0, got {h}"));
        }
        if !(self.min_std.is_finite() && self.min_std > 0.0) {
            return bad("min_std", format!("must be > 0, got {}", self.min_std));
        }
        if !(self.rel_std.is_finite() && self.rel_std >= 0.0) {
            return bad("rel_std", format!("must be ≥ 0, got {}", self.rel_std));
        }
        if let Some(s) = self.season_secs
            && !(s.is_finite() && s > 0.0)
        {
            return bad("season_secs", format!("must be > 0, got {s}"));
        }
        if !(0.0..=1.0).contains(&self.repeat_weight) {
            return bad(
                "repeat_weight",
                format!("must be in [0, 1], got {}", self.repeat_weight),
            );
        }
        if self.repeat_window > 1_000_000 {
            return bad(
                "repeat_window",
                format!("must be ≤ 1000000, got {}", self.repeat_window),
            );
        }
        let context = (self.season_secs.is_some() || self.repeat_window > 0)
            .then(|| Box::new(Context::default()));
        Ok(Ewma {
            p: self,
            mean: 0.0,
            var: 0.0,
            n: 0,
            last_ms: None,
            context,
        })
    }
}

/// Exponentially weighted level and variance (West's incremental form), optionally with a
/// seasonal predictor; a value is scored by the two-sided normal tail of its z-score against
/// the better predictor, damped for repeated alarms (see [`EwmaParams`]).
///
/// Values are taken in arrival order: the timestamps serve only to estimate the cadence
/// (and, with [`HalfLife::Seconds`], the weights), so a repeated or backward timestamp is
/// scored as the next value, never refused.
#[derive(Debug, Clone)]
pub struct Ewma {
    p: EwmaParams,
    mean: f64,
    var: f64,
    n: usize,
    last_ms: Option<i64>,
    /// The seasonal and repeat state, only when configured (the endpoint monitor runs
    /// thousands of plain detectors).
    context: Option<Box<Context>>,
}

/// The seasonal period, as the series' cadence becomes known.
#[derive(Debug, Clone)]
enum Cadence {
    /// Positive time steps seen so far, until [`CADENCE_STEPS`] of them.
    Learning(Vec<i64>),
    /// The season in values.
    Period(usize),
    /// No usable period (none configured, or outside 2..=[`MAX_SEASON`] values).
    Unusable,
}

impl Default for Cadence {
    fn default() -> Self {
        Self::Learning(Vec::new())
    }
}

/// What the seasonal predictor and the repeat damping keep.
#[derive(Debug, Clone, Default)]
struct Context {
    cadence: Cadence,
    /// The last `period` values.
    history: VecDeque<f64>,
    /// Weighted variance of the seasonal predictor's errors.
    season_var: Option<f64>,
    /// (index, |z|) of recent values, decreasing |z| (a sliding maximum).
    recent: VecDeque<(usize, f64)>,
    seen: usize,
}

impl Context {
    /// The part of `|z|` beyond the damped maximum of the recent values' (see
    /// [`EwmaParams::repeat_window`]); records `|z|`.
    fn novelty(&mut self, p: &EwmaParams, z: f64) -> f64 {
        let k = p.repeat_window;
        if k == 0 {
            return z;
        }
        let i = self.seen;
        self.seen += 1;
        while self.recent.front().is_some_and(|(j, _)| j + k < i) {
            self.recent.pop_front();
        }
        let before = self.recent.front().map_or(0.0, |(_, m)| *m);
        while self.recent.back().is_some_and(|(_, m)| *m <= z) {
            self.recent.pop_back();
        }
        self.recent.push_back((i, z));
        (z - p.repeat_weight * before).max(0.0)
    }

    fn learn_cadence(&mut self, p: &EwmaParams, dt_ms: i64) {
        let Cadence::Learning(steps) = &mut self.cadence else {
            return;
        };
        let Some(season) = p.season_secs else {
            self.cadence = Cadence::Unusable;
            return;
        };
        if dt_ms <= 0 {
            return;
        }
        steps.push(dt_ms);
        if steps.len() == CADENCE_STEPS {
            steps.sort_unstable();
            let period = (season / (steps[CADENCE_STEPS / 2] as f64 / 1000.0)).round();
            self.cadence = if (2.0..=MAX_SEASON as f64).contains(&period) {
                Cadence::Period(period as usize)
            } else {
                Cadence::Unusable
            };
        }
    }

    fn period(&self) -> Option<usize> {
        match self.cadence {
            Cadence::Period(p) => Some(p),
            _ => None,
        }
    }

    fn remember(&mut self, value: f64) {
        if let Some(period) = self.period() {
            self.history.push_back(value);
            if self.history.len() > period {
                self.history.pop_front();
            }
        }
    }

    /// The value one period ago, once a whole period is kept.
    fn season_ago(&self) -> Option<f64> {
        self.period()
            .filter(|p| self.history.len() == *p)
            .map(|_| self.history[0])
    }
}

impl Ewma {
    /// Scores a value, then learns from it.
    pub fn update(&mut self, ts_ms: i64, value: f64) -> Result<Point, DetectorError> {
        check_value(ts_ms, value)?;
        let dt_ms = self.last_ms.map_or(0, |l| ts_ms.saturating_sub(l).max(0));
        let p = self.p;
        if let Some(c) = self.context.as_deref_mut() {
            c.learn_cadence(&p, dt_ms);
        }
        self.last_ms = Some(ts_ms);
        if self.n == 0 {
            self.mean = value;
            self.n = 1;
            if let Some(c) = self.context.as_deref_mut() {
                c.remember(value);
            }
            return Ok(Point::warming(ts_ms, value, value));
        }
        let alpha = match p.half_life {
            HalfLife::Samples(h) => 1.0 - 0.5f64.powf(1.0 / h),
            HalfLife::Seconds(h) => 1.0 - 0.5f64.powf(dt_ms as f64 / 1000.0 / h),
        };
        let floor = |var: f64, level: f64| (var.sqrt() + p.rel_std * level.abs()).max(p.min_std);
        // The level predictor, and the seasonal one when it has done better.
        let mut expected = self.mean;
        let mut z = (value - self.mean) / floor(self.var, self.mean);
        let warm = self.n < p.warmup;
        let mut novel = z.abs();
        if let Some(c) = self.context.as_deref_mut() {
            if let Some(past) = c.season_ago() {
                let err = value - past;
                match c.season_var {
                    None => c.season_var = Some(err * err),
                    Some(sv) => {
                        if sv < self.var {
                            expected = past;
                            z = err / floor(sv, self.mean);
                        }
                        c.season_var = Some((1.0 - alpha) * sv + alpha * err * err);
                    }
                }
            }
            // Warm-up values are unreliable z-scores: they do not damp the first real alarms.
            novel = c.novelty(&p, if warm { 0.0 } else { z.abs() });
            c.remember(value);
        }
        let diff = value - self.mean;
        let incr = alpha * diff;
        self.mean += incr;
        self.var = (1.0 - alpha) * (self.var + diff * incr);
        self.n += 1;
        if warm {
            return Ok(Point::warming(ts_ms, value, expected));
        }
        // (|z| can reach 1e159; its square must stay finite.) The two-sided tail, once.
        let ln_tail = ln_erfc(novel.min(MAX_VALUE) / std::f64::consts::SQRT_2);
        Ok(Point {
            ts_ms,
            value,
            expected,
            statistic: z,
            score: (1.0 - ln_tail.exp()).clamp(0.0, 1.0),
            surprisal: (-ln_tail / std::f64::consts::LN_2).max(0.0),
        })
    }

    /// The seasonal period in values, once the cadence has been estimated (`None` before,
    /// or when no season is configured or usable).
    pub fn period(&self) -> Option<usize> {
        self.context.as_deref().and_then(Context::period)
    }

    /// Scores a whole series.
    pub fn run(&mut self, ts_ms: &[i64], values: &[f64]) -> Vec<Result<Point, DetectorError>> {
        ts_ms
            .iter()
            .zip(values)
            .map(|(t, v)| self.update(*t, *v))
            .collect()
    }
}

/// Parameters of [`RelativeEntropy`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RelativeEntropyParams {
    /// Values in the reference window (the past the recent window is compared with).
    pub reference: usize,
    /// Values in the recent window.
    pub recent: usize,
    /// Bins: equal-probability bins of the reference window.
    pub bins: usize,
}

impl Default for RelativeEntropyParams {
    fn default() -> Self {
        Self {
            reference: 240,
            recent: 30,
            bins: 8,
        }
    }
}

impl RelativeEntropyParams {
    /// Checks the parameters and builds the detector.
    pub fn build(self) -> Result<RelativeEntropy, DetectorError> {
        if !(2..=64).contains(&self.bins) {
            return Err(DetectorError::Param {
                name: "bins",
                reason: format!("must be 2..=64, got {}", self.bins),
            });
        }
        if self.recent < self.bins {
            return Err(DetectorError::Param {
                name: "recent",
                reason: format!("must be ≥ bins ({}), got {}", self.bins, self.recent),
            });
        }
        if self.reference < 2 * self.bins {
            return Err(DetectorError::Param {
                name: "reference",
                reason: format!(
                    "must be ≥ 2 × bins ({}), got {}",
                    2 * self.bins,
                    self.reference
                ),
            });
        }
        Ok(RelativeEntropy {
            p: self,
            reference: VecDeque::new(),
            recent: VecDeque::new(),
        })
    }
}

/// Distribution change: the relative entropy (Kullback–Leibler divergence) of the recent
/// window's histogram from the reference window's, over equal-probability bins of the
/// reference. Under no change, `G = 2 · recent · KL` is approximately χ² with `bins − 1`
/// degrees of freedom; the score is that distribution's CDF at `G`. It catches changes of
/// shape and spread that a mean-based detector misses.
#[derive(Debug, Clone)]
pub struct RelativeEntropy {
    p: RelativeEntropyParams,
    reference: VecDeque<f64>,
    recent: VecDeque<f64>,
}

impl RelativeEntropy {
    /// Adds a value to the recent window and scores the window against the reference.
    pub fn update(&mut self, ts_ms: i64, value: f64) -> Result<Point, DetectorError> {
        check_value(ts_ms, value)?;
        self.recent.push_back(value);
        if self.recent.len() > self.p.recent {
            let old = self.recent.pop_front().expect("non-empty");
            self.reference.push_back(old);
            if self.reference.len() > self.p.reference {
                self.reference.pop_front();
            }
        }
        if self.reference.len() < self.p.reference || self.recent.len() < self.p.recent {
            return Ok(Point::warming(ts_ms, value, value));
        }
        let mut sorted: Vec<f64> = self.reference.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        let b = self.p.bins;
        let edges: Vec<f64> = (1..b).map(|i| sorted[i * sorted.len() / b]).collect();
        let bin = |x: f64| edges.partition_point(|e| *e <= x);
        let mut p = vec![0.5; b];
        let mut q = vec![0.5; b];
        for x in &sorted {
            p[bin(*x)] += 1.0;
        }
        for x in &self.recent {
            q[bin(*x)] += 1.0;
        }
        let (ps, qs): (f64, f64) = (p.iter().sum(), q.iter().sum());
        let kl: f64 = p
            .iter()
            .zip(&q)
            .map(|(pi, qi)| (qi / qs) * ((qi / qs) / (pi / ps)).ln())
            .sum();
        let g = 2.0 * self.p.recent as f64 * kl.max(0.0);
        let (cdf, ln_sf) = chi2_pq(g, (b - 1) as f64);
        Ok(Point {
            ts_ms,
            value,
            expected: sorted[sorted.len() / 2],
            statistic: g,
            score: cdf,
            surprisal: (-ln_sf / std::f64::consts::LN_2).max(0.0),
        })
    }
}

/// Complementary error function by the Chebyshev fit of Numerical Recipes (`erfcc`):
/// fractional error below 1.2e-7 everywhere.
pub fn erfc(x: f64) -> f64 {
    let r = ln_erfc(x.abs()).exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// ln erfc(x) for x ≥ 0 by the same fit, without underflow: erfc(40) is below the smallest
/// double, its logarithm is about −1604.
pub fn ln_erfc(x: f64) -> f64 {
    if x < 0.0 {
        return erfc(x).ln();
    }
    let t = 1.0 / (1.0 + 0.5 * x);
    t.ln()
        + (-x * x - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7).
fn ln_gamma(x: f64) -> f64 {
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + 7.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// The regularised lower incomplete gamma `P(a, x)` and `ln Q(a, x) = ln(1 − P(a, x))`: the
/// series below `a + 1`, the continued fraction above (where `Q` is computed directly, so
/// its logarithm keeps full resolution far in the tail).
fn gamma_pq(a: f64, x: f64) -> (f64, f64) {
    if x <= 0.0 {
        return (0.0, 0.0);
    }
    let gln = ln_gamma(a);
    if x < a + 1.0 {
        let (mut ap, mut sum) = (a, 1.0 / a);
        let mut del = sum;
        for _ in 0..500 {
            ap += 1.0;
            del *= x / ap;
            sum += del;
            if del.abs() < sum.abs() * 1e-15 {
                break;
            }
        }
        let p = (sum.ln() - x + a * x.ln() - gln).exp().min(1.0);
        return (p, (1.0 - p).max(f64::MIN_POSITIVE).ln());
    }
    let tiny = 1e-300;
    let mut b = x + 1.0 - a;
    let mut c = 1.0 / tiny;
    let mut d = 1.0 / b;
    let mut h = d;
    for i in 1..500 {
        let an = -(i as f64) * (i as f64 - a);
        b += 2.0;
        d = an * d + b;
        if d.abs() < tiny {
            d = tiny;
        }
        c = b + an / c;
        if c.abs() < tiny {
            c = tiny;
        }
        d = 1.0 / d;
        let del = d * c;
        h *= del;
        if (del - 1.0).abs() < 1e-15 {
            break;
        }
    }
    let ln_q = -x + a * x.ln() - gln + h.ln();
    ((1.0 - ln_q.exp()).max(0.0), ln_q)
}

/// The χ² distribution with `k` degrees of freedom at `x`: its CDF and the logarithm of its
/// upper tail `1 − CDF`, at full resolution far in the tail.
fn chi2_pq(x: f64, k: f64) -> (f64, f64) {
    gamma_pq(k / 2.0, x / 2.0)
}

/// ln of the χ² distribution's upper tail `1 − CDF` with `k` degrees of freedom, at full
/// resolution far in the tail.
pub fn ln_chi2_sf(x: f64, k: f64) -> f64 {
    chi2_pq(x, k).1
}

/// CDF of the χ² distribution with `k` degrees of freedom.
pub fn chi2_cdf(x: f64, k: f64) -> f64 {
    chi2_pq(x, k).0
}

/// The continued fraction of the regularised incomplete beta function (modified Lentz),
/// for `x < (a + 1) / (a + b + 2)` where it converges quickly.
fn beta_cf(a: f64, b: f64, x: f64) -> f64 {
    let tiny = 1e-300;
    let (qab, qap, qam) = (a + b, a + 1.0, a - 1.0);
    // One Lentz step with coefficient `aa`: the factor it multiplies the fraction by.
    let step = |aa: f64, c: &mut f64, d: &mut f64| {
        *d = 1.0 + aa * *d;
        if d.abs() < tiny {
            *d = tiny;
        }
        *c = 1.0 + aa / *c;
        if c.abs() < tiny {
            *c = tiny;
        }
        *d = 1.0 / *d;
        *d * *c
    };
    let mut c = 1.0;
    let mut d = 1.0 - qab * x / qap;
    if d.abs() < tiny {
        d = tiny;
    }
    d = 1.0 / d;
    let mut h = d;
    for m in 1..1000 {
        let m = f64::from(m);
        let m2 = 2.0 * m;
        h *= step(m * (b - m) * x / ((qam + m2) * (a + m2)), &mut c, &mut d);
        let del = step(
            -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2)),
            &mut c,
            &mut d,
        );
        h *= del;
        if (del - 1.0).abs() < 1e-15 {
            break;
        }
    }
    h
}

/// ln of the binomial upper tail `P(X ≥ k)` for `X ~ Binomial(n, p)`, at full resolution far
/// in the tail (by the regularised incomplete beta function `I_p(k, n − k + 1)`). 0 (the
/// logarithm of 1) for `k = 0`, −∞ for `k > n` or `p = 0 < k`.
pub fn ln_binom_sf(k: u64, n: u64, p: f64) -> f64 {
    if k == 0 || p >= 1.0 {
        return if k <= n { 0.0 } else { f64::NEG_INFINITY };
    }
    if k > n || p <= 0.0 || p.is_nan() {
        return f64::NEG_INFINITY;
    }
    let (a, b) = (k as f64, (n - k) as f64 + 1.0);
    let ln_front = ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * p.ln() + b * (-p).ln_1p();
    if p < (a + 1.0) / (a + b + 2.0) {
        ln_front + (beta_cf(a, b, p) / a).ln()
    } else {
        // The lower side is the small one here: P(X ≥ k) = 1 − I_{1−p}(b, a).
        let lower = (ln_front + (beta_cf(b, a, 1.0 - p) / b).ln()).exp();
        (1.0 - lower).max(f64::MIN_POSITIVE).ln()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic standard normals.
    fn normals(seed: u64, n: usize) -> Vec<f64> {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut u = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        };
        (0..n)
            .map(|_| (-2.0 * u().ln()).sqrt() * (std::f64::consts::TAU * u()).cos())
            .collect()
    }

    #[test]
    fn special_functions() {
        assert!((erfc(0.0) - 1.0).abs() < 1e-7);
        assert!((erfc(1.0) - 0.157_299_207).abs() < 2e-7);
        assert!((erfc(-1.0) - 1.842_700_793).abs() < 2e-7);
        assert!((erfc(3.0) - 2.209_05e-5).abs() < 1e-7);
        assert!((chi2_cdf(7.814_727_9, 3.0) - 0.95).abs() < 1e-6);
        assert!((chi2_cdf(18.475_306_9, 7.0) - 0.99).abs() < 1e-6);
        assert!((chi2_cdf(0.454_936_4, 1.0) - 0.5).abs() < 1e-6);
        assert_eq!(chi2_cdf(0.0, 4.0), 0.0);
        // Binomial upper tails (reference values from scipy.stats.binom.logsf).
        let close = |got: f64, want: f64| (got - want).abs() <= 1e-9 * want.abs().max(1.0);
        assert!(close(ln_binom_sf(8, 10, 0.5), 0.054_687_5f64.ln()));
        assert!(close(ln_binom_sf(15, 100, 0.05), -8.903_928_019_102_17));
        assert!(close(ln_binom_sf(100, 600, 0.05), -57.713_957_991_122_7));
        assert!(close(ln_binom_sf(1, 5, 0.1), 0.409_51f64.ln()));
        assert!(close(ln_binom_sf(60, 60, 0.001), -414.465_316_738_928_2));
        assert!(close(
            ln_binom_sf(4, 1_000_000, 1e-6),
            0.018_988_095_562_903_394f64.ln()
        ));
        assert_eq!(ln_binom_sf(0, 7, 0.3), 0.0);
        assert_eq!(ln_binom_sf(8, 7, 0.3), f64::NEG_INFINITY);
        assert_eq!(ln_binom_sf(1, 7, 0.0), f64::NEG_INFINITY);
        assert_eq!(ln_binom_sf(7, 7, 1.0), 0.0);
        // The tail falls as k grows.
        let tail: Vec<f64> = (0..=40).map(|k| ln_binom_sf(k, 40, 0.2)).collect();
        assert!(tail.windows(2).all(|w| w[1] < w[0]), "{tail:?}");
    }

    #[test]
    fn ewma_flags_a_level_shift_then_adapts() {
        let mut d = EwmaParams::plain(300.0, 20, 1e-6).build().unwrap();
        let noise = normals(1, 400);
        let mut scores = Vec::new();
        for (i, e) in noise.iter().enumerate() {
            let level = if i < 200 { 100.0 } else { 160.0 };
            scores.push(d.update(i as i64 * 60_000, level + 5.0 * e).unwrap().score);
        }
        let before = &scores[20..200];
        let false_alarms = before.iter().filter(|s| **s > 0.999).count();
        assert!(
            false_alarms <= 2,
            "{false_alarms} false alarms before the shift"
        );
        assert!(scores[200] > 0.999, "shift scored {}", scores[200]);
        // Ten half-lives later the new level is normal again.
        let late = &scores[260..];
        assert!(late.iter().filter(|s| **s > 0.999).count() <= 2);
        assert!(
            scores[..20].iter().all(|s| *s == 0.0),
            "no scores while warming up"
        );
    }

    #[test]
    fn relative_entropy_flags_a_change_of_spread() {
        let p = RelativeEntropyParams {
            reference: 200,
            recent: 40,
            bins: 8,
        };
        let noise = normals(2, 600);
        let mut d = p.build().unwrap();
        let mut re = Vec::new();
        for (i, e) in noise.iter().enumerate() {
            // Same mean throughout; the spread quadruples at 400.
            let x = 50.0 + if i < 400 { 2.0 } else { 8.0 } * e;
            re.push(d.update(i as i64 * 1000, x).unwrap().score);
        }
        let quiet = &re[240..400];
        let false_alarms = quiet.iter().filter(|s| **s > 0.99).count();
        assert!(
            false_alarms * 100 <= quiet.len() * 5,
            "{false_alarms} of {} over 0.99",
            quiet.len()
        );
        assert!(re[440] > 0.999, "after a full recent window: {}", re[440]);
        assert!(
            re[..239].iter().all(|s| *s == 0.0),
            "warming up until both windows are full"
        );
    }

    #[test]
    fn bad_input_and_parameters_are_refused() {
        let mut d = EwmaParams::default().build().unwrap();
        d.update(1000, 1.0).unwrap();
        assert!(matches!(
            d.update(2000, f64::NAN),
            Err(DetectorError::NonFinite { ts_ms: 2000, .. })
        ));
        // Refused values were not learnt.
        let p = d.update(3000, 1.0).unwrap();
        assert_eq!(p.expected, 1.0);
        for (params, name) in [
            (
                EwmaParams {
                    half_life: HalfLife::Seconds(0.0),
                    ..EwmaParams::default()
                },
                "half_life_secs",
            ),
            (
                EwmaParams {
                    half_life: HalfLife::Samples(f64::NAN),
                    ..EwmaParams::default()
                },
                "half_life",
            ),
            (
                EwmaParams {
                    season_secs: Some(-1.0),
                    ..EwmaParams::default()
                },
                "season_secs",
            ),
            (
                EwmaParams {
                    repeat_weight: 1.5,
                    ..EwmaParams::default()
                },
                "repeat_weight",
            ),
            (
                EwmaParams {
                    rel_std: -0.1,
                    ..EwmaParams::default()
                },
                "rel_std",
            ),
        ] {
            let e = params.build().unwrap_err();
            assert!(e.to_string().contains(&format!("`{name}`")), "{e}");
        }
        let e = RelativeEntropyParams {
            reference: 10,
            recent: 8,
            bins: 8,
        }
        .build()
        .unwrap_err();
        assert!(e.to_string().contains("reference"), "{e}");
        let e = RelativeEntropyParams {
            bins: 1,
            ..RelativeEntropyParams::default()
        }
        .build()
        .unwrap_err();
        assert!(e.to_string().contains("bins"), "{e}");
    }

    #[test]
    fn a_flat_series_does_not_explode() {
        let mut d = EwmaParams {
            min_std: 0.5,
            ..EwmaParams::default()
        }
        .build()
        .unwrap();
        for i in 0..50 {
            d.update(i * 1000, 3.0).unwrap();
        }
        let p = d.update(50_000, 3.5).unwrap();
        assert!((p.statistic - 1.0).abs() < 1e-9, "{}", p.statistic);
    }

    #[test]
    fn tails_keep_their_resolution() {
        for x in [0.0, 0.3, 1.0, 2.5, 5.0, 8.0] {
            assert!((ln_erfc(x) - erfc(x).ln()).abs() < 1e-6, "{x}");
        }
        // Far past where erfc underflows, ln erfc keeps falling: no two tails are equal.
        let far: Vec<f64> = [10.0, 27.0, 40.0, 100.0].map(ln_erfc).to_vec();
        assert!(far.windows(2).all(|w| w[1] < w[0]), "{far:?}");
        assert!((ln_erfc(40.0) + 1604.0).abs() < 2.0, "{}", ln_erfc(40.0));
        for (x, k) in [(3.0, 4.0), (12.0, 7.0), (30.0, 7.0)] {
            let direct = (1.0 - chi2_cdf(x, k)).ln();
            assert!((ln_chi2_sf(x, k) - direct).abs() < 1e-6, "{x} {k}");
        }
        assert!(ln_chi2_sf(4000.0, 7.0) < ln_chi2_sf(2000.0, 7.0));
        assert!(ln_chi2_sf(4000.0, 7.0).is_finite());
    }

    #[test]
    fn extreme_values_are_ordered_by_surprisal_where_scores_saturate() {
        let mut a = EwmaParams::default().build().unwrap();
        let mut b = a.clone();
        let noise = normals(4, 300);
        for (i, e) in noise.iter().enumerate() {
            let t = i as i64 * 60_000;
            a.update(t, 10.0 + e).unwrap();
            b.update(t, 10.0 + e).unwrap();
        }
        let big = a.update(300 * 60_000, 60.0).unwrap();
        let bigger = b.update(300 * 60_000, 90.0).unwrap();
        assert_eq!(big.score, 1.0);
        assert_eq!(bigger.score, 1.0);
        assert!(
            bigger.surprisal > big.surprisal + 100.0,
            "{big:?} {bigger:?}"
        );
        // Where the score resolves, surprisal is -log2 of its tail.
        let mut c = EwmaParams::default().build().unwrap();
        for (i, e) in noise.iter().enumerate() {
            let p = c.update(i as i64 * 60_000, 10.0 + e).unwrap();
            if i >= 20 && p.score < 0.999_999 {
                let bits = -(1.0 - p.score).log2();
                assert!((p.surprisal - bits).abs() < 1e-3 * bits.max(1.0), "{p:?}");
            }
        }
    }

    #[test]
    fn cadence_sets_the_seasonal_period_in_values() {
        for (step_ms, period) in [(300_000, Some(288)), (3_600_000, Some(24)), (1000, None)] {
            let mut d = EwmaParams::default().build().unwrap();
            for i in 0..100 {
                d.update(i * step_ms, 1.0).unwrap();
                if i < 64 {
                    assert_eq!(d.period(), None);
                }
            }
            assert_eq!(d.period(), period, "step {step_ms} ms");
        }
        let mut d = EwmaParams {
            season_secs: None,
            ..EwmaParams::default()
        }
        .build()
        .unwrap();
        for i in 0..100 {
            d.update(i * 300_000, 1.0).unwrap();
        }
        assert_eq!(d.period(), None);
    }

    /// Five-minute values of a daily cycle (amplitude 50) with noise; on day `flat_day` the
    /// afternoon stays at the day's mean, inside the usual range.
    fn daily(days: usize, flat_day: usize) -> (Vec<i64>, Vec<f64>) {
        let noise = normals(6, days * 288);
        (0..days * 288)
            .map(|i| {
                let phase = (i % 288) as f64 / 288.0 * std::f64::consts::TAU;
                let flat = i / 288 == flat_day && (144..216).contains(&(i % 288));
                let v = 100.0 + if flat { 0.0 } else { 50.0 * phase.sin() } + noise[i];
                (i as i64 * 300_000, v)
            })
            .unzip()
    }

    #[test]
    fn a_change_of_daily_pattern_inside_the_usual_range_is_found() {
        let (ts, vs) = daily(10, 8);
        let flat = 8 * 288 + 144;
        let run = |p: EwmaParams| -> Vec<f64> {
            let mut d = p.build().unwrap();
            d.run(&ts, &vs)
                .into_iter()
                .map(|r| r.unwrap().surprisal)
                .collect()
        };
        let seasonal = run(EwmaParams::default());
        let level_only = run(EwmaParams {
            season_secs: None,
            ..EwmaParams::default()
        });
        let max = |s: &[f64]| s.iter().copied().fold(0.0, f64::max);
        // Days 3 to 7: the cycle itself is learnt (nothing near 8 bits, p ≈ 0.004) ...
        let normal_days = 3 * 288..8 * 288;
        assert!(max(&seasonal[normal_days.clone()]) < 8.0);
        // ... and the flat afternoon stands far above it (p < 3e-5), which the level alone
        // misses.
        let change = max(&seasonal[flat..flat + 72]);
        assert!(change > 15.0, "{change}");
        assert!(max(&level_only[flat..flat + 72]) < max(&level_only[normal_days]));
    }

    #[test]
    fn a_lasting_shift_scores_at_its_onset_not_on_every_value() {
        let noise = normals(7, 600);
        let values: Vec<f64> = (0..600)
            .map(|i| if i < 400 { 20.0 } else { 35.0 } + noise[i])
            .collect();
        let ts: Vec<i64> = (0..600).map(|i| i * 60_000).collect();
        let count = |p: EwmaParams| {
            let mut d = p.build().unwrap();
            let s: Vec<f64> = d
                .run(&ts, &values)
                .into_iter()
                .map(|r| r.unwrap().surprisal)
                .collect();
            (s[400], s[401..].iter().filter(|b| **b > 20.0).count())
        };
        let (onset, after) = count(EwmaParams::default());
        assert!(onset > 40.0, "{onset}");
        assert!(after <= 2, "{after} more alarms");
        let (_, undamped) = count(EwmaParams {
            repeat_window: 0,
            ..EwmaParams::default()
        });
        assert!(undamped > 50, "{undamped}");
    }

    #[test]
    fn repeated_and_backward_timestamps_are_scored_as_the_next_values() {
        let noise = normals(8, 200);
        let ts: Vec<i64> = (0..200).map(|i| i * 1000).collect();
        let mut shuffled = ts.clone();
        shuffled[50] = shuffled[49];
        shuffled[120] = 3;
        let values: Vec<f64> = noise.iter().map(|e| 5.0 + e).collect();
        let mut a = EwmaParams::default().build().unwrap();
        let mut b = EwmaParams::default().build().unwrap();
        let pa: Vec<Point> = a
            .run(&ts, &values)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let pb: Vec<Point> = b
            .run(&shuffled, &values)
            .into_iter()
            .map(Result::unwrap)
            .collect();
        // With a half-life in values, timestamps do not weigh: the same scores.
        for (x, y) in pa.iter().zip(&pb) {
            assert_eq!(x.surprisal, y.surprisal);
        }
        let mut s = EwmaParams::plain(60.0, 5, 1e-6).build().unwrap();
        for (t, v) in shuffled.iter().zip(&values) {
            assert!(s.update(*t, *v).is_ok());
        }
    }
}
