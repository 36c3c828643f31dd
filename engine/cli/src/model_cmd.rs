//! `gatewatch train` and `gatewatch score`.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use gatewatch_features::{DistinctCount, FeatureEngine, Registry, TopKeys};
use gatewatch_models::{
    Alert, ClientAlert, Detector, EndpointMonitor, FailureParams, MonitorParams, MultiParams,
    PeakCollector, RobustParams, Scorer, TrainSpec, Training, VolumetricParams, volumetric,
};
use gatewatch_pipeline::{Output, ScoreWriter, Session, SessionOptions};

use crate::pipeline::{Delivery, Rejects, distinct, drive, label_entry, setup};
use crate::{ScoreArgs, TrainArgs};

/// The model of `--model DIR`, or the compiled-in default.
pub fn load_model(dir: Option<&Path>, registry: &Registry) -> Result<Scorer> {
    Ok(match dir {
        Some(d) => Scorer::load(d, registry).with_context(|| format!("model {}", d.display()))?,
        None => Scorer::load_folder(&gatewatch_models::builtin_default(), registry)
            .context("the built-in default model")?,
    })
}

pub fn train(a: TrainArgs) -> Result<()> {
    let detectors = TrainSpec::parse_detectors(&a.detectors).context("--detectors")?;
    let (settings, source) = setup(&a.input)?;
    let cfg = &settings.engine;
    let engine = FeatureEngine::with_parts(cfg, a.input.threads() as u32)?;
    let registry = engine.registry().clone();
    let mut session = Session::features_only(
        engine,
        SessionOptions {
            batch: 1024,
            reasons: 0,
        },
    );
    let mut rejects = Rejects::new(a.rejects.as_deref())?;
    let n = registry.len();
    let count_at = registry.index_of(volumetric::FEATURE);
    let mut rows = Reservoir::new(a.max_train_events.max(1), n);
    let mut peaks = PeakCollector::default();
    let mut clients = DistinctCount::default();
    // The monitor learns the endpoints' failure baselines; it follows no client (their
    // alerts are not wanted here).
    let mut monitor = EndpointMonitor::new(MonitorParams {
        failures: FailureParams {
            max_pending: 0,
            ..FailureParams::default()
        },
        ..MonitorParams::default()
    })?;
    let mut skipped = 0u64;
    let started = Instant::now();
    let read = {
        let consume = |batch: &mut Output| -> Result<()> {
            for r in batch.records() {
                if let Some(want) = &a.label {
                    if r.label_text().as_deref() != Some(want.as_str()) {
                        skipped += 1;
                        continue;
                    }
                }
                rows.offer(r.features);
                if let Some(i) = count_at {
                    peaks.add(r.endpoint, r.client, r.features[i]);
                }
                clients.add(r.client);
                monitor.add(r.endpoint, r.client, r.ts_ms, r.status);
            }
            Ok(())
        };
        let mut delivery = Delivery::new(&mut rejects, consume);
        drive(
            source,
            a.input.parsers(),
            &mut session,
            &mut delivery,
            |_| {},
        )?
    };
    rejects.finish()?;
    let mut source = match &a.input.input {
        Some(p) if p != Path::new("-") => p.display().to_string(),
        _ => "standard input".to_string(),
    };
    if rows.seen > rows.len() as u64 {
        use std::fmt::Write as _;
        let _ = write!(
            source,
            " (a uniform sample of {} of {} events, --max-train-events)",
            rows.len(),
            rows.seen
        );
    }
    let rows = rows.rows;
    let training = Training {
        events: (rows.len() / n.max(1)) as u64,
        clients: clients.count(),
        source,
        label_filter: a.label.clone(),
        description: a.describe.clone(),
    };
    let spec = TrainSpec {
        name: a.name.clone(),
        detectors,
        robust: RobustParams {
            top_k: a.top_k,
            threshold: a.threshold,
            contamination: a.contamination,
            ..RobustParams::default()
        },
        volumetric: VolumetricParams {
            min_sessions: a.min_sessions,
            threshold: a.rate_threshold,
        },
        multi: MultiParams {
            threshold: a.threshold,
            ..MultiParams::default()
        },
    };
    monitor.finish();
    let baselines = monitor.baselines();
    let trained = gatewatch_models::train(
        &registry,
        &spec,
        &rows,
        &peaks,
        Some(&baselines),
        training,
        &a.output,
    )?;
    let manifest = &trained.manifest;
    let fitted: Vec<String> = trained
        .fitted
        .iter()
        .map(|(d, secs)| format!("{d} ({secs:.1} s)"))
        .collect();
    let vol = trained.volumetric;
    let mut e = format!(
        "gatewatch train: fitted {}@1 ({}) on {} events of {} clients ({} skipped by the label filter, {} rejected {}) in {:.2} s; wrote {}\n",
        a.name,
        fitted.join(", "),
        manifest.training.events,
        distinct(&clients),
        skipped,
        rejects.total(),
        read.unit(),
        started.elapsed().as_secs_f64(),
        a.output.display()
    );
    if manifest.training.source.contains("uniform sample") {
        e.push_str(&format!(
            "  training events: {}\n",
            manifest.training.source
        ));
    }
    if peaks.dropped() > 0 {
        e.push_str(&format!(
            "  rate limits: {} requests of endpoints or clients beyond the collector's caps ({} endpoints, {} pairs) not collected\n",
            peaks.dropped(),
            volumetric::MAX_PEAK_ENDPOINTS,
            volumetric::MAX_PEAK_PAIRS
        ));
    }
    if let Some(v) = &vol {
        e.push_str(&limits_table(&v.limits, a.top));
    }
    say_raw!("{e}");
    Ok(())
}

