"""Plots of a result, drawn by matplotlib (Agg backend) into PNG bytes.

* per-token decode latency of every measured run (candidate and baseline) whose stamps time
  tokens (runs whose stamps arrive in stream chunks are left out: they time callbacks);
* memory over time, anonymous and file-backed drawn apart;
* candidate vs baseline bars (means) with 95% confidence intervals (Student t).
"""

from __future__ import annotations

import io

from edgekit.results.metrics import METRICS
from edgekit.results.records import BASELINE, CANDIDATE, BenchResult
from edgekit.results.stats import summarize

COLORS = {CANDIDATE: "#1f77b4", BASELINE: "#ff7f0e"}
BAR_METRICS = ("decode_tps", "prefill_tps", "ttft_ms", "init_ms", "token_p50_ms", "token_p99_ms",
               "peak_rss_mb", "peak_anon_mb", "peak_file_mb", "peak_pss_mb")


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buf.getvalue()


def _per_token(run) -> bool:
    """Stamps that time tokens: not flagged bursty (stream chunks) in the run's basis."""
    b = run.basis.get("token_p50_ms")
    return bool(run.token_ms) and (b is None or b.flag != "bursty")


def token_latency_png(result: BenchResult) -> bytes | None:
    runs = [r for role in result.roles() for r in result.measured(role) if _per_token(r)]
    if not runs:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.6))
    seen = set()
    for r in runs:
        label = None if r.role in seen else f"{r.role} ({result.bundles[r.role].label})"
        seen.add(r.role)
        ax.plot(range(1, len(r.token_ms) + 1), r.token_ms, color=COLORS[r.role], alpha=0.6, lw=1, label=label)
    ax.set_xlabel("decoded token")
    ax.set_ylabel("latency (ms)")
    vals = [v for r in runs for v in r.token_ms if v > 0]
    if vals and max(vals) / min(vals) > 30:  # a few slow steps would flatten everything else
        ax.set_yscale("log")
        ax.set_ylabel("latency (ms, log scale)")
    ax.set_title("Per-token decode latency, every measured run")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    return _png(fig)


def memory_png(result: BenchResult) -> bytes | None:
    roles = [role for role in result.roles() if any(r.mem for r in result.measured(role))]
    if not roles:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(roles), figsize=(5 * len(roles), 3.6), squeeze=False, sharey=True)
    for ax, role in zip(axes[0], roles):
        first = True
        for r in result.measured(role):
            if not r.mem:
                continue
            t = [p.t_ms / 1000.0 for p in r.mem]
            for attr, style, name in (("anon_mb", "-", "anonymous"), ("file_mb", "--", "file-backed"),
                                      ("rss_mb", ":", "RSS")):
                ys = [getattr(p, attr) for p in r.mem]
                if all(y is None for y in ys):
                    continue
                ys = [float("nan") if y is None else y for y in ys]
                color = {"anon_mb": "#d62728", "file_mb": "#2ca02c", "rss_mb": "#7f7f7f"}[attr]
                ax.plot(t, ys, style, color=color, alpha=0.7, lw=1, label=name if first else None)
            first = False
        ax.set_title(f"{role}: {result.bundles[role].label}", fontsize=9)
        ax.set_xlabel("time since start (s)")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    axes[0][0].set_ylabel("resident memory (MB)")
    fig.suptitle("Memory over time (anonymous and file-backed apart), every measured run")
    return _png(fig)


def bars_png(result: BenchResult) -> bytes | None:
    roles = result.roles()
    names = [n for n in BAR_METRICS if all(result.samples(role, n) for role in roles)]
    if not names:
        return None
    plt = _plt()
    cols = 5
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.6 * rows), squeeze=False)
    for i, name in enumerate(names):
        ax = axes[i // cols][i % cols]
        means, errs = [], [[], []]
        for role in roles:
            s = summarize(result.samples(role, name))
            means.append(s.mean)
            # the t-interval is of the mean: bars show means so the error bars belong to them
            errs[0].append(0.0 if s.ci_low is None else s.mean - s.ci_low)
            errs[1].append(0.0 if s.ci_high is None else s.ci_high - s.mean)
        ax.bar(range(len(roles)), means, yerr=errs, capsize=4, color=[COLORS[r] for r in roles])
        ax.set_xticks(range(len(roles)))
        ax.set_xticklabels(roles, fontsize=8)
        m = METRICS[name]
        ax.set_title(f"{name}\n({m.unit}, {m.direction} better)", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    for j in range(len(names), rows * cols):
        axes[j // cols][j % cols].axis("off")
    fig.suptitle("Candidate vs baseline: means with 95% confidence intervals (t), measured runs")
    fig.tight_layout()
    return _png(fig)


def all_plots(result: BenchResult) -> list[tuple[str, str, bytes]]:
    """(id, caption, png bytes) for every plot the data allows."""
    out = []
    for pid, caption, fn in (
        ("bars", "Candidate vs baseline, means with 95% CI error bars", bars_png),
        ("token-latency", "Per-token decode latency", token_latency_png),
        ("memory", "Memory over time: anonymous vs file-backed", memory_png),
    ):
        png = fn(result)
        if png:
            out.append((pid, caption, png))
    return out


def preload() -> None:
    """Import what the report views need (matplotlib for the plots, scipy.stats for the
    confidence intervals and the significance tests): ~2-3 s on a loaded 2-core host.
    `edgekit bench` calls it in a background thread while it prepares the device (pushes),
    so the import overlaps with I/O instead of adding to the wall time after the last run;
    it is joined before the first run starts, so it never competes with a measured run."""
    import scipy.stats  # noqa: F401

    _plt()
