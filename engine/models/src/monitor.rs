//! Per-endpoint monitoring with the univariate detectors: aggregate attacks that no single
//! client shows (many addresses failing one login each, a surge spread over many clients).
//!
//! Requests are counted per endpoint in fixed event-time buckets (default 10 s). When a
//! bucket closes, three series get one value each, and each series has its own
//! [`Ewma`] detector: the request rate (requests per second; both directions count, a drop
//! can be an outage), the authentication failures (401/403 per bucket) and the other errors
//! (status ≥ 400 without 401/403, per bucket); for the failure series only increases count.
//! Buckets without requests are series values of 0, so quiet periods are learnt too (gaps
//! longer than `max_gap_buckets` restart the endpoint's detectors). An alert is a bucket
//! value whose detector score reaches `threshold`. An alerting value is not learnt, for at
//! most `max_hold_buckets` buckets in a row: an attack keeps alerting while it lasts
//! instead of becoming the baseline within minutes, and a lasting change of level is
//! learnt after the hold.

use std::collections::HashMap;

use crate::univariate::{Ewma, EwmaParams};

/// Parameters of the monitor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MonitorParams {
    /// Bucket width in milliseconds.
    pub bucket_ms: i64,
    /// Detector parameters (half-life, warm-up in buckets, standard-deviation floor).
    pub ewma: EwmaParams,
    /// Alert at this detector score.
    pub threshold: f64,
    /// A longer silence restarts the endpoint's detectors.
    pub max_gap_buckets: i64,
    /// Alerting values are not learnt for up to this many consecutive buckets (0: every
    /// value is learnt).
    pub max_hold_buckets: u32,
    /// At most this many endpoints get series of their own; requests to further ones share
    /// the [`OVERFLOW_ENDPOINT`] series (counted in [`EndpointMonitor::overflowed`]).
    pub max_endpoints: usize,
    /// At most this many alerts are kept until [`EndpointMonitor::finish`]; later ones are
    /// counted in [`EndpointMonitor::alerts_dropped`].
    pub max_alerts: usize,
}

/// The series shared by endpoints beyond `max_endpoints`.
pub const OVERFLOW_ENDPOINT: &str = "{other}";

impl Default for MonitorParams {
    fn default() -> Self {
        Self {
            bucket_ms: 10_000,
            ewma: EwmaParams::plain(600.0, 30, 0.5),
            threshold: 0.9999,
            max_gap_buckets: 360,
            max_hold_buckets: 360,
            max_endpoints: 10_000,
            max_alerts: 100_000,
        }
    }
}

/// The monitored series.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    /// Requests per second.
    RequestRate,
    /// 401/403 answers per bucket.
    AuthFailures,
    /// Other answers ≥ 400 per bucket.
    Errors,
}

impl Metric {
    /// Its name in alerts.
    pub fn name(self) -> &'static str {
        match self {
            Metric::RequestRate => "request_rate",
            Metric::AuthFailures => "auth_failures",
            Metric::Errors => "errors",
        }
    }
}

/// One alert.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// Endpoint template.
    pub endpoint: String,
    /// Which series.
    pub metric: Metric,
    /// Start of the bucket (ms).
    pub bucket_start_ms: i64,
    /// The bucket's value.
    pub value: f64,
    /// What the detector expected.
    pub expected: f64,
    /// Its z-score.
    pub z: f64,
    /// Its score.
    pub score: f64,
}

#[derive(Debug, Clone)]
struct Series {
    start_ms: i64,
    requests: u64,
    auth: u64,
    errors: u64,
    rate: Ewma,
    auth_d: Ewma,
    errors_d: Ewma,
    /// Consecutive alerting buckets not learnt, per metric.
    held: [u32; 3],
}

/// Per-endpoint bucket series with their detectors.
#[derive(Debug, Clone)]
pub struct EndpointMonitor {
    p: MonitorParams,
    endpoints: HashMap<String, Series>,
    alerts: Vec<Alert>,
    buckets: u64,
    overflowed: u64,
    alerts_dropped: u64,
}

impl EndpointMonitor {
    /// A monitor; the detector parameters are checked here.
    pub fn new(p: MonitorParams) -> Result<Self, crate::univariate::DetectorError> {
        p.ewma.build()?;
        if p.bucket_ms <= 0
            || !(0.0..=1.0).contains(&p.threshold)
            || p.max_gap_buckets < 1
            || p.max_endpoints < 1
        {
            return Err(crate::univariate::DetectorError::Param {
                name: "monitor",
                reason:
                    "bucket_ms > 0, threshold in [0, 1], max_gap_buckets ≥ 1 and max_endpoints ≥ 1"
                        .into(),
            });
        }
        Ok(Self {
            p,
            endpoints: HashMap::new(),
            alerts: Vec::new(),
            buckets: 0,
            overflowed: 0,
            alerts_dropped: 0,
        })
    }

    fn fresh(&self, start_ms: i64) -> Series {
        let d = || self.p.ewma.build().expect("checked in new");
        Series {
            start_ms,
            requests: 0,
            auth: 0,
            errors: 0,
            rate: d(),
            auth_d: d(),
            errors_d: d(),
            held: [0; 3],
        }
    }

