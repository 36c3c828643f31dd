"""The ONNX benchmark's model and its Python peer figures.

Usage: python onnx_bench.py OUT_DIR

Trains a gradient-boosted tree ensemble (100 trees, depth 6, 40 features) on synthetic
data, exports it to ONNX (zipmap off) with a gatewatch manifest into OUT_DIR, writes the
benchmark rows (OUT_DIR/rows.f32, 40 float32 values per row), and times onnxruntime in
Python on them with one thread at several batch sizes (median of five passes), printing
rows/s per batch size as `python <batch> <rows/s>` lines.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.ensemble import GradientBoostingClassifier

FEATURES = 40
ROWS = 65536
BATCHES = [1, 16, 64, 256, 1024, 4096]


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    x = rng.lognormal(size=(ROWS, FEATURES)).astype(np.float32)
    y = (np.log(x[:, 0]) + np.log(x[:, 1]) * np.log(x[:, 2]) > 0.3).astype(np.int64)
    model = GradientBoostingClassifier(n_estimators=100, max_depth=6, subsample=0.5, random_state=0)
    model.fit(x[:8000], y[:8000])
    onx = to_onnx(
        model,
        initial_types=[("input", FloatTensorType([None, FEATURES]))],
        options={id(model): {"zipmap": False}},
    )
    (out / "model.onnx").write_bytes(onx.SerializeToString())
    manifest = {
        "format_version": 1,
        "name": "bench-gbdt",
        "version": "1",
        "kind": "onnx",
        "feature_set": "none",
        "features": [f"f{i}" for i in range(FEATURES)],
        "outputs": ["probabilities"],
        "threshold": 0.5,
        "calibration": "none",
        "training": {"events": 8000, "clients": 0, "source": "synthetic", "label_filter": None},
        "artefacts": ["model.onnx"],
        "onnx": {"file": "model.onnx", "output": "probabilities", "column": 1},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    x.tofile(out / "rows.f32")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(
        str(out / "model.onnx"), sess_options=opts, providers=["CPUExecutionProvider"]
    )
    for b in BATCHES:
        n = min(ROWS, max(b * 64, 16384))
        times = []
        for _ in range(5):
            t = time.perf_counter()
            for i in range(0, n, b):
                sess.run(["probabilities"], {"input": x[i : i + b]})
            times.append(time.perf_counter() - t)
        print(f"python {b} {n / statistics.median(times):.0f}", flush=True)


if __name__ == "__main__":
    main()
