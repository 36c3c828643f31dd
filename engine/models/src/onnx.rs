//! ONNX models through ONNX Runtime (`ort`), the runtime library loaded at run time.
//!
//! A model folder of kind `onnx` holds the `.onnx` file and, in its manifest's `onnx`
//! section, which input and output to use, how the output becomes a score in [0, 1], and the
//! reference feature values that explanations compare against. Tree ensembles
//! (`ai.onnx.ml`), IsolationForest exports and classifiers exported without `zipmap`, MLPs,
//! and anything else whose input is one float tensor `[batch, features]` work.
//!
//! Explanations are an approximation: each input feature's contribution is the change of the
//! score when that feature alone is replaced by its reference value (the training median),
//! computed in one extra batch of `features` rows per explained event. Interactions between
//! features are not split between them.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use gatewatch_features::Registry;
use ort::environment::Environment;
use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;
use ort::value::{TensorElementType, TensorRef, ValueType};

use crate::common::{Reason, calibrate, resolve};
use crate::error::{ModelError, Result};
use crate::manifest::Manifest;

/// The kind name in manifests.
pub const KIND: &str = "onnx";

/// The ONNX Runtime version whose library this build is tested with.
pub const RUNTIME_VERSION: &str = "1.32.0";

pub use crate::manifest::OnnxSpec;

static RUNTIME: OnceLock<std::result::Result<(Environment, PathBuf), String>> = OnceLock::new();

fn how_to_get() -> String {
    format!(
        "set ORT_DYLIB_PATH to an ONNX Runtime {RUNTIME_VERSION} library (`pip install onnxruntime=={RUNTIME_VERSION}` provides site-packages/onnxruntime/capi/libonnxruntime.so.{RUNTIME_VERSION}; scripts/setup-python installs it into .venv, where it is found without ORT_DYLIB_PATH)"
    )
}

/// Where the ONNX Runtime library is: `ORT_DYLIB_PATH`, else an `onnxruntime` wheel in the
/// active virtual environment (`VIRTUAL_ENV`) or in a `.venv` folder of the current
/// directory, the executable's directory, or one of their parents.
pub fn find_runtime_library() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        return Err(ModelError::Runtime(format!(
            "ORT_DYLIB_PATH={} is not a file; {}",
            p.display(),
            how_to_get()
        )));
    }
    let mut venvs: Vec<PathBuf> = Vec::new();
    if let Some(v) = std::env::var_os("VIRTUAL_ENV") {
        venvs.push(PathBuf::from(v));
    }
    let mut starts: Vec<PathBuf> = Vec::new();
    if let Ok(d) = std::env::current_dir() {
        starts.push(d);
    }
    if let Some(d) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        starts.push(d);
    }
    for s in &starts {
        venvs.extend(s.ancestors().map(|a| a.join(".venv")));
    }
    for v in venvs {
        let Ok(libs) = std::fs::read_dir(v.join("lib")) else {
            continue;
        };
        let mut pys: Vec<PathBuf> = libs
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("python3"))
            })
            .collect();
        pys.sort();
        for py in pys {
            let capi = py.join("site-packages/onnxruntime/capi");
            let Ok(files) = std::fs::read_dir(&capi) else {
                continue;
            };
            let mut libs: Vec<PathBuf> = files
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("libonnxruntime.so"))
                })
                .collect();
            libs.sort();
            if let Some(l) = libs.pop() {
                return Ok(l);
            }
        }
    }
    Err(ModelError::Runtime(format!(
        "the ONNX Runtime library was not found; {}",
        how_to_get()
    )))
}

/// The process's ONNX Runtime environment, loading the library on first use. Returns the
/// library's path too.
pub fn runtime() -> Result<(&'static Environment, &'static Path)> {
    let r = RUNTIME.get_or_init(|| {
        let path = find_runtime_library().map_err(|e| e.to_string())?;
        let builder = ort::init_from(&path).map_err(|e| {
            format!(
                "cannot load the ONNX Runtime library {}: {e}; {}",
                path.display(),
                how_to_get()
            )
        })?;
        let env = builder
            .with_name("gatewatch")
            .build()
            .map_err(|e| format!("ONNX Runtime environment: {e}"))?;
        Ok((env, path))
    });
    match r {
        Ok((env, path)) => Ok((env, path.as_path())),
        Err(e) => Err(ModelError::Runtime(e.clone())),
    }
}

/// A loaded ONNX model.
pub struct OnnxModel {
    /// Its manifest.
    pub manifest: Manifest,
    /// Its `onnx` section.
    pub spec: OnnxSpec,
    session: Session,
    input: String,
    f64_input: bool,
    /// Registry positions of the input features.
    idx: Vec<usize>,
    in32: Vec<f32>,
    in64: Vec<f64>,
    raw: Vec<f64>,
}

impl std::fmt::Debug for OnnxModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnnxModel")
            .field("manifest", &self.manifest)
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

fn float_tensor(t: &ValueType) -> Option<(TensorElementType, Vec<i64>)> {
    match t {
        ValueType::Tensor { ty, shape, .. }
            if matches!(ty, TensorElementType::Float32 | TensorElementType::Float64) =>
        {
            Some((*ty, shape.iter().copied().collect()))
        }
        _ => None,
    }
}

