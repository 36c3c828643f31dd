//! `gatewatch._native`: the engine for Python, on polars DataFrames (through pyo3-polars,
//! which hands frames over with the Arrow C data interface, without copying the columns).
//! The Python package `gatewatch` wraps it with documented functions and classes.

use std::path::PathBuf;

use gatewatch_features::{Config, FeatureConfig, Registry};
use gatewatch_sim::{DEFAULT_START_MS, Scenario, SimConfig, parse_duration, simulate as sim};
use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::prelude::*;
use pyo3_polars::PyDataFrame;

/// mimalloc for the engine's allocations (per-client state, events, columns), as in the
/// `gatewatch` binary: measured faster than the system allocator (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn value_err(e: impl std::fmt::Display) -> PyErr {
    PyValueError::new_err(e.to_string())
}

pyo3::create_exception!(
    gatewatch,
    GatewatchError,
    PyValueError,
    "Base of gatewatch's errors (a ValueError)."
);
pyo3::create_exception!(
    gatewatch,
    ConfigError,
    GatewatchError,
    "A configuration file or value that gatewatch refuses, naming the key."
);
pyo3::create_exception!(
    gatewatch,
    DataError,
    GatewatchError,
    "Events, features or a frame that are not what gatewatch reads, naming the column and row."
);
pyo3::create_exception!(
    gatewatch,
    ModelError,
    GatewatchError,
    "A model folder that gatewatch refuses, naming the file and what is wrong."
);

fn config_err(e: impl std::fmt::Display) -> PyErr {
    ConfigError::new_err(e.to_string())
}

/// A frame error: a file that cannot be read is an OSError, the rest is about the data.
fn frame_err(e: gatewatch_frames::FrameError) -> PyErr {
    match e {
        gatewatch_frames::FrameError::File { .. } => PyOSError::new_err(e.to_string()),
        gatewatch_frames::FrameError::Engine(gatewatch_features::Error::Config(_)) => config_err(e),
        _ => DataError::new_err(e.to_string()),
    }
}

fn model_err(e: gatewatch_models::ModelError) -> PyErr {
    match &e {
        gatewatch_models::ModelError::Io { .. } => PyOSError::new_err(e.to_string()),
        _ => ModelError::new_err(e.to_string()),
    }
}

/// The configuration file's settings (OSError when it cannot be read, ValueError when it
/// is invalid), or the defaults.
fn load_config(path: Option<PathBuf>) -> PyResult<Config> {
    match path {
        None => Ok(Config::default()),
        Some(p) => {
            if let Err(e) = std::fs::metadata(&p) {
                return Err(PyOSError::new_err(format!("{}: {e}", p.display())));
            }
            gatewatch_config::Settings::load(&p)
                .map(|s| s.engine)
                .map_err(config_err)
        }
    }
}

/// Combined access-log lines (nginx / Apache, with the configuration's `[input.combined]`
/// positions) as an events frame, in file order, read by the engine's line reader; the
/// refused lines as `(line number, reason)`.
#[pyfunction]
#[pyo3(signature = (path, config=None))]
fn read_combined(
    py: Python<'_>,
    path: PathBuf,
    config: Option<PathBuf>,
) -> PyResult<(PyDataFrame, Vec<(u64, String)>)> {
    use std::io::Read;
    let cfg = load_config(config)?;
    let os_err = |e: std::io::Error| PyOSError::new_err(format!("{}: {e}", path.display()));
    let mut file = std::fs::File::open(&path).map_err(os_err)?;
    py.detach(|| {
        let format = gatewatch_features::Format::Combined(cfg.input.combined.clone());
        let mut ingest = gatewatch_features::Ingest::new(format.clone());
        let mut events = Vec::new();
        let mut refused = Vec::new();
        let mut each = |n: u64, line: gatewatch_features::Line<'_>| match line.event(&format) {
            Ok(e) => events.push(e),
            Err(e) => refused.push((n, e.to_string())),
        };
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            let got = file.read(&mut chunk).map_err(os_err)?;
            if got == 0 {
                break;
            }
            ingest.split(&chunk[..got], &mut each);
        }
        ingest.split_end(&mut each);
        let df = gatewatch_frames::events_to_frame(&events).map_err(frame_err)?;
        Ok((PyDataFrame(df), refused))
    })
}

