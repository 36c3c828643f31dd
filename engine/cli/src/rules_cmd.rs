//! Mitigation rules in the CLI: loading a rules file for a session, writing decision
//! records, and the rules report of `score --rules` and `backtest` (per rule and per label:
//! what matched, what was decided, whom it stopped).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use gatewatch_features::DistinctCount;
use gatewatch_pipeline::rules::{Action, Change, Decider, Mode, Rules};
use gatewatch_pipeline::{Output, Session};

/// The rules file `--rules` names: a path, or `default` for the built-in rules.
pub fn load(path: &Path, session: &Session) -> Result<Decider> {
    let rules = Rules::load_named(path, &session.rules_schema())
        .with_context(|| format!("{}", path.display()))?;
    Ok(Decider::new(Arc::new(rules)))
}

/// Where decision records go (`--decisions FILE`).
pub struct DecisionsOut {
    w: std::io::BufWriter<std::fs::File>,
    path: PathBuf,
}

impl DecisionsOut {
    pub fn create(path: &Path) -> Result<Self> {
        Ok(Self {
            w: std::io::BufWriter::new(
                std::fs::File::create(path)
                    .with_context(|| format!("cannot create {}", path.display()))?,
            ),
            path: path.to_path_buf(),
        })
    }

    pub fn write(&mut self, batch: &Output) -> Result<()> {
        let text = gatewatch_pipeline::schema::decisions_ndjson(batch.decisions());
        self.w
            .write_all(text.as_bytes())
            .with_context(|| format!("cannot write {}", self.path.display()))
    }

    pub fn finish(mut self) -> Result<()> {
        self.w
            .flush()
            .with_context(|| format!("cannot write {}", self.path.display()))
    }
}

#[derive(Default)]
struct RuleRow {
    keys: DistinctCount,
    /// Decisions started or escalated, by the label of the request that caused them.
    decided: BTreeMap<String, u64>,
    /// Requests this rule's decisions were the verdict of, by label.
    covered: BTreeMap<String, u64>,
}

#[derive(Default)]
struct LabelRow {
    requests: u64,
    clients: DistinctCount,
    /// Requests under an enforced decision, by action (log, rate limit, challenge, block).
    enforced: [u64; 4],
    /// Requests under a shadow decision only.
    shadow: u64,
    /// Clients with a request under an enforced challenge or block.
    stopped: DistinctCount,
}

