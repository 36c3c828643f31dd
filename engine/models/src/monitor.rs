//! Per-endpoint monitoring: aggregate attacks that no single client shows (many addresses
//! failing one login each, a surge spread over many clients), and the clients that take
//! part in them.
//!
//! Requests are counted per endpoint in fixed event-time buckets (default 10 s). When a
//! bucket closes, each endpoint's series get one value each:
//!
//! - **request rate** (requests per second; both directions count, a drop can be an outage)
//!   and **errors** (answers ≥ 400 other than 401/403, per bucket; only increases count),
//!   each with its own [`Ewma`] detector. Buckets without requests are values of 0, so quiet
//!   periods are learnt too; gaps longer than `max_gap_buckets` restart them.
//! - **authentication failures**: the share of the endpoint's clients that got a 401/403,
//!   tested against the endpoint's baseline share. The unit is a client in a bucket (a
//!   client retrying ten times in one bucket counts once: single heavy clients are the
//!   per-client detectors' job; beyond `max_bucket_clients` clients in the open buckets,
//!   each further request is a unit). Over the last 1, 6 and 60 buckets (10 s, 1 min, 10 min),
//!   the number of failing units is compared with the binomial distribution of the window's
//!   units at the baseline share; the smallest tail probability, times the number of
//!   windows (Bonferroni), is the bucket's p-value, its score `1 − p` and its surprisal
//!   `−log2 p`. A slow attack, a few failures a minute from ever new addresses, is invisible
//!   in one bucket and certain over ten minutes. The baseline is a decayed count of units
//!   and failing units: from the model (`gatewatch train` learns it from the training
//!   traffic, [`MonitorBaselines`]), else learnt from the first `warmup_units` units before
//!   the endpoint can alert (a new deployment's warm-up).
//!
//! An alert is a bucket whose score reaches `threshold`. An alerting value is not learnt, for
//! at most `max_hold_buckets` buckets in a row: an attack keeps alerting while it lasts
//! instead of becoming the baseline within minutes, and a lasting change of level is
//! learnt after the hold.
//!
//! **Client alerts.** A client with authentication failures on an endpoint is followed until
//! `settle_ms` after its last failure (judged at the first event of the next bucket, in
//! event time). If a success on that endpoint (an answer below 400)
//! came after its last failure, it is let go: that is a user who mistyped a password. If
//! not, and a bucket holding one of its failures alerted, the monitor emits a
//! [`ClientAlert`] with the highest such score: the client took part in the anomaly, and
//! rules can act on it. Followed clients are capped (`max_pending`, counted).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, DefaultHasher};

use serde::{Deserialize, Serialize};

use crate::univariate::{DetectorError, Ewma, EwmaParams, ln_binom_sf};

/// Maps read on every request: hashbrown's seeded foldhash.
type FastMap<K, V> = hashbrown::HashMap<K, V>;

/// Parameters of the authentication-failure share test and its client alerts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FailureParams {
    /// Windows tested, in buckets (each ≥ 1, at most [`MAX_WINDOW`]).
    pub windows: [u32; 3],
    /// The baseline share never goes below this (a failure on an endpoint where none was
    /// seen is rare, not impossible).
    pub min_share: f64,
    /// Units an endpoint without a trained baseline learns before it can alert.
    pub warmup_units: f64,
    /// Half-life of the baseline, in buckets with requests.
    pub half_life_buckets: f64,
    /// A trained baseline starts with at most this many units (so it can still adapt).
    pub prior_units: f64,
    /// A client's failures are judged this long after its last one (ms).
    pub settle_ms: i64,
    /// At most this many clients are followed; failures of further ones are counted in
    /// [`EndpointMonitor::pending_dropped`] and not attributed.
    pub max_pending: usize,
    /// At most this many distinct clients are told apart in the open buckets of all
    /// endpoints together; the requests of further ones count as a unit each.
    pub max_bucket_clients: usize,
}

/// The longest window of the failure-share test, in buckets.
pub const MAX_WINDOW: u32 = 8640;

impl Default for FailureParams {
    fn default() -> Self {
        Self {
            windows: [1, 6, 60],
            min_share: 1e-3,
            warmup_units: 200.0,
            half_life_buckets: 360.0,
            prior_units: 10_000.0,
            settle_ms: 60_000,
            max_pending: 100_000,
            max_bucket_clients: 1_000_000,
        }
    }
}

