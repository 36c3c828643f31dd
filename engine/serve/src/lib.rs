//! The gatewatch stream scoring service, around one pipeline [`Session`]:
//!
//! - `POST /v1/events`: an NDJSON body of events; the answer is their score records (NDJSON,
//!   in event-time order), then a `{"rejected": …}` line per input line that was not an
//!   event. Each request's events are scored before the answer (the session's reorder
//!   buffer does not hold them), so a gateway plugin can call it inline; send a client's
//!   events in time order (an event older than one already scored is scored after it, or
//!   refused as late beyond `allowed_lateness_ms`).
//! - The endpoint monitor (the model's failure baselines, else a warm-up) watches the
//!   scored requests; `GET /v1/alerts` answers its most recent alerts (at most
//!   [`KEEP_ALERTS`] of each kind), client alerts first, as `gatewatch score --alerts`
//!   writes them.
//! - `GET /healthz` (the process answers), `GET /readyz` (state restored and model loaded),
//!   `GET /metrics` (Prometheus text format, [`Metrics`]).
//! - Snapshots: the session's state is written to the state file periodically and on
//!   shutdown (write to a temporary file, then rename: a crash never leaves half a file),
//!   and restored on start; a state file that cannot be restored is reported, set aside
//!   (renamed `*.corrupt`) and the service starts empty.
//! - Graceful shutdown on SIGTERM or SIGINT: requests in flight finish, the state is saved.
//! - Hot reload on SIGHUP: the model folder is loaded again and checked in full (every
//!   file, the feature set, the members); only then does it replace the running model. A
//!   model that fails is reported in the log and in `/metrics`
//!   (`gatewatch_model_reload_failures_total`) and scoring goes on with the last good one.
//!
//! - Mitigation rules (`ServeOptions::rules`): each score record carries the decision
//!   covering it; the enforced decisions are served to CrowdSec bouncers by the decisions
//!   API ([`decisions`]: `GET /v1/decisions`, `GET /v1/decisions/stream`, `X-Api-Key` one
//!   of the bouncer keys, 403 otherwise). Decisions are saved next to the state file
//!   (`STATE.decisions.json`) and restored with it; SIGHUP reloads the rules file too (a
//!   bad one is refused and counted, the last good rules keep deciding).
//!
//! Scoring runs on blocking threads (`spawn_blocking`), never on the async runtime's workers.

pub mod decisions;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod stream;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use gatewatch_features::Format;
use gatewatch_models::{Alert, ClientAlert, EndpointMonitor};
use gatewatch_pipeline::schema::{self, RejectionRecord};
use gatewatch_pipeline::{LineReader, Output, ScoreWriter, Session};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::signal::unix::{Signal, SignalKind, signal};

/// How the service runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The state file: restored on start, written every `snapshot_every` and on shutdown.
    pub state: Option<PathBuf>,
    /// Time between snapshots.
    pub snapshot_every: Duration,
    /// The model folder reloaded on SIGHUP (`None`: the built-in default, nothing to
    /// reload).
    pub model: Option<PathBuf>,
    /// The rules file reloaded on SIGHUP (`default`: the built-in rules; `None`: the
    /// session has no rules).
    pub rules: Option<PathBuf>,
    /// Keys bouncers send as `X-Api-Key` to read decisions (none: the decisions API refuses
    /// every request).
    pub bouncer_keys: Vec<String>,
    /// A stream input and its sinks (`None`: events come by `POST /v1/events`, or Kafka).
    pub stream: Option<stream::StreamOptions>,
    /// Kafka input and output topics.
    #[cfg(feature = "kafka")]
    pub kafka: Option<kafka::KafkaOptions>,
    /// Reload the model folder and the rules file when they change on disk (besides
    /// SIGHUP).
    pub watch: bool,
}

impl ServeOptions {
    /// The stream input in words, when the service has one.
    fn input(&self) -> Option<String> {
        #[cfg(feature = "kafka")]
        if let Some(k) = &self.kafka {
            return Some(k.describe());
        }
        self.stream.as_ref().map(|s| s.input.describe())
    }
}

