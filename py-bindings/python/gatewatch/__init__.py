"""gatewatch: abuse and anomaly detection for API traffic, on polars DataFrames.

The features and scores come from the same Rust engine as the ``gatewatch`` command and
service, so a notebook computes exactly what production computes.

Examples
--------
>>> import gatewatch as gw
>>> events = gw.simulate(seed=7, duration="2m", users=20)
>>> features = gw.FeatureExtractor().transform(events)
>>> features.height == events.height
True
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from gatewatch import _native
from gatewatch._native import ConfigError, DataError, GatewatchError, ModelError

__all__ = [
    "Baseline",
    "ConfigError",
    "DataError",
    "EwmaDetector",
    "FeatureExtractor",
    "GatewatchError",
    "Model",
    "ModelError",
    "RelativeEntropyDetector",
    "__version__",
    "check_parity",
    "export_model",
    "feature_docs",
    "feature_schema",
    "read_log",
    "simulate",
]

__version__: str = _native.__version__


def _point_at_onnxruntime() -> None:
    """Let the engine find ONNX Runtime in this interpreter's ``onnxruntime`` package.

    ONNX models run on the ONNX Runtime library, loaded when the first one is. Unless
    ``ORT_DYLIB_PATH`` names one, the library of the installed ``onnxruntime`` wheel is used
    (found without importing the package).
    """
    if os.environ.get("ORT_DYLIB_PATH"):
        return
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        return
    for where in spec.submodule_search_locations:
        capi = Path(where) / "capi"
        libs = sorted(capi.glob("libonnxruntime.so*")) + sorted(capi.glob("libonnxruntime*.dylib"))
        libs += sorted(capi.glob("onnxruntime.dll"))
        if libs:
            os.environ["ORT_DYLIB_PATH"] = str(libs[-1])
            return


_point_at_onnxruntime()

_FORMATS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
}

# The event schema's columns (and ``headers.NAME`` columns): what read_log keeps.
_EVENT_COLUMNS = frozenset(_native.EVENT_COLUMNS)


def simulate(
    seed: int = 1,
    duration: str = "10m",
    users: int = 200,
    scenarios: Sequence[str] | None = None,
    start: str | None = None,
) -> pl.DataFrame:
    """Simulate labelled API traffic.

    Parameters
    ----------
    seed : int
        Random seed; the same arguments give the same frame.
    duration : str
        Simulated time span, such as ``"90s"``, ``"10m"`` or ``"2h"``.
    users : int
        Normal users.
    scenarios : sequence of str, optional
        Abuse scenarios (``credential_stuffing``, ``bola_enumeration``, ``scraping``,
        ``volumetric``, ``low_and_slow``, ``sequence_abuse``); all of them when ``None``,
        none for an empty sequence.
    start : str, optional
        Start of simulated time (RFC 3339).

    Returns
    -------
    polars.DataFrame
        One row per request in the event schema (``id``, ``label``, ``ts``, ``client_ip``,
        ``method``, ``host``, ``path``, ``status``, sizes, ``latency_ms``, ``user_agent``,
        ``headers``, ``session_id``, ``asn``, ``country``, ``ja4``), in time order.
    """
    return _native.simulate(
        seed, duration, users, None if scenarios is None else list(scenarios), start
    )


def read_log(
    path: str | Path,
    format: str | None = None,
    mapping: Mapping[str, str] | None = None,
) -> pl.DataFrame:
    """Read a request log into an events frame.

    Parameters
    ----------
    path : str or Path
        A Parquet, CSV or NDJSON file.
    format : {"parquet", "csv", "ndjson"}, optional
        The file format; taken from the extension when ``None``.
    mapping : mapping of str to str, optional
        Column renames from the file's names to the event schema's (``{"time": "ts"}``).
        Header values may come as ``headers.NAME`` text columns (as CSV files have them)
        instead of a ``headers`` struct.

    Returns
    -------
    polars.DataFrame
        The event schema's columns (a lazy scan reads only those), sorted by ``ts``.
        Values are checked when the frame is used: a bad value is an error naming its
        column and row.

    Raises
    ------
    ValueError
        When the format is unknown.
    DataError
        When the mapping names a column the file lacks, or a required column is missing
        after the mapping (a ``ValueError`` too).
    FileNotFoundError
        When there is no such file.
    """
    p = Path(path)
    fmt = format or _FORMATS.get(p.suffix.lower())
    if fmt not in ("parquet", "csv", "ndjson"):
        raise ValueError(
            f"{p}: unknown log format {fmt or p.suffix!r} (use parquet, csv or ndjson)"
        )
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    if fmt == "parquet":
        lf = pl.scan_parquet(p)
    elif fmt == "csv":
        lf = pl.scan_csv(p, infer_schema_length=10_000)
    else:
        lf = pl.scan_ndjson(p, infer_schema_length=10_000)
    names = lf.collect_schema().names()
    if mapping:
        missing = [c for c in mapping if c not in names]
        if missing:
            raise DataError(
                f"{p}: mapping names columns the file does not have: {missing} "
                f"(its columns: {names})"
            )
        lf = lf.rename(dict(mapping))
        names = [mapping.get(c, c) for c in names]
    required = ["ts", "client_ip", "method", "path", "status"]
    absent = [c for c in required if c not in names]
    if absent:
        raise DataError(f"{p}: required event columns are missing: {absent}")
    keep = [c for c in names if c in _EVENT_COLUMNS or c.startswith("headers.")]
    return lf.select(keep).sort("ts", maintain_order=True).collect()


_NARROW_INTS = (pl.Int8, pl.Int16, pl.UInt8, pl.UInt16)


def _compatible(df: pl.DataFrame) -> pl.DataFrame:
    """The frame with narrow integers widened to Int64 and categoricals as text.

    The engine reads integers of any width and text; the narrow integer and categorical
    types do not cross into it, so they are converted here (the other columns untouched).
    """
    if not isinstance(df, pl.DataFrame):
        return df
    casts = [
        pl.col(name).cast(pl.Int64)
        if isinstance(dtype, _NARROW_INTS)
        else pl.col(name).cast(pl.String)
        for name, dtype in df.schema.items()
        if isinstance(dtype, (*_NARROW_INTS, pl.Categorical, pl.Enum))
    ]
    return df.with_columns(casts) if casts else df


def feature_schema() -> dict[str, Any]:
    """The feature registry of the default configuration.

    Returns
    -------
    dict
        ``features`` (name, horizon, aggregation, dtype and definition of each), the
        horizons, the buckets per horizon and the ``hash`` that versions the feature set.
    """
    schema: dict[str, Any] = json.loads(_native.feature_schema_json())
    return schema


def feature_docs() -> str:
    """The feature reference as Markdown (the table of ``docs/FEATURES.md``)."""
    return _native.feature_docs()


class FeatureExtractor:
    """Point-in-time behaviour features of every request, as ``gatewatch features`` computes.

    Parameters
    ----------
    config : str or Path, optional
        A gatewatch TOML configuration (client keys, endpoint templates, horizons); the
        defaults when ``None``.

    Raises
    ------
    OSError
        When the configuration file cannot be read.
    ValueError
        When the configuration is invalid.
    """

    def __init__(self, config: str | Path | None = None) -> None:
        self._native = _native.FeatureExtractor(None if config is None else str(config))

    def transform(self, df: pl.DataFrame) -> pl.DataFrame:
        """Compute the features of every event.

        Parameters
        ----------
        df : polars.DataFrame
            Events in the event schema (see :func:`simulate`); ``ts`` may be a datetime,
            epoch milliseconds or RFC 3339 text. Rows are taken in time order (ties in row
            order) whatever their order in the frame.

        Returns
        -------
        polars.DataFrame
            One row per event in time order: ``id`` and ``label`` when present, ``ts``,
            ``client``, ``endpoint`` and every feature (Float64).

        Raises
        ------
        ValueError
            Naming the column and row of a missing column, a wrong type, a null or an
            invalid value.
        """
        if not isinstance(df, pl.DataFrame):
            raise TypeError(f"expected a polars.DataFrame, got {type(df).__name__}")
        return self._native.transform(_compatible(df))

    def fit_transform(self, df: pl.DataFrame) -> pl.DataFrame:
        """Same as :meth:`transform` (the extractor learns nothing ahead of time)."""
        return self.transform(df)

    @property
    def feature_names(self) -> list[str]:
        """Feature names in output order."""
        return self._native.feature_names()

    @property
    def feature_set(self) -> str:
        """The hash that versions this configuration's feature set."""
        return self._native.feature_set()


