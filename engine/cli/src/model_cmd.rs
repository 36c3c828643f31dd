//! `gatewatch train` and `gatewatch score`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use gatewatch_event::write_json_str;
use gatewatch_features::{FeatureEngine, Record, Registry};
use gatewatch_models::{RobustModel, RobustParams, Training};

use crate::pipeline::{Rejects, drive, remember, setup};
use crate::{ScoreArgs, TrainArgs};

/// The default model, compiled in (trained by `scripts/train-default`).
const DEFAULT_MANIFEST: &str = include_str!("../../../models/default/manifest.json");
const DEFAULT_BASELINE: &str = include_str!("../../../models/default/baseline.json");

/// The model of `--model DIR`, or the compiled-in default.
pub fn load_model(dir: Option<&Path>, registry: &Registry) -> Result<RobustModel> {
    Ok(match dir {
        Some(d) => {
            RobustModel::load(d, registry).with_context(|| format!("model {}", d.display()))?
        }
        None => RobustModel::from_texts(
            DEFAULT_MANIFEST,
            DEFAULT_BASELINE,
            "models/default",
            registry,
        )
        .context("the built-in default model")?,
    })
}

pub fn train(a: TrainArgs) -> Result<()> {
    let (cfg, format) = setup(&a.config, a.format)?;
    let mut engine = FeatureEngine::new(&cfg)?;
    let (mut input, _) = crate::io::open_input(&a.input)?;
    let mut rejects = Rejects::new(a.rejects.as_deref())?;
    let n = engine.registry().len();
    let mut rows: Vec<f64> = Vec::new();
    let mut clients: HashSet<String> = HashSet::new();
    let mut skipped = 0u64;
    let started = Instant::now();
    {
        let mut sink = |r: &Record<'_>| {
            if let Some(want) = &a.label {
                if r.event.label.as_deref().map(|l| l.trim_matches('"')) != Some(want.as_str()) {
                    skipped += 1;
                    return;
                }
            }
            rows.extend_from_slice(r.features);
            remember(&mut clients, r.client);
        };
        drive(
            &mut input,
            &mut engine,
            format,
            &mut sink,
            &mut rejects,
            |_| true,
        )?;
    }
    rejects.finish()?;
    let source = match &a.input {
        Some(p) if p != Path::new("-") => p.display().to_string(),
        _ => "standard input".to_string(),
    };
    let training = Training {
        events: 0,
        clients: clients.len() as u64,
        source,
        label_filter: a.label.clone(),
    };
    let params = RobustParams {
        top_k: a.top_k,
        threshold: a.threshold,
        ..RobustParams::default()
    };
    let model = RobustModel::fit(
        engine.registry(),
        &params,
        rows.chunks_exact(n),
        &a.name,
        training,
    )?;
    model.save(&a.output)?;
    eprintln!(
        "gatewatch train: fitted {} on {} events of {} clients ({} skipped by the label filter, {} rejected lines) in {:.2} s; wrote {}",
        model.id(),
        model.manifest.training.events,
        clients.len(),
        skipped,
        rejects.total(),
        started.elapsed().as_secs_f64(),
        a.output.display()
    );
    Ok(())
}

#[derive(Default)]
struct ClientSummary {
    events: u64,
    flagged: u64,
    max: f64,
    top_reason: String,
    label: String,
}

#[derive(Default)]
struct LabelSummary {
    events: u64,
    flagged: u64,
    clients: HashSet<String>,
    clients_flagged: HashSet<String>,
}