/// The service's Prometheus metrics (one registry per service).
pub struct Metrics {
    registry: Registry,
    /// The families' names, as registered.
    names: Vec<&'static str>,
    /// Events received (lines of `POST /v1/events` bodies that are events).
    pub events: Counter,
    /// Score records answered.
    pub scored: Counter,
    /// Events flagged by the model.
    pub flagged: Counter,
    /// Inputs rejected, by reason.
    pub rejected: Family<Vec<(String, String)>, Counter>,
    /// Seconds to score one request's events.
    pub batch_seconds: Histogram,
    /// Scores answered.
    pub scores: Histogram,
    /// Clients with state.
    pub clients: Gauge,
    /// Clients evicted so far, by why (`idle` past the TTL, `capacity` at `max_clients`).
    pub evicted: Family<Vec<(String, String)>, Gauge>,
    /// The model scoring events (1) and the ones it replaced (0), by `name@version`.
    pub model: Family<Vec<(String, String)>, Gauge>,
    /// Models reloaded, and reloads refused.
    pub reloads: Counter,
    /// See `reloads`.
    pub reload_failures: Counter,
    /// Client alerts and endpoint alerts of the endpoint monitor.
    pub client_alerts: Counter,
    /// See `client_alerts`.
    pub endpoint_alerts: Counter,
    /// Snapshots written, and snapshots that failed.
    pub snapshots: Counter,
    /// See `snapshots`.
    pub snapshot_failures: Counter,
    /// Seconds since the last snapshot was written (−1 before the first).
    pub snapshot_age: Gauge,
    /// Decision changes, by change (`new`, `escalate`, `expire`) and mode.
    pub decisions: Family<Vec<(String, String)>, Counter>,
    /// Decisions served to bouncers now.
    pub decisions_served: Gauge,
    /// Decisions API requests, by outcome (`ok`, `forbidden`, `bad_request`).
    pub bouncer_requests: Family<Vec<(String, String)>, Counter>,
    /// Rules reloaded, and reloads refused.
    pub rules_reloads: Counter,
    /// See `rules_reloads`.
    pub rules_reload_failures: Counter,
    /// Bytes read from the stream input.
    pub input_bytes: Counter,
    /// Times the followed input file was rotated or truncated.
    pub input_rotations: Counter,
    /// Failed writes to a sink, by sink (each retried; the input waits meanwhile).
    pub sink_failures: Family<Vec<(String, String)>, Counter>,
    /// Kafka messages read (skipped ones not counted).
    pub kafka_messages: Counter,
    /// Kafka messages already covered by the restored state, skipped.
    pub kafka_skipped: Counter,
    /// Events of Kafka messages read again after a crash (their records are written
    /// again).
    pub kafka_redelivered: Counter,
    /// Poison messages copied to the dead-letter topic.
    pub kafka_dead_letters: Counter,
    /// Errors the Kafka consumer reported.
    pub kafka_errors: Counter,
    /// Partition assignments and revocations.
    pub kafka_rebalances: Counter,
    /// Partitions assigned to this instance.
    pub kafka_partitions: Gauge,
    /// Consumer lag per partition (messages behind the high watermark).
    pub kafka_lag: Family<Vec<(String, String)>, Gauge>,
    /// Population shares sent to the other instances.
    pub population_shares_sent: Counter,
    /// Population shares of the other instances taken in.
    pub population_shares_received: Counter,
    /// Population shares refused (damaged, or from an instance of another configuration).
    pub population_shares_refused: Counter,
    /// Events waiting for the other instances' population statistics.
    pub population_waiting: Gauge,
}

impl Metrics {
    fn new(model: &str) -> Self {
        let mut m = Self {
            registry: Registry::default(),
            names: Vec::new(),
            events: Counter::default(),
            scored: Counter::default(),
            flagged: Counter::default(),
            rejected: Family::default(),
            batch_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            scores: Histogram::new([0.5, 0.9, 0.99, 0.999, 0.9999, 0.99999, 1.0]),
            clients: Gauge::default(),
            evicted: Family::default(),
            model: Family::default(),
            reloads: Counter::default(),
            reload_failures: Counter::default(),
            client_alerts: Counter::default(),
            endpoint_alerts: Counter::default(),
            snapshots: Counter::default(),
            snapshot_failures: Counter::default(),
            snapshot_age: Gauge::default(),
            decisions: Family::default(),
            decisions_served: Gauge::default(),
            bouncer_requests: Family::default(),
            rules_reloads: Counter::default(),
            rules_reload_failures: Counter::default(),
            input_bytes: Counter::default(),
            input_rotations: Counter::default(),
            sink_failures: Family::default(),
            kafka_messages: Counter::default(),
            kafka_skipped: Counter::default(),
            kafka_redelivered: Counter::default(),
            kafka_dead_letters: Counter::default(),
            kafka_errors: Counter::default(),
            kafka_rebalances: Counter::default(),
            kafka_partitions: Gauge::default(),
            kafka_lag: Family::default(),
            population_shares_sent: Counter::default(),
            population_shares_received: Counter::default(),
            population_shares_refused: Counter::default(),
            population_waiting: Gauge::default(),
        };
        // Each metric under its name and help text (the registry holds clones sharing the
        // values).
        macro_rules! register {
            ($($name:literal, $help:literal => $metric:ident;)*) => {
                $(
                    m.registry.register($name, $help, m.$metric.clone());
                    m.names.push($name);
                )*
            };
        }
        register! {
            "gatewatch_events", "Events received" => events;
            "gatewatch_events_scored", "Score records answered" => scored;
            "gatewatch_events_flagged", "Events flagged by the model" => flagged;
            "gatewatch_inputs_rejected", "Inputs that were not events, or came too late, by reason" => rejected;
            "gatewatch_batch_seconds", "Seconds to score one request's events" => batch_seconds;
            "gatewatch_score", "Scores answered" => scores;
            "gatewatch_clients_tracked", "Clients with state" => clients;
            "gatewatch_clients_evicted", "Clients evicted so far, by why (idle, capacity)" => evicted;
            "gatewatch_snapshots", "State snapshots written" => snapshots;
            "gatewatch_snapshot_failures", "State snapshots that could not be written" => snapshot_failures;
            "gatewatch_snapshot_age_seconds", "Seconds since the last snapshot (-1 before the first)" => snapshot_age;
            "gatewatch_model", "The model scoring events (1) and the models it replaced (0)" => model;
            "gatewatch_model_reloads", "Models reloaded" => reloads;
            "gatewatch_model_reload_failures", "Model reloads refused (scoring went on with the last good model)" => reload_failures;
            "gatewatch_client_alerts", "Clients named by the endpoint monitor (failures in an alerting bucket)" => client_alerts;
            "gatewatch_endpoint_alerts", "Endpoint buckets the endpoint monitor found unusual" => endpoint_alerts;
            "gatewatch_decisions", "Decision changes of the rules, by change and mode" => decisions;
            "gatewatch_decisions_served", "Enforced decisions served to bouncers" => decisions_served;
            "gatewatch_bouncer_requests", "Decisions API requests, by outcome" => bouncer_requests;
            "gatewatch_rules_reloads", "Rules files reloaded" => rules_reloads;
            "gatewatch_rules_reload_failures", "Rules reloads refused (the last good rules kept deciding)" => rules_reload_failures;
            "gatewatch_input_bytes", "Bytes read from the stream input" => input_bytes;
            "gatewatch_input_rotations", "Times the followed input file was rotated or truncated" => input_rotations;
            "gatewatch_sink_failures", "Failed writes to a sink, by sink (retried; the input waits)" => sink_failures;
            "gatewatch_kafka_messages", "Kafka messages read" => kafka_messages;
            "gatewatch_kafka_skipped", "Kafka messages already in the restored state, skipped" => kafka_skipped;
            "gatewatch_kafka_redelivered", "Events of Kafka messages read again after a crash (their records written again)" => kafka_redelivered;
            "gatewatch_kafka_dead_letters", "Poison messages copied to the dead-letter topic" => kafka_dead_letters;
            "gatewatch_kafka_errors", "Errors the Kafka consumer reported" => kafka_errors;
            "gatewatch_kafka_rebalances", "Partition assignments and revocations" => kafka_rebalances;
            "gatewatch_kafka_partitions", "Partitions assigned to this instance" => kafka_partitions;
            "gatewatch_kafka_lag", "Consumer lag per partition (messages behind the high watermark)" => kafka_lag;
            "gatewatch_population_shares_sent", "Population shares sent to the other instances" => population_shares_sent;
            "gatewatch_population_shares_received", "Population shares of the other instances taken in" => population_shares_received;
            "gatewatch_population_shares_refused", "Population shares refused (damaged, or of another configuration)" => population_shares_refused;
            "gatewatch_population_waiting", "Events waiting for the other instances' population statistics" => population_waiting;
        }
        m.model.get_or_create(&model_label(model)).set(1);
        m.snapshot_age.set(-1);
        m
    }