class Model:
    """A gatewatch model: one detector or an ensemble, as ``gatewatch score`` uses.

    Use :meth:`load` for a model folder and :meth:`default` for the built-in default model.
    """

    def __init__(self, native: _native.Model) -> None:
        self._native = native

    @classmethod
    def load(cls, path: str | Path, config: str | Path | None = None) -> Model:
        """Load a model folder.

        Parameters
        ----------
        path : str or Path
            The folder (``manifest.json`` and its artefacts).
        config : str or Path, optional
            The gatewatch configuration the model's features were computed with.

        Raises
        ------
        OSError
            When a file of the folder cannot be read.
        ValueError
            When the folder is corrupt, was built for another feature set or names unknown
            features (the message says which).
        """
        return cls(_native.Model(str(path), None if config is None else str(config)))

    @classmethod
    def default(cls) -> Model:
        """The built-in default model (``models/default``)."""
        return cls(_native.Model(None, None))

    @property
    def id(self) -> str:
        """``name@version``."""
        return self._native.id

    @property
    def detectors(self) -> list[str]:
        """The names of the model's detectors."""
        return self._native.detectors

    def score_samples(self, df: pl.DataFrame) -> pl.DataFrame:
        """Score every event.

        Parameters
        ----------
        df : polars.DataFrame
            Events in the event schema (see :func:`simulate`).

        Returns
        -------
        polars.DataFrame
            One row per event in time order: ``id``/``label`` when present, ``ts``,
            ``client``, ``endpoint``, ``score`` in [0, 1], ``score_<detector>`` per
            detector and ``flagged``.
        """
        return self._native.score(_compatible(df), 0).drop("reasons")

    def explain(self, df: pl.DataFrame, top: int = 3) -> pl.DataFrame:
        """Score every event with its top reasons.

        Parameters
        ----------
        df : polars.DataFrame
            Events in the event schema.
        top : int
            Reasons per event.

        Returns
        -------
        polars.DataFrame
            As :meth:`score_samples`, with ``reasons``: a list of structs (``detector``,
            ``feature``, ``value``, ``baseline``, ``contribution``) per event.
        """
        out = self._native.score(_compatible(df), top)
        dtype = pl.List(
            pl.Struct(
                {
                    "detector": pl.String,
                    "feature": pl.String,
                    "value": pl.Float64,
                    "baseline": pl.Float64,
                    "contribution": pl.Float64,
                }
            )
        )
        return out.with_columns(pl.col("reasons").str.json_decode(dtype))


