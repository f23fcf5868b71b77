"""The quality stage by LiteRT-LM engine scoring (edgekit/runtime/scoring.py, edgekit/builder/quality_engine.py).

- the engine's per-token log-likelihoods (``run_text_scoring`` after a ``"<bos>"`` prefill) agree
  with the interpreter's log-softmax on the same bundle and the same tokens, within bounds set from
  what was measured on the tiny bundles (eval.txt, 2048 tokens: per-token mean |d| 0.051 fp16 /
  0.086 wNa8o8, largest 0.47 / 0.75, mean NLL 0.018 / 0.038 nats apart; the first token of a
  window, scored given BOS alone, 0.005 / 0.016);
- the figures derived from two score lists;
- the build's quality stage takes the engine route when the interpreter route is too big, writes
  ``method: engine_scoring`` with the metrics it holds, and leaves top-1 agreement and KL absent
  (a threshold on them has no value and never passes); the interpreter route is kept where it fits;
  an engine failure is recorded, not raised.
"""

from __future__ import annotations

import json
import math
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from edgekit import quality as ql
from edgekit.builder import pipeline as pl
from edgekit.builder import quality_engine as qe
from edgekit.results.gate import FAIL, PASS, check_record, parse_thresholds
from edgekit.results.metrics import EVAL_METRICS, REGISTRY
from edgekit.runtime import scoring as sc

pytestmark = pytest.mark.slow

MAX_TOKENS = 512  # 4 windows of 127 scored tokens (+ 4): enough positions, a few seconds per bundle
BOUNDS = {  # scheme: (mean |d|, max |d|, |mean NLL difference|, mean |d| of each window's first token)
    "fp16": (0.10, 1.0, 0.05, 0.03),
    "wNa8o8": (0.17, 1.5, 0.10, 0.05),
}


def _windows(bundle):
    tok, bos = qe._tokenizer(bundle)
    wins = ql.windows(tok.encode(ql.load_eval_text(None), add_special_tokens=False).ids, bos,
                      ql.DEFAULT_SEQ_LEN, MAX_TOKENS)
    return wins, [tok.decode(w[1:], skip_special_tokens=False) for w in wins]


@pytest.mark.parametrize("scheme", ["fp16", "wNa8o8"])
def test_engine_scores_match_interpreter_log_softmax(tiny_bundles, scheme):
    from edgekit.runtime.signatures import BundleModel

    bundle = tiny_bundles[scheme]
    wins, texts = _windows(bundle)
    res = sc.score_texts(bundle, texts, max_num_tokens=ql.DEFAULT_SEQ_LEN + 8)
    assert res["ids"] == [list(w[1:]) for w in wins]  # the engine scores exactly the window's tokens
    assert res["peak_rss_bytes"] > 0 and res["seconds"] > 0
    bm = BundleModel(str(bundle))
    diffs, first, nll_e, nll_i = [], [], [], []
    for w, s in zip(wins, res["scores"]):
        assert len(s) == len(w) - 1  # every target token is scored, the first one included
        lp = ql.log_softmax64(bm.score(w))[np.arange(len(w) - 1), w[1:]]
        d = np.abs(np.asarray(s) - lp)
        diffs.append(d)
        first.append(d[0])
        nll_e.extend(-np.asarray(s))
        nll_i.extend(-lp)
    d = np.concatenate(diffs)
    mean_b, max_b, nll_b, first_b = BOUNDS[scheme]
    assert d.mean() <= mean_b, f"mean |engine - interpreter| = {d.mean():.4f} nats"
    assert d.max() <= max_b, f"max |engine - interpreter| = {d.max():.4f} nats"
    assert abs(np.mean(nll_e) - np.mean(nll_i)) <= nll_b
    assert np.mean(first) <= first_b, f"first token of a window: mean |d| = {np.mean(first):.4f}"


def test_compare_scores_figures():
    c = [[-1.0, -2.0], [-3.0]]
    b = [[-1.5, -2.0], [-2.0]]
    f = sc.compare_scores(c, b)
    assert f["tokens"] == 3
    assert f["nll_candidate"] == pytest.approx(2.0) and f["nll_baseline"] == pytest.approx(5.5 / 3)
    assert f["ppl_ratio"] == pytest.approx(math.exp(2.0 - 5.5 / 3))
    assert f["ppl_candidate"] == pytest.approx(math.exp(2.0))
    assert f["logprob_delta_mean"] == pytest.approx(0.5) and f["logprob_delta_max"] == pytest.approx(1.0)
    with pytest.raises(sc.ScoringError):
        sc.compare_scores([[-1.0]], [[-1.0, -2.0]])


