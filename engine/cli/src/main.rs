//! `gatewatch`: the command-line interface.

/// Writes a line to standard error. A failed write (standard error closed or full) is
/// ignored: diagnostics never stop or abort a run.
macro_rules! say {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}

/// Writes text (no newline added) to standard error, ignoring a failed write like [`say!`].
macro_rules! say_raw {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stderr(), $($t)*);
    }};
}

mod features_cmd;
mod io;
mod model_cmd;
mod ordered;
mod output;
mod pipeline;
mod replay_cmd;
mod rules_cmd;
#[cfg(feature = "serve")]
mod serve_cmd;
mod simulate_cmd;
#[cfg(feature = "tables")]
mod table;
#[cfg(not(feature = "tables"))]
#[path = "table_stub.rs"]
mod table;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use gatewatch_event::FileFormat;

/// mimalloc: measured faster and leaner than the system allocator on the per-client state
/// (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// gatewatch finds abuse and anomalies in API traffic.
///
/// It reads an API gateway's request log (NDJSON events or combined access-log lines), keeps
/// sliding-window behaviour features for every client and writes them per request. Every
/// verb reads standard input when no input is given and writes standard output when no
/// output is given, so verbs chain: `gatewatch simulate | gatewatch features`.
#[derive(Parser)]
#[command(name = "gatewatch", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Log lines as text or as JSON objects (one per line; for log collectors). The level
    /// is set by `GATEWATCH_LOG` (`warn` by default; `info`, `gatewatch=debug`, …).
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "GATEWATCH_LOG_FORMAT"
    )]
    log_format: LogFormat,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Generate labelled API traffic (NDJSON events): normal users and abuse scenarios.
    ///
    /// Deterministic: the same seed and options give the same bytes. Every event carries an
    /// `id` and a `label` (`normal` or the scenario's name).
    Simulate(SimulateArgs),
    /// Compute point-in-time features for every request of a log.
    ///
    /// Writes one NDJSON record per input event (`id`, `label` when present, `ts`, `client`,
    /// `endpoint` and every feature by name), in event-time order. Malformed lines are
    /// counted and reported with their line number and reason; the run goes on. A summary
    /// goes to standard error.
    Features(FeaturesArgs),
    /// Fit baselines on a log's features and write a model folder.
    ///
    /// Every event's features are computed as `gatewatch features` does. The folder is an
    /// ensemble of two detectors (the highest score counts; each flags at its threshold):
    /// `robust`, a robust z-score baseline (per feature, the median and a robust scale,
    /// scores calibrated on the training events), and `volumetric`, per-endpoint peak rates
    /// per client with recommended rate limits (p50 / p90 / p99, confidence intervals,
    /// minimum-data gate). `--label normal` fits on the events labelled `normal` only.
    Train(TrainArgs),
    /// Score every request of a log with a model (the built-in default when none is named).
    ///
    /// Writes one NDJSON record per event: `id`, `label` (when present), `ts`, `client`,
    /// `endpoint`, `score` in [0, 1], `scores` per detector, `flagged`, `reasons` (feature,
    /// value, baseline, contribution) and `model`; a summary of the most flagged clients (and
    /// per label, when the events have labels) goes to standard error.
    Score(ScoreArgs),
    /// Back-test mitigation rules on a log: what each rule would have decided, and whom
    /// it would have stopped.
    ///
    /// Scores every event as `gatewatch score` does, applies the rules in event time and
    /// prints per rule the requests matched, decisions, distinct keys and — when the log has
    /// labels — precision (the share of its decisions caused by requests not labelled
    /// `normal`), per label the share of requests that would have been blocked, challenged,
    /// rate-limited or logged, the normal requests blocked or challenged, and each rule's
    /// share of each label's requests.
    Backtest(BacktestArgs),
    /// Recommend per-endpoint rate limits from a log: per endpoint, the p50 / p90 / p99 of
    /// each client's peak requests per minute, with 95% intervals, the clients seen, a
    /// confidence and a recommended limit (the p99's upper bound).
    ///
    /// Endpoints with fewer than `--min-sessions` distinct clients get no limit of their own
    /// (following Cloudflare's volumetric abuse detection: no recommendation without enough
    /// sessions). `--rules-out FILE` writes the limits as rules (log mode by default): load
    /// them with `score --rules` or `backtest` to see whom they would catch, then move them
    /// to `rate_limit`.
    RecommendLimits(RecommendArgs),
    /// Run the stream scoring service: HTTP ingest, health, readiness, metrics, snapshots.
    ///
    /// `POST /v1/events` takes an NDJSON body of events and answers their score records
    /// (the records `gatewatch score` writes) and a `{"rejected": …}` line per input line
    /// that was not an event. `GET /healthz`, `GET /readyz` and `GET /metrics`
    /// (Prometheus). With `--state FILE` the engine's state is restored on start, written
    /// every `--snapshot-every` and on SIGTERM / SIGINT (graceful shutdown).
    #[cfg(feature = "serve")]
    Serve(Box<ServeArgs>),
    /// Send a log's events (`gatewatch simulate`'s, or a recorded log's) to a gateway as
    /// real HTTP requests, in real time or a multiple of it, and report what came back per
    /// label: answers, the share the gateway's gatewatch module stopped (blocked, rate-limited,
    /// challenged: answers with an `X-Gatewatch` header) and how soon each client was first
    /// stopped.
    ///
    /// Each request carries the event's method, host, path, query, headers and user agent,
    /// `X-Forwarded-For` with its client address (trust it from the replay's address only)
    /// and `X-Sim-Status` with its status (for a stand-in API, see integrations/nginx).
    Replay(ReplayArgs),
}

