//! Back-testing rules: what the decisions of a run did, per rule and per label, from the
//! decided output batches — the figures `gatewatch backtest` prints and the Python module's
//! `Rules.backtest` answers.

use std::collections::BTreeMap;

use gatewatch_features::DistinctCount;
use gatewatch_rules::{Action, Change, Decider, Mode};
use serde::Serialize;

use crate::output::Output;

/// The label of records without one.
pub const UNLABELLED: &str = "(no label)";

/// Labels counted at most (more are left out of the per-label rows).
pub const MAX_LABELS: usize = 256;

#[derive(Default)]
struct RuleAcc {
    keys: DistinctCount,
    /// Decisions started or escalated, by the label of the request that caused them.
    decided: BTreeMap<String, u64>,
    /// Requests whose verdict was one of this rule's decisions, by label.
    covered: BTreeMap<String, u64>,
}

#[derive(Default)]
struct LabelAcc {
    requests: u64,
    clients: DistinctCount,
    /// Requests under an enforced decision, by action (log, rate limit, challenge, block).
    enforced: [u64; 4],
    shadow: u64,
    stopped: DistinctCount,
}

/// One rule's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleRow {
    /// Its id.
    pub rule: String,
    /// `enforce` or `shadow`.
    pub mode: String,
    /// Its ladder of actions (`challenge→block`).
    pub actions: String,
    /// Its key.
    pub key: String,
    /// Requests whose condition held.
    pub matched: u64,
    /// Decisions started or escalated.
    pub decisions: u64,
    /// Distinct keys decided (an estimate beyond the exact range).
    pub keys: u64,
    /// Whether `keys` is exact.
    pub keys_exact: bool,
    /// The share of its decisions caused by labelled requests not labelled `normal`
    /// (`None` without labelled decisions).
    pub precision: Option<f64>,
    /// Conditions that failed to evaluate.
    pub errors: u64,
    /// Matches without the key's field.
    pub no_key: u64,
}

/// One label's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LabelRow {
    /// The label (`(no label)` for records without one).
    pub label: String,
    /// Its requests.
    pub requests: u64,
    /// Requests under an enforced block, challenge, rate limit or log decision.
    pub block: u64,
    /// See `block`.
    pub challenge: u64,
    /// See `block`.
    pub rate_limit: u64,
    /// See `block`.
    pub log: u64,
    /// Requests under shadow decisions only.
    pub shadow: u64,
    /// Distinct clients.
    pub clients: u64,
    /// Clients with a request under an enforced challenge or block.
    pub clients_stopped: u64,
    /// Whether `clients` is exact (an estimate beyond the exact range).
    pub clients_exact: bool,
    /// Whether `clients_stopped` is exact.
    pub stopped_exact: bool,
}

/// A rule's share of a label's requests.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CoverageRow {
    /// The rule.
    pub rule: String,
    /// The label.
    pub label: String,
    /// Requests of the label whose verdict was one of the rule's decisions.
    pub requests: u64,
    /// Their share of the label's requests.
    pub share: f64,
}

/// What the rules did over a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Backtest {
    /// Per rule, in the rules' order.
    pub rules: Vec<RuleRow>,
    /// Per label, in label order.
    pub labels: Vec<LabelRow>,
    /// Per rule and label (labels other than `normal` and unlabelled).
    pub coverage: Vec<CoverageRow>,
    /// Decisions started, escalated, ended.
    pub started: u64,
    /// See `started`.
    pub escalated: u64,
    /// See `started`.
    pub ended: u64,
    /// Decisions active at the end.
    pub active: u64,
    /// Requests the allow-list covered.
    pub allowed: u64,
    /// Decisions ended early at the cap.
    pub evicted: u64,
    /// Past offences forgotten early at the cap.
    pub history_dropped: u64,
    /// Allow-list conditions that failed to evaluate.
    pub allow_errors: u64,
    /// The decision cap.
    pub max_decisions: u64,
}

/// Collects a run's figures batch by batch.
#[derive(Default)]
pub struct BacktestCollector {
    rules: BTreeMap<String, RuleAcc>,
    labels: BTreeMap<String, LabelAcc>,
    changes: [u64; 3],
}

fn action_index(a: Action) -> usize {
    match a {
        Action::Log => 0,
        Action::RateLimit => 1,
        Action::Challenge => 2,
        Action::Block => 3,
    }
}