    /// The families' names (a counter's samples add `_total`, a histogram's `_bucket`,
    /// `_sum` and `_count`).
    pub fn names(&self) -> &[&'static str] {
        &self.names
    }

    /// The metrics in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

fn model_label(model: &str) -> Vec<(String, String)> {
    vec![("model".to_string(), model.to_string())]
}

/// Recent alerts the service keeps for `/v1/alerts`, per kind.
pub const KEEP_ALERTS: usize = 10_000;

/// The endpoint monitor's most recent alerts (the monitor runs in the session).
struct Watch {
    clients: VecDeque<ClientAlert>,
    endpoints: VecDeque<Alert>,
}

impl Watch {
    fn keep<T>(q: &mut VecDeque<T>, items: Vec<T>) {
        q.extend(items);
        while q.len() > KEEP_ALERTS {
            q.pop_front();
        }
    }
}

/// The running service's shared state.
pub struct Service {
    /// The session and the writer of its model's records.
    session: Mutex<(Session, ScoreWriter)>,
    watch: Mutex<Watch>,
    /// Its metrics.
    pub metrics: Metrics,
    ready: AtomicBool,
    opts: ServeOptions,
    last_snapshot: Mutex<Option<Instant>>,
    model: Mutex<String>,
    feed: Mutex<decisions::Feed>,
    /// The stream input in words, when there is one.
    stream_input: Option<String>,
    tally: Mutex<Tally>,
}

/// What the service has done that its metrics cannot answer back (families are not
/// iterable), for its closing summary.
#[derive(Debug, Default)]
struct Tally {
    rejected: std::collections::BTreeMap<String, u64>,
    decisions: std::collections::BTreeMap<&'static str, u64>,
}

/// Where the decisions are saved next to a state file.
pub fn decisions_path(state: &Path) -> PathBuf {
    PathBuf::from(format!("{}.decisions.json", state.display()))
}

impl Service {
    /// A service around a session (its engine and model set up). It is not ready until
    /// [`restore`](Self::restore) has run ([`serve`] runs it once it listens).
    pub fn new(mut session: Session, opts: ServeOptions) -> Result<Arc<Self>> {
        let scorer = session
            .scorer()
            .context("the service needs a model to score with")?;
        let writer = ScoreWriter::new(scorer);
        let monitor = scorer.endpoint_monitor().context("the endpoint monitor")?;
        let model = session.model_id().unwrap_or_default();
        session.set_monitor(Some(monitor));
        Ok(Arc::new(Self {
            session: Mutex::new((session, writer)),
            watch: Mutex::new(Watch {
                clients: VecDeque::new(),
                endpoints: VecDeque::new(),
            }),
            metrics: Metrics::new(&model),
            ready: AtomicBool::new(false),
            last_snapshot: Mutex::new(None),
            model: Mutex::new(model),
            feed: Mutex::new(decisions::Feed::default()),
            stream_input: opts.input(),
            tally: Mutex::default(),
            opts,
        }))
    }