    /// One request, in event-time order per endpoint (older ones are counted in the current
    /// bucket).
    pub fn add(&mut self, endpoint: &str, ts_ms: i64, status: u16) {
        let start = ts_ms.div_euclid(self.p.bucket_ms) * self.p.bucket_ms;
        let mut endpoint = endpoint;
        if !self.endpoints.contains_key(endpoint) {
            if self.endpoints.len() >= self.p.max_endpoints {
                self.overflowed += 1;
                endpoint = OVERFLOW_ENDPOINT;
            }
            if !self.endpoints.contains_key(endpoint) {
                let s = self.fresh(start);
                self.endpoints.insert(endpoint.to_string(), s);
            }
        }
        let p = self.p;
        let s = self.endpoints.get_mut(endpoint).expect("inserted above");
        if start > s.start_ms {
            let gap = (start - s.start_ms) / p.bucket_ms;
            if gap > p.max_gap_buckets {
                close(s, endpoint, &p, &mut self.alerts);
                self.buckets += 1;
                let d = || p.ewma.build().expect("checked in new");
                (s.rate, s.auth_d, s.errors_d) = (d(), d(), d());
                s.held = [0; 3];
                s.start_ms = start;
            } else {
                while s.start_ms < start {
                    close(s, endpoint, &p, &mut self.alerts);
                    self.buckets += 1;
                    s.start_ms += p.bucket_ms;
                    (s.requests, s.auth, s.errors) = (0, 0, 0);
                }
            }
            (s.requests, s.auth, s.errors) = (0, 0, 0);
        }
        cap_alerts(&mut self.alerts, p.max_alerts, &mut self.alerts_dropped);
        s.requests += 1;
        match status {
            401 | 403 => s.auth += 1,
            400.. => s.errors += 1,
            _ => {}
        }
    }

    /// Closes every endpoint's open bucket (end of input) and returns all alerts, oldest
    /// first.
    pub fn finish(&mut self) -> Vec<Alert> {
        let p = self.p;
        for (e, s) in &mut self.endpoints {
            if s.requests > 0 {
                close(s, e, &p, &mut self.alerts);
                self.buckets += 1;
                (s.requests, s.auth, s.errors) = (0, 0, 0);
            }
        }
        cap_alerts(&mut self.alerts, p.max_alerts, &mut self.alerts_dropped);
        let mut a = std::mem::take(&mut self.alerts);
        a.sort_by(|x, y| {
            x.bucket_start_ms
                .cmp(&y.bucket_start_ms)
                .then(x.endpoint.cmp(&y.endpoint))
                .then(x.metric.cmp(&y.metric))
        });
        a
    }

    /// Buckets closed so far (over all endpoints).
    pub fn buckets(&self) -> u64 {
        self.buckets
    }

    /// Requests counted in the shared overflow series because `max_endpoints` was reached.
    pub fn overflowed(&self) -> u64 {
        self.overflowed
    }

    /// Alerts not kept because `max_alerts` was reached.
    pub fn alerts_dropped(&self) -> u64 {
        self.alerts_dropped
    }

    /// Endpoints with series of their own (the overflow series included).
    pub fn endpoints(&self) -> usize {
        self.endpoints.len()
    }
}

/// Keeps at most `max` alerts, counting the others in `dropped`.
fn cap_alerts(alerts: &mut Vec<Alert>, max: usize, dropped: &mut u64) {
    if alerts.len() > max {
        *dropped += (alerts.len() - max) as u64;
        alerts.truncate(max);
    }
}

