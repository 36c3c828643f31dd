//! Features and scores of a DataFrame's events, computed by the pipeline session every
//! other path drives; training inputs (feature rows, rate peaks) read back from features
//! frames.

use std::borrow::BorrowMut;

use gatewatch_features::{Config, FeatureEngine, Stats};
use gatewatch_models::Scorer;
use gatewatch_pipeline::{Output, Position, Session, SessionOptions};
use polars::prelude::*;

use crate::rows::{
    column, floats, for_each_event_in_time_order, frame_to_events, required, strings,
};
use crate::{FrameError, Result, datetime_ms};

/// Every event's point-in-time features, computed by the engine of `cfg` over the events
/// in event-time order (rows sorted by `ts`, ties in row order, so no event is late): one
/// row per event with `id` and `label` (when the frame has them, as they are), `ts`
/// (Datetime[ms, UTC]), `client`, `endpoint` and every feature (Float64) by registry name —
/// the columns of [`gatewatch_pipeline::schema::feature_columns`]. Returns the engine's run
/// counters too.
pub fn features_frame(cfg: &Config, df: &DataFrame) -> Result<(DataFrame, Stats)> {
    let mut session = session_for::<Scorer>(cfg, None, SessionOptions::default())?;
    let width = session.registry().len();
    let mut cols: Vec<Vec<f64>> = (0..width)
        .map(|_| Vec::with_capacity(df.height()))
        .collect();
    let mut keys = Keys::with_capacity(df.height());
    run(&mut session, df, |out| {
        keys.add(out);
        // Rows are moved into the columns a batch at a time, while they are still in cache:
        // far fewer cache and TLB misses than one push per column per record.
        append_columns(&mut cols, out.rows(), width);
        Ok(())
    })?;
    let n = keys.rows.len();
    let mut out = keys.columns(df)?;
    for (name, v) in session.registry().names().zip(cols) {
        out.push(Column::new(name.into(), v));
    }
    Ok((DataFrame::new(n, out)?, session.stats()))
}

/// Appends the rows of a row-major block with `width` columns to the columns (a block small
/// enough to stay in cache moves far faster than one push per column per row).
pub fn append_columns(cols: &mut [Vec<f64>], block: &[f64], width: usize) {
    for (k, col) in cols.iter_mut().enumerate() {
        col.extend(block.chunks_exact(width.max(1)).map(|r| r[k]));
    }
}

/// The identifying columns of the records, in emission order.
pub(crate) struct Keys {
    rows: Vec<IdxSize>,
    ts: Vec<i64>,
    clients: StringChunkedBuilder,
    endpoints: StringChunkedBuilder,
}

impl Keys {
    fn with_capacity(n: usize) -> Self {
        Self {
            rows: Vec::with_capacity(n),
            ts: Vec::with_capacity(n),
            clients: StringChunkedBuilder::new("client".into(), n),
            endpoints: StringChunkedBuilder::new("endpoint".into(), n),
        }
    }

    /// The records of a batch.
    fn add(&mut self, out: &Output) {
        for r in out.records() {
            self.rows.push(r.position.number() as IdxSize);
            self.ts.push(r.ts_ms);
            self.clients.append_value(r.client);
            self.endpoints.append_value(r.endpoint);
        }
    }

    /// `id` and `label` (taken from the frame's rows, as they are), `ts`, `client`,
    /// `endpoint`.
    fn columns(&mut self, df: &DataFrame) -> Result<Vec<Column>> {
        let mut cols: Vec<Column> = Vec::new();
        for name in ["id", "label"] {
            if let Some(s) = column(df, name) {
                cols.push(s.take_slice(&self.rows)?.into());
            }
        }
        cols.push(datetime_ms("ts", std::mem::take(&mut self.ts)));
        let n = self.rows.len();
        for (name, b) in [
            ("client", &mut self.clients),
            ("endpoint", &mut self.endpoints),
        ] {
            let b = std::mem::replace(b, StringChunkedBuilder::new(name.into(), 0));
            cols.push(b.finish().into_series().into());
        }
        debug_assert!(cols.iter().all(|c| c.len() == n));
        Ok(cols)
    }
}

/// A session whose engine runs on all the machine's cores (the records do not depend on
/// their number).
pub(crate) fn session_for<S: BorrowMut<Scorer>>(
    cfg: &Config,
    scorer: Option<S>,
    opts: SessionOptions,
) -> Result<Session<S>> {
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    Ok(Session::new(
        FeatureEngine::with_threads(cfg, threads)?,
        scorer,
        opts,
    ))
}