/// The training rows: all of them up to `cap`, then a uniform sample of `cap` (reservoir
/// sampling, algorithm R, with a fixed seed: the same log gives the same sample), so that
/// `train`'s memory has a bound the operator chose.
struct Reservoir {
    rows: Vec<f64>,
    width: usize,
    cap: usize,
    seen: u64,
    rng: gatewatch_sim::Rng,
}

impl Reservoir {
    fn new(cap: usize, width: usize) -> Self {
        Self {
            rows: Vec::new(),
            width,
            cap,
            seen: 0,
            rng: gatewatch_sim::Rng::new(0x5eed, 0),
        }
    }

    /// Rows kept.
    fn len(&self) -> usize {
        self.rows.len() / self.width.max(1)
    }

    fn offer(&mut self, row: &[f64]) {
        self.seen += 1;
        if self.len() < self.cap {
            self.rows.extend_from_slice(row);
            return;
        }
        // Keep the new row with probability cap / seen, in place of a uniform victim.
        let j = self.rng.below(self.seen) as usize;
        if j < self.cap {
            self.rows[j * self.width..(j + 1) * self.width].copy_from_slice(row);
        }
    }
}

fn q(x: &gatewatch_models::volumetric::Quantile) -> String {
    match x.high {
        Some(h) => format!("{} [{}–{}]", short(x.value), short(x.low), short(h)),
        None => format!("{} [{}–open]", short(x.value), short(x.low)),
    }
}

/// The rate-limit recommendations as a text table.
pub fn limits_table(l: &gatewatch_models::volumetric::Limits, top: usize) -> String {
    let mut e = format!(
        "  per-client peak requests per minute, by endpoint (p50 / p90 / p99 with 95% intervals; endpoints with fewer than {} clients use the pooled row):\n",
        l.min_sessions
    );
    let row = |x: &gatewatch_models::volumetric::EndpointLimits| {
        format!(
            "    {:<48} {:>6} clients  p50 {:<16} p90 {:<16} p99 {:<18} limit {:>6}  {}\n",
            x.endpoint,
            x.sessions,
            q(&x.p50),
            q(&x.p90),
            q(&x.p99),
            x.recommended.map_or_else(|| "—".to_string(), short),
            x.confidence
        )
    };
    for x in l.endpoints.iter().take(top) {
        e.push_str(&row(x));
    }
    if l.endpoints.len() > top {
        e.push_str(&format!(
            "    ({} more endpoints; all of them in the model's limits.json, or with --top)\n",
            l.endpoints.len() - top
        ));
    }
    e.push_str(&row(&l.pooled));
    if !l.below_gate.is_empty() {
        e.push_str(&format!(
            "    {} endpoints below the {}-client gate (no limit of their own)\n",
            l.below_gate.len(),
            l.min_sessions
        ));
    }
    e
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
    clients: DistinctCount,
    clients_flagged: DistinctCount,
    clients_named: DistinctCount,
}

