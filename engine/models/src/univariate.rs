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
    /// A timestamp is older than the previous one (it is not learnt from).
    #[error("ts {ts_ms} is before the previous value's ts {last_ms}")]
    OutOfOrder {
        /// Its timestamp.
        ts_ms: i64,
        /// The previous timestamp.
        last_ms: i64,
    },
}

/// One scored value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Timestamp (ms).
    pub ts_ms: i64,
    /// The value.
    pub value: f64,
    /// What the detector expected (EWMA mean; reference median).
    pub expected: f64,
    /// The test statistic (EWMA: z-score; relative entropy: G statistic).
    pub statistic: f64,
    /// Anomaly score in [0, 1]; 0 while warming up.
    pub score: f64,
}

fn check_order(ts_ms: i64, value: f64, last: Option<i64>) -> Result<(), DetectorError> {
    if !value.is_finite() {
        return Err(DetectorError::NonFinite { ts_ms, value });
    }
    match last {
        Some(last_ms) if ts_ms < last_ms => Err(DetectorError::OutOfOrder { ts_ms, last_ms }),
        _ => Ok(()),
    }
}

/// Parameters of [`Ewma`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EwmaParams {
    /// Half-life of the exponential weights, in seconds of event time (irregular series are
    /// weighted by the time between values).
    pub half_life_secs: f64,
    /// Values learnt before scores are given.
    pub warmup: usize,
    /// Floor of the standard deviation (in the series' unit), so that a flat series does not
    /// turn every small change into an infinite z-score.
    pub min_std: f64,
}

impl Default for EwmaParams {
    fn default() -> Self {
        Self {
            half_life_secs: 600.0,
            warmup: 10,
            min_std: 1e-6,
        }
    }
}

impl EwmaParams {
    /// Checks the parameters and builds the detector.
    pub fn build(self) -> Result<Ewma, DetectorError> {
        if !(self.half_life_secs.is_finite() && self.half_life_secs > 0.0) {
            return Err(DetectorError::Param {
                name: "half_life_secs",
                reason: format!("must be > 0, got {}", self.half_life_secs),
            });
        }
        if !(self.min_std.is_finite() && self.min_std > 0.0) {
            return Err(DetectorError::Param {
                name: "min_std",
                reason: format!("must be > 0, got {}", self.min_std),
            });
        }
        Ok(Ewma {
            p: self,
            mean: 0.0,
            var: 0.0,
            n: 0,
            last_ms: None,
        })
    }
}

/// Exponentially weighted mean and variance (West's incremental form) with a time-based
/// weight; a value is scored by its two-sided normal tail against the mean and standard
/// deviation learnt so far.
#[derive(Debug, Clone)]
pub struct Ewma {
    p: EwmaParams,
    mean: f64,
    var: f64,
    n: usize,
    last_ms: Option<i64>,
}

impl Ewma {
    /// Scores a value, then learns from it.
    pub fn update(&mut self, ts_ms: i64, value: f64) -> Result<Point, DetectorError> {
        check_order(ts_ms, value, self.last_ms)?;
        let Some(last) = self.last_ms else {
            self.mean = value;
            self.n = 1;
            self.last_ms = Some(ts_ms);
            return Ok(Point {
                ts_ms,
                value,
                expected: value,
                statistic: 0.0,
                score: 0.0,
            });
        };
        let std = self.var.sqrt().max(self.p.min_std);
        let z = (value - self.mean) / std;
        let score = if self.n < self.p.warmup {
            0.0
        } else {
            1.0 - erfc(z.abs() / std::f64::consts::SQRT_2)
        };
        let expected = self.mean;
        let dt = (ts_ms - last) as f64 / 1000.0;
        let alpha = 1.0 - 0.5f64.powf(dt / self.p.half_life_secs);
        let diff = value - self.mean;
        let incr = alpha * diff;
        self.mean += incr;
        self.var = (1.0 - alpha) * (self.var + diff * incr);
        self.n += 1;
        self.last_ms = Some(ts_ms);
        Ok(Point {
            ts_ms,
            value,
            expected,
            statistic: z,
            score: score.clamp(0.0, 1.0),
        })
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
            last_ms: None,
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
    last_ms: Option<i64>,
}

impl RelativeEntropy {
    /// Adds a value to the recent window and scores the window against the reference.
    pub fn update(&mut self, ts_ms: i64, value: f64) -> Result<Point, DetectorError> {
        check_order(ts_ms, value, self.last_ms)?;
        self.last_ms = Some(ts_ms);
        self.recent.push_back(value);
        if self.recent.len() > self.p.recent {
            let old = self.recent.pop_front().expect("non-empty");
            self.reference.push_back(old);
            if self.reference.len() > self.p.reference {
                self.reference.pop_front();
            }
        }
        if self.reference.len() < self.p.reference || self.recent.len() < self.p.recent {
            return Ok(Point {
                ts_ms,
                value,
                expected: value,
                statistic: 0.0,
                score: 0.0,
            });
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
        let score = chi2_cdf(g, (b - 1) as f64);
        Ok(Point {
            ts_ms,
            value,
            expected: sorted[sorted.len() / 2],
            statistic: g,
            score,
        })
    }
}

/// Complementary error function by the Chebyshev fit of Numerical Recipes (`erfcc`):
/// fractional error below 1.2e-7 everywhere.
pub fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let r = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 { r } else { 2.0 - r }
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

/// Regularised lower incomplete gamma P(a, x): series below a + 1, continued fraction above.
fn gamma_p(a: f64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
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
        (sum.ln() - x + a * x.ln() - gln).exp().min(1.0)
    } else {
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
        (1.0 - (-x + a * x.ln() - gln).exp() * h).max(0.0)
    }
}

/// CDF of the χ² distribution with `k` degrees of freedom.
pub fn chi2_cdf(x: f64, k: f64) -> f64 {
    gamma_p(k / 2.0, x / 2.0)
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
    }

    #[test]
    fn ewma_flags_a_level_shift_then_adapts() {
        let mut d = EwmaParams {
            half_life_secs: 300.0,
            warmup: 20,
            min_std: 1e-6,
        }
        .build()
        .unwrap();
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
        assert!(matches!(
            d.update(500, 1.0),
            Err(DetectorError::OutOfOrder {
                ts_ms: 500,
                last_ms: 1000
            })
        ));
        // Refused values were not learnt.
        let p = d.update(3000, 1.0).unwrap();
        assert_eq!(p.expected, 1.0);
        let e = EwmaParams {
            half_life_secs: 0.0,
            ..EwmaParams::default()
        }
        .build()
        .unwrap_err();
        assert!(e.to_string().contains("half_life_secs"), "{e}");
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
}