#[derive(clap::Args)]
struct ReplayArgs {
    /// The gateway: `http://HOST:PORT`.
    #[arg(long)]
    target: String,
    /// Events (NDJSON; standard input when absent or `-`).
    #[arg(long, short)]
    input: Option<PathBuf>,
    /// Multiple of real time (2: twice as fast).
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Requests per second at most.
    #[arg(long)]
    max_rate: Option<f64>,
    /// Stop after this much replay time (`30s`, `5m`).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<std::time::Duration>,
    /// Keep-alive connections (a client's requests always share one, in order).
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Write the per-label figures as JSON here.
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
}

/// A duration: `30s`, `5m`, `1h30m`, or a bare number of seconds.
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    match s.parse::<u64>() {
        Ok(secs) if secs > 0 => Ok(std::time::Duration::from_secs(secs)),
        _ => humantime::parse_duration(s)
            .map_err(|e| format!("{s:?}: {e}"))
            .and_then(|d| {
                if d.is_zero() {
                    Err("must be longer than 0 s".into())
                } else {
                    Ok(d)
                }
            }),
    }
}

#[cfg(feature = "serve")]
#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on (port 0: any free port, printed on start).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// Model folder (default: the configuration's `[model] path`, else the built-in model).
    #[arg(long, short)]
    model: Option<PathBuf>,
    /// Configuration file (TOML).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// State file: restored on start, written periodically and on shutdown.
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,
    /// Time between snapshots of the state (`30s`, `5m`; a bare number is seconds).
    #[arg(long, default_value = "60s", value_parser = serve_cmd::duration)]
    snapshot_every: std::time::Duration,
    /// Reasons per flagged record.
    #[arg(long, default_value_t = 3)]
    reasons: usize,
    /// Mitigation rules (TOML; `default` for the built-in rules; default: the
    /// configuration's `[rules] path`): records carry their decision, and the enforced
    /// decisions are served to CrowdSec bouncers at `GET /v1/decisions` and
    /// `GET /v1/decisions/stream`.
    #[arg(long)]
    rules: Option<PathBuf>,
    /// A key bouncers send as `X-Api-Key` to read the decisions (repeatable; also
    /// `[rules] bouncer_keys` and `GATEWATCH_BOUNCER_KEY`).
    #[arg(long = "bouncer-key", env = "GATEWATCH_BOUNCER_KEY")]
    bouncer_keys: Vec<String>,
    /// Read events from this file (`-`: standard input) instead of `POST /v1/events`; the
    /// service stops at its end, unless `--follow`.
    #[arg(long, short, value_name = "FILE")]
    input: Option<PathBuf>,
    /// Follow the input file like `tail -F`: lines appended are scored as they come, a
    /// rotated or truncated file is read again from its start, and with `--state` reading
    /// goes on after a restart where the last snapshot left it.
    #[arg(long, requires = "input")]
    follow: bool,
    /// The line format of the input (file, standard input or Kafka messages).
    #[arg(long, value_enum, default_value = "ndjson")]
    format: LineFormat,
    /// Write score records here (NDJSON, appended; `-`: standard output).
    #[arg(long, value_name = "FILE")]
    scores_out: Option<String>,
    /// Write decision changes here (NDJSON, appended; `-`: standard output).
    #[arg(long, value_name = "FILE")]
    decisions_out: Option<String>,
    /// Score the events held for reordering at least this often, and when the input has
    /// been quiet this long: with a live stream, no event waits longer (a later event older
    /// than them is scored after them, or refused as late beyond `allowed_lateness_ms`).
    #[arg(long, default_value = "250ms", value_parser = serve_cmd::duration)]
    flush_every: std::time::Duration,
    /// Reload the model and the rules on SIGHUP only, not also when their files change.
    #[arg(long)]
    no_watch: bool,
    /// Read the built-in simulator's traffic (every scenario; `--sim-*` options) instead of
    /// `POST /v1/events`, as fast as it is scored (or `--sim-realtime`); the service stops
    /// at its end. Records go to `--scores-out` / `--decisions-out`.
    #[arg(long, conflicts_with = "input")]
    simulate: bool,
    /// Simulator seed.
    #[arg(long, default_value_t = 1, requires = "simulate")]
    sim_seed: u64,
    /// Simulated time span (`90s`, `10m`).
    #[arg(long, default_value = "10m", requires = "simulate")]
    sim_duration: String,
    /// Simulated normal users.
    #[arg(long, default_value_t = 200, requires = "simulate")]
    sim_users: usize,
    /// Send the simulated events in real time (each when its time has come).
    #[arg(long, requires = "simulate")]
    sim_realtime: bool,
    /// Kafka brokers (`bootstrap.servers`) to read `--kafka-input` from.
    #[cfg(feature = "kafka")]
    #[arg(long, env = "GATEWATCH_KAFKA_BROKERS")]
    kafka_brokers: Option<String>,
    /// The Kafka topic of events (NDJSON: one event, or several lines of them, per
    /// message), read by the consumer group `--kafka-group`.
    #[cfg(feature = "kafka")]
    #[arg(long, value_name = "TOPIC", conflicts_with = "input")]
    kafka_input: Option<String>,
    /// The consumer group (default: `[kafka] group`, else `gatewatch`).
    #[cfg(feature = "kafka")]
    #[arg(long, value_name = "GROUP")]
    kafka_group: Option<String>,
    /// Write score records to this topic (key: the client).
    #[cfg(feature = "kafka")]
    #[arg(long, value_name = "TOPIC")]
    kafka_scores: Option<String>,
    /// Write decision changes to this topic (key: the decision's value).
    #[cfg(feature = "kafka")]
    #[arg(long, value_name = "TOPIC")]
    kafka_decisions: Option<String>,
    /// Copy messages that are not events to this topic, with the reason in a header.
    #[cfg(feature = "kafka")]
    #[arg(long, value_name = "TOPIC")]
    kafka_dead_letters: Option<String>,
    /// Share population statistics with the other instances on this topic (each instance
    /// reads its own `--kafka-partitions`; together they score like one instance).
    #[cfg(feature = "kafka")]
    #[arg(long, value_name = "TOPIC", requires = "kafka_partitions")]
    kafka_population: Option<String>,
    /// Read these partitions of the input topic (comma-separated), assigned to this
    /// instance rather than balanced by the consumer group.
    #[cfg(feature = "kafka")]
    #[arg(
        long,
        value_name = "LIST",
        value_delimiter = ',',
        env = "GATEWATCH_KAFKA_PARTITIONS"
    )]
    kafka_partitions: Option<Vec<i32>>,
    /// A librdkafka property for both clients (`consumer.NAME=…` or `producer.NAME=…` for
    /// one): `security.protocol=SASL_SSL`, `sasl.mechanism=SCRAM-SHA-512`,
    /// `sasl.username=…`, `ssl.ca.location=…`, `session.timeout.ms=…` (repeatable).
    #[cfg(feature = "kafka")]
    #[arg(long, value_name = "KEY=VALUE")]
    kafka_set: Vec<String>,
}

