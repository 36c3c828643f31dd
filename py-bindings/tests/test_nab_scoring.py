"""The NAB scorer of scripts/nab.py against the benchmark's published rules, on small
synthetic corpora (the real corpus is not part of this repository)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest


def load() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "scripts" / "nab.py"
    spec = importlib.util.spec_from_file_location("nab_scoring", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["nab_scoring"] = module
    spec.loader.exec_module(module)
    return module


nab = load()
STANDARD = nab.PROFILES["standard"]


def series(n: int, windows: list[tuple[int, int]]) -> object:
    return nab.Series("f.csv", list(range(n)), [0.0] * n, windows)


def test_null_scores_zero_and_perfect_one_hundred() -> None:
    s = series(1000, [(400, 499), (700, 799)])
    none = nab.optimise([s], [[0.0] * 1000], STANDARD, 0.5)
    assert none.score == 0.0 and none.detected == 0
    perfect = [1.0 if i in (400, 700) else 0.0 for i in range(1000)]
    best = nab.optimise([s], [perfect], STANDARD)
    assert best.score == pytest.approx(100.0)
    assert best.threshold == 1.0 and best.detected == 2 and best.false_positives == 0


def test_a_late_detection_earns_less_and_only_the_first_in_a_window_counts() -> None:
    s = series(1000, [(400, 499)])
    last = [1.0 if i == 499 else 0.0 for i in range(1000)]
    r = nab.optimise([s], [last], STANDARD, 1.0)
    # Position -1/width at the window's last row; the weight is relative to sigma(-1).
    assert r.raw == pytest.approx(nab.sigma(-1 / 100) / nab.sigma(-1.0))
    many = [1.0 if 400 <= i <= 499 else 0.0 for i in range(1000)]
    assert nab.optimise([s], [many], STANDARD, 1.0).raw == pytest.approx(1.0)


def test_false_positives_cost_by_distance_and_probation_is_not_scored() -> None:
    s = series(1000, [(400, 499)])
    before = [1.0 if i == 300 else 0.0 for i in range(1000)]
    assert nab.optimise([s], [before], STANDARD, 1.0).raw == pytest.approx(-1 - 0.11)
    # Right after the window a false positive costs little, far after it the full A_FP.
    near = [1.0 if i == 505 else 0.0 for i in range(1000)]
    far = [1.0 if i == 900 else 0.0 for i in range(1000)]
    near_cost = nab.optimise([s], [near], STANDARD, 1.0).raw + 1
    far_cost = nab.optimise([s], [far], STANDARD, 1.0).raw + 1
    assert near_cost == pytest.approx(0.11 * nab.sigma(6 / 99))
    assert far_cost == pytest.approx(-0.11)
    # The first 15% of rows (150 here) are never scored.
    early = [1.0 if i == 100 else 0.0 for i in range(1000)]
    assert nab.optimise([s], [early], STANDARD, 1.0).raw == pytest.approx(-1.0)


def test_the_threshold_sweep_finds_the_best_cut() -> None:
    s = series(1000, [(400, 499)])
    scores = [0.0] * 1000
    scores[450] = 0.6  # a detection in the window
    for i in (200, 250, 300, 600, 800):
        scores[i] = 0.7  # false positives scored higher
    best = nab.optimise([s], [scores], STANDARD)
    assert best.threshold == 0.6 and best.detected == 1 and best.false_positives == 5
    assert best.raw == pytest.approx(
        nab.sigma(-50 / 100) / nab.sigma(-1.0)
        - 0.11 * 3
        + 0.11 * nab.sigma(101 / 99)
        + 0.11 * nab.sigma(301 / 99)
    )
    assert math.isclose(best.score, 100 * (best.raw + 1) / 2)