    /// Restores the state file and its decisions when there are some, then the service is
    /// ready. A state that cannot be restored is set aside and reported in the returned
    /// message; the service then starts empty.
    pub fn restore(&self) -> Result<Option<String>> {
        let mut note = None;
        if let Some(path) = &self.opts.state {
            let mut guard = self.session();
            let session = &mut guard.0;
            if path.exists() {
                note = Some(restore(session, path)?);
            }
            let dpath = decisions_path(path);
            if dpath.exists()
                && let Some(d) = session.decider_mut()
            {
                let said = restore_decisions(d, &dpath)?;
                let mut feed = lock(&self.feed);
                feed.restore(d.active(), d.now_ms());
                self.metrics.decisions_served.set(feed.len() as i64);
                note = Some(match note {
                    Some(n) => format!("{n}; {said}"),
                    None => said,
                });
            }
        }
        self.ready.store(true, Ordering::Release);
        Ok(note)
    }

    /// What the service has done so far, in one line: events scored and flagged, inputs
    /// rejected by reason, decision changes.
    pub fn summary(&self) -> String {
        let t = lock(&self.tally);
        let mut s = format!(
            "{} events scored, {} flagged",
            self.metrics.scored.get(),
            self.metrics.flagged.get()
        );
        let rejected: u64 = t.rejected.values().sum();
        s.push_str(&format!(", {rejected} inputs rejected"));
        if rejected > 0 {
            let by: Vec<String> = t.rejected.iter().map(|(k, v)| format!("{k} {v}")).collect();
            s.push_str(&format!(" ({})", by.join(", ")));
        }
        if !t.decisions.is_empty() {
            let by: Vec<String> = t
                .decisions
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect();
            s.push_str(&format!("; decision changes: {}", by.join(", ")));
        }
        s
    }

    /// The stream input in words, when the service has one.
    pub fn input(&self) -> Option<String> {
        self.stream_input.clone()
    }

    /// The running model's `name@version`.
    pub fn model(&self) -> String {
        lock(&self.model).clone()
    }

    /// Loads the rules file again and, once it has compiled against the running model's
    /// names, decides with it (decisions of rules that are gone end now); a file that fails
    /// leaves the running rules in place.
    pub fn reload_rules(&self) -> Result<usize> {
        let Some(path) = &self.opts.rules else {
            anyhow::bail!("the service has no rules");
        };
        let mut guard = self.session();
        let session = &mut guard.0;
        let loaded = gatewatch_pipeline::rules::Rules::load_named(path, &session.rules_schema())
            .with_context(|| format!("rules {}", path.display()));
        let rules = match loaded {
            Ok(r) => r,
            Err(e) => {
                self.metrics.rules_reload_failures.inc();
                tracing::error!(target: "gatewatch::serve", error = %format!("{e:#}"), "rules reload refused; the last good rules keep deciding");
                return Err(e);
            }
        };
        let n = rules.len();
        let mut changes = Vec::new();
        if let Some(d) = session.decider_mut() {
            d.set_rules(Arc::new(rules), &mut changes);
            let now = d.now_ms();
            lock(&self.feed).apply(&changes, now);
        }
        self.count_decisions(&changes);
        self.metrics.rules_reloads.inc();
        tracing::info!(target: "gatewatch::serve", rules = n, "rules reloaded");
        Ok(n)
    }

    fn count_decisions(&self, changes: &[gatewatch_pipeline::rules::DecisionEvent]) {
        for c in changes {
            self.metrics
                .decisions
                .get_or_create(&vec![
                    ("change".to_string(), c.change.as_str().to_string()),
                    ("mode".to_string(), c.decision.mode.as_str().to_string()),
                ])
                .inc();
        }
        self.metrics
            .decisions_served
            .set(lock(&self.feed).len() as i64);
    }