/// A line format of a stream input.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LineFormat {
    /// One JSON event per line.
    Ndjson,
    /// nginx / Apache combined access-log lines (`[input.combined]` of the configuration).
    Combined,
}

#[derive(clap::Args)]
struct TrainArgs {
    #[command(flatten)]
    input: InputArgs,
    /// Model folder to write.
    #[arg(long, short)]
    output: PathBuf,
    /// Fit only on events with this label.
    #[arg(long)]
    label: Option<String>,
    /// What the training traffic is, in words, kept in the manifest and shown by `score`
    /// (for example the site and the period).
    #[arg(long)]
    describe: Option<String>,
    /// Fit on at most this many events: beyond it, a uniform sample of this many (reservoir
    /// sampling with a fixed seed), so memory stays bounded (93 features × 8 bytes each).
    #[arg(long, default_value_t = 1_000_000)]
    max_train_events: usize,
    /// Model name.
    #[arg(long, default_value = "model")]
    name: String,
    /// How many of the largest feature z-scores make an event's raw score.
    #[arg(long, default_value_t = 3)]
    top_k: usize,
    /// Flag threshold on the robust baseline's calibrated score.
    #[arg(long, default_value_t = 0.999)]
    threshold: f64,
    /// The share of the training events presumed abnormal in unlabelled traffic (robots,
    /// attacks), in [0, 0.5): the robust baseline sets aside, per feature, that share of
    /// the training values on the side where abuse lies, and that share of the highest raw
    /// scores for its calibration.
    #[arg(long, default_value_t = 0.0)]
    contamination: f64,
    /// Fewest distinct clients an endpoint needs for its own rate limits (others are scored
    /// against all endpoints pooled).
    #[arg(long, default_value_t = 30)]
    min_sessions: usize,
    /// Flag threshold of the volumetric detector (0.5: twice the endpoint's p99 peak).
    #[arg(long, default_value_t = 0.5)]
    rate_threshold: f64,
    /// Detectors to fit, comma-separated: robust (z-scores with empirical tails),
    /// volumetric (per-endpoint rate limits), pca (reconstruction error), gmm (Gaussian
    /// mixture likelihood). The model folder holds one sub-folder per detector.
    #[arg(long, default_value = "robust,volumetric")]
    detectors: String,
    /// Endpoints listed in the rate-limit summary.
    #[arg(long, default_value_t = 10)]
    top: usize,
    /// Write every rejected line as NDJSON to this file.
    #[arg(long)]
    rejects: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ScoreArgs {
    #[command(flatten)]
    input: InputArgs,
    #[command(flatten)]
    output: OutputArgs,
    /// Model folder (default: `[model] path` of the configuration, else the built-in
    /// default model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Reasons per record.
    #[arg(long, default_value_t = 3)]
    reasons: usize,
    /// Clients listed in the summary.
    #[arg(long, default_value_t = 10)]
    top: usize,
    /// Write every rejected line as NDJSON to this file.
    #[arg(long)]
    rejects: Option<PathBuf>,
    /// Do not write records (summary only).
    #[arg(long)]
    no_output: bool,
    /// Events scored together (ONNX models run once per batch).
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Write the monitor's alerts as NDJSON to this file: client alerts (`"kind": "client"`,
    /// a client whose authentication failures, never followed by a success, fell in an
    /// endpoint's alerting buckets) as they are decided, then endpoint alerts (`"kind":
    /// "endpoint"`: request rate, share of clients failing authentication, errors per
    /// ten-second bucket, unusual against the model's baselines or their own history). The
    /// summary lists them either way.
    #[arg(long)]
    alerts: Option<PathBuf>,
    /// Mitigation rules (TOML; `default` for the built-in rules; default: the configuration's
    /// `[rules] path`): each record gets the `decision` covering it, and the summary a
    /// report per rule and label.
    #[arg(long)]
    rules: Option<PathBuf>,
    /// Write the decisions as NDJSON to this file (`"kind": "decision"`: started,
    /// escalated, ended).
    #[arg(long)]
    decisions: Option<PathBuf>,
}

#[derive(clap::Args)]
struct RecommendArgs {
    #[command(flatten)]
    input: InputArgs,
    /// Only events with this label (for example `normal` on a labelled log).
    #[arg(long)]
    label: Option<String>,
    /// Fewest distinct clients an endpoint needs for a recommendation of its own.
    #[arg(long, default_value_t = 30)]
    min_sessions: usize,
    /// Endpoints listed.
    #[arg(long, default_value_t = 20)]
    top: usize,
    /// Write the recommended limits as rules (TOML) to this file.
    #[arg(long)]
    rules_out: Option<PathBuf>,
    /// The action of the written rules (`log`, or `rate_limit` to enforce the limit).
    #[arg(long, default_value = "log")]
    action: String,
    /// Write every rejected line as NDJSON to this file.
    #[arg(long)]
    rejects: Option<PathBuf>,
}

#[derive(clap::Args)]
struct BacktestArgs {
    #[command(flatten)]
    input: InputArgs,
    /// The rules (TOML; `default` for the built-in rules).
    #[arg(long)]
    rules: PathBuf,
    /// Model folder (default: the configuration's `[model] path`, else the built-in model).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Write the decisions as NDJSON to this file.
    #[arg(long)]
    decisions: Option<PathBuf>,
    /// Clients listed in the summary.
    #[arg(long, default_value_t = 10)]
    top: usize,
}

#[derive(clap::Args)]
struct SimulateArgs {
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Simulated time span: 90s, 10m, 2h.
    #[arg(long, default_value = "10m")]
    duration: String,
    /// Number of normal users.
    #[arg(long, default_value_t = 200)]
    users: usize,
    /// Abuse scenarios, comma-separated, `all` or `none`.
    #[arg(long, default_value = "all")]
    scenarios: String,
    /// Start of simulated time (RFC 3339).
    #[arg(long)]
    start: Option<String>,
    /// Output file (standard output when absent or `-`): NDJSON, or a Parquet / CSV table
    /// by the extension (`.parquet`, `.pq`, `.csv`; CSV has `headers.NAME` columns).
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// List the scenarios and exit.
    #[arg(long)]
    list_scenarios: bool,
}

/// Where events come from, and how to read them.
#[derive(clap::Args)]
struct InputArgs {
    /// Input file (standard input when absent or `-`).
    #[arg(long, short)]
    input: Option<PathBuf>,
    /// Input format (default: from the input's extension, `.parquet` / `.pq` or `.csv`;
    /// otherwise NDJSON).
    #[arg(long, value_enum)]
    format: Option<FileFormat>,
    /// Read a table column as an event field: `--map time=ts,remote_addr=client_ip`
    /// (Parquet and CSV inputs; `headers.NAME` fields are header values).
    #[arg(long, value_name = "COLUMN=FIELD")]
    map: Vec<String>,
    /// Configuration file (TOML; see gatewatch.example.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Threads (default: the machine's cores). Clients are split into as many parts by
    /// Kafka's partitioner on the client key; from 2, input lines are parsed on the other
    /// threads while one runs the engine and writes. The records are the same, in the same
    /// order, for any number.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=256))]
    threads: Option<u16>,
}

impl InputArgs {
    /// Parser threads for line inputs: all but the engine's (none with one thread).
    fn parsers(&self) -> usize {
        self.threads().saturating_sub(1)
    }