/// What the rules did over a run, by rule and by label.
#[derive(Default)]
pub struct Report {
    rules: BTreeMap<String, RuleRow>,
    labels: BTreeMap<String, LabelRow>,
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

impl Report {
    /// One decided batch.
    pub fn add(&mut self, batch: &Output) {
        let unlabelled = "(no label)";
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
                .entry(label.as_deref().unwrap_or(unlabelled).to_string())
                .or_default() += 1;
        }
        for (i, r) in batch.records().enumerate() {
            let label = r.label_text();
            let label = label.as_deref().unwrap_or(unlabelled);
            if !self.labels.contains_key(label) && self.labels.len() >= crate::pipeline::MAX_LABELS
            {
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

    /// The report's text: per rule (mode, matches, decisions, keys, precision), per label
    /// (requests under each action, clients stopped).
    pub fn text(&self, decider: &Decider, source: &str) -> String {
        let st = decider.stats();
        let rules = decider.rules();
        let mut e = format!(
            "  rules ({source}): {} rules; decisions: {} started, {} escalated, {} ended, {} active at the end; {} requests allow-listed\n",
            rules.len(),
            self.changes[0],
            self.changes[1],
            self.changes[2],
            decider.active().count(),
            st.allowed
        );
        e.push_str(
            "    rule                          mode     action      key            matched  decisions   keys  precision\n",
        );
        for (r, s) in rules.rules.iter().zip(&st.rules) {
            let row = self.rules.get(&*r.id);
            let decided: u64 = row.map_or(0, |x| x.decided.values().sum());
            let normal = row
                .and_then(|x| x.decided.get("normal"))
                .copied()
                .unwrap_or(0);
            let labelled: u64 = row.map_or(0, |x| {
                x.decided
                    .iter()
                    .filter(|(l, _)| l.as_str() != "(no label)")
                    .map(|(_, n)| n)
                    .sum()
            });
            let precision = if labelled > 0 {
                format!("{:.3}", (labelled - normal) as f64 / labelled as f64)
            } else {
                "-".into()
            };
            let actions: Vec<&str> = r.ladder.iter().map(|a| a.as_str()).collect();
            e.push_str(&format!(
                "    {:<29} {:<8} {:<11} {:<14} {:>7} {:>10} {:>6}  {:>9}\n",
                r.id,
                r.mode.as_str(),
                actions.join("→"),
                r.key.name(),
                s.matched,
                decided,
                row.map_or_else(|| "0".into(), |x| crate::pipeline::distinct(&x.keys)),
                precision
            ));
            if s.errors > 0 || s.no_key > 0 {
                e.push_str(&format!(
                    "      {} evaluation errors (not matched), {} matches without the key's field\n",
                    s.errors, s.no_key
                ));
            }
        }
        if !self.labels.is_empty() {
            e.push_str(
                "    requests under an enforced decision, by label:\n    label                  requests    block  challenge  rate_limit    log   shadow  clients stopped\n",
            );
            for (l, row) in &self.labels {
                let share = |n: u64| 100.0 * n as f64 / row.requests.max(1) as f64;
                e.push_str(&format!(
                    "    {:<20} {:>10} {:>7.1}% {:>9.1}% {:>10.1}% {:>5.1}% {:>7.1}%  {:>6} of {}\n",
                    l,
                    row.requests,
                    share(row.enforced[3]),
                    share(row.enforced[2]),
                    share(row.enforced[1]),
                    share(row.enforced[0]),
                    share(row.shadow),
                    crate::pipeline::distinct(&row.stopped),
                    crate::pipeline::distinct(&row.clients),
                ));
            }
            if let Some(n) = self.labels.get("normal") {
                let hit = n.enforced[3] + n.enforced[2];
                e.push_str(&format!(
                    "    normal requests blocked or challenged: {hit} of {} ({:.2}%), {} clients\n",
                    n.requests,
                    100.0 * hit as f64 / n.requests.max(1) as f64,
                    crate::pipeline::distinct(&n.stopped)
                ));
            }
            // Recall per rule and label: the share of each label's requests the rule's
            // decisions were the verdict of.
            let attack: Vec<&String> = self
                .labels
                .keys()
                .filter(|l| l.as_str() != "normal" && l.as_str() != "(no label)")
                .collect();
            if !attack.is_empty() {
                e.push_str("    share of each label's requests under each rule's decisions:\n");
                e.push_str(&format!("    {:<29}", "rule"));
                for l in &attack {
                    e.push_str(&format!(" {:>11.11}", l));
                }
                e.push('\n');
                for r in &rules.rules {
                    let Some(row) = self.rules.get(&*r.id) else {
                        continue;
                    };
                    e.push_str(&format!("    {:<29}", r.id));
                    for l in &attack {
                        let n = row.covered.get(*l).copied().unwrap_or(0);
                        let total = self.labels.get(*l).map_or(1, |x| x.requests.max(1));
                        e.push_str(&format!(" {:>10.1}%", 100.0 * n as f64 / total as f64));
                    }
                    e.push('\n');
                }
            }
        }
        if st.evicted > 0 || st.history_dropped > 0 || st.allow_errors > 0 {
            e.push_str(&format!(
                "    {} decisions ended early at the cap of {}, {} past offences forgotten early, {} allow-list evaluation errors\n",
                st.evicted, rules.max_decisions, st.history_dropped, st.allow_errors
            ));
        }
        e
    }
}
