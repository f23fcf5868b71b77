"""Typed records of a quality evaluation and of a layer sweep.

:class:`QualityResult` reads what :func:`edgekit.quality.evaluate` returns (and the build's
quality step stores as the manifest's ``quality``): the figures every reader uses as fields,
every other key kept in ``extra``. :class:`SweepResult` / :class:`SweepRow` are what
:func:`edgekit.builder.sweep.run_sweep` returns. ``to_dict()`` gives the JSON each has always
written, key for key and in the same order.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

from edgekit.errors import ConfigError

# the figures every evaluation records, in the order evaluate() writes them
QUALITY_FIGURES = ("ppl_ratio", "top1_agreement", "kl_mean", "ppl_candidate", "ppl_baseline", "tokens",
                   "eval_text_sha256")


@dataclass(frozen=True)
class QualityResult:
    """One evaluation of a candidate bundle against its fp16 baseline."""

    ppl_ratio: float
    top1_agreement: float
    kl_mean: float
    ppl_candidate: float
    ppl_baseline: float
    tokens: int
    eval_text_sha256: str
    data: Mapping[str, Any] = field(repr=False, default_factory=dict)  # the whole record, as written

    @property
    def kl_max(self) -> float | None:
        return self.data.get("kl_max")

    @property
    def top1_accuracy_candidate(self) -> float | None:
        return self.data.get("top1_accuracy_candidate")

    @property
    def top1_accuracy_baseline(self) -> float | None:
        return self.data.get("top1_accuracy_baseline")

    @property
    def candidate(self) -> str | None:
        return self.data.get("candidate")

    @property
    def baseline(self) -> str | None:
        b = self.data.get("baseline")
        return b if isinstance(b, str) else None  # the manifest's quality record has a {bundle, sha256} here

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "quality result") -> "QualityResult":
        missing = [k for k in QUALITY_FIGURES if k not in d]
        if missing:
            raise ConfigError(f"{source}: no {', '.join(missing)} (not an evaluation of a bundle)")
        return cls(*(d[k] for k in QUALITY_FIGURES), data=dict(d))

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.data)  # keys keep their written order; the figures are the fields' values
        out.update({k: getattr(self, k) for k in QUALITY_FIGURES})
        return out


@dataclass(frozen=True)
class SweepRow:
    """One build of the sweep (the reference, a layer group at 2 bits, or the scheme itself)."""

    kind: str  # reference | group | scheme
    scheme: str
    layers: tuple[int, ...]
    label: str
    layer_types: tuple[str, ...]
    decode_layers: tuple[int, ...]
    ppl_ratio: float
    top1_agreement: float
    kl_mean: float
    ppl_candidate: float
    bundle: str
    bundle_bytes: int
    build_seconds: float
    reused: bool
    ppl_increase_vs_reference: float | None = None
    tolerates_2bit: bool | None = None  # groups only

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("layers", "layer_types", "decode_layers"):
            d[k] = list(d[k])
        return d


@dataclass(frozen=True)
class SweepResult:
    """Which decoder layers tolerate 2-bit MLPs: one row per build, scored against fp16."""

    model: str
    scheme: str
    reference_mlp_bits: int
    groups: tuple[tuple[int, ...], ...]
    decode_layers: tuple[int, ...]
    tolerance: float
    fp16_bundle: str
    ppl_fp16: float
    tokens: int
    eval_text_sha256: str
    weights_sha256: Any  # {weights file: sha256}, None for random weights
    rows: tuple[SweepRow, ...]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["groups"] = [list(g) for g in self.groups]
        d["decode_layers"] = list(self.decode_layers)
        d["rows"] = [r.to_dict() for r in self.rows]
        return d