@pytest.fixture(autouse=True)
def own_scores_cache(tmp_path, monkeypatch):
    """Each test scores afresh: engine scores are cached by bundle sha256 (qe.scores_dir)."""
    monkeypatch.setattr(qe, "scores_dir", lambda: tmp_path / "scores")


@pytest.fixture
def forced_engine_route(monkeypatch):
    """The interpreter route reported too big (the engine route runs with its defaults)."""
    monkeypatch.setattr(pl, "_too_big_for_interpreter", lambda *need: "forced by the test")


def _check_engine_record(q, baseline):
    assert q["method"] == "engine_scoring"
    assert q["interpreter_skipped"] == "forced by the test"
    assert q["baseline"]["bundle"] == str(baseline)
    assert set(q["metrics"]) == set(qe.HELD)
    for name in q["metrics"]:
        assert name in REGISTRY and name in EVAL_METRICS
        assert isinstance(q[name], float) and math.isfinite(q[name]), name
    assert q["tokens"] == qe.ENGINE_MAX_TOKENS and q["windows_same_tokens"] == q["windows"] == 2
    assert q["ppl_ratio"] > 1.0 and q["logprob_delta_mean"] > 0  # wNa8o8 loses something vs fp16
    for name in ("top1_agreement", "kl_mean"):
        assert q.get(name) is None and name in q["absent"]
    for role in ("candidate", "baseline"):
        assert q["children"][role]["peak_rss_bytes"] > 0
    gate = check_record(q, parse_thresholds(["ppl_ratio<=10", "top1_agreement>=0.0"], "test", EVAL_METRICS))
    status = {c.threshold.metric: c.status for c in gate.checks}
    assert status == {"ppl_ratio": PASS, "top1_agreement": FAIL}  # an absent figure never passes
    assert "has no value" in gate.checks[1].message


def test_build_quality_stage_takes_engine_route(tiny_bundles, tiny_manifests, forced_engine_route):
    base = tiny_manifests["fp16"]
    info = SimpleNamespace(weights_sha256=base["source"]["weights_sha256"])
    q = pl._quality(pl._Stages(None), tiny_bundles["fp16"].parent, tiny_bundles["wNa8o8"], info)
    _check_engine_record(q, tiny_bundles["fp16"])


def test_backfill_quality_takes_engine_route(tmp_path, tiny_bundles, tiny_manifests, forced_engine_route):
    cand_dir = tmp_path / tiny_bundles["wNa8o8"].parent.name
    shutil.copytree(tiny_bundles["wNa8o8"].parent, cand_dir)
    assert "quality" not in json.loads((cand_dir / "manifest.json").read_text())
    pl._backfill_quality(pl._Stages(None), cand_dir, tiny_bundles["fp16"], tiny_manifests["fp16"])
    q = json.loads((cand_dir / "manifest.json").read_text())["quality"]
    _check_engine_record(q, tiny_bundles["fp16"])


def test_engine_failure_is_recorded(tiny_bundles, tiny_manifests, monkeypatch):
    monkeypatch.setattr(pl, "_too_big_for_interpreter", lambda *need: "forced by the test")

    def boom(*a, **k):
        raise sc.ScoringError("engine scoring process exited with -6: abort")

    monkeypatch.setattr(sc, "score_texts", boom)
    info = SimpleNamespace(weights_sha256=tiny_manifests["fp16"]["source"]["weights_sha256"])
    q = pl._quality(pl._Stages(None), tiny_bundles["fp16"].parent, tiny_bundles["wNa8o8"], info)
    assert q["method"] == "engine_scoring" and "engine scoring failed" in q["skipped"] and "abort" in q["skipped"]
    assert q.get("ppl_ratio") is None


def test_interpreter_route_kept_where_it_fits(tiny_bundles, tiny_manifests, monkeypatch):
    monkeypatch.setattr(pl, "_too_big_for_interpreter", lambda *need: None)
    calls = []
    monkeypatch.setattr(ql, "evaluate", lambda c, b: calls.append((c, b)) or {"ppl_ratio": 1.25})
    monkeypatch.setattr(qe, "evaluate_engine", lambda *a, **k: pytest.fail("engine route taken"))
    info = SimpleNamespace(weights_sha256=tiny_manifests["fp16"]["source"]["weights_sha256"])
    q = pl._quality(pl._Stages(None), tiny_bundles["fp16"].parent, tiny_bundles["wNa8o8"], info)
    assert calls == [(tiny_bundles["wNa8o8"], tiny_bundles["fp16"])]
    assert q["ppl_ratio"] == 1.25 and "method" not in q