/// Clients whose summaries `score` keeps (the most flagged and highest scoring stay).
const SUMMARY_CLIENTS: usize = 10_000;

/// What the score summary keeps, in memory bounded whatever the input: per-client summaries
/// of at most [`SUMMARY_CLIENTS`] clients, distinct counts that turn into estimates beyond
/// [`gatewatch_features::EXACT_DISTINCT`] keys, at most [`crate::pipeline::MAX_LABELS`] labels.
struct Summary {
    clients: TopKeys<ClientSummary>,
    seen: DistinctCount,
    flagged: DistinctCount,
    labels: BTreeMap<String, LabelSummary>,
}

impl Default for Summary {
    fn default() -> Self {
        Self {
            clients: TopKeys::new(SUMMARY_CLIENTS),
            seen: DistinctCount::default(),
            flagged: DistinctCount::default(),
            labels: BTreeMap::new(),
        }
    }
}

impl Summary {
    /// One event; `reason` writes the top reason, called only when the event is its
    /// client's highest-scoring so far.
    fn add(
        &mut self,
        client: &str,
        label: &str,
        score: f64,
        flagged: bool,
        reason: impl FnOnce(&mut String),
    ) {
        self.seen.add(client);
        if flagged {
            self.flagged.add(client);
        }
        let c = self
            .clients
            .entry(client, ClientSummary::default, |c| (c.flagged, c.max));
        c.events += 1;
        c.flagged += u64::from(flagged);
        if score > c.max || c.events == 1 {
            c.max = score;
            c.top_reason.clear();
            reason(&mut c.top_reason);
        }
        if !label.is_empty() {
            if c.label != label {
                c.label = label.to_string();
            }
            let ls = label_entry(&mut self.labels, label, LabelSummary::default);
            ls.events += 1;
            ls.flagged += u64::from(flagged);
            ls.clients.add(client);
            if flagged {
                ls.clients_flagged.add(client);
            }
        }
    }
}

/// How the summary words a member's top reason: the unit of its contribution and the
/// digits shown.
fn reason_unit(d: &Detector) -> (&'static str, usize) {
    match d {
        Detector::Robust(_) => ("surprisal", 1),
        Detector::Volumetric(_) => ("×", 1),
        Detector::Onnx(_) => ("score change", 3),
        Detector::Multi(_) => ("contribution", 2),
    }
}