pub fn score(a: ScoreArgs) -> Result<()> {
    let (cfg, format) = setup(&a.config, a.format)?;
    let mut engine = FeatureEngine::new(&cfg)?;
    let model = load_model(a.model.as_deref(), engine.registry())?;
    let (mut input, _) = crate::io::open_input(&a.input)?;
    let mut out = if a.no_output {
        None
    } else {
        Some(crate::io::open_output(&a.output)?)
    };
    let mut rejects = Rejects::new(a.rejects.as_deref())?;
    let threshold = model.manifest.threshold;
    let model_id = model.id();
    let mut clients: HashMap<String, ClientSummary> = HashMap::new();
    let mut labels: BTreeMap<String, LabelSummary> = BTreeMap::new();
    let mut line = String::with_capacity(1024);
    let mut write_err: Option<std::io::Error> = None;
    let started = Instant::now();
    {
        let mut sink = |r: &Record<'_>| {
            let s = model.score(r.features, a.reasons);
            let flagged = s.score >= threshold;
            if let Some(o) = out.as_mut() {
                line.clear();
                record(&mut line, r, &s, flagged, &model_id);
                if let Err(e) = o.write_all(line.as_bytes()) {
                    write_err.get_or_insert(e);
                }
            }
            let label = r.event.label.as_deref().map(|l| l.trim_matches('"'));
            if !clients.contains_key(r.client) {
                clients.insert(r.client.to_string(), ClientSummary::default());
            }
            let c = clients.get_mut(r.client).expect("inserted above");
            c.events += 1;
            c.flagged += u64::from(flagged);
            if s.score > c.max || c.events == 1 {
                c.max = s.score;
                c.top_reason = s.reasons.first().map_or_else(String::new, |x| {
                    format!(
                        "{} = {} (baseline {:.3}, z {:+.1})",
                        x.feature,
                        short(x.value),
                        x.baseline,
                        x.contribution
                    )
                });
            }
            if let Some(l) = label {
                if c.label != l {
                    c.label = l.to_string();
                }
                if !labels.contains_key(l) {
                    labels.insert(l.to_string(), LabelSummary::default());
                }
                let ls = labels.get_mut(l).expect("inserted above");
                ls.events += 1;
                ls.flagged += u64::from(flagged);
                remember(&mut ls.clients, r.client);
                if flagged {
                    remember(&mut ls.clients_flagged, r.client);
                }
            }
        };
        drive(
            &mut input,
            &mut engine,
            format,
            &mut sink,
            &mut rejects,
            |_| true,
        )?;
    }
    if let Some(e) = write_err {
        return Err(e.into());
    }
    if let Some(o) = out.as_mut() {
        o.flush()?;
    }
    rejects.finish()?;
    let secs = started.elapsed().as_secs_f64();
    let st = engine.stats();
    let mut e = format!(
        "gatewatch score: {} events scored with {} (flag at ≥ {}) in {:.2} s ({:.0} events/s); {} rejected lines\n",
        st.events_out,
        model_id,
        threshold,
        secs,
        st.events_out as f64 / secs.max(1e-9),
        rejects.total()
    );
    let mut top: Vec<(&String, &ClientSummary)> =
        clients.iter().filter(|(_, c)| c.flagged > 0).collect();
    top.sort_by(|x, y| {
        y.1.flagged
            .cmp(&x.1.flagged)
            .then(y.1.max.total_cmp(&x.1.max))
            .then(x.0.cmp(y.0))
    });
    e.push_str(&format!(
        "  clients flagged: {} of {}; most flagged:\n",
        top.len(),
        clients.len()
    ));
    for (k, c) in top.iter().take(a.top) {
        let label = if c.label.is_empty() {
            String::new()
        } else {
            format!(" [{}]", c.label)
        };
        e.push_str(&format!(
            "    {k}{label}: {} of {} events flagged, max {:.3}; {}\n",
            c.flagged, c.events, c.max, c.top_reason
        ));
    }
    if !labels.is_empty() {
        e.push_str("  by label:            events  flagged   clients  flagged clients\n");
        for (l, s) in &labels {
            e.push_str(&format!(
                "    {:<18} {:>8} {:>7.1}% {:>9} {:>8} ({:.0}%)\n",
                l,
                s.events,
                100.0 * s.flagged as f64 / s.events.max(1) as f64,
                s.clients.len(),
                s.clients_flagged.len(),
                100.0 * s.clients_flagged.len() as f64 / s.clients.len().max(1) as f64
            ));
        }
    }
    eprint!("{e}");
    Ok(())
}

fn short(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e12 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

fn num(out: &mut String, v: f64) {
    if v.is_finite() {
        let mut b = zmij::Buffer::new();
        out.push_str(b.format_finite(v));
    } else {
        out.push_str("null");
    }
}

/// One score record as an NDJSON line.
fn record(
    out: &mut String,
    r: &Record<'_>,
    s: &gatewatch_models::Scored,
    flagged: bool,
    model: &str,
) {
    out.push('{');
    if let Some(id) = &r.event.id {
        out.push_str("\"id\":");
        out.push_str(id);
        out.push(',');
    }
    if let Some(l) = &r.event.label {
        out.push_str("\"label\":");
        out.push_str(l);
        out.push(',');
    }
    out.push_str("\"ts\":\"");
    gatewatch_event::write_rfc3339_ms(r.event.ts_ms, out);
    out.push_str("\",\"client\":");
    write_json_str(out, r.client);
    out.push_str(",\"endpoint\":");
    write_json_str(out, r.endpoint);
    out.push_str(",\"score\":");
    num(out, s.score);
    out.push_str(",\"scores\":{\"robust_zscore\":");
    num(out, s.score);
    out.push_str("},\"flagged\":");
    out.push_str(if flagged { "true" } else { "false" });
    out.push_str(",\"reasons\":[");
    for (i, x) in s.reasons.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"feature\":");
        write_json_str(out, &x.feature);
        out.push_str(",\"value\":");
        num(out, x.value);
        out.push_str(",\"baseline\":");
        num(out, x.baseline);
        out.push_str(",\"contribution\":");
        num(out, x.contribution);
        out.push('}');
    }
    out.push_str("],\"model\":");
    write_json_str(out, model);
    out.push_str("}\n");
}