    /// The decisions API's answer to `GET path?query` with bouncer key `key`: (status,
    /// JSON body).
    pub fn decisions_api(&self, stream: bool, query: &str, key: Option<&str>) -> (u16, String) {
        let outcome = |o: &str| vec![("outcome".to_string(), o.to_string())];
        let allowed = key.is_some_and(|k| {
            // Every key compared in full, whatever matches: the time says nothing of them.
            self.opts
                .bouncer_keys
                .iter()
                .fold(false, |ok, b| ok | same_bytes(b.as_bytes(), k.as_bytes()))
        });
        if !allowed {
            self.metrics
                .bouncer_requests
                .get_or_create(&outcome("forbidden"))
                .inc();
            return (403, r#"{"message":"access forbidden"}"#.to_string());
        }
        let filter = match decisions::Filter::parse(query) {
            Ok(f) => f,
            Err(e) => {
                self.metrics
                    .bouncer_requests
                    .get_or_create(&outcome("bad_request"))
                    .inc();
                return (400, serde_json::json!({ "message": e }).to_string());
            }
        };
        self.metrics
            .bouncer_requests
            .get_or_create(&outcome("ok"))
            .inc();
        let mut feed = lock(&self.feed);
        let body = if stream {
            let pairs: Vec<(&str, &str)> =
                query.split('&').filter_map(|p| p.split_once('=')).collect();
            let startup = pairs.iter().any(|(k, v)| *k == "startup" && *v == "true");
            let scopes: Option<Vec<String>> =
                pairs.iter().find(|(k, _)| *k == "scopes").map(|(_, v)| {
                    v.replace("%2C", ",")
                        .replace("%2c", ",")
                        .split(',')
                        .map(String::from)
                        .collect()
                });
            feed.stream(key.unwrap_or(""), startup, scopes.as_deref())
        } else {
            feed.list(&filter)
        };
        (200, body)
    }

    /// Loads the model folder again and, once it has loaded and been checked in full,
    /// scores with it; a model that fails leaves the running one in place. Returns the new
    /// model's `name@version`.
    pub fn reload(&self) -> Result<String> {
        let Some(dir) = &self.opts.model else {
            anyhow::bail!("the built-in model has nothing to reload");
        };
        let registry = self.session().0.registry().clone();
        let loaded = gatewatch_models::Scorer::load(dir, &registry)
            .with_context(|| format!("model {}", dir.display()));
        let scorer = match loaded {
            Ok(s) => s,
            Err(e) => {
                self.metrics.reload_failures.inc();
                tracing::error!(target: "gatewatch::serve", error = %format!("{e:#}"), "model reload refused; scoring goes on with the last good model");
                return Err(e);
            }
        };
        // Rules read the detectors by name: they are compiled again for the new model, and
        // a model they do not fit is refused like a broken one.
        let rules = match &self.opts.rules {
            Some(path) => {
                let schema = gatewatch_pipeline::rules_schema(&registry, Some(&scorer));
                match gatewatch_pipeline::rules::Rules::load_named(path, &schema) {
                    Ok(r) => Some(r),
                    Err(e) => {
                        self.metrics.reload_failures.inc();
                        let e = anyhow::anyhow!("{e}").context(format!(
                            "model {}: the rules {} do not fit it",
                            dir.display(),
                            path.display()
                        ));
                        tracing::error!(target: "gatewatch::serve", error = %format!("{e:#}"), "model reload refused; scoring goes on with the last good model");
                        return Err(e);
                    }
                }
            }
            None => None,
        };
        let id = scorer.id();
        let writer = ScoreWriter::new(&scorer);
        let mut changes = Vec::new();
        {
            let mut guard = self.session();
            guard.0.set_scorer(scorer);
            guard.1 = writer;
            if let (Some(r), Some(d)) = (rules, guard.0.decider_mut()) {
                d.set_rules(Arc::new(r), &mut changes);
                let now = d.now_ms();
                lock(&self.feed).apply(&changes, now);
            }
        }
        self.count_decisions(&changes);
        let old = std::mem::replace(&mut *lock(&self.model), id.clone());
        self.metrics.model.get_or_create(&model_label(&old)).set(0);
        self.metrics.model.get_or_create(&model_label(&id)).set(1);
        self.metrics.reloads.inc();
        tracing::info!(target: "gatewatch::serve", model = %id, "model reloaded");
        Ok(id)
    }

    /// Whether the state is restored and the model loaded.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn session(&self) -> std::sync::MutexGuard<'_, (Session, ScoreWriter)> {
        // A panic while holding the lock leaves a session whose state is still consistent
        // between events: keep serving.
        lock(&self.session)
    }

    /// Scores an NDJSON body: the score records, then a line per rejected input.
    pub fn score_body(&self, body: &[u8]) -> Result<String> {
        let started = Instant::now();
        let mut guard = self.session();
        let session = &mut guard.0;
        let mut lines = LineReader::new(Format::Ndjson);
        lines.feed(session, body);
        let format = lines.format().clone();
        lines.split_end(&mut |n, line| {
            gatewatch_pipeline::push_line(session, &format, n, line);
        });
        let mut batch = Output::default();
        let mut out = String::new();
        self.take(&mut guard, true, &mut batch, Some(&mut out))?;
        drop(guard);
        for r in batch.rejections() {
            let line = serde_json::json!({ "rejected": RejectionRecord::from(r) });
            out.push_str(&line.to_string());
            out.push('\n');
        }
        self.metrics
            .batch_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(out)
    }

    /// Takes the session's output into `batch` (every event buffered for reordering first,
    /// with `finish`; an empty batch when there is nothing), appends its score records to
    /// `text` when given, and accounts for it: metrics, recent alerts, decisions feed — all
    /// under the caller's lock of the session, so they see the batches in event-time order.
    /// Every input (HTTP, stream, Kafka) takes its batches here. Returns whether there was
    /// anything to take.
    fn take(
        &self,
        (session, writer): &mut (Session, ScoreWriter),
        finish: bool,
        batch: &mut Output,
        text: Option<&mut String>,
    ) -> Result<bool> {
        if finish {
            session.finish();
        }
        if !session.has_output() {
            batch.clear();
            return Ok(false);
        }
        session.take_into(batch).context("scoring")?;
        if let Some(t) = text {
            writer.write_batch(batch, t);
        }
        self.account(session, batch);
        Ok(true)
    }

