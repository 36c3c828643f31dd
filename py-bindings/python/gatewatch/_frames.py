"""Events and features as polars DataFrames: simulated traffic, request logs, the feature
registry, and the point-in-time features of every request."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from gatewatch import _native
from gatewatch._native import DataError

_FORMATS = {
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
    ".log": "combined",
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
    config: str | Path | None = None,
    errors: str = "raise",
) -> pl.DataFrame:
    """Read a request log into an events frame.

    Parameters
    ----------
    path : str or Path
        A Parquet, CSV or NDJSON file, or an nginx / Apache combined access log.
    format : {"parquet", "csv", "ndjson", "combined"}, optional
        The file format; taken from the extension when ``None`` (``.log``: combined).
    mapping : mapping of str to str, optional
        Column renames from the file's names to the event schema's (``{"time": "ts"}``).
        Header values may come as ``headers.NAME`` text columns (as CSV files have them)
        instead of a ``headers`` struct. Not for combined logs.
    config : str or Path, optional
        A gatewatch configuration whose ``[input.combined]`` says where a combined log's
        extra fields are (combined logs only).
    errors : {"raise", "skip"}
        A combined-log line that is not one: raise ``DataError`` naming the first (its
        line number and what is wrong), or leave such lines out. Combined logs are parsed
        by the engine's own reader (the referer becomes the ``referer`` header) and read
        whole.

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
    if fmt not in ("parquet", "csv", "ndjson", "combined"):
        raise ValueError(
            f"{p}: unknown log format {fmt or p.suffix!r} (use parquet, csv, ndjson or combined)"
        )
    if errors not in ("raise", "skip"):
        raise ValueError(f"errors must be 'raise' or 'skip', not {errors!r}")
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such file")
    if fmt == "combined":
        if mapping:
            raise ValueError("a combined log has fixed fields: no mapping")
        df, refused = _native.read_combined(str(p), None if config is None else str(config))
        if refused and errors == "raise":
            line, why = refused[0]
            raise DataError(
                f"{p}: line {line}: {why} ({len(refused)} line(s) refused; errors='skip' "
                "leaves them out)"
            )
        return df.sort("ts", maintain_order=True)
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