def check_parity(
    model_dir: str | Path | None, events: pl.DataFrame, config: str | Path | None = None
) -> dict[str, float | int]:
    """Score events through the Python path and the service path and compare.

    The Python path computes features and scores on DataFrames; the service path writes the
    same events as NDJSON lines and reads them back through the ingest loop of
    ``gatewatch score``.

    Parameters
    ----------
    model_dir : str or Path, optional
        A model folder; the built-in default model when ``None``.
    events : polars.DataFrame
        Events in the event schema.
    config : str or Path, optional
        The gatewatch configuration.

    Returns
    -------
    dict
        ``max_abs_diff`` (infinite when the two paths scored different numbers of events),
        ``events`` (scored by Python), ``service_events`` and ``service_rejected``.
    """
    worst, ours, theirs, rejected = _native.check_parity(
        None if model_dir is None else str(model_dir),
        _compatible(events),
        None if config is None else str(config),
    )
    return {
        "max_abs_diff": worst,
        "events": ours,
        "service_events": theirs,
        "service_rejected": rejected,
    }


class Baseline:
    """A baseline model fitted on a features frame by the code of ``gatewatch train``.

    The saved folder is the one ``gatewatch train --detectors …`` writes from the same
    events: an ensemble of one sub-folder per detector, scored by the highest member score.

    Parameters
    ----------
    top_k : int
        Evidence groups averaged into the robust member's raw score.
    threshold : float
        Flag threshold on the calibrated score (robust, PCA and Gaussian-mixture members).
    name : str
        Model name.
    config : str or Path, optional
        The gatewatch configuration the features were computed with.
    detectors : sequence of str
        Members, from ``"robust"``, ``"volumetric"`` (per-endpoint rate baselines; reads the
        frame's ``endpoint``, ``client`` and ``endpoint_count_1m`` columns), ``"pca"`` and
        ``"gmm"``.
    """

    def __init__(
        self,
        top_k: int = 3,
        threshold: float = 0.999,
        name: str = "baseline",
        config: str | Path | None = None,
        detectors: Sequence[str] = ("robust",),
    ) -> None:
        self.top_k = top_k
        self.threshold = threshold
        self.name = name
        self.config = config
        self.detectors = detectors
        self._features: pl.DataFrame | None = None

    def fit(self, features: pl.DataFrame) -> Baseline:
        """Keep the training features (the model is fitted when saved).

        Parameters
        ----------
        features : polars.DataFrame
            A frame from :meth:`FeatureExtractor.transform` (every feature column).

        Returns
        -------
        Baseline
            ``self``.
        """
        if not isinstance(features, pl.DataFrame):
            raise TypeError(f"expected a polars.DataFrame, got {type(features).__name__}")
        self._features = features
        return self

    def save(self, path: str | Path) -> Model:
        """Fit and write the model folder, and load it.

        Parameters
        ----------
        path : str or Path
            The folder to write.

        Returns
        -------
        Model
            The saved model, ready to score.

        Raises
        ------
        ValueError
            When :meth:`fit` was not called, or a feature column is missing, null or not
            finite (the message names it).
        """
        if self._features is None:
            raise ValueError("call fit(features) before save(path)")
        _native.fit_baseline(
            self._features,
            str(path),
            self.name,
            self.top_k,
            self.threshold,
            None if self.config is None else str(self.config),
            list(self.detectors),
        )
        return Model.load(path, self.config)


