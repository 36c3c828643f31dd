"""Models score in Python exactly as the service scores."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_series_equal
from test_features import gatewatch_bin

import gatewatch as gw


def test_default_model_scores_equal_gatewatch_score(tmp_path: Path) -> None:
    events = gw.simulate(seed=13, duration="4m", users=30)
    path = tmp_path / "events.ndjson"
    events.with_columns(pl.col("ts").dt.strftime("%Y-%m-%dT%H:%M:%S%.3fZ")).write_ndjson(path)
    out = subprocess.run(
        [gatewatch_bin(), "score", "-i", path], check=True, capture_output=True, text=True
    )
    cli = [json.loads(line) for line in out.stdout.splitlines()]
    model = gw.Model.default()
    assert model.id == "default@1"
    assert model.detectors == ["robust", "volumetric"]
    got = model.explain(events)
    assert got.height == len(cli) == events.height
    for row, want in zip(got.iter_rows(named=True), cli, strict=True):
        assert row["id"] == want["id"]
        assert row["score"] == want["score"]
        assert row["score_robust"] == want["scores"]["robust"]
        assert row["score_volumetric"] == want["scores"]["volumetric"]
        assert row["flagged"] == want["flagged"]
        assert row["reasons"] == want["reasons"]
    plain = model.score_samples(events)
    assert "reasons" not in plain.columns
    assert plain["score"].to_list() == got["score"].to_list()


def test_alerts_equal_those_of_gatewatch_score(tmp_path: Path) -> None:
    events = gw.simulate(seed=31, duration="30m", users=100, scenarios=["low_and_slow"])
    path = tmp_path / "events.ndjson"
    events.with_columns(pl.col("ts").dt.strftime("%Y-%m-%dT%H:%M:%S%.3fZ")).write_ndjson(path)
    alerts = tmp_path / "alerts.ndjson"
    args: list[str | Path] = ["score", "--no-output", "-i", path, "--alerts", alerts]
    subprocess.run([gatewatch_bin(), *args], check=True, capture_output=True)
    cli = [json.loads(line) for line in alerts.read_text().splitlines()]
    model = gw.Model.default()
    clients, endpoints = model.alerts(events)
    want = [r for r in cli if r["kind"] == "client"]
    assert clients.height == len(want) > 100
    stamp = "%Y-%m-%dT%H:%M:%S%.3fZ"
    got = clients.with_columns(pl.col("ts", "first_failure", "last_failure").dt.strftime(stamp))
    for row, w in zip(got.iter_rows(named=True), want, strict=True):
        for k in ("ts", "client", "endpoint", "first_failure", "last_failure", "failures"):
            assert row[k] == w[k], k
        assert row["score"] == w["score"]
        assert row["surprisal"] == w["surprisal"]
    # The clients named are the attack's.
    named = model.explain(events).join(clients.select("client").unique(), on="client", how="semi")
    assert set(named["label"]) == {"low_and_slow"}
    assert endpoints.height == sum(r["kind"] == "endpoint" for r in cli) > 0
    assert set(endpoints["metric"]) <= {"request_rate", "auth_failures", "errors"}
    assert endpoints.schema["ts"] == pl.Datetime("ms", "UTC")


def test_a_trained_model_folder_loads_and_bad_ones_are_refused(tmp_path: Path) -> None:
    events = gw.simulate(seed=4, duration="3m", users=20, scenarios=[])
    path = tmp_path / "events.ndjson"
    events.with_columns(pl.col("ts").dt.strftime("%Y-%m-%dT%H:%M:%S%.3fZ")).write_ndjson(path)
    folder = tmp_path / "m"
    subprocess.run(
        [gatewatch_bin(), "train", "-i", path, "-o", folder, "--detectors", "robust,pca"],
        check=True,
        capture_output=True,
    )
    m = gw.Model.load(folder)
    assert m.detectors == ["robust", "pca"]
    s = m.score_samples(events)
    assert s["score"].is_between(0.0, 1.0).all()
    (folder / "pca" / "params.json").write_text("{")
    with pytest.raises(gw.ModelError, match=r"pca/params\.json"):
        gw.Model.load(folder)
    with pytest.raises(OSError, match="nowhere"):
        gw.Model.load(tmp_path / "nowhere")


def test_check_parity_reports_no_difference_between_the_two_paths() -> None:
    events = gw.simulate(seed=8, duration="3m", users=20)
    r = gw.check_parity(None, events)
    assert r["events"] == r["service_events"] == events.height
    assert r["service_rejected"] == 0
    assert r["max_abs_diff"] == 0.0


def test_a_baseline_fitted_in_python_scores_like_one_trained_by_the_cli(tmp_path: Path) -> None:
    events = gw.simulate(seed=6, duration="3m", users=20, scenarios=[])
    feats = gw.FeatureExtractor().transform(events)
    model = (
        gw.Baseline(name="py", detectors=["robust", "volumetric"]).fit(feats).save(tmp_path / "py")
    )
    assert model.id == "py@1"
    assert model.detectors == ["robust", "volumetric"]
    path = tmp_path / "events.ndjson"
    events.with_columns(pl.col("ts").dt.strftime("%Y-%m-%dT%H:%M:%S%.3fZ")).write_ndjson(path)
    subprocess.run(
        [
            gatewatch_bin(),
            "train",
            "-i",
            path,
            "-o",
            tmp_path / "cli",
            "--name",
            "py",
            "--detectors",
            "robust,volumetric",
        ],
        check=True,
        capture_output=True,
    )
    cli = gw.Model.load(tmp_path / "cli")
    ours, theirs = model.explain(events), cli.explain(events)
    for column in ("score", "score_robust", "score_volumetric", "flagged", "reasons"):
        assert_series_equal(ours[column], theirs[column])
    # The same folders, file for file (the training source aside).
    for sub in ("robust", "volumetric"):
        for f in sorted((tmp_path / "cli" / sub).iterdir()):
            mine = (tmp_path / "py" / sub / f.name).read_text()
            if f.name == "manifest.json":
                a, b = json.loads(mine), json.loads(f.read_text())
                a.pop("training")
                b.pop("training")
                assert a == b, f"{sub}/{f.name}"
            else:
                assert mine == f.read_text(), f"{sub}/{f.name}"
    # Unlabelled traffic with an assumed share of abuse: the same fit from both sides.
    gw.Baseline(name="py", contamination=0.1).fit(feats).save(tmp_path / "pyc")
    args = ["--name", "py", "--detectors", "robust", "--contamination", "0.1"]
    subprocess.run(
        [gatewatch_bin(), "train", "-i", path, "-o", tmp_path / "clic", *args],
        check=True,
        capture_output=True,
    )
    fitted = (tmp_path / "pyc" / "robust" / "baseline.json").read_text()
    assert fitted == (tmp_path / "clic" / "robust" / "baseline.json").read_text()
    manifest = json.loads((tmp_path / "pyc" / "robust" / "manifest.json").read_text())
    assert manifest["calibration"].startswith("contamination 0.1:")
    assert fitted != (tmp_path / "py" / "robust" / "baseline.json").read_text()
    with pytest.raises(gw.ModelError, match="contamination"):
        gw.Baseline(contamination=0.6).fit(feats).save(tmp_path / "badc")
    with pytest.raises(gw.ModelError, match="unknown detector"):
        gw.Baseline(detectors=["robust", "lof"]).fit(feats).save(tmp_path / "lof")
    with pytest.raises(gw.DataError, match="req_count_10s"):
        gw.Baseline().fit(feats.drop("req_count_10s")).save(tmp_path / "bad")
    with pytest.raises(ValueError, match="fit"):
        gw.Baseline().save(tmp_path / "none")


def test_an_exported_onnx_model_scores_in_the_service_as_in_onnxruntime(tmp_path: Path) -> None:
    import numpy as np
    import onnxruntime as ort
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.ensemble import GradientBoostingClassifier

    events = gw.simulate(seed=17, duration="3m", users=25)
    feats = gw.FeatureExtractor().transform(events)
    names = ["error_ratio_1m", "req_rate_1m", "distinct_ids_10m", "transition_surprise"]
    x = feats.select(names).to_numpy().astype(np.float32)
    y = (feats["label"] != "normal").to_numpy().astype(np.int64)
    clf = GradientBoostingClassifier(n_estimators=20, max_depth=3, random_state=0).fit(x, y)
    onx = to_onnx(
        clf,
        initial_types=[("input", FloatTensorType([None, len(names)]))],
        options={id(clf): {"zipmap": False}},
    )
    (tmp_path / "clf.onnx").write_bytes(onx.SerializeToString())
    model = gw.export_model(
        tmp_path / "m", tmp_path / "clf.onnx", names, reference=feats, name="clf"
    )
    assert model.id == "clf@1"
    got = model.explain(events)
    sess = ort.InferenceSession(str(tmp_path / "clf.onnx"), providers=["CPUExecutionProvider"])
    want = sess.run(["probabilities"], {"input": x})[0][:, 1]
    diff = np.abs(got["score"].to_numpy() - want.astype(np.float64)).max()
    assert diff <= 1e-5
    flagged = got.filter(pl.col("flagged"))
    assert flagged.height > 0
    assert any(len(r) > 0 for r in flagged["reasons"].to_list())
    with pytest.raises(gw.ModelError, match=r"does not compute or select.*nope"):
        gw.export_model(tmp_path / "x", tmp_path / "clf.onnx", ["nope"])
    with pytest.raises(ValueError, match="input"):
        gw.export_model(tmp_path / "y", tmp_path / "clf.onnx", names[:3])