fn close(s: &mut Series, endpoint: &str, p: &MonitorParams, alerts: &mut Vec<Alert>) {
    let t = s.start_ms;
    let secs = p.bucket_ms as f64 / 1000.0;
    let values = [
        (Metric::RequestRate, s.requests as f64 / secs, false),
        (Metric::AuthFailures, s.auth as f64, true),
        (Metric::Errors, s.errors as f64, true),
    ];
    for (m, (metric, v, up_only)) in values.into_iter().enumerate() {
        let d = match metric {
            Metric::RequestRate => &mut s.rate,
            Metric::AuthFailures => &mut s.auth_d,
            Metric::Errors => &mut s.errors_d,
        };
        let before = (s.held[m] < p.max_hold_buckets).then(|| d.clone());
        let Ok(pt) = d.update(t, v) else { continue };
        let alert = pt.score >= p.threshold && (!up_only || pt.statistic > 0.0);
        match (alert, before) {
            // Not learnt: the detector as it was before this value.
            (true, Some(b)) => {
                *d = b;
                s.held[m] += 1;
            }
            // The hold is spent: learnt, until a bucket does not alert.
            (true, None) => {}
            (false, _) => s.held[m] = 0,
        }
        if alert {
            alerts.push(Alert {
                endpoint: endpoint.to_string(),
                metric,
                bucket_start_ms: t,
                value: v,
                expected: pt.expected,
                z: pt.statistic,
                score: pt.score,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spread_out_failure_wave_alerts_on_its_endpoint_only() {
        let mut m = EndpointMonitor::new(MonitorParams::default()).unwrap();
        // 30 minutes of steady traffic on two endpoints, an occasional failed login.
        let mut t = 0i64;
        for i in 0..1800 {
            t = i * 1000;
            m.add("GET /products", t, 200);
            if i % 2 == 0 {
                m.add("POST /login", t + 10, if i % 97 == 0 { 401 } else { 200 });
            }
        }
        // Then 2 minutes with 5 failed logins a second from anywhere.
        for i in 0..120 {
            let ts = t + 1000 + i * 1000;
            for k in 0..5 {
                m.add("POST /login", ts + k, 401);
            }
            m.add("GET /products", ts, 200);
        }
        let alerts = m.finish();
        assert!(!alerts.is_empty());
        assert!(
            alerts
                .iter()
                .all(|a| a.endpoint == "POST /login" && a.bucket_start_ms > t - 10_000),
            "{alerts:?}"
        );
        assert!(alerts.iter().any(|a| a.metric == Metric::AuthFailures));
        assert!(m.buckets() >= 2 * 190);
    }

    /// Failed logins per 10-second bucket: about one for 30 minutes, then `wave` minutes of
    /// about four, then quiet again; the auth-failure alerts' bucket starts.
    fn failure_wave(p: MonitorParams, wave: i64) -> (Vec<i64>, i64, i64) {
        let mut m = EndpointMonitor::new(p).unwrap();
        let start = 1800 * 1000;
        let end = start + wave * 60_000;
        for i in 0..(3600 + wave * 60) {
            let t = i * 1000;
            let fails = if (start..end).contains(&t) { 4 } else { 1 };
            // The base rate varies a little, so the detectors learn a spread.
            if i % 10 < fails + i64::from(i % 70 == 0) {
                m.add("POST /login", t, 401);
            }
            m.add("POST /login", t + 1, 200);
        }
        let alerts = m
            .finish()
            .into_iter()
            .filter(|a| a.metric == Metric::AuthFailures)
            .map(|a| a.bucket_start_ms)
            .collect();
        (alerts, start, end)
    }

    #[test]
    fn an_alert_stays_up_while_the_attack_lasts() {
        // Held: the wave is not learnt, so its last minutes alert like its first.
        let (held, start, end) = failure_wave(MonitorParams::default(), 20);
        let last_five = held
            .iter()
            .filter(|t| **t >= end - 300_000 && **t < end)
            .count();
        assert!(last_five >= 25, "{last_five} of 30 buckets: {held:?}");
        assert!(held.iter().all(|t| *t >= start), "{held:?}");
        // Learnt as before: the wave becomes the baseline within minutes.
        let learnt = MonitorParams {
            max_hold_buckets: 0,
            ..MonitorParams::default()
        };
        let (adapted, _, end) = failure_wave(learnt, 20);
        let last_five = adapted
            .iter()
            .filter(|t| **t >= end - 300_000 && **t < end)
            .count();
        assert!(last_five <= 5, "{last_five}: {adapted:?}");
        // A hold of 30 buckets: after five minutes of alerts the new level is learnt.
        let short = MonitorParams {
            max_hold_buckets: 30,
            ..MonitorParams::default()
        };
        let (alerts, start, end) = failure_wave(short, 20);
        assert!(alerts.iter().filter(|t| **t < start + 300_000).count() >= 25);
        assert!(
            alerts.iter().filter(|t| **t >= end - 300_000).count() <= 5,
            "{alerts:?}"
        );
    }

    #[test]
    fn endpoints_and_alerts_are_capped() {
        let p = MonitorParams {
            max_endpoints: 100,
            max_alerts: 5,
            ewma: EwmaParams {
                warmup: 2,
                ..MonitorParams::default().ewma
            },
            ..MonitorParams::default()
        };
        let mut m = EndpointMonitor::new(p).unwrap();
        for i in 0..100_000i64 {
            m.add(&format!("GET /raw-{i}"), i * 10, 200);
        }
        assert_eq!(m.endpoints(), 101, "100 endpoints and the shared series");
        assert_eq!(m.overflowed(), 100_000 - 100);
        // A steady endpoint, then a burst: more alerts than are kept.
        let mut m = EndpointMonitor::new(p).unwrap();
        for i in 0..200i64 {
            m.add("POST /login", i * 10_000, 200);
        }
        for i in 0..200i64 {
            for k in 0..50 {
                m.add("POST /login", 2_000_000 + i * 10_000 + k, 401);
            }
        }
        let alerts = m.finish();
        assert_eq!(alerts.len(), 5);
        assert!(m.alerts_dropped() > 0);
    }

    #[test]
    fn steady_traffic_raises_nothing_and_bad_parameters_are_refused() {
        let mut m = EndpointMonitor::new(MonitorParams::default()).unwrap();
        for i in 0..3600 {
            m.add("GET /a", i * 1000, if i % 50 == 0 { 500 } else { 200 });
        }
        assert_eq!(m.finish(), Vec::new());
        let bad = MonitorParams {
            bucket_ms: 0,
            ..MonitorParams::default()
        };
        assert!(EndpointMonitor::new(bad).is_err());
    }
}
