//! The session: one owner of the feature engine and the scorer, taking events in and handing
//! owned output batches out.

use std::borrow::{Borrow, BorrowMut};
use std::collections::VecDeque;
use std::io::{Read, Write};

use gatewatch_event::{ParseError, RequestEvent};
use gatewatch_features::{FeatureEngine, LateEvent, Record, Registry, Share, Stats};
use gatewatch_models::{BatchScores, EndpointMonitor, Scorer};
use gatewatch_rules::{Decider, Input, Schema, ScoreView};

use crate::output::Output;
use crate::position::{Ack, Position};
use crate::rejection::{Rejection, Why};

/// What can go wrong in a session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The model failed to score a batch (its records stay in the session).
    #[error("scoring failed: {0}")]
    Model(#[from] gatewatch_models::ModelError),
    /// The engine failed (a state that cannot be saved or restored).
    #[error(transparent)]
    Engine(#[from] gatewatch_features::Error),
}

/// How a session batches its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionOptions {
    /// Records per output batch: [`Session::is_full`] says when this many are waiting.
    /// Scored together (an ONNX model runs once per batch).
    pub batch: usize,
    /// Reasons kept per scored record, at most.
    pub reasons: usize,
}

impl Default for SessionOptions {
    fn default() -> Self {
        Self {
            batch: 1024,
            reasons: 3,
        }
    }
}

/// Text held by a batch (ids, labels, client keys) at which it counts as full whatever its
/// number of records.
const FULL_TEXT_BYTES: usize = 64 << 20;

/// The inputs inside the session, in input order: each one's position and whether its
/// output (a record or a rejection) has been put into the output batch.
#[derive(Debug, Default)]
struct Tracker {
    /// Sequence number of the front entry.
    base: u64,
    open: VecDeque<(Position, bool)>,
    last: Option<Position>,
}

impl Tracker {
    /// A new input; its sequence number.
    fn open(&mut self, position: Position) -> u64 {
        self.last = Some(position);
        self.open.push_back((position, false));
        self.base + self.open.len() as u64 - 1
    }

    /// Input `seq` has its output; its position.
    fn close(&mut self, seq: u64) -> Position {
        let i = usize::try_from(seq - self.base).expect("an open sequence number");
        let slot = &mut self.open[i];
        slot.1 = true;
        let position = slot.0;
        while self.open.front().is_some_and(|s| s.1) {
            self.open.pop_front();
            self.base += 1;
        }
        position
    }

    /// The engine's sink: each record joins `out` at its input's position.
    fn records<'a>(&'a mut self, out: &'a mut Output) -> impl FnMut(&Record<'_>) + 'a {
        move |r| {
            let p = self.close(r.line);
            out.push(p, r);
        }
    }

    fn ack(&self) -> Ack {
        match (self.open.front(), self.last) {
            (Some((p, _)), _) => Ack::Before(*p),
            (None, Some(p)) => Ack::Through(p),
            (None, None) => Ack::Nothing,
        }
    }
}

/// Events in, owned output batches out: the one pipeline every path drives.
///
/// ```
/// use gatewatch_features::{Config, FeatureEngine};
/// use gatewatch_pipeline::{Ack, Position, Session, SessionOptions};
///
/// let engine = FeatureEngine::new(&Config::default()).unwrap();
/// let mut s = Session::features_only(engine, SessionOptions::default());
/// let ev = gatewatch_event::parse_ndjson(
///     br#"{"ts":1767603600000,"client_ip":"10.0.0.1","method":"GET","path":"/a","status":200}"#,
/// )
/// .unwrap();
/// s.push(Position::line(1), ev);
/// s.finish();
/// let out = s.take().unwrap();
/// assert_eq!(out.len(), 1);
/// assert_eq!(out.record(0).client, "ip:10.0.0.1");
/// assert_eq!(out.ack(), Ack::Through(Position::line(1)));
/// ```
pub struct Session<S: BorrowMut<Scorer> = Scorer> {
    engine: FeatureEngine,
    scorer: Option<S>,
    opts: SessionOptions,
    out: Output,
    track: Tracker,
    /// Events the engine refused during one push.
    refused: Vec<LateEvent>,
    /// Mitigation rules over the scored records.
    rules: Option<Decider>,
    /// The endpoint monitor over the scored records (before the rules, which read it).
    monitor: Option<EndpointMonitor>,
}

