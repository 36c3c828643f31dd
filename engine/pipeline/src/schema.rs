//! The one record schema: what every output of gatewatch holds, as serde types.
//!
//! - [`FeatureRecord`]: one per event — `id` and `label` (as the event had them, when it
//!   had them), `ts` (RFC 3339 with milliseconds, UTC), `client`, `endpoint`, then every
//!   feature by its registry name (`null` for a value that is not finite).
//! - [`ScoreRecord`]: one per event — the same head, then `score`, `surprisal` (the score's
//!   tail in bits, unsaturated), `scores` (one per detector), `flagged`, `reasons` ([`ReasonRecord`]s of the deciding detector) and
//!   `model` (`name@version`).
//! - [`RejectionRecord`]: one per rejected input — its position (`line`, `row`, or
//!   `partition` and `offset`), `category` and `reason`.
//!
//! The NDJSON writers write exactly these objects (tested by parsing their output into
//! these types). Tables and DataFrames hold the same fields as columns
//! ([`feature_columns`], [`score_columns`]): `ts` as a Datetime[ms, UTC], `scores.NAME` as
//! a `score_NAME` column, `reasons` as its JSON text; `model` is not a column.

use std::collections::BTreeMap;

use gatewatch_event::write_rfc3339_ms;
use gatewatch_features::Registry;
use gatewatch_models::Scorer;
use gatewatch_rules::{DecisionEvent, Verdict};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::output::{Output, RecordRef};
use crate::position::Position;
use crate::rejection::Rejection;

fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

fn raw(v: Option<&str>) -> Option<Value> {
    v.map(|t| serde_json::from_str(t).unwrap_or_else(|_| Value::String(t.to_string())))
}

fn rfc3339(ms: i64) -> String {
    let mut s = String::new();
    write_rfc3339_ms(ms, &mut s);
    s
}

/// One event's features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureRecord {
    /// The event's `id`, carried through unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    /// The event's `label`, carried through unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<Value>,
    /// Event time, RFC 3339 with milliseconds (`2026-01-05T09:00:00.123Z`).
    pub ts: String,
    /// Client key with its kind (`ip:203.0.113.7`).
    pub client: String,
    /// Endpoint template (`GET api.example.com/v1/users/{id}`).
    pub endpoint: String,
    /// Every feature by registry name; `None` (`null`) for a value that is not finite.
    #[serde(flatten)]
    pub features: BTreeMap<String, Option<f64>>,
}

impl FeatureRecord {
    /// The record of `r`, its features named by `registry`.
    pub fn from_record(r: &RecordRef<'_>, registry: &Registry) -> Self {
        Self {
            id: raw(r.id),
            label: raw(r.label),
            ts: rfc3339(r.ts_ms),
            client: r.client.to_string(),
            endpoint: r.endpoint.to_string(),
            features: registry
                .names()
                .zip(r.features)
                .map(|(n, v)| (n.to_string(), finite(*v)))
                .collect(),
        }
    }

    /// Whether the record has exactly the registry's features; the first name missing or
    /// unexpected otherwise.
    pub fn check(&self, registry: &Registry) -> Result<(), String> {
        for n in registry.names() {
            if !self.features.contains_key(n) {
                return Err(format!("feature {n:?} is missing"));
            }
        }
        if let Some(extra) = self
            .features
            .keys()
            .find(|k| registry.index_of(k).is_none())
        {
            return Err(format!("field {extra:?} is not in the schema"));
        }
        Ok(())
    }
}

/// One reason of a score: a feature and how far it is from its baseline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReasonRecord {
    /// The detector that gave it (the one that decided the score).
    pub detector: String,
    /// The feature.
    pub feature: String,
    /// The event's value.
    pub value: Option<f64>,
    /// The detector's baseline for it.
    pub baseline: Option<f64>,
    /// Its contribution (the detector's own unit: surprisal, ratio, score change).
    pub contribution: Option<f64>,
}

