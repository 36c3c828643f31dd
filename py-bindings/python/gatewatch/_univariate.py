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
