"""The Python module computes exactly what the service computes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import gatewatch as gw

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"


def gatewatch_bin() -> Path:
    """The gatewatch binary with its default features (tables), as `cargo test` builds it.

    The release binary may be the lean one (`scripts/run` builds it without Parquet / CSV),
    so the debug build comes first.
    """
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    for b in (target / p / "gatewatch" for p in ("debug", "release")):
        if b.exists():
            return b
    pytest.fail(f"the gatewatch binary is not built under {target} (cargo build -p gatewatch)")


def cli_features(events: Path, out: Path) -> pl.DataFrame:
    subprocess.run(
        [gatewatch_bin(), "features", "-i", events, "-o", out],
        check=True,
        capture_output=True,
    )
    return pl.read_ndjson(out, infer_schema_length=None)


def as_cli_table(features: pl.DataFrame) -> pl.DataFrame:
    """The DataFrame output in the CLI's NDJSON types (ts as RFC 3339 text, floats)."""
    return features.with_columns(
        pl.col("ts").dt.strftime("%Y-%m-%dT%H:%M:%S%.3fZ"),
    )


def compare(got: pl.DataFrame, want: pl.DataFrame) -> None:
    assert sorted(got.columns) == sorted(want.columns)
    want = want.select(got.columns)
    names = [c for c in got.columns if c not in ("id", "label", "ts", "client", "endpoint")]
    assert_frame_equal(
        as_cli_table(got),
        want.with_columns(pl.col(names).cast(pl.Float64)),
        check_dtypes=False,
        check_exact=True,
    )


def test_golden_fixture_matches_the_stored_table() -> None:
    events = gw.read_log(GOLDEN / "events.ndjson")
    got = gw.FeatureExtractor().transform(events)
    want = pl.read_ndjson(GOLDEN / "features.ndjson", infer_schema_length=None)
    assert got.height == want.height == 673
    compare(got, want)


def test_transform_equals_gatewatch_features_on_the_same_log(tmp_path: Path) -> None:
    events = gw.simulate(seed=11, duration="3m", users=25)
    path = tmp_path / "events.ndjson"
    events.with_columns(pl.col("ts").dt.strftime("%Y-%m-%dT%H:%M:%S%.3fZ")).write_ndjson(path)
    want = cli_features(path, tmp_path / "features.ndjson")
    got = gw.FeatureExtractor().transform(events)
    assert got.height == events.height
    compare(got, want)


def test_features_are_float_columns_named_by_the_registry() -> None:
    ex = gw.FeatureExtractor()
    schema = gw.feature_schema()
    names = [f["name"] for f in schema["features"]]
    assert ex.feature_names == names
    assert ex.feature_set == schema["hash"]
    out = ex.transform(gw.simulate(seed=3, duration="1m", users=5, scenarios=[]))
    assert out.columns[-len(names) :] == names
    assert all(out.schema[n] == pl.Float64 for n in names)
    assert out.schema["ts"] == pl.Datetime("ms", "UTC")
    assert "| `req_count_<h>` |" in gw.feature_docs()


def test_simulate_is_deterministic_and_labelled() -> None:
    a = gw.simulate(seed=5, duration="2m", users=10, scenarios=["scraping"])
    b = gw.simulate(seed=5, duration="2m", users=10, scenarios=["scraping"])
    assert_frame_equal(a, b)
    assert set(a["label"].unique()) == {"normal", "scraping"}
    assert a["ts"].is_sorted()
    with pytest.raises(ValueError, match="unknown scenario"):
        gw.simulate(scenarios=["teleportation"])
    with pytest.raises(ValueError, match="duration"):
        gw.simulate(duration="soon")


def test_read_log_reads_parquet_csv_and_ndjson_with_a_mapping(tmp_path: Path) -> None:
    events = gw.simulate(seed=9, duration="1m", users=5, scenarios=[]).drop("headers")
    want = gw.FeatureExtractor().transform(events)
    renamed = events.rename({"ts": "time", "client_ip": "remote_addr"})
    renamed.write_parquet(tmp_path / "log.parquet")
    flat = renamed.with_columns(pl.col("time").dt.strftime("%Y-%m-%dT%H:%M:%S%.3fZ"))
    flat.write_csv(tmp_path / "log.csv")
    flat.write_ndjson(tmp_path / "log.jsonl")
    mapping = {"time": "ts", "remote_addr": "client_ip"}
    for name in ("log.parquet", "log.csv", "log.jsonl"):
        df = gw.read_log(tmp_path / name, mapping=mapping)
        assert_frame_equal(gw.FeatureExtractor().transform(df), want)
    with pytest.raises(ValueError, match="unknown log format"):
        gw.read_log(tmp_path / "log.txt")
    with pytest.raises(gw.DataError, match=r"required event columns are missing: \['ts'"):
        gw.read_log(tmp_path / "log.parquet")