/// Simulated labelled API traffic as a DataFrame of events.
#[pyfunction]
#[pyo3(signature = (seed=1, duration="10m", users=200, scenarios=None, start=None))]
fn simulate(
    py: Python<'_>,
    seed: u64,
    duration: &str,
    users: usize,
    scenarios: Option<Vec<String>>,
    start: Option<&str>,
) -> PyResult<PyDataFrame> {
    let scenarios = match scenarios {
        None => Scenario::ALL.to_vec(),
        Some(list) => list
            .iter()
            .map(|s| Scenario::parse(s.trim()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(value_err)?,
    };
    if users > 1_000_000 {
        return Err(value_err(format!(
            "users={users} is more than the 1000000 this simulator generates"
        )));
    }
    let cfg = SimConfig {
        seed,
        duration_ms: parse_duration(duration).map_err(value_err)?,
        users,
        scenarios,
        start_ms: match start {
            Some(s) => gatewatch_event::parse_rfc3339_ms(s)
                .map_err(|e| value_err(format!("start: {e}")))?,
            None => DEFAULT_START_MS,
        },
    };
    let df = py
        .detach(|| gatewatch_frames::events_to_frame(&sim(&cfg)))
        .map_err(value_err)?;
    Ok(PyDataFrame(df))
}

/// The feature registry of the default configuration as JSON.
#[pyfunction]
fn feature_schema_json() -> PyResult<String> {
    let r = Registry::new(&FeatureConfig::default());
    serde_json::to_string(&r).map_err(value_err)
}

/// The built-in rules file's text.
#[pyfunction]
fn default_rules() -> &'static str {
    gatewatch_pipeline::rules::DEFAULT_RULES
}

/// The feature reference (Markdown).
#[pyfunction]
fn feature_docs() -> String {
    Registry::new(&FeatureConfig::default()).to_markdown()
}

/// Point-in-time features of every event, computed by the engine.
#[pyclass(module = "gatewatch._native")]
struct FeatureExtractor {
    cfg: Config,
}

#[pymethods]
impl FeatureExtractor {
    #[new]
    #[pyo3(signature = (config=None))]
    fn new(config: Option<PathBuf>) -> PyResult<Self> {
        let cfg = load_config(config)?;
        gatewatch_features::FeatureEngine::new(&cfg).map_err(config_err)?;
        Ok(Self { cfg })
    }

    /// The features, one row per event in event-time order.
    fn transform(&self, py: Python<'_>, df: PyDataFrame) -> PyResult<PyDataFrame> {
        let cfg = &self.cfg;
        let (out, _) = py
            .detach(|| gatewatch_frames::features_frame(cfg, &df.0))
            .map_err(frame_err)?;
        Ok(PyDataFrame(out))
    }

    /// Feature names in output order.
    fn feature_names(&self) -> Vec<String> {
        Registry::new(&self.cfg.features)
            .names()
            .map(String::from)
            .collect()
    }

    /// The hash that versions this configuration's feature set.
    fn feature_set(&self) -> String {
        Registry::new(&self.cfg.features).hash
    }
}

/// A model folder (or the built-in default) scoring events.
#[pyclass(module = "gatewatch._native")]
struct Model {
    cfg: Config,
    scorer: std::sync::Mutex<gatewatch_models::Scorer>,
    id: String,
}

#[pymethods]
impl Model {
    #[new]
    #[pyo3(signature = (path=None, config=None))]
    fn new(path: Option<PathBuf>, config: Option<PathBuf>) -> PyResult<Self> {
        let cfg = load_config(config)?;
        let registry = Registry::new(&cfg.features);
        let scorer = match &path {
            Some(p) => gatewatch_models::Scorer::load(p, &registry),
            None => gatewatch_models::Scorer::load_folder(
                &gatewatch_models::builtin_default(),
                &registry,
            ),
        }
        .map_err(model_err)?;
        Ok(Self {
            cfg,
            id: scorer.id(),
            scorer: std::sync::Mutex::new(scorer),
        })
    }

    /// Scores of every event, one row per event in time order.
    #[pyo3(signature = (df, reasons=3, batch=256))]
    fn score(
        &self,
        py: Python<'_>,
        df: PyDataFrame,
        reasons: usize,
        batch: usize,
    ) -> PyResult<PyDataFrame> {
        let out = py.detach(|| {
            let mut scorer = self
                .scorer
                .lock()
                .map_err(|_| value_err("the model was poisoned by an earlier panic"))?;
            gatewatch_frames::scores_frame(&self.cfg, &mut scorer, &df.0, reasons, batch)
                .map_err(frame_err)
        })?;
        Ok(PyDataFrame(out))
    }

    /// The endpoint monitor's alerts over the events (NDJSON: client alerts, then endpoint
    /// alerts), as `gatewatch score --alerts` writes them.
    fn alerts(&self, py: Python<'_>, df: PyDataFrame) -> PyResult<String> {
        py.detach(|| {
            let mut scorer = self
                .scorer
                .lock()
                .map_err(|_| value_err("the model was poisoned by an earlier panic"))?;
            gatewatch_frames::alerts_ndjson(&self.cfg, &mut scorer, &df.0).map_err(frame_err)
        })
    }

    /// Scores of every event decided by the rules `rules` (a rules file's text), as
    /// `gatewatch score --rules`: (the scores frame with the decision columns, the decision
    /// records as NDJSON, the back-test figures as JSON).
    #[pyo3(signature = (df, rules, reasons=3, batch=256))]
    fn decide(
        &self,
        py: Python<'_>,
        df: PyDataFrame,
        rules: String,
        reasons: usize,
        batch: usize,
    ) -> PyResult<(PyDataFrame, String, String)> {
        let (frame, changes, backtest) = py.detach(|| {
            let mut scorer = self
                .scorer
                .lock()
                .map_err(|_| value_err("the model was poisoned by an earlier panic"))?;
            gatewatch_frames::decide_frame(&self.cfg, &mut scorer, &rules, &df.0, reasons, batch)
                .map_err(frame_err)
        })?;
        let backtest = serde_json::to_string(&backtest).map_err(value_err)?;
        Ok((PyDataFrame(frame), changes, backtest))
    }

    /// Compiles a rules file's text against this model's features and detectors; raises
    /// `ValueError` naming the rule, the position and the reason when it does not compile.
    fn check_rules(&self, rules: &str) -> PyResult<usize> {
        let registry = Registry::new(&self.cfg.features);
        let scorer = self
            .scorer
            .lock()
            .map_err(|_| value_err("the model was poisoned by an earlier panic"))?;
        let schema = gatewatch_pipeline::rules_schema(&registry, Some(&scorer));
        gatewatch_pipeline::rules::Rules::parse(rules, &schema)
            .map(|r| r.len())
            .map_err(config_err)
    }

    /// `name@version`.
    #[getter]
    fn id(&self) -> String {
        self.id.clone()
    }

    /// Member names.
    #[getter]
    fn detectors(&self) -> Vec<String> {
        self.scorer
            .lock()
            .map(|s| s.members.iter().map(|m| m.name.clone()).collect())
            .unwrap_or_default()
    }
}

/// Scores the events through the Python path (DataFrames) and the service path (NDJSON
/// through the ingest loop of `gatewatch score`); returns (largest absolute difference,
/// events scored by Python, events scored by the service, lines the service rejected).
#[pyfunction]
#[pyo3(signature = (model_dir, df, config=None))]
fn check_parity(
    py: Python<'_>,
    model_dir: Option<PathBuf>,
    df: PyDataFrame,
    config: Option<PathBuf>,
) -> PyResult<(f64, usize, usize, u64)> {
    let m = Model::new(model_dir, config)?;
    py.detach(|| {
        let mut scorer = m
            .scorer
            .lock()
            .map_err(|_| value_err("the model was poisoned by an earlier panic"))?;
        let ours = gatewatch_frames::scores_frame(&m.cfg, &mut scorer, &df.0, 0, 256)
            .map_err(frame_err)?;
        let (theirs, rejected) =
            gatewatch_frames::service_scores(&m.cfg, &mut scorer, &df.0, 256).map_err(frame_err)?;
        let ours: Vec<f64> = ours
            .column("score")
            .and_then(|c| {
                c.f64()
                    .map(|c| c.iter().map(|v| v.unwrap_or(f64::NAN)).collect())
            })
            .map_err(value_err)?;
        let worst = if ours.len() == theirs.len() {
            ours.iter()
                .zip(&theirs)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max)
        } else {
            f64::INFINITY
        };
        Ok((worst, ours.len(), theirs.len(), rejected))
    })
}