def test_scores_are_reused_for_the_same_bundle_text_and_runtime(tmp_path, tiny_bundles, monkeypatch):
    """A bundle's engine scores are kept by its sha256, the texts, the token budget and the runtime: a second
    evaluation scores nothing and gives the same figures; another bundle's bytes are scored anew."""
    first = qe.evaluate_engine(tiny_bundles["wNa8o8"], tiny_bundles["fp16"])
    assert not any(c.get("cached") for c in first["children"].values())
    assert len(list((tmp_path / "scores").glob("*.json"))) == 2

    def no_scoring(*a, **k):
        raise AssertionError("scored again")

    monkeypatch.setattr(sc, "score_texts", no_scoring)
    again = qe.evaluate_engine(tiny_bundles["wNa8o8"], tiny_bundles["fp16"])
    assert all(c["cached"] for c in again["children"].values())
    assert {k: again[k] for k in qe.HELD} == {k: first[k] for k in qe.HELD}
    # the same name with other bytes (the fp16 bundle's copy with one byte appended): its scores are not reused
    other = tmp_path / "other" / tiny_bundles["fp16"].name
    other.parent.mkdir()
    other.write_bytes(tiny_bundles["fp16"].read_bytes() + b"\0")
    with pytest.raises(AssertionError, match="scored again"):
        qe.evaluate_engine(tiny_bundles["wNa8o8"], other)


def test_an_fp16_build_scores_itself_once_for_its_candidates(tiny_bundles, tiny_manifests, forced_engine_route,
                                                              monkeypatch):
    """When its candidates will take the engine route, the fp16 build scores itself into the score cache;
    a candidate's quality stage then starts one child only (its own) and gets the same figures."""
    base = tiny_bundles["fp16"]
    assert not qe.baseline_scored(base)
    engine_ok = {"litert_lm": {"ok": True}}
    rec = pl._score_baseline(pl._Stages(None), base, engine_ok)
    assert rec["method"] == qe.METHOD and not rec["cached"] and "skipped" not in rec
    assert rec["windows"] == 2 and rec["tokens"] == qe.ENGINE_MAX_TOKENS and rec["peak_rss_bytes"] > 0
    assert qe.baseline_scored(base)
    assert pl._score_baseline(pl._Stages(None), base, engine_ok)["cached"]  # a rebuild of the same bytes
    scored = []
    real = sc.score_texts
    monkeypatch.setattr(sc, "score_texts", lambda b, *a, **k: scored.append(b) or real(b, *a, **k))
    info = SimpleNamespace(weights_sha256=tiny_manifests["fp16"]["source"]["weights_sha256"])
    q = pl._quality(pl._Stages(None), base.parent, tiny_bundles["wNa8o8"], info)
    assert scored == [tiny_bundles["wNa8o8"]]
    assert q["children"]["baseline"]["cached"] and not q["children"]["candidate"].get("cached")
    _check_engine_record(q, base)


def test_an_fp16_build_whose_engine_check_failed_is_not_scored(tiny_bundles, forced_engine_route, monkeypatch):
    monkeypatch.setattr(sc, "score_texts", lambda *a, **k: pytest.fail("scored"))
    rec = pl._score_baseline(pl._Stages(None), tiny_bundles["fp16"],
                             {"litert_lm": {"ok": None, "skipped": "the engine would hold ~14 GB"}})
    assert "14 GB" in rec["skipped"] and not qe.baseline_scored(tiny_bundles["fp16"])


def test_an_fp16_build_whose_candidates_fit_the_interpreter_is_not_scored(tiny_bundles, monkeypatch):
    monkeypatch.setattr(pl, "_too_big_for_interpreter", lambda *need: None)
    monkeypatch.setattr(sc, "score_texts", lambda *a, **k: pytest.fail("scored"))
    assert pl._score_baseline(pl._Stages(None), tiny_bundles["fp16"], {"litert_lm": {"ok": True}}) is None


def test_a_scoring_failure_names_the_text_and_the_engines_reason(tiny_bundles):
    """run_text_scoring fails with one generic Python message; the error carries the engine's own line."""
    with pytest.raises(sc.ScoringError) as ei:
        sc.score_texts(tiny_bundles["wNa8o8"], ["hello world " * 40], max_num_tokens=16)
    msg = str(ei.value)
    assert "(text 1 of 1, after " in msg
    assert "Input token ids are too long" in msg and ">= 16" in msg