def export_model(
    path: str | Path,
    onnx_path: str | Path,
    features: Sequence[str],
    threshold: float = 0.5,
    output: str = "probabilities",
    column: int = 1,
    negate: bool = False,
    reference: pl.DataFrame | Sequence[float] | None = None,
    calibration_scores: Sequence[float] | None = None,
    name: str = "model",
    version: str = "1",
) -> Model:
    """Write an ONNX model as a gatewatch model folder and load it.

    Parameters
    ----------
    path : str or Path
        The folder to write (``model.onnx`` and ``manifest.json``).
    onnx_path : str or Path
        The exported model: one float input ``[batch, len(features)]``; classifiers exported
        with ``zipmap`` off.
    features : sequence of str
        The registry features the model reads, in input order.
    threshold : float
        Flag threshold on the score.
    output, column : str, int
        The output and column holding the score (``"probabilities"``, 1 for a binary
        classifier's positive class; ``"scores"``, 0 with ``negate=True`` for an
        IsolationForest).
    negate : bool
        The output is larger for more normal events.
    reference : polars.DataFrame or sequence of float, optional
        Values explanations compare against: a features frame (its medians are taken) or one
        value per feature. No explanations when ``None``.
    calibration_scores : sequence of float, optional
        Raw outputs of the training events; the score becomes their empirical CDF. The raw
        output clamped to [0, 1] when ``None``.
    name, version : str
        The model's name and version.

    Returns
    -------
    Model
        The folder, loaded as the service loads it.

    Raises
    ------
    ValueError
        When a feature is unknown or the reference has the wrong length; the service's own
        checks (the ONNX input width, the output) apply when the folder is loaded.
    """
    ref: list[float] = []
    if isinstance(reference, pl.DataFrame):
        missing = [f for f in features if f not in reference.columns]
        if missing:
            raise ModelError(f"reference frame lacks the features {missing}")
        ref = [float(reference[f].median()) for f in features]  # type: ignore[arg-type]
    elif reference is not None:
        ref = [float(v) for v in reference]
    out = Path(path)
    _native.export_onnx(
        str(out),
        str(onnx_path),
        list(features),
        threshold,
        output,
        column,
        negate,
        ref,
        [float(v) for v in calibration_scores or []],
        name,
        version,
    )
    return Model.load(out)


