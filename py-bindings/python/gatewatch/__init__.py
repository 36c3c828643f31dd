"""gatewatch: abuse and anomaly detection for API traffic, on polars DataFrames.

The features and scores come from the same Rust engine as the ``gatewatch`` command and
service, so a notebook computes exactly what production computes.

Examples
--------
>>> import gatewatch as gw
>>> events = gw.simulate(seed=7, duration="2m", users=20)
>>> features = gw.FeatureExtractor().transform(events)
>>> features.height == events.height
True
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from gatewatch import _native
from gatewatch._frames import (
    FeatureExtractor,
    feature_docs,
    feature_schema,
    read_log,
    simulate,
)
from gatewatch._models import Baseline, Model, check_parity, export_model
from gatewatch._native import ConfigError, DataError, GatewatchError, ModelError
from gatewatch._rules import Rules
from gatewatch._univariate import EwmaDetector, RelativeEntropyDetector

__all__ = [
    "Baseline",
    "ConfigError",
    "DataError",
    "EwmaDetector",
    "FeatureExtractor",
    "GatewatchError",
    "Model",
    "ModelError",
    "RelativeEntropyDetector",
    "Rules",
    "__version__",
    "check_parity",
    "export_model",
    "feature_docs",
    "feature_schema",
    "read_log",
    "simulate",
]

__version__: str = _native.__version__


def _point_at_onnxruntime() -> None:
    """Let the engine find ONNX Runtime in this interpreter's ``onnxruntime`` package.

    ONNX models run on the ONNX Runtime library, loaded when the first one is. Unless
    ``ORT_DYLIB_PATH`` names one, the library of the installed ``onnxruntime`` wheel is used
    (found without importing the package).
    """
    if os.environ.get("ORT_DYLIB_PATH"):
        return
    spec = importlib.util.find_spec("onnxruntime")
    if spec is None or not spec.submodule_search_locations:
        return
    for where in spec.submodule_search_locations:
        capi = Path(where) / "capi"
        libs = sorted(capi.glob("libonnxruntime.so*")) + sorted(capi.glob("libonnxruntime*.dylib"))
        libs += sorted(capi.glob("onnxruntime.dll"))
        if libs:
            os.environ["ORT_DYLIB_PATH"] = str(libs[-1])
            return


_point_at_onnxruntime()


_point_at_onnxruntime()

# The public objects live in private modules; they present themselves as ``gatewatch``'s.
for _name in __all__:
    _obj = globals()[_name]
    if getattr(_obj, "__module__", "") in (
        "gatewatch._frames",
        "gatewatch._models",
        "gatewatch._univariate",
    ):
        _obj.__module__ = __name__
del _name, _obj
