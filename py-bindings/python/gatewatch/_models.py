"""Models: loading and scoring model folders, the parity check against the service's path,
baselines fitted by the code of ``gatewatch train``, and ONNX models shipped as folders."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from gatewatch import _native
from gatewatch._frames import _compatible
from gatewatch._native import ModelError

# The type of a ``reasons`` column: the reasons of ``gatewatch score`` records.
REASONS = pl.List(
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
            ``client``, ``endpoint``, ``score`` in [0, 1], ``surprisal`` (the score's tail
            ``-log2(1 - score)`` in bits, which keeps ordering events where ``score``
            rounds to 1.0), ``score_<detector>`` per detector and ``flagged``.
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
        return out.with_columns(pl.col("reasons").str.json_decode(REASONS))

    def alerts(self, df: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
        """The endpoint monitor's alerts over the events, as ``gatewatch score --alerts``.

        The monitor starts from the model's failure baselines (``monitor.json``; without
        them it learns each endpoint's share during a warm-up) and runs over the events in
        event-time order, after the model has keyed and scored them.

        Parameters
        ----------
        df : polars.DataFrame
            Events in the event schema.

        Returns
        -------
        tuple of polars.DataFrame
            ``(clients, endpoints)``. ``clients``: one row per client alert (``ts`` when it
            was decided, ``client``, ``endpoint``, ``first_failure``, ``last_failure``,
            ``failures``, ``score``, ``surprisal``): a client whose authentication failures,
            never followed by a success within 60 s, fell in the endpoint's alerting
            buckets. ``endpoints``: one row per unusual endpoint bucket (``ts``,
            ``endpoint``, ``metric``, ``value``, ``expected``, ``z``, ``score``,
            ``surprisal``).
        """
        rows = [json.loads(line) for line in self._native.alerts(_compatible(df)).splitlines()]
        return _alert_frame(rows, "client"), _alert_frame(rows, "endpoint")


# The columns of the monitor's alert records by kind; the times are RFC 3339 strings.
_ALERT_COLUMNS: dict[str, dict[str, type[pl.DataType]]] = {
    "client": {
        "ts": pl.Datetime,
        "client": pl.String,
        "endpoint": pl.String,
        "first_failure": pl.Datetime,
        "last_failure": pl.Datetime,
        "failures": pl.Int64,
        "score": pl.Float64,
        "surprisal": pl.Float64,
    },
    "endpoint": {
        "ts": pl.Datetime,
        "endpoint": pl.String,
        "metric": pl.String,
        "value": pl.Float64,
        "expected": pl.Float64,
        "z": pl.Float64,
        "score": pl.Float64,
        "surprisal": pl.Float64,
    },
}


def _alert_frame(rows: list[dict[str, object]], kind: str) -> pl.DataFrame:
    """The alert records of one kind as a frame, times as UTC datetimes (ms)."""
    columns = _ALERT_COLUMNS[kind]
    times = [c for c, t in columns.items() if t is pl.Datetime]
    schema = {c: pl.String if t is pl.Datetime else t for c, t in columns.items()}
    return pl.DataFrame([r for r in rows if r["kind"] == kind], schema=schema).with_columns(
        pl.col(times)
        .str.to_datetime(time_unit="ms", time_zone="UTC")
        .cast(pl.Datetime("ms", "UTC"))
    )


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
    contamination : float
        The share of the training events presumed abnormal (robots, attacks) when the
        frame is unlabelled traffic, in [0, 0.5): the robust member sets aside, per
        feature, that share of the training values on the side where abuse lies, and that
        share of the highest raw scores for its calibration (as
        ``gatewatch train --contamination``).
    """

    def __init__(
        self,
        top_k: int = 3,
        threshold: float = 0.999,
        name: str = "baseline",
        config: str | Path | None = None,
        detectors: Sequence[str] = ("robust",),
        contamination: float = 0.0,
    ) -> None:
        self.top_k = top_k
        self.threshold = threshold
        self.contamination = contamination
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
            self.contamination,
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
