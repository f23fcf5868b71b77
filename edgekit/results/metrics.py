"""The one registry of metrics: name, unit, which way is better, where the figure comes from.

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

from dataclasses import dataclass
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


_METRIC_LIST = (
    Metric("init_ms", "ms", LOWER, "engine/model load time before the first prompt", "init time"),
    Metric("ttft_ms", "ms", LOWER, "time to first token: prefill plus the first decode step", "time to first token"),
    Metric("prefill_tps", "tok/s", HIGHER, "prompt tokens processed per second", "prefill"),
    Metric("decode_tps", "tok/s", HIGHER, "generated tokens per second", "decode"),
    Metric("token_p50_ms", "ms", LOWER, "median per-token decode latency", "p50 token latency"),
    Metric("token_p90_ms", "ms", LOWER, "90th percentile per-token decode latency", "p90 token latency"),
    Metric("token_p99_ms", "ms", LOWER, "99th percentile per-token decode latency", "p99 token latency"),
    Metric("peak_rss_mb", "MB", LOWER, "peak resident set size (VmHWM), includes mmap'd weights", "peak RSS"),
    Metric("peak_anon_mb", "MB", LOWER, "peak anonymous resident memory (RssAnon)", "peak anonymous memory"),
    Metric("peak_file_mb", "MB", LOWER, "peak file-backed resident memory (RssFile)", "peak file-backed memory"),
    Metric("peak_pss_mb", "MB", LOWER, "peak proportional set size (smaps_rollup Pss)", "peak PSS"),
    Metric("ppl_ratio", "x", LOWER, "perplexity relative to the FP16 baseline (manifest quality)", "perplexity ratio",
           QUALITY),
    Metric("top1_agreement", "", HIGHER, "share of positions whose top-1 token equals FP16's (manifest quality)",
           "top-1 agreement", QUALITY),
    Metric("kl_mean", "nats", LOWER, "mean KL divergence from FP16's next-token distribution (manifest quality)",
           "mean KL", QUALITY),
    Metric("ppl_candidate", "", LOWER, "perplexity of the candidate bundle on the evaluation text",
           "candidate perplexity", EVAL),
    Metric("ppl_baseline", "", LOWER, "perplexity of the FP16 baseline on the evaluation text",
           "baseline perplexity", EVAL),
    Metric("kl_max", "nats", LOWER, "largest per-position KL divergence from FP16's next-token distribution",
           "max KL", EVAL),
    Metric("top1_accuracy_candidate", "", HIGHER, "share of positions whose top-1 token is the text's next token "
           "(candidate)", "candidate top-1 accuracy", EVAL),
    Metric("top1_accuracy_baseline", "", HIGHER, "share of positions whose top-1 token is the text's next token "
           "(FP16 baseline)", "baseline top-1 accuracy", EVAL),
    # engine-scoring route (edgekit/build/quality_engine.py): per-token log-likelihoods only
    Metric("nll_candidate", "nats", LOWER, "mean negative log-likelihood per token of the candidate bundle",
           "candidate NLL", EVAL),
    Metric("nll_baseline", "nats", LOWER, "mean negative log-likelihood per token of the FP16 baseline",
           "baseline NLL", EVAL),
    Metric("logprob_delta_mean", "nats", LOWER, "mean |log p(candidate) - log p(FP16)| of the text's tokens",
           "mean log-prob delta", EVAL),
    Metric("logprob_delta_max", "nats", LOWER, "largest |log p(candidate) - log p(FP16)| of the text's tokens",
           "max log-prob delta", EVAL),
)

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
