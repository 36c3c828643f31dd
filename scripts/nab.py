"""Scores gatewatch's streaming detectors on the Numenta Anomaly Benchmark (NAB).

    scripts/nab NAB_DIR [--detector NAME ...] [--files all|tuning|held-out]
    scripts/nab NAB_DIR --check DETECTOR   (rescore NAB's stored results of one of its
                                            detectors and compare with its scoreboard)

NAB_DIR is a checkout of github.com/numenta/NAB (its data and labels are read from there,
never copied into this repository). The scoring follows NAB's published rules (Lavin and
Ahmad, "Evaluating Real-time Anomaly Detection Algorithms - the Numenta Anomaly Benchmark",
2015, and NAB's README):

- each file's first 15% of rows (at most 750) are a probationary period, never scored;
- a labelled anomaly window counts once: its earliest detection scores
  A_TP * sigma(position) / sigma(-1), where sigma(y) = 2 / (1 + e^(5y)) - 1 and the position
  runs from -1 (the window's first row) to 0 (one row past its last); a window without a
  detection scores -A_FN;
- every detection outside a window scores A_FP * sigma(distance past the previous window's
  end / (that window's width - 1)), or -A_FP before the first window;
- one threshold per detector and profile for the whole corpus, the one that maximises the
  total; the total is normalised to 100 * (total - null) / (perfect - null), where the null
  detector detects nothing and the perfect one detects every window at its first row.

NAB searches the threshold with a local optimiser; this script sweeps every threshold
exactly, so a score here is the best that threshold choice can give (never lower than NAB's
for the same anomaly scores). `--check` shows the difference on NAB's stored results.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

PROFILES: dict[str, tuple[float, float, float]] = {
    # name: (A_TP, A_FP, A_FN), NAB's config/profiles.json
    "standard": (1.0, 0.11, 1.0),
    "reward_low_FP_rate": (1.0, 0.22, 1.0),
    "reward_low_FN_rate": (1.0, 0.11, 2.0),
}
PROBATION_SHARE = 0.15
PROBATION_MAX = 750


def sigma(y: float) -> float:
    """NAB's scaled sigmoid of a position relative to a window's end."""
    if y > 3.0:
        return -1.0
    return 2.0 / (1.0 + math.exp(5.0 * y)) - 1.0


@dataclass
class Series:
    """One NAB data file with its labelled windows (row indices, inclusive)."""

    name: str
    ts_ms: list[int]
    values: list[float]
    windows: list[tuple[int, int]]


def parse_ts(text: str) -> int:
    """NAB's timestamps ("2014-04-10 07:15:00" with optional fraction), as epoch ms (UTC)."""
    fmt = "%Y-%m-%d %H:%M:%S.%f" if "." in text else "%Y-%m-%d %H:%M:%S"
    return int(datetime.strptime(text, fmt).replace(tzinfo=UTC).timestamp() * 1000)


def load_corpus(nab_dir: Path) -> list[Series]:
    """Every data file named in NAB's combined windows, in name order."""
    windows = json.loads((nab_dir / "labels" / "combined_windows.json").read_text())
    out = []
    for name in sorted(windows):
        ts, values = [], []
        with (nab_dir / "data" / name).open() as f:
            for row in csv.DictReader(f):
                ts.append(parse_ts(row["timestamp"]))
                values.append(float(row["value"]))
        index = {t: i for i, t in enumerate(ts)}
        wins = [(index[parse_ts(a)], index[parse_ts(b)]) for a, b in windows[name]]
        out.append(Series(name, ts, values, wins))
    return out


def split(corpus: list[Series], which: str) -> list[Series]:
    """`tuning`: every other file in name order starting with the first; `held-out`: the
    rest. Detector parameters are chosen on `tuning` only."""
    if which == "all":
        return corpus
    first = 0 if which == "tuning" else 1
    return corpus[first::2]


@dataclass
class Points:
    """The scorable rows of one file for one profile: the weight a detection there would
    add, and the window it falls in (-1 outside)."""

    weight: list[float]
    window: list[int]
    row: list[int]


def sweep_points(s: Series, profile: tuple[float, float, float], first_window: int) -> Points:
    tp, fp, _ = profile
    n = len(s.ts_ms)
    probation = min(math.floor(PROBATION_SHARE * n), PROBATION_MAX)
    max_tp = sigma(-1.0)
    in_window = [-1] * n
    for k, (a, b) in enumerate(s.windows):
        for i in range(a, b + 1):
            in_window[i] = k
    weight, window, rows = [], [], []
    prev_end: int | None = None
    prev_width = 0.0
    for i in range(n):
        k = in_window[i]
        if k >= 0:
            a, b = s.windows[k]
            width = float(b - a + 1)
            w = sigma(-(b - i + 1) / width) * tp / max_tp
            if i == b:
                prev_end, prev_width = b, width
        elif prev_end is None:
            w = -fp
        else:
            w = sigma(abs(prev_end - i) / (prev_width - 1.0)) * fp
        if i >= probation:
            weight.append(w)
            window.append(first_window + k if k >= 0 else -1)
            rows.append(i)
    return Points(weight, window, rows)


@dataclass
class Result:
    """A detector's corpus score for one profile."""

    score: float  # normalised
    raw: float
    threshold: float
    detected: int  # windows detected
    windows: int
    false_positives: int