/// A batch the model could not score, as this crate's error.
fn scoring_failed(e: gatewatch_pipeline::SessionError) -> FrameError {
    FrameError::Invalid {
        row: 0,
        reason: e.to_string(),
    }
}

/// Runs the session over the frame's events in event-time order (rows sorted by `ts`, ties
/// in row order, so no event is late) and hands each output batch to `each`; the first error
/// `each` returns stops the run.
///
/// Rows become events one at a time, as the session takes them: a row that is not an event
/// is the error (rows without a valid time first, then the first bad row in time order).
pub(crate) fn run<S: BorrowMut<Scorer>>(
    session: &mut Session<S>,
    df: &DataFrame,
    each: impl FnMut(&Output) -> Result<()>,
) -> Result<()> {
    run_tagged(session, df, false, each)
}

/// [`run`], with the rows' `id` and `label` carried in the events when `tags` (what the
/// back-test of rules reads per record).
fn run_tagged<S: BorrowMut<Scorer>>(
    session: &mut Session<S>,
    df: &DataFrame,
    tags: bool,
    mut each: impl FnMut(&Output) -> Result<()>,
) -> Result<()> {
    let mut batch = Output::default();
    let mut deliver = |session: &mut Session<S>, all: bool| -> Result<()> {
        if session.is_full() || all && session.has_output() {
            session.take_into(&mut batch).map_err(scoring_failed)?;
            // Events in time order are never late: nothing else is rejected.
            debug_assert!(batch.rejections().is_empty());
            each(&batch)?;
        }
        Ok(())
    };
    for_each_event_in_time_order(df, tags, |row, e| {
        session.push(Position::row(row as u64), e?);
        deliver(session, false)
    })?;
    session.finish();
    deliver(session, true)
}

/// Every event scored by `scorer` (its features computed as in [`features_frame`], scored
/// in batches of `batch` as they come out of the engine): one row per event in time order
/// with the columns of [`gatewatch_pipeline::schema::score_columns`]: `id`/`label` (when
/// present), `ts`, `client`, `endpoint`, `score`, `surprisal`, one `score_<member>` column
/// per detector,
/// `flagged`, and the deciding member's reasons as `reasons` (a JSON array of `{detector,
/// feature, value, baseline, contribution}`, the same objects `gatewatch score` writes).
pub fn scores_frame(
    cfg: &Config,
    scorer: &mut Scorer,
    df: &DataFrame,
    reasons: usize,
    batch: usize,
) -> Result<DataFrame> {
    Ok(scored(cfg, scorer, df, reasons, batch, None)?.0)
}

/// What [`decide_frame`] answers: the scores frame with the decision columns, the decision
/// records as NDJSON (the lines `gatewatch score --decisions` writes), and the back-test
/// figures (`gatewatch backtest`'s).
pub type Decided = (DataFrame, String, gatewatch_pipeline::backtest::Backtest);

/// Every event scored by `scorer` and decided by the rules `rules_text` (a rules file's
/// text, compiled against the model's features and detectors), as `gatewatch score --rules`
/// does: the columns of [`scores_frame`], then `decision_id`, `decision_rule`,
/// `decision_action`, `decision_scope`, `decision_value`, `decision_mode`, `decision_until`
/// (RFC 3339) and `decision_new` — the strongest decision covering each request, null where
/// none does.
pub fn decide_frame(
    cfg: &Config,
    scorer: &mut Scorer,
    rules_text: &str,
    df: &DataFrame,
    reasons: usize,
    batch: usize,
) -> Result<Decided> {
    let registry = gatewatch_features::Registry::new(&cfg.features);
    let schema = gatewatch_pipeline::rules_schema(&registry, Some(scorer));
    let rules = gatewatch_pipeline::rules::Rules::parse(rules_text, &schema)
        .map_err(|e| FrameError::Model(e.to_string()))?;
    let decider = gatewatch_pipeline::rules::Decider::new(std::sync::Arc::new(rules));
    let (frame, decided) = scored(cfg, scorer, df, reasons, batch, Some(decider))?;
    let (text, backtest) = decided.expect("a run with rules decides");
    Ok((frame, text, backtest))
}