/// The names rules may read: the registry's features and the scorer's detectors.
pub fn rules_schema(registry: &Registry, scorer: Option<&Scorer>) -> Schema {
    Schema {
        features: registry.names().map(String::from).collect(),
        detectors: scorer
            .map(|s| s.members.iter().map(|m| m.name.clone()).collect())
            .unwrap_or_default(),
    }
}

impl Session {
    /// A session of `engine` whose records carry features only.
    pub fn features_only(engine: FeatureEngine, opts: SessionOptions) -> Self {
        Self::new(engine, None, opts)
    }
}

impl<S: BorrowMut<Scorer>> Session<S> {
    /// A session of `engine` (built for its configuration, with its parts and threads),
    /// scoring with `scorer` when given (else records carry features only). The scorer is
    /// owned (`Scorer`) or borrowed (`&mut Scorer`).
    pub fn new(engine: FeatureEngine, scorer: Option<S>, opts: SessionOptions) -> Self {
        let width = engine.registry().len();
        Self {
            engine,
            scorer,
            opts: SessionOptions {
                batch: opts.batch.max(1),
                ..opts
            },
            out: Output::new(width),
            track: Tracker::default(),
            refused: Vec::new(),
            rules: None,
            monitor: None,
        }
    }

    /// Runs the endpoint monitor over the records from now on (or stops, with `None`), in
    /// output order, before the rules (`score.endpoint_auth` reads it): each batch carries
    /// the client alerts it decided ([`Output::client_alerts`]); the endpoint alerts stay
    /// in the monitor ([`monitor_mut`](Self::monitor_mut)). Returns the previous one.
    pub fn set_monitor(&mut self, monitor: Option<EndpointMonitor>) -> Option<EndpointMonitor> {
        std::mem::replace(&mut self.monitor, monitor)
    }

    /// The endpoint monitor, when the session has one.
    pub fn monitor(&self) -> Option<&EndpointMonitor> {
        self.monitor.as_ref()
    }

    /// The endpoint monitor, to take its endpoint alerts or finish it.
    pub fn monitor_mut(&mut self) -> Option<&mut EndpointMonitor> {
        self.monitor.as_mut()
    }

    /// Applies mitigation rules to the records from now on (or stops, with `None`): each
    /// record taken gets the verdict of the strongest decision covering it, and each batch
    /// the decisions that started, escalated or ended. Returns the previous decider (a
    /// reload passes its state on with [`Decider::set_rules`] instead).
    pub fn set_rules(&mut self, rules: Option<Decider>) -> Option<Decider> {
        self.out.keep_requests(rules.is_some());
        std::mem::replace(&mut self.rules, rules)
    }

    /// The decision state, when the session has rules.
    pub fn decider(&self) -> Option<&Decider> {
        self.rules.as_ref()
    }

    /// The decision state, to reload rules or restore decisions.
    pub fn decider_mut(&mut self) -> Option<&mut Decider> {
        self.rules.as_mut()
    }

    /// The names rules may read in this session.
    pub fn rules_schema(&self) -> Schema {
        rules_schema(self.registry(), self.scorer())
    }

    /// Replaces the model (a reload): records taken from now on are scored with `scorer`.
    /// Returns the previous one.
    pub fn set_scorer(&mut self, scorer: S) -> Option<S> {
        self.scorer.replace(scorer)
    }

    /// The feature engine (counters, clients, population statistics).
    pub fn engine(&self) -> &FeatureEngine {
        &self.engine
    }

    /// The feature registry.
    pub fn registry(&self) -> &Registry {
        self.engine.registry()
    }

    /// The engine's counters.
    pub fn stats(&self) -> Stats {
        self.engine.stats()
    }

    /// The model, when the session scores.
    pub fn scorer(&self) -> Option<&Scorer> {
        self.scorer.as_ref().map(Borrow::borrow)
    }

    /// The model's `name@version`, when the session scores.
    pub fn model_id(&self) -> Option<String> {
        self.scorer().map(Scorer::id)
    }

    /// The options.
    pub fn options(&self) -> SessionOptions {
        self.opts
    }

    /// An event that was at `position` in its source. Its record (or its rejection, when the
    /// engine refuses it as late or too far ahead) joins the output once event time has
    /// passed it; records of earlier events may join now.
    ///
    /// When the engine shares its population statistics
    /// ([`share_population`](Self::share_population)), a Kafka message's event belongs to
    /// the part of its partition.
    pub fn push(&mut self, position: Position, event: RequestEvent) {
        let seq = self.track.open(position);
        let part = match position {
            Position::Offset { partition, .. } if self.engine.is_sharing() => {
                Some(u32::try_from(partition).unwrap_or(u32::MAX))
            }
            _ => None,
        };
        self.with_engine(|engine, track, out, refused| {
            let mut sink = track.records(out);
            let mut late = |l| refused.push(l);
            match part {
                Some(p) => engine.push_in(p, event, seq, &mut sink, &mut late),
                None => engine.push(event, seq, &mut sink, &mut late),
            }
        });
    }

