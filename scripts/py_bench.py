"""FeatureExtractor.transform against the same features written in plain polars.

Usage: python py_bench.py [ROWS] [CONFIG]

Builds a synthetic events frame (default 5,000,000 rows: 50,000 clients over two hours,
12 path shapes with ids, 6% errors), then times, once each on the same frame:

- gatewatch: ``FeatureExtractor().transform(df)`` (every default feature, 93 columns);
- gatewatch again with ``scripts/bench-six.toml``, which selects the same six features as
  the peer (``[features] select``: only those are computed and output);
- polars: request count, distinct endpoints and error ratio per client over 1 min and
  10 min, point-in-time (each row's window ends at its own timestamp, the row included),
  written as a data scientist would with ``rolling`` over the client groups.

Prints rows/s for each and the ratios, from one run. With CONFIG (a gatewatch TOML file),
gatewatch computes that configuration's features instead of the two runs above.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

import gatewatch as gw


def events(rows: int) -> pl.DataFrame:
    rng = np.random.default_rng(3)
    clients = rng.integers(0, 50_000, rows)
    ts = np.sort(rng.integers(0, 2 * 3600 * 1000, rows)) + 1_767_603_600_000
    shapes = np.array(
        [f"/v1/{k}/{{}}" for k in ("users", "orders", "items", "carts", "reviews", "tickets")]
        + [f"/v1/{k}" for k in ("search", "products", "login", "cart", "health", "me")]
    )
    shape = rng.integers(0, len(shapes), rows)
    ids = rng.integers(1, 100_000, rows)
    paths = [s.format(i) if "{}" in s else s for s, i in zip(shapes[shape], ids, strict=True)]
    status = np.where(rng.random(rows) < 0.06, 404, 200)
    ip = [f"10.{c // 65536}.{(c // 256) % 256}.{c % 256}" for c in clients]
    return pl.DataFrame(
        {
            "ts": pl.Series(ts).cast(pl.Datetime("ms", "UTC")),
            "client_ip": ip,
            "method": "GET",
            "host": "api.example.com",
            "path": paths,
            "status": status,
        }
    )


def plain_polars(df: pl.DataFrame) -> pl.DataFrame:
    d = df.with_columns(
        client=pl.col("client_ip"),
        endpoint=pl.col("path").str.replace(r"/\d+$", "/{id}"),
        error=(pl.col("status") >= 400).cast(pl.Float64),
    ).sort("client", "ts")
    out = []
    for period in ("1m", "10m"):
        out.append(
            d.rolling(index_column="ts", period=period, group_by="client").agg(
                pl.len().alias(f"req_count_{period}"),
                pl.col("endpoint").n_unique().alias(f"distinct_endpoints_{period}"),
                pl.col("error").mean().alias(f"error_ratio_{period}"),
            )
        )
    return out[0].hstack(out[1].drop("client", "ts"))


def timed(extractor: gw.FeatureExtractor, df: pl.DataFrame) -> float:
    t = time.perf_counter()
    feats = extractor.transform(df)
    g = time.perf_counter() - t
    assert feats.height == df.height
    return g


def main() -> None:
    rows = int(sys.argv[1]) if len(sys.argv) > 1 else 5_000_000
    config = sys.argv[2] if len(sys.argv) > 2 else None
    df = events(rows)
    runs: list[tuple[str, float]] = []
    if config is not None:
        ex = gw.FeatureExtractor(config)
        runs.append(
            (f"gatewatch transform, {config} ({len(ex.feature_names)} features)", timed(ex, df))
        )
    else:
        ex = gw.FeatureExtractor()
        runs.append((f"gatewatch transform, all {len(ex.feature_names)} features", timed(ex, df)))
        six = Path(__file__).with_name("bench-six.toml")
        ex = gw.FeatureExtractor(six)
        names = ", ".join(ex.feature_names)
        runs.append((f"gatewatch transform, the peer's six ({names})", timed(ex, df)))
    t = time.perf_counter()
    peer = plain_polars(df)
    p = time.perf_counter() - t
    assert peer.height == rows
    print(f"rows: {rows:,}")
    for what, g in runs:
        print(f"{what}: {g:.2f} s, {rows / g:,.0f} rows/s; polars time / this time: {p / g:.2f}")
    print(f"plain polars rolling (6 features): {p:.2f} s, {rows / p:,.0f} rows/s")


if __name__ == "__main__":
    main()