    /// The threads to use.
    fn threads(&self) -> usize {
        self.threads.map_or_else(
            || std::thread::available_parallelism().map_or(1, usize::from),
            usize::from,
        )
    }
}

/// Where records go.
#[derive(clap::Args)]
struct OutputArgs {
    /// Output file (standard output when absent or `-`).
    #[arg(long, short)]
    output: Option<PathBuf>,
    /// Output format (default: from the output's extension, `.parquet` / `.pq` or `.csv`;
    /// otherwise NDJSON; `combined` is an input format only). Tables have one column per
    /// field and are written in batches.
    #[arg(long, value_enum)]
    output_format: Option<FileFormat>,
}

#[derive(clap::Args)]
struct FeaturesArgs {
    #[command(flatten)]
    input: InputArgs,
    #[command(flatten)]
    output: OutputArgs,
    /// Write every rejected line (line number, category, reason) as NDJSON to this file.
    #[arg(long)]
    rejects: Option<PathBuf>,
    /// Print the feature reference (Markdown) and exit.
    #[arg(long)]
    list: bool,
    /// Print the feature registry as JSON and exit.
    #[arg(long)]
    schema: bool,
    /// Do not write records (summary only).
    #[arg(long)]
    no_output: bool,
    /// Show a progress bar (default: only when standard error is a terminal and the output is not).
    #[arg(long)]
    progress: Option<bool>,
    /// Restore the engine's state (clients, population) from a snapshot before reading.
    #[arg(long, value_name = "FILE")]
    load_state: Option<PathBuf>,
    /// Save the engine's state to a snapshot after the input ends.
    #[arg(long, value_name = "FILE")]
    save_state: Option<PathBuf>,
    /// Only parse the input and count events (the parsing ceiling, for benchmarks).
    #[arg(long, hide = true)]
    parse_only: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("GATEWATCH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        );
    match cli.log_format {
        LogFormat::Json => logs.json().with_ansi(false).init(),
        LogFormat::Text => logs.init(),
    }
    let res = match cli.command {
        Command::Simulate(a) => simulate_cmd::run(a),
        Command::Features(a) => features_cmd::run(a),
        Command::Train(a) => model_cmd::train(a),
        Command::Score(a) => model_cmd::score(a),
        Command::RecommendLimits(a) => rules_cmd::recommend_limits(a),
        Command::Backtest(b) => model_cmd::score(ScoreArgs {
            input: b.input,
            output: OutputArgs {
                output: None,
                output_format: None,
            },
            model: b.model,
            reasons: 3,
            top: b.top,
            rejects: None,
            no_output: true,
            batch: 256,
            alerts: None,
            rules: Some(b.rules),
            decisions: b.decisions,
        }),
        #[cfg(feature = "serve")]
        Command::Serve(a) => serve_cmd::run(*a),
        Command::Replay(a) => replay_cmd::run(a),
    };
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The reader of the output went away (`gatewatch … | head`): stop quietly.
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) {
                return ExitCode::SUCCESS;
            }
            say!("gatewatch: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