    /// Runs `f` on the engine with what its sinks need (this session's tracker and output,
    /// and the list of refused events); the refused events then join the rejections.
    fn with_engine<T>(
        &mut self,
        f: impl FnOnce(&mut FeatureEngine, &mut Tracker, &mut Output, &mut Vec<LateEvent>) -> T,
    ) -> T {
        let Self {
            engine,
            out,
            track,
            refused,
            ..
        } = self;
        let r = f(engine, track, out, refused);
        for late in refused.drain(..) {
            let position = track.close(late.line);
            out.rejections.push(Rejection {
                position,
                why: Why::Refused(late.kind),
            });
        }
        r
    }

    /// Makes the engine one of several sharing their population statistics (see
    /// [`FeatureEngine::share_population`]): `parts` parts (the input topic's partitions),
    /// of which it owns `local`. Events pushed with a Kafka position then go to the part of
    /// their partition.
    pub fn share_population(&mut self, parts: u32, local: &[u32]) -> crate::Result<()> {
        Ok(self.engine.share_population(parts, local)?)
    }

    /// The shares the engine wrote since the last call (for every other engine, in order).
    pub fn take_shares(&mut self) -> Vec<Share> {
        self.engine.take_shares()
    }

    /// A share of another engine (see [`FeatureEngine::receive`]); records it releases join
    /// the output.
    pub fn receive_share(&mut self, share: Share) -> crate::Result<()> {
        self.with_engine(|engine, track, out, _| engine.receive(share, &mut track.records(out)))?;
        Ok(())
    }

    /// Event time has reached `ts` elsewhere (see [`FeatureEngine::advance_time`]); records
    /// it releases join the output, events it refuses the rejections.
    pub fn advance_time(&mut self, ts: i64) {
        self.with_engine(|engine, track, out, refused| {
            engine.advance_time(ts, &mut track.records(out), &mut |l| refused.push(l));
        });
    }

    /// An input at `position` that is not an event: its rejection joins the output.
    pub fn reject(&mut self, position: Position, error: ParseError) {
        let seq = self.track.open(position);
        let position = self.track.close(seq);
        self.out.rejections.push(Rejection {
            position,
            why: Why::Invalid(error),
        });
    }

    /// An input at `position`, parsed: [`push`](Self::push) or [`reject`](Self::reject).
    pub fn push_parsed(&mut self, position: Position, parsed: Result<RequestEvent, ParseError>) {
        match parsed {
            Ok(e) => self.push(position, e),
            Err(e) => self.reject(position, e),
        }
    }

    /// Processes what a threaded engine has released and holds for its next batch, so that
    /// a slow source is not held back.
    pub fn flush(&mut self) {
        let Self {
            engine, out, track, ..
        } = self;
        engine.flush(&mut track.records(out));
    }

    /// The end of the input: every event still buffered (reordering, held ahead of event
    /// time) is processed and joins the output.
    pub fn finish(&mut self) {
        let Self {
            engine, out, track, ..
        } = self;
        engine.finish(&mut track.records(out));
    }

    /// Records waiting in the output.
    pub fn ready(&self) -> usize {
        self.out.len()
    }

    /// Whether the output holds a batch's worth (records, rejections or text): time to
    /// [`take`](Self::take) it.
    pub fn is_full(&self) -> bool {
        self.out.len() >= self.opts.batch
            || self.out.rejections.len() >= self.opts.batch
            || self.out.text_len() >= FULL_TEXT_BYTES
    }

    /// Whether the output holds anything (records or rejections).
    pub fn has_output(&self) -> bool {
        !self.out.is_empty() || !self.out.rejections.is_empty()
    }

    /// Inputs pushed whose output is not in the output yet (held by the engine).
    pub fn in_flight(&self) -> usize {
        self.track.open.len()
    }

    /// How far the output has come now (see [`Ack`]).
    pub fn ack(&self) -> Ack {
        self.track.ack()
    }

    /// The output so far as an owned batch, scored when the session has a model.
    pub fn take(&mut self) -> crate::Result<Output> {
        let mut out = Output::new(self.out.width());
        self.take_into(&mut out)?;
        Ok(out)
    }