/// The decision columns of a run with rules.
#[derive(Default)]
struct DecisionColumns {
    id: Vec<Option<u64>>,
    text: [Vec<Option<String>>; 6],
    new: Vec<Option<bool>>,
}

impl DecisionColumns {
    fn add(&mut self, out: &Output) {
        for i in 0..out.len() {
            let v = out.verdict(i).map(gatewatch_pipeline::VerdictRecord::from);
            self.id.push(v.as_ref().map(|v| v.id));
            self.new.push(v.as_ref().map(|v| v.new));
            let fields = v.map(|v| [v.rule, v.action, v.scope, v.value, v.mode, v.until]);
            for (k, col) in self.text.iter_mut().enumerate() {
                col.push(fields.as_ref().map(|f| f[k].clone()));
            }
        }
    }

    fn columns(self) -> Vec<Column> {
        let names = ["rule", "action", "scope", "value", "mode", "until"];
        let mut cols = vec![Column::new("decision_id".into(), self.id)];
        for (n, v) in names.iter().zip(self.text) {
            cols.push(Column::new(format!("decision_{n}").into(), v));
        }
        cols.push(Column::new("decision_new".into(), self.new));
        cols
    }
}

fn scored(
    cfg: &Config,
    scorer: &mut Scorer,
    df: &DataFrame,
    reasons: usize,
    batch: usize,
    rules: Option<gatewatch_pipeline::rules::Decider>,
) -> Result<(
    DataFrame,
    Option<(String, gatewatch_pipeline::backtest::Backtest)>,
)> {
    let members: Vec<String> = scorer.members.iter().map(|m| m.name.clone()).collect();
    let value_names = gatewatch_pipeline::schema::score_value_columns(scorer);
    let with_rules = rules.is_some();
    // With rules, the endpoint monitor runs before them, as in `gatewatch score`.
    let monitor = match rules.is_some() {
        true => Some(
            scorer
                .endpoint_monitor()
                .map_err(|e| FrameError::Model(e.to_string()))?,
        ),
        false => None,
    };
    let mut session = session_for(cfg, Some(scorer), SessionOptions { batch, reasons })?;
    session.set_monitor(monitor);
    session.set_rules(rules);
    let k = members.len();
    let mut score = Vec::new();
    let mut surprisal = Vec::new();
    let mut member: Vec<Vec<f64>> = vec![Vec::new(); k];
    let mut flagged = Vec::new();
    let mut why = Vec::new();
    let mut keys = Keys::with_capacity(df.height());
    let mut decisions = DecisionColumns::default();
    let mut changes = String::new();
    let mut backtest = gatewatch_pipeline::backtest::BacktestCollector::default();
    run_tagged(&mut session, df, with_rules, |out| {
        keys.add(out);
        let s = out.scores().expect("a session with a model scores");
        score.extend_from_slice(&s.score);
        surprisal.extend_from_slice(&s.surprisal);
        flagged.extend_from_slice(&s.flagged);
        append_columns(&mut member, &s.member, k);
        for (i, rs) in s.reasons.iter().enumerate() {
            let mut text = String::new();
            gatewatch_pipeline::write_reasons_json(&mut text, &members[s.decided_by[i]], rs);
            why.push(text);
        }
        if with_rules {
            decisions.add(out);
            changes.push_str(&gatewatch_pipeline::schema::decisions_ndjson(
                out.decisions(),
            ));
            backtest.add(out);
        }
        Ok(())
    })?;
    let n = keys.rows.len();
    let mut keep = keys.columns(df)?;
    let values = [score, surprisal].into_iter().chain(member);
    for (name, v) in value_names.iter().zip(values) {
        keep.push(Column::new(name.as_str().into(), v));
    }
    keep.push(Column::new("flagged".into(), flagged));
    keep.push(Column::new("reasons".into(), why));
    let decided = match session.decider() {
        Some(d) => {
            keep.extend(decisions.columns());
            Some((changes, backtest.finish(d)))
        }
        None => None,
    };
    Ok((DataFrame::new(n, keep)?, decided))
}