def optimise(
    corpus: list[Series],
    scores: list[list[float]],
    profile: tuple[float, float, float],
    threshold: float | None = None,
) -> Result:
    """The corpus score at the best threshold (or at `threshold`): detections are rows whose
    anomaly score is ≥ the threshold."""
    tp, _, fn = profile
    entries: list[tuple[float, float, int]] = []
    n_windows = 0
    counted: set[int] = set()
    for s, sc in zip(corpus, scores, strict=True):
        pts = sweep_points(s, profile, n_windows)
        n_windows += len(s.windows)
        for w, k, i in zip(pts.weight, pts.window, pts.row, strict=True):
            entries.append((sc[i], w, k))
            if k >= 0:
                counted.add(k)
    # A window whose every row is probationary is not scored (as in NAB).
    null = -fn * len(counted)
    perfect = tp * len(counted)
    entries.sort(key=lambda e: -e[0])
    best = {k: -fn for k in counted}
    total = null
    fps = 0
    detected = 0
    top = (total, 1.1, 0, 0)
    i = 0
    while i < len(entries):
        t = entries[i][0]
        if threshold is not None and t < threshold:
            break
        while i < len(entries) and entries[i][0] == t:
            _, w, k = entries[i]
            if k < 0:
                total += w
                fps += 1
            else:
                if best[k] == -fn:
                    detected += 1
                if w > best[k]:
                    total += w - best[k]
                    best[k] = w
            i += 1
        if threshold is not None or total > top[0]:
            top = (total, t, detected, fps)
    raw, thr, det, fp_count = top
    return Result(100.0 * (raw - null) / (perfect - null), raw, thr, det, len(counted), fp_count)


Detector = Callable[[list[int], list[float]], list[float]]


def gatewatch_detectors() -> dict[str, Detector]:
    import gatewatch as gw

    def wrap(make: Callable[[], object]) -> Detector:
        # NAB takes scores in [0, 1] and sweeps thresholds over them: the detector's
        # surprisal (bits, unsaturated) mapped monotonically, b / (b + 32), keeps the order
        # of values whose [0, 1] scores round to 1.0.
        def run(ts: list[int], values: list[float]) -> list[float]:
            out = make().score(ts, values, errors="skip")  # type: ignore[attr-defined]
            return [0.0 if b is None else b / (b + 32.0) for b in out["surprisal"].to_list()]

        return run

    return {
        "ewma": wrap(gw.EwmaDetector),
        "relative_entropy": wrap(gw.RelativeEntropyDetector),
    }


def report(name: str, results: dict[str, Result]) -> str:
    cells = [
        f"{r.score:.1f} (t={r.threshold:.4g}, {r.detected}/{r.windows} windows, "
        f"{r.false_positives} FP)"
        for r in results.values()
    ]
    return f"| {name} | " + " | ".join(cells) + " |"


def check(nab_dir: Path, corpus: list[Series], detector: str) -> None:
    """Rescores NAB's stored anomaly scores of one of its detectors with this script's rules,
    at NAB's own threshold and at the best one, next to NAB's scoreboard."""
    board = json.loads((nab_dir / "results" / "final_results.json").read_text())[detector]
    thresholds = json.loads((nab_dir / "config" / "thresholds.json").read_text())[detector]
    scores = []
    for s in corpus:
        d, f = s.name.split("/")
        path = nab_dir / "results" / detector / d / f"{detector}_{f}"
        with path.open() as fh:
            scores.append([float(r["anomaly_score"]) for r in csv.DictReader(fh)])
    for prof, weights in PROFILES.items():
        at = optimise(corpus, scores, weights, thresholds[prof]["threshold"])
        best = optimise(corpus, scores, weights)
        print(
            f"{detector} {prof}: NAB scoreboard {board[prof]:.2f}; this script at NAB's "
            f"threshold {at.score:.2f}; at the best threshold {best.score:.2f} "
            f"(t={best.threshold:.4g})"
        )


def main(argv: Iterable[str]) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("nab_dir", type=Path)
    ap.add_argument("--detector", action="append", help="gatewatch detector (default: all)")
    ap.add_argument("--files", choices=["all", "tuning", "held-out"], default="all")
    ap.add_argument("--check", metavar="NAB_DETECTOR")
    args = ap.parse_args(list(argv))
    if not (args.nab_dir / "labels" / "combined_windows.json").is_file():
        sys.exit(f"{args.nab_dir} is not a NAB checkout (no labels/combined_windows.json)")
    corpus = load_corpus(args.nab_dir)
    if args.check:
        check(args.nab_dir, corpus, args.check)
        return
    corpus = split(corpus, args.files)
    detectors = gatewatch_detectors()
    names = args.detector or list(detectors)
    for n in names:
        if n not in detectors:
            sys.exit(f"unknown detector {n!r}; known: {', '.join(detectors)}")
    rows = sum(len(s.ts_ms) for s in corpus)
    print(f"NAB: {len(corpus)} files ({args.files}), {rows} rows\n")
    print("| detector | standard | reward low FP | reward low FN |")
    print("|---|---|---|---|")
    for n in names:
        scores = [detectors[n](s.ts_ms, s.values) for s in corpus]
        print(report(n, {p: optimise(corpus, scores, w) for p, w in PROFILES.items()}))


if __name__ == "__main__":
    main(sys.argv[1:])