def test_bad_frames_raise_errors_naming_column_and_row() -> None:
    events = gw.simulate(seed=2, duration="1m", users=5, scenarios=[]).head(20)
    ex = gw.FeatureExtractor()
    with pytest.raises(gw.DataError, match='column "status" is missing'):
        ex.transform(events.drop("status"))
    with pytest.raises(gw.DataError, match='column "status" has type str'):
        ex.transform(events.with_columns(pl.lit("OK").alias("status")))
    ips = events["client_ip"].to_list()
    ips[4] = None
    with pytest.raises(gw.DataError, match='column "client_ip" is null in row 4'):
        ex.transform(events.with_columns(pl.Series("client_ip", ips)))
    ips[4] = "nope"
    with pytest.raises(gw.DataError, match=r"row 4: .*client_ip"):
        ex.transform(events.with_columns(pl.Series("client_ip", ips)))
    with pytest.raises(TypeError, match=r"polars\.DataFrame"):
        ex.transform(events.to_dicts())  # type: ignore[arg-type]
    empty = ex.transform(events.head(0))
    assert empty.height == 0 and "req_count_10s" in empty.columns


def test_hostile_frames_raise_or_pass_through_never_crash() -> None:
    events = gw.simulate(seed=2, duration="1m", users=5, scenarios=[]).head(20)
    ex = gw.FeatureExtractor()
    ms = events.with_columns(pl.col("ts").dt.epoch("ms").alias("ts"))
    ts = ms["ts"].to_list()
    ts[3] = 2**63 - 1
    with pytest.raises(gw.DataError, match=r"row 3: field `ts`: out of range"):
        ex.transform(ms.with_columns(pl.Series("ts", ts)))
    # Hostile paths are templated, not refused; a day's gap in one client's rows keeps every
    # row (a sorted frame is never held back by the event-time rule).
    paths = events["path"].to_list()
    paths[0] = "/a\\x1\u00e9/" + "[" * 5000
    paths[1] = "/%00/\u202e/" + "x" * 10_000
    keyless = events.drop([c for c in ("headers", "session_id") if c in events.columns])
    one = keyless.with_columns(
        pl.Series("path", paths),
        pl.lit("198.51.100.9").alias("client_ip"),
        pl.col("ts") + pl.duration(days=pl.int_range(0, pl.len())),
    )
    out = ex.transform(one)
    assert out.height == one.height
    assert out["client"].n_unique() == 1


