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

/// `gatewatch recommend-limits`: per-endpoint peaks of the log's clients, their quantiles
/// and recommended limits, optionally written as rules.
pub fn recommend_limits(a: crate::RecommendArgs) -> Result<()> {
    use gatewatch_features::FeatureEngine;
    use gatewatch_models::{PeakCollector, volumetric};
    use gatewatch_pipeline::SessionOptions;

    let action = match a.action.as_str() {
        "log" | "rate_limit" => a.action.clone(),
        x => anyhow::bail!("--action: {x:?} is not log or rate_limit"),
    };
    let (settings, source) = crate::pipeline::setup(&a.input)?;
    let engine = FeatureEngine::with_parts(&settings.engine, a.input.threads() as u32)?;
    let registry = engine.registry().clone();
    let count_at = registry
        .index_of(volumetric::FEATURE)
        .with_context(|| format!("the feature set has no {}", volumetric::FEATURE))?;
    let mut session = Session::features_only(
        engine,
        SessionOptions {
            batch: 1024,
            reasons: 0,
        },
    );
    let mut rejects = crate::pipeline::Rejects::new(a.rejects.as_deref())?;
    let mut peaks = PeakCollector::default();
    let mut events = 0u64;
    let read = {
        let consume = |batch: &mut Output| -> Result<()> {
            for r in batch.records() {
                if a.label.is_some() && r.label_text().as_deref() != a.label.as_deref() {
                    continue;
                }
                events += 1;
                peaks.add(r.endpoint, r.client, r.features[count_at]);
            }
            Ok(())
        };
        let mut delivery = crate::pipeline::Delivery::new(&mut rejects, consume);
        crate::pipeline::drive(
            source,
            a.input.parsers(),
            &mut session,
            &mut delivery,
            |_| {},
        )?
    };
    rejects.finish()?;
    let limits = peaks
        .limits(a.min_sessions)
        .context("recommending limits")?;
    let mut e = format!(
        "gatewatch recommend-limits: {events} events{}; {} rejected {}\n",
        a.label
            .as_deref()
            .map_or_else(String::new, |l| format!(" labelled {l}")),
        rejects.total(),
        read.unit()
    );
    e.push_str(&crate::model_cmd::limits_table(&limits, a.top));
    if let Some(path) = &a.rules_out {
        let text = limit_rules(&limits, &action);
        // What is written must load: checked against this feature set.
        let schema = gatewatch_pipeline::rules_schema(&registry, None);
        let n = Rules::parse(&text, &schema)
            .context("the written rules do not compile")?
            .len();
        std::fs::write(path, &text).with_context(|| format!("cannot write {}", path.display()))?;
        e.push_str(&format!(
            "  {n} rules ({action}) written to {}\n",
            path.display()
        ));
    }
    say_raw!("{e}");
    Ok(())
}

/// A text as a CEL single-quoted string literal.
fn cel_string(s: &str) -> String {
    let mut out = String::from("'");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// The recommended limits as a rules file: one rule per endpoint with a limit of its own,
/// keyed by client on the endpoint, matching requests beyond the limit in the current
/// minute (`endpoint_count_1m`); then one for every other endpoint at the pooled limit.
fn limit_rules(l: &gatewatch_models::volumetric::Limits, action: &str) -> String {
    let mut out = String::from(
        "# Per-endpoint rate limits recommended by `gatewatch recommend-limits`: the upper 95%\n\
         # bound of the p99 of each client's peak requests per minute on the endpoint.\n",
    );
    // A JSON string is a TOML basic string (the same escapes).
    let toml_str = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    for (n, x) in l.endpoints.iter().enumerate() {
        let Some(limit) = x.recommended else {
            continue;
        };
        let limit = limit.ceil().max(1.0);
        let when = format!(
            "request.endpoint == {} && features.endpoint_count_1m > {limit:.0}.0",
            cel_string(&x.endpoint)
        );
        out.push_str(&format!(
            "\n[[rule]]\nid = \"limit-{:03}\"\ndescription = {}\nwhen = {}\naction = \"{action}\"\nkey = \"endpoint+client\"\nttl = \"1m\"\n",
            n + 1,
            toml_str(&format!(
                "{}: {} clients, p99 peak {:.0}/min, confidence {}",
                x.endpoint, x.sessions, x.p99.value, x.confidence
            )),
            toml_str(&when),
        ));
        if action == "rate_limit" {
            out.push_str(&format!("rate = {limit:.0}\nper = \"1m\"\n"));
        }
    }
    if let Some(limit) = l.pooled.recommended {
        let limit = limit.ceil().max(1.0);
        let own: Vec<String> = l
            .endpoints
            .iter()
            .filter(|x| x.recommended.is_some())
            .map(|x| cel_string(&x.endpoint))
            .collect();
        let when = if own.is_empty() {
            format!("features.endpoint_count_1m > {limit:.0}.0")
        } else {
            format!(
                "features.endpoint_count_1m > {limit:.0}.0 && !(request.endpoint in [{}])",
                own.join(", ")
            )
        };
        out.push_str(&format!(
            "\n[[rule]]\nid = \"limit-pooled\"\ndescription = {}\nwhen = {}\naction = \"{action}\"\nkey = \"endpoint+client\"\nttl = \"1m\"\npriority = -1\n",
            toml_str(&format!(
                "endpoints without a limit of their own: {} clients in all, p99 peak {:.0}/min, confidence {}",
                l.pooled.sessions, l.pooled.p99.value, l.pooled.confidence
            )),
            toml_str(&when),
        ));
        if action == "rate_limit" {
            out.push_str(&format!("rate = {limit:.0}\nper = \"1m\"\n"));
        }
    }
    out
}