pub fn score(a: ScoreArgs) -> Result<()> {
    let (settings, source) = setup(&a.input)?;
    let cfg = &settings.engine;
    let engine = FeatureEngine::with_parts(cfg, a.input.threads() as u32)?;
    // --model, else the configuration's [model] path, else the built-in default.
    let model = a.model.as_deref().or(settings.model.path.as_deref());
    let builtin = model.is_none();
    let scorer = load_model(model, engine.registry())?;
    let mut out = None;
    let mut table = None;
    if !a.no_output {
        match crate::table::sink(&a.output)? {
            crate::table::Sink::Lines => out = Some(crate::io::open_output(&a.output.output)?),
            crate::table::Sink::Table(path, format) => {
                let names = gatewatch_pipeline::schema::score_value_columns(&scorer);
                table = Some(crate::table::TableOut::new(path, format, names, true));
            }
        }
    }
    let writer = ScoreWriter::new(&scorer);
    // With parser threads, records are formatted and written on other threads too.
    let mut parallel = None;
    if a.input.parsers() > 0 {
        if let Some(o) = out.take() {
            parallel = Some(crate::output::ParallelRecords::new(
                || crate::output::Scores(writer.clone(), String::new()),
                a.input.parsers(),
                o,
            ));
        }
    }
    let members: Vec<(String, &str, usize)> = scorer
        .members
        .iter()
        .map(|m| {
            let (what, digits) = reason_unit(&m.detector);
            (m.name.clone(), what, digits)
        })
        .collect();
    let thresholds: Vec<String> = scorer
        .members
        .iter()
        .map(|m| format!("{} ≥ {}", m.name, m.threshold))
        .collect();
    let model_id = scorer.id();
    let has_baselines = scorer.monitor.is_some();
    let monitor = scorer.endpoint_monitor()?;
    let fitted_on = scorer.manifest.training.description.clone();
    let mut session = Session::new(
        engine,
        Some(scorer),
        SessionOptions {
            batch: a.batch.max(1),
            reasons: a.reasons,
        },
    );
    // The session runs the endpoint monitor before the rules, which read it.
    session.set_monitor(Some(monitor));
    // --rules, else the configuration's [rules] path.
    let rules_path = a.rules.as_deref().or(settings.rules.path.as_deref());
    if let Some(p) = rules_path {
        session.set_rules(Some(crate::rules_cmd::load(p, &session)?));
    }
    let rules_source = rules_path.map(|p| {
        if p.as_os_str() == "default" {
            "built-in".to_string()
        } else {
            p.display().to_string()
        }
    });
    let mut decisions_out = match &a.decisions {
        Some(p) if rules_path.is_some() => Some(crate::rules_cmd::DecisionsOut::create(p)?),
        Some(_) => anyhow::bail!("--decisions needs rules (--rules FILE or [rules] path)"),
        None => None,
    };
    let mut report = gatewatch_pipeline::backtest::BacktestCollector::default();
    let mut rejects = Rejects::new(a.rejects.as_deref())?;
    let mut summary = Summary::default();
    let mut alerts_out = match &a.alerts {
        Some(path) => Some((
            std::io::BufWriter::new(
                std::fs::File::create(path)
                    .with_context(|| format!("cannot create {}", path.display()))?,
            ),
            path.clone(),
        )),
        None => None,
    };
    let mut named = NamedClients::default();
    let mut line = String::with_capacity(1 << 16);
    let started = Instant::now();
    let read = {
        let consume = |batch: &mut Output| -> Result<()> {
            let s = batch
                .scores()
                .context("the session did not score its output")?;
            let k = members.len();
            for (i, r) in batch.records().enumerate() {
                let (flagged, rs) = (s.flagged[i], &s.reasons[i]);
                let (member, what, digits) = &members[s.decided_by[i]];
                if let Some(t) = table.as_mut() {
                    t.push_key(&r);
                    t.push_values(&[s.score[i], s.surprisal[i]]);
                    t.push_values(&s.member[i * k..(i + 1) * k]);
                    t.push_flag(flagged, member, rs);
                }
                let label = r.label_text();
                summary.add(
                    r.client,
                    label.as_deref().unwrap_or(""),
                    s.score[i],
                    flagged,
                    |why| {
                        if let Some(x) = rs.first() {
                            use std::fmt::Write as _;
                            let _ = write!(
                                why,
                                "{member}: {} = {} (baseline {:.3}, {what} {:+.digits$})",
                                x.feature,
                                short(x.value),
                                x.baseline,
                                x.contribution
                            );
                        }
                    },
                );
            }
            for x in batch.client_alerts() {
                named.add(x, &mut summary, alerts_out.as_mut())?;
            }
            if rules_source.is_some() {
                report.add(batch);
            }
            if let Some(d) = decisions_out.as_mut() {
                d.write(batch)?;
            }
            if let Some(o) = out.as_mut() {
                line.clear();
                writer.write_batch(batch, &mut line);
                o.write_all(line.as_bytes())?;
            }
            if let Some(t) = table.as_mut() {
                t.maybe_flush()?;
            }
            if let Some(p) = parallel.as_mut() {
                p.push(batch)?;
            }
            Ok(())
        };
        let mut delivery = Delivery::new(&mut rejects, consume);
        drive(
            source,
            a.input.parsers(),
            &mut session,
            &mut delivery,
            |_| {},
        )?
    };
    let monitor = session
        .monitor_mut()
        .context("the session has its endpoint monitor")?;
    let alerts = monitor.finish();
    for x in monitor.take_client_alerts() {
        named.add(&x, &mut summary, alerts_out.as_mut())?;
    }
    let monitor = session
        .monitor()
        .context("the session has its endpoint monitor")?;
    if let Some(p) = parallel {
        p.finish()?;
    }
    if let Some(o) = out.as_mut() {
        o.flush()?;
    }
    if let Some(t) = table.take() {
        t.finish()?;
    }
    rejects.finish()?;
    if let Some(d) = decisions_out.take() {
        d.finish()?;
    }
    let secs = started.elapsed().as_secs_f64();
    let stats = session.stats();
    let mut e = format!(
        "gatewatch score: {} events scored with {} (flag at {}) in {:.2} s ({:.0} events/s); {} rejected {}\n",
        stats.events_out,
        model_id,
        thresholds.join(", "),
        secs,
        stats.events_out as f64 / secs.max(1e-9),
        rejects.total(),
        read.unit()
    );
    if let Some(d) = &fitted_on {
        e.push_str(&format!("  the model was fitted on {d}\n"));
    }
    if builtin {
        e.push_str(
            "  this is the built-in default: to fit a model on your own traffic, \
             `gatewatch train -i YOUR_LOG -o DIR`, then `gatewatch score --model DIR` \
             (EVALUATION.md: on a real website the default flags a third of the visitors)\n",
        );
    }
    let Summary {
        clients,
        seen,
        flagged,
        labels,
    } = &summary;
    let mut top: Vec<(&str, &ClientSummary)> =
        clients.iter().filter(|(_, c)| c.flagged > 0).collect();
    top.sort_by(|x, y| {
        y.1.flagged
            .cmp(&x.1.flagged)
            .then(y.1.max.total_cmp(&x.1.max))
            .then(x.0.cmp(y.0))
    });
    e.push_str(&format!(
        "  clients flagged: {} of {}; most flagged:\n",
        distinct(flagged),
        distinct(seen)
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
        e.push_str(
            "  by label:            events  flagged   clients  flagged clients  named by the monitor\n",
        );
        for (l, s) in labels {
            e.push_str(&format!(
                "    {:<18} {:>8} {:>7.1}% {:>9} {:>8} ({:>3.0}%) {:>8}\n",
                l,
                s.events,
                100.0 * s.flagged as f64 / s.events.max(1) as f64,
                distinct(&s.clients),
                distinct(&s.clients_flagged),
                100.0 * s.clients_flagged.count() as f64 / s.clients.count().max(1) as f64,
                distinct(&s.clients_named),
            ));
        }
    }
    if clients.dropped() > 0 {
        e.push_str(&format!(
            "  client summaries: {} kept (cap {}), {} of the least flagged dropped on the way\n",
            clients.len(),
            clients.capacity(),
            clients.dropped()
        ));
    }
    if let Some((w, path)) = alerts_out.as_mut() {
        let write = |w: &mut std::io::BufWriter<std::fs::File>| -> std::io::Result<()> {
            for x in &alerts {
                writeln!(w, "{}", gatewatch_pipeline::schema::endpoint_alert_json(x))?;
            }
            w.flush()
        };
        write(w).with_context(|| format!("cannot write {}", path.display()))?;
    }
    e.push_str(&alerts_summary(&alerts, monitor.buckets(), a.top));
    e.push_str(&named.summary(has_baselines, a.top));
    if monitor.overflowed() > 0 || monitor.alerts_dropped() > 0 || monitor.pending_dropped() > 0 {
        let p = MonitorParams::default();
        e.push_str(&format!(
            "  endpoint monitor: {} series (cap {}), {} requests in the shared {} series, {} alerts beyond the cap of {} not kept, {} failures not followed (cap {} clients)\n",
            monitor.endpoints(),
            p.max_endpoints,
            monitor.overflowed(),
            gatewatch_models::OVERFLOW_ENDPOINT,
            monitor.alerts_dropped(),
            p.max_alerts,
            monitor.pending_dropped(),
            p.failures.max_pending
        ));
    }
    if let (Some(src), Some(d)) = (&rules_source, session.decider()) {
        e.push_str(&crate::rules_cmd::report_text(&report.finish(d), src));
    }
    say_raw!("{e}");
    Ok(())
}

/// Endpoint alerts grouped by endpoint and series.
fn alerts_summary(alerts: &[Alert], buckets: u64, top: usize) -> String {
    let mut groups: BTreeMap<(&str, &str), (usize, i64, f64, f64)> = BTreeMap::new();
    for x in alerts {
        let g = groups
            .entry((x.endpoint.as_str(), x.metric.name()))
            .or_insert((0, x.bucket_start_ms, x.value, x.expected));
        g.0 += 1;
        if x.value > g.2 {
            (g.2, g.3) = (x.value, x.expected);
        }
    }
    let mut e = format!(
        "  endpoint alerts: {} of {} ten-second buckets{}\n",
        alerts.len(),
        buckets,
        if groups.is_empty() { "" } else { ":" }
    );
    let mut v: Vec<_> = groups.into_iter().collect();
    v.sort_by(|x, y| y.1.0.cmp(&x.1.0).then(x.0.cmp(&y.0)));
    for ((endpoint, metric), (n, first, value, expected)) in v.into_iter().take(top) {
        let mut ts = String::new();
        gatewatch_event::write_rfc3339_ms(first, &mut ts);
        e.push_str(&format!(
            "    {endpoint} {metric}: {n} buckets from {ts}; peak {} (expected {:.2})\n",
            short(value),
            expected
        ));
    }
    e
}

/// The clients the endpoint monitor named (client alerts): counted, per endpoint and in the
/// summary's label of the client, and written to the alerts file.
#[derive(Default)]
struct NamedClients {
    alerts: u64,
    clients: DistinctCount,
    endpoints: BTreeMap<String, u64>,
}

impl NamedClients {
    fn add(
        &mut self,
        x: &ClientAlert,
        summary: &mut Summary,
        out: Option<&mut (std::io::BufWriter<std::fs::File>, std::path::PathBuf)>,
    ) -> Result<()> {
        self.alerts += 1;
        self.clients.add(&x.client);
        *self.endpoints.entry(x.endpoint.clone()).or_default() += 1;
        let label = summary
            .clients
            .get_mut(&x.client)
            .map(|c| c.label.clone())
            .unwrap_or_default();
        if let Some(l) = summary.labels.get_mut(&label) {
            l.clients_named.add(&x.client);
        }
        if let Some((w, path)) = out {
            let rec = gatewatch_pipeline::schema::client_alert_json(x);
            writeln!(w, "{rec}").with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(())
    }

    fn summary(&self, baselines: bool, top: usize) -> String {
        let mut e = format!(
            "  client alerts: {} clients named in {} alerts (authentication failures never followed by a success, in an endpoint's alerting buckets; failure baselines {})\n",
            distinct(&self.clients),
            self.alerts,
            if baselines {
                "from the model"
            } else {
                "learnt from this input: the model has none"
            }
        );
        let mut v: Vec<(&String, &u64)> = self.endpoints.iter().collect();
        v.sort_by(|x, y| y.1.cmp(x.1).then(x.0.cmp(y.0)));
        for (endpoint, n) in v.into_iter().take(top) {
            e.push_str(&format!("    {endpoint}: {n}\n"));
        }
        e
    }
}

fn short(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e12 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::Reservoir;

    #[test]
    fn the_reservoir_keeps_a_uniform_sample_of_its_size() {
        let sample = || {
            let mut r = Reservoir::new(1000, 2);
            for i in 0..100_000u32 {
                r.offer(&[f64::from(i), -f64::from(i)]);
            }
            r
        };
        let r = sample();
        assert_eq!((r.len(), r.seen), (1000, 100_000));
        assert_eq!(
            r.rows,
            sample().rows,
            "the same input gives the same sample"
        );
        let firsts: Vec<f64> = r.rows.chunks(2).map(|c| c[0]).collect();
        assert!(r.rows.chunks(2).all(|c| c[1] == -c[0]), "rows stay whole");
        // Uniform over the input: as many from each half, the mean near the middle.
        let early = firsts.iter().filter(|v| **v < 50_000.0).count();
        assert!((400..600).contains(&early), "{early}");
        let mean = firsts.iter().sum::<f64>() / 1000.0;
        assert!((45_000.0..55_000.0).contains(&mean), "{mean}");
        // Under the cap, every row in order.
        let mut small = Reservoir::new(10, 1);
        for i in 0..7 {
            small.offer(&[f64::from(i)]);
        }
        assert_eq!(small.rows, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    }
}