/// Parameters of the monitor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MonitorParams {
    /// Bucket width in milliseconds.
    pub bucket_ms: i64,
    /// Parameters of the request-rate and error detectors (half-life, warm-up in buckets,
    /// standard-deviation floor).
    pub ewma: EwmaParams,
    /// The authentication-failure share test.
    pub failures: FailureParams,
    /// Alert at this score.
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
            failures: FailureParams::default(),
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
    /// Clients with a 401/403 answer, against the endpoint's baseline share.
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
    /// The bucket's value (for `auth_failures`: failing clients in the most significant
    /// window).
    pub value: f64,
    /// What the detector expected (for `auth_failures`: the window's clients times the
    /// baseline share).
    pub expected: f64,
    /// Its z-score.
    pub z: f64,
    /// Its score.
    pub score: f64,
    /// `−log2(1 − score)` at full resolution: bits.
    pub surprisal: f64,
}

/// A client that took part in an endpoint's authentication-failure anomaly.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientAlert {
    /// When it was decided: `settle_ms` after the client's last failure (ms).
    pub ts_ms: i64,
    /// The client key.
    pub client: String,
    /// Endpoint template.
    pub endpoint: String,
    /// The client's first and last failure (ms).
    pub first_failure_ms: i64,
    /// See `first_failure_ms`.
    pub last_failure_ms: i64,
    /// Its failures on the endpoint.
    pub failures: u32,
    /// The highest score of an alerting bucket holding one of its failures.
    pub score: f64,
    /// That bucket's surprisal (bits).
    pub surprisal: f64,
}

/// An endpoint's baseline share of clients with authentication failures.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareBaseline {
    /// Clients per bucket, summed and decayed.
    pub units: f64,
    /// Those with a 401/403.
    pub failed: f64,
}

/// The per-endpoint baselines a model carries (`monitor.json`), learnt by the monitor on the
/// training traffic.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorBaselines {
    /// Bucket width they were learnt with (ms).
    pub bucket_ms: i64,
    /// Authentication-failure shares by endpoint template.
    pub auth_failures: BTreeMap<String, ShareBaseline>,
}