impl BacktestCollector {
    /// One decided batch.
    pub fn add(&mut self, batch: &Output) {
        for (j, e) in batch.decisions().iter().enumerate() {
            let k = match e.change {
                Change::New => 0,
                Change::Escalate => 1,
                Change::Expire => 2,
            };
            self.changes[k] += 1;
            if e.change == Change::Expire {
                continue;
            }
            let r = batch.record(batch.decision_record(j));
            let label = r.label_text();
            let row = self.rules.entry(e.decision.rule.clone()).or_default();
            row.keys.add(&format!(
                "{}:{}",
                e.decision.scope.as_str(),
                e.decision.value
            ));
            *row.decided
                .entry(label.as_deref().unwrap_or(UNLABELLED).to_string())
                .or_default() += 1;
        }
        for (i, r) in batch.records().enumerate() {
            let label = r.label_text();
            let label = label.as_deref().unwrap_or(UNLABELLED);
            if !self.labels.contains_key(label) && self.labels.len() >= MAX_LABELS {
                continue;
            }
            let row = self.labels.entry(label.to_string()).or_default();
            row.requests += 1;
            row.clients.add(r.client);
            let Some(v) = batch.verdict(i) else {
                continue;
            };
            match v.mode {
                Mode::Enforce => {
                    row.enforced[action_index(v.action)] += 1;
                    if v.action >= Action::Challenge {
                        row.stopped.add(r.client);
                    }
                }
                Mode::Shadow => row.shadow += 1,
            }
            let rr = self.rules.entry(v.rule.to_string()).or_default();
            *rr.covered.entry(label.to_string()).or_default() += 1;
        }
    }

    /// The figures, with the decider's counts.
    pub fn finish(&self, decider: &Decider) -> Backtest {
        let st = decider.stats();
        let set = decider.rules();
        let rules = set
            .rules
            .iter()
            .zip(&st.rules)
            .map(|(r, s)| {
                let acc = self.rules.get(&*r.id);
                let decided: u64 = acc.map_or(0, |x| x.decided.values().sum());
                let normal = acc
                    .and_then(|x| x.decided.get("normal"))
                    .copied()
                    .unwrap_or(0);
                let labelled: u64 = acc.map_or(0, |x| {
                    x.decided
                        .iter()
                        .filter(|(l, _)| l.as_str() != UNLABELLED)
                        .map(|(_, n)| n)
                        .sum()
                });
                RuleRow {
                    rule: r.id.to_string(),
                    mode: r.mode.as_str().into(),
                    actions: r
                        .ladder
                        .iter()
                        .map(|a| a.as_str())
                        .collect::<Vec<_>>()
                        .join("→"),
                    key: r.key.name(),
                    matched: s.matched,
                    decisions: decided,
                    keys: acc.map_or(0, |x| x.keys.count()),
                    keys_exact: acc.is_none_or(|x| x.keys.is_exact()),
                    precision: (labelled > 0).then(|| (labelled - normal) as f64 / labelled as f64),
                    errors: s.errors,
                    no_key: s.no_key,
                }
            })
            .collect();
        let labels = self
            .labels
            .iter()
            .map(|(l, a)| LabelRow {
                label: l.clone(),
                requests: a.requests,
                block: a.enforced[3],
                challenge: a.enforced[2],
                rate_limit: a.enforced[1],
                log: a.enforced[0],
                shadow: a.shadow,
                clients: a.clients.count(),
                clients_stopped: a.stopped.count(),
                clients_exact: a.clients.is_exact(),
                stopped_exact: a.stopped.is_exact(),
            })
            .collect();
        let mut coverage = Vec::new();
        for r in &set.rules {
            let Some(acc) = self.rules.get(&*r.id) else {
                continue;
            };
            for (l, la) in self
                .labels
                .iter()
                .filter(|(l, _)| l.as_str() != "normal" && l.as_str() != UNLABELLED)
            {
                let n = acc.covered.get(l).copied().unwrap_or(0);
                coverage.push(CoverageRow {
                    rule: r.id.to_string(),
                    label: l.clone(),
                    requests: n,
                    share: n as f64 / la.requests.max(1) as f64,
                });
            }
        }
        Backtest {
            rules,
            labels,
            coverage,
            started: self.changes[0],
            escalated: self.changes[1],
            ended: self.changes[2],
            active: decider.active().count() as u64,
            allowed: st.allowed,
            evicted: st.evicted,
            history_dropped: st.history_dropped,
            allow_errors: st.allow_errors,
            max_decisions: set.max_decisions as u64,
        }
    }
}
