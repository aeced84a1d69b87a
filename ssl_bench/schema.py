"""What a protocol's result records name, in one declaration per protocol.

Every protocol class carries a ``Schema`` (``ssl_bench.protocols``): the dataset formats its
records are named after, each metric it writes with its unit and direction, the headline
metrics a summary leads with, and where its columns sit in a leaderboard. Records are checked
against it when an evaluation is stored, the published numbers (``ssl_bench/leaderboard/
reported.csv``) when they are loaded, and the leaderboard reads directions (best value,
improvement sign, plots) and headlines from it.

Metric names are exact, or families with typed placeholders: ``top1_k{k:int}`` matches
``top1_k20``; kinds are ``int`` (digits), ``num`` (a decimal number) and ``name`` (a word that
starts with a letter: letters, digits, underscores).

Dataset naming: a record's dataset is the format's own name on a real dataset (``imagenet``,
``imagenet-c``) and the generated set's name on the embedded data (``embedded-imagenet``,
``embedded-c``: ``ssl_bench.data.resolve.EMBEDDED_NAMES``), so both are accepted for a format.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

from .data.resolve import EMBEDDED_NAMES

HIGHER, LOWER, NEUTRAL = "higher", "lower", "none"
DIRECTIONS = (HIGHER, LOWER, NEUTRAL)
UNITS = ("percent", "fraction", "cosine", "count", "raw")
_KINDS = {"int": r"\d+", "num": r"\d+(?:\.\d+)?", "name": r"[A-Za-z][A-Za-z0-9_]*"}
_PLACEHOLDER = re.compile(r"\{(\w+):(\w+)\}")


def dataset_names(fmt: str) -> tuple[str, ...]:
    """The dataset names records of format ``fmt`` carry: the real one and the embedded one."""
    return (fmt, EMBEDDED_NAMES[fmt]) if fmt in EMBEDDED_NAMES else (fmt,)


def dataset_format(dataset: str, formats) -> str | None:
    """The format among ``formats`` whose records are named ``dataset`` (None: none of them)."""
    return next((fmt for fmt in formats if dataset in dataset_names(fmt)), None)


@dataclass(frozen=True)
class Metric:
    """One metric (or family of metrics) a protocol writes.

    ``unit``: percent, fraction, cosine, count (a number of items) or raw (a value in its own
    scale, e.g. a feature norm). ``direction``: ``higher`` or ``lower`` is better,
    or ``none`` for a statistic that is not a score (a standard deviation, a chosen threshold):
    never marked best, no improvement. ``datasets``: the formats it is reported on (empty:
    every format of the protocol).
    """

    name: str
    unit: str = "percent"
    direction: str = HIGHER
    datasets: tuple[str, ...] = ()
    description: str = ""

    def __post_init__(self):
        if self.unit not in UNITS:
            raise ValueError(f"metric {self.name}: unit {self.unit!r} is not one of {UNITS}")
        if self.direction not in DIRECTIONS:
            raise ValueError(f"metric {self.name}: direction {self.direction!r} is not one of {DIRECTIONS}")
        for _, kind in _PLACEHOLDER.findall(self.name):
            if kind not in _KINDS:
                raise ValueError(f"metric {self.name}: placeholder kind {kind!r} is not one of {tuple(_KINDS)}")

    @cached_property
    def pattern(self) -> re.Pattern:
        parts = _PLACEHOLDER.split(self.name)  # literal, field, kind, literal, ...
        regex = "".join(re.escape(part) if i % 3 == 0 else (_KINDS[part] if i % 3 == 2 else "")
                        for i, part in enumerate(parts))
        return re.compile(regex)

    def matches(self, metric: str) -> bool:
        return self.pattern.fullmatch(metric) is not None


@dataclass(frozen=True)
class Schema:
    """The records of one protocol: dataset formats, metrics, headline metrics, column position.

    ``order``: leaderboards place protocols by it, lowest first (cheap frozen-feature
    protocols before the trained ones). ``headline``: exact metric names, each matched by a
    declared metric.
    """

    datasets: tuple[str, ...]
    metrics: tuple[Metric, ...]
    headline: tuple[str, ...]
    order: int

    def __post_init__(self):
        for name in self.headline:
            if self.metric(name) is None:
                raise ValueError(f"headline metric {name!r} matches no declared metric")

    def metric(self, metric: str, dataset: str | None = None) -> Metric | None:
        """The declaration of ``metric`` (reported on ``dataset``, when given), else None."""
        fmt = None
        if dataset is not None:
            fmt = dataset_format(dataset, self.datasets)
            if fmt is None:
                return None
        for declared in self.metrics:
            if declared.matches(metric) and (fmt is None or not declared.datasets or fmt in declared.datasets):
                return declared
        return None

    def rank(self, metric: str) -> int:
        """Position of ``metric``'s declaration (for column order; undeclared last)."""
        return next((i for i, m in enumerate(self.metrics) if m.matches(metric)), len(self.metrics))

    def unmatched(self, records) -> list[tuple[str, str]]:
        """(dataset, metric) of the records this schema does not declare."""
        return [(r["dataset"], r["metric"]) for r in records if self.metric(r["metric"], r["dataset"]) is None]