/// Fits the named detectors on a features frame and writes the model folder, with the code
/// `gatewatch train` runs (an ensemble of one sub-folder per detector).
#[pyfunction]
#[pyo3(signature = (features, path, name="baseline", top_k=3, threshold=0.999, config=None, detectors=vec!["robust".to_string()], contamination=0.0))]
#[allow(clippy::too_many_arguments)]
fn fit_baseline(
    py: Python<'_>,
    features: PyDataFrame,
    path: PathBuf,
    name: &str,
    top_k: usize,
    threshold: f64,
    config: Option<PathBuf>,
    detectors: Vec<String>,
    contamination: f64,
) -> PyResult<String> {
    let cfg = load_config(config)?;
    py.detach(|| {
        let registry = Registry::new(&cfg.features);
        let rows = gatewatch_frames::feature_rows(&registry, &features.0).map_err(frame_err)?;
        let mut peaks = gatewatch_models::PeakCollector::default();
        if detectors.iter().any(|d| d == "volumetric") {
            gatewatch_frames::collect_peaks(&registry, &features.0, &mut peaks)
                .map_err(frame_err)?;
        }
        let n = registry.len();
        let training = gatewatch_models::Training {
            events: (rows.len() / n.max(1)) as u64,
            clients: 0,
            source: "a features DataFrame".into(),
            label_filter: None,
            description: None,
        };
        let spec = gatewatch_models::TrainSpec {
            name: name.to_string(),
            detectors,
            robust: gatewatch_models::RobustParams {
                top_k,
                threshold,
                contamination,
                ..gatewatch_models::RobustParams::default()
            },
            volumetric: gatewatch_models::VolumetricParams::default(),
            multi: gatewatch_models::MultiParams {
                threshold,
                ..gatewatch_models::MultiParams::default()
            },
        };
        let trained =
            gatewatch_models::train(&registry, &spec, &rows, &peaks, None, training, &path)
                .map_err(model_err)?;
        Ok(format!(
            "{}@{}",
            trained.manifest.name, trained.manifest.version
        ))
    })
}

