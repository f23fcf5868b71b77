"""`edgekit eval BUNDLE --baseline FP16_BUNDLE`: quality of a bundle against its FP16 build."""

from __future__ import annotations

import json
from pathlib import Path

import click

from edgekit.errors import EXIT_OK, GateFailed
from edgekit.quality import fmt_figure as _fmt


def render_table(result: dict) -> str:
    from edgekit.results.evaluation import QualityResult

    q = QualityResult.from_dict(result)
    rows = [
        ("perplexity (candidate)", q.ppl_candidate),
        ("perplexity (baseline)", q.ppl_baseline),
        ("ppl_ratio", q.ppl_ratio),
        ("top1_agreement", q.top1_agreement),
        ("kl_mean (nats)", q.kl_mean),
        ("kl_max (nats)", q.kl_max),
        ("top-1 accuracy (candidate)", q.top1_accuracy_candidate),
        ("top-1 accuracy (baseline)", q.top1_accuracy_baseline),
        ("tokens scored", q.tokens),
        ("eval text sha256", q.eval_text_sha256[:16]),
    ]
    w = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{w}}  {_fmt(v)}" for k, v in rows)


@click.command(help="Measure BUNDLE's quality against its FP16 baseline through the LiteRT runtime: "
               "perplexity of each, ppl_ratio, next-token top-1 agreement and mean KL(fp16 || bundle). "
               "With --fail-on, exit 1 when a threshold is violated.")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--baseline", "baseline", type=click.Path(path_type=Path), required=True,
              help="the FP16 bundle of the same model")
@click.option("--text", "text", type=click.Path(path_type=Path), default=None,
              help="evaluation text (UTF-8); default: the shipped held-out text edgekit/data/eval.txt")
@click.option("--tokenizer", type=click.Path(path_type=Path), default=None,
              help="tokenizer.json to use instead of the one the baseline bundle carries")
@click.option("--max-tokens", type=click.IntRange(min=1), default=2048, show_default=True,
              help="score at most this many tokens")
@click.option("--seq-len", type=click.IntRange(min=2), default=128, show_default=True,
              help="window length (BOS + seq_len-1 scored tokens); capped at the bundle's cache length")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="interpreter threads")
@click.option("--fail-on", "fail_on", multiple=True, metavar="METRIC<=X|METRIC>=X",
              help="quality threshold, e.g. 'ppl_ratio<=1.10' or 'top1_agreement>=0.90' (repeatable)")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON on stdout")
@click.option("--out", type=click.Path(path_type=Path), default=None, help="also write the JSON result here")
def command(bundle, baseline, fail_on, threads, as_json, out, **options) -> int:
    from edgekit.fsutil import atomic_write_json
    from edgekit.quality import run_eval

    # text, tokenizer, max_tokens, seq_len: evaluate()'s keyword arguments under the same names
    result, gate = run_eval(bundle, baseline, fail_on, num_threads=threads, progress=lambda s: click.echo(s, err=True),
                            **options)
    if out is not None:
        atomic_write_json(out, result)
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(f"candidate: {result['candidate']}\nbaseline:  {result['baseline']}")
        click.echo(render_table(result))
        for c in gate.checks:
            click.echo(f"{'PASS' if c.status == 'pass' else 'FAIL'}  {c.threshold}  "
                       f"(measured {_fmt(result.get(c.threshold.metric))})")
    if not gate.passed:
        raise GateFailed("quality gate failed: " + "; ".join(result["gate"]["violations"]),
                         hint="the bundle lost too much quality against FP16: keep more bits for sensitive layers "
                              "(see `edgekit sweep`)")
    return EXIT_OK