impl OnnxModel {
    /// Loads an `onnx` model folder, checked against the engine's registry.
    pub fn load(dir: &Path, registry: &Registry) -> Result<Self> {
        let manifest = Manifest::load(dir)?;
        Self::from_manifest(manifest, dir, Some(registry))
    }

    /// Opens the model of an already read manifest; with a registry, the feature set and
    /// names are checked and inputs are taken from registry-ordered rows, without one the
    /// rows are the model's inputs in manifest order.
    pub fn from_manifest(
        manifest: Manifest,
        dir: &Path,
        registry: Option<&Registry>,
    ) -> Result<Self> {
        let mpath = dir.join("manifest.json").display().to_string();
        let corrupt = |reason: String| ModelError::Corrupt {
            path: mpath.clone(),
            reason,
        };
        if manifest.kind != KIND {
            return Err(corrupt(format!(
                "detector kind {:?}, expected {KIND:?}",
                manifest.kind
            )));
        }
        let Some(spec) = manifest.onnx.clone() else {
            return Err(corrupt("an onnx model needs an \"onnx\" section".into()));
        };
        let n = manifest.features.len();
        let idx = match registry {
            Some(r) => {
                crate::check_feature_set(&manifest, r)?;
                resolve(r, &manifest.name, &manifest.features)?
            }
            None => (0..n).collect(),
        };
        if n == 0 {
            return Err(corrupt("the model has no input features".into()));
        }
        if !(spec.reference.is_empty() || spec.reference.len() == n) {
            return Err(corrupt(format!(
                "onnx.reference has {} values for {n} features",
                spec.reference.len()
            )));
        }
        if spec.reference.iter().any(|v| !v.is_finite())
            || spec.calibration.iter().any(|v| !v.is_finite())
            || spec.calibration.windows(2).any(|w| w[0] > w[1])
            || spec.calibration.len() == 1
        {
            return Err(corrupt(
                "onnx.reference must be finite and onnx.calibration finite, ascending, with at least two quantiles".into(),
            ));
        }
        let (env, _) = runtime()?;
        let file = dir.join(&spec.file);
        let fpath = file.display().to_string();
        let bad = |reason: String| ModelError::Corrupt {
            path: fpath.clone(),
            reason,
        };
        let bytes = std::fs::read(&file).map_err(|source| ModelError::Io {
            path: fpath.clone(),
            source,
        })?;
        let session = Session::builder(env)
            .and_then(|b| {
                b.with_optimization_level(GraphOptimizationLevel::Level3)
                    .map_err(ort::Error::from)
            })
            .and_then(|b| b.with_intra_threads(1).map_err(ort::Error::from))
            .and_then(|b| b.with_inter_threads(1).map_err(ort::Error::from))
            .and_then(|mut b| b.commit_from_memory(&bytes))
            .map_err(|e| bad(format!("ONNX Runtime refused the model: {e}")))?;
        let inputs = session.inputs();
        let input = match &spec.input {
            Some(name) => inputs.iter().find(|o| o.name() == name).ok_or_else(|| {
                bad(format!(
                    "no input {name:?} (inputs: {:?})",
                    inputs.iter().map(|o| o.name()).collect::<Vec<_>>()
                ))
            })?,
            None => inputs
                .first()
                .ok_or_else(|| bad("the model has no inputs".into()))?,
        };
        if inputs.len() != 1 {
            return Err(bad(format!(
                "the model has {} inputs; gatewatch feeds one float tensor [batch, features]",
                inputs.len()
            )));
        }
        let Some((ity, ishape)) = float_tensor(input.dtype()) else {
            return Err(bad(format!(
                "input {:?} is {}, expected a float tensor [batch, {n}]",
                input.name(),
                input.dtype()
            )));
        };
        if ishape.len() != 2 || !(ishape[1] == -1 || ishape[1] == n as i64) {
            return Err(bad(format!(
                "input {:?} has shape {ishape:?}, but the manifest names {n} features",
                input.name()
            )));
        }
        let outputs = session.outputs();
        let out = outputs
            .iter()
            .find(|o| o.name() == spec.output)
            .ok_or_else(|| {
                bad(format!(
                    "no output {:?} (outputs: {:?})",
                    spec.output,
                    outputs.iter().map(|o| o.name()).collect::<Vec<_>>()
                ))
            })?;
        let Some((_, oshape)) = float_tensor(out.dtype()) else {
            return Err(bad(format!(
                "output {:?} is {}, expected a float tensor (export classifiers with zipmap off)",
                spec.output,
                out.dtype()
            )));
        };
        let width = if oshape.len() >= 2 { oshape[1] } else { 1 };
        if oshape.len() > 2 || (width >= 0 && spec.column as i64 >= width) {
            return Err(bad(format!(
                "output {:?} has shape {oshape:?}; column {} is not in it",
                spec.output, spec.column
            )));
        }
        let input = input.name().to_string();
        Ok(Self {
            manifest,
            spec,
            session,
            input,
            f64_input: ity == TensorElementType::Float64,
            idx,
            in32: Vec::new(),
            in64: Vec::new(),
            raw: Vec::new(),
        })
    }