def test_config_files_are_used_and_bad_ones_refused(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text("[features]\nhorizons_secs = [30, 300]\n")
    ex = gw.FeatureExtractor(cfg)
    assert "req_count_30s" in ex.feature_names and "req_count_10s" not in ex.feature_names
    (tmp_path / "bad.toml").write_text("[features]\nhorizons = 3\n")
    with pytest.raises(gw.ConfigError, match="horizons"):
        gw.FeatureExtractor(tmp_path / "bad.toml")
    (tmp_path / "env.toml").write_text("[features]\nmax_clients = ${GW_PYTEST_UNSET_VAR}\n")
    with pytest.raises(gw.ConfigError, match="GW_PYTEST_UNSET_VAR is not set"):
        gw.FeatureExtractor(tmp_path / "env.toml")
    with pytest.raises(OSError, match=r"missing\.toml"):
        gw.FeatureExtractor(tmp_path / "missing.toml")


def test_a_selection_gives_those_columns_of_the_full_transform(tmp_path: Path) -> None:
    picked = ["req_count_1m", "distinct_endpoints_1m", "error_ratio_1m", "transition_surprise"]
    cfg = tmp_path / "sel.toml"
    cfg.write_text(f"[features]\nselect = {json.dumps(picked[::-1])}\n")
    events = gw.simulate(seed=5, duration="2m", users=15)
    sel = gw.FeatureExtractor(cfg)
    assert sel.feature_names == [
        "req_count_1m",
        "error_ratio_1m",
        "distinct_endpoints_1m",
        "transition_surprise",
    ]
    got = sel.transform(events)
    full = gw.FeatureExtractor().transform(events)
    keys = ["id", "label", "ts", "client", "endpoint"]
    assert got.columns == keys + sel.feature_names
    assert_frame_equal(got, full.select(keys + sel.feature_names))
    (tmp_path / "typo.toml").write_text('[features]\nselect = ["req_count_1mn"]\n')
    with pytest.raises(gw.ConfigError, match="unknown feature"):
        gw.FeatureExtractor(tmp_path / "typo.toml")
    with pytest.raises(gw.ModelError, match="select"):
        gw.Model.load(ROOT / "models" / "default", config=cfg)


def test_the_stored_schema_is_json_of_the_registry() -> None:
    s = gw.feature_schema()
    assert json.loads(json.dumps(s)) == s
    assert len(s["features"]) == 93


def latest_first(events: pl.DataFrame) -> pl.DataFrame:
    """The rows latest first; rows of the same time keep their order."""
    return events.with_row_index("_row").sort(["ts", "_row"], descending=[True, False]).drop("_row")


def test_unsorted_rows_give_the_features_of_sorted_ones() -> None:
    events = gw.simulate(seed=4, duration="2m", users=15)
    shuffled = latest_first(events)
    assert not shuffled["ts"].is_sorted()
    ex = gw.FeatureExtractor()
    got = ex.transform(shuffled)
    assert got["ts"].is_sorted()
    assert_frame_equal(got.sort("id"), ex.transform(events).sort("id"))


def test_csv_with_flat_header_columns_equals_the_cli_table_output(tmp_path: Path) -> None:
    events = gw.simulate(seed=6, duration="2m", users=20)
    flat = events.unnest("headers", separator=".").with_columns(
        pl.col("ts").dt.strftime("%Y-%m-%dT%H:%M:%S%.3fZ")
    )
    assert "headers.authorization" in flat.columns
    path = tmp_path / "log.csv"
    latest_first(flat).write_csv(path)
    got = gw.FeatureExtractor().transform(gw.read_log(path))
    assert_frame_equal(got.sort("id"), gw.FeatureExtractor().transform(events).sort("id"))
    # The CLI reads the same CSV and writes Parquet: the same table.
    out = tmp_path / "features.parquet"
    subprocess.run(
        [gatewatch_bin(), "features", "-i", path, "-o", out], check=True, capture_output=True
    )
    assert_frame_equal(pl.read_parquet(out), got)


def test_narrow_integer_and_categorical_columns_are_read() -> None:
    events = gw.simulate(seed=8, duration="1m", users=10)
    odd = events.with_columns(
        pl.col("status").cast(pl.UInt16),
        pl.col("method").cast(pl.Categorical),
        pl.col("resp_bytes").cast(pl.Int32),
    )
    ex = gw.FeatureExtractor()
    assert_frame_equal(ex.transform(odd), ex.transform(events))
    scores = gw.Model.default().score_samples(odd)
    assert_frame_equal(scores, gw.Model.default().score_samples(events))


def test_errors_have_a_class_per_kind_and_are_value_errors() -> None:
    for cls in (gw.ConfigError, gw.DataError, gw.ModelError):
        assert issubclass(cls, gw.GatewatchError)
        assert issubclass(cls, ValueError)
    with pytest.raises(gw.DataError) as e:
        gw.FeatureExtractor().transform(pl.DataFrame({"ts": [1]}))
    assert not isinstance(e.value, (gw.ConfigError, gw.ModelError))


def test_a_real_combined_log_reads_and_gives_the_features_of_the_cli(tmp_path: Path) -> None:
    import gzip
    from datetime import datetime

    raw = gzip.decompress(
        (ROOT / "tests/data/real/elastic-apache-2015/apache_logs.gz").read_bytes()
    ).split(b"\n")
    # The engine processes a log in arrival order (late lines are refused); this one is
    # shuffled within each minute, so both sides get it in time order.
    lines = sorted(
        (ln for ln in raw if ln.strip()),
        key=lambda ln: datetime.strptime(
            ln.split(b"[")[1].split(b"]")[0].decode(), "%d/%b/%Y:%H:%M:%S %z"
        ),
    )
    log = tmp_path / "access.log"
    log.write_bytes(b"\n".join(lines) + b"\n")
    # One line's user agent lacks its closing quote: refused, naming the line and field.
    with pytest.raises(gw.DataError, match=r"access\.log: line \d+: .*user_agent"):
        gw.read_log(log)
    events = gw.read_log(log, errors="skip")
    assert events.height == len(lines) - 1
    assert events["headers"].struct.field("referer").null_count() < events.height
    got = gw.FeatureExtractor().transform(events)
    out = tmp_path / "features.ndjson"
    subprocess.run(
        [gatewatch_bin(), "features", "--format", "combined", "-i", log, "-o", out],
        check=True,
        capture_output=True,
    )
    compare(got, pl.read_ndjson(out, infer_schema_length=None))
    assert (got["asset_ratio_1m"] == 1.0).any() and (got["robots_count_1h"] >= 1.0).any()
