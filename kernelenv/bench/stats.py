"""The figures a benchmark reports: percentiles of samples, rows of a table, and target checks."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Figures:
    """Percentiles of one contender's samples, in the row's unit."""

    p10: float
    p50: float
    p90: float
    p99: float
    n: int

    @classmethod
    def of(cls, samples: list[float], scale: float = 1.0) -> Figures:
        """Percentiles of ``samples`` times ``scale`` (1000 turns seconds into ms)."""
        if not samples:
            raise ValueError("no samples to summarise")
        values = sorted(v * scale for v in samples)
        if len(values) == 1:
            only = values[0]
            return cls(only, only, only, only, 1)
        deciles = statistics.quantiles(values, n=10, method="inclusive")
        centiles = statistics.quantiles(values, n=100, method="inclusive")
        median = statistics.median(values)
        # Interpolating between equal samples can round past them (p10 above p50 by 1e-14).
        p10 = min(max(deciles[0], values[0]), median)
        p90 = max(min(deciles[-1], values[-1]), median)
        p99 = max(min(centiles[-1], values[-1]), p90)
        return cls(p10, median, p90, p99, len(values))


@dataclass
class Row:
    """One line of the results table: a contender in a group, or why it was not measured."""

    key: str  # stable id, e.g. "step.kernelenv", for comparing runs
    group: str
    contender: str
    unit: str
    figures: Figures | None = None
    skipped: str | None = None  # why there are no figures
    note: str = ""


@dataclass
class Check:
    """A target from the performance brief and the figure measured against it."""

    key: str
    what: str
    value: float | None
    unit: str
    target: str
    met: bool | None  # None: not measured in this run


@dataclass
class LoadRun:
    """One contender of the load test: many sessions stepping at once."""

    contender: str
    sessions: int
    steps_per_session: int
    errors: int  # steps or sessions that failed
    cross_talk: int  # steps that saw another session's state, or a wrong episode
    throughput_steps_s: float | None  # completed steps per wall-clock second
    wall_s: float | None
    latency: Figures | None  # per step, in ms
    error_examples: list[str] = field(default_factory=list)


@dataclass
class Results:
    """Everything one benchmark run measured, plus where and how."""

    title: str
    mode: str
    machine: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    load: list[LoadRun] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def row(self, key: str) -> Row | None:
        """The row with ``key``, if there is one."""
        return next((r for r in self.rows if r.key == key), None)

    def p50(self, key: str) -> float | None:
        """The median of the row ``key``, or None if it was not measured."""
        row = self.row(key)
        return row.figures.p50 if row is not None and row.figures is not None else None

    def check(
        self, key: str, what: str, value: float | None, unit: str, target: str, limit: float,
        *, at_least: bool = False,
    ) -> None:
        """Record ``value`` against a target: at most ``limit`` (or at least, if ``at_least``)."""
        met = None if value is None else (value >= limit if at_least else value <= limit)
        self.checks.append(Check(key, what, value, unit, target, met))

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict of the whole run."""
        return asdict(self)