/// One event's score.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreRecord {
    /// The event's `id`, carried through unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    /// The event's `label`, carried through unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<Value>,
    /// Event time, RFC 3339 with milliseconds.
    pub ts: String,
    /// Client key with its kind.
    pub client: String,
    /// Endpoint template.
    pub endpoint: String,
    /// The model's score in [0, 1].
    pub score: Option<f64>,
    /// The score's tail as surprisal, `−log2(1 − score)` bits, at full resolution where the
    /// score rounds to 1.0: rank and threshold extreme events by it.
    pub surprisal: Option<f64>,
    /// Each detector's score, by detector name.
    pub scores: BTreeMap<String, Option<f64>>,
    /// Whether the model flags the event.
    pub flagged: bool,
    /// The deciding detector's reasons, strongest first.
    pub reasons: Vec<ReasonRecord>,
    /// The strongest decision covering the request, when rules run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision: Option<VerdictRecord>,
    /// The model, `name@version`.
    pub model: String,
}

/// The decision covering a scored request (its `decision` field).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerdictRecord {
    /// The decision's id.
    pub id: u64,
    /// The rule that made it.
    pub rule: String,
    /// `log`, `rate_limit`, `challenge` or `block`.
    pub action: String,
    /// What it applies to (`Ip`, `Range`, `Client`…).
    pub scope: String,
    /// The key's value.
    pub value: String,
    /// `enforce` or `shadow`.
    pub mode: String,
    /// When it ends, RFC 3339.
    pub until: String,
    /// Whether this request started or escalated it.
    pub new: bool,
}

impl From<&Verdict> for VerdictRecord {
    fn from(v: &Verdict) -> Self {
        Self {
            id: v.id,
            rule: v.rule.to_string(),
            action: v.action.as_str().into(),
            scope: v.scope.as_str().into(),
            value: v.value.clone(),
            mode: v.mode.as_str().into(),
            until: rfc3339(v.until_ms),
            new: v.fresh,
        }
    }
}

/// The record of a decision's change (`"kind": "decision"`), as `gatewatch score
/// --decisions` writes it: `change` (`new`, `escalate`, `expire`), `ts`, the decision's
/// `id`, `rule`, `action`, `scope`, `value`, `mode`, `level`, `start`, `until`,
/// `duration_s` (from `ts` to `until`), `score`, `reasons`, `hits`, `rate` (for a rate
/// limit) and, for an expiry, `why`.
pub fn decision_json(e: &DecisionEvent) -> Value {
    let d = &e.decision;
    let mut v = serde_json::json!({
        "kind": "decision", "change": e.change.as_str(), "ts": rfc3339(e.ts_ms),
        "id": d.id, "rule": d.rule, "action": d.action.as_str(), "scope": d.scope.as_str(),
        "value": d.value, "mode": d.mode.as_str(), "level": d.level,
        "start": rfc3339(d.start_ms), "until": rfc3339(d.until_ms),
        "duration_s": (d.until_ms - e.ts_ms).max(0) as f64 / 1000.0,
        "score": d.score.filter(|x| x.is_finite()), "reasons": d.reasons, "hits": d.hits,
    });
    if let (Some(r), Some(m)) = (d.rate, v.as_object_mut()) {
        m.insert(
            "rate".into(),
            serde_json::json!({"requests": r.requests, "per_s": r.per_ms as f64 / 1000.0}),
        );
    }
    if let (Some(why), Some(m)) = (e.why, v.as_object_mut()) {
        m.insert("why".into(), why.into());
    }
    v
}

/// Decision records as NDJSON lines.
pub fn decisions_ndjson<'a>(events: impl IntoIterator<Item = &'a DecisionEvent>) -> String {
    let mut out = String::new();
    for e in events {
        out.push_str(&decision_json(e).to_string());
        out.push('\n');
    }
    out
}