    /// A scored batch taken from the session goes into the metrics, the recent alerts and
    /// the decisions feed.
    fn account(&self, session: &mut Session, batch: &Output) {
        self.metrics.clients.set(session.engine().clients() as i64);
        let ev = session.engine().evictions();
        for (why, n) in [("idle", ev.idle), ("capacity", ev.capacity)] {
            self.metrics
                .evicted
                .get_or_create(&vec![("reason".to_string(), why.to_string())])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        self.watch(session, batch);
        if let Some(d) = session.decider() {
            lock(&self.feed).apply(batch.decisions(), d.now_ms());
        }
        self.count_decisions(batch.decisions());
        self.metrics.events.inc_by(batch.len() as u64);
        self.metrics.scored.inc_by(batch.len() as u64);
        let mut t = lock(&self.tally);
        if let Some(s) = batch.scores() {
            for (score, flagged) in s.score.iter().zip(&s.flagged) {
                self.metrics.scores.observe(*score);
                if *flagged {
                    self.metrics.flagged.inc();
                }
            }
        }
        for r in batch.rejections() {
            let category = r.category();
            self.metrics
                .rejected
                .get_or_create(&vec![("reason".to_string(), category.clone())])
                .inc();
            *t.rejected.entry(category).or_default() += 1;
        }
        for c in batch.decisions() {
            *t.decisions.entry(c.change.as_str()).or_default() += 1;
        }
    }

    /// The endpoint monitor's alerts of a scored batch join the recent ones.
    fn watch(&self, session: &mut Session, batch: &Output) {
        let mut w = lock(&self.watch);
        let c = batch.client_alerts().to_vec();
        let e = session
            .monitor_mut()
            .map(EndpointMonitor::take_alerts)
            .unwrap_or_default();
        self.metrics.client_alerts.inc_by(c.len() as u64);
        self.metrics.endpoint_alerts.inc_by(e.len() as u64);
        Watch::keep(&mut w.clients, c);
        Watch::keep(&mut w.endpoints, e);
    }

    /// The recent alerts as NDJSON: client alerts, then endpoint alerts, oldest first.
    pub fn alerts(&self) -> String {
        let w = lock(&self.watch);
        schema::alerts_ndjson(&w.clients, &w.endpoints)
    }

    /// Writes the state file (temporary file, then rename), every event buffered for
    /// reordering processed first. Nothing to do without one.
    pub fn snapshot(&self) -> Result<()> {
        self.snapshot_state(true)
    }

    /// [`snapshot`](Self::snapshot); without `finish`, the events buffered for reordering
    /// stay buffered and are not part of the state (a source that can read them again, from
    /// offsets the state covers, keeps the run exact).
    pub fn snapshot_state(&self, finish: bool) -> Result<()> {
        let Some(path) = &self.opts.state else {
            return Ok(());
        };
        let result = {
            let mut guard = self.session();
            if finish {
                guard.0.finish();
            }
            write_atomic(path, |w| Ok(guard.0.save_state(w)?)).and_then(|()| {
                match guard.0.decider() {
                    Some(d) => write_atomic(&decisions_path(path), |w| {
                        serde_json::to_writer(w, &d.save()).context("the decisions")
                    }),
                    None => Ok(()),
                }
            })
        };
        match &result {
            Ok(()) => {
                self.metrics.snapshots.inc();
                *lock(&self.last_snapshot) = Some(Instant::now());
            }
            Err(e) => {
                self.metrics.snapshot_failures.inc();
                tracing::error!(target: "gatewatch::serve", path = %path.display(), error = %e, "snapshot failed");
            }
        }
        result
    }

    fn render_metrics(&self) -> String {
        if let Some(t) = *lock(&self.last_snapshot) {
            self.metrics.snapshot_age.set(t.elapsed().as_secs() as i64);
        }
        self.metrics.render()
    }
}

/// Rejections a stream input logs one by one before the log only counts them.
const LOGGED_REJECTIONS: u64 = 100;

/// Logs a batch's rejections (where and why), the first [`LOGGED_REJECTIONS`] of a stream
/// one by one; `seen` counts them across batches. All are counted in the metrics.
fn log_rejections(batch: &Output, seen: &mut u64) {
    for r in batch.rejections() {
        *seen += 1;
        if *seen <= LOGGED_REJECTIONS {
            let rec = RejectionRecord::from(r);
            tracing::warn!(target: "gatewatch::serve", position = %rec.position, category = %rec.category, reason = %rec.reason, "input rejected");
        } else if *seen == LOGGED_REJECTIONS + 1 {
            tracing::warn!(target: "gatewatch::serve", "more inputs rejected: counted in gatewatch_inputs_rejected_total, no longer logged one by one");
        }
    }
}

/// Whether `a` and `b` are equal, in a time that depends on their lengths only.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// A lock, also after a panic elsewhere while it was held.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Restores a state file into a fresh session; one that cannot be restored is renamed
/// `*.corrupt` and the session stays empty. Returns what happened, in words.
fn restore(session: &mut Session, path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    match session.restore_state(&mut bytes.as_slice()) {
        Ok(()) => Ok(format!(
            "restored {} ({} clients)",
            path.display(),
            session.engine().clients()
        )),
        Err(e) => {
            let aside = path.with_extension("corrupt");
            std::fs::rename(path, &aside)
                .with_context(|| format!("cannot move {} aside", path.display()))?;
            Ok(format!(
                "could not restore {} ({e}); moved it to {} and started empty",
                path.display(),
                aside.display()
            ))
        }
    }
}

/// Restores saved decisions into the session's decider; a file that cannot be restored is
/// renamed `*.corrupt` and the decisions start empty.
fn restore_decisions(d: &mut gatewatch_pipeline::rules::Decider, path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let restored = serde_json::from_slice::<gatewatch_pipeline::rules::SavedState>(&bytes)
        .map_err(|e| e.to_string())
        .and_then(|s| d.restore(s));
    match restored {
        Ok(dropped) => Ok(format!(
            "restored {} decisions from {}{}",
            d.active().count(),
            path.display(),
            if dropped > 0 {
                format!(" ({dropped} of rules no longer in the file dropped)")
            } else {
                String::new()
            }
        )),
        Err(e) => {
            let aside = path.with_extension("corrupt");
            std::fs::rename(path, &aside)
                .with_context(|| format!("cannot move {} aside", path.display()))?;
            Ok(format!(
                "could not restore the decisions in {} ({e}); moved it to {}",
                path.display(),
                aside.display()
            ))
        }
    }
}

/// Writes a file through a temporary sibling and a rename.
fn write_atomic(path: &Path, write: impl FnOnce(&mut Vec<u8>) -> Result<()>) -> Result<()> {
    let mut buf = Vec::new();
    write(&mut buf)?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, &buf).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot rename to {}", path.display()))
}

/// The HTTP routes.
pub fn router(service: Arc<Service>) -> Router {
    Router::new()
        // These need the restored state.
        .route("/v1/events", post(events))
        .route("/v1/decisions", get(decisions_list))
        .route("/v1/decisions/stream", get(decisions_stream))
        .route_layer(axum::middleware::from_fn_with_state(
            service.clone(),
            when_ready,
        ))
        .route("/v1/alerts", get(alerts))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(service)
}

/// Requests that need the restored state get 503 until it is.
async fn when_ready(
    State(s): State<Arc<Service>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if !s.is_ready() {
        // The body is read first (up to axum's 2 MB default limit, as the handlers read
        // it): a client still sending it gets the answer, not a reset connection.
        let _ = axum::body::to_bytes(request.into_body(), 2 << 20).await;
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "1")],
            "restoring the state; not ready yet\n",
        )
            .into_response();
    }
    next.run(request).await
}

