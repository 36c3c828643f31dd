"""The supervised path on real labels: a gradient-boosted classifier over gatewatch's features
of the public Apache log (tests/data/real/elastic-apache-2015), exported to ONNX and scored
by `gatewatch score`.

    scripts/evaluate-supervised        (sets up .venv and the binary, then runs this)

Labels: an address is a robot when one of its requests declares an automated client in its
user agent (the user-agent half of scripts/evaluate_real.py's labels; `robots_count` is then
a feature, not part of the label). The user agent is blanked before gatewatch reads the log.
Split by address (a session-level split: no address is in both halves): addresses whose
SHA-256 starts with an even byte train, the others test. The classifier's parameters are
fixed (100 trees of depth 3, learning rate 0.1), not tuned on either half.

Per test address: the mean of its requests' probabilities (the service's scores) is its
score; it is called a robot at 0.5. Printed: ROC-AUC, precision, recall and F1 of that
call, the share of people's addresses called robots, and the largest difference between the
service's scores and scikit-learn's own probabilities.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnxruntime
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.ensemble import GradientBoostingClassifier

sys.path.insert(0, str(Path(__file__).resolve().parent))
import evaluate_real

import gatewatch as gw


def in_training(address: str) -> bool:
    return hashlib.sha256(address.encode()).digest()[0] % 2 == 0


def main() -> None:
    binary, out = sys.argv[1], Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    log, _, labels, _ = evaluate_real.prepare(out)
    schema = json.loads(
        subprocess.run(
            [binary, "features", "--schema"], check=True, capture_output=True, text=True
        ).stdout
    )
    names = [f["name"] for f in schema["features"]]
    feats = out / "features.ndjson"
    subprocess.run(
        [binary, "features", "--format=combined", f"-i{log}", f"-o{feats}"],
        check=True,
        stderr=subprocess.DEVNULL,
    )
    clients, rows = [], []
    with feats.open() as f:
        for line in f:
            r = json.loads(line)
            clients.append(r["client"].removeprefix("ip:"))
            rows.append([r[n] for n in names])
    x = np.asarray(rows, dtype=np.float32)
    y = np.asarray([labels[c]["ua"] for c in clients], dtype=np.int64)
    train = np.asarray([in_training(c) for c in clients])
    model = GradientBoostingClassifier(n_estimators=100, max_depth=3, random_state=0)
    model.fit(x[train], y[train])
    onx = to_onnx(
        model,
        initial_types=[("input", FloatTensorType([None, len(names)]))],
        options={id(model): {"zipmap": False}},
    )
    onnx_path = out / "gbdt.onnx"
    onnx_path.write_bytes(onx.SerializeToString())
    folder = out / "gbdt"
    gw.export_model(folder, onnx_path, names, threshold=0.5, name="robots", version="1")

    lib = glob.glob(str(Path(onnxruntime.__file__).parent / "capi" / "libonnxruntime.so*"))[0]
    scores = out / "scores-gbdt.ndjson"
    args = ["score", f"--model={folder}", "--format=combined", "--reasons=0"]
    subprocess.run(
        [binary, *args, f"-i{log}", f"-o{scores}"],
        check=True,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "ORT_DYLIB_PATH": lib},
    )
    service = []
    with scores.open() as f:
        service = [json.loads(line)["score"] for line in f]
    sklearn_p = model.predict_proba(x)[:, 1]
    parity = float(np.max(np.abs(np.asarray(service) - sklearn_p)))

    per: dict[str, list[float]] = defaultdict(list)
    for c, s, t in zip(clients, service, train, strict=True):
        if not t:
            per[c].append(s)
    mean = {c: float(np.mean(v)) for c, v in per.items()}
    pos = [mean[c] for c in mean if labels[c]["ua"]]
    neg = [mean[c] for c in mean if not labels[c]["ua"]]
    tp = sum(s >= 0.5 for s in pos)
    fp = sum(s >= 0.5 for s in neg)
    precision = tp / max(1, tp + fp)
    recall = tp / len(pos)
    f1 = 2 * precision * recall / max(1e-12, precision + recall)
    print(
        "| test addresses: robots / other | ROC-AUC | precision | recall | F1 | other called "
        "robots | service vs scikit-learn |"
    )
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {len(pos)} / {len(neg)} | {evaluate_real.auc(pos, neg):.3f} | {precision:.2f} | "
        f"{recall:.2f} | {f1:.2f} | {fp / len(neg):.1%} | {parity:.1e} |"
    )
    top = sorted(zip(model.feature_importances_, names, strict=True), reverse=True)[:6]
    print("\nlargest feature importances: " + ", ".join(f"{n} {v:.2f}" for v, n in top))


if __name__ == "__main__":
    main()
