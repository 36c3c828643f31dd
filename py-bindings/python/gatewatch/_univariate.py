"""Streaming detectors of one series: level shifts (EWMA) and distribution changes
(relative entropy), scored point by point as the service scores its endpoint series."""

from __future__ import annotations

from typing import Any

import polars as pl

from gatewatch import _native


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
            What to do with a value that cannot be learnt from (NaN, infinite, beyond
            ±1e150, or null):
            raise ``ValueError`` naming the first one, or give it a null score and go on
            (the detector does not learn from it), as the service does. Timestamps that
            repeat or go backwards are not errors: the value is scored as the next one.

        Returns
        -------
        polars.DataFrame
            ``ts`` (Datetime[ms, UTC]), ``value``, ``expected`` (what the detector expected),
            ``statistic`` (its test statistic), ``score`` in [0, 1] (the null model's
            probability mass less extreme than the value; 0 while warming up) and
            ``surprisal``, the same tail probability ``p`` as ``-log2 p`` bits at full
            resolution: ``score`` rounds to 1.0 beyond about 8 standard deviations, so rank
            and threshold extreme values by ``surprisal``.
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
    """Level shifts, spikes and changes of a daily pattern.

    An exponentially weighted level and variance, with a half-life counted in values (so
    one parameter set fits a series of seconds and one of hours), and a seasonal predictor:
    the value one season ago (the period in values comes from the series' cadence, the
    median spacing of its first 64 distinct timestamps). A value's z-score is taken against
    whichever predictor has had the smaller errors; it counts only by how much it exceeds
    ``repeat_weight`` times the largest of the ``repeat_window`` values before it, so a
    lasting disturbance scores at its onset; the score is its two-sided normal tail.

    The defaults are one parameter set for every series, measured on the Numenta Anomaly
    Benchmark (EVALUATION.md, ``scripts/nab``).

    Parameters
    ----------
    half_life : float
        Half-life of the weights, in values.
    half_life_secs : float, optional
        Half-life in seconds of event time instead (irregular series are weighted by the
        time between values).
    warmup : int
        Values learnt before scores are given.
    min_std : float
        Floor of the standard deviation, in the series' unit.
    rel_std : float
        Floor of the standard deviation relative to the level's magnitude.
    season_secs : float or None
        Seasonal period in seconds (a day), or ``None`` for no seasonal predictor.
    repeat_window, repeat_weight : int, float
        Damping of repeated alarms (``repeat_window=0``: off).

    Examples
    --------
    >>> import gatewatch as gw
    >>> out = gw.EwmaDetector(warmup=5).score(list(range(0, 20_000, 1000)), [1.0] * 19 + [9.0])
    >>> float(out["score"][-1]) > 0.999
    True
    """

    _kind = "ewma"

    def __init__(
        self,
        half_life: float = 1000.0,
        half_life_secs: float | None = None,
        warmup: int = 20,
        min_std: float = 1e-9,
        rel_std: float = 1e-3,
        season_secs: float | None = 86400.0,
        repeat_window: int = 150,
        repeat_weight: float = 0.7,
    ) -> None:
        self.half_life = half_life
        self.half_life_secs = half_life_secs
        self.warmup = warmup
        self.min_std = min_std
        self.rel_std = rel_std
        self.season_secs = season_secs
        self.repeat_window = repeat_window
        self.repeat_weight = repeat_weight

    def _params(self) -> dict[str, Any]:
        return {
            "half_life": self.half_life,
            "half_life_secs": self.half_life_secs,
            "warmup": self.warmup,
            "min_std": self.min_std,
            "rel_std": self.rel_std,
            "season_secs": self.season_secs,
            "repeat_window": self.repeat_window,
            "repeat_weight": self.repeat_weight,
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