/// Scores of the frame's events through the service's own path: the events written as
/// NDJSON lines and read back by the line reader of `gatewatch score`, scored in batches of
/// `batch`. One score per event, in the order the service emits them (event time, ties in
/// row order); lines the service rejects are counted in the second value.
pub fn service_scores(
    cfg: &Config,
    scorer: &mut Scorer,
    df: &DataFrame,
    batch: usize,
) -> Result<(Vec<f64>, u64)> {
    let events = frame_to_events(df)?;
    let mut text = String::new();
    for e in &events {
        gatewatch_event::write_ndjson(e, &mut text);
    }
    let mut session = session_for(cfg, Some(scorer), SessionOptions { batch, reasons: 0 })?;
    let mut reader = gatewatch_pipeline::LineReader::new(gatewatch_features::Format::Ndjson);
    let mut scores = Vec::with_capacity(events.len());
    let mut rejected = 0u64;
    let mut batch = Output::default();
    let mut take = |session: &mut Session<&mut Scorer>, scores: &mut Vec<f64>| -> Result<()> {
        session.take_into(&mut batch).map_err(scoring_failed)?;
        rejected += batch.rejections().len() as u64;
        scores.extend_from_slice(&batch.scores().expect("scored").score);
        Ok(())
    };
    for line in text.as_bytes().split_inclusive(|b| *b == b'\n') {
        reader.feed(&mut session, line);
        if session.is_full() {
            take(&mut session, &mut scores)?;
        }
    }
    reader.finish(&mut session);
    take(&mut session, &mut scores)?;
    Ok((scores, rejected))
}

/// The per-client peaks the volumetric detector is fitted on, from a features frame such
/// as [`features_frame`] returns (its `endpoint`, `client` and `endpoint_count_1m` columns,
/// rows in event-time order), as `gatewatch train` collects them from its records.
pub fn collect_peaks(
    registry: &gatewatch_features::Registry,
    df: &DataFrame,
    peaks: &mut gatewatch_models::PeakCollector,
) -> Result<()> {
    let feature = gatewatch_models::volumetric::FEATURE;
    if registry.index_of(feature).is_none() {
        return Err(FrameError::Missing {
            column: feature.to_string(),
        });
    }
    let endpoints = strings(required(df, "endpoint")?, "text")?;
    let clients = strings(required(df, "client")?, "text")?;
    let counts = floats(required(df, feature)?)?;
    for (row, ((e, c), n)) in endpoints.iter().zip(&clients).zip(&counts).enumerate() {
        let (Some(e), Some(c), Some(n)) = (e, c, n) else {
            let column = if e.is_none() {
                "endpoint"
            } else if c.is_none() {
                "client"
            } else {
                feature
            };
            return Err(FrameError::Null {
                column: column.to_string(),
                row,
            });
        };
        peaks.add(e, c, *n);
    }
    Ok(())
}

/// Feature rows (registry order) from a features frame, such as [`features_frame`] returns.
pub fn feature_rows(registry: &gatewatch_features::Registry, df: &DataFrame) -> Result<Vec<f64>> {
    let names: Vec<&str> = registry.names().collect();
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| df.column(n).is_err())
        .collect();
    if !missing.is_empty() {
        return Err(FrameError::Missing {
            column: missing.join(", "),
        });
    }
    let cols: Vec<Vec<Option<f64>>> = names
        .iter()
        .map(|n| floats(df.column(n).expect("checked").as_materialized_series()))
        .collect::<Result<_>>()?;
    let mut rows = Vec::with_capacity(df.height() * names.len());
    for r in 0..df.height() {
        for (k, c) in cols.iter().enumerate() {
            rows.push(c[r].ok_or_else(|| FrameError::Null {
                column: names[k].to_string(),
                row: r,
            })?);
        }
    }
    Ok(rows)
}

/// The endpoint monitor's alerts over the frame's events, scored by `scorer` (its failure
/// baselines, else a warm-up): NDJSON lines, client alerts then endpoint alerts, each oldest
/// first — the records `gatewatch score --alerts` writes for the same events.
pub fn alerts_ndjson(cfg: &Config, scorer: &mut Scorer, df: &DataFrame) -> Result<String> {
    let monitor = scorer
        .endpoint_monitor()
        .map_err(|e| FrameError::Model(e.to_string()))?;
    let mut clients = Vec::new();
    let mut session = session_for(cfg, Some(scorer), SessionOptions::default())?;
    session.set_monitor(Some(monitor));
    run(&mut session, df, |out| {
        clients.extend_from_slice(out.client_alerts());
        Ok(())
    })?;
    let monitor = session.monitor_mut().expect("set above");
    let endpoints = monitor.finish();
    clients.extend(monitor.take_client_alerts());
    Ok(gatewatch_pipeline::schema::alerts_ndjson(
        &clients, &endpoints,
    ))
}
