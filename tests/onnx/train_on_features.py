"""Train a gradient-boosted classifier on `gatewatch features` output and ship it as a model folder.

Usage: python train_on_features.py FEATURES_NDJSON SCHEMA_JSON OUT_DIR

FEATURES_NDJSON is what `gatewatch features` wrote for a labelled log, SCHEMA_JSON what
`gatewatch features --schema` printed (feature names and the registry hash). The classifier
learns abuse (any label but `normal`) from every feature, is exported to ONNX with zipmap
off, and OUT_DIR gets model.onnx, a manifest (kind `onnx`, reference values = medians of the
normal rows) and expected.json: onnxruntime-in-Python's probability of abuse per event id,
which the service must reproduce from the raw events.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.ensemble import GradientBoostingClassifier


def main() -> None:
    features_path, schema_path, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    schema = json.loads(schema_path.read_text())
    names = [f["name"] for f in schema["features"]]
    ids, labels, rows = [], [], []
    with features_path.open() as f:
        for line in f:
            r = json.loads(line)
            ids.append(r["id"])
            labels.append(r["label"])
            rows.append([r[n] for n in names])
    x = np.asarray(rows, dtype=np.float32)
    y = np.asarray([lbl != "normal" for lbl in labels], dtype=np.int64)
    model = GradientBoostingClassifier(n_estimators=40, max_depth=3, random_state=0)
    model.fit(x, y)
    onx = to_onnx(
        model,
        initial_types=[("input", FloatTensorType([None, len(names)]))],
        options={id(model): {"zipmap": False}},
    )
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.onnx").write_bytes(onx.SerializeToString())
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    proba = sess.run(["probabilities"], {"input": x})[0][:, 1]
    normal = x[y == 0].astype(np.float64)
    manifest = {
        "format_version": 1,
        "name": "gbdt",
        "version": "1",
        "kind": "onnx",
        "feature_set": schema["hash"],
        "features": names,
        "outputs": ["probabilities"],
        "threshold": 0.5,
        "calibration": "none: the classifier's probability of abuse",
        "training": {
            "events": len(ids),
            "clients": 0,
            "source": features_path.name,
            "label_filter": None,
        },
        "artefacts": ["model.onnx"],
        "onnx": {
            "file": "model.onnx",
            "output": "probabilities",
            "column": 1,
            "reference": [float(v) for v in np.median(normal, axis=0)],
        },
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    expected = {str(i): float(p) for i, p in zip(ids, proba, strict=True)}
    (out / "expected.json").write_text(json.dumps(expected))


if __name__ == "__main__":
    main()