def _series_frame(timestamps: Any, values: Any) -> pl.DataFrame:
    """``ts`` (Int64 epoch ms) and ``value`` (Float64) from array-likes."""
    ts = timestamps if isinstance(timestamps, pl.Series) else pl.Series("ts", timestamps)
    vs = values if isinstance(values, pl.Series) else pl.Series("value", values)
    if ts.len() != vs.len():
        raise ValueError(f"timestamps has {ts.len()} values and values has {vs.len()}")
    if isinstance(ts.dtype, (pl.Datetime, pl.Date)):
        ts = ts.dt.epoch("ms")
    elif not ts.dtype.is_integer() and ts.dtype != pl.Null:
        raise TypeError(
            f"timestamps must be datetimes or integers (epoch milliseconds), not {ts.dtype}"
        )
    if not (vs.dtype.is_numeric() or vs.dtype == pl.Null):
        raise TypeError(f"values must be numbers, not {vs.dtype}")
    return pl.DataFrame(
        {"ts": ts.cast(pl.Int64).rename("ts"), "value": vs.cast(pl.Float64).rename("value")}
    )


class _Univariate:
    _kind: str

    def _params(self) -> dict[str, Any]:
        raise NotImplementedError

    def score(self, timestamps: Any, values: Any, errors: str = "raise") -> pl.DataFrame:
        """Score a series value by value, as the service's streaming detector does.

        Each value is scored against the values before it (never against itself or later
        ones), then learnt from.

        Parameters
        ----------
        timestamps : array-like
            Datetimes (polars, numpy ``datetime64`` or Python) or integers (epoch
            milliseconds), in time order.
        values : array-like
            Numbers, one per timestamp.
        errors : {"raise", "skip"}
            What to do with a value that cannot be learnt from (NaN or infinite, null, or a
            timestamp before the previous one): raise ``ValueError`` naming the first one, or
            give it a null score and go on (the detector does not learn from it), as the
            service does.

        Returns
        -------
        polars.DataFrame
            ``ts`` (Datetime[ms, UTC]), ``value``, ``expected`` (what the detector expected),
            ``statistic`` (its test statistic) and ``score`` in [0, 1] (0 while warming up).
        """
        if errors not in ("raise", "skip"):
            raise ValueError(f"errors must be 'raise' or 'skip', not {errors!r}")
        frame = _series_frame(timestamps, values)
        out, refused = _native.univariate(frame, self._kind, **self._params())
        if refused and errors == "raise":
            i, why = refused[0]
            raise ValueError(
                f"{len(refused)} value(s) cannot be scored; the first, at index {i}: {why} "
                "(errors='skip' scores the others)"
            )
        return out


class EwmaDetector(_Univariate):
    """Level shifts: an exponentially weighted mean and variance over event time.

    A value's score is its two-sided normal tail probability against the mean and standard
    deviation learnt from the values before it (time-weighted, so irregular series are
    fine). The service runs this detector on every endpoint's request rate, authentication
    failures and errors per ten-second bucket.

    Parameters
    ----------
    half_life_secs : float
        Half-life of the weights, in seconds of event time.
    warmup : int
        Values learnt before scores are given.
    min_std : float
        Floor of the standard deviation, in the series' unit.

    Examples
    --------
    >>> import gatewatch as gw
    >>> out = gw.EwmaDetector(warmup=5).score(list(range(0, 20_000, 1000)), [1.0] * 19 + [9.0])
    >>> float(out["score"][-1]) > 0.999
    True
    """

    _kind = "ewma"

    def __init__(
        self, half_life_secs: float = 600.0, warmup: int = 10, min_std: float = 1e-6
    ) -> None:
        self.half_life_secs = half_life_secs
        self.warmup = warmup
        self.min_std = min_std

    def _params(self) -> dict[str, Any]:
        return {
            "half_life_secs": self.half_life_secs,
            "warmup": self.warmup,
            "min_std": self.min_std,
        }


class RelativeEntropyDetector(_Univariate):
    """Distribution changes: recent values against a reference window.

    The relative entropy (Kullback-Leibler divergence) of the recent window's histogram from
    the reference window's, over equal-probability bins of the reference; the score is the
    chi-squared CDF of ``2 * recent * KL`` with ``bins - 1`` degrees of freedom. It catches
    changes of shape and spread that a mean-based detector misses.

    Parameters
    ----------
    reference : int
        Values in the reference window.
    recent : int
        Values in the recent window (at least ``bins``).
    bins : int
        Equal-probability bins of the reference (2 to 64).
    """

    _kind = "relative_entropy"

    def __init__(self, reference: int = 240, recent: int = 30, bins: int = 8) -> None:
        self.reference = reference
        self.recent = recent
        self.bins = bins

    def _params(self) -> dict[str, Any]:
        return {"reference": self.reference, "recent": self.recent, "bins": self.bins}
