//! Mitigation rules in the CLI: loading a rules file for a session, writing decision
//! records, and the rules report of `score --rules` and `backtest` (per rule and per label:
//! what matched, what was decided, whom it stopped).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use gatewatch_pipeline::backtest::Backtest;
use gatewatch_pipeline::rules::{Decider, Rules};
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

/// The rules report of `score --rules` and `backtest`: per rule (mode, actions, key,
/// matches, decisions, keys, precision), per label (requests under each action, clients
/// stopped), and each rule's share of each attack label's requests.
pub fn report_text(b: &Backtest, source: &str) -> String {
    let count = |n: u64, exact: bool| {
        if exact {
            n.to_string()
        } else {
            format!("≈{n}")
        }
    };
    let mut e = format!(
        "  rules ({source}): {} rules; decisions: {} started, {} escalated, {} ended, {} active at the end; {} requests allow-listed\n",
        b.rules.len(),
        b.started,
        b.escalated,
        b.ended,
        b.active,
        b.allowed
    );
    e.push_str(
        "    rule                          mode     action      key            matched  decisions   keys  precision\n",
    );
    for r in &b.rules {
        e.push_str(&format!(
            "    {:<29} {:<8} {:<11} {:<14} {:>7} {:>10} {:>6}  {:>9}\n",
            r.rule,
            r.mode,
            r.actions,
            r.key,
            r.matched,
            r.decisions,
            count(r.keys, r.keys_exact),
            r.precision
                .map_or_else(|| "-".into(), |p| format!("{p:.3}"))
        ));
        if r.errors > 0 || r.no_key > 0 {
            e.push_str(&format!(
                "      {} evaluation errors (not matched), {} matches without the key's field\n",
                r.errors, r.no_key
            ));
        }
    }
    if !b.labels.is_empty() {
        e.push_str(
            "    requests under an enforced decision, by label:\n    label                  requests    block  challenge  rate_limit    log   shadow  clients stopped\n",
        );
        for l in &b.labels {
            let share = |n: u64| 100.0 * n as f64 / l.requests.max(1) as f64;
            e.push_str(&format!(
                "    {:<20} {:>10} {:>7.1}% {:>9.1}% {:>10.1}% {:>5.1}% {:>7.1}%  {:>6} of {}\n",
                l.label,
                l.requests,
                share(l.block),
                share(l.challenge),
                share(l.rate_limit),
                share(l.log),
                share(l.shadow),
                count(l.clients_stopped, l.stopped_exact),
                count(l.clients, l.clients_exact),
            ));
        }
        if let Some(n) = b.labels.iter().find(|l| l.label == "normal") {
            let hit = n.block + n.challenge;
            e.push_str(&format!(
                "    normal requests blocked or challenged: {hit} of {} ({:.2}%), {} clients\n",
                n.requests,
                100.0 * hit as f64 / n.requests.max(1) as f64,
                count(n.clients_stopped, n.stopped_exact)
            ));
        }
        let attack: Vec<&str> = {
            let mut v: Vec<&str> = b.coverage.iter().map(|c| c.label.as_str()).collect();
            v.dedup();
            v.sort_unstable();
            v.dedup();
            v
        };
        if !attack.is_empty() {
            e.push_str("    share of each label's requests under each rule's decisions:\n");
            e.push_str(&format!("    {:<29}", "rule"));
            for l in &attack {
                e.push_str(&format!(" {:>11.11}", l));
            }
            e.push('\n');
            for r in &b.rules {
                let row: Vec<&gatewatch_pipeline::backtest::CoverageRow> =
                    b.coverage.iter().filter(|c| c.rule == r.rule).collect();
                if row.is_empty() {
                    continue;
                }
                e.push_str(&format!("    {:<29}", r.rule));
                for l in &attack {
                    let share = row.iter().find(|c| c.label == *l).map_or(0.0, |c| c.share);
                    e.push_str(&format!(" {:>10.1}%", 100.0 * share));
                }
                e.push('\n');
            }
        }
    }
    if b.evicted > 0 || b.history_dropped > 0 || b.allow_errors > 0 {
        e.push_str(&format!(
            "    {} decisions ended early at the cap of {}, {} past offences forgotten early, {} allow-list evaluation errors\n",
            b.evicted, b.max_decisions, b.history_dropped, b.allow_errors
        ));
    }
    e
}
