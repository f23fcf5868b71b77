"""edgekit.quality: metrics against independent computations, thresholds, CLI errors.

The metric tests drive ``evaluate`` with a scoring double (fixed random logits per
position); the real runtime on built bundles is exercised in test_quality_bundles.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.special import log_softmax, rel_entr, softmax

from edgekit import quality
from edgekit.cli.main import main
from edgekit.errors import NotComparable, UsageError
from edgekit.results.gate import check_record, parse_threshold, parse_thresholds
from edgekit.results.metrics import EVAL_METRICS

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER = ROOT / "edgekit" / "models" / "assets" / "tiny" / "tokenizer.json"
VOCAB = 2048


class ScoringDouble:
    """Stands in for BundleModel: logits are a fixed function of (position, previous token)."""

    def __init__(self, seed: int, noise: float = 0.0, scale: float = 4.0, cache_length: int = 256):
        self.seed, self.noise, self.scale = seed, noise, scale
        self.vocab_size = VOCAB
        self.cache_length = cache_length
        self.calls: list[list[int]] = []

    def _row(self, pos: int, tok: int, seed: int) -> np.ndarray:
        return np.random.default_rng([seed, pos, tok]).normal(size=VOCAB)

    def score(self, ids):
        self.calls.append(list(ids))
        rows = []
        for i in range(len(ids) - 1):
            r = self.scale * self._row(i, ids[i], 7)
            if self.noise:
                r = r + self.noise * self._row(i, ids[i], self.seed)
            rows.append(r)
        return np.stack(rows).astype(np.float32)


def _tok():
    return quality.load_tokenizer(TOKENIZER)


def _reference(cand: ScoringDouble, base: ScoringDouble, wins):
    """The metrics recomputed independently with scipy."""
    nll_c, nll_b, agree, kl, n = 0.0, 0.0, 0, 0.0, 0
    for w in wins:
        lc = cand.score(w).astype(np.float64)
        lb = base.score(w).astype(np.float64)
        t = np.array(w[1:])
        nll_c -= log_softmax(lc, axis=-1)[np.arange(len(t)), t].sum()
        nll_b -= log_softmax(lb, axis=-1)[np.arange(len(t)), t].sum()
        agree += int((lc.argmax(-1) == lb.argmax(-1)).sum())
        kl += rel_entr(softmax(lb, axis=-1), softmax(lc, axis=-1)).sum()
        n += len(t)
    return math.exp(nll_c / n), math.exp(nll_b / n), agree / n, kl / n, n


def test_log_softmax64_is_stable_and_exact():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(5, VOCAB)) * 30).astype(np.float32)
    x[0] += 1e4  # a huge offset must not overflow
    ours = quality.log_softmax64(x)
    assert ours.dtype == np.float64
    np.testing.assert_allclose(ours, log_softmax(x.astype(np.float64), axis=-1), rtol=0, atol=1e-9)
    np.testing.assert_allclose(np.exp(ours).sum(-1), 1.0, atol=1e-12)


def test_windows_prefix_bos_and_respect_max_tokens():
    ids = list(range(10, 310))
    w = quality.windows(ids, 2, seq_len=64, max_tokens=200)
    assert all(x[0] == 2 for x in w)
    assert all(len(x) <= 64 for x in w)
    scored = sum(len(x) - 1 for x in w)
    assert scored == 200
    assert [t for x in w for t in x[1:]] == ids[:200]
    with pytest.raises(UsageError):
        quality.windows(ids, 2, seq_len=1, max_tokens=None)


def test_identical_bundles_give_ratio_one_full_agreement_zero_kl():
    a, b = ScoringDouble(1), ScoringDouble(1)
    r = quality.evaluate(a, b, text="The quick brown fox jumps over the lazy dog. " * 20, tokenizer=_tok(),
                         seq_len=32, max_tokens=100)
    assert r["tokens"] == 100
    assert r["ppl_ratio"] == pytest.approx(1.0, abs=1e-12)
    assert r["top1_agreement"] == 1.0
    assert r["kl_mean"] == pytest.approx(0.0, abs=1e-9)
    assert r["ppl_candidate"] == r["ppl_baseline"] > 1.0


def test_metrics_match_an_independent_computation():
    text = (ROOT / "edgekit" / "data" / "eval.txt").read_text()
    cand, base = ScoringDouble(5, noise=3.0), ScoringDouble(6)
    r = quality.evaluate(cand, base, text=text, tokenizer=_tok(), seq_len=48, max_tokens=300)
    tok = _tok()
    wins = quality.windows(tok.encode(text), tok.bos_id, 48, 300)
    ppl_c, ppl_b, agree, kl, n = _reference(ScoringDouble(5, noise=3.0), ScoringDouble(6), wins)
    assert r["tokens"] == n == 300
    assert r["ppl_candidate"] == pytest.approx(ppl_c, rel=1e-9)
    assert r["ppl_baseline"] == pytest.approx(ppl_b, rel=1e-9)
    assert r["ppl_ratio"] == pytest.approx(ppl_c / ppl_b, rel=1e-9)
    assert r["top1_agreement"] == pytest.approx(agree)
    assert 0.0 < r["top1_agreement"] < 1.0
    assert r["kl_mean"] == pytest.approx(kl, rel=1e-7)
    assert r["kl_mean"] > 0.0
    import hashlib

    assert r["eval_text_sha256"] == hashlib.sha256(text.encode()).hexdigest()
    for key in ("ppl_ratio", "top1_agreement", "kl_mean", "ppl_candidate", "ppl_baseline", "tokens",
                "eval_text_sha256"):
        assert key in r
    json.dumps(r)  # serializable for the manifest


def test_seq_len_is_capped_at_the_cache_length():
    a, b = ScoringDouble(1, cache_length=40), ScoringDouble(1, cache_length=40)
    r = quality.evaluate(a, b, text="hello world, " * 100, tokenizer=_tok(), seq_len=128, max_tokens=150)
    assert r["seq_len"] == 40
    assert max(len(c) for c in a.calls) == 40


def test_vocabulary_mismatch_is_not_comparable():
    a, b = ScoringDouble(1), ScoringDouble(1)
    b.vocab_size = 4096
    with pytest.raises(NotComparable):
        quality.evaluate(a, b, text="some text here " * 10, tokenizer=_tok())


def test_shipped_eval_text_is_heldout_prose():
    text = quality.load_eval_text()
    assert len(text) > 2000
    ids = _tok().encode(text)
    assert len(ids) >= 1024  # enough for the default evaluation


@pytest.mark.parametrize("expr,metric,op,value", [
    ("ppl_ratio<=1.10", "ppl_ratio", "<=", 1.10),
    (" top1_agreement >= 0.9 ", "top1_agreement", ">=", 0.9),
    ("kl_mean<5e-2", "kl_mean", "<", 0.05),
])
def test_parse_threshold(expr, metric, op, value):
    t = parse_threshold(expr, metrics=EVAL_METRICS)
    assert (t.metric, t.op, t.value) == (metric, op, pytest.approx(value))


@pytest.mark.parametrize("expr", ["ppl_ratio", "ppl_ratio=1.1", "speed<=3", "top1_agreement>=abc", "",
                                  "ppl_ratio:+5%", "decode_tps>=10"])
def test_bad_threshold_is_a_usage_error(expr):
    # eval's record has quality figures only: no relative change, no run metric
    with pytest.raises(UsageError):
        parse_threshold(expr, metrics=EVAL_METRICS)


def test_eval_detail_metrics_take_thresholds_in_eval_only():
    assert parse_threshold("kl_max<=2", metrics=EVAL_METRICS).metric == "kl_max"
    with pytest.raises(UsageError):
        parse_threshold("kl_max<=2")  # not in a bench result


def test_check_record():
    r = {"ppl_ratio": 1.2, "top1_agreement": 0.95, "kl_mean": float("nan")}
    ts = parse_thresholds(["ppl_ratio<=1.10", "top1_agreement>=0.90", "kl_mean<=1"], metrics=EVAL_METRICS)
    gate = check_record(r, ts)
    assert [str(c.threshold) for c in gate.failed()] == ["ppl_ratio<=1.1", "kl_mean<=1"]  # NaN never passes
    assert gate.exit_code == 1
    ok = check_record(r, parse_thresholds(["ppl_ratio<=1.25", "top1_agreement>=0.9"], metrics=EVAL_METRICS))
    assert ok.failed() == [] and ok.exit_code == 0


def test_cli_missing_bundle_is_a_usage_error(tmp_path, capsys):
    code = main(["eval", str(tmp_path / "nope.litertlm"), "--baseline", str(tmp_path / "fp16.litertlm")])
    assert code == 2
    err = capsys.readouterr().err
    assert "bundle not found" in err and "Traceback" not in err


def test_cli_bad_threshold_is_rejected_before_any_work(tmp_path, capsys):
    code = main(["eval", str(tmp_path / "x.litertlm"), "--baseline", str(tmp_path / "y.litertlm"),
                 "--fail-on", "ppl_ratio=1.1"])
    assert code == 2  # same code as a bad threshold given to `edgekit gate`
    assert "bad threshold 'ppl_ratio=1.1'" in capsys.readouterr().err  # the gate's message: one language


def test_cli_missing_baseline_option(tmp_path):
    assert main(["eval", str(tmp_path / "x.litertlm")]) == 2


def test_cli_not_a_bundle_is_a_usage_error(tmp_path, capsys):
    junk = tmp_path / "junk.litertlm"
    junk.write_bytes(b"not a bundle at all" * 10)
    code = main(["eval", str(junk), "--baseline", str(junk)])
    assert code == 2
    err = capsys.readouterr().err
    assert "not a .litertlm bundle" in err and "Traceback" not in err


def test_one_token_word_is_read_from_the_bundles_tokenizer(monkeypatch, tmp_path):
    import edgekit.runtime.litertlm_file as lf
    from edgekit.errors import CheckpointError
    from edgekit.models.presets import get_preset

    tok_json = (Path(get_preset("tiny").tokenizer_dir) / "tokenizer.json").read_text(encoding="utf-8")
    monkeypatch.setattr(lf, "read_hf_tokenizer_json", lambda path, header=None: tok_json)
    word = quality.one_token_word(tmp_path / "x.litertlm")
    assert len(quality._hf_tokenizer(tok_json, "t").encode(word * 16)) == 16
    with pytest.raises(CheckpointError):  # no candidate is one token: refused, not guessed
        quality.one_token_word(tmp_path / "x.litertlm", candidates=("\u2603\u2604\u2605 zq",))
    monkeypatch.setattr(lf, "read_hf_tokenizer_json", lambda path, header=None: None)
    with pytest.raises(CheckpointError):
        quality.one_token_word(tmp_path / "x.litertlm")