impl MonitorBaselines {
    /// Parses and checks a `monitor.json` text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let b: Self = serde_json::from_str(text).map_err(|e| e.to_string())?;
        b.check()?;
        Ok(b)
    }

    /// Every value in range: a positive bucket width, counts finite and ≥ 0, failures at
    /// most the units, at most [`MonitorParams::max_endpoints`] endpoints.
    pub fn check(&self) -> Result<(), String> {
        if self.bucket_ms <= 0 {
            return Err(format!("bucket_ms {} is not positive", self.bucket_ms));
        }
        let max = MonitorParams::default().max_endpoints;
        if self.auth_failures.len() > max {
            return Err(format!(
                "{} endpoints, at most {max}",
                self.auth_failures.len()
            ));
        }
        for (e, b) in &self.auth_failures {
            let units_ok = b.units.is_finite() && (0.0..=1e15).contains(&b.units);
            if !(units_ok && b.failed.is_finite() && (0.0..=b.units).contains(&b.failed)) {
                return Err(format!(
                    "endpoint {e:?}: units {} and failed {} (want 0 ≤ failed ≤ units ≤ 1e15)",
                    b.units, b.failed
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
struct Series {
    id: u32,
    start_ms: i64,
    requests: u64,
    errors: u64,
    rate: Ewma,
    errors_d: Ewma,
    /// The open bucket's clients (hash → had a 401/403), and units beyond the cap.
    clients: HashMap<u64, bool, BuildHasherDefault<DefaultHasher>>,
    extra_units: u64,
    extra_failed: u64,
    /// Closed buckets' (units, failing units), newest last, as many as the longest window.
    ring: VecDeque<(u64, u64)>,
    /// The failure-share baseline; `trained` when it came from a model.
    base: ShareBaseline,
    trained: bool,
    /// Consecutive alerting buckets not learnt, per metric.
    held: [u32; 3],
    /// The start of the last closed bucket whose failure share alerted, and its score.
    last_auth_alert: Option<(i64, f64)>,
}

/// A client followed after an authentication failure.
#[derive(Debug, Clone)]
struct Pending {
    client: Box<str>,
    first_ms: i64,
    last_ms: i64,
    failures: u32,
    /// A success came after the last failure.
    resolved: bool,
    score: f64,
    surprisal: f64,
}

/// Per-endpoint bucket series with their detectors, and the clients of their alerts.
#[derive(Debug, Clone)]
pub struct EndpointMonitor {
    p: MonitorParams,
    /// Maps read on every request: hashbrown's seeded foldhash (fast on short keys, not
    /// predictable from outside the process); nothing is emitted in their order.
    endpoints: FastMap<String, Series>,
    names: Vec<String>,
    trained: FastMap<String, ShareBaseline>,
    pending: FastMap<(u32, u64), Pending>,
    client_alerts: Vec<ClientAlert>,
    alerts: Vec<Alert>,
    /// Latest event time seen, and the bucket the followed clients were last judged in.
    now_ms: i64,
    judged_bucket: i64,
    /// Clients told apart in the open buckets.
    bucket_clients: usize,
    buckets: u64,
    overflowed: u64,
    alerts_dropped: u64,
    pending_dropped: u64,
}

fn param(reason: &str) -> DetectorError {
    DetectorError::Param {
        name: "monitor",
        reason: reason.into(),
    }
}

impl EndpointMonitor {
    /// A monitor; the detector parameters are checked here.
    pub fn new(p: MonitorParams) -> Result<Self, DetectorError> {
        p.ewma.build()?;
        if p.bucket_ms <= 0
            || !(0.0..=1.0).contains(&p.threshold)
            || p.max_gap_buckets < 1
            || p.max_endpoints < 1
        {
            return Err(param(
                "bucket_ms > 0, threshold in [0, 1], max_gap_buckets ≥ 1 and max_endpoints ≥ 1",
            ));
        }
        let f = &p.failures;
        if f.windows.iter().any(|w| !(1..=MAX_WINDOW).contains(w))
            || !(f.min_share > 0.0 && f.min_share < 1.0)
            || !(f.warmup_units >= 0.0 && f.warmup_units.is_finite())
            || !(f.half_life_buckets > 0.0 && f.half_life_buckets.is_finite())
            || !(f.prior_units > 0.0 && f.prior_units.is_finite())
            || f.settle_ms < 0
        {
            return Err(param(
                "failures: windows in 1..=8640 buckets, min_share in (0, 1), warmup_units ≥ 0, \
                 half_life_buckets > 0, prior_units > 0, settle_ms ≥ 0",
            ));
        }
        Ok(Self {
            p,
            endpoints: FastMap::default(),
            names: Vec::new(),
            trained: FastMap::default(),
            pending: FastMap::default(),
            client_alerts: Vec::new(),
            alerts: Vec::new(),
            now_ms: i64::MIN,
            judged_bucket: i64::MIN,
            bucket_clients: 0,
            buckets: 0,
            overflowed: 0,
            alerts_dropped: 0,
            pending_dropped: 0,
        })
    }

    /// A monitor that starts from a model's baselines (checked, and learnt with the same
    /// bucket width).
    pub fn with_baselines(p: MonitorParams, b: &MonitorBaselines) -> Result<Self, DetectorError> {
        let mut m = Self::new(p)?;
        b.check().map_err(|e| param(&format!("baselines: {e}")))?;
        if b.bucket_ms != p.bucket_ms {
            return Err(param(&format!(
                "baselines learnt with {} ms buckets, the monitor uses {} ms",
                b.bucket_ms, p.bucket_ms
            )));
        }
        let cap = p.failures.prior_units;
        m.trained = b
            .auth_failures
            .iter()
            .map(|(e, s)| {
                let k = if s.units > cap { cap / s.units } else { 1.0 };
                let s = ShareBaseline {
                    units: s.units * k,
                    failed: s.failed * k,
                };
                (e.clone(), s)
            })
            .collect();
        Ok(m)
    }

    /// The failure-share baselines as learnt so far (after [`finish`](Self::finish): over
    /// the whole input), for a model to carry.
    pub fn baselines(&self) -> MonitorBaselines {
        MonitorBaselines {
            bucket_ms: self.p.bucket_ms,
            auth_failures: self
                .endpoints
                .iter()
                .filter(|(_, s)| s.base.units > 0.0)
                .map(|(e, s)| (e.clone(), s.base))
                .collect(),
        }
    }

    fn fresh(&mut self, endpoint: &str, start_ms: i64) -> Series {
        let d = || self.p.ewma.build().expect("checked in new");
        let trained = self.trained.get(endpoint).copied();
        let id = self.names.len() as u32;
        self.names.push(endpoint.to_string());
        Series {
            id,
            start_ms,
            requests: 0,
            errors: 0,
            rate: d(),
            errors_d: d(),
            clients: HashMap::default(),
            extra_units: 0,
            extra_failed: 0,
            ring: VecDeque::new(),
            base: trained.unwrap_or(ShareBaseline {
                units: 0.0,
                failed: 0.0,
            }),
            trained: trained.is_some(),
            held: [0; 3],
            last_auth_alert: None,
        }
    }

    /// The authentication-failure alert score of `endpoint` at `ts_ms`: the score of the
    /// latest of its closed buckets whose failure share alerted, when that bucket is one of
    /// the two before the bucket of `ts_ms` (the endpoint is under a failure wave now), else
    /// 0. Read it after [`add`](Self::add) of the request at `ts_ms`, whose bucket is open.
    pub fn auth_alert(&self, endpoint: &str, ts_ms: i64) -> f64 {
        let Some(s) = self
            .endpoints
            .get(endpoint)
            .or_else(|| self.endpoints.get(OVERFLOW_ENDPOINT))
        else {
            return 0.0;
        };
        match s.last_auth_alert {
            Some((start, score)) if ts_ms < start + 3 * self.p.bucket_ms => score,
            _ => 0.0,
        }
    }

    /// One request of `client`, in event-time order (older ones are counted in the current
    /// bucket).
    pub fn add(&mut self, endpoint: &str, client: &str, ts_ms: i64, status: u16) {
        let start = ts_ms.div_euclid(self.p.bucket_ms) * self.p.bucket_ms;
        let mut endpoint = endpoint;
        if !self.endpoints.contains_key(endpoint) {
            if self.endpoints.len() >= self.p.max_endpoints {
                self.overflowed += 1;
                endpoint = OVERFLOW_ENDPOINT;
            }
            if !self.endpoints.contains_key(endpoint) {
                let s = self.fresh(endpoint, start);
                self.endpoints.insert(endpoint.to_string(), s);
            }
        }
        let p = self.p;
        let s = self.endpoints.get_mut(endpoint).expect("inserted above");
        self.bucket_clients -= advance(
            s,
            endpoint,
            start,
            &p,
            &mut self.alerts,
            &mut self.pending,
            &mut self.buckets,
        );
        cap_alerts(&mut self.alerts, p.max_alerts, &mut self.alerts_dropped);
        s.requests += 1;
        let failed = matches!(status, 401 | 403);
        if !failed && status >= 400 {
            s.errors += 1;
        }
        let h = gatewatch_features::fnv1a(client.as_bytes());
        if let Some(f) = s.clients.get_mut(&h) {
            *f |= failed;
        } else if self.bucket_clients < p.failures.max_bucket_clients {
            s.clients.insert(h, failed);
            self.bucket_clients += 1;
        } else {
            s.extra_units += 1;
            s.extra_failed += u64::from(failed);
        }
        let key = (s.id, h);
        if failed {
            let room = self.pending.len() < p.failures.max_pending;
            match self.pending.get_mut(&key) {
                Some(x) => {
                    x.last_ms = x.last_ms.max(ts_ms);
                    x.failures = x.failures.saturating_add(1);
                    x.resolved = false;
                }
                None if room => {
                    self.pending.insert(
                        key,
                        Pending {
                            client: client.into(),
                            first_ms: ts_ms,
                            last_ms: ts_ms,
                            failures: 1,
                            resolved: false,
                            score: 0.0,
                            surprisal: 0.0,
                        },
                    );
                }
                None => self.pending_dropped += 1,
            }
        } else if status < 400 {
            if let Some(x) = self.pending.get_mut(&key) {
                x.resolved = true;
            }
        }
        if ts_ms > self.now_ms {
            self.now_ms = ts_ms;
            if start > self.judged_bucket {
                self.judged_bucket = start;
                self.judge(false);
            }
        }
    }

    /// Judges the followed clients whose last failure is `settle_ms` old (all of them at
    /// the end of input), closing their endpoints' buckets first.
    fn judge(&mut self, all: bool) {
        let p = self.p;
        let now = self.now_ms;
        let due = |x: &Pending| all || x.last_ms.saturating_add(p.failures.settle_ms) <= now;
        let mut open: Vec<u32> = Vec::new();
        for ((id, _), x) in &self.pending {
            if due(x) && !open.contains(id) {
                open.push(*id);
            }
        }
        if open.is_empty() {
            return;
        }
        // A failure's bucket may still be open when its endpoint has been quiet since.
        let now_start = now.div_euclid(p.bucket_ms) * p.bucket_ms;
        for id in open {
            let name = &self.names[id as usize];
            let s = self.endpoints.get_mut(name).expect("named endpoints exist");
            let to = if all {
                s.start_ms + p.bucket_ms
            } else {
                now_start
            };
            if s.start_ms < to {
                self.bucket_clients -= advance(
                    s,
                    name,
                    to,
                    &p,
                    &mut self.alerts,
                    &mut self.pending,
                    &mut self.buckets,
                );
            }
        }
        cap_alerts(&mut self.alerts, p.max_alerts, &mut self.alerts_dropped);
        let mut decided = Vec::new();
        let names = &self.names;
        self.pending.retain(|(id, _), x| {
            if !due(x) {
                return true;
            }
            if !x.resolved && x.score >= p.threshold {
                decided.push(ClientAlert {
                    ts_ms: x.last_ms.saturating_add(p.failures.settle_ms),
                    client: x.client.to_string(),
                    endpoint: names[*id as usize].clone(),
                    first_failure_ms: x.first_ms,
                    last_failure_ms: x.last_ms,
                    failures: x.failures,
                    score: x.score,
                    surprisal: x.surprisal,
                });
            }
            false
        });
        decided.sort_by(|a, b| {
            (a.ts_ms, &a.client, &a.endpoint).cmp(&(b.ts_ms, &b.client, &b.endpoint))
        });
        self.client_alerts.extend(decided);
    }

    /// The endpoint alerts of the buckets closed since the last call (a long-running
    /// service drains them; [`finish`](Self::finish) returns the rest), oldest first.
    pub fn take_alerts(&mut self) -> Vec<Alert> {
        let mut a = std::mem::take(&mut self.alerts);
        a.sort_by(|x, y| {
            x.bucket_start_ms
                .cmp(&y.bucket_start_ms)
                .then(x.endpoint.cmp(&y.endpoint))
                .then(x.metric.cmp(&y.metric))
        });
        a
    }

    /// The client alerts decided since the last call, oldest first.
    pub fn take_client_alerts(&mut self) -> Vec<ClientAlert> {
        std::mem::take(&mut self.client_alerts)
    }

    /// Closes every endpoint's open bucket (end of input), judges every followed client
    /// (their alerts wait in [`take_client_alerts`](Self::take_client_alerts)) and returns
    /// all endpoint alerts, oldest first.
    pub fn finish(&mut self) -> Vec<Alert> {
        self.judge(true);
        let p = self.p;
        for (e, s) in &mut self.endpoints {
            if s.requests > 0 {
                self.bucket_clients -= s.clients.len();
                close(s, e, &p, &mut self.alerts, &mut self.pending);
                self.buckets += 1;
                s.start_ms += p.bucket_ms;
            }
        }
        cap_alerts(&mut self.alerts, p.max_alerts, &mut self.alerts_dropped);
        self.take_alerts()
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

    /// Failures not followed because `max_pending` clients were followed already.
    pub fn pending_dropped(&self) -> u64 {
        self.pending_dropped
    }

    /// Endpoints with series of their own (the overflow series included).
    pub fn endpoints(&self) -> usize {
        self.endpoints.len()
    }
}

/// Closes an endpoint's buckets before `start`: the open one, then empty ones (a silence
/// longer than `max_gap_buckets` restarts the rate and error detectors instead). Returns
/// the clients the open bucket told apart.
fn advance(
    s: &mut Series,
    endpoint: &str,
    start: i64,
    p: &MonitorParams,
    alerts: &mut Vec<Alert>,
    pending: &mut FastMap<(u32, u64), Pending>,
    buckets: &mut u64,
) -> usize {
    if start <= s.start_ms {
        return 0;
    }
    let released = s.clients.len();
    let gap = (start - s.start_ms) / p.bucket_ms;
    close(s, endpoint, p, alerts, pending);
    *buckets += 1;
    if gap > p.max_gap_buckets {
        let d = || p.ewma.build().expect("checked in new");
        (s.rate, s.errors_d) = (d(), d());
        s.ring.clear();
        s.held = [0; 3];
        s.start_ms = start;
    } else {
        s.start_ms += p.bucket_ms;
        while s.start_ms < start {
            close(s, endpoint, p, alerts, pending);
            *buckets += 1;
            s.start_ms += p.bucket_ms;
        }
    }
    released
}

/// Keeps at most `max` alerts, counting the others in `dropped`.
fn cap_alerts(alerts: &mut Vec<Alert>, max: usize, dropped: &mut u64) {
    if alerts.len() > max {
        *dropped += (alerts.len() - max) as u64;
        alerts.truncate(max);
    }
}

/// Closes the open bucket of `s` (which starts at `s.start_ms`) and empties it.
fn close(
    s: &mut Series,
    endpoint: &str,
    p: &MonitorParams,
    alerts: &mut Vec<Alert>,
    pending: &mut FastMap<(u32, u64), Pending>,
) {
    let t = s.start_ms;
    let secs = p.bucket_ms as f64 / 1000.0;
    let values = [
        (0, Metric::RequestRate, s.requests as f64 / secs, false),
        (2, Metric::Errors, s.errors as f64, true),
    ];
    for (m, metric, v, up_only) in values {
        let d = if m == 0 { &mut s.rate } else { &mut s.errors_d };
        let before = (s.held[m] < p.max_hold_buckets).then(|| d.clone());
        let Ok(pt) = d.update(t, v) else { continue };
        let alert = pt.score >= p.threshold && (!up_only || pt.statistic > 0.0);
        hold(alert, &mut s.held[m], before.map(|b| (d, b)));
        if alert {
            alerts.push(Alert {
                endpoint: endpoint.to_string(),
                metric,
                bucket_start_ms: t,
                value: v,
                expected: pt.expected,
                z: pt.statistic,
                score: pt.score,
                surprisal: pt.surprisal,
            });
        }
    }
    let auth = share_test(s, t, endpoint, p);
    s.last_auth_alert = auth.as_ref().map(|a| (t, a.score)).or(s.last_auth_alert);
    if let Some(a) = auth {
        for (h, failed) in &s.clients {
            if *failed {
                if let Some(x) = pending.get_mut(&(s.id, *h)) {
                    if a.score > x.score || (a.score == x.score && a.surprisal > x.surprisal) {
                        (x.score, x.surprisal) = (a.score, a.surprisal);
                    }
                }
            }
        }
        alerts.push(a);
    }
    (s.requests, s.errors, s.extra_units, s.extra_failed) = (0, 0, 0, 0);
    s.clients.clear();
}

/// Restores the detector as it was (the value is not learnt) while the hold lasts; counts
/// the held buckets, back to 0 on a bucket that does not alert.
fn hold<T>(alert: bool, held: &mut u32, restore: Option<(&mut T, T)>) {
    match (alert, restore) {
        (true, Some((d, before))) => {
            *d = before;
            *held += 1;
        }
        // The hold is spent: learnt, until a bucket does not alert.
        (true, None) => {}
        (false, _) => *held = 0,
    }
}

/// The failure-share test of the bucket that closes; learns it unless it alerts (within
/// the hold). Returns the alert, if any.
fn share_test(s: &mut Series, t: i64, endpoint: &str, p: &MonitorParams) -> Option<Alert> {
    let f = &p.failures;
    let failed = s.clients.values().filter(|x| **x).count() as u64 + s.extra_failed;
    let units = s.clients.len() as u64 + s.extra_units;
    let longest = f.windows.iter().copied().max().unwrap_or(1) as usize;
    s.ring.push_back((units, failed));
    while s.ring.len() > longest {
        s.ring.pop_front();
    }
    let ready = s.trained || s.base.units >= f.warmup_units;
    let mut alert = None;
    if ready && failed > 0 {
        let share = ((s.base.failed + 0.5) / (s.base.units + 1.0)).clamp(f.min_share, 0.5);
        // The most significant window.
        let (mut best, mut at) = (0.0f64, (0u64, 0u64));
        for w in f.windows {
            let (n, k) = s
                .ring
                .iter()
                .rev()
                .take(w as usize)
                .fold((0u64, 0u64), |(n, k), (u, x)| (n + u, k + x));
            let lp = ln_binom_sf(k, n, share);
            if lp < best {
                (best, at) = (lp, (n, k));
            }
        }
        let ln_p = (best + (f.windows.len() as f64).ln()).min(0.0);
        let score = (1.0 - ln_p.exp()).clamp(0.0, 1.0);
        if score >= p.threshold {
            let (n, k) = at;
            let expected = n as f64 * share;
            alert = Some(Alert {
                endpoint: endpoint.to_string(),
                metric: Metric::AuthFailures,
                bucket_start_ms: t,
                value: k as f64,
                expected,
                z: (k as f64 - expected) / (expected * (1.0 - share)).sqrt().max(1e-12),
                score,
                surprisal: -ln_p / std::f64::consts::LN_2,
            });
        }
    }
    let learn = alert.is_none() || s.held[1] >= p.max_hold_buckets;
    if alert.is_some() && !learn {
        s.held[1] += 1;
    } else {
        if alert.is_none() {
            s.held[1] = 0;
        }
        if units > 0 {
            let decay = 0.5f64.powf(1.0 / f.half_life_buckets);
            s.base.units = s.base.units * decay + units as f64;
            s.base.failed = s.base.failed * decay + failed as f64;
        }
    }
    alert
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
            m.add("GET /products", &format!("b{}", i % 40), t, 200);
            if i % 2 == 0 {
                let status = if i % 97 == 0 { 401 } else { 200 };
                m.add("POST /login", &format!("u{i}"), t + 10, status);
            }
        }
        // Then 2 minutes with 5 failed logins a second from ever new addresses.
        for i in 0..120 {
            let ts = t + 1000 + i * 1000;
            for k in 0..5 {
                m.add("POST /login", &format!("a{i}-{k}"), ts + k, 401);
            }
            m.add("GET /products", "b0", ts, 200);
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
        // Every attacker took part and none succeeded: each is named.
        let named = m.take_client_alerts();
        assert!(named.len() >= 550, "{} of 600", named.len());
        assert!(named.iter().all(|c| c.client.starts_with('a')));
        assert!(named.iter().all(|c| c.score >= 0.9999 && c.failures == 1));
    }

    /// One hour of logins (`scale` per second on average, each by a new client; 6% fail
    /// first and succeed 6 s later), then optionally `attackers` per minute, each a new
    /// client failing once and never succeeding, for `minutes`; the monitor, the client
    /// alerts and the attackers' names.
    fn logins(m: &mut EndpointMonitor, t0: i64, minutes: i64, attackers: i64, seed: u64) {
        let mut s = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut u = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64
        };
        let mut events: Vec<(i64, String, u16)> = Vec::new();
        let end = t0 + minutes * 60_000;
        let mut t = t0;
        let mut n = 0;
        while t < end {
            t += (-u().ln() * 4000.0) as i64 + 1;
            n += 1;
            let c = format!("user{seed}-{n}");
            if u() < 0.06 {
                events.push((t, c.clone(), 401));
                events.push((t + 6000, c, 200));
            } else {
                events.push((t, c, 200));
            }
        }
        for i in 0..minutes * attackers {
            let ts = t0 + (u() * (end - t0) as f64) as i64;
            events.push((ts, format!("attacker{seed}-{i}"), 401));
        }
        events.sort();
        for (ts, c, status) in events {
            m.add("POST /login", &c, ts, status);
        }
    }

    #[test]
    fn a_slow_distributed_attack_is_found_with_a_trained_baseline_and_its_clients_named() {
        // The baseline: an hour of normal logins.
        let mut train = EndpointMonitor::new(MonitorParams::default()).unwrap();
        logins(&mut train, 0, 60, 0, 1);
        assert!(train.finish().is_empty(), "normal traffic raises nothing");
        let base = train.baselines();
        let login = base.auth_failures["POST /login"];
        let share = login.failed / login.units;
        assert!((0.04..0.09).contains(&share), "{share}");
        // 30 minutes later, normal logins with ten failing addresses a minute from the
        // start: one failure each, never two from one client.
        let run = |m: &mut EndpointMonitor| {
            logins(m, 5_400_000, 30, 10, 2);
            m.finish();
            let named = m.take_client_alerts();
            let attackers = named
                .iter()
                .filter(|c| c.client.starts_with("attacker"))
                .count();
            (attackers, named.len() - attackers)
        };
        let mut trained = EndpointMonitor::with_baselines(MonitorParams::default(), &base).unwrap();
        let (found, normal) = run(&mut trained);
        assert!(found >= 240, "{found} of 300 attackers named");
        assert_eq!(
            normal, 0,
            "users who mistyped and then logged in are let go"
        );
        // Without the baseline the monitor learns the attack as the endpoint's normal
        // share during its warm-up, and names few of them.
        let mut cold = EndpointMonitor::new(MonitorParams::default()).unwrap();
        let (cold_found, _) = run(&mut cold);
        assert!(cold_found * 4 < found, "{cold_found} vs {found}");
    }

    #[test]
    fn a_client_is_judged_after_the_settle_time_and_a_success_lets_it_go() {
        let mut auth_failures = BTreeMap::new();
        let base = ShareBaseline {
            units: 10_000.0,
            failed: 100.0,
        };
        auth_failures.insert("POST /login".to_string(), base);
        let b = MonitorBaselines {
            bucket_ms: 10_000,
            auth_failures,
        };
        let mut m = EndpointMonitor::with_baselines(MonitorParams::default(), &b).unwrap();
        // One bucket: 30 of 40 clients fail, `x` too but logs in 5 s later.
        for i in 0..40 {
            let status = if i < 30 { 401 } else { 200 };
            m.add("POST /login", &format!("c{i}"), 1_000 + i, status);
        }
        m.add("POST /login", "x", 1_100, 401);
        m.add("POST /login", "x", 6_100, 200);
        // The bucket closes with the next one; the clients wait for the settle time.
        m.add("GET /other", "z", 30_000, 200);
        assert!(m.take_client_alerts().is_empty());
        m.add("GET /other", "z", 60_000, 200);
        assert!(m.take_client_alerts().is_empty(), "59 s after the failures");
        // They are judged once per bucket: at the first event of the next one.
        m.add("GET /other", "z", 62_000, 200);
        assert!(m.take_client_alerts().is_empty());
        m.add("GET /other", "z", 70_000, 200);
        let named = m.take_client_alerts();
        assert_eq!(named.len(), 30, "{named:?}");
        assert!(named.iter().all(|c| c.client.starts_with('c')));
        assert!(named.iter().all(|c| c.ts_ms == c.last_failure_ms + 60_000));
        assert!(named.iter().all(|c| c.endpoint == "POST /login"));
        assert!(named.iter().all(|c| c.surprisal > 30.0), "{named:?}");
        let alerts = m.finish();
        assert_eq!(alerts.len(), 1, "{alerts:?}");
        assert_eq!(alerts[0].metric, Metric::AuthFailures);
        assert_eq!((alerts[0].value, alerts[0].bucket_start_ms), (31.0, 0));
    }

    #[test]
    fn baselines_round_trip_and_bad_ones_are_refused() {
        let mut m = EndpointMonitor::new(MonitorParams::default()).unwrap();
        logins(&mut m, 0, 20, 0, 3);
        m.finish();
        let b = m.baselines();
        let text = serde_json::to_string(&b).unwrap();
        assert_eq!(MonitorBaselines::parse(&text).unwrap(), b);
        for (bad, why) in [
            (
                text.replace("\"bucket_ms\":10000", "\"bucket_ms\":0"),
                "bucket_ms",
            ),
            (text.replace("\"units\":", "\"units\":-"), "units"),
            (text.replace("\"failed\":", "\"failed\":1e9+"), ""),
            (text.replace("\"failed\":", "\"failed\":1e9,\"x\":"), ""),
            (text.replace("bucket_ms", "bucket"), "unknown field"),
        ] {
            let e = MonitorBaselines::parse(&bad).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
        let mut other = b.clone();
        other.bucket_ms = 60_000;
        let e = EndpointMonitor::with_baselines(MonitorParams::default(), &other).unwrap_err();
        assert!(e.to_string().contains("60000 ms buckets"), "{e}");
    }

    /// Errors (500s) per 10-second bucket: about one for 30 minutes, then `wave` minutes of
    /// about four, then quiet again; the error alerts' bucket starts.
    fn error_wave(p: MonitorParams, wave: i64) -> (Vec<i64>, i64, i64) {
        let mut m = EndpointMonitor::new(p).unwrap();
        let start = 1800 * 1000;
        let end = start + wave * 60_000;
        for i in 0..(3600 + wave * 60) {
            let t = i * 1000;
            let fails = if (start..end).contains(&t) { 4 } else { 1 };
            // The base rate varies a little, so the detectors learn a spread.
            if i % 10 < fails + i64::from(i % 70 == 0) {
                m.add("GET /report", "c", t, 500);
            }
            m.add("GET /report", "c", t + 1, 200);
        }
        let alerts = m
            .finish()
            .into_iter()
            .filter(|a| a.metric == Metric::Errors)
            .map(|a| a.bucket_start_ms)
            .collect();
        (alerts, start, end)
    }

    #[test]
    fn an_alert_stays_up_while_the_attack_lasts() {
        // Held: the wave is not learnt, so its last minutes alert like its first.
        let (held, start, end) = error_wave(MonitorParams::default(), 20);
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
        let (adapted, _, end) = error_wave(learnt, 20);
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
        let (alerts, start, end) = error_wave(short, 20);
        assert!(alerts.iter().filter(|t| **t < start + 300_000).count() >= 25);
        assert!(
            alerts.iter().filter(|t| **t >= end - 300_000).count() <= 5,
            "{alerts:?}"
        );
    }

    #[test]
    fn endpoints_alerts_and_followed_clients_are_capped() {
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
            m.add(&format!("GET /raw-{i}"), "c", i * 10, 200);
        }
        assert_eq!(m.endpoints(), 101, "100 endpoints and the shared series");
        assert_eq!(m.overflowed(), 100_000 - 100);
        // A steady endpoint, then a burst: more alerts than are kept.
        let mut m = EndpointMonitor::new(p).unwrap();
        for i in 0..200i64 {
            m.add("POST /login", "c", i * 10_000, 200);
        }
        for i in 0..200i64 {
            for k in 0..50 {
                m.add("POST /login", "c", 2_000_000 + i * 10_000 + k, 401);
            }
        }
        let alerts = m.finish();
        assert_eq!(alerts.len(), 5);
        assert!(m.alerts_dropped() > 0);
        // Followed clients and the clients told apart per bucket.
        let p = MonitorParams {
            failures: FailureParams {
                max_pending: 10,
                max_bucket_clients: 20,
                ..FailureParams::default()
            },
            ..MonitorParams::default()
        };
        let mut m = EndpointMonitor::new(p).unwrap();
        for i in 0..100i64 {
            m.add("POST /login", &format!("c{i}"), i, 401);
        }
        assert_eq!(m.pending_dropped(), 90);
        m.finish();
        let b = m.baselines().auth_failures["POST /login"];
        assert_eq!((b.units, b.failed), (100.0, 100.0));
    }

    #[test]
    fn steady_traffic_raises_nothing_and_bad_parameters_are_refused() {
        let mut m = EndpointMonitor::new(MonitorParams::default()).unwrap();
        for i in 0..3600 {
            let status = match i % 50 {
                0 => 500,
                7 => 401,
                _ => 200,
            };
            m.add("GET /a", &format!("c{}", i % 13), i * 1000, status);
        }
        assert_eq!(m.finish(), Vec::new());
        assert!(m.take_client_alerts().is_empty());
        for bad in [
            MonitorParams {
                bucket_ms: 0,
                ..MonitorParams::default()
            },
            MonitorParams {
                failures: FailureParams {
                    windows: [1, 0, 6],
                    ..FailureParams::default()
                },
                ..MonitorParams::default()
            },
            MonitorParams {
                failures: FailureParams {
                    min_share: 1.0,
                    ..FailureParams::default()
                },
                ..MonitorParams::default()
            },
        ] {
            assert!(EndpointMonitor::new(bad).is_err());
        }
    }
}
