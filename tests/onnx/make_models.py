"""Train tiny scikit-learn models, export them to ONNX and record onnxruntime's outputs.

Usage: python make_models.py OUT_DIR N_FEATURES

Writes OUT_DIR/<name>.onnx for every model, OUT_DIR/inputs.json (the test rows, float32
values) and OUT_DIR/cases.json: per model its file, the output and column to read, whether
it is negated, and the values onnxruntime in Python computed for the test rows. The Rust
parity test feeds the same rows through gatewatch's ONNX path and compares.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
from skl2onnx import to_onnx
from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType
from sklearn.ensemble import (
    GradientBoostingClassifier,
    IsolationForest,
    RandomForestClassifier,
)
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LinearRegression
from sklearn.neural_network import MLPClassifier


def data(n_features: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    x = rng.lognormal(mean=0.0, sigma=1.0, size=(3000, n_features)).astype(np.float32)
    x[:, 0] = rng.integers(0, 50, size=3000)
    score = np.log1p(x[:, 0]) + 0.5 * x[:, 1] - 0.3 * x[:, 2] * x[:, 3]
    y = (score > np.median(score)).astype(np.int64)
    return x, y


def main() -> None:
    out = Path(sys.argv[1])
    n_features = int(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    x, y = data(n_features)
    x_train, x_test = x[:2500], x[2500:]
    y_train = y[:2500]
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    f32 = [("input", FloatTensorType([None, n_features]))]
    f64 = [("input", DoubleTensorType([None, n_features]))]
    models = {
        "gbdt": (
            GradientBoostingClassifier(n_estimators=30, max_depth=4, random_state=0),
            f32,
            {"zipmap": False},
            None,
            ("probabilities", 1, False),
        ),
        "random_forest": (
            RandomForestClassifier(n_estimators=20, max_depth=6, random_state=0),
            f32,
            {"zipmap": False},
            None,
            ("probabilities", 1, False),
        ),
        "isolation_forest": (
            IsolationForest(n_estimators=40, random_state=0),
            f32,
            None,
            {"": 15, "ai.onnx.ml": 3},
            ("scores", 0, True),
        ),
        "mlp": (
            MLPClassifier(hidden_layer_sizes=(16, 8), max_iter=200, random_state=0),
            f32,
            {"zipmap": False},
            None,
            ("probabilities", 1, False),
        ),
        "linear_f64": (
            LinearRegression(),
            f64,
            None,
            None,
            ("variable", 0, False),
        ),
        "random_forest_zipmap": (
            RandomForestClassifier(n_estimators=3, max_depth=3, random_state=0),
            f32,
            None,
            None,
            ("output_probability", 1, False),
        ),
    }
    cases = {}
    for name, (model, types, options, opset, (output, column, negate)) in models.items():
        target = y_train.astype(np.float64) if name == "linear_f64" else y_train
        model.fit(x_train, target)
        kwargs = {"initial_types": types}
        if options is not None:
            kwargs["options"] = {id(model): options}
        if opset is not None:
            kwargs["target_opset"] = opset
        onx = to_onnx(model, **kwargs)
        path = out / f"{name}.onnx"
        path.write_bytes(onx.SerializeToString())
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = x_test.astype(np.float64) if types is f64 else x_test
        expected = None
        if name != "random_forest_zipmap":
            value = sess.run([output], {"input": feed})[0]
            value = value.reshape(len(x_test), -1)[:, column].astype(np.float64)
            expected = [(-v if negate else v) for v in value.tolist()]
        cases[name] = {
            "file": path.name,
            "output": output,
            "column": column,
            "negate": negate,
            "expected": expected,
        }
    (out / "inputs.json").write_text(json.dumps([[float(v) for v in r] for r in x_test]))
    (out / "cases.json").write_text(json.dumps(cases, indent=1))


if __name__ == "__main__":
    main()