impl ScoreRecord {
    /// The score record of record `i` of a batch scored by `scorer`; `None` when the batch
    /// is not scored.
    pub fn from_output(out: &Output, i: usize, scorer: &Scorer) -> Option<Self> {
        let s = out.scores()?;
        let r = out.record(i);
        let k = scorer.members.len();
        let detector = &scorer.members[s.decided_by[i]].name;
        Some(Self {
            id: raw(r.id),
            label: raw(r.label),
            ts: rfc3339(r.ts_ms),
            client: r.client.to_string(),
            endpoint: r.endpoint.to_string(),
            score: finite(s.score[i]),
            surprisal: finite(s.surprisal[i]),
            scores: scorer
                .members
                .iter()
                .enumerate()
                .map(|(j, m)| (m.name.clone(), finite(s.member[i * k + j])))
                .collect(),
            flagged: s.flagged[i],
            reasons: s.reasons[i]
                .iter()
                .map(|x| ReasonRecord {
                    detector: detector.clone(),
                    feature: x.feature.clone(),
                    value: finite(x.value),
                    baseline: finite(x.baseline),
                    contribution: finite(x.contribution),
                })
                .collect(),
            decision: out.verdict(i).map(VerdictRecord::from),
            model: scorer.id(),
        })
    }
}

/// One rejected input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectionRecord {
    /// Where it was: `line`, `row`, or `partition` and `offset`.
    #[serde(flatten)]
    pub position: Position,
    /// A short category for summaries.
    pub category: String,
    /// What was wrong (the field and value, where one was to blame).
    pub reason: String,
}

impl From<&Rejection> for RejectionRecord {
    fn from(r: &Rejection) -> Self {
        Self {
            position: r.position,
            category: r.category(),
            reason: r.reason(),
        }
    }
}

/// The columns every table of records starts with; `id` and `label` only when the events
/// have them.
pub const KEY_COLUMNS: [&str; 5] = ["id", "label", "ts", "client", "endpoint"];

/// The columns of a features table or frame: [`KEY_COLUMNS`], then every feature (Float64)
/// by registry name.
pub fn feature_columns(registry: &Registry) -> Vec<String> {
    KEY_COLUMNS
        .iter()
        .map(|c| c.to_string())
        .chain(registry.names().map(String::from))
        .collect()
}

/// The value columns after the key columns in a scores table or frame: `score`,
/// `surprisal` and one `score_NAME` per detector (Float64).
pub fn score_value_columns(scorer: &Scorer) -> Vec<String> {
    ["score".to_string(), "surprisal".to_string()]
        .into_iter()
        .chain(scorer.members.iter().map(|m| format!("score_{}", m.name)))
        .collect()
}

/// The columns of a scores table or frame: [`KEY_COLUMNS`], [`score_value_columns`],
/// `flagged` and `reasons`.
pub fn score_columns(scorer: &Scorer) -> Vec<String> {
    KEY_COLUMNS
        .iter()
        .map(|c| c.to_string())
        .chain(score_value_columns(scorer))
        .chain(["flagged".to_string(), "reasons".to_string()])
        .collect()
}

/// Alert records as NDJSON lines: the client alerts, then the endpoint alerts.
pub fn alerts_ndjson<'a>(
    clients: impl IntoIterator<Item = &'a gatewatch_models::ClientAlert>,
    endpoints: impl IntoIterator<Item = &'a gatewatch_models::Alert>,
) -> String {
    let mut out = String::new();
    let lines = clients
        .into_iter()
        .map(client_alert_json)
        .chain(endpoints.into_iter().map(endpoint_alert_json));
    for line in lines {
        out.push_str(&line.to_string());
        out.push('\n');
    }
    out
}

/// The record of an endpoint alert of the endpoint monitor (`"kind": "endpoint"`), as
/// `gatewatch score --alerts` and the service's `/v1/alerts` write it.
pub fn endpoint_alert_json(x: &gatewatch_models::Alert) -> Value {
    serde_json::json!({
        "kind": "endpoint", "ts": rfc3339(x.bucket_start_ms),
        "endpoint": x.endpoint, "metric": x.metric.name(),
        "value": x.value, "expected": x.expected, "z": x.z, "score": x.score,
        "surprisal": x.surprisal,
    })
}

/// The record of a client alert of the endpoint monitor (`"kind": "client"`).
pub fn client_alert_json(x: &gatewatch_models::ClientAlert) -> Value {
    serde_json::json!({
        "kind": "client", "ts": rfc3339(x.ts_ms), "client": x.client,
        "endpoint": x.endpoint, "metric": "auth_failures",
        "first_failure": rfc3339(x.first_failure_ms),
        "last_failure": rfc3339(x.last_failure_ms),
        "failures": x.failures, "score": x.score, "surprisal": x.surprisal,
    })
}