    /// Number of input features.
    pub fn n_inputs(&self) -> usize {
        self.idx.len()
    }

    /// Raw model outputs (after negation) of a batch of rows, `stride` values per row
    /// (registry order with a registry, the model's inputs otherwise), appended to `out`.
    /// Non-finite feature values are given to the model as they are.
    pub fn raw_batch(&mut self, rows: &[f64], stride: usize, out: &mut Vec<f64>) -> Result<()> {
        if stride == 0 || rows.is_empty() {
            return Ok(());
        }
        let b = rows.len() / stride;
        let n = self.idx.len();
        if self.f64_input {
            self.in64.clear();
            for r in rows.chunks_exact(stride) {
                self.in64.extend(self.idx.iter().map(|&i| r[i]));
            }
        } else {
            self.in32.clear();
            for r in rows.chunks_exact(stride) {
                self.in32.extend(self.idx.iter().map(|&i| r[i] as f32));
            }
        }
        let shape = [b as i64, n as i64];
        let run_err = |e: ort::Error| ModelError::Runtime(format!("ONNX inference: {e}"));
        let input = if self.f64_input {
            ort::session::SessionInputValue::from(
                TensorRef::from_array_view((shape, self.in64.as_slice())).map_err(run_err)?,
            )
        } else {
            ort::session::SessionInputValue::from(
                TensorRef::from_array_view((shape, self.in32.as_slice())).map_err(run_err)?,
            )
        };
        let outputs = self
            .session
            .run(vec![(std::borrow::Cow::from(self.input.as_str()), input)])
            .map_err(run_err)?;
        let v = &outputs[self.spec.output.as_str()];
        let sign = if self.spec.negate { -1.0 } else { 1.0 };
        let col = self.spec.column;
        let mut take = |shape: &[i64], len: usize, get: &dyn Fn(usize) -> f64| -> Result<()> {
            let w = if shape.len() >= 2 {
                shape[1] as usize
            } else {
                1
            };
            if w == 0 || len != b * w {
                return Err(ModelError::Runtime(format!(
                    "output {:?} has shape {shape:?} for a batch of {b}",
                    self.spec.output
                )));
            }
            out.extend((0..b).map(|r| sign * get(r * w + col)));
            Ok(())
        };
        if let Ok((shape, data)) = v.try_extract_tensor::<f32>() {
            take(shape, data.len(), &|i| f64::from(data[i]))
        } else {
            let (shape, data) = v.try_extract_tensor::<f64>().map_err(run_err)?;
            take(shape, data.len(), &|i| data[i])
        }
    }

    /// Calibrated score of a raw output.
    pub fn calibrate(&self, raw: f64) -> f64 {
        if !raw.is_finite() {
            return if raw.is_nan() {
                0.0
            } else {
                (raw > 0.0) as u8 as f64
            };
        }
        if self.spec.calibration.is_empty() {
            raw.clamp(0.0, 1.0)
        } else {
            calibrate(&self.spec.calibration, raw)
        }
    }

    /// Scores of a batch of rows (see [`raw_batch`](Self::raw_batch)), appended to `out`.
    pub fn score_batch(&mut self, rows: &[f64], stride: usize, out: &mut Vec<f64>) -> Result<()> {
        let start = out.len();
        self.raw_batch(rows, stride, out)?;
        for s in &mut out[start..] {
            *s = self.calibrate(*s);
        }
        Ok(())
    }

    /// The `k` largest contributions to one row's score: each feature's contribution is the
    /// score minus the score with that feature replaced by its reference value.
    pub fn explain(&mut self, row: &[f64], k: usize) -> Result<Vec<Reason>> {
        let n = self.idx.len();
        if k == 0 || self.spec.reference.is_empty() {
            return Ok(Vec::new());
        }
        let stride = row.len();
        let mut rows: Vec<f64> = Vec::with_capacity((n + 1) * stride);
        rows.extend_from_slice(row);
        for (j, &i) in self.idx.iter().enumerate() {
            rows.extend_from_slice(row);
            let at = (j + 1) * stride + i;
            rows[at] = self.spec.reference[j];
        }
        let mut raw = std::mem::take(&mut self.raw);
        raw.clear();
        let r = self.score_batch(&rows, stride, &mut raw);
        let out = r.map(|()| {
            let mut c: Vec<(f64, usize)> = (0..n).map(|j| (raw[0] - raw[j + 1], j)).collect();
            c.sort_by(|a, b| b.0.abs().total_cmp(&a.0.abs()).then(a.1.cmp(&b.1)));
            c.into_iter()
                .take(k)
                .filter(|(d, _)| *d != 0.0)
                .map(|(d, j)| Reason {
                    feature: self.manifest.features[j].clone(),
                    value: row[self.idx[j]],
                    baseline: self.spec.reference[j],
                    contribution: d,
                })
                .collect()
        });
        self.raw = raw;
        out
    }

    /// `name@version`.
    pub fn id(&self) -> String {
        format!("{}@{}", self.manifest.name, self.manifest.version)
    }
}
