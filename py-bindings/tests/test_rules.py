"""Rules in Python decide exactly as ``gatewatch score --rules`` and ``gatewatch backtest``."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import polars as pl
import pytest
from test_features import gatewatch_bin

import gatewatch as gw

STAMP = "%Y-%m-%dT%H:%M:%S%.3fZ"


def _events(tmp_path: Path) -> tuple[pl.DataFrame, Path]:
    events = gw.simulate(seed=5, duration="10m", users=60)
    path = tmp_path / "events.ndjson"
    events.with_columns(pl.col("ts").dt.strftime(STAMP)).write_ndjson(path)
    return events, path


def test_rules_decide_as_gatewatch_score(tmp_path: Path) -> None:
    events, path = _events(tmp_path)
    changes = tmp_path / "decisions.ndjson"
    args: list[str | Path] = ["score", "-i", path, "--rules", "default", "--decisions", changes]
    out = subprocess.run([gatewatch_bin(), *args], check=True, capture_output=True, text=True)
    cli = [json.loads(line) for line in out.stdout.splitlines()]
    rules = gw.Rules.default()
    assert len(rules) == 7
    got = rules.evaluate(events).with_columns(pl.col("decision_until").dt.strftime(STAMP))
    assert got.height == len(cli) == events.height
    decided = 0
    for row, want in zip(got.iter_rows(named=True), cli, strict=True):
        assert row["id"] == want["id"]
        assert row["score"] == want["score"]
        d = want.get("decision")
        if d is None:
            assert row["decision_id"] is None
            continue
        decided += 1
        for k in ("id", "rule", "action", "scope", "value", "mode", "until", "new"):
            assert row[f"decision_{k}"] == d[k], k
    assert decided > 100
    want = [json.loads(line) for line in changes.read_text().splitlines()]
    frame = rules.decisions(events)
    assert frame.height == len(want) > 10
    assert frame["ts"].dtype == pl.Datetime("ms", "UTC")
    stamped = frame.with_columns(pl.col("ts", "start", "until").dt.strftime(STAMP))
    for row, w in zip(stamped.iter_rows(named=True), want, strict=True):
        for k in ("change", "ts", "id", "rule", "action", "scope", "value", "mode", "level"):
            assert row[k] == w[k], k
        for k in ("start", "until", "duration_s", "score", "reasons", "hits"):
            assert row[k] == w[k], k
        assert row["why"] == w.get("why")


def test_backtest_equals_gatewatch_backtest(tmp_path: Path) -> None:
    events, path = _events(tmp_path)
    out = subprocess.run(
        [gatewatch_bin(), "backtest", "--rules", "default", "-i", path],
        check=True,
        capture_output=True,
        text=True,
    )
    b = gw.Rules.default().backtest(events)
    rules, labels, coverage = b["rules"], b["labels"], b["coverage"]
    assert rules.height == 7
    assert labels["requests"].sum() == events.height
    for r in rules.iter_rows(named=True):
        line = next(
            x.split()
            for x in out.stderr.splitlines()
            if x.split()[:2] == [r["rule"], r["mode"]] and len(x.split()) == 8
        )
        assert line[4:6] == [str(r["matched"]), str(r["decisions"])], line
        want = "-" if r["precision"] is None else f"{r['precision']:.3f}"
        assert line[7] == want
    normal = labels.filter(pl.col("label") == "normal").row(0, named=True)
    stopped = normal["block"] + normal["challenge"]
    assert f"normal requests blocked or challenged: {stopped} of {normal['requests']}" in out.stderr
    stuffing = coverage.filter(
        (pl.col("rule") == "credential-stuffing") & (pl.col("label") == "credential_stuffing")
    )
    assert stuffing["share"][0] > 0.9


def test_bad_rules_are_refused_with_the_rule_and_position(tmp_path: Path) -> None:
    bad = tmp_path / "rules.toml"
    bad.write_text(
        '[[rule]]\nid = "r1"\nwhen = "score.flagged && features.nope > 1"\naction = "block"\n'
    )
    with pytest.raises(gw.ConfigError, match=r'rule "r1": when, 1:18: unknown feature "nope"'):
        gw.Rules.load(bad)
    ok = tmp_path / "ok.toml"
    ok.write_text('[[rule]]\nid = "r"\nwhen = "score.robust > 0.5"\naction = "log"\n')
    assert len(gw.Rules.load(ok)) == 1