    /// The output so far into `into` (whose old contents are dropped and whose buffers the
    /// session reuses). When scoring fails the error is returned and the records stay in
    /// the session.
    pub fn take_into(&mut self, into: &mut Output) -> crate::Result<()> {
        if let Some(scorer) = self.scorer.as_mut() {
            let scorer = scorer.borrow_mut();
            if self.out.is_empty() {
                self.out.scores = BatchScores::default();
            } else {
                scorer.score_batch(
                    &self.out.batch,
                    self.out.width(),
                    self.opts.reasons,
                    &mut self.out.scores,
                )?;
            }
            self.out.scored = true;
        }
        if let Some(monitor) = self.monitor.as_mut() {
            let out = &mut self.out;
            out.endpoint_auth.clear();
            // The endpoint's alert score at each request is read by the rules only.
            let for_rules = self.rules.is_some();
            for i in 0..out.len() {
                let r = out.record(i);
                monitor.add(r.endpoint, r.client, r.ts_ms, r.status);
                if for_rules {
                    let a = monitor.auth_alert(r.endpoint, r.ts_ms);
                    out.endpoint_auth.push(a);
                }
            }
            out.client_alerts = monitor.take_client_alerts();
        }
        if let Some(decider) = self.rules.as_mut() {
            decide(
                decider,
                &mut self.out,
                self.scorer.as_ref().map(Borrow::borrow),
            );
        }
        self.out.ack = self.track.ack();
        std::mem::swap(into, &mut self.out);
        let width = into.width();
        self.out.clear();
        self.out.set_width(width);
        self.out.keep_requests(self.rules.is_some());
        Ok(())
    }

    /// Saves the engine's state (call [`finish`](Self::finish) first: buffered events are not
    /// part of a state).
    pub fn save_state(&self, w: &mut impl Write) -> crate::Result<()> {
        Ok(self.engine.save_state(w)?)
    }

    /// Restores the engine's state saved by [`save_state`](Self::save_state) (before any
    /// event is pushed).
    pub fn restore_state(&mut self, r: &mut impl Read) -> crate::Result<()> {
        Ok(self.engine.restore_state(r)?)
    }

    /// Saves one part's state (see [`FeatureEngine::save_part`]; call
    /// [`finish`](Self::finish) first).
    pub fn save_part(&self, part: usize, w: &mut impl Write) -> crate::Result<()> {
        Ok(self.engine.save_part(part, w)?)
    }

    /// Restores every part's state, file `i` into part `i` (see
    /// [`FeatureEngine::restore_parts`]; before any event is pushed).
    pub fn restore_parts(&mut self, readers: &mut [&mut dyn Read]) -> crate::Result<()> {
        Ok(self.engine.restore_parts(readers)?)
    }

    /// The engine, when the session is done.
    pub fn into_engine(self) -> FeatureEngine {
        self.engine
    }

    /// The model, when the session is done.
    pub fn into_scorer(self) -> Option<S> {
        self.scorer
    }
}

/// Runs the rules over a batch's records in order: their verdicts and the decision changes
/// go into the batch.
fn decide(decider: &mut Decider, out: &mut Output, scorer: Option<&Scorer>) {
    let Some(requests) = out.requests.take() else {
        return;
    };
    let mut verdicts = std::mem::take(&mut out.verdicts);
    let mut events = std::mem::take(&mut out.decisions);
    let mut records = std::mem::take(&mut out.decision_records);
    verdicts.clear();
    let k = scorer.map_or(0, |s| s.members.len());
    let mut headers = Vec::new();
    // The headers are handed over only when a condition reads them.
    let with_headers = decider.rules().reads_headers();
    for i in 0..out.len() {
        if with_headers {
            requests.headers(i, &mut headers);
        }
        let scores = out.scores();
        let score = scores.map(|s| ScoreView {
            overall: s.score[i],
            surprisal: s.surprisal[i],
            flagged: s.flagged[i],
            members: &s.member[i * k..(i + 1) * k],
            endpoint_auth: out.endpoint_auth.get(i).copied().unwrap_or(f64::NAN),
        });
        let input = Input {
            request: requests.view(out, i, &headers),
            features: out.features(i),
            score,
        };
        let reasons = || {
            scores.map_or_else(Vec::new, |s| {
                s.reasons[i].iter().map(|r| r.feature.clone()).collect()
            })
        };
        verdicts.push(decider.observe(&input, &reasons, &mut events));
        records.resize(events.len(), i as u32);
    }
    out.verdicts = verdicts;
    out.decisions = events;
    out.decision_records = records;
    out.requests = Some(requests);
}
