"""Mitigation rules on DataFrames: the same rules, decisions and back-test as
``gatewatch score --rules`` and ``gatewatch backtest`` (docs/RULES.md)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from gatewatch import _native
from gatewatch._frames import _compatible
from gatewatch._models import REASONS, Model

# The decision records' columns (`gatewatch score --decisions`); times are RFC 3339 text.
_DECISION_COLUMNS: dict[str, pl.DataType | type[pl.DataType]] = {
    "change": pl.String,
    "ts": pl.Datetime("ms", "UTC"),
    "id": pl.Int64,
    "rule": pl.String,
    "action": pl.String,
    "scope": pl.String,
    "value": pl.String,
    "mode": pl.String,
    "level": pl.Int64,
    "start": pl.Datetime("ms", "UTC"),
    "until": pl.Datetime("ms", "UTC"),
    "duration_s": pl.Float64,
    "score": pl.Float64,
    "reasons": pl.List(pl.String),
    "hits": pl.Int64,
    "why": pl.String,
}

_TIMES = ("ts", "start", "until")


class Rules:
    """A rules file compiled against a model's features and detectors.

    Examples
    --------
    >>> import gatewatch as gw
    >>> rules = gw.Rules.default()
    >>> len(rules) > 0
    True
    >>> events = gw.simulate(seed=3, duration="2m", users=20, scenarios="credential_stuffing")
    >>> scored = rules.evaluate(events)
    >>> "decision_action" in scored.columns
    True
    """

    def __init__(self, text: str, model: Model | None = None, source: str = "rules") -> None:
        self._model = model if model is not None else Model.default()
        self._text = text
        self.source = source
        self._count = self._model._native.check_rules(text)

    @classmethod
    def load(cls, path: str | Path, model: Model | None = None) -> Rules:
        """Read and compile a rules file.

        Parameters
        ----------
        path : str or Path
            A rules file (TOML, docs/RULES.md).
        model : Model, optional
            The model whose scores the rules read (default: the built-in model).

        Raises
        ------
        gatewatch.ConfigError
            When a rule does not compile: the rule's id, the position in its condition and
            the reason.
        """
        return cls(Path(path).read_text(encoding="utf-8"), model, str(path))

    @classmethod
    def default(cls, model: Model | None = None) -> Rules:
        """The built-in rules shipped with the built-in model."""
        return cls(_native.default_rules(), model, "built-in")

    def __len__(self) -> int:
        return self._count

    @property
    def text(self) -> str:
        """The rules file's text (to extend: ``gw.Rules(rules.text + more, model)``)."""
        return self._text

    def _run(self, events: pl.DataFrame, reasons: int = 3) -> tuple[pl.DataFrame, str, str]:
        return self._model._native.decide(_compatible(events), self._text, reasons)

    def evaluate(self, events: pl.DataFrame, reasons: int = 3) -> pl.DataFrame:
        """Score and decide every event, as ``gatewatch score --rules``.

        Parameters
        ----------
        events : polars.DataFrame
            Events in the event schema (rules read request fields, so they take the events,
            not scores).
        reasons : int
            Reasons per event.

        Returns
        -------
        polars.DataFrame
            :meth:`Model.explain`'s columns, then the strongest decision covering each
            request (null where none does): ``decision_id``, ``decision_rule``,
            ``decision_action``, ``decision_scope``, ``decision_value``, ``decision_mode``,
            ``decision_until`` and ``decision_new`` (this request started or escalated it).
        """
        frame, _, _ = self._run(events, reasons)
        return frame.with_columns(
            pl.col("reasons").str.json_decode(REASONS),
            pl.col("decision_until").str.to_datetime(time_unit="ms", time_zone="UTC"),
        )

    def decisions(self, events: pl.DataFrame, reasons: int = 3) -> pl.DataFrame:
        """The decisions started, escalated and ended over the events, in order, as
        ``gatewatch score --decisions`` writes them (one row per change; ``reasons``: the
        top reasons kept of the request that caused each, as ``score --reasons``)."""
        _, text, _ = self._run(events, reasons)
        rows = [json.loads(line) for line in text.splitlines()]
        cols = {k: [r.get(k) for r in rows] for k in _DECISION_COLUMNS}
        for t in _TIMES:
            cols[t] = [None if v is None else v.replace("Z", "+00:00") for v in cols[t]]
        frame = pl.DataFrame(
            cols,
            schema={k: (pl.String if k in _TIMES else v) for k, v in _DECISION_COLUMNS.items()},
        )
        return frame.with_columns(
            pl.col(t).str.to_datetime(time_unit="ms", time_zone="UTC") for t in _TIMES
        )

    def backtest(self, events: pl.DataFrame) -> dict[str, pl.DataFrame]:
        """What the rules would have done, as ``gatewatch backtest`` prints it.

        Returns
        -------
        dict of polars.DataFrame
            ``"rules"``: per rule ``rule``, ``mode``, ``actions``, ``key``, ``matched``,
            ``decisions``, ``keys``, ``precision`` (the share of its decisions caused by
            requests not labelled ``normal``), ``errors``, ``no_key``. ``"labels"``: per
            label ``requests`` and the requests under an enforced ``block``, ``challenge``,
            ``rate_limit``, ``log`` decision, under ``shadow`` ones, ``clients`` and
            ``clients_stopped``. ``"coverage"``: per rule and attack label, the label's
            ``requests`` under the rule's decisions and their ``share``.
        """
        _, _, text = self._run(events, 0)
        b = json.loads(text)
        return {
            "rules": pl.DataFrame(
                b["rules"],
                schema={
                    "rule": pl.String,
                    "mode": pl.String,
                    "actions": pl.String,
                    "key": pl.String,
                    "matched": pl.Int64,
                    "decisions": pl.Int64,
                    "keys": pl.Int64,
                    "keys_exact": pl.Boolean,
                    "precision": pl.Float64,
                    "errors": pl.Int64,
                    "no_key": pl.Int64,
                },
            ),
            "labels": pl.DataFrame(
                b["labels"],
                schema={
                    "label": pl.String,
                    "requests": pl.Int64,
                    "block": pl.Int64,
                    "challenge": pl.Int64,
                    "rate_limit": pl.Int64,
                    "log": pl.Int64,
                    "shadow": pl.Int64,
                    "clients": pl.Int64,
                    "clients_stopped": pl.Int64,
                    "clients_exact": pl.Boolean,
                    "stopped_exact": pl.Boolean,
                },
            ),
            "coverage": pl.DataFrame(
                b["coverage"],
                schema={
                    "rule": pl.String,
                    "label": pl.String,
                    "requests": pl.Int64,
                    "share": pl.Float64,
                },
            ),
        }