async fn events(State(s): State<Arc<Service>>, body: Bytes) -> Response {
    if let Some(name) = &s.stream_input {
        return (
            StatusCode::CONFLICT,
            format!("the service reads its events from {name}; POST /v1/events is open when it has no other input\n"),
        )
            .into_response();
    }
    let result = tokio::task::spawn_blocking(move || s.score_body(&body)).await;
    match result {
        Ok(Ok(out)) => ([(header::CONTENT_TYPE, "application/x-ndjson")], out).into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}\n")).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")).into_response(),
    }
}

async fn decisions_list(
    State(s): State<Arc<Service>>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
) -> Response {
    decisions_answer(&s, false, &uri, &headers)
}

async fn decisions_stream(
    State(s): State<Arc<Service>>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
) -> Response {
    decisions_answer(&s, true, &uri, &headers)
}

fn decisions_answer(
    s: &Service,
    stream: bool,
    uri: &axum::http::Uri,
    headers: &axum::http::HeaderMap,
) -> Response {
    let key = headers.get("x-api-key").and_then(|v| v.to_str().ok());
    let (status, body) = s.decisions_api(stream, uri.query().unwrap_or(""), key);
    (
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

async fn alerts(State(s): State<Arc<Service>>) -> Response {
    ([(header::CONTENT_TYPE, "application/x-ndjson")], s.alerts()).into_response()
}

async fn readyz(State(s): State<Arc<Service>>) -> Response {
    if s.is_ready() {
        "ready\n".into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn metrics(State(s): State<Arc<Service>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.render_metrics(),
    )
        .into_response()
}

/// How often the model folder and the rules file are looked at for changes.
pub const WATCH_EVERY: Duration = Duration::from_secs(2);

/// The newest modification time under `path` (a file, or a folder's files and those of
/// its folders, three levels down), if any.
fn modified(path: &Path) -> Option<std::time::SystemTime> {
    fn newest(path: &Path, depth: u32) -> Option<std::time::SystemTime> {
        let m = std::fs::metadata(path).ok()?;
        if !m.is_dir() {
            return m.modified().ok();
        }
        let own = m.modified().ok();
        if depth == 0 {
            return own;
        }
        std::fs::read_dir(path)
            .ok()?
            .flatten()
            .filter_map(|e| newest(&e.path(), depth - 1))
            .chain(own)
            .max()
    }
    newest(path, 3)
}

/// The files reloaded when they change: the model folder and the rules file, with the
/// modification times they had when they were loaded.
struct Watched {
    model: Option<PathBuf>,
    rules: Option<PathBuf>,
    seen: (Option<std::time::SystemTime>, Option<std::time::SystemTime>),
}

impl Watched {
    fn new(service: &Service) -> Option<Self> {
        let model = service.opts.model.clone();
        let rules = service
            .opts
            .rules
            .clone()
            .filter(|p| p != Path::new("default"));
        if !service.opts.watch || (model.is_none() && rules.is_none()) {
            return None;
        }
        let mut w = Self {
            model,
            rules,
            seen: (None, None),
        };
        w.seen = w.look();
        Some(w)
    }

    fn look(&self) -> (Option<std::time::SystemTime>, Option<std::time::SystemTime>) {
        let at = |p: &Option<PathBuf>| p.as_deref().and_then(modified);
        (at(&self.model), at(&self.rules))
    }

    /// Reloads the model or the rules when their files change (as SIGHUP does).
    async fn run(mut self, service: Arc<Service>) {
        let mut tick = tokio::time::interval(WATCH_EVERY);
        tick.tick().await;
        loop {
            tick.tick().await;
            let (m, r) = self.look();
            if m != self.seen.0 {
                self.seen.0 = m;
                tracing::info!(target: "gatewatch::serve", "the model folder changed; reloading");
                let s = service.clone();
                let _ = tokio::task::spawn_blocking(move || s.reload()).await;
            }
            if r != self.seen.1 {
                self.seen.1 = r;
                tracing::info!(target: "gatewatch::serve", "the rules file changed; reloading");
                let s = service.clone();
                let _ = tokio::task::spawn_blocking(move || s.reload_rules()).await;
            }
        }
    }
}

/// The service's stream input, running.
enum Running {
    Lines(stream::Stream),
    #[cfg(feature = "kafka")]
    Kafka(kafka::KafkaStream),
}

impl Running {
    fn start(service: &Arc<Service>) -> Result<Option<Self>> {
        #[cfg(feature = "kafka")]
        if let Some(k) = service.opts.kafka.clone() {
            return Ok(Some(Self::Kafka(kafka::KafkaStream::start(
                service.clone(),
                k,
            )?)));
        }
        Ok(match service.opts.stream.clone() {
            Some(o) => Some(Self::Lines(stream::Stream::start(service.clone(), o)?)),
            None => None,
        })
    }

    fn done(&self) -> Arc<tokio::sync::Notify> {
        match self {
            Self::Lines(s) => s.done(),
            #[cfg(feature = "kafka")]
            Self::Kafka(k) => k.done(),
        }
    }

    fn stop(self) -> Result<()> {
        match self {
            Self::Lines(s) => s.stop(),
            #[cfg(feature = "kafka")]
            Self::Kafka(k) => k.stop(),
        }
    }
}

/// Resolves on SIGTERM or SIGINT (both handlers installed before the service listens).
async fn shutdown_signal(mut term: Signal, mut int: Signal) {
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}

/// Serves on `listener` until SIGTERM or SIGINT, snapshotting every `snapshot_every`, then
/// saves the state. `on_listen` is told the bound address first: from then on `/healthz`
/// answers, and `/readyz` answers 503 (and the other endpoints 503) until the state is
/// restored; `on_restored` is told how the restore went, then the stream input starts.
pub async fn serve(
    service: Arc<Service>,
    listener: tokio::net::TcpListener,
    on_listen: impl FnOnce(std::net::SocketAddr),
    on_restored: impl FnOnce(Option<String>),
) -> Result<()> {
    let handler = |kind| signal(kind).context("cannot install a signal handler");
    let (term, int, mut hangup) = (
        handler(SignalKind::terminate())?,
        handler(SignalKind::interrupt())?,
        handler(SignalKind::hangup())?,
    );
    // The model and rules files as they are before the service is ready: a change made
    // once it is ready is seen.
    let watched = Watched::new(&service);
    on_listen(listener.local_addr()?);
    // Requests in flight finish when the server is told to stop (graceful shutdown).
    let (stop_http, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let mut http = tokio::spawn(
        axum::serve(listener, router(service.clone()))
            .with_graceful_shutdown(async move {
                let _ = http_stopped.await;
            })
            .into_future(),
    );
    let restoring = service.clone();
    let note = tokio::task::spawn_blocking(move || restoring.restore())
        .await
        .context("the restore did not finish")??;
    on_restored(note);
    let stream = Running::start(&service)?;
    let every = service.opts.snapshot_every;
    // With a stream input its worker takes the snapshots (it knows what the sinks have).
    let periodic = (service.opts.state.is_some() && stream.is_none()).then(|| {
        let s = service.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let s = s.clone();
                let _ = tokio::task::spawn_blocking(move || s.snapshot()).await;
            }
        })
    });
    let hup = {
        let s = service.clone();
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                let s = s.clone();
                let r = s.clone();
                let _ = tokio::task::spawn_blocking(move || s.reload()).await;
                if r.opts.rules.is_some() {
                    let _ = tokio::task::spawn_blocking(move || r.reload_rules()).await;
                }
            }
        })
    };
    let watch = watched.map(|w| tokio::spawn(w.run(service.clone())));
    let done = stream.as_ref().map(Running::done);
    let stopped = async move {
        match done {
            Some(d) => tokio::select! {
                () = shutdown_signal(term, int) => {},
                () = d.notified() => {},
            },
            None => shutdown_signal(term, int).await,
        }
    };
    let served = tokio::select! {
        () = stopped => {
            let _ = stop_http.send(());
            (&mut http).await
        }
        r = &mut http => r,
    };
    served
        .context("the HTTP server stopped")?
        .context("the HTTP server failed")?;
    if let Some(p) = periodic {
        p.abort();
    }
    hup.abort();
    if let Some(w) = watch {
        w.abort();
    }
    match stream {
        Some(st) => {
            tokio::task::spawn_blocking(move || st.stop())
                .await
                .context("the stream did not stop")??;
        }
        None => {
            let s = service.clone();
            tokio::task::spawn_blocking(move || s.snapshot())
                .await
                .context("the final snapshot did not finish")??;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_the_grafana_dashboard_reads_is_one_the_service_exports() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/grafana-dashboard.json");
        let dash: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let mut read = std::collections::BTreeSet::new();
        for p in dash["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().unwrap() {
                let mut rest = t["expr"].as_str().unwrap();
                while let Some(at) = rest.find("gatewatch_") {
                    let name: String = rest[at..]
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    rest = &rest[at + name.len()..];
                    read.insert(name);
                }
            }
        }
        assert!(read.len() >= 15, "{read:?}");
        let m = Metrics::new("m@1");
        let exported: std::collections::BTreeSet<String> = m
            .names()
            .iter()
            .flat_map(|f| ["", "_total", "_bucket", "_sum", "_count"].map(|x| format!("{f}{x}")))
            .collect();
        for n in &read {
            assert!(
                exported.contains(n),
                "the dashboard reads {n}, which the service does not export"
            );
        }
        // And the dashboard shows most of what the service exports.
        let shown = m
            .names()
            .iter()
            .filter(|f| read.iter().any(|r| r.starts_with(*f)))
            .count();
        assert!(
            shown * 4 >= m.names().len() * 3,
            "{shown} of {}",
            m.names().len()
        );
    }
}
