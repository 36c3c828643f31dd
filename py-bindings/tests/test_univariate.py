"""The univariate streaming detectors on (timestamps, values) series."""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

import gatewatch as gw

START = dt.datetime(2026, 1, 5, 9, 0, tzinfo=dt.UTC)


def steady_then_step(n: int = 200, step_at: int = 150) -> tuple[list[dt.datetime], list[float]]:
    rng = np.random.default_rng(3)
    ts = [START + dt.timedelta(seconds=10 * i) for i in range(n)]
    vs = [float(50 + rng.normal(0, 2) + (40 if i >= step_at else 0)) for i in range(n)]
    return ts, vs


def test_ewma_flags_a_level_shift_and_nothing_before_it() -> None:
    ts, vs = steady_then_step()
    out = gw.EwmaDetector(half_life_secs=300, warmup=10).score(ts, vs)
    assert out.columns == ["ts", "value", "expected", "statistic", "score", "surprisal"]
    assert out.schema["ts"] == pl.Datetime("ms", "UTC")
    assert out["ts"].to_list() == ts
    score = out["score"].to_list()
    assert all(s == 0.0 for s in score[:10])
    assert max(score[10:150]) < 0.9999
    assert score[150] > 0.9999
    # The value is scored before it is learnt: the expectation at the step is the old level.
    assert abs(out["expected"][150] - 50) < 3


def test_the_same_series_as_datetimes_numpy_or_epoch_ms_gives_the_same_scores() -> None:
    ts, vs = steady_then_step()
    det = gw.EwmaDetector()
    a = det.score(ts, vs)
    ms = [int(t.timestamp() * 1000) for t in ts]
    b = det.score(ms, np.array(vs))
    c = det.score(np.array(ms, dtype="datetime64[ms]"), pl.Series(vs))
    assert_frame_equal(a, b)
    assert_frame_equal(a, c)


def test_relative_entropy_flags_a_change_of_spread_with_the_same_mean() -> None:
    rng = np.random.default_rng(5)
    n, change = 600, 400
    vs = np.concatenate([rng.normal(0, 1, change), rng.normal(0, 6, n - change)])
    ts = np.arange(n, dtype=np.int64) * 1000
    out = gw.RelativeEntropyDetector(reference=240, recent=30, bins=8).score(ts, vs)
    score = out["score"].to_numpy()
    assert (score[: 240 + 30 - 1] == 0).all()
    assert score[270:change].max() < 0.9999
    assert score[change : change + 30].max() > 0.9999


def test_bad_series_raise_naming_the_value_or_skip_it() -> None:
    ts = list(range(0, 10_000, 1000))
    vs = [1.0] * 10
    # Repeated and backward timestamps are scored as the next values, never refused.
    unsorted = ts.copy()
    unsorted[3] = 500
    unsorted[6] = unsorted[5]
    out = gw.EwmaDetector(warmup=2).score(unsorted, vs)
    assert out["score"].null_count() == 0
    nulls = pl.Series([1.0, None, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"at index 1: null timestamp or value"):
        gw.EwmaDetector().score([0, 1, 2, 3], nulls)
    skipped = gw.EwmaDetector(warmup=1).score([0, 1, 2, 3], nulls, errors="skip")
    assert skipped["score"].null_count() == 1 and skipped["score"][1] is None
    assert skipped["score"][2] is not None
    nan = vs.copy()
    nan[6] = math.nan
    with pytest.raises(ValueError, match=r"at index 6: value at ts 6000 is not finite"):
        gw.EwmaDetector().score(ts, nan)
    with pytest.raises(ValueError, match="timestamps has 10 values and values has 9"):
        gw.EwmaDetector().score(ts, vs[:9])
    with pytest.raises(TypeError, match="values must be numbers"):
        gw.EwmaDetector().score(ts, ["a"] * 10)
    with pytest.raises(TypeError, match="timestamps must be datetimes or integers"):
        gw.EwmaDetector().score([0.5] * 10, vs)
    with pytest.raises(ValueError, match="half_life_secs"):
        gw.EwmaDetector(half_life_secs=0).score(ts, vs)
    with pytest.raises(ValueError, match="repeat_weight"):
        gw.EwmaDetector(repeat_weight=2).score(ts, vs)
    with pytest.raises(ValueError, match="bins"):
        gw.RelativeEntropyDetector(bins=1).score(ts, vs)
    with pytest.raises(ValueError, match="errors must be"):
        gw.EwmaDetector().score(ts, vs, errors="ignore")
    empty = gw.EwmaDetector().score([], [])
    assert empty.height == 0


def test_surprisal_orders_values_whose_scores_saturate() -> None:
    rng = np.random.default_rng(9)
    base = list(rng.normal(10, 1, 300))
    ts = np.arange(301, dtype=np.int64) * 60_000
    big = gw.EwmaDetector().score(ts, [*base, 60.0])
    bigger = gw.EwmaDetector().score(ts, [*base, 90.0])
    assert big["score"][-1] == bigger["score"][-1] == 1.0
    assert bigger["surprisal"][-1] > big["surprisal"][-1] + 100


def test_a_daily_cycle_is_learnt_and_a_change_of_its_pattern_found() -> None:
    # Five-minute values, a daily cycle; on day 8 the afternoon stays at the mean.
    n = 10 * 288
    i = np.arange(n)
    phase = (i % 288) / 288 * 2 * math.pi
    flat = (i // 288 == 8) & (i % 288 >= 144) & (i % 288 < 216)
    vs = 100 + np.where(flat, 0.0, 50 * np.sin(phase)) + np.random.default_rng(6).normal(0, 1, n)
    out = gw.EwmaDetector().score(i.astype(np.int64) * 300_000, vs)
    bits = out["surprisal"].to_numpy()
    assert bits[3 * 288 : 8 * 288].max() < 8
    assert bits[flat].max() > 15
    no_season = gw.EwmaDetector(season_secs=None).score(i.astype(np.int64) * 300_000, vs)
    assert no_season["surprisal"].to_numpy()[flat].max() < 8