/// Writes an ONNX model file as a model folder (`model.onnx` and its manifest), with the
/// code the service's loader is tested against; returns `name@version`.
#[pyfunction]
#[pyo3(signature = (path, onnx_path, features, threshold, output, column, negate, reference, calibration_scores, name, version, config=None))]
#[allow(clippy::too_many_arguments)]
fn export_onnx(
    path: PathBuf,
    onnx_path: PathBuf,
    features: Vec<String>,
    threshold: f64,
    output: String,
    column: usize,
    negate: bool,
    reference: Vec<f64>,
    calibration_scores: Vec<f64>,
    name: String,
    version: String,
    config: Option<PathBuf>,
) -> PyResult<String> {
    let cfg = load_config(config)?;
    let registry = Registry::new(&cfg.features);
    let spec = gatewatch_models::OnnxExport {
        name,
        version,
        features,
        threshold,
        output,
        column,
        negate,
        reference,
        calibration_scores,
    };
    let m =
        gatewatch_models::export_onnx(&registry, &spec, &onnx_path, &path).map_err(model_err)?;
    Ok(format!("{}@{}", m.name, m.version))
}

/// A univariate streaming detector over a frame of `ts` (Int64, epoch ms) and `value`
/// (Float64): every value scored against the values before it, then learnt from. Returns
/// the points (`ts`, `value`, `expected`, `statistic`, `score`, `surprisal`; null where the
/// value was refused) and the refused values as `(index, reason)`. `ewma` takes its half-life
/// in values unless `half_life_secs` is given, and no season unless `season_secs` is given
/// (`gw.EwmaDetector` passes every parameter).
#[pyfunction]
#[pyo3(signature = (df, kind, half_life=1000.0, half_life_secs=None, warmup=20, min_std=1e-9, rel_std=1e-3, season_secs=None, repeat_window=150, repeat_weight=0.7, reference=240, recent=30, bins=8))]
#[allow(clippy::too_many_arguments)]
fn univariate(
    py: Python<'_>,
    df: PyDataFrame,
    kind: &str,
    half_life: f64,
    half_life_secs: Option<f64>,
    warmup: usize,
    min_std: f64,
    rel_std: f64,
    season_secs: Option<f64>,
    repeat_window: usize,
    repeat_weight: f64,
    reference: usize,
    recent: usize,
    bins: usize,
) -> PyResult<(PyDataFrame, Vec<(usize, String)>)> {
    use gatewatch_models::{EwmaParams, HalfLife, RelativeEntropyParams};
    use polars::prelude::*;
    enum D {
        Ewma(gatewatch_models::Ewma),
        Re(gatewatch_models::RelativeEntropy),
    }
    let mut d = match kind {
        "ewma" => D::Ewma(
            EwmaParams {
                half_life: half_life_secs.map_or(HalfLife::Samples(half_life), HalfLife::Seconds),
                warmup,
                min_std,
                rel_std,
                season_secs,
                repeat_window,
                repeat_weight,
            }
            .build()
            .map_err(value_err)?,
        ),
        "relative_entropy" => D::Re(
            RelativeEntropyParams {
                reference,
                recent,
                bins,
            }
            .build()
            .map_err(value_err)?,
        ),
        other => return Err(value_err(format!("unknown detector kind {other:?}"))),
    };
    let df = df.0;
    py.detach(move || -> PyResult<(PyDataFrame, Vec<(usize, String)>)> {
        let ts = df
            .column("ts")
            .and_then(|c| c.i64().cloned())
            .map_err(value_err)?;
        let values = df
            .column("value")
            .and_then(|c| c.f64().cloned())
            .map_err(value_err)?;
        let n = df.height();
        let (mut expected, mut statistic, mut score, mut surprisal) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        let mut refused = Vec::new();
        for (i, (t, v)) in ts.iter().zip(values.iter()).enumerate() {
            let (Some(t), Some(v)) = (t, v) else {
                refused.push((i, "null timestamp or value".to_string()));
                expected.push(None);
                statistic.push(None);
                score.push(None);
                surprisal.push(None);
                continue;
            };
            let r = match &mut d {
                D::Ewma(e) => e.update(t, v),
                D::Re(e) => e.update(t, v),
            };
            match r {
                Ok(p) => {
                    expected.push(Some(p.expected));
                    statistic.push(Some(p.statistic));
                    score.push(Some(p.score));
                    surprisal.push(Some(p.surprisal));
                }
                Err(e) => {
                    refused.push((i, e.to_string()));
                    expected.push(None);
                    statistic.push(None);
                    score.push(None);
                    surprisal.push(None);
                }
            }
        }
        let cols = vec![
            ts.into_datetime(TimeUnit::Milliseconds, Some(TimeZone::UTC))
                .into_series()
                .into(),
            values.into_series().into(),
            Column::new("expected".into(), expected),
            Column::new("statistic".into(), statistic),
            Column::new("score".into(), score),
            Column::new("surprisal".into(), surprisal),
        ];
        let out = DataFrame::new(n, cols).map_err(value_err)?;
        Ok((PyDataFrame(out), refused))
    })
}

/// The native module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(simulate, m)?)?;
    m.add_function(wrap_pyfunction!(read_combined, m)?)?;
    m.add_function(wrap_pyfunction!(feature_schema_json, m)?)?;
    m.add_function(wrap_pyfunction!(feature_docs, m)?)?;
    m.add_function(wrap_pyfunction!(default_rules, m)?)?;
    m.add_class::<FeatureExtractor>()?;
    m.add_class::<Model>()?;
    m.add_function(wrap_pyfunction!(check_parity, m)?)?;
    m.add_function(wrap_pyfunction!(fit_baseline, m)?)?;
    m.add_function(wrap_pyfunction!(export_onnx, m)?)?;
    m.add_function(wrap_pyfunction!(univariate, m)?)?;
    m.add("GatewatchError", m.py().get_type::<GatewatchError>())?;
    m.add("ConfigError", m.py().get_type::<ConfigError>())?;
    m.add("DataError", m.py().get_type::<DataError>())?;
    m.add("ModelError", m.py().get_type::<ModelError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("EVENT_COLUMNS", gatewatch_frames::EVENT_COLUMNS.to_vec())?;
    Ok(())
}
