"""The one registry of metrics: name, unit, which way is better, where the figure comes from.

The table itself is data, ``metrics.toml`` beside this module (a new metric is one table there);
this module reads it once and gives the views below.

Every figure edgekit names is registered here once, and every reader takes its unit and
direction from here: the bench records and their views, the gate's threshold language,
``edgekit eval`` and ``edgekit sweep`` (quality figures), and the benchmark scripts.

Sources:

* ``run``: measured in every bench run (edgekit/bench/, one value per run);
* ``quality``: the quality evaluation's headline figures (edgekit/quality.py), stored in the
  bundle manifest's ``quality`` record; a bench reads them from there, one value per bundle;
* ``eval``: the quality evaluation's detail figures; in ``edgekit eval``'s result only,
  never in a bench result.

``METRICS`` is what a bench result holds and its ``metrics`` table lists (``run`` and
``quality``); ``EVAL_METRICS`` is what an ``edgekit eval`` result holds (``quality`` and
``eval``); ``REGISTRY`` is all of them.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

from edgekit.errors import UsageError

HIGHER = "higher"
LOWER = "lower"

RUN = "run"
QUALITY = "quality"
EVAL = "eval"


@dataclass(frozen=True)
class Metric:
    """A named quantity with its unit and which way is better."""

    name: str
    unit: str
    direction: str  # HIGHER or LOWER is better
    description: str
    label: str  # short human label used in phrases ("decode", "peak anonymous memory")
    source: str = RUN  # RUN | QUALITY | EVAL (see the module's docstring)

    @property
    def higher_is_better(self) -> bool:
        return self.direction == HIGHER


TABLE = Path(__file__).with_name("metrics.toml")  # the registry's data: one table per metric


def _load(path: Path = TABLE) -> tuple[Metric, ...]:
    """The metrics of ``path`` in file order; a malformed table is a bug in edgekit, refused at import."""
    with open(path, "rb") as f:
        table = tomllib.load(f)
    out = []
    for name, t in table.items():
        m = Metric(name, t["unit"], t["direction"], t["description"], t["label"], t["source"])
        if m.direction not in (HIGHER, LOWER) or m.source not in (RUN, QUALITY, EVAL) or set(t) != _KEYS:
            raise ValueError(f"{path}: malformed metric [{name}]: {t!r}")
        out.append(m)
    return tuple(out)


_KEYS = {"unit", "direction", "label", "source", "description"}
_METRIC_LIST = _load()

REGISTRY: Mapping[str, Metric] = MappingProxyType({m.name: m for m in _METRIC_LIST})
# what a bench result holds (and lists in its "metrics" table)
METRICS: Mapping[str, Metric] = MappingProxyType({m.name: m for m in _METRIC_LIST if m.source in (RUN, QUALITY)})
# what an `edgekit eval` result holds
EVAL_METRICS: Mapping[str, Metric] = MappingProxyType({m.name: m for m in _METRIC_LIST
                                                       if m.source in (QUALITY, EVAL)})
RUN_METRICS: tuple[str, ...] = tuple(m.name for m in _METRIC_LIST if m.source == RUN)
QUALITY_METRICS: tuple[str, ...] = tuple(m.name for m in _METRIC_LIST if m.source == QUALITY)


def metric(name: str) -> Metric:
    """The registered metric ``name``; an unknown name is a usage error listing the known ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise UsageError(f"unknown metric {name!r}", hint="known metrics: " + ", ".join(REGISTRY)) from None
