from pathlib import Path
from typing import final

import polars as pl

__all__ = [
    "EVENT_COLUMNS",
    "ConfigError",
    "DataError",
    "FeatureExtractor",
    "GatewatchError",
    "Model",
    "ModelError",
    "__version__",
    "check_parity",
    "default_rules",
    "export_onnx",
    "feature_docs",
    "feature_schema_json",
    "fit_baseline",
    "read_combined",
    "simulate",
    "univariate",
]

__version__: str
EVENT_COLUMNS: list[str]

class GatewatchError(ValueError): ...
class ConfigError(GatewatchError): ...
class DataError(GatewatchError): ...
class ModelError(GatewatchError): ...

def simulate(
    seed: int = 1,
    duration: str = "10m",
    users: int = 200,
    scenarios: list[str] | None = None,
    start: str | None = None,
) -> pl.DataFrame: ...
def feature_schema_json() -> str: ...
def feature_docs() -> str: ...
def default_rules() -> str: ...

@final
class FeatureExtractor:
    def __new__(cls, config: str | Path | None = None) -> FeatureExtractor: ...
    def transform(self, df: pl.DataFrame) -> pl.DataFrame: ...
    def feature_names(self) -> list[str]: ...
    def feature_set(self) -> str: ...

@final
class Model:
    def __new__(cls, path: str | Path | None = None, config: str | Path | None = None) -> Model: ...
    def score(self, df: pl.DataFrame, reasons: int = 3, batch: int = 256) -> pl.DataFrame: ...
    def alerts(self, df: pl.DataFrame) -> str: ...
    def decide(
        self, df: pl.DataFrame, rules: str, reasons: int = 3, batch: int = 256
    ) -> tuple[pl.DataFrame, str, str]: ...
    def check_rules(self, rules: str) -> int: ...
    @property
    def id(self) -> str: ...
    @property
    def detectors(self) -> list[str]: ...

def check_parity(
    model_dir: str | Path | None, df: pl.DataFrame, config: str | Path | None = None
) -> tuple[float, int, int, int]: ...
def fit_baseline(
    features: pl.DataFrame,
    path: str | Path,
    name: str = "baseline",
    top_k: int = 3,
    threshold: float = 0.999,
    config: str | Path | None = None,
    detectors: list[str] = ...,
    contamination: float = 0.0,
) -> str: ...
def read_combined(
    path: str | Path, config: str | Path | None = None
) -> tuple[pl.DataFrame, list[tuple[int, str]]]: ...
def export_onnx(
    path: str | Path,
    onnx_path: str | Path,
    features: list[str],
    threshold: float,
    output: str,
    column: int,
    negate: bool,
    reference: list[float],
    calibration_scores: list[float],
    name: str,
    version: str,
    config: str | Path | None = None,
) -> str: ...
def univariate(
    df: pl.DataFrame,
    kind: str,
    half_life: float = 1000.0,
    half_life_secs: float | None = None,
    warmup: int = 20,
    min_std: float = 1e-9,
    rel_std: float = 1e-3,
    season_secs: float | None = None,
    repeat_window: int = 150,
    repeat_weight: float = 0.7,
    reference: int = 240,
    recent: int = 30,
    bins: int = 8,
) -> tuple[pl.DataFrame, list[tuple[int, str]]]: ...
